//! The cache-warming job (CONTRACT section 7, `connstatus warm`; and
//! `POST /internal/v1/cache/warm`).
//!
//! Streams rows from MySQL in chunks by keyset pagination (never OFFSET),
//! and writes each chunk to Redis as one pipeline of only-if-newer script
//! calls — the same step as every other fill — on pooled connections
//! (`deadpool-redis`), a few chunks in flight at once. So it can run beside
//! live traffic, be interrupted, and be run again: an entry that changed in
//! MySQL after the scan read it is never overwritten with the older value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};
use futures_util::{stream, Stream, StreamExt};
use serde::Serialize;

use crate::cache::codec::{Presence, Versioned};
use crate::cache::{Cache, Fill};
use crate::db::schema::{user_connections as uc, users};
use crate::db::state::State;
use crate::db::{reads, Pool};
use crate::domain::{Pair, UserId};

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
    /// Entries not newer.
    pub skipped: AtomicU64,
    /// Entries that failed.
    pub errors: AtomicU64,
}

/// How the job runs.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Rows read per query (and written per pipeline).
    pub chunk: usize,
    /// Entries per script call inside a pipeline.
    pub per_call: usize,
    /// Pipelines in flight at once.
    pub concurrency: usize,
    /// The most one pipeline may take.
    pub redis_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            chunk: 5_000,
            per_call: 500,
            concurrency: 4,
            redis_timeout: Duration::from_secs(10),
        }
    }
}

/// The warming job over one MySQL pool, one Redis pool and the cache's keys.
pub struct Warmer {
    cache: Cache,
    redis: deadpool_redis::Pool,
    db: Pool,
    tuning: Tuning,
}

impl std::fmt::Debug for Warmer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warmer")
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

type Chunk = Vec<Fill>;

impl Warmer {
    /// A warmer writing through `cache`'s keys and script, on connections
    /// of `redis`, reading `db`.
    pub fn new(cache: Cache, redis: deadpool_redis::Pool, db: Pool, tuning: Tuning) -> Self {
        Self {
            cache,
            redis,
            db,
            tuning,
        }
    }

    /// The batch Redis pool's use (the request path has no pool: one
    /// multiplexed connection per worker).
    pub fn redis_status(&self) -> deadpool::Status {
        self.redis.status()
    }

    /// A pool of `size` Redis connections for batch work.
    pub fn redis_pool(
        url: &secrecy::SecretString,
        size: usize,
    ) -> Result<deadpool_redis::Pool, String> {
        use secrecy::ExposeSecret;
        deadpool_redis::Config::from_url(url.expose_secret())
            .builder()
            .map_err(|e| format!("REDIS_URL: {e}"))?
            .max_size(size)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| format!("REDIS_URL: {e}"))
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

