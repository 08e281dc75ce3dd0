//! Typed, layered configuration (CONTRACT section 8).
//!
//! Layers, later wins: the shipped defaults (compiled in),
//! `config/default.toml`, `config/<CONNSTATUS_ENV>.toml` (the folder is
//! `CONNSTATUS_CONFIG_DIR`, default `config`), then environment variables — `DATABASE_URL`, `REDIS_URL`, `RUST_LOG` and
//! every `CONNSTATUS_*` name (`CONNSTATUS_MAX_INFLIGHT` sets `max_inflight`).
//! Start-up validates the result and stops with one line naming the bad
//! setting. Secrets are `SecretString`s, so `Debug` output never shows them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// The HS256 secret shipped in `config/default.toml` for local development.
pub const DEV_JWT_SECRET: &str = "connstatus-development-secret-do-not-use-in-production";
/// The internal token shipped in `config/default.toml` for local development.
pub const DEV_INTERNAL_TOKEN: &str = "connstatus-development-internal-token";

/// Everything the service and its commands read from configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// The profile name (`CONNSTATUS_ENV`); `production` refuses dev secrets.
    #[serde(default = "default_env", deserialize_with = "lenient_string")]
    pub env: String,
    /// `DATABASE_URL`: `mysql://user:password@host:port/database`.
    #[serde(deserialize_with = "lenient_secret")]
    pub database_url: SecretString,
    /// `REDIS_URL`: `redis://host:port[/db]`.
    #[serde(deserialize_with = "lenient_secret")]
    pub redis_url: SecretString,
    /// `CONNSTATUS_BIND`: the public listener.
    #[serde(deserialize_with = "lenient_string")]
    pub bind: String,
    /// `CONNSTATUS_ADMIN_BIND`: the admin listener.
    #[serde(deserialize_with = "lenient_string")]
    pub admin_bind: String,
    /// `CONNSTATUS_WORKERS`: HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// `CONNSTATUS_MIGRATE_ON_START`: `serve` applies pending migrations.
    pub migrate_on_start: bool,
    /// `CONNSTATUS_LOG_FORMAT`: `text` or `json`.
    #[serde(deserialize_with = "lenient_string")]
    pub log_format: String,
    /// JWT verification settings.
    #[serde(flatten)]
    pub jwt: JwtSettings,
    /// `CONNSTATUS_INTERNAL_TOKEN`: the bearer token of `/internal/*`.
    #[serde(deserialize_with = "lenient_secret")]
    pub internal_token: SecretString,
    /// `CONNSTATUS_MAX_INFLIGHT`: requests in flight per instance before 429.
    pub max_inflight: usize,
    /// `CONNSTATUS_DRAIN_SECONDS`: how long readiness reports 503 before the
    /// listeners stop accepting.
    pub drain_seconds: u64,
    /// `CONNSTATUS_GRACE_SECONDS`: the most a shutdown may take.
    pub grace_seconds: u64,
    /// Cache settings.
    #[serde(flatten)]
    pub cache: CacheSettings,
    /// `CONNSTATUS_MYSQL_POOL_SIZE`: connections in the MySQL pool.
    pub mysql_pool_size: usize,
    /// `CONNSTATUS_MYSQL_TIMEOUT_MS`: the most one MySQL call (checkout
    /// included) may take before the request gets a 503.
    pub mysql_timeout_ms: u64,
    /// `CONNSTATUS_MAX_BODY_BYTES`: the largest request body accepted (413).
    pub max_body_bytes: usize,
    /// `CONNSTATUS_MAX_HEADER_BYTES`: the most header bytes a request may
    /// carry (431).
    pub max_header_bytes: usize,
    /// `CONNSTATUS_MAX_EVENTS`: the most events in one events request.
    pub max_events: usize,
    /// `CONNSTATUS_MAX_BATCH_IDS`: the most distinct ids in one batch.
    pub max_batch_ids: usize,
    /// `CONNSTATUS_METRICS_UPKEEP_MS`: how often recorded histogram samples
    /// are folded into their buckets (they are held in memory until then).
    pub metrics_upkeep_ms: u64,
    /// `CONNSTATUS_REFRESH_RETRY_MS`: how often queued cache refreshes are
    /// retried (and how old one must be to be retried).
    pub refresh_retry_ms: u64,
    /// `CONNSTATUS_REPLAY_WINDOW_SECONDS`: how long landed cache refreshes
    /// are kept, to be replayed when Redis turns out to be a different
    /// server (a failover, a restart) that may have lost them.
    pub replay_window_seconds: u64,
}

