//! Typed, layered configuration (see `docs/operations.md#configuration`).
//!
//! Layers, later wins: the shipped defaults (compiled in),
//! `config/default.toml`, `config/<CONNSTATUS_ENV>.toml` (the folder is
//! `CONNSTATUS_CONFIG_DIR`, default `config`), then environment variables — `DATABASE_URL`, `REDIS_URL`, `RUST_LOG` and
//! every `CONNSTATUS_*` name (`CONNSTATUS_MAX_INFLIGHT` sets `max_inflight`).
//! Start-up validates the result and stops with one line naming the bad
//! setting. Secrets are `SecretString`s, so `Debug` output never shows them.
//! It fails closed: in production, or with a listener beyond loopback, the
//! shipped development secrets (and short ones) are refused.

use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// The HS256 secret shipped in `config/default.toml` for local development.
pub const DEV_JWT_SECRET: &str = "connstatus-development-secret-do-not-use-in-production";
/// The internal token shipped in `config/default.toml` for local development.
pub const DEV_INTERNAL_TOKEN: &str = "connstatus-development-internal-token";

/// The profiles that need no file of their own in the config folder.
pub const BUILT_IN_PROFILES: [&str; 3] = ["development", "test", "production"];

/// The most clock leeway a token check may allow.
pub const MAX_JWT_LEEWAY_SECONDS: u64 = 300;

/// Everything the service and its commands read from configuration.
///
/// Each value is checked as it is read (a count or timeout that must be
/// positive is a `NonZero*`, a listener a `SocketAddr`, ...), so the error
/// names the key; only rules that span settings are left to `validate`.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// The profile name (`CONNSTATUS_ENV`): one of [`BUILT_IN_PROFILES`] or
    /// a name with a `<config dir>/<name>.toml`; `production` refuses the
    /// development secrets.
    #[serde(default = "default_env", deserialize_with = "lenient_string")]
    pub env: String,
    /// The folder the TOML layers were read from (`CONNSTATUS_CONFIG_DIR`).
    #[serde(default = "default_config_dir")]
    pub config_dir: String,
    /// `DATABASE_URL`: `mysql://user:password@host:port/database`.
    #[serde(deserialize_with = "mysql_url")]
    pub database_url: SecretString,
    /// `REDIS_URL`: `redis://host:port[/db]`; in cluster mode the seed
    /// nodes, in sentinel mode the sentinels, comma-separated.
    #[serde(deserialize_with = "redis_url")]
    pub redis_url: SecretString,
    /// `CONNSTATUS_BIND`: the public listener.
    #[serde(deserialize_with = "socket_address")]
    pub bind: SocketAddr,
    /// `CONNSTATUS_ADMIN_BIND`: the admin listener.
    #[serde(deserialize_with = "socket_address")]
    pub admin_bind: SocketAddr,
    /// `CONNSTATUS_WORKERS`: HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// `CONNSTATUS_MIGRATE_ON_START`: `serve` applies pending migrations.
    pub migrate_on_start: bool,
    /// `CONNSTATUS_LOG_FORMAT`: `text` or `json`.
    #[serde(deserialize_with = "log_format")]
    pub log_format: String,
    /// JWT verification settings.
    #[serde(flatten)]
    pub jwt: JwtSettings,
    /// `CONNSTATUS_INTERNAL_TOKEN`: the bearer token of `/internal/*`.
    #[serde(deserialize_with = "non_empty_secret")]
    pub internal_token: SecretString,
    /// `CONNSTATUS_MAX_INFLIGHT`: requests in flight per instance before 429.
    #[serde(deserialize_with = "nonzero_usize")]
    pub max_inflight: NonZeroUsize,
    /// `CONNSTATUS_DRAIN_SECONDS`: how long readiness reports 503 before the
    /// listeners stop accepting.
    pub drain_seconds: u64,
    /// `CONNSTATUS_GRACE_SECONDS`: the most a shutdown may take.
    #[serde(deserialize_with = "nonzero_u64")]
    pub grace_seconds: NonZeroU64,
    /// Cache settings.
    #[serde(flatten)]
    pub cache: CacheSettings,
    /// `CONNSTATUS_MYSQL_POOL_SIZE`: connections in the MySQL pool (at least
    /// 1; a plain number because the pool builders take one).
    #[serde(deserialize_with = "positive_usize")]
    pub mysql_pool_size: usize,
    /// `CONNSTATUS_MYSQL_TIMEOUT_MS`: the most one MySQL call (checkout
    /// included) may take before the request gets a 503.
    #[serde(deserialize_with = "nonzero_u64")]
    pub mysql_timeout_ms: NonZeroU64,
    /// `CONNSTATUS_MAX_BODY_BYTES`: the largest request body accepted (413).
    #[serde(deserialize_with = "nonzero_usize")]
    pub max_body_bytes: NonZeroUsize,
    /// `CONNSTATUS_BODY_TIMEOUT_MS`: the most reading a whole request body
    /// may take (408 and the connection closed beyond it).
    #[serde(deserialize_with = "nonzero_u64")]
    pub body_timeout_ms: NonZeroU64,
    /// `CONNSTATUS_MAX_HEADER_BYTES`: the most header bytes a request may
    /// carry (431).
    #[serde(deserialize_with = "nonzero_usize")]
    pub max_header_bytes: NonZeroUsize,
    /// `CONNSTATUS_MAX_EVENTS`: the most events in one events request.
    #[serde(deserialize_with = "nonzero_usize")]
    pub max_events: NonZeroUsize,
    /// `CONNSTATUS_MAX_BATCH_IDS`: the most distinct ids in one batch.
    #[serde(deserialize_with = "nonzero_usize")]
    pub max_batch_ids: NonZeroUsize,
    /// `CONNSTATUS_METRICS_UPKEEP_MS`: how often recorded histogram samples
    /// are folded into their buckets (they are held in memory until then).
    #[serde(deserialize_with = "nonzero_u64")]
    pub metrics_upkeep_ms: NonZeroU64,
    /// `CONNSTATUS_REFRESH_RETRY_MS`: how often queued cache refreshes are
    /// looked at (and retried).
    #[serde(deserialize_with = "nonzero_u64")]
    pub refresh_retry_ms: NonZeroU64,
    /// `CONNSTATUS_REPLAY_WINDOW_SECONDS`: how long landed cache refreshes
    /// are kept, to be replayed when Redis turns out to be a different
    /// server (a failover, a restart) that may have lost them.
    pub replay_window_seconds: u64,
    /// `CONNSTATUS_FOLLOW`: whether `serve` runs the binlog follower (one
    /// instance per database follows at a time; see
    /// `docs/consistency.md#the-binary-log`).
    pub follow: bool,
    /// `CONNSTATUS_FOLLOW_LAG_WARN_SECONDS`: a follower further behind the
    /// log's end than this logs a warning and reports `behind` (readiness
    /// is not failed for it).
    #[serde(deserialize_with = "nonzero_u64")]
    pub follow_lag_warn_seconds: NonZeroU64,
    /// `CONNSTATUS_FOLLOW_SERVER_ID`: the replica server id the follower
    /// registers with (unique among the server's replicas); 0 picks a
    /// random one per connection.
    pub follow_server_id: u32,
    /// `DATABASE_REPLICA_URL`: read replicas, comma-separated `mysql://`
    /// URLs naming the same database, for cache misses, batches and
    /// warming; the binlog follower reads the first one's log. Empty: all
    /// on `DATABASE_URL`.
    #[serde(default, deserialize_with = "mysql_urls")]
    pub database_replica_url: Vec<SecretString>,
}