    /// Writes one chunk as one pipeline (only-if-newer, like every fill) and
    /// tallies it.
    pub async fn write_chunk(&self, chunk: &[Fill], progress: &Progress) {
        let n = chunk.len() as u64;
        let attempt = async {
            let mut conn = self.redis.get().await.map_err(|e| e.to_string())?;
            self.cache
                .fill_pipelined(&mut conn, chunk, self.tuning.per_call)
                .await
                .map_err(|e| e.to_string())
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
    ) -> impl Stream<Item = Result<Chunk, String>> + 'a {
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
    ) -> impl Stream<Item = Result<Chunk, String>> + 'a {
        stream::unfold(Some(Cursor::default()), move |cursor| {
            let source = source.clone();
            async move {
                let cursor = cursor?;
                match self.page(&source, cursor).await {
                    Ok((fills, next)) => {
                        let pairs =
                            fills.iter().filter(|f| matches!(f, Fill::Pair(..))).count() as u64;
                        progress.pairs.fetch_add(pairs, Ordering::Relaxed);
                        progress
                            .users
                            .fetch_add(fills.len() as u64 - pairs, Ordering::Relaxed);
                        if fills.is_empty() {
                            None
                        } else {
                            Some((Ok(fills), next))
                        }
                    }
                    Err(e) => Some((Err(e), None)),
                }
            }
        })
    }

    /// One page of `source` after `cursor`, and the cursor of the next page
    /// (`None` when this was the last).
    async fn page(
        &self,
        source: &Source,
        cursor: Cursor,
    ) -> Result<(Chunk, Option<Cursor>), String> {
        let limit = self.tuning.chunk as i64;
        let mut conn = tokio::time::timeout(Duration::from_secs(10), self.db.get())
            .await
            .map_err(|_| "MySQL: timed out waiting for a connection".to_string())?
            .map_err(|e| format!("MySQL: {e}"))?;
        let conn: &mut AsyncMysqlConnection = &mut conn;
        let rows = match source {
            Source::AllPairs => {
                pair_rows(
                    conn,
                    uc::table
                        .into_boxed()
                        .filter(
                            uc::user_low
                                .gt(cursor.a)
                                .or(uc::user_low.eq(cursor.a).and(uc::user_high.gt(cursor.b))),
                        )
                        .order((uc::user_low, uc::user_high))
                        .limit(limit),
                )
                .await?
            }
            Source::PairsAsLow(u) => return self.pairs_of(conn, *u, true, cursor.b).await,
            Source::PairsAsHigh(u) => return self.pairs_of(conn, *u, false, cursor.a).await,
            Source::AllUsers => {
                let rows: Vec<(u64, u64, bool)> = users::table
                    .filter(users::id.gt(cursor.a))
                    .order(users::id)
                    .limit(limit)
                    .select((users::id, users::version, users::deleted_at.is_null()))
                    .load(conn)
                    .await
                    .map_err(|e| format!("MySQL: {e}"))?;
                let next = rows
                    .last()
                    .map(|&(id, ..)| Cursor { a: id, b: 0 })
                    .filter(|_| rows.len() == self.tuning.chunk);
                let fills = rows.into_iter().filter_map(|(id, version, active)| {
                    let value = if active {
                        Presence::Active
                    } else {
                        Presence::Gone
                    };
                    Some(Fill::User(UserId::new(id)?, Versioned { version, value }))
                });
                return Ok((fills.collect(), next));
            }
            Source::UserSelf(u) => {
                let fill = match reads::user(conn, *u)
                    .await
                    .map_err(|e| format!("MySQL: {e}"))?
                {
                    Some(v) => Fill::User(*u, v),
                    None => Fill::User(
                        *u,
                        Versioned {
                            version: 0,
                            value: Presence::Gone,
                        },
                    ),
                };
                return Ok((vec![fill], None));
            }
            Source::With(u, with) => {
                let start = usize::try_from(cursor.a).unwrap_or(usize::MAX);
                let Some(slice) = with.get(start..) else {
                    return Ok((Vec::new(), None));
                };
                let slice = &slice[..slice.len().min(500)];
                if slice.is_empty() {
                    return Ok((Vec::new(), None));
                }
                let snapshots = reads::snapshots(conn, *u, slice)
                    .await
                    .map_err(|e| format!("MySQL: {e}"))?;
                let mut fills = Vec::with_capacity(slice.len() * 2);
                for (&other, snapshot) in slice.iter().zip(snapshots) {
                    fills.push(Fill::User(other, snapshot.user));
                    if let (Some(pair), Some(relation)) = (Pair::new(*u, other), snapshot.pair) {
                        fills.push(Fill::Pair(pair, relation));
                    }
                }
                let end = start + slice.len();
                let next = (end < with.len()).then_some(Cursor {
                    a: end as u64,
                    b: 0,
                });
                return Ok((fills, next));
            }
        };
        let next = rows
            .last()
            .map(|(pair, _)| Cursor {
                a: pair.low().get(),
                b: pair.high().get(),
            })
            .filter(|_| rows.len() == self.tuning.chunk);
        Ok((
            rows.into_iter()
                .map(|(pair, v)| Fill::Pair(pair, v))
                .collect(),
            next,
        ))
    }
}

/// A counter's value (spelled out: diesel's `load` is in scope here).
pub fn count(counter: &AtomicU64) -> u64 {
    AtomicU64::load(counter, Ordering::Relaxed)
}

