//! The cache-warming job (`connstatus warm`, and `POST
//! /internal/v1/cache/warm`; see `docs/operations.md#commands`).
//!
//! Streams rows from MySQL in chunks by keyset pagination (never OFFSET),
//! and writes each chunk to Redis in one pipeline on pooled connections
//! (`deadpool-redis`), a few chunks in flight at once: over older values at
//! once, into empty keys only under leases after a second read (see
//! [`Cache::upgrade_with`]). So it can run beside live traffic, be
//! interrupted, and be run again: an entry that changed in MySQL after the
//! scan read it is never overwritten with the older value, even when the
//! newer entry was evicted meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{stream, Stream, StreamExt};
use serde::Serialize;

use crate::cache::link::BatchPool;
use crate::cache::{Cache, Lease, Upgrade};
use crate::db::scans::{self, After, Page};
use crate::db::{reads, Db, DbError};
use crate::domain::{Entry, Pair, Subject, UserId};

/// What to warm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every pair row and every user.
    All,
    /// Every pair row of these users and their own entries, plus the pair
    /// of each with each of `with` whether or not it has a row (so "no
    /// relation" answers are cached too).
    Users {
        /// The users whose pairs are warmed.
        users: Vec<UserId>,
        /// Other users to warm each of `users` against.
        with: Vec<UserId>,
    },
}

/// The job's tally, printed at the end and answered by the admin endpoint.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Pair entries read from MySQL.
    pub pairs: u64,
    /// User entries read from MySQL.
    pub users: u64,
    /// Entries written to Redis.
    pub written: u64,
    /// Entries left alone because Redis already held them or something newer.
    pub skipped: u64,
    /// Entries that could not be written (Redis errors, timeouts).
    pub errors: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Pair and user entries per second.
    pub entries_per_second: f64,
    /// Whether the job was stopped before it finished.
    pub interrupted: bool,
}

/// Live counters, shared with whoever reports progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Pair entries read.
    pub pairs: AtomicU64,
    /// User entries read.
    pub users: AtomicU64,
    /// Entries written.
    pub written: AtomicU64,
    /// Entries left alone: already cached as new, or being filled.
    pub skipped: AtomicU64,
    /// Entries that failed.
    pub errors: AtomicU64,
}

/// How the job runs.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Rows read per query (and written per pipeline).
    pub chunk: usize,
    /// Pipelines in flight at once.
    pub concurrency: usize,
    /// The most one pipeline may take.
    pub redis_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            chunk: 5_000,
            concurrency: 4,
            redis_timeout: Duration::from_secs(10),
        }
    }
}

/// The most one page of the warming job's scan may take (pages of thousands
/// of rows; the request path's MySQL timeout is for point selects).
pub const WARM_MYSQL_TIMEOUT: Duration = Duration::from_secs(10);

/// The warming job over one MySQL pool, one Redis pool and the cache's keys.
pub struct Warmer {
    cache: Cache,
    redis: BatchPool,
    db: Db,
    tuning: Tuning,
}

impl std::fmt::Debug for Warmer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warmer")
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

impl Warmer {
    /// A warmer writing through `cache`'s keys and script, on connections
    /// of `redis`, reading `db`.
    pub fn new(cache: Cache, redis: BatchPool, db: Db, tuning: Tuning) -> Self {
        Self {
            cache,
            redis,
            db,
            tuning,
        }
    }

    /// A warmer configured like the service, with pools of its own: `size`
    /// Redis connections and MySQL connections, and a MySQL timeout for
    /// pages of thousands of rows (the request path's is for point
    /// selects).
    pub fn from_settings(
        settings: &crate::config::Settings,
        tuning: Tuning,
    ) -> Result<Self, String> {
        let cache = Cache::from_settings(settings)?;
        let redis = Cache::target(settings).pool(tuning.concurrency)?;
        // Pages and re-reads may trail the primary like misses do: the first
        // replica when there is one.
        let url = settings
            .database_replica_url
            .first()
            .unwrap_or(&settings.database_url);
        let pool = crate::db::pool(url, tuning.concurrency + 1, settings.mysql_timeout())?;
        Ok(Self::new(
            cache,
            redis,
            Db::new(pool, WARM_MYSQL_TIMEOUT),
            tuning,
        ))
    }

