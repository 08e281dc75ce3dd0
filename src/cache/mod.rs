//! The Redis cache: keys, values, lookups and writes, behind a circuit
//! breaker. It knows nothing of MySQL: callers hand it [`Entry`]s read
//! elsewhere. See `docs/consistency.md` for why its writes are safe.
//!
//! The request path shares one multiplexed `ConnectionManager` per worker (no
//! pool checkout, so no `PING` per request; it reconnects by itself). Every
//! call has a timeout, and a failure opens a short circuit breaker during which
//! the request path does not touch Redis at all and answers from MySQL: Redis
//! is a cache, never the truth.
//!
//! Writes (see `write.rs`): misses and refreshes fill only under a lease
//! they took before reading MySQL ([`Cache::lease`], [`Cache::fill_leased`]);
//! the warming job writes over older values and leases empty keys
//! ([`Cache::upgrade_with`]).

pub mod codec;
mod identity;
pub mod link;
pub mod near;
mod read;
mod write;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::Script;

use crate::config::CacheSettings;
use codec::Keys;
use link::{Link, Target};

pub use identity::ServerIdentity;
pub use read::Cached;
pub use write::{Lease, LeaseFor, Upgrade};

/// The most one bulk call may take ([`Cache::for_bulk`]).
const BULK_TIMEOUT_MS: u64 = 10_000;

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

/// A call that outlived its timeout.
fn timed_out() -> CacheError {
    CacheError::Redis(redis::RedisError::from((redis::ErrorKind::Io, "timed out")))
}

/// Clears the probe flag when dropped.
struct Probing<'a>(&'a AtomicBool);

impl Drop for Probing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

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

/// The Redis cache of one worker.
pub struct Cache {
    keys: Keys,
    link: Link,
    /// The near cache's tracked connection, when the near cache is on:
    /// lookups then read through it (`near.rs`).
    near: Option<near::NearLink>,
    upgrade_script: Script,
    lease_script: Script,
    take_script: Script,
    fill_script: Script,
    relations_per_user: u64,
    ttl_seconds: u64,
    negative_ttl_seconds: u64,
    lease_ms: u64,
    breaker_ms: u64,
    /// The most any request-path call may take, reconnection included.
    timeout: Duration,
    /// Milliseconds since `epoch` until which the breaker is open.
    open_until_ms: AtomicU64,
    /// Set when a call failed, cleared by the next call that succeeds:
    /// once the breaker's time is over, one call (the probe) goes first.
    tripped: AtomicBool,
    /// A probe is under way: the others keep skipping Redis meanwhile.
    probing: AtomicBool,
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
    /// Where the settings say Redis is (`REDIS_URL`, `CONNSTATUS_REDIS_MODE`),
    /// each call bounded by the request path's Redis timeout.
    pub fn target(settings: &crate::config::Settings) -> Target {
        Target::new(
            settings.redis_urls(),
            &settings.cache,
            Duration::from_millis(settings.cache.redis_timeout_ms),
        )
    }

    /// A cache from the settings.
    pub fn from_settings(settings: &crate::config::Settings) -> Result<Self, String> {
        Self::new(Self::target(settings).link()?, &settings.cache)
    }

    /// A cache for bulk refreshes (the binlog follower's chunks of
    /// thousands of spots, one script call per slot in a cluster): the
    /// request path's timeout is for one lookup, not for those.
    pub fn for_bulk(settings: &crate::config::Settings) -> Result<Self, String> {
        let mut bulk = settings.clone();
        bulk.cache.redis_timeout_ms = bulk.cache.redis_timeout_ms.max(BULK_TIMEOUT_MS);
        Self::from_settings(&bulk)
    }

    /// Prepares a cache over `link`; nothing is connected until first use,
    /// so a Redis that is down at start-up does not stop the service (it
    /// answers from MySQL until Redis is back). Make one per actix worker,
    /// inside the worker: the multiplexed connection's driver task then runs
    /// on that worker's own thread.
    pub fn new(link: Link, settings: &CacheSettings) -> Result<Self, String> {
        let timeout = Duration::from_millis(settings.redis_timeout_ms);
        Ok(Self {
            keys: Keys::new(&settings.redis_prefix),
            link,
            near: None,
            upgrade_script: write::script(write::UPGRADE_SCRIPT),
            lease_script: write::script(write::LEASE_SCRIPT),
            take_script: write::script(write::TAKE_SCRIPT),
            fill_script: write::script(write::FILL_SCRIPT),
            relations_per_user: settings.cache_relations_per_user,
            ttl_seconds: settings.cache_ttl_seconds,
            negative_ttl_seconds: settings.negative_ttl_seconds,
            lease_ms: settings.cache_lease_ms,
            breaker_ms: settings.redis_breaker_ms,
            timeout,
            open_until_ms: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
        })
    }

