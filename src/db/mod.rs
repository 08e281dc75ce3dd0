//! MySQL: the source of truth. Pool, migrations, and the queries.
//!
//! Diesel 2 through `diesel-async` (pure-Rust `mysql_async`, no C client): no
//! request ever blocks an actix worker thread on I/O. This layer imports
//! nothing but the domain: it never sees the cache or HTTP.

pub mod binlog;
pub mod outbox;
pub mod reads;
mod run;
pub mod scans;
pub mod schema;
pub mod state;
pub mod writes;

use std::time::Duration;

pub use run::{Db, DbError, Failure, ReadDb};

use diesel::Connection as _;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncMysqlConnection, SimpleAsyncConnection as _};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use secrecy::{ExposeSecret, SecretString};

/// The migrations in `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The MySQL connection pool.
pub type Pool = diesel_async::pooled_connection::deadpool::Pool<AsyncMysqlConnection>;

/// A connection checked out of the pool.
pub type PooledConnection = diesel_async::pooled_connection::deadpool::Object<AsyncMysqlConnection>;

/// Builds the pool. Connections are made on demand, so a MySQL that is down
/// at start-up does not stop the service from serving cache hits.
///
/// Checkouts do not run a `SELECT 1` first (`RecyclingMethod::Fast`): that
/// would double the round trips of a cache miss; a connection that broke is
/// found on use, reported as 503 for that one request, and discarded.
pub fn pool(url: &SecretString, size: usize, timeout: Duration) -> Result<Pool, String> {
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<AsyncMysqlConnection>::new_with_config(
        url.expose_secret(),
        config,
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| format!("DATABASE_URL: {e}"))
}

impl Db {
    /// The pool and timeout of `DATABASE_URL`, `CONNSTATUS_MYSQL_POOL_SIZE`
    /// and `CONNSTATUS_MYSQL_TIMEOUT_MS`.
    pub fn from_settings(settings: &crate::config::Settings) -> Result<Self, String> {
        let pool = pool(
            &settings.database_url,
            settings.mysql_pool_size,
            settings.mysql_timeout(),
        )?;
        Ok(Self::new(pool, settings.mysql_timeout()))
    }
}

impl ReadDb {
    /// Reads over the replicas of `DATABASE_REPLICA_URL` (pools of
    /// `CONNSTATUS_MYSQL_POOL_SIZE` each), falling back to `primary`.
    pub fn from_settings(settings: &crate::config::Settings, primary: Db) -> Result<Self, String> {
        let replicas = settings
            .database_replica_url
            .iter()
            .map(|url| {
                pool(url, settings.mysql_pool_size, settings.mysql_timeout())
                    .map(|pool| Db::new(pool, settings.mysql_timeout()))
                    .map_err(|e| e.replace("DATABASE_URL", "DATABASE_REPLICA_URL"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(primary, replicas))
    }
}

/// Takes a connection out of the pool for good after it failed: it may be
/// broken (a MySQL restart leaves every pooled socket dead, and
/// `RecyclingMethod::Fast` does not look), and the pool makes a fresh one
/// when it is next needed.
pub fn discard(conn: PooledConnection) {
    drop(deadpool::managed::Object::take(conn));
}

/// Splits `mysql://…/name` into the server URL (no database) and the name.
fn server_and_database(url: &str) -> Result<(String, String), String> {
    let mut parsed = url::Url::parse(url).map_err(|e| format!("DATABASE_URL: {e}"))?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    if name.is_empty() {
        return Err("DATABASE_URL: names no database".into());
    }
    // Quoted below as an identifier; keep it to a safe alphabet anyway.
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
    {
        return Err(format!(
            "DATABASE_URL: `{name}` is not a plain database name"
        ));
    }
    parsed.set_path("");
    Ok((parsed.to_string(), name))
}

/// Creates the database named by `url` if it does not exist.
pub async fn create_database(url: &SecretString) -> Result<(), String> {
    let (server, name) = server_and_database(url.expose_secret())?;
    let mut conn = <AsyncMysqlConnection as diesel_async::AsyncConnection>::establish(&server)
        .await
        .map_err(|e| format!("cannot connect to MySQL: {e}"))?;
    conn.batch_execute(&format!(
        "CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    ))
    .await
    .map_err(|e| format!("cannot create database `{name}`: {e}"))
}

/// Drops the database named by `url` (tests use it to clean up).
pub async fn drop_database(url: &SecretString) -> Result<(), String> {
    let (server, name) = server_and_database(url.expose_secret())?;
    let mut conn = <AsyncMysqlConnection as diesel_async::AsyncConnection>::establish(&server)
        .await
        .map_err(|e| format!("cannot connect to MySQL: {e}"))?;
    conn.batch_execute(&format!("DROP DATABASE IF EXISTS `{name}`"))
        .await
        .map_err(|e| format!("cannot drop database `{name}`: {e}"))
}

/// Creates the database if missing and applies pending migrations; returns
/// the versions applied. Runs the (synchronous) migration harness on a
/// blocking thread, never on a runtime worker.
pub async fn migrate(url: &SecretString) -> Result<Vec<String>, String> {
    create_database(url).await?;
    let url = url.expose_secret().to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncMysqlConnection>::establish(&url)
            .map_err(|e| format!("cannot connect to MySQL: {e}"))?;
        conn.run_pending_migrations(MIGRATIONS)
            .map(|applied| applied.iter().map(ToString::to_string).collect())
            .map_err(|e| format!("migration failed: {e}"))
    })
    .await
    .map_err(|e| format!("migration task failed: {e}"))?
}

/// Reverts every applied migration (used to check that `down.sql` works).
pub async fn revert_all(url: &SecretString) -> Result<(), String> {
    let url = url.expose_secret().to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncMysqlConnection>::establish(&url)
            .map_err(|e| format!("cannot connect to MySQL: {e}"))?;
        conn.revert_all_migrations(MIGRATIONS)
            .map(|_| ())
            .map_err(|e| format!("revert failed: {e}"))
    })
    .await
    .map_err(|e| format!("migration task failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_split_off_the_url() {
        let (server, name) =
            server_and_database("mysql://root:pw@127.0.0.1:3306/connstatus").expect("valid");
        assert_eq!(server, "mysql://root:pw@127.0.0.1:3306");
        assert_eq!(name, "connstatus");
    }

    #[test]
    fn urls_without_a_plain_database_name_are_refused() {
        assert!(server_and_database("mysql://root@127.0.0.1:3306").is_err());
        assert!(server_and_database("mysql://root@127.0.0.1:3306/a`b").is_err());
        assert!(server_and_database("mysql://root@127.0.0.1:3306/a;drop").is_err());
    }
}