    /// The batch Redis pool's use (the request path has no pool: one
    /// multiplexed connection per worker).
    pub fn redis_status(&self) -> deadpool::Status {
        self.redis.status()
    }

    /// Runs the job until done or until `stop` completes; `progress` is
    /// updated as chunks land. A MySQL failure ends the job (the error says
    /// so); Redis failures are counted and the job goes on.
    pub async fn run(
        &self,
        scope: &Scope,
        progress: &Progress,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<Summary, String> {
        let started = Instant::now();
        let chunks = self.scan(scope, progress);
        let writes = chunks
            .map(|chunk| async move {
                let chunk = chunk?;
                self.write_chunk(&chunk, progress).await;
                Ok::<(), String>(())
            })
            .buffer_unordered(self.tuning.concurrency.max(1));
        tokio::pin!(writes);
        tokio::pin!(stop);
        let mut interrupted = false;
        loop {
            tokio::select! {
                next = writes.next() => match next {
                    Some(result) => result?,
                    None => break,
                },
                () = &mut stop => { interrupted = true; break; }
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let (pairs, users) = (count(&progress.pairs), count(&progress.users));
        Ok(Summary {
            pairs,
            users,
            written: count(&progress.written),
            skipped: count(&progress.skipped),
            errors: count(&progress.errors),
            seconds,
            entries_per_second: (pairs + users) as f64 / seconds.max(1e-9),
            interrupted,
        })
    }

    /// Writes one chunk and tallies it: over older values at once; into
    /// empty keys only under leases, after reading those keys again (see
    /// [`Cache::upgrade_with`]). Redis failures are counted; a MySQL failure
    /// of the second read counts the leased entries as errors too.
    pub async fn write_chunk(&self, chunk: &[Entry], progress: &Progress) {
        let n = chunk.len() as u64;
        let attempt = async {
            let conn = self.redis.get().await?;
            let link = conn.link();
            let outcomes = self
                .cache
                .upgrade_with(&link, chunk)
                .await
                .map_err(|e| e.to_string())?;
            let written = outcomes.iter().filter(|o| **o == Upgrade::Written).count() as u64;
            let (leases, subjects): (Vec<Lease>, Vec<Subject>) = outcomes
                .into_iter()
                .zip(chunk)
                .filter_map(|(outcome, entry)| match outcome {
                    Upgrade::Leased(lease) => Some((lease, entry.subject())),
                    _ => None,
                })
                .unzip();
            if subjects.is_empty() {
                return Ok(written);
            }
            let again = self
                .db
                .query(async |c| reads::entries(c, &subjects).await)
                .await
                .map_err(|e| format!("MySQL: {}", e.0))?;
            let fills: Vec<(Lease, Option<Entry>)> = leases
                .into_iter()
                .zip(again.into_iter().map(Some))
                .collect();
            let filled = self
                .cache
                .fill_leased_with(&link, &fills)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<u64, String>(written + filled)
        };
        match tokio::time::timeout(self.tuning.redis_timeout, attempt).await {
            Ok(Ok(written)) => {
                progress.written.fetch_add(written, Ordering::Relaxed);
                progress
                    .skipped
                    .fetch_add(n.saturating_sub(written), Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, entries = n, "warm: a chunk could not be written");
                progress.errors.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => {
                tracing::warn!(entries = n, "warm: a chunk timed out");
                progress.errors.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// The chunks of `scope`, read one after another.
    fn scan<'a>(
        &'a self,
        scope: &'a Scope,
        progress: &'a Progress,
    ) -> impl Stream<Item = Result<Vec<Entry>, String>> + 'a {
        let sources: Vec<Source> = match scope {
            Scope::All => vec![Source::AllUsers, Source::AllPairs],
            Scope::Users { users, with } => users
                .iter()
                .flat_map(|&u| {
                    let mut s = vec![
                        Source::UserSelf(u),
                        Source::PairsAsLow(u),
                        Source::PairsAsHigh(u),
                    ];
                    if !with.is_empty() {
                        s.push(Source::With(u, with.clone()));
                    }
                    s
                })
                .collect(),
        };
        stream::iter(sources).flat_map(move |source| self.pages(source, progress))
    }

    /// The pages of one source, by keyset pagination.
    fn pages<'a>(
        &'a self,
        source: Source,
        progress: &'a Progress,
    ) -> impl Stream<Item = Result<Vec<Entry>, String>> + 'a {
        stream::unfold(Some(After::default()), move |after| {
            let source = source.clone();
            async move {
                let after = after?;
                match self.page(&source, after).await {
                    Ok((entries, next)) => {
                        let pairs = entries
                            .iter()
                            .filter(|e| matches!(e, Entry::Pair(..)))
                            .count() as u64;
                        progress.pairs.fetch_add(pairs, Ordering::Relaxed);
                        progress
                            .users
                            .fetch_add(entries.len() as u64 - pairs, Ordering::Relaxed);
                        (!entries.is_empty()).then_some((Ok(entries), next))
                    }
                    Err(e) => Some((Err(format!("MySQL: {}", e.0)), None)),
                }
            }
        })
    }

    /// One page of `source` after `after`, and where the next page starts
    /// (`None` when this was the last).
    async fn page(&self, source: &Source, after: After) -> Result<Page, DbError> {
        let limit = self.tuning.chunk;
        match source {
            Source::AllPairs => {
                self.db
                    .query(async |conn| scans::all_pairs(conn, after, limit).await)
                    .await
            }
            Source::AllUsers => {
                self.db
                    .query(async |conn| scans::all_users(conn, after, limit).await)
                    .await
            }
            &Source::PairsAsLow(user) => {
                self.db
                    .query(async |conn| scans::partners(conn, user, true, after, limit).await)
                    .await
            }
            &Source::PairsAsHigh(user) => {
                self.db
                    .query(async |conn| scans::partners(conn, user, false, after, limit).await)
                    .await
            }
            &Source::UserSelf(user) => {
                let presence = self
                    .db
                    .query(async |conn| reads::user(conn, user).await)
                    .await?;
                Ok((vec![Entry::User(user, presence)], None))
            }
            Source::With(user, with) => self.page_with(*user, with, after).await,
        }
    }

    /// A page of `user`'s pairs with `with[after.a..]`, relation or not.
    async fn page_with(
        &self,
        user: UserId,
        with: &[UserId],
        after: After,
    ) -> Result<Page, DbError> {
        let start = usize::try_from(after.a).unwrap_or(usize::MAX);
        let slice = with.get(start..).unwrap_or_default();
        let slice = &slice[..slice.len().min(WITH_CHUNK)];
        if slice.is_empty() {
            return Ok((Vec::new(), None));
        }
        let snapshots = self
            .db
            .query(async |conn| reads::snapshots(conn, user, slice).await)
            .await?;
        let mut entries = Vec::with_capacity(slice.len() * 2);
        for (&other, snapshot) in slice.iter().zip(snapshots) {
            entries.push(Entry::User(other, snapshot.user));
            if let (Some(pair), Some(relation)) = (Pair::new(user, other), snapshot.pair) {
                entries.push(Entry::Pair(pair, relation));
            }
        }
        let end = start + slice.len();
        let next = (end < with.len()).then_some(After {
            a: end as u64,
            b: 0,
        });
        Ok((entries, next))
    }
}

/// Ids of `--with` read per query.
const WITH_CHUNK: usize = 500;

/// A counter's value.
pub fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Where a stream of pages comes from.
#[derive(Clone, Debug)]
enum Source {
    AllUsers,
    AllPairs,
    UserSelf(UserId),
    PairsAsLow(UserId),
    PairsAsHigh(UserId),
    With(UserId, Vec<UserId>),
}
