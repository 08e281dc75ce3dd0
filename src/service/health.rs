//! What readiness and the gauges need to know of the dependencies, without
//! reaching into pools from the HTTP layer.
//!
//! Probes must stay cheap under a flood (a balancer, or an attacker on the
//! public listener): a check asks MySQL and Redis at most once per
//! [`FRESH_FOR`] per worker; probes in between get the last answer, and
//! probes during a check share it.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{FutureExt, LocalBoxFuture, Shared};

use crate::cache::Cache;
use crate::db::Db;

/// How long a dependency check answers every probe of its worker.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// How each dependency answers now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dependencies {
    /// MySQL answered `SELECT 1`.
    pub mysql: bool,
    /// Redis answered `PING`.
    pub redis: bool,
}

/// Checks the dependencies of one worker.
pub struct Health {
    cache: Arc<Cache>,
    db: Db,
    /// The last check and when it was made.
    last: Cell<Option<(Instant, Dependencies)>>,
    /// The check under way, which probes meanwhile share.
    checking: RefCell<Option<Shared<LocalBoxFuture<'static, Dependencies>>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("last", &self.last.get())
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Health of `cache` and `db`.
    pub fn new(cache: Arc<Cache>, db: Db) -> Self {
        Self {
            cache,
            db,
            last: Cell::new(None),
            checking: RefCell::new(None),
        }
    }

    /// How the dependencies answer: the last check while it is fresh, else
    /// the check under way, else a new one asking both at once, each for at
    /// most `timeout`.
    pub async fn check(&self, timeout: Duration) -> Dependencies {
        if let Some((at, known)) = self.last.get() {
            if at.elapsed() < FRESH_FOR {
                return known;
            }
        }
        let under_way = self.checking.borrow().clone();
        let check = match under_way {
            Some(check) => check,
            None => {
                let (db, cache) = (self.db.clone(), self.cache.clone());
                let check = async move {
                    let (mysql, redis) = tokio::join!(db.ping(timeout), cache.ping(timeout));
                    Dependencies { mysql, redis }
                }
                .boxed_local()
                .shared();
                *self.checking.borrow_mut() = Some(check.clone());
                check
            }
        };
        let now = check.await;
        self.last.set(Some((Instant::now(), now)));
        self.checking.borrow_mut().take();
        now
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
