//! The one refresh mechanism, and the cache-invalidation hooks built on it:
//! how anything that changed MySQL tells connstatus (see
//! `docs/api.md#events` and `docs/consistency.md`).
//!
//! A hook is a notice, not a command: it takes a lease on the key, re-reads
//! the pair or user from MySQL, and fills the cache only while its lease is
//! still there (see [`Hooks::refresh`]). So hooks can be called late, twice,
//! or out of order, and a slow reader or refresh can never put an older
//! state back. Connection mutations, the `POST /internal/v1/events`
//! endpoint, the queue's sweeper and the replay all end here.
//!
//! When Redis cannot be written, the refresh is recorded in MySQL's
//! `cache_refresh_queue` and retried by every running instance
//! ([`Hooks::sweep`]) until it lands: once Redis answers again, a change is
//! in the cache within the retry interval, even if the instance that made it
//! has died. Landed refreshes stay recorded for the replay window: when the
//! sweeper finds a different Redis server behind the URL (a failover, a
//! restart from an older snapshot: [`Hooks::watch_server`]), it replays them,
//! since the writes that server acknowledged may be gone.
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
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};

use crate::cache::{Cache, CacheError, Lease, LeaseFor, ServerIdentity};
use crate::config::Settings;
use crate::db::{self, outbox, reads, Db, DbError};
use crate::domain::{Entry, Pair, Subject, UserId};
use crate::meters;

/// What a hook did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Entries read from MySQL.
    pub read: u64,
    /// Entries written to Redis (the others' leases were taken over by a
    /// later refresh, or lost).
    pub written: u64,
    /// Entries Redis could not take now, queued for retry (for
    /// [`Hooks::subjects_changed`]: also those MySQL did not answer for,
    /// which stay queued).
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

/// What [`Hooks::refresh_unqueued`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Landed {
    /// Entries written (the others' leases were taken over by a later
    /// refresh or reader, which reads later still).
    pub written: u64,
    /// Subjects MySQL still showed older than asked when the patience ran
    /// out (refreshed as read).
    pub unseen: u64,
}

/// Why [`Hooks::refresh_unqueued`] did not land.
#[derive(Debug, thiserror::Error)]
pub enum NotLanded {
    /// MySQL did not answer the read.
    #[error("{0}")]
    Mysql(DbError),
    /// Redis did not take the leases or the fills.
    #[error("{0}")]
    Redis(CacheError),
}

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

/// Refreshes of one batch of events that run at once (each holds a MySQL
/// connection while it reads).
pub const EVENT_REFRESHES_AT_ONCE: usize = 8;

impl Hooks {
    /// Hooks over an existing cache and database.
    pub fn new(cache: Arc<Cache>, db: Db) -> Self {
        Self { cache, db }
    }

