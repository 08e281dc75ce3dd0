//! The binary-log follower: refreshes the cache for every committed change
//! of `users` and `user_connections`, whoever made it — no hook needed (see
//! `docs/consistency.md#the-binary-log`).
//!
//! One follower per database is active at a time: the one whose control
//! connection holds the server's named lock; the others stand by and ask
//! again every second, so one takes over within about a second of the
//! active one dying (its connection closes, the server frees the lock).
//!
//! Changed rows go through the same leased refresh as every other refresh
//! ([`Hooks::refresh_unqueued`]): the follower re-reads MySQL rather than
//! writing the row image it saw, so a follower that is behind can never put
//! an older state back. Rows are gathered across transactions while the
//! log has more to send at once, and refreshed in chunks of
//! [`CHUNK`] (one lease pipeline, one query per table, one fill script):
//! memory stays flat whatever a transaction's size. The position stored is
//! always one whose changes before it have all landed (at-least-once: after
//! a restart some refreshes run again, which is harmless). When the stored
//! position is no longer in the log, the follower says so, re-warms the
//! whole cache and goes on from the log's end as it was before the warm.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use secrecy::SecretString;

use crate::db::binlog::{BinlogError, Control, Position, Reader, Step};
use crate::domain::Subject;
use crate::meters;
use crate::service::refresh::Hooks;
use crate::service::warm::{Progress, Scope, Warmer};

/// Distinct subjects refreshed per chunk.
pub const CHUNK: usize = 1000;

/// Chunks being refreshed at once (each reads MySQL on a pooled connection
/// while the others wait on Redis, and the log is read meanwhile).
const IN_FLIGHT: usize = 4;

/// A chunk's refresh, as a task of its own (it goes on while the session
/// waits on MySQL for its upkeep), aborted when dropped (a session that
/// ends takes its refreshes with it); yields the boundary it completes.
struct Chunk(tokio::task::JoinHandle<(Position, Option<u32>)>);

impl Drop for Chunk {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::future::Future for Chunk {
    /// `None`: the task failed (a panic), and the session must end.
    type Output = Option<(Position, Option<u32>)>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(Result::ok)
    }
}

/// The highest version the log gave each subject of the chunks in flight:
/// a chunk that retries waits for it too, so that an older chunk's retry
/// cannot take the key from a newer one's lease and fill an older state.
type Latest = Arc<Mutex<HashMap<Subject, u64>>>;

/// How long a refresh waits for MySQL to show a change the log has sent
/// (the log is written before the commit is visible); well below the
/// refresh's lease.
const VISIBLE_WITHIN: Duration = Duration::from_millis(500);

/// How long rows may wait to be refreshed while the log keeps sending.
const GATHER_FOR: Duration = Duration::from_millis(20);

/// How often a standby asks for the lock again.
const LOCK_POLL: Duration = Duration::from_secs(1);

/// How often the active follower checks its lock and samples the lag.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The least time between two writes of the position while changes of
/// ours keep coming.
const STORE_EVERY: Duration = Duration::from_millis(200);

/// A position that moved only past others' changes is stored this often
/// (so a busy server's purge does not outrun a quiet database's follower).
const STORE_IDLE_EVERY: Duration = Duration::from_secs(60);

/// A stream that is behind but sends nothing for this long is reconnected.
const STALLED_AFTER: Duration = Duration::from_secs(10);

/// Connecting, and each control query, may take this long.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest pause between sessions that keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The most marking the start position may delay start-up.
const MARK_WITHIN: Duration = Duration::from_secs(2);

/// Pause before the next session after one ended.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// While the log is off or not in ROW format, look again this often.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(10);

/// Events counted behind, at most (`SHOW BINLOG EVENTS ... LIMIT`).
const EVENTS_CAP: u64 = 10_000;

/// What the follower is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not run (`CONNSTATUS_FOLLOW=false`).
    Off,
    /// Connecting.
    Starting,
    /// Another instance follows this database.
    Standby,
    /// Following, within the lag threshold.
    Active,
    /// Following, further behind than the threshold.
    Behind,
    /// Re-warming the cache after its position was purged.
    Rewarming,
    /// The log cannot be followed now (off, not ROW, server unreachable).
    Unavailable,
}

