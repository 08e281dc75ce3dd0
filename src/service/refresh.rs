//! The one refresh mechanism, and the cache-invalidation hooks built on it:
//! how anything that changed MySQL tells connstatus (see
//! `docs/api.md#events` and `docs/consistency.md`).
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
//! A writer that changed a pair in MySQL (following the schema's rules,
//! `docs/consistency.md#the-shared-schema`)
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

use crate::cache::Cache;
use crate::config::Settings;
use crate::db::{self, outbox, reads, Db, DbError};
use crate::domain::{Entry, Pair, Subject, UserId};
use crate::meters;

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
pub type HookError = DbError;

/// The hook API, over one cache and one MySQL pool.
#[derive(Clone)]
pub struct Hooks {
    cache: Arc<Cache>,
    db: Db,
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
    /// Hooks over an existing cache and database.
    pub fn new(cache: Arc<Cache>, db: Db) -> Self {
        Self { cache, db }
    }

    /// Hooks configured like the service (`DATABASE_URL`, `REDIS_URL`,
    /// `CONNSTATUS_REDIS_PREFIX`, ...). Call inside a Tokio runtime.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        let cache = Cache::from_settings(settings)?;
        Ok(Self::new(Arc::new(cache), db::Db::from_settings(settings)?))
    }

    /// The pair of `a` and `b` changed. (`a == b` names no pair: a no-op.)
    pub async fn pair_changed(&self, a: UserId, b: UserId) -> Result<Refreshed, HookError> {
        let Some(pair) = Pair::new(a, b) else {
            return Ok(Refreshed::default());
        };
        self.refresh(Subject::Pair(pair)).await
    }

    /// `user` was created, deleted or restored: its cached existence is
    /// re-read.
    pub async fn user_changed(&self, user: UserId) -> Result<Refreshed, HookError> {
        self.refresh(Subject::User(user)).await
    }

    /// `user` was created (a cached "not found" must go).
    pub async fn user_created(&self, user: UserId) -> Result<Refreshed, HookError> {
        self.user_changed(user).await
    }

    /// `user` was deleted (soft: `deleted_at` set; hard: the row removed).
    pub async fn user_deleted(&self, user: UserId) -> Result<Refreshed, HookError> {
        self.user_changed(user).await
    }

    /// Every pair of `user` changed (e.g. a bulk import or repair).
    pub async fn user_pairs_changed(&self, user: UserId) -> Result<Refreshed, HookError> {
        let pairs = self
            .db
            .query(async |conn| reads::pairs_of(conn, user).await)
            .await?;
        let subjects: Vec<Subject> = pairs.iter().map(|&(p, _)| Subject::Pair(p)).collect();
        let mut done = Refreshed::default();
        for chunk in subjects.chunks(FILL_CHUNK) {
            // No queue rows to settle here: a bulk refresh is not queued
            // unless it fails.
            done += self.refresh_all(chunk, false).await?;
        }
        Ok(done)
    }

    /// Re-reads one subject from MySQL and writes it to the cache; on
    /// success its queue entry (if any) up to that version is done, on a
    /// Redis failure it is queued.
    pub async fn refresh(&self, subject: Subject) -> Result<Refreshed, HookError> {
        self.refresh_all(&[subject], true).await
    }

    /// Every refresh ends here. Leases first, on each subject's key, taken
    /// whatever the key holds (this refresh's read comes after, so it is at
    /// least as new); then the MySQL reads; then the fills, each landing
    /// only while its lease is still there. A later refresh or reader that
    /// took the key since read later still; an eviction or a restart took
    /// the lease away with the entry. Either way an older read never lands,
    /// not even on a key emptied in between (see `docs/consistency.md#leases`).
    async fn refresh_all(
        &self,
        subjects: &[Subject],
        dequeue: bool,
    ) -> Result<Refreshed, HookError> {
        let leases = self.cache.lease(subjects, true).await;
        let read = self
            .db
            .query(async |conn| {
                let mut entries = Vec::with_capacity(subjects.len());
                for &subject in subjects {
                    entries.push(read_entry(conn, subject).await?);
                }
                Ok(entries)
            })
            .await;
        let entries = match read {
            Ok(entries) => entries,
            Err(e) => {
                if let Ok(leases) = leases {
                    let back: Vec<_> = leases.into_iter().flatten().map(|l| (l, None)).collect();
                    let _ = self.cache.fill_leased(&back).await;
                }
                return Err(e);
            }
        };
        let outcome = match leases {
            Ok(leases) => {
                let fills: Vec<_> = leases
                    .into_iter()
                    .zip(&entries)
                    .filter_map(|(lease, &entry)| Some((lease?, Some(entry))))
                    .collect();
                self.cache.fill_leased(&fills).await
            }
            Err(e) => Err(e),
        };
        let mut done = self.settle(&entries, outcome, dequeue).await?;
        done.read = entries.len() as u64;
        Ok(done)
    }

    /// Records the outcome of writing `entries` in the metrics and the
    /// queue: queued on a Redis failure; on success, their queue rows up to
    /// those versions are done (when `dequeue`).
    async fn settle(
        &self,
        entries: &[Entry],
        outcome: Result<u64, crate::cache::CacheError>,
        dequeue: bool,
    ) -> Result<Refreshed, HookError> {
        let subjects: Vec<(Subject, u64)> =
            entries.iter().map(|e| (e.subject(), e.version())).collect();
        let n = subjects.len() as u64;
        match outcome {
            Ok(written) => {
                meters::cache_fills(written, n);
                if dequeue {
                    self.db
                        .query(async |conn| {
                            for &(subject, version) in &subjects {
                                outbox::dequeue(conn, subject, version).await?;
                            }
                            Ok(())
                        })
                        .await?;
                }
                Ok(Refreshed {
                    written,
                    ..Refreshed::default()
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, entries = n, "cache unavailable: refresh queued");
                meters::cache_fill_errors(n);
                meters::refresh_queued(n);
                self.db
                    .query(async |conn| {
                        for &(subject, version) in &subjects {
                            outbox::enqueue(conn, subject, version).await?;
                        }
                        Ok(())
                    })
                    .await?;
                Ok(Refreshed {
                    queued: n,
                    ..Refreshed::default()
                })
            }
        }
    }

    /// Retries queued refreshes older than `min_age` (younger ones belong to
    /// requests still running); returns how many landed.
    pub async fn sweep(&self, min_age: Duration, limit: i64) -> Result<u64, HookError> {
        if self.cache.breaker_open() {
            return Ok(0);
        }
        let ms = u64::try_from(min_age.as_millis()).unwrap_or(u64::MAX);
        let overdue = self
            .db
            .query(async |conn| outbox::overdue(conn, ms, limit).await)
            .await?;
        let mut landed = 0;
        for subject in overdue {
            if self.refresh(subject).await?.queued == 0 {
                landed += 1;
            }
        }
        Ok(landed)
    }
}

/// A subject as MySQL has it now.
async fn read_entry(
    conn: &mut diesel_async::AsyncMysqlConnection,
    subject: Subject,
) -> diesel::QueryResult<Entry> {
    Ok(match subject {
        Subject::Pair(pair) => Entry::Pair(pair, reads::pair(conn, pair).await?),
        Subject::User(user) => Entry::User(user, reads::user(conn, user).await?),
    })
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
