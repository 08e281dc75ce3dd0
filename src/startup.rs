//! Builds the service from settings and binds its listener.
//!
//! The listener is bound here and its port exposed, so that tests (and a
//! configuration of port 0) learn where the service really listens.

use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

use crate::auth::Verifier;
use crate::cache::Cache;
use crate::config::Settings;
use crate::db;
use crate::http::{self, AppState};
use crate::status::StatusService;

/// A built, bound, not yet running service.
pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    /// Builds everything from `settings` and binds the public listener.
    /// Connections to MySQL and Redis are made on demand: either may be down
    /// at start-up without stopping the service.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let verifier = Verifier::from_settings(&settings.jwt).map_err(anyhow::Error::msg)?;
        let redis = Cache::client(&settings.redis_url).map_err(anyhow::Error::msg)?;
        let pool = db::pool(
            &settings.database_url,
            settings.mysql_pool_size,
            settings.mysql_timeout(),
        )
        .map_err(anyhow::Error::msg)?;
        let state = web::Data::new(AppState {
            verifier,
            shutting_down: AtomicBool::new(false),
        });
        let cache_settings = settings.cache.clone();
        let db_timeout = settings.mysql_timeout();
        // Runs once per worker, on the worker's thread.
        let worker_statuses = move || -> Result<StatusService, String> {
            let cache = Cache::new(redis.clone(), &cache_settings)?;
            Ok(StatusService::new(cache, pool.clone(), db_timeout))
        };

        let listener = TcpListener::bind(settings.bind_addr())
            .map_err(|e| anyhow::anyhow!("CONNSTATUS_BIND: cannot bind {}: {e}", settings.bind))?;
        let port = listener.local_addr()?.port();
        let workers = match settings.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let server = HttpServer::new(move || {
            // Cache::new fails only on an invalid connection config, which
            // ours never is: reaching this is a bug, found at start-up.
            #[allow(clippy::expect_used)]
            let statuses = worker_statuses().expect("per-worker status service");
            App::new()
                .app_data(state.clone())
                .app_data(web::Data::new(statuses))
                .configure(http::public_routes)
                .default_service(web::to(http::not_found))
        })
        .workers(workers)
        .shutdown_timeout(settings.grace_seconds)
        .client_request_timeout(Duration::from_secs(5))
        .listen(listener)?
        .run();
        Ok(Self { port, server })
    }

    /// The port the public listener is bound to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server stops (SIGTERM / SIGINT).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
