//! Writes. A value reaches a key only through a lease, or over an older
//! value of the same key:
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

use super::{codec, Cache, CacheError};
use crate::domain::{Entry, Presence, Subject};

/// The warming job's write (see `upgrade.lua`).
pub(super) const UPGRADE_SCRIPT: &str = include_str!("upgrade.lua");

/// The leased fill (see `fill.lua`).
pub(super) const FILL_SCRIPT: &str = include_str!("fill.lua");

/// What the warming job's write did with one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// Written over an older value.
    Written,
    /// The key was empty: leased, to be read again and filled.
    Leased(Lease),
    /// The key holds the same or newer, or a lease is out.
    LeftAlone,
}

/// A lease a reader holds on one key: the key, and the value it wrote there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    key: String,
    token: String,
}

impl Lease {
    fn new(key: String) -> Self {
        let token = format!("~{:016x}", rand::random::<u64>());
        debug_assert_eq!(token.len(), codec::LEASE_LEN);
        Lease { key, token }
    }
}

/// Leases settled per script call (a long script would hold Redis, which
/// runs one at a time).
const FILLS_PER_CALL: usize = 500;

/// A refresh's lease (see `lease.lua`).
pub(super) const LEASE_SCRIPT: &str = include_str!("lease.lua");

impl Cache {
    /// The warming job's write of scanned `entries`, on a connection of the
    /// caller's (pooled, no breaker): each key with an older value is
    /// written, each empty key leased (to be read again and filled), the
    /// rest left alone. One pipeline of script calls of at most `per_call`
    /// entries each (a long script would hold Redis, which runs one at a
    /// time).
    pub async fn upgrade_with<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        entries: &[Entry],
        per_call: usize,
    ) -> redis::RedisResult<Vec<Upgrade>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let leases: Vec<Lease> = entries
            .iter()
            .map(|e| Lease::new(self.keys.of(e.subject())))
            .collect();
        let mut pipe = redis::pipe();
        // A pipeline does not load a script Redis lacks; loading it first
        // costs Redis one hash per pipeline of thousands of entries.
        pipe.load_script(&self.upgrade_script).ignore();
        for (chunk, leases) in entries
            .chunks(per_call.max(1))
            .zip(leases.chunks(per_call.max(1)))
        {
            let mut invocation = self.upgrade_script.prepare_invoke();
            for (entry, lease) in chunk.iter().zip(leases) {
                let (key, value) = self.key_value(entry);
                invocation
                    .key(key)
                    .arg(value)
                    .arg(self.ttl_of(entry))
                    .arg(&lease.token);
            }
            invocation.arg(self.lease_ms);
            pipe.invoke_script(&invocation);
        }
        let outcomes: Vec<Vec<u8>> = pipe.query_async(conn).await?;
        Ok(outcomes
            .into_iter()
            .flatten()
            .zip(leases)
            .map(|(outcome, lease)| match outcome {
                1 => Upgrade::Written,
                2 => Upgrade::Leased(lease),
                _ => Upgrade::LeftAlone,
            })
            .collect())
    }

    /// Takes a lease on each key of `subjects`, before reading them from
    /// MySQL; one round trip. A reader's miss (`refresh` false) takes only
    /// empty keys (`SET NX`; `None` where another lease or a value is
    /// there), or, when its lookup found a value that is not ours, replaces
    /// it. A refresh takes every key, keeping an entry it finds behind the
    /// token, so readers keep their answer meanwhile (see `lease.lua`).
    pub async fn lease(
        &self,
        subjects: &[Subject],
        refresh: bool,
    ) -> Result<Vec<Option<Lease>>, CacheError> {
        let leases: Vec<Lease> = subjects
            .iter()
            .map(|&subject| Lease::new(self.keys.of(subject)))
            .collect();
        if refresh {
            // One script call per chunk of keys: the follower leases a
            // thousand at a time.
            let invocations: Vec<redis::ScriptInvocation<'_>> = leases
                .chunks(FILLS_PER_CALL)
                .map(|chunk| {
                    let mut invocation = self.lease_script.prepare_invoke();
                    invocation.arg(self.lease_ms);
                    for lease in chunk {
                        invocation.key(&lease.key).arg(&lease.token);
                    }
                    invocation
                })
                .collect();
            let mut pipe = redis::pipe();
            pipe.load_script(&self.lease_script).ignore();
            for invocation in &invocations {
                pipe.invoke_script(invocation);
            }
            let _: Vec<redis::Value> = self
                .guarded(pipe.query_async(&mut self.conn.clone()))
                .await?;
            return Ok(leases.into_iter().map(Some).collect());
        }
        let mut pipe = redis::pipe();
        for lease in &leases {
            pipe.cmd("SET")
                .arg(&lease.key)
                .arg(&lease.token)
                .arg("NX")
                .arg("PX")
                .arg(self.lease_ms);
        }
        let replies: Vec<redis::Value> = self
            .guarded(pipe.query_async(&mut self.conn.clone()))
            .await?;
        Ok(leases
            .into_iter()
            .zip(replies)
            .map(|(lease, reply)| (reply != redis::Value::Nil).then_some(lease))
            .collect())
    }

    /// Settles leases after the read: fills each entry while its lease is
    /// still in its key, and gives back a lease with nothing to fill (puts
    /// back the entry it replaced, or deletes it, if it is still there);
    /// returns how many keys were written. One round trip.
    pub async fn fill_leased(&self, fills: &[(Lease, Option<Entry>)]) -> Result<u64, CacheError> {
        if fills.is_empty() {
            return Ok(0);
        }
        self.guarded(self.fill_leased_with(&mut self.conn.clone(), fills))
            .await
    }

    /// [`Cache::fill_leased`] on a connection of the caller's (batch work:
    /// its own pooled connections and timeouts, no breaker).
    pub async fn fill_leased_with<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        fills: &[(Lease, Option<Entry>)],
    ) -> redis::RedisResult<u64> {
        if fills.is_empty() {
            return Ok(0);
        }
        let invocations: Vec<redis::ScriptInvocation<'_>> = fills
            .chunks(FILLS_PER_CALL)
            .map(|chunk| {
                let mut invocation = self.fill_script.prepare_invoke();
                for (lease, entry) in chunk {
                    invocation.key(&lease.key).arg(&lease.token);
                    match entry {
                        Some(entry) => {
                            let (_, value) = self.key_value(entry);
                            invocation.arg(value).arg(self.ttl_of(entry));
                        }
                        // Given back: the entry behind the lease, if any, stays.
                        None => {
                            invocation.arg("").arg(self.ttl_with_jitter());
                        }
                    }
                }
                invocation
            })
            .collect();
        if let [one] = invocations.as_slice() {
            // A miss's fill: `EVALSHA`, loading the script only when Redis
            // does not know it (a restart, SCRIPT FLUSH).
            return one.invoke_async(conn).await;
        }
        // A pipeline does not load a script Redis lacks: load it first (one
        // hash per pipeline of thousands of fills).
        let mut pipe = redis::pipe();
        pipe.load_script(&self.fill_script).ignore();
        for invocation in &invocations {
            pipe.invoke_script(invocation);
        }
        let landed: Vec<u64> = pipe.query_async(conn).await?;
        Ok(landed.iter().sum())
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
}
