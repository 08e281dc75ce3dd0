//! The one way work reaches MySQL: on a pooled connection, within the MySQL
//! timeout (the pool wait included), and a connection that failed or was cut
//! off mid-call is discarded rather than handed out again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_async::AsyncMysqlConnection;

use super::{Pool, PooledConnection};

/// MySQL could not answer: down, pool exhausted, timed out, or the query
/// failed. The text is for logs, never for callers.
#[derive(Clone, Debug, thiserror::Error)]
#[error("database unavailable: {0}")]
pub struct DbError(pub String);

impl From<diesel::result::Error> for DbError {
    fn from(e: diesel::result::Error) -> Self {
        DbError(e.to_string())
    }
}

/// Whether an error means the connection can no longer be trusted (as
/// opposed to an answer such as "not found" on a healthy connection).
pub trait Failure {
    /// True when the connection that produced this error must be dropped.
    fn is_failure(&self) -> bool;
}

impl Failure for DbError {
    fn is_failure(&self) -> bool {
        true
    }
}

/// The MySQL pool and the time any call may take.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    timeout: Duration,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Calls on `pool`, each bounded by `timeout`.
    pub fn new(pool: Pool, timeout: Duration) -> Self {
        Self { pool, timeout }
    }

    /// The most one call may take (pool wait included).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The pool's use now (for gauges).
    pub fn status(&self) -> deadpool::Status {
        self.pool.status()
    }

    /// Whether MySQL answers `SELECT 1` within `timeout` (for readiness).
    pub async fn ping(&self, timeout: Duration) -> bool {
        use diesel_async::SimpleAsyncConnection;
        let probe = Self {
            pool: self.pool.clone(),
            timeout,
        };
        probe
            .query(async |conn| conn.batch_execute("SELECT 1").await)
            .await
            .is_ok()
    }

    /// Runs a query on a pooled connection within the timeout.
    pub async fn query<T>(
        &self,
        work: impl AsyncFnOnce(&mut AsyncMysqlConnection) -> diesel::QueryResult<T>,
    ) -> Result<T, DbError> {
        self.run(async |conn| work(conn).await.map_err(DbError::from))
            .await
    }

    /// Runs `work` on a pooled connection within the timeout (checkout
    /// included). A checkout or timeout failure becomes `E::from(DbError)`;
    /// a connection whose work failed ([`Failure`]) or was cut off by the
    /// timeout is discarded.
    pub async fn run<T, E>(
        &self,
        work: impl AsyncFnOnce(&mut AsyncMysqlConnection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<DbError> + Failure,
    {
        let call = async {
            let waited = Instant::now();
            let conn = self
                .pool
                .get()
                .await
                .map_err(|e| E::from(DbError(e.to_string())))?;
            ::metrics::histogram!("connstatus_mysql_pool_wait_seconds")
                .record(waited.elapsed().as_secs_f64());
            let mut held = Held(Some(conn));
            let result = match held.0.as_mut() {
                Some(conn) => work(conn).await,
                None => Err(E::from(DbError("no connection".into()))),
            };
            if !matches!(&result, Err(e) if e.is_failure()) {
                held.release();
            }
            result
        };
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(E::from(DbError("timed out".into()))),
        };
        if matches!(&result, Err(e) if e.is_failure()) {
            ::metrics::counter!("connstatus_mysql_errors_total").increment(1);
        }
        result
    }
}

/// Where reads that may trail the primary go: cache misses, batches (see
/// `docs/consistency.md#read-replicas`). The replicas of
/// `DATABASE_REPLICA_URL` in turn; the primary when there are none, and for
/// a read the replica it was given to could not answer (the primary is the
/// truth: a failed replica costs time, never an answer).
#[derive(Clone, Debug)]
pub struct ReadDb {
    primary: Db,
    replicas: Arc<[Db]>,
    next: Arc<AtomicUsize>,
}

impl ReadDb {
    /// Reads over `replicas`, falling back to `primary`.
    pub fn new(primary: Db, replicas: Vec<Db>) -> Self {
        Self {
            primary,
            replicas: replicas.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The primary, for reads that must be exact.
    pub fn primary(&self) -> &Db {
        &self.primary
    }

    /// Runs a read on the next replica, or on the primary (see [`ReadDb`]).
    pub async fn query<T>(
        &self,
        work: impl AsyncFn(&mut AsyncMysqlConnection) -> diesel::QueryResult<T>,
    ) -> Result<T, DbError> {
        if self.replicas.is_empty() {
            return self.primary.query(async |conn| work(conn).await).await;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.replicas.len();
        match self.replicas[i].query(async |conn| work(conn).await).await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                tracing::debug!(error = %e, replica = i, "replica read failed: read from the primary");
                self.primary.query(async |conn| work(conn).await).await
            }
        }
    }
}

/// A checked-out connection that is discarded when dropped, unless released
/// back to the pool: a call cut off half-way (timeout, a client gone) must
/// not hand a connection in an unknown state to the next caller.
struct Held(Option<PooledConnection>);

impl Held {
    fn release(&mut self) {
        drop(self.0.take());
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            super::discard(conn);
        }
    }
}