/// JWT verification (see `docs/api.md#authentication`).
#[derive(Debug, Clone, Deserialize)]
pub struct JwtSettings {
    /// `CONNSTATUS_JWT_ALGORITHM`: HS256, RS256 or ES256.
    #[serde(deserialize_with = "jwt_algorithm")]
    pub jwt_algorithm: String,
    /// `CONNSTATUS_JWT_SECRET`: the HS256 shared secret.
    #[serde(default, deserialize_with = "lenient_opt_secret")]
    pub jwt_secret: Option<SecretString>,
    /// `CONNSTATUS_JWT_PUBLIC_KEY`: path to the PEM public key (RS256/ES256).
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub jwt_public_key: Option<String>,
    /// `CONNSTATUS_JWT_ISSUER`: required `iss` when set.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub jwt_issuer: Option<String>,
    /// `CONNSTATUS_JWT_AUDIENCE`: required `aud` when set.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub jwt_audience: Option<String>,
    /// `CONNSTATUS_JWT_LEEWAY_SECONDS`: clock leeway for `exp`/`nbf`/`iat`,
    /// at most [`MAX_JWT_LEEWAY_SECONDS`].
    #[serde(deserialize_with = "jwt_leeway")]
    pub jwt_leeway_seconds: u64,
    /// `CONNSTATUS_JWT_CACHE_SIZE`: verified tokens remembered per worker
    /// (0: verify every request).
    pub jwt_cache_size: usize,
    /// `CONNSTATUS_JWT_USER_CLAIM`: the claim that holds the caller's id.
    #[serde(deserialize_with = "non_empty_string")]
    pub jwt_user_claim: String,
}

