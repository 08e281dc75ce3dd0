//! Writes. A value reaches a spot (a key, or a field of a user's relations
//! hash: `codec::Keys`) only through a lease, or over an older value of the
//! same spot:
//! - a *miss* or a *refresh* takes a lease in the key ([`Cache::lease`])
//!   before it reads MySQL, and its fill ([`Cache::fill_leased`]) lands only
//!   while that lease is still there. A later lease (a later refresh) takes
//!   it over; an eviction or a restart removes it. Either way a fill that may
//!   be older than the newest write is refused, even when the newer entry
//!   itself was evicted in between;
//! - the *warming job*, which scans pages before it can know their keys,
//!   writes over older versions only, and leases the empty keys of a page to
//!   fill them after a second read ([`Cache::upgrade_with`]).
//!
//! See `docs/consistency.md#leases`.

use redis::cluster_routing::Slot;
use redis::Script;

use super::codec::Spot;
use super::link::Link;
use super::{codec, Cache, CacheError};
use crate::domain::{Entry, Presence, Subject, UserId};

/// What every script starts with (see `spots.lua`).
const SPOTS: &str = include_str!("spots.lua");

/// A script with the shared part in front.
pub(super) fn script(body: &str) -> Script {
    Script::new(&format!("{SPOTS}\n{body}"))
}

/// The warming job's write (see `upgrade.lua`).
pub(super) const UPGRADE_SCRIPT: &str = include_str!("upgrade.lua");

/// The leased fill (see `fill.lua`).
pub(super) const FILL_SCRIPT: &str = include_str!("fill.lua");

/// A refresh's lease (see `lease.lua`).
pub(super) const LEASE_SCRIPT: &str = include_str!("lease.lua");

/// A reader's lease after a miss (see `take.lua`).
pub(super) const TAKE_SCRIPT: &str = include_str!("take.lua");

/// What the warming job's write did with one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// Written over an older value (every copy that was not leased).
    Written,
    /// Some copy was empty: leased, to be read again and filled.
    Leased(Lease),
    /// Every copy holds the same or newer, or a lease is out.
    LeftAlone,
}

/// The leases one reader or refresh holds on the copies of one subject's
/// entry: each spot with the token written there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    spots: Vec<(Spot, String)>,
}

fn token() -> String {
    let token = format!("~{:016x}", rand::random::<u64>());
    debug_assert_eq!(token.len(), codec::TOKEN_LEN);
    token
}

/// Spots settled per script call (a long script would hold Redis, which
/// runs one at a time).
const SPOTS_PER_CALL: usize = 500;

/// Script calls in flight at once in a cluster (one per slot).
const CALLS_IN_FLIGHT: usize = 64;

/// One spot's part of a script call: its key and its arguments.
struct Item {
    key: String,
    args: Vec<Vec<u8>>,
}

/// Whom a reader's miss leases for: the viewer's copy of a pair only.
#[derive(Clone, Copy, Debug)]
pub enum LeaseFor {
    /// A reader: empty spots (or abandoned leases) only, and of a pair the
    /// viewer's copy only.
    Reader(UserId),
    /// A refresh, or a reader replacing a value that is not ours: every
    /// copy, whatever it holds.
    Refresh,
}

impl Cache {
    /// The common head of every script call (see `spots.lua`).
    fn head(&self) -> [String; 3] {
        [
            self.lease_ms.to_string(),
            self.ttl_with_jitter().to_string(),
            self.relations_per_user.to_string(),
        ]
    }

    /// Runs `script` over `items`, at most `SPOTS_PER_CALL` a call; in a
    /// cluster each call's keys share a slot (one call per slot, run
    /// concurrently), elsewhere the calls share one pipeline. Returns each
    /// item's integer reply, in order.
    async fn run_over(
        &self,
        link: &Link,
        script: &Script,
        items: &[Item],
    ) -> redis::RedisResult<Vec<i64>> {
        let result = self.run_calls(link, script, items).await;
        if let Some(near) = &self.near {
            // Redis's invalidation is on its way, but this process's next
            // read must not wait for it (read-your-writes on one instance):
            // whether the write landed or failed half-way, forget its keys.
            for item in items {
                near.forget_everywhere(item.key.as_bytes());
            }
        }
        result
    }