/// JWT verification (CONTRACT section 4).
#[derive(Debug, Clone, Deserialize)]
pub struct JwtSettings {
    /// `CONNSTATUS_JWT_ALGORITHM`: HS256, RS256 or ES256.
    #[serde(deserialize_with = "lenient_string")]
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
    /// `CONNSTATUS_JWT_LEEWAY_SECONDS`: clock leeway for `exp`/`nbf`/`iat`.
    pub jwt_leeway_seconds: u64,
    /// `CONNSTATUS_JWT_CACHE_SIZE`: verified tokens remembered per worker
    /// (0: verify every request).
    pub jwt_cache_size: usize,
    /// `CONNSTATUS_JWT_USER_CLAIM`: the claim that holds the caller's id.
    #[serde(deserialize_with = "lenient_string")]
    pub jwt_user_claim: String,
}

/// Redis cache settings.
#[derive(Debug, Clone, Deserialize)]
pub struct CacheSettings {
    /// `CONNSTATUS_REDIS_PREFIX`: prefix of every key (isolates tenants and
    /// tests; bump it to abandon an old key layout).
    #[serde(deserialize_with = "lenient_string")]
    pub redis_prefix: String,
    /// `CONNSTATUS_CACHE_TTL_SECONDS`: backstop TTL of an entry (±10% jitter).
    pub cache_ttl_seconds: u64,
    /// `CONNSTATUS_REDIS_TIMEOUT_MS`: the most one request-path Redis call may
    /// take before the answer comes from MySQL instead.
    pub redis_timeout_ms: u64,
    /// `CONNSTATUS_REDIS_BREAKER_MS`: after a Redis failure, how long the
    /// request path skips Redis before trying again.
    pub redis_breaker_ms: u64,
}