/// How the service reaches Redis (`CONNSTATUS_REDIS_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (or a proxy in front of many): `REDIS_URL` is its URL.
    Standalone,
    /// Redis Cluster: `REDIS_URL` lists seed nodes; keys are routed by slot.
    Cluster,
    /// Redis Sentinel: `REDIS_URL` lists the sentinels, which name the
    /// master of `CONNSTATUS_REDIS_SENTINEL_MASTER`.
    Sentinel,
}

/// Redis cache settings. The numbers stay plain (the cache reads them as
/// such); the positive ones are checked as they are read.
#[derive(Debug, Clone, Deserialize)]
pub struct CacheSettings {
    /// `CONNSTATUS_REDIS_MODE`: `standalone`, `cluster` or `sentinel`.
    #[serde(deserialize_with = "redis_mode")]
    pub redis_mode: RedisMode,
    /// `CONNSTATUS_REDIS_SENTINEL_MASTER`: the master set's name (sentinel
    /// mode only).
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub redis_sentinel_master: Option<String>,
    /// `CONNSTATUS_REDIS_PREFIX`: prefix of every key (isolates tenants and
    /// tests; bump it to abandon an old key layout). Braces are refused: a
    /// key's hash tag is the user id after the prefix (`docs/operations.md#the-key-layout`).
    #[serde(deserialize_with = "redis_prefix")]
    pub redis_prefix: String,
    /// `CONNSTATUS_CACHE_RELATIONS_PER_USER`: the most relations one user's
    /// hash keeps; beyond, a fill makes room by dropping random ones (a hub
    /// user never grows an unbounded key).
    #[serde(deserialize_with = "positive_u64")]
    pub cache_relations_per_user: u64,
    /// `CONNSTATUS_CACHE_TTL_SECONDS`: backstop TTL of an entry (±10% jitter).
    #[serde(deserialize_with = "positive_u64")]
    pub cache_ttl_seconds: u64,
    /// `CONNSTATUS_NEGATIVE_TTL_SECONDS`: TTL of a cached "no such user" for
    /// an id that never had a row.
    #[serde(deserialize_with = "positive_u64")]
    pub negative_ttl_seconds: u64,
    /// `CONNSTATUS_CACHE_LEASE_MS`: how long a miss's lease lasts; a fill
    /// that comes later is dropped (so it should outlast a MySQL read).
    #[serde(deserialize_with = "positive_u64")]
    pub cache_lease_ms: u64,
    /// `CONNSTATUS_REDIS_TIMEOUT_MS`: the most one request-path Redis call may
    /// take before the answer comes from MySQL instead.
    #[serde(deserialize_with = "positive_u64")]
    pub redis_timeout_ms: u64,
    /// `CONNSTATUS_REDIS_BREAKER_MS`: after a Redis failure, how long the
    /// request path skips Redis before trying again.
    pub redis_breaker_ms: u64,
    /// `CONNSTATUS_CACHE_L1_ENTRIES`: entries of the in-process near cache,
    /// per worker (presences and relations; 0 = off). Standalone Redis only.
    pub cache_l1_entries: u64,
}

fn default_env() -> String {
    "development".to_owned()
}

fn default_config_dir() -> String {
    "config".to_owned()
}