    async fn run_calls(
        &self,
        link: &Link,
        script: &Script,
        items: &[Item],
    ) -> redis::RedisResult<Vec<i64>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let head = self.head();
        let groups: Vec<Vec<usize>> = if link.clustered() {
            let mut by_slot: std::collections::HashMap<Slot, Vec<usize>> =
                std::collections::HashMap::new();
            for (i, item) in items.iter().enumerate() {
                by_slot.entry(Slot::for_key(&item.key)).or_default().push(i);
            }
            by_slot
                .into_values()
                .flat_map(|group| {
                    group
                        .chunks(SPOTS_PER_CALL)
                        .map(<[usize]>::to_vec)
                        .collect::<Vec<_>>()
                })
                .collect()
        } else {
            (0..items.len())
                .collect::<Vec<_>>()
                .chunks(SPOTS_PER_CALL)
                .map(<[usize]>::to_vec)
                .collect()
        };
        let invocations: Vec<redis::ScriptInvocation<'_>> = groups
            .iter()
            .map(|group| {
                let mut invocation = script.prepare_invoke();
                for arg in &head {
                    invocation.arg(arg);
                }
                for &i in group {
                    invocation.key(&items[i].key);
                    for arg in &items[i].args {
                        invocation.arg(arg);
                    }
                }
                invocation
            })
            .collect();
        let replies: Vec<Vec<i64>> = match invocations.as_slice() {
            // One call: `EVALSHA`, loading the script only when Redis does
            // not know it (a restart, SCRIPT FLUSH).
            [one] => vec![one.invoke_async(&mut link.clone()).await?],
            _ if link.clustered() => {
                // One call per slot (a script's keys must share one), a
                // bounded number in flight so a follower's chunk of
                // thousands of spots does not flood the connection.
                let mut replies = Vec::with_capacity(invocations.len());
                for wave in invocations.chunks(CALLS_IN_FLIGHT) {
                    replies.extend(
                        futures_util::future::try_join_all(wave.iter().map(|invocation| {
                            let mut link = link.clone();
                            async move { invocation.invoke_async::<Vec<i64>>(&mut link).await }
                        }))
                        .await?,
                    );
                }
                replies
            }
            _ => {
                // A pipeline does not load a script Redis lacks; loading it
                // first costs Redis one hash per pipeline.
                let mut pipe = redis::pipe();
                pipe.load_script(script).ignore();
                for invocation in &invocations {
                    pipe.invoke_script(invocation);
                }
                pipe.query_async(&mut link.clone()).await?
            }
        };
        let mut out = vec![0; items.len()];
        for (group, reply) in groups.iter().zip(replies) {
            if reply.len() != group.len() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "a script answered a different number of values",
                )));
            }
            for (&i, value) in group.iter().zip(reply) {
                out[i] = value;
            }
        }
        Ok(out)
    }

    /// The warming job's write of scanned `entries`, on a connection of the
    /// caller's (pooled, no breaker): each copy with an older value is
    /// written, each empty one leased (to be read again and filled), the
    /// rest left alone.
    pub async fn upgrade_with(
        &self,
        link: &Link,
        entries: &[Entry],
    ) -> redis::RedisResult<Vec<Upgrade>> {
        let mut items = Vec::new();
        let mut owners = Vec::new();
        let mut leases: Vec<Lease> = Vec::with_capacity(entries.len());
        for (n, entry) in entries.iter().enumerate() {
            let value = self.value(entry);
            let ttl = self.ttl_of(entry).to_string();
            let mut lease = Lease { spots: Vec::new() };
            for spot in self.keys.spots(entry.subject()) {
                let token = token();
                items.push(Item {
                    key: spot.key.clone(),
                    args: vec![
                        spot.field_name().into_bytes(),
                        value.clone(),
                        ttl.clone().into_bytes(),
                        token.clone().into_bytes(),
                    ],
                });
                owners.push(n);
                lease.spots.push((spot, token));
            }
            leases.push(lease);
        }
        let outcomes = self.run_over(link, &self.upgrade_script, &items).await?;
        // Per entry: the copies that were leased, and whether one was written.
        let mut leased: Vec<Vec<(Spot, String)>> = vec![Vec::new(); entries.len()];
        let mut written = vec![false; entries.len()];
        let spots = leases.into_iter().flat_map(|l| l.spots);
        for ((&n, outcome), spot) in owners.iter().zip(outcomes).zip(spots) {
            match outcome {
                1 => written[n] = true,
                2 => leased[n].push(spot),
                _ => {}
            }
        }
        Ok(leased
            .into_iter()
            .zip(written)
            .map(|(spots, written)| match (spots.is_empty(), written) {
                (false, _) => Upgrade::Leased(Lease { spots }),
                (true, true) => Upgrade::Written,
                (true, false) => Upgrade::LeftAlone,
            })
            .collect())
    }

    /// Takes a lease on `subjects`, before reading them from MySQL; one round
    /// trip (one per slot in a cluster). A reader (`LeaseFor::Reader`) takes
    /// only its own copy of a pair, and only an empty spot (`None` where
    /// another lease or a value is there). A refresh takes every copy,
    /// keeping an entry it finds behind the token, so readers keep their
    /// answer meanwhile (see `lease.lua`).
    pub async fn lease(
        &self,
        subjects: &[Subject],
        mode: LeaseFor,
    ) -> Result<Vec<Option<Lease>>, CacheError> {
        let mut leases = Vec::with_capacity(subjects.len());
        let mut items = Vec::new();
        for &subject in subjects {
            let spots = match (mode, subject) {
                (LeaseFor::Reader(viewer), Subject::Pair(pair)) => {
                    vec![self.keys.seen_by(pair, viewer)]
                }
                _ => self.keys.spots(subject),
            };
            let mut lease = Lease { spots: Vec::new() };
            for spot in spots {
                let token = token();
                items.push(Item {
                    key: spot.key.clone(),
                    args: vec![spot.field_name().into_bytes(), token.clone().into_bytes()],
                });
                lease.spots.push((spot, token));
            }
            leases.push(lease);
        }
        let script = match mode {
            LeaseFor::Reader(_) => &self.take_script,
            LeaseFor::Refresh => &self.lease_script,
        };
        let taken = self
            .guarded(self.run_over(&self.link, script, &items))
            .await?;
        let mut taken = taken.into_iter();
        Ok(leases
            .into_iter()
            .map(|lease| {
                let spots: Vec<(Spot, String)> = lease
                    .spots
                    .into_iter()
                    .filter(|_| taken.next() == Some(1))
                    .collect();
                (!spots.is_empty()).then_some(Lease { spots })
            })
            .collect())
    }

    /// Settles leases after the read: fills each entry while its lease is
    /// still in its spot, and gives back a lease with nothing to fill (puts
    /// back the entry it replaced, or deletes it, if it is still there);
    /// returns how many entries were written (every copy leased). One round
    /// trip (one per slot in a cluster).
    pub async fn fill_leased(&self, fills: &[(Lease, Option<Entry>)]) -> Result<u64, CacheError> {
        if fills.is_empty() {
            return Ok(0);
        }
        self.guarded(self.fill_leased_with(&self.link, fills)).await
    }

    /// [`Cache::fill_leased`] on a connection of the caller's (batch work:
    /// its own pooled connections and timeouts, no breaker).
    pub async fn fill_leased_with(
        &self,
        link: &Link,
        fills: &[(Lease, Option<Entry>)],
    ) -> redis::RedisResult<u64> {
        let mut items = Vec::new();
        let mut owners = Vec::new();
        for (n, (lease, entry)) in fills.iter().enumerate() {
            let (value, ttl) = match entry {
                Some(entry) => (self.value(entry), self.ttl_of(entry)),
                // Given back: the entry behind the lease, if any, stays.
                None => (Vec::new(), self.ttl_with_jitter()),
            };
            for (spot, token) in &lease.spots {
                items.push(Item {
                    key: spot.key.clone(),
                    args: vec![
                        spot.field_name().into_bytes(),
                        token.clone().into_bytes(),
                        value.clone(),
                        ttl.to_string().into_bytes(),
                    ],
                });
                owners.push(n);
            }
        }
        let written = self.run_over(link, &self.fill_script, &items).await?;
        let mut whole = vec![true; fills.len()];
        for (&n, w) in owners.iter().zip(written) {
            whole[n] &= w == 1;
        }
        Ok(fills
            .iter()
            .zip(whole)
            .filter(|((_, entry), whole)| entry.is_some() && *whole)
            .count() as u64)
    }

    /// The TTL an entry is written with: short for a user that has never
    /// had a row (a stream of made-up ids must not fill Redis for a day),
    /// the configured one (±10%) for everything else.
    fn ttl_of(&self, entry: &Entry) -> u64 {
        match entry {
            Entry::User(_, v) if v.version == 0 && v.value == Presence::Gone => {
                self.negative_ttl_seconds
            }
            _ => self.ttl_with_jitter(),
        }
    }

    /// The encoded value of an entry.
    fn value(&self, entry: &Entry) -> Vec<u8> {
        match *entry {
            Entry::Pair(_, v) => codec::encode(v),
            Entry::User(_, v) => codec::encode(v),
        }
    }
}
