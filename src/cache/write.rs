//! Writes. Two rules, each written once:
//! - a *refresh* lands only where Redis holds an older version (or nothing):
//!   one atomic script, [`Cache::refresh`] on the request path's connection,
//!   [`Cache::refresh_with`] on a connection of the caller's for batch work;
//! - a *reader's fill* lands only in an empty key ([`Cache::fill_missing`]).

use super::{codec, Cache, CacheError};
use crate::domain::{Entry, Presence, UserId, Versioned};

/// The only-if-newer refresh (see `refresh.lua`).
pub(super) const REFRESH_SCRIPT: &str = include_str!("refresh.lua");

impl Cache {
    /// Writes entries, each only if Redis holds nothing as new; returns how
    /// many were written. One atomic script call for all of them, on the
    /// request path's connection, under its timeout and breaker.
    pub async fn refresh(&self, entries: &[Entry]) -> Result<u64, CacheError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut invocation = self.refresh_script.prepare_invoke();
        for entry in entries {
            let (key, value) = self.key_value(entry);
            invocation
                .key(key)
                .arg(value)
                .arg(self.ttl_with_jitter())
                .arg(0);
        }
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
            let mut invocation = self.refresh_script.prepare_invoke();
            for entry in chunk {
                let (key, value) = self.key_value(entry);
                invocation
                    .key(key)
                    .arg(value)
                    .arg(self.ttl_with_jitter())
                    .arg(0);
            }
            pipe.invoke_script(&invocation);
        }
        let written: Vec<u64> = pipe.query_async(conn).await?;
        Ok(written.iter().sum())
    }

    /// The read path's fill after a miss: writes each entry only where its
    /// key is still empty (`SET NX`, pipelined, one round trip), which costs
    /// Redis far less than the script. As safe for a reader: a reader never
    /// replaces a value, and every committed change is written by its own
    /// refresh, which runs after the commit and is only-if-newer, so it
    /// replaces whatever older value a reader may have put there first.
    pub async fn fill_missing(&self, entries: &[Entry]) -> Result<u64, CacheError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for entry in entries {
            let (key, value) = self.key_value(entry);
            pipe.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("NX")
                .arg("EX")
                .arg(self.ttl_with_jitter());
        }
        let replies: Vec<Option<redis::Value>> = self
            .guarded(pipe.query_async(&mut self.conn.clone()))
            .await?;
        Ok(replies.iter().filter(|r| r.is_some()).count() as u64)
    }

    /// Writes "no such user" whatever the key holds. Only for a refresh
    /// after a user row was hard-deleted: its version is gone with it, so an
    /// only-if-newer refresh could never replace the cached "exists". Never
    /// used by the read path, whose reads may be older than the cache.
    pub async fn mark_user_gone(&self, user: UserId) -> Result<u64, CacheError> {
        let gone = Versioned {
            version: 0,
            value: Presence::Gone,
        };
        let mut invocation = self.refresh_script.prepare_invoke();
        invocation
            .key(self.keys.user(user))
            .arg(codec::encode(gone))
            .arg(self.ttl_with_jitter())
            .arg(1);
        self.guarded(invocation.invoke_async(&mut self.conn.clone()))
            .await
    }
}
