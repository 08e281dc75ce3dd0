//! How the cache reaches Redis in each `CONNSTATUS_REDIS_MODE`: one
//! multiplexed connection a worker (no checkout, no `PING` per request)
//! that reconnects by itself, and pools for batch work. Everything above
//! this module sends commands through [`Link`] and never asks which mode
//! it is in, except to group script calls by slot ([`Link::clustered`]).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::config::{CacheSettings, RedisMode};

/// A connection to Redis, whatever its topology. Cheap to clone: clones
/// share the connection.
#[derive(Clone)]
pub enum Link {
    /// One server, reconnected by redis-rs's manager.
    Single(ConnectionManager),
    /// A pooled batch connection to one server (or the sentinels' master).
    Pooled(MultiplexedConnection),
    /// Redis Cluster: commands are routed by their key's slot; redirections
    /// and topology changes are handled by redis-rs.
    Cluster(ClusterConnection),
    /// The master the sentinels name, found again after a failure.
    Sentinel(Arc<SentinelLink>),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Link::Single(_) => "Link::Single",
            Link::Pooled(_) => "Link::Pooled",
            Link::Cluster(_) => "Link::Cluster",
            Link::Sentinel(_) => "Link::Sentinel",
        })
    }
}

/// What a link is made from: the mode, its URLs, and the timeouts.
#[derive(Clone, Debug)]
pub struct Target {
    mode: RedisMode,
    urls: Vec<String>,
    master: Option<String>,
    timeout: Duration,
}

impl Target {
    /// The target of the settings (`REDIS_URL`, `CONNSTATUS_REDIS_MODE`,
    /// `CONNSTATUS_REDIS_SENTINEL_MASTER`), each call bounded by `timeout`.
    pub fn new(urls: Vec<String>, settings: &CacheSettings, timeout: Duration) -> Self {
        Self {
            mode: settings.redis_mode,
            urls,
            master: settings.redis_sentinel_master.clone(),
            timeout,
        }
    }

    /// Whether keys are spread over slots (script calls are then grouped by
    /// slot, one call a slot).
    pub fn clustered(&self) -> bool {
        self.mode == RedisMode::Cluster
    }

    /// A link for one worker's request path. Nothing is connected yet: a
    /// Redis that is down at start-up does not stop the service.
    pub fn link(&self) -> Result<Link, String> {
        let bad = |e: redis::RedisError| format!("REDIS_URL: {e}");
        match self.mode {
            RedisMode::Standalone => {
                let client = Client::open(self.urls[0].as_str()).map_err(bad)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    // Every call on this link is bounded by its caller
                    // (`Cache::guarded`, and the few calls outside it by a
                    // timeout of their own): a second timer per command
                    // here cost each request a timer entry, and woke the
                    // worker's own thread through its event fd whenever the
                    // worker had no other timer pending
                    // (docs/operations.md#timeouts).
                    .set_response_timeout(None)
                    // Reconnection is retried by the next request after the
                    // breaker; a long retry loop here would only hold requests.
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(client, config)
                    .map(Link::Single)
                    .map_err(bad)
            }
            RedisMode::Cluster => {
                let client = ClusterClientBuilder::new(self.urls.clone())
                    .connection_timeout(self.timeout)
                    .response_timeout(self.timeout)
                    // A redirection or a failover's retry must fit in the
                    // request's budget; the breaker handles the rest.
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(200)
                    .build()
                    .map_err(bad)?;
                Ok(Link::Cluster(
                    client.get_pending_async_connection_with_config(
                        redis::cluster::ClusterConfig::new()
                            .set_connection_timeout(self.timeout)
                            .set_response_timeout(self.timeout),
                    ),
                ))
            }
            RedisMode::Sentinel => Ok(Link::Sentinel(Arc::new(SentinelLink {
                client: tokio::sync::Mutex::new(self.sentinel_client()?),
                current: ArcSwapOption::empty(),
                timeout: self.timeout,
            }))),
        }
    }

    fn sentinel_client(&self) -> Result<SentinelClient, String> {
        let master = self.master.clone().unwrap_or_default();
        SentinelClient::build(self.urls.clone(), master, None, SentinelServerType::Master)
            .map_err(|e| format!("REDIS_URL: {e}"))
    }

