//! Cache-invalidation hooks: how anything that changed MySQL tells connstatus
//! (CONTRACT section 5).
//!
//! A hook is a notice, not a command: it re-reads the pair or user from MySQL
//! and writes the cache only if what it read is newer than what the cache
//! holds — the same atomic step as every fill. So hooks can be called late,
//! twice, or out of order, and a slow reader can never put an older state
//! back. Connection mutations, the `POST /internal/v1/events` endpoint and
//! the cache-warming job all end here.
//!
//! When Redis cannot be written, the refresh is recorded in MySQL's
//! `cache_refresh_queue` and retried by every running instance
//! ([`Hooks::sweep`]) until it lands: once Redis answers again, a change is
//! in the cache within the retry interval, even if the instance that made it
//! has died.
//!
//! # Example
//!
//! A writer that changed a pair in MySQL (following CONTRACT section 5a)
//! tells the cache:
//!
//! ```no_run
//! use connstatus::config::Settings;
//! use connstatus::domain::UserId;
//! use connstatus::hooks::Hooks;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = Settings::load()?;
//! let hooks = Hooks::from_settings(&settings)?;
//! let (alice, bob) = (UserId::new(1).ok_or("id")?, UserId::new(33).ok_or("id")?);
//!
//! // ... UPDATE user_connections SET state = 'connected', ... WHERE ...
//! let refreshed = hooks.pair_changed(alice, bob).await?;
//! println!("read {}, written {}, queued {}", refreshed.read, refreshed.written, refreshed.queued);
//!
//! // ... UPDATE users SET deleted_at = NOW(6) WHERE id = 33
//! hooks.user_deleted(bob).await?;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::cache::{Cache, Fill};
use crate::config::Settings;
use crate::db::writes::{self, Queued};
use crate::db::{self, reads, Pool, PooledConnection};
use crate::domain::{Pair, UserId};

/// What a hook did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Entries read from MySQL.
    pub read: u64,
    /// Entries written to Redis (the others were not newer).
    pub written: u64,
    /// Entries Redis could not take now, queued for retry.
    pub queued: u64,
}

impl std::ops::AddAssign for Refreshed {
    fn add_assign(&mut self, other: Self) {
        self.read += other.read;
        self.written += other.written;
        self.queued += other.queued;
    }
}

/// Why a hook could not run: MySQL, the source of truth, is unavailable.
/// (Redis being unavailable is not an error: the refresh is queued.)
#[derive(Debug, thiserror::Error)]
#[error("database unavailable: {0}")]
pub struct HookError(pub String);

impl From<diesel::result::Error> for HookError {
    fn from(e: diesel::result::Error) -> Self {
        HookError(e.to_string())
    }
}

/// The hook API, over one cache and one MySQL pool.
#[derive(Clone)]
pub struct Hooks {
    cache: Arc<Cache>,
    db: Pool,
    db_timeout: Duration,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// Pairs written per script call when refreshing many.
const FILL_CHUNK: usize = 500;

impl Hooks {
    /// Hooks over an existing cache and pool.
    pub fn new(cache: Arc<Cache>, db: Pool, db_timeout: Duration) -> Self {
        Self {
            cache,
            db,
            db_timeout,
        }
    }

    /// Hooks configured like the service (`DATABASE_URL`, `REDIS_URL`,
    /// `CONNSTATUS_REDIS_PREFIX`, ...). Call inside a Tokio runtime.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        let cache = Cache::new(Cache::client(&settings.redis_url)?, &settings.cache)?;
        let pool = db::pool(
            &settings.database_url,
            settings.mysql_pool_size,
            settings.mysql_timeout(),
        )?;
        Ok(Self::new(Arc::new(cache), pool, settings.mysql_timeout()))
    }

    /// The cache these hooks write.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The MySQL pool these hooks read.
    pub fn db(&self) -> &Pool {
        &self.db
    }

    /// A pooled connection, within the MySQL timeout.
    pub async fn connection(&self) -> Result<PooledConnection, HookError> {
        tokio::time::timeout(self.db_timeout, self.db.get())
            .await
            .map_err(|_| HookError("timed out waiting for a connection".into()))?
            .map_err(|e| HookError(e.to_string()))
    }

    /// The pair of `a` and `b` changed. (`a == b` names no pair: a no-op.)
    pub async fn pair_changed(&self, a: UserId, b: UserId) -> Result<Refreshed, HookError> {
        let Some(pair) = Pair::new(a, b) else {
            return Ok(Refreshed::default());
        };
        self.refresh(Queued::Pair(pair)).await
    }

    /// Every pair of `user` changed (e.g. a bulk import or repair).
    pub async fn user_pairs_changed(&self, user: UserId) -> Result<Refreshed, HookError> {
        self.on_connection(async |conn| self.user_pairs_on(conn, user).await)
            .await
    }

    /// Runs `work` on a pooled connection; one that failed is discarded
    /// rather than handed out again.
    async fn on_connection<T>(
        &self,
        work: impl AsyncFnOnce(&mut PooledConnection) -> Result<T, HookError>,
    ) -> Result<T, HookError> {
        let mut conn = self.connection().await?;
        let result = work(&mut conn).await;
        if result.is_err() {
            db::discard(conn);
        }
        result
    }