impl State {
    /// As `/readyz` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Starting => "starting",
            Self::Standby => "standby",
            Self::Active => "active",
            Self::Behind => "behind",
            Self::Rewarming => "rewarming",
            Self::Unavailable => "unavailable",
        }
    }
}

/// The follower's state and lag, as last seen.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// What it is doing.
    pub state: State,
    /// How far behind the log's end, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// How far behind, in bytes of log.
    pub lag_bytes: u64,
    /// The position applied, while active.
    pub position: Option<String>,
    /// Why it is unavailable, when it is.
    pub detail: Option<String>,
}

/// Shared between the follower and the readiness probe.
#[derive(Debug)]
pub struct FollowerStatus(Mutex<Report>);

impl FollowerStatus {
    /// A status in `state`, with no lag known.
    pub fn new(state: State) -> Arc<Self> {
        Arc::new(Self(Mutex::new(Report {
            state,
            lag_seconds: 0.0,
            lag_bytes: 0,
            position: None,
            detail: None,
        })))
    }

    /// The last report.
    pub fn report(&self) -> Report {
        match self.0.lock() {
            Ok(report) => report.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn update(&self, change: impl FnOnce(&mut Report)) {
        let mut report = match self.0.lock() {
            Ok(report) => report,
            Err(poisoned) => poisoned.into_inner(),
        };
        change(&mut report);
    }

    fn set(&self, state: State, detail: Option<String>) {
        self.update(|r| {
            if r.state != state && matches!(state, State::Standby | State::Active) {
                tracing::info!(state = state.as_str(), "binlog follower");
            }
            r.state = state;
            r.detail = detail;
            if !matches!(state, State::Active | State::Behind) {
                r.lag_seconds = 0.0;
                r.lag_bytes = 0;
                r.position = None;
            }
        });
    }
}

/// Why a follower session ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("{0}")]
    Binlog(#[from] BinlogError),
    #[error("{0} did not answer within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("the follower lock was lost")]
    LockLost,
    #[error("the server ended the binlog stream")]
    StreamClosed,
    #[error("the binlog stream sent nothing for {STALLED_AFTER:?} while behind (applied {applied}, the log ends at {end})")]
    Stalled { applied: Position, end: Position },
    #[error("re-warm failed: {0}")]
    Rewarm(String),
    #[error("a refresh task failed")]
    ChunkFailed,
}

impl Ended {
    /// What `/readyz` may show of it (the public listener serves it too:
    /// no server text; the log has the whole error).
    fn public(&self) -> &'static str {
        match self {
            Self::Binlog(BinlogError::Unreadable(..)) => "the stored position cannot be read",
            Self::Binlog(_) | Self::StreamClosed | Self::Stalled { .. } => {
                "the binary log could not be read"
            }
            Self::Timeout(..) => "MySQL did not answer",
            Self::LockLost => "the follower lock was lost",
            Self::Rewarm(_) => "the re-warm failed",
            Self::ChunkFailed => "a refresh task failed",
        }
    }
}

/// Runs `f` for at most [`CONTROL_TIMEOUT`].
async fn bounded<T>(
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, BinlogError>>,
) -> Result<T, Ended> {
    match tokio::time::timeout(CONTROL_TIMEOUT, f).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Ended::Timeout(what, CONTROL_TIMEOUT)),
    }
}

