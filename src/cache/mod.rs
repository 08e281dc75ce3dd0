//! The Redis cache: read entries, and fill them only if newer.
//!
//! The request path shares one multiplexed `ConnectionManager` (no pool
//! checkout, so no `PING` per request; it reconnects by itself). Every call
//! has a timeout, and a failure opens a short circuit breaker during which the
//! request path does not touch Redis at all and answers from MySQL: Redis is a
//! cache, never the truth.
//!
//! Every write goes through [`Cache::fill`], one atomic script that sets a key
//! only when the stored version is older. That is what makes a late fill by
//! a slow reader harmless: it carries an older version and is refused.

pub mod codec;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use secrecy::ExposeSecret;

use crate::config::CacheSettings;
use crate::domain::{Pair, Relation, UserId};
use codec::{Keys, Presence, Versioned};

/// Until when (Unix ms) some cache of this process has its breaker open: the
/// breakers are per worker, the metric is per instance.
static ANY_BREAKER_OPEN_UNTIL: AtomicU64 = AtomicU64::new(0);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether any worker of this process currently skips Redis.
pub fn any_breaker_open() -> bool {
    unix_ms() < ANY_BREAKER_OPEN_UNTIL.load(Ordering::Relaxed)
}

/// Decodes a value read from Redis (`None`: no key, or a value that is not
/// ours), and notes in `foreign` when one is not ours.
fn decode_noting<T: codec::Entry>(
    raw: Option<&Option<Vec<u8>>>,
    foreign: &mut bool,
) -> Option<Versioned<T>> {
    let raw = raw?.as_deref()?;
    let value = codec::decode(raw);
    *foreign |= value.is_none();
    value
}

/// The only-if-newer fill (see `fill.lua`).
const FILL_SCRIPT: &str = include_str!("fill.lua");

/// Errors of a cache call; the request path only counts them.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The breaker is open after a recent failure; Redis was not asked.
    #[error("redis skipped: circuit breaker open")]
    Open,
}

/// What the cache holds for one lookup (each part `None` on a miss).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cached {
    /// The target user's presence.
    pub user: Option<Versioned<Presence>>,
    /// The pair's relation.
    pub pair: Option<Versioned<Relation>>,
    /// Some key held a value that is not ours (it reads as a miss); a fill
    /// must then overwrite it rather than only fill empty keys.
    pub foreign: bool,
}

/// One entry to write: a pair's relation or a user's presence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// The relation of a pair at a row version (only if newer).
    Pair(Pair, Versioned<Relation>),
    /// The presence of a user at a row version (only if newer).
    User(UserId, Versioned<Presence>),
    /// "No such user", written whatever the key holds. Only for a refresh
    /// after a user row was hard-deleted: its version is gone with it, so an
    /// only-if-newer fill could never replace the cached "exists". Never
    /// used by the read path, whose reads may be older than the cache.
    UserRowGone(UserId),
}

/// The Redis cache shared by every request of an instance.
pub struct Cache {
    keys: Keys,
    conn: ConnectionManager,
    fill_script: Script,
    ttl_seconds: u64,
    breaker_ms: u64,
    /// Milliseconds since `epoch` until which the breaker is open.
    open_until_ms: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// Checks the Redis URL and makes the client that [`Cache::new`] takes.
    pub fn client(redis_url: &secrecy::SecretString) -> Result<Client, String> {
        Client::open(redis_url.expose_secret()).map_err(|e| format!("REDIS_URL: {e}"))
    }