fn default_env() -> String {
    "development".to_owned()
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
        let dir = std::env::var("CONNSTATUS_CONFIG_DIR").unwrap_or_else(|_| "config".into());
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
            .merge(Env::raw().only(&["DATABASE_URL", "REDIS_URL"]))
            .merge(Env::prefixed("CONNSTATUS_").ignore(&["CONFIG_DIR"]))
    }

    /// Extracts and validates settings from `figment`.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(|e| ConfigError(describe(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        for (name, value) in [
            ("CONNSTATUS_BIND", &self.bind),
            ("CONNSTATUS_ADMIN_BIND", &self.admin_bind),
        ] {
            if value.parse::<SocketAddr>().is_err() {
                return fail(format!(
                    "{name}: `{value}` is not an address like 127.0.0.1:8080"
                ));
            }
        }
        if !self.database_url.expose_secret().starts_with("mysql://") {
            return fail("DATABASE_URL: must be a mysql:// URL".into());
        }
        let redis = self.redis_url.expose_secret();
        if !(redis.starts_with("redis://") || redis.starts_with("rediss://")) {
            return fail("REDIS_URL: must be a redis:// or rediss:// URL".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return fail(format!(
                "CONNSTATUS_LOG_FORMAT: `{}` is neither text nor json",
                self.log_format
            ));
        }
        for (name, value) in [
            ("CONNSTATUS_MAX_INFLIGHT", self.max_inflight as u64),
            ("CONNSTATUS_GRACE_SECONDS", self.grace_seconds),
            ("CONNSTATUS_MYSQL_POOL_SIZE", self.mysql_pool_size as u64),
            ("CONNSTATUS_MYSQL_TIMEOUT_MS", self.mysql_timeout_ms),
            ("CONNSTATUS_REDIS_TIMEOUT_MS", self.cache.redis_timeout_ms),
            ("CONNSTATUS_CACHE_TTL_SECONDS", self.cache.cache_ttl_seconds),
            ("CONNSTATUS_MAX_BODY_BYTES", self.max_body_bytes as u64),
            ("CONNSTATUS_MAX_HEADER_BYTES", self.max_header_bytes as u64),
            ("CONNSTATUS_MAX_EVENTS", self.max_events as u64),
            ("CONNSTATUS_MAX_BATCH_IDS", self.max_batch_ids as u64),
            ("CONNSTATUS_REFRESH_RETRY_MS", self.refresh_retry_ms),
            ("CONNSTATUS_METRICS_UPKEEP_MS", self.metrics_upkeep_ms),
        ] {
            if value == 0 {
                return fail(format!("{name}: must be greater than 0"));
            }
        }
        if self.cache.redis_prefix.is_empty() {
            return fail("CONNSTATUS_REDIS_PREFIX: must not be empty".into());
        }
        if self.jwt.jwt_user_claim.is_empty() {
            return fail("CONNSTATUS_JWT_USER_CLAIM: must not be empty".into());
        }
        if self.internal_token.expose_secret().is_empty() {
            return fail("CONNSTATUS_INTERNAL_TOKEN: must not be empty".into());
        }
        // The key itself is loaded (and checked) by the verifier at start-up.
        match self.jwt.jwt_algorithm.as_str() {
            "HS256" => match &self.jwt.jwt_secret {
                Some(s) if !s.expose_secret().is_empty() => {}
                _ => return fail("CONNSTATUS_JWT_SECRET: required for HS256".into()),
            },
            "RS256" | "ES256" => {
                if self.jwt.jwt_public_key.is_none() {
                    return fail(format!(
                        "CONNSTATUS_JWT_PUBLIC_KEY: required for {}",
                        self.jwt.jwt_algorithm
                    ));
                }
            }
            other => {
                return fail(format!(
                    "CONNSTATUS_JWT_ALGORITHM: `{other}` is not one of HS256, RS256, ES256"
                ))
            }
        }
        if self.env == "production" {
            self.refuse_development_secrets()?;
        }
        Ok(())
    }

    fn refuse_development_secrets(&self) -> Result<(), ConfigError> {
        if self.internal_token.expose_secret() == DEV_INTERNAL_TOKEN
            || self.internal_token.expose_secret().len() < 32
        {
            return Err(ConfigError(
                "CONNSTATUS_INTERNAL_TOKEN: production needs its own token of at least 32 characters"
                    .into(),
            ));
        }
        if self.jwt.jwt_algorithm == "HS256" {
            let secret = self.jwt.jwt_secret.as_ref().map(|s| s.expose_secret());
            if matches!(secret, Some(s) if s == DEV_JWT_SECRET || s.len() < 32) {
                return Err(ConfigError(
                    "CONNSTATUS_JWT_SECRET: production needs its own secret of at least 32 characters"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The listener address (validated at load).
    pub fn bind_addr(&self) -> SocketAddr {
        self.bind
            .parse()
            .unwrap_or_else(|_| unreachable!("validated"))
    }

    /// The admin listener address (validated at load).
    pub fn admin_bind_addr(&self) -> SocketAddr {
        self.admin_bind
            .parse()
            .unwrap_or_else(|_| unreachable!("validated"))
    }

    /// The MySQL call timeout.
    pub fn mysql_timeout(&self) -> Duration {
        Duration::from_millis(self.mysql_timeout_ms)
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
        "DATABASE_URL" | "REDIS_URL" => key,
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

/// Figment's messages can span lines; the contract wants one.
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

fn lenient_secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    lenient_string(d).map(SecretString::from)
}

fn lenient_opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    lenient_opt_string(d).map(|s| s.map(SecretString::from))
}