/// A configuration that cannot run; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// Reads the layers from `config/` under the current directory and the
    /// process environment, then validates.
    pub fn load() -> Result<Self, ConfigError> {
        let profile = std::env::var("CONNSTATUS_ENV").unwrap_or_else(|_| default_env());
        let dir = std::env::var("CONNSTATUS_CONFIG_DIR").unwrap_or_else(|_| default_config_dir());
        Self::from_figment(Self::figment(&dir, &profile))
    }

    /// The layered sources, before extraction (exposed for tests). The
    /// shipped `default.toml` is compiled in as the base, so the binary runs
    /// from any directory; files in `dir` override it.
    pub fn figment(dir: &str, profile: &str) -> Figment {
        Figment::new()
            .merge(Toml::string(include_str!("../config/default.toml")))
            .merge(Toml::file(format!("{dir}/default.toml")))
            .merge(Toml::file(format!("{dir}/{profile}.toml")))
            .merge(Env::raw().only(&["DATABASE_URL", "DATABASE_REPLICA_URL", "REDIS_URL"]))
            .merge(Env::prefixed("CONNSTATUS_").ignore(&["CONFIG_DIR"]))
            .merge(("config_dir", dir))
    }

    /// Extracts and validates settings from `figment`.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let named = |e| ConfigError(describe(e));
        // Inside `#[serde(flatten)]` serde loses the key of a bad value, so
        // the groups are read on their own first: their errors name the key.
        figment.extract::<JwtSettings>().map_err(named)?;
        figment.extract::<CacheSettings>().map_err(named)?;
        let settings: Settings = figment.extract().map_err(named)?;
        settings.validate()?;
        Ok(settings)
    }

    /// The rules that span settings; each value was checked as it was read.
    fn validate(&self) -> Result<(), ConfigError> {
        // The key itself is loaded (and checked) by the verifier at start-up.
        let jwt = &self.jwt;
        match (
            jwt.jwt_algorithm.as_str(),
            &jwt.jwt_secret,
            &jwt.jwt_public_key,
        ) {
            ("HS256", None, _) => {
                return Err(ConfigError(
                    "CONNSTATUS_JWT_SECRET: required for HS256".into(),
                ))
            }
            (algorithm @ ("RS256" | "ES256"), _, None) => {
                return Err(ConfigError(format!(
                    "CONNSTATUS_JWT_PUBLIC_KEY: required for {algorithm}"
                )))
            }
            _ => {}
        }
        self.check_redis()?;
        self.check_profile()?;
        if let Some(why) = self.exposure() {
            self.refuse_development_secrets(&why)?;
        }
        Ok(())
    }

    /// `REDIS_URL` holds one URL in standalone mode and at least one in the
    /// others; sentinel mode names its master set.
    fn check_redis(&self) -> Result<(), ConfigError> {
        let urls = self.redis_urls();
        match self.cache.redis_mode {
            RedisMode::Standalone if urls.len() != 1 => Err(ConfigError(
                "REDIS_URL: one URL in standalone mode (several are for CONNSTATUS_REDIS_MODE=cluster or sentinel)".into(),
            )),
            RedisMode::Sentinel if self.cache.redis_sentinel_master.is_none() => Err(ConfigError(
                "CONNSTATUS_REDIS_SENTINEL_MASTER: required when CONNSTATUS_REDIS_MODE=sentinel".into(),
            )),
            // A tracked connection follows one server; in a cluster or behind
            // sentinels the keys' server changes under it.
            RedisMode::Cluster | RedisMode::Sentinel if self.cache.cache_l1_entries > 0 => Err(ConfigError(
                "CONNSTATUS_CACHE_L1_ENTRIES: the near cache needs CONNSTATUS_REDIS_MODE=standalone".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The URLs of `REDIS_URL` (one, or the seeds / sentinels).
    pub fn redis_urls(&self) -> Vec<String> {
        split_urls(self.redis_url.expose_secret())
    }

    /// A built-in profile, or one the operator added as a file.
    fn check_profile(&self) -> Result<(), ConfigError> {
        let name = self.env.as_str();
        let sane = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let file = std::path::Path::new(&self.config_dir).join(format!("{name}.toml"));
        if BUILT_IN_PROFILES.contains(&name) || (sane && file.is_file()) {
            return Ok(());
        }
        Err(ConfigError(format!(
            "CONNSTATUS_ENV: `{}` is not a profile: use development, test or production, or add {}",
            name.chars().take(64).collect::<String>(),
            file.display()
        )))
    }

    /// Why the development secrets must not be used here, if they must not:
    /// the production profile, or a listener that others can reach.
    fn exposure(&self) -> Option<String> {
        if self.env == "production" {
            return Some("in production".into());
        }
        [
            ("CONNSTATUS_BIND", self.bind),
            ("CONNSTATUS_ADMIN_BIND", self.admin_bind),
        ]
        .into_iter()
        .find(|(_, addr)| !addr.ip().to_canonical().is_loopback())
        .map(|(name, addr)| format!("when {name} ({addr}) is not a loopback address"))
    }

    /// Fails closed: the shipped development secrets (anyone can read them)
    /// and short ones are refused; `why` says what makes this setup exposed.
    fn refuse_development_secrets(&self, why: &str) -> Result<(), ConfigError> {
        let internal = self.internal_token.expose_secret();
        if internal == DEV_INTERNAL_TOKEN || internal.len() < 32 {
            return Err(ConfigError(format!(
                "CONNSTATUS_INTERNAL_TOKEN: the development token and tokens under 32 characters are refused {why}"
            )));
        }
        if self.jwt.jwt_algorithm == "HS256" {
            let secret = self.jwt.jwt_secret.as_ref().map(|s| s.expose_secret());
            if matches!(secret, Some(s) if s == DEV_JWT_SECRET || s.len() < 32) {
                return Err(ConfigError(format!(
                    "CONNSTATUS_JWT_SECRET: the development secret and secrets under 32 characters are refused {why}"
                )));
            }
        }
        Ok(())
    }

    /// The listener address.
    pub fn bind_addr(&self) -> SocketAddr {
        self.bind
    }

    /// The admin listener address.
    pub fn admin_bind_addr(&self) -> SocketAddr {
        self.admin_bind
    }

    /// The MySQL call timeout.
    pub fn mysql_timeout(&self) -> Duration {
        Duration::from_millis(self.mysql_timeout_ms.get())
    }

    /// The public-key path, when configured.
    pub fn jwt_public_key_path(&self) -> Option<PathBuf> {
        self.jwt.jwt_public_key.as_ref().map(PathBuf::from)
    }
}

/// The environment variable that sets `key`.
fn env_name(key: &str) -> String {
    let key = key.to_ascii_uppercase();
    match key.as_str() {
        "DATABASE_URL" | "DATABASE_REPLICA_URL" | "REDIS_URL" => key,
        _ => format!("CONNSTATUS_{key}"),
    }
}

/// One line naming the setting at fault by its environment variable, and the
/// file when the bad value came from one.
fn describe(error: figment::Error) -> String {
    let key = match (&error.kind, error.path.last()) {
        (_, Some(key)) => key.clone(),
        (figment::error::Kind::MissingField(field), None) => field.to_string(),
        _ => return one_line(&error.to_string()),
    };
    let source = error
        .metadata
        .as_ref()
        .filter(|m| !m.name.contains("environment"))
        .map(|m| match &m.source {
            Some(source) => format!(" (`{}` in {source})", key.to_ascii_lowercase()),
            None => format!(" (`{}` in {})", key.to_ascii_lowercase(), m.name),
        })
        .unwrap_or_default();
    one_line(&format!("{}{source}: {}", env_name(&key), error.kind))
}

/// Figment's messages can span lines; the operator wants one.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Environment values are parsed like TOML, so `CONNSTATUS_JWT_SECRET=123`
/// arrives as a number; a string setting takes any scalar as its text.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::S(s) => s,
        Scalar::I(n) => n.to_string(),
        Scalar::U(n) => n.to_string(),
        Scalar::F(n) => n.to_string(),
        Scalar::B(b) => b.to_string(),
    })
}

