//! Builds the service from settings and binds its listeners.
//!
//! The listeners are bound here and their ports exposed, so that tests (and a
//! configuration of port 0) learn where the service really listens.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{middleware, web, App, HttpServer};

use crate::auth::{TokenCache, Verifier};
use crate::cache::codec::Keys;
use crate::cache::near::{Near, NearLink, Nears};
use crate::cache::Cache;
use crate::config::Settings;
use crate::db::{Db, ReadDb};
use crate::http::edge::{edge, Inflight, Limits};
use crate::http::{self, AppState, Worker};
use crate::service::follow::{self, Follower, FollowerStatus};
use crate::service::health::Health;
use crate::service::mutations::Mutations;
use crate::service::refresh::{self, Hooks};
use crate::service::statuses::StatusService;
use crate::service::warm::{Tuning, Warmer};

/// A built, bound, not yet running service.
pub struct Application {
    port: u16,
    admin_port: u16,
    public: Server,
    admin: Server,
}

impl Application {
    /// Builds everything from `settings`, binds both listeners, and starts
    /// the background tasks. Connections to MySQL and Redis are made on
    /// demand: either may be down at start-up without stopping the service.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let state = web::Data::new(AppState {
            verifier: Verifier::from_settings(&settings.jwt).map_err(anyhow::Error::msg)?,
            internal_token: settings.internal_token.clone(),
            max_body_bytes: settings.max_body_bytes.get(),
            body_timeout: Duration::from_millis(settings.body_timeout_ms.get()),
            max_events: settings.max_events.get(),
            max_batch_ids: settings.max_batch_ids.get(),
            shutting_down: AtomicBool::new(false),
            inflight: Inflight::new(settings.max_inflight.get()),
            follower: FollowerStatus::new(if settings.follow {
                follow::State::Starting
            } else {
                follow::State::Off
            }),
        });
        let worker = worker_factory(settings)?;
        spawn_background(settings, &worker, &state.follower).await?;
        let limits = web::Data::new(Limits {
            max_header_bytes: settings.max_header_bytes.get(),
        });
        // In-flight requests get what is left of the grace period once the
        // drain delay is over.
        let stop_timeout = settings
            .grace_seconds
            .get()
            .saturating_sub(settings.drain_seconds)
            .max(1);
        let workers = match settings.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };

        let (listener, port) = bind(settings.bind_addr(), "CONNSTATUS_BIND")?;
        let inflight = web::Data::new(state.inflight.clone());
        let (public_state, public_limits, public_worker) =
            (state.clone(), limits.clone(), worker.clone());
        let public = HttpServer::new(move || {
            App::new()
                .wrap(middleware::from_fn(edge))
                .app_data(inflight.clone())
                .app_data(public_limits.clone())
                .app_data(public_state.clone())
                .app_data(web::Data::new(start_worker(&public_worker)))
                .configure(http::public_routes)
                .default_service(web::to(http::not_found))
        })
        .workers(workers)
        .client_disconnect_timeout(Duration::from_secs(1))
        .disable_signals()
        .shutdown_timeout(stop_timeout)
        .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
        .listen(listener)?
        .run();

        let (listener, admin_port) = bind(settings.admin_bind_addr(), "CONNSTATUS_ADMIN_BIND")?;
        let admin_state = state.clone();
        let admin = HttpServer::new(move || {
            App::new()
                .wrap(middleware::from_fn(edge))
                .app_data(admin_state.clone())
                .app_data(limits.clone())
                .app_data(web::Data::new(start_worker(&worker)))
                .configure(http::admin::admin_routes)
                .default_service(web::to(http::not_found))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(stop_timeout)
        .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
        .listen(listener)?
        .run();

        let drain = Duration::from_secs(settings.drain_seconds);
        tokio::spawn(shutdown_on_signal(
            state,
            drain,
            public.handle(),
            admin.handle(),
        ));
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

/// How long a client may take to send a request's head (slow clients are
/// cut off with 408 rather than holding a worker).
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Makes the per-worker state: one Redis connection per worker, shared by
/// its services; the MySQL pool and the warm job's Redis pool are shared by
/// all workers. Runs once per worker, on the worker's thread: the worker's
/// Redis connection (and its driver task) live there.
fn worker_factory(
    settings: &Settings,
) -> anyhow::Result<impl Fn() -> Result<Worker, String> + Clone + Send + 'static> {
    let redis = Cache::target(settings);
    let db = Db::from_settings(settings).map_err(anyhow::Error::msg)?;
    let read_db = ReadDb::from_settings(settings, db.clone()).map_err(anyhow::Error::msg)?;
    let cache_settings = settings.cache.clone();
    let tuning = Tuning::default();
    let warm_redis = redis.pool(tuning.concurrency).map_err(anyhow::Error::msg)?;
    let token_cache_size = settings.jwt.jwt_cache_size;
    // A near cache per worker (off unless sized), each read into through a
    // tracked connection of its own; writes forget their keys in all.
    let nears = (cache_settings.cache_l1_entries > 0).then(Nears::default);
    let near_url = settings.redis_urls().swap_remove(0);
    Ok(move || -> Result<Worker, String> {
        let mut cache = Cache::new(redis.link()?, &cache_settings)?;
        if let Some(all) = &nears {
            let near = Arc::new(Near::new(
                usize::try_from(cache_settings.cache_l1_entries).unwrap_or(usize::MAX),
                Keys::new(&cache_settings.redis_prefix),
            ));
            let timeout = Duration::from_millis(cache_settings.redis_timeout_ms);
            cache = cache.with_near(NearLink::new(near, all.clone(), &near_url, timeout)?);
        }
        let cache = Arc::new(cache);
        let hooks = Hooks::new(cache.clone(), db.clone());
        let warm_cache = Cache::new(redis.link()?, &cache_settings)?;
        Ok(Worker {
            statuses: StatusService::new(cache.clone(), read_db.clone()),
            mutations: Mutations::new(db.clone(), hooks.clone()),
            warmer: Warmer::new(warm_cache, warm_redis.clone(), db.clone(), tuning),
            health: Health::new(cache, db.clone()),
            hooks,
            tokens: std::cell::RefCell::new(TokenCache::new(token_cache_size)),
        })
    })
}

/// The tasks that run beside the listeners: the refresh-queue sweeper
/// (retries refreshes that could not reach Redis, replays those a Redis
/// failover lost), the binlog follower unless it is off, and the metrics
/// upkeep.
async fn spawn_background(
    settings: &Settings,
    worker: &impl Fn() -> Result<Worker, String>,
    follower: &std::sync::Arc<FollowerStatus>,
) -> anyhow::Result<()> {
    if settings.follow {
        let follower = Follower::from_settings(
            settings,
            worker().map_err(anyhow::Error::msg)?.hooks,
            follower.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        follower.mark_start().await;
        tokio::spawn(follower.run_forever());
    }
    let sweeper = worker().map_err(anyhow::Error::msg)?.hooks;
    tokio::spawn(refresh::sweep_forever(
        sweeper,
        Duration::from_millis(settings.refresh_retry_ms.get()),
        Duration::from_secs(settings.replay_window_seconds),
    ));
    crate::meters::handle();
    tokio::spawn(crate::meters::upkeep_forever(Duration::from_millis(
        settings.metrics_upkeep_ms.get(),
    )));
    Ok(())
}

/// SIGTERM or SIGINT: readiness turns 503 at once; the listeners keep
/// serving through the drain delay (so the balancer sees the 503 and moves
/// away); then they stop accepting, in-flight requests finish, and
/// `run_until_stopped` returns.
async fn shutdown_on_signal(
    state: web::Data<AppState>,
    drain: Duration,
    public: ServerHandle,
    admin: ServerHandle,
) {
    wait_for_signal().await;
    state.shutting_down.store(true, Ordering::SeqCst);
    tracing::info!(
        drain_seconds = drain.as_secs(),
        "shutdown: readiness is 503; draining"
    );
    tokio::time::sleep(drain).await;
    tracing::info!("shutdown: no new connections; finishing requests in flight");
    tokio::join!(public.stop(true), admin.stop(true));
}

/// SIGTERM or SIGINT.
pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // No signal handlers (should not happen on Unix): Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
        }
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