    /// A pool of `size` connections for batch work (the warming job), with
    /// its own timeouts and no breaker.
    pub fn pool(&self, size: usize) -> Result<BatchPool, String> {
        let bad = |e: &dyn std::fmt::Display| format!("REDIS_URL: {e}");
        // The same sizes and timeouts for deadpool-redis's three pool types.
        macro_rules! sized {
            ($config:expr) => {
                $config
                    .builder()
                    .map_err(|e| bad(&e))?
                    .max_size(size)
                    .wait_timeout(Some(Duration::from_secs(10)))
                    .create_timeout(Some(Duration::from_secs(5)))
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .map_err(|e| bad(&e))?
            };
        }
        Ok(match self.mode {
            RedisMode::Standalone => BatchPool::Single(sized!(deadpool_redis::Config::from_url(
                self.urls[0].as_str()
            ))),
            RedisMode::Cluster => BatchPool::Cluster(sized!(
                deadpool_redis::cluster::Config::from_urls(self.urls.clone())
            )),
            RedisMode::Sentinel => {
                BatchPool::Sentinel(sized!(deadpool_redis::sentinel::Config::from_urls(
                    self.urls.clone(),
                    self.master.clone().unwrap_or_default(),
                    deadpool_redis::sentinel::SentinelServerType::Master,
                )))
            }
        })
    }
}

/// deadpool-redis's pool for the mode.
#[derive(Clone)]
pub enum BatchPool {
    /// One server.
    Single(deadpool_redis::Pool),
    /// Redis Cluster.
    Cluster(deadpool_redis::cluster::Pool),
    /// The sentinels' master.
    Sentinel(deadpool_redis::sentinel::Pool),
}

/// A connection checked out of a [`BatchPool`]: returned to the pool when
/// dropped; [`Checkout::link`] is a handle to it for the cache's calls.
pub enum Checkout {
    /// One server.
    Single(deadpool_redis::Connection),
    /// Redis Cluster.
    Cluster(deadpool_redis::cluster::Connection),
    /// The sentinels' master.
    Sentinel(deadpool_redis::sentinel::Connection),
}

impl BatchPool {
    /// Checks a connection out.
    pub async fn get(&self) -> Result<Checkout, String> {
        Ok(match self {
            BatchPool::Single(pool) => {
                Checkout::Single(pool.get().await.map_err(|e| e.to_string())?)
            }
            BatchPool::Cluster(pool) => {
                Checkout::Cluster(pool.get().await.map_err(|e| e.to_string())?)
            }
            BatchPool::Sentinel(pool) => {
                Checkout::Sentinel(pool.get().await.map_err(|e| e.to_string())?)
            }
        })
    }

    /// The pool's use.
    pub fn status(&self) -> deadpool::Status {
        match self {
            BatchPool::Single(pool) => pool.status(),
            BatchPool::Cluster(pool) => pool.status(),
            BatchPool::Sentinel(pool) => pool.status(),
        }
    }
}

impl Checkout {
    /// A handle to this connection (multiplexed: clones share it).
    pub fn link(&self) -> Link {
        match self {
            Checkout::Single(conn) => Link::Pooled((**conn).clone()),
            Checkout::Cluster(conn) => Link::Cluster((**conn).clone()),
            Checkout::Sentinel(conn) => Link::Pooled((**conn).clone()),
        }
    }
}

/// The sentinels' current master: asked for on first use and again after
/// any failure (the old master may be gone, or a replica now).
pub struct SentinelLink {
    client: tokio::sync::Mutex<SentinelClient>,
    current: ArcSwapOption<MultiplexedConnection>,
    timeout: Duration,
}

impl SentinelLink {
    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.current.load_full() {
            return Ok((*conn).clone());
        }
        let mut client = self.client.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(conn) = self.current.load_full() {
            return Ok((*conn).clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = client.get_async_connection_with_config(&config).await?;
        self.current.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    /// After an error the next call asks the sentinels again, unless the
    /// server merely refused the command (a script's own error).
    fn after(&self, result: &RedisResult<impl Sized>) {
        if let Err(e) = result {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            {
                self.current.store(None);
            }
        }
    }
}

impl Link {
    /// Whether keys are spread over slots.
    pub fn clustered(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(conn) => conn.req_packed_command(cmd),
            Link::Pooled(conn) => conn.req_packed_command(cmd),
            Link::Cluster(conn) => conn.req_packed_command(cmd),
            Link::Sentinel(link) => Box::pin(async move {
                let mut conn = link.connection().await;
                let result = match &mut conn {
                    Ok(conn) => conn.req_packed_command(cmd).await,
                    Err(e) => Err(e.clone()),
                };
                link.after(&result);
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Pooled(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Sentinel(link) => Box::pin(async move {
                let mut conn = link.connection().await;
                let result = match &mut conn {
                    Ok(conn) => conn.req_packed_commands(pipeline, offset, count).await,
                    Err(e) => Err(e.clone()),
                };
                link.after(&result);
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(conn) => conn.get_db(),
            Link::Pooled(conn) => conn.get_db(),
            Link::Cluster(conn) => conn.get_db(),
            Link::Sentinel(_) => 0,
        }
    }
}
