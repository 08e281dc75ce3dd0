//! The read path: the status of a pair as one user sees it.
//!
//! Cache first (one `MGET` of the target user's entry and the pair's entry);
//! on a miss one MySQL point select, then a fill that lands only if Redis holds
//! nothing newer. A Redis failure is never an error: the answer comes from
//! MySQL. Only a MySQL failure on a miss is (a 503 to the caller).

use std::sync::Arc;
use std::time::Duration;

use crate::cache::codec::Presence;
use crate::cache::{Cache, Fill};
use crate::db::{self, Pool};
use crate::domain::{Pair, Status, UserId};

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

    /// The status of `target` as `viewer` sees it.
    pub async fn status(&self, viewer: UserId, target: UserId) -> Result<Status, LookupError> {
        let view = Pair::seen_by(viewer, target);
        let pair = view.map(|(pair, _)| pair);
        if let Ok(cached) = self.cache.lookup(target, pair).await {
            match (cached.user, view, cached.pair) {
                (Some(user), _, _) if user.value == Presence::Gone => {
                    return Err(LookupError::NotFound)
                }
                (Some(_), None, _) => return Ok(Status::Null),
                (Some(_), Some((_, side)), Some(relation)) => {
                    return Ok(relation.value.status_for(side))
                }
                _ => {}
            }
        }
        let snapshot = self.read(target, pair).await?;
        let mut fills = vec![Fill::User(target, snapshot.user)];
        if let (Some(pair), Some(relation)) = (pair, snapshot.pair) {
            fills.push(Fill::Pair(pair, relation));
        }
        // A refused or failed fill changes nothing about this answer: the
        // cache either holds something newer or will be filled next time.
        if let Err(e) = self.cache.fill(&fills).await {
            tracing::debug!(error = %e, "cache fill skipped");
        }
        if snapshot.user.value == Presence::Gone {
            return Err(LookupError::NotFound);
        }
        Ok(match (view, snapshot.pair) {
            (Some((_, side)), Some(relation)) => relation.value.status_for(side),
            _ => Status::Null,
        })
    }

    async fn read(
        &self,
        target: UserId,
        pair: Option<Pair>,
    ) -> Result<db::reads::Snapshot, LookupError> {
        let work = async {
            let mut conn = self
                .db
                .get()
                .await
                .map_err(|e| LookupError::Unavailable(e.to_string()))?;
            db::reads::snapshot(&mut conn, target, pair)
                .await
                .map_err(|e| LookupError::Unavailable(e.to_string()))
        };
        tokio::time::timeout(self.db_timeout, work)
            .await
            .map_err(|_| LookupError::Unavailable("timed out".into()))?
    }
}