/// Like [`lenient_string`]; an empty value counts as unset.
fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = lenient_string(d)?;
    Ok((!s.trim().is_empty()).then_some(s))
}

fn lenient_opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    lenient_opt_string(d).map(|s| s.map(SecretString::from))
}

/// The message of a count or duration that must not be 0.
const NOT_ZERO: &str = "must be greater than 0";

fn nonzero_u64<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU64, D::Error> {
    NonZeroU64::new(u64::deserialize(d)?).ok_or_else(|| D::Error::custom(NOT_ZERO))
}

fn nonzero_usize<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroUsize, D::Error> {
    NonZeroUsize::new(usize::deserialize(d)?).ok_or_else(|| D::Error::custom(NOT_ZERO))
}

fn positive_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    nonzero_u64(d).map(NonZeroU64::get)
}

fn positive_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    nonzero_usize(d).map(NonZeroUsize::get)
}

fn jwt_leeway<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let seconds = u64::deserialize(d)?;
    if seconds > MAX_JWT_LEEWAY_SECONDS {
        return Err(D::Error::custom(format!(
            "{seconds} is more than the {MAX_JWT_LEEWAY_SECONDS} s allowed"
        )));
    }
    Ok(seconds)
}

fn socket_address<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = lenient_string(d)?;
    text.parse()
        .map_err(|_| D::Error::custom(format!("`{text}` is not an address like 127.0.0.1:8080")))
}

/// A string that is one of `allowed`; `refusal` says so about another.
fn one_of<'de, D: Deserializer<'de>>(
    d: D,
    allowed: &[&str],
    refusal: &str,
) -> Result<String, D::Error> {
    let text = lenient_string(d)?;
    if allowed.contains(&text.as_str()) {
        return Ok(text);
    }
    let shown: String = text.chars().take(64).collect();
    Err(D::Error::custom(format!("`{shown}` {refusal}")))
}

fn log_format<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    one_of(d, &["text", "json"], "is neither text nor json")
}

fn jwt_algorithm<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    one_of(
        d,
        &["HS256", "RS256", "ES256"],
        "is not one of HS256, RS256, ES256",
    )
}

fn non_empty_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = lenient_string(d)?;
    if text.is_empty() {
        return Err(D::Error::custom("must not be empty"));
    }
    Ok(text)
}

fn non_empty_secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    non_empty_string(d).map(SecretString::from)
}

/// A URL with one of `schemes`; the URL itself (it may hold a password)
/// never appears in the message.
fn url_with<'de, D: Deserializer<'de>>(
    d: D,
    schemes: &[&str],
    refusal: &'static str,
) -> Result<SecretString, D::Error> {
    let url = lenient_string(d)?;
    if schemes.iter().any(|scheme| url.starts_with(scheme)) {
        return Ok(SecretString::from(url));
    }
    Err(D::Error::custom(refusal))
}

