//! What readiness and the gauges need to know of the dependencies, without
//! reaching into pools from the HTTP layer.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::Cache;
use crate::db::Db;

/// How each dependency answers now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dependencies {
    /// MySQL answered `SELECT 1`.
    pub mysql: bool,
    /// Redis answered `PING`.
    pub redis: bool,
}

/// Checks the dependencies of one worker.
#[derive(Clone, Debug)]
pub struct Health {
    cache: Arc<Cache>,
    db: Db,
}

impl Health {
    /// Health of `cache` and `db`.
    pub fn new(cache: Arc<Cache>, db: Db) -> Self {
        Self { cache, db }
    }

    /// Asks both dependencies at once, each for at most `timeout`.
    pub async fn check(&self, timeout: Duration) -> Dependencies {
        let (mysql, redis) = tokio::join!(self.db.ping(timeout), self.cache.ping(timeout));
        Dependencies { mysql, redis }
    }

    /// The MySQL pool's use now.
    pub fn mysql_pool(&self) -> deadpool::Status {
        self.db.status()
    }

    /// Whether any worker of this instance currently skips Redis.
    pub fn redis_breaker_open(&self) -> bool {
        crate::cache::any_breaker_open()
    }
}