    /// Prepares a cache; the connection is made on first use, so a Redis
    /// that is down at start-up does not stop the service (it answers from
    /// MySQL until Redis is back). Make one per actix worker, inside the
    /// worker: the multiplexed connection's driver task then runs on that
    /// worker's own thread.
    pub fn new(client: Client, settings: &CacheSettings) -> Result<Self, String> {
        let timeout = Duration::from_millis(settings.redis_timeout_ms);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnection is retried by the next request after the breaker;
            // a long retry loop here would only hold requests.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("REDIS_URL: {e}"))?;
        Ok(Self {
            keys: Keys::new(&settings.redis_prefix),
            conn,
            fill_script: Script::new(FILL_SCRIPT),
            ttl_seconds: settings.cache_ttl_seconds,
            breaker_ms: settings.redis_breaker_ms,
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// The key builder (for tools and tests that inspect the cache).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether the breaker currently keeps the request path off Redis.
    pub fn breaker_open(&self) -> bool {
        self.now_ms() < self.open_until_ms.load(Ordering::Relaxed)
    }

    /// Reads the target user's entry and, when given, the pair's entry in
    /// one round trip.
    pub async fn lookup(&self, target: UserId, pair: Option<Pair>) -> Result<Cached, CacheError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(self.keys.user(target));
        if let Some(pair) = pair {
            cmd.arg(self.keys.pair(pair));
        }
        let values: Vec<Option<Vec<u8>>> = self
            .guarded(cmd.query_async(&mut self.conn.clone()))
            .await?;
        let mut foreign = false;
        let user = decode_noting(values.first(), &mut foreign);
        let pair = decode_noting(values.get(1), &mut foreign);
        Ok(Cached {
            user,
            pair,
            foreign,
        })
    }

    /// Writes entries, each only if Redis holds nothing as new; returns how
    /// many were written. One atomic script call for all of them, on the
    /// request path's connection, under its timeout and breaker.
    pub async fn fill(&self, entries: &[Fill]) -> Result<u64, CacheError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        self.guarded(self.fill_on(&mut conn, entries)).await
    }

    /// The read path's fill after a miss: writes each entry only where its
    /// key is still empty (`SET NX`, pipelined, one round trip), which costs
    /// Redis far less than the script. As safe for a reader: a reader never
    /// replaces a value, and every committed change is written by its own
    /// refresh, which runs after the commit and is only-if-newer, so it
    /// replaces whatever older value a reader may have put there first.
    /// Entries that must overwrite ([`Fill::UserRowGone`]) go through
    /// [`Cache::fill`].
    pub async fn fill_missing(&self, entries: &[Fill]) -> Result<u64, CacheError> {
        if entries.iter().any(|e| matches!(e, Fill::UserRowGone(_))) {
            return self.fill(entries).await;
        }
        if entries.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for entry in entries {
            let (key, value, _) = self.entry(entry);
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

    /// [`Cache::fill`] on a connection of the caller's (batch work uses its
    /// own pooled connections and timeouts; no breaker).
    pub async fn fill_on<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        entries: &[Fill],
    ) -> redis::RedisResult<u64> {
        self.fill_pipelined(conn, entries, entries.len().max(1))
            .await
    }

    /// Writes many entries in one round trip: a pipeline of script calls
    /// of at most `per_call` entries each (a long script would hold Redis,
    /// which runs one at a time). Returns how many were written.
    pub async fn fill_pipelined<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        entries: &[Fill],
        per_call: usize,
    ) -> redis::RedisResult<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for chunk in entries.chunks(per_call.max(1)) {
            pipe.add_command(self.fill_command(chunk));
        }
        let written: Vec<u64> = match pipe.query_async(conn).await {
            // The script is loaded once per Redis server (and again after
            // a restart or SCRIPT FLUSH): EVALSHA says so, load and retry.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(FILL_SCRIPT)
                    .query_async::<String>(conn)
                    .await?;
                pipe.query_async(conn).await?
            }
            other => other?,
        };
        Ok(written.iter().sum())
    }

    /// `EVALSHA <fill script> n key… value ttl force …` for `entries`.
    fn fill_command(&self, entries: &[Fill]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.fill_script.get_hash()).arg(entries.len());
        let mut args = Vec::with_capacity(entries.len());
        for entry in entries {
            let (key, value, force) = self.entry(entry);
            cmd.arg(key);
            args.push((value, if force { "1" } else { "0" }));
        }
        for (value, force) in args {
            cmd.arg(value).arg(self.ttl_with_jitter()).arg(force);
        }
        cmd
    }

    /// The key and value an entry writes, and whether it must be written
    /// whatever the key holds.
    fn entry(&self, entry: &Fill) -> (String, Vec<u8>, bool) {
        match *entry {
            Fill::Pair(pair, v) => (self.keys.pair(pair), codec::encode(v), false),
            Fill::User(user, v) => (self.keys.user(user), codec::encode(v), false),
            Fill::UserRowGone(user) => {
                let gone = Versioned {
                    version: 0,
                    value: Presence::Gone,
                };
                (self.keys.user(user), codec::encode(gone), true)
            }
        }
    }

    /// For a batch: the viewer's pair entry with each of `targets` (none of
    /// which may be the viewer), in one `MGET`; and whether some key held a
    /// value that is not ours.
    pub async fn lookup_pairs(
        &self,
        viewer: UserId,
        targets: &[UserId],
    ) -> Result<(Vec<Option<Versioned<Relation>>>, bool), CacheError> {
        self.mget(
            targets
                .iter()
                .filter_map(|&target| Pair::new(viewer, target)),
            targets.len(),
            Keys::write_pair,
        )
        .await
    }

    /// For a batch: the user entry of each of `targets`, in one `MGET`;
    /// and whether some key held a value that is not ours.
    pub async fn lookup_users(
        &self,
        targets: &[UserId],
    ) -> Result<(Vec<Option<Versioned<Presence>>>, bool), CacheError> {
        self.mget(targets.iter().copied(), targets.len(), Keys::write_user)
            .await
    }

    /// `MGET` of `keys` (exactly `count` of them), each value decoded (a
    /// missing or malformed value is `None`), and whether one was malformed.
    async fn mget<T: codec::Entry, K>(
        &self,
        keys: impl Iterator<Item = K>,
        count: usize,
        write: impl Fn(&Keys, K, &mut String),
    ) -> Result<(Vec<Option<Versioned<T>>>, bool), CacheError> {
        if count == 0 {
            return Ok((Vec::new(), false));
        }
        let mut cmd = redis::cmd("MGET");
        let mut key = String::with_capacity(64);
        for k in keys {
            write(&self.keys, k, &mut key);
            cmd.arg(key.as_str());
        }
        let values: Vec<Option<Vec<u8>>> = self
            .guarded(cmd.query_async(&mut self.conn.clone()))
            .await?;
        if values.len() != count {
            // Never expected of Redis; a short answer must not shift
            // entries onto the wrong ids.
            return Err(CacheError::Redis(redis::RedisError::from((
                redis::ErrorKind::Client,
                "MGET answered a different number of values",
            ))));
        }
        let mut foreign = false;
        let decoded = values
            .iter()
            .map(|v| decode_noting(Some(v), &mut foreign))
            .collect();
        Ok((decoded, foreign))
    }

    /// A TTL of ±10% around the configured one, so that entries filled
    /// together do not all expire together.
    fn ttl_with_jitter(&self) -> u64 {
        let spread = self.ttl_seconds / 10;
        if spread == 0 {
            return self.ttl_seconds;
        }
        self.ttl_seconds - spread + rand::random_range(0..=2 * spread)
    }

    /// Runs a Redis call under the breaker (the timeouts are the connection's);
    /// a failure opens
    /// the breaker.
    async fn guarded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        if self.breaker_open() {
            return Err(CacheError::Open);
        }
        // The connection manager's own connection and response timeouts
        // (CONNSTATUS_REDIS_TIMEOUT_MS) bound the call; a second timer here
        // would cost every request a timer registration for nothing.
        let result = call.await.map_err(CacheError::Redis);
        if result.is_err() {
            self.open_until_ms
                .store(self.now_ms() + self.breaker_ms, Ordering::Relaxed);
            metrics::counter!("connstatus_redis_errors_total").increment(1);
            ANY_BREAKER_OPEN_UNTIL.fetch_max(unix_ms() + self.breaker_ms, Ordering::Relaxed);
        }
        result
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether Redis answers `PING` within `timeout`. Bypasses the breaker:
    /// readiness wants the truth, not the request path's shortcut.
    pub async fn ping(&self, timeout: Duration) -> bool {
        let mut conn = self.conn.clone();
        let ping = redis::cmd("PING");
        let call = ping.query_async::<String>(&mut conn);
        matches!(tokio::time::timeout(timeout, call).await, Ok(Ok(_)))
    }

    /// Deletes every key under the prefix (used by `seed --reset`, whose
    /// fresh rows start again at version 1 and would otherwise lose to the
    /// old, higher cached versions). Not for the request path.
    pub async fn purge(&self) -> Result<u64, CacheError> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.keys.pattern())
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                removed += redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<u64>(&mut conn)
                    .await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}