fn mysql_url<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    url_with(d, &["mysql://"], "must be a mysql:// URL")
}

/// Comma-separated `mysql://` URLs (none when empty).
fn mysql_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    let text = lenient_string(d)?;
    text.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            if url.starts_with("mysql://") {
                Ok(SecretString::from(url.to_owned()))
            } else {
                Err(D::Error::custom("must be mysql:// URLs, comma-separated"))
            }
        })
        .collect()
}

/// The comma-separated parts of a URL list, trimmed, empty ones left out.
fn split_urls(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One `redis://` URL, or several comma-separated (cluster seeds, sentinels;
/// `validate` checks the count against the mode).
fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    let text = lenient_string(d)?;
    let urls = split_urls(&text);
    let good = |url: &String| url.starts_with("redis://") || url.starts_with("rediss://");
    if urls.is_empty() || !urls.iter().all(good) {
        return Err(D::Error::custom(
            "must be a redis:// or rediss:// URL (or several, comma-separated, in cluster and sentinel modes)",
        ));
    }
    Ok(SecretString::from(text))
}

fn redis_mode<'de, D: Deserializer<'de>>(d: D) -> Result<RedisMode, D::Error> {
    Ok(
        match one_of(
            d,
            &["standalone", "cluster", "sentinel"],
            "is not one of standalone, cluster, sentinel",
        )?
        .as_str()
        {
            "cluster" => RedisMode::Cluster,
            "sentinel" => RedisMode::Sentinel,
            _ => RedisMode::Standalone,
        },
    )
}

fn redis_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = non_empty_string(d)?;
    if text.contains(['{', '}']) {
        return Err(D::Error::custom(
            "must not contain { or }: the user id after it is each key's hash tag",
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The shipped layers under `config/` for `profile`, with `overrides`
    /// (config keys and values) merged last.
    fn load(profile: &str, overrides: &[(&str, Value)]) -> Result<Settings, ConfigError> {
        let mut figment = Settings::figment("config", profile);
        for (key, value) in overrides {
            figment = figment.merge((*key, value.clone()));
        }
        Settings::from_figment(figment)
    }

    fn error(profile: &str, overrides: &[(&str, Value)]) -> String {
        match load(profile, overrides) {
            Ok(_) => panic!("{overrides:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// `message` is one line that starts by naming the variable `name`
    /// (followed by where the value came from, when not the environment).
    fn assert_names(message: &str, name: &str) {
        let rest = message
            .strip_prefix("configuration error: ")
            .and_then(|m| m.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} is not named first: {message}"));
        assert!(
            rest.starts_with(": ") || rest.starts_with(" ("),
            "{message}"
        );
        assert_eq!(message.lines().count(), 1, "{message}");
    }

    /// Secrets of 40 characters, neither of them the development ones.
    fn own_secrets() -> Vec<(&'static str, Value)> {
        vec![
            ("jwt_secret", json!("s".repeat(40))),
            ("internal_token", json!("t".repeat(40))),
        ]
    }

    fn with(
        mut base: Vec<(&'static str, Value)>,
        more: &[(&'static str, Value)],
    ) -> Vec<(&'static str, Value)> {
        base.extend(more.iter().cloned());
        base
    }

    #[test]
    fn a_listener_beyond_loopback_refuses_the_development_secrets_whatever_the_profile() {
        for (key, address) in [
            ("bind", "0.0.0.0:8080"),
            ("admin_bind", "0.0.0.0:9091"),
            ("bind", "192.0.2.7:8080"),
            ("admin_bind", "[::]:9091"),
        ] {
            for profile in ["development", "test"] {
                let listener = [(key, json!(address)), ("env", json!(profile))];
                // Both development secrets: the first one is named.
                let message = error(profile, &listener);
                assert_names(&message, "CONNSTATUS_INTERNAL_TOKEN");
                // An own internal token, the development JWT secret.
                let message = error(
                    profile,
                    &[
                        listener.as_slice(),
                        &[("internal_token", json!("t".repeat(40)))],
                    ]
                    .concat(),
                );
                assert_names(&message, "CONNSTATUS_JWT_SECRET");
                // Own secrets, but one too short.
                for (short, name) in [
                    ("jwt_secret", "CONNSTATUS_JWT_SECRET"),
                    ("internal_token", "CONNSTATUS_INTERNAL_TOKEN"),
                ] {
                    let message = error(
                        profile,
                        &with(
                            with(own_secrets(), &listener),
                            &[(short, json!("x".repeat(31)))],
                        ),
                    );
                    assert_names(&message, name);
                }
                // Own secrets of 32 characters or more: fine.
                assert!(load(profile, &with(own_secrets(), &listener)).is_ok());
            }
        }
    }

    #[test]
    fn loopback_listeners_may_use_the_development_secrets_outside_production() {
        for (bind, admin) in [
            ("127.0.0.1:8080", "127.0.0.1:9091"),
            ("[::1]:8080", "127.0.0.2:9091"),
        ] {
            let settings = load(
                "development",
                &[("bind", json!(bind)), ("admin_bind", json!(admin))],
            )
            .expect("a developer's machine");
            assert_eq!(
                settings
                    .jwt
                    .jwt_secret
                    .as_ref()
                    .map(|s| s.expose_secret().to_owned()),
                Some(DEV_JWT_SECRET.to_owned())
            );
        }
        // Production refuses them even on loopback.
        let message = error("production", &[("env", json!("production"))]);
        assert_names(&message, "CONNSTATUS_INTERNAL_TOKEN");
        assert!(load(
            "production",
            &with(own_secrets(), &[("env", json!("production"))])
        )
        .is_ok());
    }

    #[test]
    fn an_unknown_profile_is_a_configuration_error_unless_its_file_exists() {
        for known in ["development", "test"] {
            assert!(load(known, &[("env", json!(known))]).is_ok(), "{known}");
        }
        let message = error("stagin", &[("env", json!("stagin"))]);
        assert_names(&message, "CONNSTATUS_ENV");
        assert!(message.contains("stagin"), "{message}");
        // An operator's own profile, with its file in the config folder.
        let dir = std::env::temp_dir().join(format!("cs_config_{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("staging.toml"), "max_events = 7\n").expect("profile file");
        let dir_text = dir.to_str().expect("utf-8 path");
        let staging = Settings::from_figment(
            Settings::figment(dir_text, "staging").merge(("env", "staging")),
        );
        let missing =
            Settings::from_figment(Settings::figment(dir_text, "qa").merge(("env", "qa")));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(staging.expect("staging has its file").max_events.get(), 7);
        let message = missing.expect_err("qa has no file").to_string();
        assert_names(&message, "CONNSTATUS_ENV");
    }

    #[test]
    fn read_replicas_are_a_comma_separated_list_of_mysql_urls() {
        use secrecy::ExposeSecret;
        let none = load("test", &[]).expect("no replicas");
        assert!(none.database_replica_url.is_empty());
        let two = load(
            "test",
            &[(
                "database_replica_url",
                json!("mysql://r1:3306/cs, mysql://r2:3306/cs,"),
            )],
        )
        .expect("two replicas");
        let urls: Vec<&str> = two
            .database_replica_url
            .iter()
            .map(|u| u.expose_secret())
            .collect();
        assert_eq!(urls, ["mysql://r1:3306/cs", "mysql://r2:3306/cs"]);
        let message = error(
            "test",
            &[("database_replica_url", json!("mysql://r1/cs,redis://r2"))],
        );
        assert_names(&message, "DATABASE_REPLICA_URL");
        assert!(!message.contains("r1"), "no URL in the message: {message}");
    }

    #[test]
    fn the_jwt_leeway_is_capped_at_five_minutes() {
        let settings = load("test", &[("jwt_leeway_seconds", json!(300))]).expect("300 s");
        assert_eq!(settings.jwt.jwt_leeway_seconds, 300);
        let message = error("test", &[("jwt_leeway_seconds", json!(301))]);
        assert_names(&message, "CONNSTATUS_JWT_LEEWAY_SECONDS");
    }

    #[test]
    fn a_bad_value_names_its_variable_in_the_jwt_and_cache_groups_too() {
        for (key, value, name) in [
            ("jwt_cache_size", json!("lots"), "CONNSTATUS_JWT_CACHE_SIZE"),
            (
                "jwt_leeway_seconds",
                json!(-1),
                "CONNSTATUS_JWT_LEEWAY_SECONDS",
            ),
            (
                "redis_timeout_ms",
                json!("lots"),
                "CONNSTATUS_REDIS_TIMEOUT_MS",
            ),
            (
                "cache_ttl_seconds",
                json!(1.5),
                "CONNSTATUS_CACHE_TTL_SECONDS",
            ),
            (
                "redis_breaker_ms",
                json!(true),
                "CONNSTATUS_REDIS_BREAKER_MS",
            ),
        ] {
            let message = error("test", &[(key, value)]);
            assert_names(&message, name);
        }
    }

    #[test]
    fn every_count_and_timeout_that_must_be_positive_refuses_zero_naming_its_variable() {
        for key in [
            "max_inflight",
            "grace_seconds",
            "mysql_pool_size",
            "mysql_timeout_ms",
            "max_body_bytes",
            "body_timeout_ms",
            "max_header_bytes",
            "max_events",
            "max_batch_ids",
            "metrics_upkeep_ms",
            "refresh_retry_ms",
            "cache_ttl_seconds",
            "redis_timeout_ms",
        ] {
            let message = error("test", &[(key, json!(0))]);
            assert_names(&message, &env_name(key));
            assert!(message.ends_with(": must be greater than 0"), "{message}");
            let message = error("test", &[(key, json!("lots"))]);
            assert_names(&message, &env_name(key));
            assert!(
                message.contains(": invalid type: found string \"lots\", expected u"),
                "{message}"
            );
        }
        // Zero is a value of its own where it means something.
        let settings = load(
            "test",
            &[
                ("workers", json!(0)),
                ("drain_seconds", json!(0)),
                ("jwt_cache_size", json!(0)),
                ("redis_breaker_ms", json!(0)),
            ],
        )
        .expect("zero allowed");
        assert_eq!(settings.workers, 0);
    }

    #[test]
    fn redis_modes_take_the_urls_they_need() {
        let seeds = json!("redis://127.0.0.1:7000, redis://127.0.0.1:7001");
        let cluster = load(
            "test",
            &[
                ("redis_mode", json!("cluster")),
                ("redis_url", seeds.clone()),
            ],
        )
        .expect("cluster");
        assert_eq!(cluster.cache.redis_mode, RedisMode::Cluster);
        assert_eq!(
            cluster.redis_urls(),
            ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
        );
        let message = error("test", &[("redis_url", seeds.clone())]);
        assert_names(&message, "REDIS_URL");
        let message = error(
            "test",
            &[
                ("redis_mode", json!("sentinel")),
                ("redis_url", seeds.clone()),
            ],
        );
        assert_names(&message, "CONNSTATUS_REDIS_SENTINEL_MASTER");
        let sentinel = load(
            "test",
            &[
                ("redis_mode", json!("sentinel")),
                ("redis_url", seeds),
                ("redis_sentinel_master", json!("cs")),
            ],
        )
        .expect("sentinel");
        assert_eq!(sentinel.cache.redis_sentinel_master.as_deref(), Some("cs"));
        let message = error("test", &[("redis_mode", json!("sharded"))]);
        assert_names(&message, "CONNSTATUS_REDIS_MODE");
        let message = error("test", &[("redis_prefix", json!("cs:{1}:"))]);
        assert_names(&message, "CONNSTATUS_REDIS_PREFIX");
        let message = error("test", &[("cache_relations_per_user", json!(0))]);
        assert_names(&message, "CONNSTATUS_CACHE_RELATIONS_PER_USER");
        let message = error(
            "test",
            &[
                ("redis_mode", json!("cluster")),
                ("redis_url", json!("redis://127.0.0.1:7000")),
                ("cache_l1_entries", json!(1000)),
            ],
        );
        assert_names(&message, "CONNSTATUS_CACHE_L1_ENTRIES");
        let near = load("test", &[("cache_l1_entries", json!(1000))]).expect("near cache");
        assert_eq!(near.cache.cache_l1_entries, 1000);
    }

    #[test]
    fn strings_and_addresses_are_checked_as_they_are_read() {
        for (key, value, tail) in [
            (
                "bind",
                "8080",
                "`8080` is not an address like 127.0.0.1:8080",
            ),
            (
                "admin_bind",
                "x",
                "`x` is not an address like 127.0.0.1:8080",
            ),
            (
                "database_url",
                "postgres://u:pw@h/d",
                "must be a mysql:// URL",
            ),
            (
                "redis_url",
                "http://h",
                "must be a redis:// or rediss:// URL (or several, comma-separated, in cluster and sentinel modes)",
            ),
            ("log_format", "xml", "`xml` is neither text nor json"),
            (
                "jwt_algorithm",
                "none",
                "`none` is not one of HS256, RS256, ES256",
            ),
            ("redis_prefix", "", "must not be empty"),
            ("jwt_user_claim", "", "must not be empty"),
            ("internal_token", "", "must not be empty"),
        ] {
            let message = error("test", &[(key, json!(value))]);
            assert_names(&message, &env_name(key));
            assert!(message.ends_with(&format!(": {tail}")), "{message}");
            assert!(!message.contains("pw@"), "a URL is never shown: {message}");
        }
        let settings = load("test", &[("bind", json!("[::1]:0"))]).expect("IPv6");
        assert_eq!(settings.bind_addr(), "[::1]:0".parse().expect("address"));
    }

    #[test]
    fn the_body_timeout_defaults_to_five_seconds_and_zero_is_refused() {
        let settings = load("test", &[]).expect("defaults");
        assert_eq!(settings.body_timeout_ms.get(), 5_000);
        let message = error("test", &[("body_timeout_ms", json!(0))]);
        assert_names(&message, "CONNSTATUS_BODY_TIMEOUT_MS");
    }
}