impl Warmer {
    /// A page of `user`'s pairs on one side, after `after` (the other
    /// member's id), with the other member's own entry: a read of that pair
    /// also needs to know the other user exists.
    async fn pairs_of(
        &self,
        conn: &mut AsyncMysqlConnection,
        user: UserId,
        as_low: bool,
        after: u64,
    ) -> Result<(Chunk, Option<Cursor>), String> {
        use diesel::sql_types::{BigInt, Bool, Unsigned};
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Unsigned<BigInt>)]
            user_low: u64,
            #[diesel(sql_type = Unsigned<BigInt>)]
            user_high: u64,
            #[diesel(sql_type = crate::db::state::StateSql)]
            state: State,
            #[diesel(sql_type = diesel::sql_types::Nullable<Unsigned<BigInt>>)]
            requested_by: Option<u64>,
            #[diesel(sql_type = Bool)]
            rejected: bool,
            #[diesel(sql_type = Unsigned<BigInt>)]
            version: u64,
            #[diesel(sql_type = Unsigned<BigInt>)]
            other_version: u64,
            #[diesel(sql_type = Bool)]
            other_active: bool,
        }
        // `user_low = ?` walks the primary key, `user_high = ?` the
        // (user_high, user_low) index: both in key order, both keyset pages.
        let (mine, other) = if as_low {
            ("user_low", "user_high")
        } else {
            ("user_high", "user_low")
        };
        let rows: Vec<Row> = diesel::sql_query(format!(
            "SELECT c.user_low, c.user_high, c.state, c.requested_by, c.rejected_at IS NOT NULL AS rejected, \
             c.version, u.version AS other_version, u.deleted_at IS NULL AS other_active \
             FROM user_connections c JOIN users u ON u.id = c.{other} \
             WHERE c.{mine} = ? AND c.{other} > ? ORDER BY c.{other} LIMIT ?"
        ))
        .bind::<Unsigned<BigInt>, _>(user.get())
        .bind::<Unsigned<BigInt>, _>(after)
        .bind::<BigInt, _>(self.tuning.chunk as i64)
        .load(conn)
        .await
        .map_err(|e| format!("MySQL: {e}"))?;
        let full = rows.len() == self.tuning.chunk;
        let next = rows
            .last()
            .map(|r| Cursor {
                a: r.user_low,
                b: r.user_high,
            })
            .filter(|_| full);
        let mut fills = Vec::with_capacity(rows.len() * 2);
        for r in rows {
            let (Some(low), Some(high)) = (UserId::new(r.user_low), UserId::new(r.user_high))
            else {
                continue;
            };
            let Some(pair) = Pair::new(low, high) else {
                continue;
            };
            let relation =
                reads::relation(pair, Some((r.state, r.requested_by, r.rejected, r.version)));
            fills.push(Fill::Pair(pair, relation));
            let value = if r.other_active {
                Presence::Active
            } else {
                Presence::Gone
            };
            let other = if as_low { high } else { low };
            fills.push(Fill::User(
                other,
                Versioned {
                    version: r.other_version,
                    value,
                },
            ));
        }
        Ok((fills, next))
    }
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

/// The last key read (keyset pagination).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cursor {
    a: u64,
    b: u64,
}

/// Pair rows of a keyset page, with their relations.
async fn pair_rows(
    conn: &mut AsyncMysqlConnection,
    query: uc::BoxedQuery<'static, diesel::mysql::Mysql>,
) -> Result<Vec<(Pair, Versioned<crate::domain::Relation>)>, String> {
    let rows: Vec<(u64, u64, State, Option<u64>, bool, u64)> = query
        .select((
            uc::user_low,
            uc::user_high,
            uc::state,
            uc::requested_by,
            uc::rejected_at.is_not_null(),
            uc::version,
        ))
        .load(conn)
        .await
        .map_err(|e| format!("MySQL: {e}"))?;
    Ok(rows
        .into_iter()
        .filter_map(|(low, high, state, by, rejected, version)| {
            let pair = Pair::new(UserId::new(low)?, UserId::new(high)?)?;
            Some((
                pair,
                reads::relation(pair, Some((state, by, rejected, version))),
            ))
        })
        .collect())
}
