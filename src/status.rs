//! The read path: the status of a pair as one user sees it.
//!
//! Cache first (one `MGET` of the target user's entry and the pair's entry);
//! on a miss one MySQL point select, then a fill that lands only if Redis holds
//! nothing newer. A Redis failure is never an error: the answer comes from
//! MySQL. Only a MySQL failure on a miss is (a 503 to the caller).

use std::sync::Arc;
use std::time::Duration;

use crate::cache::codec::{Presence, Versioned};
use crate::cache::{Cache, Fill};
use crate::db::{self, Pool};
use crate::domain::{Pair, Relation, Status, UserId};
use crate::metrics;

/// Misses read from MySQL per query in a batch.
const MISS_CHUNK: usize = 500;

/// The answer for `target` from what is known of it, or `None` when that is
/// not enough (a miss).
fn answer(
    viewer: UserId,
    target: UserId,
    user: Option<Versioned<Presence>>,
    pair: Option<Versioned<Relation>>,
) -> Option<Result<Status, LookupError>> {
    match (user?.value, Pair::seen_by(viewer, target), pair) {
        (Presence::Gone, _, _) => Some(Err(LookupError::NotFound)),
        (Presence::Active, None, _) => Some(Ok(Status::Null)),
        (Presence::Active, Some((_, side)), Some(relation)) => {
            Some(Ok(relation.value.status_for(side)))
        }
        (Presence::Active, Some(_), None) => None,
    }
}

/// In a batch, a user who does not exist reads as `null`.
fn batch_status(answer: Result<Status, LookupError>) -> Status {
    answer.unwrap_or(Status::Null)
}

/// Why a status could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The other user does not exist or is deleted.
    #[error("not found")]
    NotFound,
    /// MySQL was needed and is unavailable (down, pool exhausted, timeout).
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

/// Answers statuses from the cache and the database.
pub struct StatusService {
    cache: Arc<Cache>,
    db: Pool,
    db_timeout: Duration,
}

impl StatusService {
    /// A service over `cache` and `db`; every MySQL call is bounded by
    /// `db_timeout` (pool wait included).
    pub fn new(cache: Arc<Cache>, db: Pool, db_timeout: Duration) -> Self {
        Self {
            cache,
            db,
            db_timeout,
        }
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The database pool.
    pub fn db(&self) -> &Pool {
        &self.db
    }

    /// The status of `target` as `viewer` sees it; `NotFound` for a user
    /// who does not exist or is deleted.
    pub async fn status(&self, viewer: UserId, target: UserId) -> Result<Status, LookupError> {
        let pair = Pair::new(viewer, target);
        match self.cache.lookup(target, pair).await {
            Ok(cached) => {
                if let Some(known) = answer(viewer, target, cached.user, cached.pair) {
                    metrics::cache_lookups("hit", 1);
                    return known;
                }
                metrics::cache_lookups("miss", 1);
            }
            Err(_) => metrics::cache_lookups("error", 1),
        }
        let snapshot = self.read(target, pair).await?;
        let mut fills = vec![Fill::User(target, snapshot.user)];
        if let (Some(pair), Some(relation)) = (pair, snapshot.pair) {
            fills.push(Fill::Pair(pair, relation));
        }
        // A refused or failed fill changes nothing about this answer: the
        // cache either holds something newer or will be filled next time.
        self.fill(&fills).await;
        answer(viewer, target, Some(snapshot.user), snapshot.pair).unwrap_or(Ok(Status::Null))
    }

    /// For a batch: the status of each of `targets` (distinct) as `viewer`
    /// sees it, `Null` for users that do not exist. One `MGET` for all; the
    /// misses in one MySQL query per chunk, filled back in one script call
    /// per chunk.
    pub async fn statuses(
        &self,
        viewer: UserId,
        targets: &[UserId],
    ) -> Result<Vec<Status>, LookupError> {
        let (cached, redis_answered) = match self.cache.lookup_many(viewer, targets).await {
            Ok(cached) => (cached, true),
            Err(_) => {
                metrics::cache_lookups("error", targets.len() as u64);
                (vec![crate::cache::Cached::default(); targets.len()], false)
            }
        };
        let mut answers: Vec<Option<Status>> = cached
            .iter()
            .zip(targets)
            .map(|(c, &target)| answer(viewer, target, c.user, c.pair).map(batch_status))
            .collect();
        let misses: Vec<usize> = (0..targets.len())
            .filter(|&i| answers[i].is_none())
            .collect();
        if redis_answered {
            metrics::cache_lookups("hit", (targets.len() - misses.len()) as u64);
            metrics::cache_lookups("miss", misses.len() as u64);
        }
        for chunk in misses.chunks(MISS_CHUNK) {
            let wanted: Vec<UserId> = chunk.iter().map(|&i| targets[i]).collect();
            let snapshots = self.read_many(viewer, &wanted).await?;
            let mut fills = Vec::with_capacity(chunk.len() * 2);
            for (&i, snapshot) in chunk.iter().zip(&snapshots) {
                let target = targets[i];
                fills.push(Fill::User(target, snapshot.user));
                if let (Some(pair), Some(relation)) = (Pair::new(viewer, target), snapshot.pair) {
                    fills.push(Fill::Pair(pair, relation));
                }
                answers[i] =
                    answer(viewer, target, Some(snapshot.user), snapshot.pair).map(batch_status);
            }
            self.fill(&fills).await;
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or(Status::Null))
            .collect())
    }

    /// Fills what was read, counting the outcome; a failure only means the
    /// next read misses again.
    async fn fill(&self, fills: &[Fill]) {
        match self.cache.fill(fills).await {
            Ok(written) => metrics::cache_fills(written, fills.len() as u64),
            Err(e) => {
                metrics::cache_fill_errors(fills.len() as u64);
                tracing::debug!(error = %e, "cache fill skipped");
            }
        }
    }

    async fn read_many(
        &self,
        viewer: UserId,
        targets: &[UserId],
    ) -> Result<Vec<db::reads::Snapshot>, LookupError> {
        self.bounded(async |conn| db::reads::snapshots(conn, viewer, targets).await)
            .await
    }

    async fn read(
        &self,
        target: UserId,
        pair: Option<Pair>,
    ) -> Result<db::reads::Snapshot, LookupError> {
        self.bounded(async |conn| db::reads::snapshot(conn, target, pair).await)
            .await
    }

    /// Runs a read on a pooled connection, within the MySQL timeout (the
    /// pool wait included).
    async fn bounded<T>(
        &self,
        read: impl AsyncFnOnce(&mut diesel_async::AsyncMysqlConnection) -> diesel::QueryResult<T>,
    ) -> Result<T, LookupError> {
        let work = async {
            let waited = std::time::Instant::now();
            let mut conn = self
                .db
                .get()
                .await
                .map_err(|e| LookupError::Unavailable(e.to_string()))?;
            ::metrics::histogram!("connstatus_mysql_pool_wait_seconds")
                .record(waited.elapsed().as_secs_f64());
            match read(&mut conn).await {
                Ok(value) => Ok(value),
                Err(e) => {
                    db::discard(conn);
                    Err(LookupError::Unavailable(e.to_string()))
                }
            }
        };
        let result = tokio::time::timeout(self.db_timeout, work)
            .await
            .map_err(|_| LookupError::Unavailable("timed out".into()))
            .and_then(|r| r);
        if result.is_err() {
            metrics::mysql_error();
        }
        result
    }
}
