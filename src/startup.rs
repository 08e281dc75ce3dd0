//! Builds the service from settings and binds its listeners.
//!
//! The listeners are bound here and their ports exposed, so that tests (and a
//! configuration of port 0) learn where the service really listens.

use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

use crate::auth::Verifier;
use crate::cache::Cache;
use crate::config::Settings;
use crate::db;
use crate::hooks::{self, Hooks};
use crate::http::{self, AppState, Worker};
use crate::status::StatusService;
use crate::warm;

/// A built, bound, not yet running service.
pub struct Application {
    port: u16,
    admin_port: u16,
    public: Server,
    admin: Server,
}

impl Application {
    /// Builds everything from `settings`, binds both listeners, and starts
    /// the refresh-queue sweeper. Connections to MySQL and Redis are made on
    /// demand: either may be down at start-up without stopping the service.
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
            internal_token: settings.internal_token.clone(),
            max_body_bytes: settings.max_body_bytes,
            max_events: settings.max_events,
            max_batch_ids: settings.max_batch_ids,
            shutting_down: AtomicBool::new(false),
        });
        let cache_settings = settings.cache.clone();
        let db_timeout = settings.mysql_timeout();
        let tuning = warm::Tuning::default();
        let warm_redis = warm::Warmer::redis_pool(&settings.redis_url, tuning.concurrency)
            .map_err(anyhow::Error::msg)?;
        // Runs once per worker, on the worker's thread: the worker's Redis
        // connection (and its driver task) live there.
        let worker = move || -> Result<Worker, String> {
            let cache = Arc::new(Cache::new(redis.clone(), &cache_settings)?);
            let warmer = warm::Warmer::new(
                Cache::new(redis.clone(), &cache_settings)?,
                warm_redis.clone(),
                pool.clone(),
                tuning,
            );
            Ok(Worker {
                statuses: StatusService::new(cache.clone(), pool.clone(), db_timeout),
                hooks: Hooks::new(cache, pool.clone(), db_timeout),
                warmer,
                db_timeout,
            })
        };

        // The sweeper retries refreshes that could not reach Redis.
        let sweeper = worker().map_err(anyhow::Error::msg)?.hooks;
        tokio::spawn(hooks::sweep_forever(
            sweeper,
            Duration::from_millis(settings.refresh_retry_ms),
        ));

        let workers = match settings.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (listener, port) = bind(settings.bind_addr(), "CONNSTATUS_BIND")?;
        let (public_state, public_worker) = (state.clone(), worker.clone());
        let public = HttpServer::new(move || {
            App::new()
                .app_data(public_state.clone())
                .app_data(web::Data::new(start_worker(&public_worker)))
                .configure(http::public_routes)
                .default_service(web::to(http::not_found))
        })
        .workers(workers)
        .shutdown_timeout(settings.grace_seconds)
        .client_request_timeout(Duration::from_secs(5))
        .listen(listener)?
        .run();

        let (listener, admin_port) = bind(settings.admin_bind_addr(), "CONNSTATUS_ADMIN_BIND")?;
        let admin = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::Data::new(start_worker(&worker)))
                .configure(http::admin::admin_routes)
                .default_service(web::to(http::not_found))
        })
        .workers(1)
        .shutdown_timeout(settings.grace_seconds)
        .client_request_timeout(Duration::from_secs(5))
        .listen(listener)?
        .run();
        Ok(Self {
            port,
            admin_port,
            public,
            admin,
        })
    }

    /// The port the public listener is bound to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port the admin listener is bound to.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Serves until both listeners stop (SIGTERM / SIGINT).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let (public, admin) = tokio::join!(self.public, self.admin);
        public.and(admin)
    }
}

fn bind(addr: std::net::SocketAddr, name: &str) -> anyhow::Result<(TcpListener, u16)> {
    let listener =
        TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("{name}: cannot bind {addr}: {e}"))?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

/// The per-worker state. `Cache::new` fails only on an invalid connection
/// config, which ours never is, and the same config already worked once in
/// `build`: reaching the panic is a bug, found at start-up.
#[allow(clippy::expect_used)]
fn start_worker(make: &impl Fn() -> Result<Worker, String>) -> Worker {
    make().expect("per-worker state")
}