    async fn user_pairs_on(
        &self,
        conn: &mut PooledConnection,
        user: UserId,
    ) -> Result<Refreshed, HookError> {
        let conn: &mut diesel_async::AsyncMysqlConnection = conn;
        let pairs = self.bounded(reads::pairs_of(conn, user)).await?;
        let mut done = Refreshed {
            read: pairs.len() as u64,
            ..Refreshed::default()
        };
        for chunk in pairs.chunks(FILL_CHUNK) {
            let fills: Vec<Fill> = chunk.iter().map(|&(pair, v)| Fill::Pair(pair, v)).collect();
            match self.cache.fill(&fills).await {
                Ok(written) => {
                    crate::metrics::cache_fills(written, chunk.len() as u64);
                    done.written += written;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cache unavailable: refresh queued");
                    crate::metrics::cache_fill_errors(chunk.len() as u64);
                    crate::metrics::refresh_queued(chunk.len() as u64);
                    for &(pair, v) in chunk {
                        self.bounded(writes::enqueue(conn, Queued::Pair(pair), v.version))
                            .await?;
                    }
                    done.queued += chunk.len() as u64;
                }
            }
        }
        Ok(done)
    }

    /// `user` was created, deleted or restored: its cached existence is
    /// re-read.
    pub async fn user_changed(&self, user: UserId) -> Result<Refreshed, HookError> {
        self.refresh(Queued::User(user)).await
    }

    /// `user` was created (a cached "not found" must go).
    pub async fn user_created(&self, user: UserId) -> Result<Refreshed, HookError> {
        self.user_changed(user).await
    }

    /// `user` was deleted (soft: `deleted_at` set; hard: the row removed).
    pub async fn user_deleted(&self, user: UserId) -> Result<Refreshed, HookError> {
        self.user_changed(user).await
    }

    /// Retries queued refreshes older than `min_age` (younger ones belong to
    /// requests still running); returns how many landed.
    pub async fn sweep(&self, min_age: Duration, limit: i64) -> Result<u64, HookError> {
        if self.cache.breaker_open() {
            return Ok(0);
        }
        let overdue = {
            let mut conn = self.connection().await?;
            let ms = u64::try_from(min_age.as_millis()).unwrap_or(u64::MAX);
            match self.bounded(writes::overdue(&mut conn, ms, limit)).await {
                Ok(overdue) => overdue,
                Err(e) => {
                    db::discard(conn);
                    return Err(e);
                }
            }
        };
        let mut landed = 0;
        for entry in overdue {
            if self.refresh(entry).await?.queued == 0 {
                landed += 1;
            }
        }
        Ok(landed)
    }

    /// Re-reads one entry from MySQL and fills it only if newer; on success
    /// its queue entry (if any) up to that version is done, on a Redis
    /// failure it is queued.
    pub(crate) async fn refresh(&self, entry: Queued) -> Result<Refreshed, HookError> {
        self.on_connection(async |conn| self.refresh_on(conn, entry).await)
            .await
    }

    async fn refresh_on(
        &self,
        conn: &mut PooledConnection,
        entry: Queued,
    ) -> Result<Refreshed, HookError> {
        let conn: &mut diesel_async::AsyncMysqlConnection = conn;
        let (fill, version) = match entry {
            Queued::Pair(pair) => {
                let v = self.bounded(reads::pair(conn, pair)).await?;
                (Fill::Pair(pair, v), v.version)
            }
            Queued::User(user) => match self.bounded(reads::user(conn, user)).await? {
                Some(v) => (Fill::User(user, v), v.version),
                None => (Fill::UserRowGone(user), 0),
            },
        };
        let mut done = Refreshed {
            read: 1,
            ..Refreshed::default()
        };
        match self.cache.fill(&[fill]).await {
            Ok(written) => {
                crate::metrics::cache_fills(written, 1);
                done.written = written;
                self.bounded(writes::dequeue(conn, entry, version)).await?;
            }
            Err(e) => {
                tracing::warn!(error = %e, ?entry, "cache unavailable: refresh queued");
                crate::metrics::cache_fill_errors(1);
                crate::metrics::refresh_queued(1);
                self.bounded(writes::enqueue(conn, entry, version)).await?;
                done.queued = 1;
            }
        }
        Ok(done)
    }

    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = diesel::QueryResult<T>>,
    ) -> Result<T, HookError> {
        let result = tokio::time::timeout(self.db_timeout, work)
            .await
            .map_err(|_| HookError("timed out".into()))?
            .map_err(HookError::from);
        if result.is_err() {
            crate::metrics::mysql_error();
        }
        result
    }
}

/// Runs [`Hooks::sweep`] every `every` until the process ends: the retry
/// loop behind the refresh queue. Errors are logged and retried next round.
pub async fn sweep_forever(hooks: Hooks, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match hooks.sweep(every, 1000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(landed = n, "queued cache refreshes landed"),
            Err(e) => tracing::debug!(error = %e, "refresh sweep skipped"),
        }
    }
}