    /// The same hooks over another cache (the follower's, with bulk
    /// timeouts).
    pub fn with_cache(&self, cache: Arc<Cache>) -> Self {
        Self {
            cache,
            db: self.db.clone(),
        }
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

    /// Refreshes each subject of `wanted` (leases, one read of them all,
    /// fills) once MySQL shows it at least at its version, and queues
    /// nothing when it fails: for a caller that keeps its own record of
    /// what is still to refresh and retries until it lands (the binlog
    /// follower, whose stored position is that record). A subject still
    /// older than asked after `patience` is refreshed as read, and counted
    /// in [`Landed::unseen`]. The leases outlast the patience: keep it
    /// well below `CONNSTATUS_CACHE_LEASE_MS`.
    pub async fn refresh_unqueued(
        &self,
        wanted: &[(Subject, u64)],
        patience: Duration,
    ) -> Result<Landed, NotLanded> {
        if wanted.is_empty() {
            return Ok(Landed::default());
        }
        let n = wanted.len() as u64;
        let subjects: Vec<Subject> = wanted.iter().map(|&(s, _)| s).collect();
        // Redis away: nothing to read for.
        let leases = match self.cache.lease(&subjects, LeaseFor::Refresh).await {
            Ok(leases) => Ok(leases),
            Err(e) => {
                meters::cache_fill_errors(n);
                return Err(NotLanded::Redis(e));
            }
        };
        let (_, unseen, outcome) = self
            .read_then_fill(leases, async || self.read_at_least(wanted, patience).await)
            .await
            .map_err(NotLanded::Mysql)?;
        match outcome {
            Ok(written) => {
                meters::cache_fills(written, n);
                Ok(Landed { written, unseen })
            }
            Err(e) => {
                meters::cache_fill_errors(n);
                Err(NotLanded::Redis(e))
            }
        }
    }

    /// `wanted` as MySQL has it, read again (the ones still older than
    /// asked) until each is at least at its version or `patience` is over;
    /// with how many were still older then.
    async fn read_at_least(
        &self,
        wanted: &[(Subject, u64)],
        patience: Duration,
    ) -> Result<(Vec<Entry>, u64), DbError> {
        let subjects: Vec<Subject> = wanted.iter().map(|&(s, _)| s).collect();
        let mut entries = self
            .db
            .query(async |conn| reads::entries(conn, &subjects).await)
            .await?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let behind: Vec<usize> = (0..entries.len())
                .filter(|&i| entries[i].version() < wanted[i].1)
                .collect();
            if behind.is_empty() || started.elapsed() >= patience {
                return Ok((entries, behind.len() as u64));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
            let again: Vec<Subject> = behind.iter().map(|&i| subjects[i]).collect();
            let fresh = self
                .db
                .query(async |conn| reads::entries(conn, &again).await)
                .await?;
            for (i, entry) in behind.into_iter().zip(fresh) {
                entries[i] = entry;
            }
        }
    }

    /// [`Hooks::read_and_write`], then the queue settled for them.
    async fn refresh_all(
        &self,
        subjects: &[Subject],
        dequeue: bool,
    ) -> Result<Refreshed, HookError> {
        let (entries, outcome) = self.read_and_write(subjects).await?;
        let mut done = self.settle(&entries, outcome, dequeue).await?;
        done.read = entries.len() as u64;
        Ok(done)
    }

    /// Subjects that changed, as named by a batch of events: every one is
    /// recorded in the queue first (one multi-row insert, "refresh needed,
    /// version unknown"), then refreshed, [`EVENT_REFRESHES_AT_ONCE`] at a
    /// time, so the sender reads its write at once in the normal case. Fails
    /// only when the record fails (then nothing may be acknowledged); a
    /// refresh that fails afterwards (Redis or MySQL) stays queued, counted
    /// in `queued`, and the sweeper lands it.
    pub async fn subjects_changed(&self, subjects: &[Subject]) -> Result<Refreshed, HookError> {
        if subjects.is_empty() {
            return Ok(Refreshed::default());
        }
        self.db
            .query(async |conn| outbox::record(conn, subjects).await)
            .await?;
        let done: Vec<Refreshed> = stream::iter(subjects.iter().copied())
            .map(|subject| self.refresh_recorded(subject))
            .buffer_unordered(EVENT_REFRESHES_AT_ONCE)
            .collect()
            .await;
        let mut total = Refreshed::default();
        for one in done {
            total += one;
        }
        Ok(total)
    }

    /// Refreshes a subject whose refresh is recorded already: on any
    /// failure it is left to the sweeper (nothing is queued again).
    async fn refresh_recorded(&self, subject: Subject) -> Refreshed {
        let left = Refreshed {
            queued: 1,
            ..Refreshed::default()
        };
        // Redis failed a moment ago: the rest of the batch waits for the
        // sweeper rather than costing MySQL a read each for nothing.
        if self.cache.breaker_open() {
            meters::cache_fill_errors(1);
            meters::refresh_queued(1);
            return left;
        }
        match self.read_and_write(&[subject]).await {
            Ok((entries, Ok(written))) => match self.settle(&entries, Ok(written), true).await {
                Ok(done) => Refreshed { read: 1, ..done },
                Err(e) => {
                    tracing::warn!(error = %e, "refresh written, not marked landed: the sweeper will");
                    Refreshed {
                        read: 1,
                        written,
                        queued: 1,
                    }
                }
            },
            Ok((_, Err(e))) => {
                tracing::warn!(error = %e, "cache unavailable: refresh left queued");
                meters::cache_fill_errors(1);
                meters::refresh_queued(1);
                Refreshed { read: 1, ..left }
            }
            Err(e) => {
                tracing::warn!(error = %e, "mysql unavailable: refresh left queued");
                left
            }
        }
    }

    /// Every refresh ends here. Leases first, on each subject's key, taken
    /// whatever the key holds (this refresh's read comes after, so it is at
    /// least as new); then the MySQL reads; then the fills, each landing
    /// only while its lease is still there. A later refresh or reader that
    /// took the key since read later still; an eviction or a restart took
    /// the lease away with the entry. Either way an older read never lands,
    /// not even on a key emptied in between (see `docs/consistency.md#leases`).
    /// Returns the entries read and what Redis answered; nothing is queued
    /// here. On a MySQL failure the leases are given back.
    async fn read_and_write(
        &self,
        subjects: &[Subject],
    ) -> Result<(Vec<Entry>, Result<u64, CacheError>), HookError> {
        let leases = self.cache.lease(subjects, LeaseFor::Refresh).await;
        let read = async || {
            let entries = self
                .db
                .query(async |conn| match subjects {
                    [one] => Ok(vec![read_entry(conn, *one).await?]),
                    // Many (bulk refreshes): a query per table, not one per
                    // subject.
                    many => reads::entries(conn, many).await,
                })
                .await?;
            Ok((entries, ()))
        };
        let (entries, (), outcome) = self.read_then_fill(leases, read).await?;
        Ok((entries, outcome))
    }

    /// The read and the fills of a leased refresh: `read` (after the leases
    /// were taken) gives the entries in the order of the leases, each is
    /// filled while its lease is still in its key; on a MySQL failure the
    /// leases are given back. Without leases (Redis failed), only the read.
    async fn read_then_fill<X>(
        &self,
        leases: Result<Vec<Option<Lease>>, CacheError>,
        read: impl AsyncFnOnce() -> Result<(Vec<Entry>, X), DbError>,
    ) -> Result<(Vec<Entry>, X, Result<u64, CacheError>), DbError> {
        let (entries, extra) = match read().await {
            Ok(read) => read,
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
        Ok((entries, extra, outcome))
    }

    /// Records the outcome of writing `entries` in the metrics and the
    /// queue: queued on a Redis failure; on success, their queue rows up to
    /// those versions are marked landed (when `dequeue`).
    async fn settle(
        &self,
        entries: &[Entry],
        outcome: Result<u64, CacheError>,
        dequeue: bool,
    ) -> Result<Refreshed, HookError> {
        let subjects: Vec<(Subject, u64)> =
            entries.iter().map(|e| (e.subject(), e.version())).collect();
        let n = subjects.len() as u64;
        match outcome {
            Ok(written) => {
                meters::cache_fills(written, n);
                // A fill refused (its lease was taken over by a later
                // refresh, or lost) leaves its row pending: the later
                // refresh may yet give up, and then the sweep must come.
                if dequeue && written == n {
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

    /// Retries the queued refreshes that are due and older than `min_age`
    /// (younger ones belong to requests still running), at most `limit`;
    /// returns how many Redis took. A row Redis took that is still pending
    /// (its queued version is not reached) is postponed, first by `min_age`,
    /// then each time twice as long up to [`RETRY_CAP`], so rows that never
    /// settle cannot hold back those behind them. The round stops at the
    /// first Redis failure: the rows are queued already, and the rest would
    /// only cost MySQL a read each for nothing; an outage is not an attempt.
    pub async fn sweep(&self, min_age: Duration, limit: i64) -> Result<Swept, HookError> {
        // The breaker keeps requests off a failing Redis; the sweeper asks
        // Redis itself (one PING), so that queued refreshes land as soon as
        // Redis answers again, not a breaker period later.
        if self.cache.breaker_open() && !self.cache.probe().await {
            return Ok(Swept::default());
        }
        let ms = u64::try_from(min_age.as_millis()).unwrap_or(u64::MAX);
        let overdue = self
            .db
            .query(async |conn| outbox::overdue(conn, ms, limit).await)
            .await?;
        let taken = overdue.len() as u64;
        let mut landed = 0;
        let mut tried = Vec::with_capacity(overdue.len());
        let mut failed = None;
        for subject in overdue {
            let outcome = match self.read_and_write(&[subject]).await {
                Ok((entries, Ok(written))) => self.settle(&entries, Ok(written), true).await,
                Ok((_, Err(e))) => {
                    meters::cache_fill_errors(1);
                    tracing::debug!(error = %e, "redis unavailable: sweep round stopped");
                    break;
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(_) => {
                    tried.push(subject);
                    landed += 1;
                }
                // MySQL did not answer: the round stops, and the row keeps
                // its turn (an outage is not an attempt).
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // Those that landed are no longer pending: only the others move.
        let (base, cap) = (micros(min_age), micros(RETRY_CAP));
        let postponed = self
            .db
            .query(async |conn| outbox::postpone(conn, &tried, base, cap).await)
            .await;
        match (failed, postponed) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(_)) => Ok(Swept {
                taken,
                landed,
                complete: tried.len() as u64 == taken,
            }),
        }
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

/// What one sweep round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Due rows taken.
    pub taken: u64,
    /// Rows Redis took.
    pub landed: u64,
    /// Whether every row taken was tried (false: stopped by a Redis failure).
    pub complete: bool,
}

/// The longest a queued refresh that does not settle waits between two
/// attempts.
pub const RETRY_CAP: Duration = Duration::from_secs(300);

/// What the sweeper remembers of the Redis server between rounds.
#[derive(Debug, Default)]
pub struct ServerWatch {
    /// The identity last seen (the first one seen is the baseline).
    seen: Option<ServerIdentity>,
    /// A replay still to do after a change.
    replay: Option<Replay>,
}

/// A replay after the server changed: a first pass re-arms the window; a
/// second pass, once a refresh that was already under way can no longer be
/// acknowledged (the MySQL timeout), re-arms what was marked landed since:
/// a write that reached the old server just before the change may be
/// marked landed only after the first pass.
#[derive(Debug)]
struct Replay {
    /// When the change was seen.
    seen_at: Instant,
    /// When the first pass re-armed the window, once it has.
    first_pass: Option<Instant>,
}

/// Microseconds of `d`, for SQL intervals.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Hooks {
    /// Looks at which Redis server the cache reaches; when it is another one
    /// than last time (or another replication history), re-arms every
    /// refresh that landed within `window` (they may be lost) so the sweep
    /// replays them. The first identity seen is not a change. Returns how
    /// many rows were re-armed; an error leaves the replay for next round.
    pub async fn watch_server(
        &self,
        watch: &mut ServerWatch,
        window: Duration,
    ) -> Result<u64, HookError> {
        match self.cache.identity().await {
            Ok(Some(now)) => match &watch.seen {
                None => watch.seen = Some(now),
                Some(seen) if *seen == now => {}
                Some(seen) => {
                    tracing::warn!(
                        before = %seen.run_id,
                        now = %now.run_id,
                        "redis is another server or history now: replaying the refreshes of the last {}s",
                        window.as_secs()
                    );
                    watch.seen = Some(now);
                    // A change during a replay: the earlier start covers both.
                    let seen_at = watch
                        .replay
                        .as_ref()
                        .map_or_else(Instant::now, |r| r.seen_at);
                    watch.replay = Some(Replay {
                        seen_at,
                        first_pass: None,
                    });
                }
            },
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "redis identity unknown this round"),
        }
        let Some(replay) = &mut watch.replay else {
            return Ok(0);
        };
        match replay.first_pass {
            None => {
                // The window counts back from the change, however late MySQL
                // answers.
                let back = micros(window + replay.seen_at.elapsed());
                let n = self
                    .db
                    .query(async |conn| outbox::rearm(conn, back).await)
                    .await?;
                tracing::info!(rearmed = n, "landed refreshes re-armed for replay");
                replay.first_pass = Some(Instant::now());
                Ok(n as u64)
            }
            Some(first) if first.elapsed() >= self.db.timeout() => {
                let back = micros(first.elapsed() + Duration::from_secs(1));
                let n = self
                    .db
                    .query(async |conn| outbox::rearm(conn, back).await)
                    .await?;
                watch.replay = None;
                Ok(n as u64)
            }
            Some(_) => Ok(0),
        }
    }

    /// Samples the queue's depth and the age of its oldest pending row into
    /// the metrics.
    pub async fn sample_queue(&self) -> Result<(), HookError> {
        let (depth, oldest_us) = self
            .db
            .query(async |conn| outbox::pending(conn).await)
            .await?;
        meters::refresh_queue(depth, oldest_us as f64 / 1e6);
        Ok(())
    }

    /// Deletes landed refreshes older than `window` (they are no longer
    /// replayed); returns how many.
    pub async fn purge_landed(&self, window: Duration) -> Result<u64, HookError> {
        let back = micros(window);
        let n = self
            .db
            .query(async |conn| outbox::purge_landed(conn, back, PURGE_LIMIT).await)
            .await?;
        Ok(n as u64)
    }
}

/// Landed rows deleted per round at most (more wait for the next round).
const PURGE_LIMIT: i64 = 10_000;

/// Runs the sweeper every `every` until the process ends: watches the Redis
/// server ([`Hooks::watch_server`], replaying `replay_window` after a
/// change), purges landed refreshes older than the window, retries what is
/// overdue ([`Hooks::sweep`]) and samples the queue for the metrics. Errors
/// are logged and retried next round.
pub async fn sweep_forever(hooks: Hooks, every: Duration, replay_window: Duration) {
    let mut watch = ServerWatch::default();
    // Rows younger than this belong to refreshes still running (a double
    // refresh would be harmless, only wasted).
    let min_age = every.min(IN_FLIGHT);
    loop {
        if let Err(e) = hooks.watch_server(&mut watch, replay_window).await {
            tracing::warn!(error = %e, "replay after a redis change postponed");
        }
        if let Err(e) = hooks.purge_landed(replay_window).await {
            tracing::debug!(error = %e, "purge of landed refreshes skipped");
        }
        // A full round means more may be due (a backlog, a replay): go on
        // at once rather than one round per tick.
        let mut landed = 0;
        let mut cut_short = false;
        for _ in 0..MAX_ROUNDS_PER_TICK {
            match hooks.sweep(min_age, ROUND_LIMIT).await {
                Ok(swept) => {
                    landed += swept.landed;
                    cut_short = !swept.complete;
                    if swept.taken < ROUND_LIMIT as u64 || !swept.complete {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "refresh sweep skipped");
                    cut_short = true;
                    break;
                }
            }
        }
        if landed > 0 {
            tracing::info!(landed, "queued cache refreshes landed");
        }
        if let Err(e) = hooks.sample_queue().await {
            tracing::debug!(error = %e, "refresh queue not sampled");
        }
        // While a dependency keeps refreshes from landing, look again soon:
        // what is queued must land as soon as it is back (one PING or one
        // query per look).
        let pause = if cut_short {
            every.min(RECOVERY_POLL)
        } else {
            every
        };
        tokio::time::sleep(pause).await;
    }
}

/// How often the sweeper looks while Redis or MySQL keeps refreshes from
/// landing.
const RECOVERY_POLL: Duration = Duration::from_millis(200);

/// How young a queued row may be and still belong to a refresh under way.
const IN_FLIGHT: Duration = Duration::from_millis(250);

/// Due rows one sweep round takes at most.
const ROUND_LIMIT: i64 = 1000;

/// Rounds one tick runs at most while they come back full (then the next
/// tick goes on).
const MAX_ROUNDS_PER_TICK: usize = 100;