/// The follower of one database's log.
pub struct Follower {
    hooks: Hooks,
    warmer: Warmer,
    /// The primary: the lock and the stored position.
    url: SecretString,
    /// The server whose log is read: the first replica when there are some,
    /// so that no refresh lands before the replica that misses read has the
    /// change.
    log_url: SecretString,
    server_id: u32,
    lag_warn: Duration,
    status: Arc<FollowerStatus>,
    /// The last session could not read from the stored position: the next
    /// one re-warms instead.
    rewarm_next: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

/// Rows waiting to be refreshed, each subject once, with the highest
/// version the log gave it.
#[derive(Default)]
struct Pending {
    subjects: Vec<(Subject, u64)>,
    seen: HashMap<Subject, usize>,
    since: Option<Instant>,
}

impl Pending {
    fn add(&mut self, changed: Vec<(Subject, u64)>) {
        self.since.get_or_insert_with(Instant::now);
        for (subject, version) in changed {
            match self.seen.get(&subject) {
                Some(&i) => self.subjects[i].1 = self.subjects[i].1.max(version),
                None => {
                    self.seen.insert(subject, self.subjects.len());
                    self.subjects.push((subject, version));
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }

    /// Whether to refresh now rather than read on: the chunk is full, or
    /// its first row waited long enough.
    fn due(&self) -> bool {
        self.subjects.len() >= CHUNK || self.since.is_some_and(|t| t.elapsed() >= GATHER_FOR)
    }

    fn take(&mut self) -> Vec<(Subject, u64)> {
        self.seen.clear();
        self.since = None;
        std::mem::take(&mut self.subjects)
    }
}

/// Where an active session stands.
struct Progressed {
    /// Every change before it has landed.
    applied: Position,
    /// The applied boundary's timestamp (Unix seconds).
    applied_at: Option<u32>,
    /// The latest boundary read (applied once the pending rows land).
    read: Position,
    read_at: Option<u32>,
    stored: Position,
    stored_at: Instant,
    /// Changes of ours landed since the last store.
    dirty: bool,
    /// When the log last sent anything.
    last_step: Instant,
    /// Events read by then.
    events: u64,
    /// When a check last saw nothing left to apply: every event not applied
    /// yet was written after it (see [`lag_seconds`] and [`stalled`]).
    caught_up_at: Option<Instant>,
    last_check: Instant,
    last_warned: Option<Instant>,
}

impl Follower {
    /// A follower of the log of the server at `log_url` (its database's
    /// tables), holding its lock and position on `url`, refreshing through
    /// `hooks`, re-warming with `warmer`.
    pub fn new(
        hooks: Hooks,
        warmer: Warmer,
        (url, log_url): (SecretString, SecretString),
        server_id: u32,
        lag_warn: Duration,
        status: Arc<FollowerStatus>,
    ) -> Self {
        Self {
            hooks,
            warmer,
            url,
            log_url,
            server_id,
            lag_warn,
            status,
            rewarm_next: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A follower configured like the service (`DATABASE_URL`'s log,
    /// `CONNSTATUS_FOLLOW_SERVER_ID`, `CONNSTATUS_FOLLOW_LAG_WARN_SECONDS`),
    /// refreshing through `hooks`.
    pub fn from_settings(
        settings: &crate::config::Settings,
        hooks: Hooks,
        status: Arc<FollowerStatus>,
    ) -> Result<Self, String> {
        crate::db::binlog::database_of(&settings.database_url)?;
        // Chunks of thousands of spots: bulk timeouts, not the request path's.
        let hooks = hooks.with_cache(Arc::new(crate::cache::Cache::for_bulk(settings)?));
        let warmer = Warmer::from_settings(settings, crate::service::warm::Tuning::default())?;
        let log_url = settings
            .database_replica_url
            .first()
            .unwrap_or(&settings.database_url)
            .clone();
        Ok(Self::new(
            hooks,
            warmer,
            (settings.database_url.clone(), log_url),
            settings.follow_server_id,
            Duration::from_secs(settings.follow_lag_warn_seconds.get()),
            status,
        ))
    }

    /// Before the service answers: when no position is stored yet (a new
    /// database), stores the log's end now, so that every change committed
    /// once the service is up is followed, however late the follower gets
    /// going. Best effort, for at most [`MARK_WITHIN`]: with the log off
    /// or MySQL away, the follower's first session decides.
    pub async fn mark_start(&self) {
        let attempt = async {
            let mut control = Control::connect(&self.url, &self.log_url).await?;
            let log = control.log_settings().await?;
            if log.unusable().is_none() {
                control.mark_first(log.server_id).await?;
            }
            Ok::<(), BinlogError>(())
        };
        match tokio::time::timeout(MARK_WITHIN, attempt).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "binlog start position not marked"),
            Err(_) => tracing::debug!("binlog start position not marked: MySQL did not answer"),
        }
    }

    /// Follows until the process ends: sessions one after another, each
    /// ended by an error (logged) and followed by a new one a second later.
    pub async fn run_forever(self) {
        let mut failures: u32 = 0;
        loop {
            let started = Instant::now();
            match self.session().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    meters::follower_error();
                    tracing::warn!(error = %e, "binlog follower stopped; reconnecting");
                    if matches!(e, Ended::Binlog(BinlogError::Unreadable(..))) {
                        // The server cannot read from the stored position:
                        // the changes since cannot be replayed. The re-warm
                        // starts after the shortest pause, whatever failed
                        // before.
                        self.rewarm_next
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.status
                        .set(State::Unavailable, Some(e.public().to_owned()));
                    // A session that failed at once again and again (a re-warm
                    // that cannot write, a server that refuses) backs off.
                    failures = if started.elapsed() > MAX_BACKOFF
                        || matches!(e, Ended::Binlog(BinlogError::Unreadable(..)))
                    {
                        1
                    } else {
                        failures + 1
                    };
                }
            }
            meters::follower_lag(false, 0.0, 0, 0);
            let pause = RECONNECT_AFTER * 2u32.saturating_pow(failures.saturating_sub(1).min(5));
            tokio::time::sleep(pause.min(MAX_BACKOFF)).await;
        }
    }

    /// The replica id for one connection.
    fn server_id(&self) -> u32 {
        match self.server_id {
            0 => rand::random_range(1_000_000..u32::MAX),
            id => id,
        }
    }

    /// One session: connect, wait for the lock, find where to start, follow.
    async fn session(&self) -> Result<(), Ended> {
        let mut control = bounded("MySQL", Control::connect(&self.url, &self.log_url)).await?;
        let log = bounded("MySQL", control.log_settings()).await?;
        if let Some(why) = log.unusable() {
            if self.status.report().detail.as_deref() != Some(why.as_str()) {
                tracing::warn!("binlog follower unavailable: {why}");
            }
            self.status.set(State::Unavailable, Some(why));
            tokio::time::sleep(UNAVAILABLE_RETRY).await;
            return Ok(());
        }
        while !bounded("MySQL", control.try_lock()).await? {
            self.status.set(State::Standby, None);
            tokio::time::sleep(LOCK_POLL).await;
        }
        self.status.set(State::Active, None);
        let start = self.start_at(&mut control, log.server_id).await?;
        self.follow(&mut control, log.server_id, start).await
    }

    /// The stored position if the log still has it; else (first start) the
    /// log's end; else (purged, or another server's) a re-warm.
    async fn start_at(&self, control: &mut Control, server_id: u32) -> Result<Position, Ended> {
        // Only ever the first position: another instance that marked its
        // start meanwhile (before it answered) must not be moved on.
        if bounded("MySQL", control.mark_first(server_id)).await? {
            tracing::info!("binlog follower: no position stored yet; starting at the log's end");
        }
        let Some((stored_server, stored)) = bounded("MySQL", control.stored()).await? else {
            return Err(Ended::Binlog(BinlogError::Failed(
                "no position stored".into(),
            )));
        };
        if self
            .rewarm_next
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::error!(
                position = %stored,
                "binlog: the server cannot read its log from the stored position: \
                 re-warming the whole cache, then following from the log's end"
            );
            return self.rewarm(control, server_id).await;
        }
        let files = bounded("MySQL", control.files()).await?;
        let in_log = files
            .iter()
            .any(|(file, size)| *file == stored.file && stored.pos <= *size);
        if stored_server == server_id && in_log {
            tracing::info!(position = %stored, "binlog follower resumes");
            return Ok(stored);
        }
        tracing::error!(
            position = %stored,
            "binlog: the stored position is no longer in the server's log (purged, or another server's): \
             the changes since then cannot be replayed; re-warming the whole cache, then following from the log's end"
        );
        self.rewarm(control, server_id).await
    }

    /// Re-warms the cache from MySQL; returns the log's end as it was
    /// before the warm began (changes during the warm are followed after).
    async fn rewarm(&self, control: &mut Control, server_id: u32) -> Result<Position, Ended> {
        let end = bounded("MySQL", control.end()).await?;
        self.status.set(State::Rewarming, None);
        meters::follower_rewarm();
        let progress = Progress::default();
        let summary = self
            .warmer
            .run(&Scope::All, &progress, std::future::pending())
            .await
            .map_err(Ended::Rewarm)?;
        if summary.errors > 0 {
            return Err(Ended::Rewarm(format!(
                "{} entries could not be written",
                summary.errors
            )));
        }
        tracing::info!(
            pairs = summary.pairs,
            users = summary.users,
            seconds = summary.seconds,
            position = %end,
            "binlog: re-warm done; following from the log's end as it was before it"
        );
        if !bounded("MySQL", control.store(server_id, &end)).await? {
            return Err(Ended::LockLost);
        }
        self.status.set(State::Active, None);
        Ok(end)
    }

    /// Follows the log from `start` until something fails.
    async fn follow(
        &self,
        control: &mut Control,
        server_id: u32,
        start: Position,
    ) -> Result<(), Ended> {
        let mut reader = match tokio::time::timeout(
            CONTROL_TIMEOUT,
            Reader::open(&self.log_url, self.server_id(), &start),
        )
        .await
        {
            Ok(reader) => reader?,
            Err(_) => return Err(Ended::Timeout("the binlog stream", CONTROL_TIMEOUT)),
        };
        let now = Instant::now();
        let mut at = Progressed {
            applied: start.clone(),
            applied_at: None,
            read: start.clone(),
            read_at: None,
            stored: start,
            stored_at: now,
            dirty: false,
            last_step: now,
            events: 0,
            caught_up_at: None,
            last_check: now.checked_sub(CHECK_EVERY).unwrap_or(now),
            last_warned: None,
        };
        let mut pending = Pending::default();
        // Chunks being refreshed, oldest first, each with the last boundary
        // read when it was cut: once it and every older one have landed,
        // everything before that boundary has.
        let mut in_flight: FuturesOrdered<Chunk> = FuturesOrdered::new();
        let latest = Latest::default();
        let mut tick = tokio::time::interval(STORE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Rows wait only while the log has more to send at once and
            // their chunk is not due; then they go, while there is room.
            if !pending.is_empty() && in_flight.len() < IN_FLIGHT {
                let more = if pending.due() {
                    None
                } else {
                    reader.next().now_or_never()
                };
                match more {
                    Some(step) => {
                        at.last_step = Instant::now();
                        on_step(step?, &mut at, &mut pending, in_flight.is_empty())?;
                        continue;
                    }
                    None => in_flight.push_back(self.chunk(pending.take(), &at, &latest)),
                }
            }
            let room = in_flight.len() < IN_FLIGHT || pending.subjects.len() < CHUNK;
            tokio::select! {
                biased;
                Some(landed) = in_flight.next() => {
                    let Some((position, when)) = landed else {
                        return Err(Ended::ChunkFailed);
                    };
                    // The newest boundary read, when nothing else waits.
                    let newest = in_flight.is_empty() && pending.is_empty();
                    (at.applied, at.applied_at) = if newest {
                        (at.read.clone(), at.read_at)
                    } else {
                        (position, when)
                    };
                    at.dirty = true;
                }
                // Before the log: a log that always has more must not keep
                // the position from being stored, nor the lock from being
                // checked.
                _ = tick.tick() => {
                    if reader.events() != at.events {
                        at.events = reader.events();
                        at.last_step = Instant::now();
                    }
                    self.upkeep(control, server_id, &mut at, !in_flight.is_empty()).await?;
                }
                step = reader.next(), if room => {
                    at.last_step = Instant::now();
                    on_step(step?, &mut at, &mut pending, in_flight.is_empty())?;
                }
            }
        }
    }

    /// A chunk's refresh, retried until it lands (the position does not
    /// move past it meanwhile; the lock is checked by the upkeep).
    fn chunk(&self, subjects: Vec<(Subject, u64)>, at: &Progressed, latest: &Latest) -> Chunk {
        note_latest(&mut lock(latest), &subjects);
        let (hooks, latest) = (self.hooks.clone(), latest.clone());
        let done = (at.read.clone(), at.read_at);
        Chunk(tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                let wanted = wanted_now(&lock(&latest), &subjects);
                match hooks.refresh_unqueued(&wanted, VISIBLE_WITHIN).await {
                    Ok(landed) => {
                        meters::follower_applied(0, subjects.len() as u64);
                        if landed.unseen > 0 {
                            // The schema's rule (versions never go down)
                            // was broken, or the server is very slow to make
                            // commits visible: refreshed as read, said loudly.
                            tracing::warn!(
                                entries = landed.unseen,
                                "binlog follower: MySQL still showed an older version than the log {VISIBLE_WITHIN:?} later; refreshed as read"
                            );
                        }
                        forget_landed(&mut lock(&latest), &wanted);
                        return done;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, entries = subjects.len(), "binlog follower: refresh did not land; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }))
    }

    /// Between steps: stores the position when due, and every
    /// [`CHECK_EVERY`] checks the lock and samples the lag.
    async fn upkeep(
        &self,
        control: &mut Control,
        server_id: u32,
        at: &mut Progressed,
        refreshing: bool,
    ) -> Result<(), Ended> {
        let store_due = at.applied != at.stored
            && ((at.dirty && at.stored_at.elapsed() >= STORE_EVERY)
                || at.stored_at.elapsed() >= STORE_IDLE_EVERY);
        if store_due {
            if !bounded("MySQL", control.store(server_id, &at.applied)).await? {
                return Err(Ended::LockLost);
            }
            at.stored = at.applied.clone();
            at.stored_at = Instant::now();
            at.dirty = false;
        }
        if at.last_check.elapsed() < CHECK_EVERY {
            return Ok(());
        }
        at.last_check = Instant::now();
        if !bounded("MySQL", control.holds_lock()).await? {
            return Err(Ended::LockLost);
        }
        let end = bounded("MySQL", control.end()).await?;
        let bytes = if end.file == at.applied.file {
            end.pos.saturating_sub(at.applied.pos)
        } else {
            let files = bounded("MySQL", control.files()).await?;
            bytes_between(&files, &at.applied, &end)
        };
        let events = if bytes > 0 {
            bounded("MySQL", control.events_after(&at.applied, EVENTS_CAP)).await?
        } else {
            0
        };
        if bytes == 0 {
            at.caught_up_at = Some(Instant::now());
        }
        let caught_up_for = at.caught_up_at.map(|t| t.elapsed());
        let seconds = lag_seconds(
            bytes,
            at.applied_at.map(|when| unix_now() - f64::from(when)),
            at.stored_at.elapsed(),
            caught_up_for,
        );
        let stalled = stalled(bytes, at.last_step.elapsed(), caught_up_for);
        if stalled && !refreshing {
            return Err(Ended::Stalled {
                applied: at.applied.clone(),
                end,
            });
        }
        let behind = seconds > self.lag_warn.as_secs_f64();
        if behind
            && at
                .last_warned
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                lag_seconds = seconds,
                lag_bytes = bytes,
                position = %at.applied,
                "binlog follower is behind the log"
            );
            at.last_warned = Some(Instant::now());
        }
        meters::follower_lag(true, seconds, bytes, events);
        meters::follower_position(at.applied.file_number(), at.applied.pos);
        let position = at.applied.to_string();
        self.status.update(|r| {
            r.state = if behind { State::Behind } else { State::Active };
            r.lag_seconds = seconds;
            r.lag_bytes = bytes;
            r.position = Some(position);
            r.detail = None;
        });
        Ok(())
    }
}

/// The map, even if a thread panicked holding it (its content stays valid:
/// every update is one insert or removal).
fn lock(latest: &Latest) -> std::sync::MutexGuard<'_, HashMap<Subject, u64>> {
    latest
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records the versions a chunk about to be refreshed asks for.
fn note_latest(latest: &mut HashMap<Subject, u64>, chunk: &[(Subject, u64)]) {
    for &(subject, version) in chunk {
        let known = latest.entry(subject).or_insert(version);
        *known = (*known).max(version);
    }
}

/// What an attempt of `chunk` asks for now: for each subject the highest
/// version any chunk in flight asks for.
fn wanted_now(latest: &HashMap<Subject, u64>, chunk: &[(Subject, u64)]) -> Vec<(Subject, u64)> {
    chunk
        .iter()
        .map(|&(s, v)| (s, latest.get(&s).copied().unwrap_or(v).max(v)))
        .collect()
}

/// Forgets the versions a landed attempt reached (not those raised since).
fn forget_landed(latest: &mut HashMap<Subject, u64>, landed: &[(Subject, u64)]) {
    for &(subject, version) in landed {
        if latest.get(&subject).is_some_and(|&v| v <= version) {
            latest.remove(&subject);
        }
    }
}

/// Takes one step of the log into the session's state.
fn on_step(
    step: Option<Step>,
    at: &mut Progressed,
    pending: &mut Pending,
    nothing_in_flight: bool,
) -> Result<(), Ended> {
    match step {
        None => return Err(Ended::StreamClosed),
        Some(Step::Changed(changed)) => {
            meters::follower_applied(changed.len() as u64, 0);
            pending.add(changed);
        }
        Some(Step::Boundary { position, at: when }) => {
            meters::follower_transactions(1);
            at.read = position;
            at.read_at = Some(when);
            if pending.is_empty() && nothing_in_flight {
                at.applied = at.read.clone();
                at.applied_at = at.read_at;
            }
        }
    }
    Ok(())
}

/// How far behind the log the follower is, in seconds: the age of the
/// newest change applied (`applied_age`; since the position was stored when
/// none was applied yet), but never more than the time since a check last
/// saw nothing left to apply, since every change not applied was written
/// after that. Without that bound, the first change after a quiet minute
/// (the follower's own position store, every minute) read as a minute of
/// lag until it was applied.
fn lag_seconds(
    bytes: u64,
    applied_age: Option<f64>,
    stored_for: Duration,
    caught_up_for: Option<Duration>,
) -> f64 {
    if bytes == 0 {
        return 0.0;
    }
    let age = applied_age.map_or(stored_for.as_secs_f64(), |age| age.max(0.0));
    caught_up_for.map_or(age, |quiet| age.min(quiet.as_secs_f64()))
}

/// Whether the stream has stalled: the log ends beyond what was applied,
/// and for [`STALLED_AFTER`] nothing was read and no check saw the follower
/// caught up. Counted from the later of the two, not from the last event
/// alone: after a quiet minute the follower's own position store moves the
/// log's end, and the check right after it must not take a minute of
/// nothing to send for ten seconds of nothing sent.
fn stalled(bytes: u64, since_step: Duration, since_caught_up: Option<Duration>) -> bool {
    let waited = since_caught_up.map_or(since_step, |caught_up| caught_up.min(since_step));
    bytes > 0 && waited >= STALLED_AFTER
}

/// Bytes of log from `from` to `to`, over the files between them.
fn bytes_between(files: &[(String, u64)], from: &Position, to: &Position) -> u64 {
    let mut total = 0;
    let mut counting = false;
    for (file, size) in files {
        if *file == from.file {
            counting = true;
            total += size.saturating_sub(from.pos);
        } else if *file == to.file {
            return total + to.pos;
        } else if counting {
            total += size;
        }
    }
    total
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(file: &str, pos: u64) -> Position {
        Position {
            file: file.into(),
            pos,
        }
    }

    #[test]
    fn the_first_change_after_a_quiet_spell_is_not_a_minute_of_lag() {
        // Applied a minute ago, caught up at the last check a second ago,
        // and then 640 bytes more (the follower's own position store).
        let lag = lag_seconds(
            640,
            Some(60.0),
            Duration::from_secs(60),
            Some(Duration::from_secs(1)),
        );
        assert!(lag <= 1.0, "{lag}");
        // Nothing left: no lag, whatever the ages.
        assert_eq!(lag_seconds(0, Some(60.0), Duration::ZERO, None), 0.0);
    }

    #[test]
    fn a_real_backlog_shows_its_age() {
        // Never caught up since the session began: the applied change's age.
        assert_eq!(
            lag_seconds(1 << 20, Some(30.0), Duration::from_secs(5), None),
            30.0
        );
        // Caught up 40 s ago, applied changes 30 s old: 30 s behind.
        let lag = lag_seconds(
            1 << 20,
            Some(30.0),
            Duration::ZERO,
            Some(Duration::from_secs(40)),
        );
        assert_eq!(lag, 30.0);
        // Nothing applied yet this session: since the position was stored.
        assert_eq!(lag_seconds(10, None, Duration::from_secs(7), None), 7.0);
    }

    #[test]
    fn a_log_end_just_moved_after_a_quiet_spell_is_not_a_stall() {
        // A minute without events, caught up at the check a second before
        // the follower's own store: the log ends 639 bytes beyond what was
        // applied.
        let second = Duration::from_secs(1);
        assert!(!stalled(639, 60 * second, Some(second)));
        // Its events arrive: read, applied, caught up.
        assert!(!stalled(0, second, Some(Duration::ZERO)));
    }

    #[test]
    fn a_log_end_not_sent_for_the_whole_wait_is_a_stall() {
        // The last event a minute before the end was first seen beyond it;
        // caught up at the check a second before that.
        let second = Duration::from_secs(1);
        let (step, caught_up) = (60 * second, second);
        let at = |after: Duration| (step + after, caught_up + after);
        let (s, c) = at(Duration::ZERO);
        assert!(!stalled(639, s, Some(c)));
        let (s, c) = at(STALLED_AFTER / 2);
        assert!(!stalled(639, s, Some(c)));
        let (s, c) = at(STALLED_AFTER);
        assert!(stalled(639, s, Some(c)));
        // An event read meanwhile (half the wait in) starts the wait again.
        let (_, c) = at(STALLED_AFTER);
        assert!(!stalled(639, STALLED_AFTER / 2, Some(c)));
        let (_, c) = at(2 * STALLED_AFTER);
        assert!(stalled(639, 3 * STALLED_AFTER / 2, Some(c)));
        // A session that never caught up: from its last event.
        assert!(stalled(639, STALLED_AFTER, None));
    }

    #[test]
    fn lag_in_bytes_spans_files() {
        let files = vec![
            ("b.000001".to_owned(), 1000),
            ("b.000002".to_owned(), 500),
            ("b.000003".to_owned(), 300),
        ];
        assert_eq!(
            bytes_between(&files, &at("b.000001", 900), &at("b.000003", 200)),
            100 + 500 + 200
        );
        assert_eq!(
            bytes_between(&files, &at("b.000002", 100), &at("b.000003", 10)),
            400 + 10
        );
    }

    #[test]
    fn an_older_chunk_that_retries_asks_for_a_newer_chunks_version() {
        // Chunk 1 asks for user 1 at version 3 and fails; chunk 2, cut
        // meanwhile, asks for version 5. Chunk 1's retry must ask for 5:
        // else it could take the key from chunk 2's lease and fill 3.
        let user = |id| Subject::User(crate::domain::UserId::new(id).expect("id"));
        let mut latest = HashMap::new();
        let first = vec![(user(1), 3), (user(2), 1)];
        note_latest(&mut latest, &first);
        let second = vec![(user(1), 5)];
        note_latest(&mut latest, &second);
        assert_eq!(
            wanted_now(&latest, &first),
            vec![(user(1), 5), (user(2), 1)]
        );
        // Landed at 5: user 1 is forgotten; user 2 too.
        forget_landed(&mut latest, &[(user(1), 5), (user(2), 1)]);
        assert!(latest.is_empty());
        // A landing below a later ask keeps the later ask.
        note_latest(&mut latest, &[(user(1), 9)]);
        forget_landed(&mut latest, &[(user(1), 5)]);
        assert_eq!(latest.get(&user(1)), Some(&9));
    }

    #[test]
    fn pending_rows_are_refreshed_once_each() {
        let user = |id| Subject::User(crate::domain::UserId::new(id).expect("id"));
        let mut pending = Pending::default();
        pending.add(vec![(user(1), 4), (user(2), 1), (user(1), 3)]);
        pending.add(vec![(user(2), 7), (user(3), 0)]);
        assert_eq!(
            pending.take(),
            vec![(user(1), 4), (user(2), 7), (user(3), 0)]
        );
        assert!(pending.is_empty());
        assert!(!pending.due());
    }
}
