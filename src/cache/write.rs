//! Writes. Two rules, each written once:
//! - a *refresh* lands only where Redis holds an older version (or nothing, or
//!   a reader's lease): one atomic script, [`Cache::refresh`] on the request
//!   path's connection, [`Cache::refresh_with`] on a connection of the
//!   caller's for batch work;
//! - a *reader's fill* lands only under the reader's own lease: a miss takes a
//!   lease in the key ([`Cache::lease`]) before it reads MySQL, and the fill
//!   ([`Cache::fill_leased`]) lands only while that lease is still there. A
//!   refresh replaces the lease; an eviction or a restart removes it. Either
//!   way a fill that may be older than the newest write is refused, even when
//!   the newer entry itself was evicted in between. See
//!   `docs/consistency.md#leases`.

use super::{Cache, CacheError};
use crate::domain::{Entry, Presence, Subject};

/// The only-if-newer refresh (see `refresh.lua`).
pub(super) const REFRESH_SCRIPT: &str = include_str!("refresh.lua");

/// The leased fill (see `fill.lua`).
pub(super) const FILL_SCRIPT: &str = include_str!("fill.lua");

/// A lease a reader holds on one key: the key, and the value it wrote there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    key: String,
    token: String,
}

impl Lease {
    fn new(key: String) -> Self {
        let token = format!("~{:016x}", rand::random::<u64>());
        Lease { key, token }
    }
}

impl Cache {
    /// Writes entries, each only if Redis holds nothing as new; returns how
    /// many were written. One atomic script call for all of them, on the
    /// request path's connection, under its timeout and breaker.
    pub async fn refresh(&self, entries: &[Entry]) -> Result<u64, CacheError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let invocation = self.refresh_invocation(entries);
        // `invoke_async` loads the script when Redis does not know it (a
        // restart, SCRIPT FLUSH) and retries.
        self.guarded(invocation.invoke_async(&mut self.conn.clone()))
            .await
    }

    /// [`Cache::refresh`] for many entries on a connection of the caller's
    /// (batch work uses its own pooled connections and timeouts; no
    /// breaker): one pipeline of script calls of at most `per_call` entries
    /// each (a long script would hold Redis, which runs one at a time).
    /// Returns how many were written.
    pub async fn refresh_with<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        entries: &[Entry],
        per_call: usize,
    ) -> redis::RedisResult<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        // A pipeline does not load a script Redis lacks; loading it first
        // costs Redis one hash per pipeline of thousands of entries.
        pipe.load_script(&self.refresh_script).ignore();
        for chunk in entries.chunks(per_call.max(1)) {
            pipe.invoke_script(&self.refresh_invocation(chunk));
        }
        let written: Vec<u64> = pipe.query_async(conn).await?;
        Ok(written.iter().sum())
    }

    fn refresh_invocation(&self, entries: &[Entry]) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.refresh_script.prepare_invoke();
        for entry in entries {
            let (key, value) = self.key_value(entry);
            invocation.key(key).arg(value).arg(self.ttl_of(entry));
        }
        invocation
    }

    /// A reader's miss takes a lease on each key of `subjects` before it
    /// reads MySQL: where the key is empty (`SET NX`), or, when the lookup
    /// found a value that is not ours (`replace`), whatever it holds. One
    /// round trip; `None` where another reader's lease or a value is there.
    pub async fn lease(
        &self,
        subjects: &[Subject],
        replace: bool,
    ) -> Result<Vec<Option<Lease>>, CacheError> {
        let leases: Vec<Lease> = subjects
            .iter()
            .map(|&subject| Lease::new(self.keys.of(subject)))
            .collect();
        let mut pipe = redis::pipe();
        for lease in &leases {
            let cmd = pipe.cmd("SET").arg(&lease.key).arg(&lease.token);
            if !replace {
                cmd.arg("NX");
            }
            cmd.arg("PX").arg(self.lease_ms);
        }
        let replies: Vec<Option<redis::Value>> = self
            .guarded(pipe.query_async(&mut self.conn.clone()))
            .await?;
        Ok(leases
            .into_iter()
            .zip(replies)
            .map(|(lease, reply)| reply.map(|_| lease))
            .collect())
    }

    /// Settles leases after the read: fills each entry while its lease is
    /// still in its key, and gives back (deletes, if still there) a lease
    /// with nothing to fill; returns how many entries landed. One round trip.
    pub async fn fill_leased(&self, fills: &[(Lease, Option<Entry>)]) -> Result<u64, CacheError> {
        if fills.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        // Loaded with the fills: Redis may have restarted since the last
        // (and a miss already costs a MySQL read, next to which this is
        // nothing).
        pipe.load_script(&self.fill_script).ignore();
        for (lease, entry) in fills {
            let mut invocation = self.fill_script.prepare_invoke();
            invocation.key(&lease.key).arg(&lease.token);
            match entry {
                Some(entry) => {
                    let (_, value) = self.key_value(entry);
                    invocation.arg(value).arg(self.ttl_of(entry));
                }
                None => {
                    invocation.arg("").arg(0);
                }
            }
            pipe.invoke_script(&invocation);
        }
        let landed: Vec<u64> = self
            .guarded(pipe.query_async(&mut self.conn.clone()))
            .await?;
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