    /// This cache with the near cache in front of its lookups, read through
    /// `link` (the request path's caches, when `CONNSTATUS_CACHE_L1_ENTRIES`
    /// is set).
    #[must_use]
    pub fn with_near(mut self, link: near::NearLink) -> Self {
        self.near = Some(link);
        self
    }

    /// The key builder (for tools and tests that inspect the cache).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether the breaker currently keeps the request path off Redis.
    pub fn breaker_open(&self) -> bool {
        self.now_ms() < self.open_until_ms.load(Ordering::Relaxed)
    }

    /// Runs a request-path Redis call under the breaker, bounded by
    /// `CONNSTATUS_REDIS_TIMEOUT_MS` whatever the connection is doing (a
    /// blackholed server holds a reconnection far longer than one
    /// timeout); a failure opens the breaker. When the breaker's time is
    /// over, one call probes Redis while the others keep skipping it, so
    /// that a Redis still gone costs one timeout per period, not one per
    /// request.
    async fn guarded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        if self.breaker_open() {
            return Err(CacheError::Open);
        }
        let probe = self.tripped.load(Ordering::Acquire);
        if probe && self.probing.swap(true, Ordering::AcqRel) {
            return Err(CacheError::Open);
        }
        // Ends the probe however this call ends (a caller may drop it).
        let _probing = probe.then_some(Probing(&self.probing));
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(CacheError::Redis),
            Err(_) => Err(timed_out()),
        };
        match &result {
            Ok(_) if probe => self.tripped.store(false, Ordering::Release),
            Ok(_) => {}
            Err(_) => {
                self.tripped.store(true, Ordering::Release);
                self.open_until_ms
                    .store(self.now_ms() + self.breaker_ms, Ordering::Relaxed);
                metrics::counter!("connstatus_redis_errors_total").increment(1);
                ANY_BREAKER_OPEN_UNTIL.fetch_max(unix_ms() + self.breaker_ms, Ordering::Relaxed);
            }
        }
        result
    }

    /// A call outside the request path (no breaker), bounded by the same
    /// timeout: the link itself puts no timer on a command (`link.rs`).
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(CacheError::Redis),
            Err(_) => Err(timed_out()),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
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

    /// Asks Redis (one `PING`, within the request-path timeout) whether it
    /// is back; if so the breaker closes at once. For background work that
    /// must not wait out a breaker period.
    pub async fn probe(&self) -> bool {
        let up = self.ping(self.timeout).await;
        if up {
            self.open_until_ms.store(0, Ordering::Relaxed);
            self.tripped.store(false, Ordering::Release);
        }
        up
    }

    /// Whether Redis answers `PING` within `timeout`. Bypasses the breaker:
    /// readiness wants the truth, not the request path's shortcut.
    pub async fn ping(&self, timeout: Duration) -> bool {
        let mut conn = self.link.clone();
        let ping = redis::cmd("PING");
        let call = ping.query_async::<String>(&mut conn);
        matches!(tokio::time::timeout(timeout, call).await, Ok(Ok(_)))
    }

    /// Deletes every key under the prefix (used by `seed --reset`, whose
    /// fresh rows start again at version 1 and would otherwise lose to the
    /// old, higher cached versions). Not for the request path, and not for
    /// a cluster, where it would scan every node: there the prefix is bumped
    /// instead (`Ok(None)`).
    pub async fn purge(&self) -> Result<Option<u64>, CacheError> {
        if self.link.clustered() {
            return Ok(None);
        }
        let mut conn = self.link.clone();
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(self.keys.pattern())
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) =
                self.bounded(scan.query_async(&mut conn)).await?;
            if !keys.is_empty() {
                removed += self
                    .bounded(
                        redis::cmd("UNLINK")
                            .arg(&keys)
                            .query_async::<u64>(&mut conn),
                    )
                    .await?;
            }
            if next == 0 {
                return Ok(Some(removed));
            }
            cursor = next;
        }
    }
}
