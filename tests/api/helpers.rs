//! The test harness: every test gets its own MySQL database and its own Redis
//! key prefix, and a service bound to a free port, talking to the real MySQL
//! and Redis. Both are dropped when the test ends, pass or fail.

use std::sync::atomic::{AtomicU64, Ordering};

use biscuit::jwa::SignatureAlgorithm;
use biscuit::jws::{Compact, Header, RegisteredHeader, Secret};
use biscuit::{CompactJson, Empty};
use connstatus::cache::Cache;
use connstatus::config::Settings;
use connstatus::db;
use connstatus::domain::UserId;
use connstatus::startup::Application;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The MySQL server tests use (no database part).
pub fn mysql_server() -> String {
    std::env::var("CONNSTATUS_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// The Redis tests use.
pub fn redis_url() -> String {
    std::env::var("CONNSTATUS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..8)
            .unwrap_or("x")
    )
}

/// A fresh, migrated database and a fresh key prefix; removed on drop.
pub struct Isolated {
    /// `mysql://…/cs_test_…`.
    pub database_url: String,
    /// The Redis key prefix of this test.
    pub prefix: String,
    /// Whether dropping this handle removes the database and the keys.
    pub owned: bool,
}

impl Isolated {
    /// Creates and migrates the database.
    pub async fn new() -> Self {
        Self::on(&mysql_server()).await
    }

    /// Creates and migrates a database on the MySQL server at `server`.
    pub async fn on(server: &str) -> Self {
        let database_url = format!("{server}/{}", unique("cs_test_"));
        db::migrate(&SecretString::from(database_url.clone()))
            .await
            .expect("migrate the test database");
        Self {
            database_url,
            prefix: format!("{}:", unique("cstest:")),
            owned: true,
        }
    }

    /// Settings for this database and prefix, with `overrides` merged last.
    pub fn settings(&self, overrides: &[(&str, Value)]) -> Settings {
        let mut figment: Figment = Settings::figment("config", "test")
            .merge(("database_url", self.database_url.clone()))
            .merge(("redis_url", redis_url()))
            .merge(("redis_prefix", self.prefix.clone()))
            .merge(("bind", "127.0.0.1:0"))
            .merge(("admin_bind", "127.0.0.1:0"))
            .merge(("workers", 1))
            // The binlog follower would refresh behind the back of tests
            // that arrange the cache's state with care; the tests of the
            // follower turn it on.
            .merge(("follow", false));
        for (key, value) in overrides {
            figment = figment.merge((*key, value.clone()));
        }
        Settings::from_figment(figment).expect("test settings are valid")
    }

    /// A direct connection, for arranging rows and checking them.
    pub async fn connection(&self) -> AsyncMysqlConnection {
        AsyncMysqlConnection::establish(&self.database_url)
            .await
            .expect("connect")
    }

    /// Runs SQL statements directly, as an external writer would.
    pub async fn sql(&self, statements: &str) {
        self.connection()
            .await
            .batch_execute(statements)
            .await
            .unwrap_or_else(|e| panic!("{statements}: {e}"));
    }

    /// A raw Redis connection, to look at what the cache holds.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(redis_url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let url = SecretString::from(self.database_url.clone());
        let prefix = self.prefix.clone();
        // Drop may run during a panic, inside or outside a runtime: clean up
        // on a thread of our own with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let _ = db::drop_database(&url).await;
                let _ = cache_on(&redis_url(), &prefix).purge().await;
            });
        });
        let _ = cleanup.join();
    }
}

impl Isolated {
    /// Cache settings under `prefix`, as the service would have them.
    pub fn cache_settings(prefix: &str) -> connstatus::config::CacheSettings {
        let mut settings = Settings::from_figment(Settings::figment("config", "test"))
            .expect("default settings")
            .cache;
        settings.redis_prefix = prefix.to_owned();
        settings.redis_timeout_ms = 2_000;
        settings
    }
}

/// A running service on a free port, over an isolated database and prefix.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// The admin listener, `http://127.0.0.1:PORT`.
    pub admin_address: String,
    /// The settings it runs with.
    pub settings: Settings,
    /// Its database and prefix.
    pub store: Isolated,
    /// An HTTP client.
    pub client: reqwest::Client,
}

/// Spawns the service with default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Spawns the service with `overrides` (config keys and values).
pub async fn spawn_app_with(overrides: &[(&str, Value)]) -> TestApp {
    spawn_app_on(Isolated::new().await, overrides).await
}

/// Spawns the service over an existing database and prefix.
pub async fn spawn_app_on(store: Isolated, overrides: &[(&str, Value)]) -> TestApp {
    let settings = store.settings(overrides);
    let app = Application::build(&settings).await.expect("build the app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let admin_address = format!("http://127.0.0.1:{}", app.admin_port());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        admin_address,
        settings,
        store,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
    }
}

impl TestApp {
    /// A valid HS256 token for `user`, minted as `connstatus token` does.
    pub fn token(&self, user: u64) -> String {
        let secret = self.settings.jwt.jwt_secret.as_ref().expect("HS256 secret");
        connstatus::auth::mint_hs256(
            secret.expose_secret().as_bytes(),
            &self.settings.jwt.jwt_user_claim,
            UserId::new(user).expect("valid id"),
            std::time::Duration::from_secs(600),
            self.settings.jwt.jwt_issuer.as_deref(),
            self.settings.jwt.jwt_audience.as_deref(),
        )
        .expect("mint")
    }

    /// `GET /api/v2/user/{id}/connection_status/` as `viewer`.
    pub async fn status_of(&self, viewer: u64, id: &str) -> reqwest::Response {
        self.get_with_token(
            &format!("/api/v2/user/{id}/connection_status/"),
            &self.token(viewer),
        )
        .await
    }

    /// The status string (or `None` for null) `viewer` sees of `other`;
    /// panics on anything but a 200 with the documented body.
    pub async fn status(&self, viewer: u64, other: u64) -> Option<String> {
        let response = self.status_of(viewer, &other.to_string()).await;
        assert_eq!(response.status(), 200, "GET {other} as {viewer}");
        let body: Value = response.json().await.expect("json body");
        let object = body.as_object().expect("an object");
        assert_eq!(object.len(), 1, "only connection_status: {body}");
        match &object["connection_status"] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => panic!("connection_status is {other}"),
        }
    }

    /// GET `path` with a bearer token.
    /// `GET path` on the public listener, without credentials.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request")
    }

    pub async fn get_with_token(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// `POST /api/v2/user/connection/statuses/` for `users` as `viewer`:
    /// the status and the JSON body.
    pub async fn batch(&self, viewer: u64, users: &[u64]) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/api/v2/user/connection/statuses/", self.address))
            .bearer_auth(self.token(viewer))
            .json(&json!({ "users": users }))
            .send()
            .await
            .expect("batch");
        let status = response.status().as_u16();
        (status, response.json().await.expect("json"))
    }

    /// Inserts users `ids`.
    pub async fn users(&self, ids: &[u64]) {
        let values: Vec<String> = ids.iter().map(|id| format!("({id})")).collect();
        self.store
            .sql(&format!(
                "INSERT INTO users (id) VALUES {}",
                values.join(",")
            ))
            .await;
    }
}

/// Claims as free JSON, for tokens the tests shape by hand.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawClaims(pub Value);
impl CompactJson for RawClaims {}

/// Signs `claims` with `algorithm` and `secret` (any JSON, any key).
pub fn sign(algorithm: SignatureAlgorithm, secret: &Secret, claims: Value) -> String {
    let header = Header::<Empty>::from_registered_header(RegisteredHeader {
        algorithm,
        ..RegisteredHeader::default()
    });
    Compact::new_decoded(header, RawClaims(claims))
        .encode(secret)
        .expect("sign")
        .encoded()
        .expect("encoded")
        .encode()
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims valid for ten minutes for `sub`.
pub fn claims_for(sub: Value) -> Value {
    json!({"sub": sub, "exp": now() + 600, "iat": now()})
}

/// A stored pair row: state, requested_by, rejected, version.
pub type Row = (String, Option<u64>, bool, u64);

/// The status `viewer` should see, from the stored row.
pub fn expected(row: Option<&Row>, viewer: u64) -> Value {
    match row.map(|(s, by, rejected, _)| (s.as_str(), *by, *rejected)) {
        Some(("connected", _, _)) => json!("connected"),
        Some(("pending", Some(by), _)) if by == viewer => json!("sent_connection_request"),
        Some(("pending", Some(_), false)) => json!("received_connection_request"),
        _ => Value::Null,
    }
}

impl Isolated {
    /// The pair row of (low, high) as stored, if any.
    pub async fn row(&self, low: u64, high: u64) -> Option<Row> {
        row_on(&mut self.connection().await, low, high).await
    }

    /// Rows in the cache refresh queue still pending (not landed).
    pub async fn queued(&self) -> i64 {
        use connstatus::db::schema::cache_refresh_queue as q;
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let mut conn = self.connection().await;
        q::table
            .filter(q::landed_at.is_null())
            .count()
            .get_result(&mut conn)
            .await
            .expect("count")
    }

    /// Removes the entry `spec` (see [`spot`]; both copies of a pair), as an
    /// eviction would.
    pub async fn evict(&self, spec: &str) {
        let mut redis = self.redis().await;
        for cmd in delete_cmds(&self.prefix, spec) {
            let _: () = cmd.query_async(&mut redis).await.expect("DEL");
        }
    }

    /// The raw cache value of the entry `spec` (see [`spot`]).
    pub async fn cached(&self, spec: &str) -> Option<String> {
        let raw: Option<String> = read_cmd(&self.prefix, spec)
            .query_async(&mut self.redis().await)
            .await
            .expect("GET");
        raw.map(readable)
    }

    /// Writes a value into the entry `spec` (see [`spot`]), behind the
    /// service's back: `7:c` is written as the cache encodes it, anything
    /// else (a lease, a foreign value) as it is.
    pub async fn plant(&self, spec: &str, value: &str) {
        let _: () = write_cmd(&self.prefix, spec, value)
            .query_async(&mut self.redis().await)
            .await
            .expect("SET");
    }

    /// A cache over the shared Redis under this prefix, as the service's.
    pub fn cache(&self) -> Cache {
        cache_on(&redis_url(), &self.prefix)
    }
}

/// A cache over the Redis at `url` under `prefix`, as the service's.
pub fn cache_on(url: &str, prefix: &str) -> Cache {
    let settings = Isolated::cache_settings(prefix);
    let timeout = std::time::Duration::from_millis(settings.redis_timeout_ms);
    let link = connstatus::cache::link::Target::new(vec![url.to_owned()], &settings, timeout)
        .link()
        .expect("link");
    Cache::new(link, &settings).expect("cache")
}

/// Where the cache keeps the entry named `spec` under `prefix` (the layout
/// of `docs/operations.md#the-key-layout`): `u:5` is user 5's presence,
/// field `u` of user 5's hash; `p:1:2` is user 1's copy of the pair (1, 2):
/// field `2` of user 1's hash (`p:2:1` is user 2's copy).
pub fn spot(prefix: &str, spec: &str) -> (String, String) {
    let parts: Vec<&str> = spec.split(':').collect();
    match parts.as_slice() {
        ["u", user] => (format!("{prefix}{{{user}}}r"), "u".to_owned()),
        ["p", viewer, other] => (format!("{prefix}{{{viewer}}}r"), (*other).to_owned()),
        _ => panic!("not an entry: {spec}"),
    }
}

/// A command that reads the entry `spec`.
pub fn read_cmd(prefix: &str, spec: &str) -> redis::Cmd {
    let (key, field) = spot(prefix, spec);
    redis::cmd("HGET").arg(key).arg(field).to_owned()
}

/// A command that writes `value` into the entry `spec`: `7:c` as the cache
/// encodes it, anything else as it is.
pub fn write_cmd(prefix: &str, spec: &str, value: &str) -> redis::Cmd {
    let (key, field) = spot(prefix, spec);
    let raw = connstatus::cache::codec::from_readable(value).unwrap_or_else(|| value.into());
    redis::cmd("HSET").arg(key).arg(field).arg(raw).to_owned()
}

/// A stored value as `<version>:<letter>` (`7:c`) when it is an entry of
/// the cache's; a lease or a foreign value as it is.
pub fn readable(raw: String) -> String {
    connstatus::cache::codec::readable(raw.as_bytes()).unwrap_or(raw)
}

/// Commands that delete the entry `spec`: a user's presence, or both copies
/// of a pair.
pub fn delete_cmds(prefix: &str, spec: &str) -> Vec<redis::Cmd> {
    match spec.split(':').collect::<Vec<_>>().as_slice() {
        ["p", a, b] => [(a, b), (b, a)]
            .into_iter()
            .map(|(v, o)| {
                redis::cmd("HDEL")
                    .arg(format!("{prefix}{{{v}}}r"))
                    .arg(*o)
                    .to_owned()
            })
            .collect(),
        _ => {
            let (key, field) = spot(prefix, spec);
            vec![redis::cmd("HDEL").arg(key).arg(field).to_owned()]
        }
    }
}

impl TestApp {
    /// `http://127.0.0.1:ADMIN_PORT`.
    pub fn admin(&self) -> String {
        self.admin_address.clone()
    }

    /// `POST /api/v2/user/{id}/connection/{action}/` as `caller`.
    pub async fn act(&self, caller: u64, id: &str, action: &str) -> reqwest::Response {
        self.client
            .post(format!(
                "{}/api/v2/user/{id}/connection/{action}/",
                self.address
            ))
            .bearer_auth(self.token(caller))
            .send()
            .await
            .expect("request")
    }

    /// `POST /internal/v1/events` with the internal token.
    pub async fn events(&self, body: &Value) -> reqwest::Response {
        use secrecy::ExposeSecret;
        self.client
            .post(format!("{}/internal/v1/events", self.admin()))
            .bearer_auth(self.settings.internal_token.expose_secret())
            .json(body)
            .send()
            .await
            .expect("request")
    }
}

/// A `redis-server` of the test's own on a free port, to pause or kill
/// without touching the shared one; killed on drop (and its folder removed).
pub struct PrivateRedis {
    /// Its port.
    pub port: u16,
    child: std::process::Child,
    /// Where a persistent one keeps its snapshot (kept across `restart`).
    dir: Option<std::path::PathBuf>,
}

impl PrivateRedis {
    /// Starts one that keeps nothing on disk and waits until it answers.
    pub async fn start() -> Self {
        Self::start_in(None).await
    }

    /// Starts one that keeps its snapshot (`SAVE`) in a folder of its own,
    /// which a restarted server loads, as a real one restarting from its
    /// last snapshot would.
    pub async fn persistent() -> Self {
        let dir = std::env::temp_dir().join(unique("cs_redis_"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self::start_in(Some(dir)).await
    }

    async fn start_in(dir: Option<std::path::PathBuf>) -> Self {
        let port = free_port();
        let child = spawn_redis(port, dir.as_deref());
        let redis = Self { port, child, dir };
        for _ in 0..100 {
            if redis.command(&["PING"]).await.is_ok() {
                return redis;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("private redis-server on port {port} did not answer");
    }

    /// A field of `INFO` (e.g. `run_id`), while it answers.
    pub async fn info_field(&self, field: &str) -> Option<String> {
        let text = match self.command(&["INFO"]).await {
            Ok(redis::Value::BulkString(bytes)) => String::from_utf8(bytes).ok()?,
            Ok(redis::Value::VerbatimString { text, .. }) => text,
            _ => return None,
        };
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_owned())
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command on it.
    pub async fn command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn).await
    }

    /// The raw value of the entry `spec` (see [`spot`]) under `prefix`;
    /// `None` when absent or while Redis does not answer (paused).
    pub async fn entry(&self, prefix: &str, spec: &str) -> Option<String> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let raw: Option<String> = read_cmd(prefix, spec).query_async(&mut conn).await.ok()?;
        raw.map(readable)
    }

    /// Writes a value into the entry `spec` under `prefix` (as
    /// [`write_cmd`]).
    pub async fn plant(&self, prefix: &str, spec: &str, value: &str) {
        let client = redis::Client::open(self.url()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let _: () = write_cmd(prefix, spec, value)
            .query_async(&mut conn)
            .await
            .expect("SET");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A `redis-server` on `port` that saves nothing by itself; with `dir`, an
/// explicit `SAVE` writes its snapshot there and a start loads it.
fn spawn_redis(port: u16, dir: Option<&std::path::Path>) -> std::process::Child {
    let mut command = redis_server(None, port);
    if let Some(dir) = dir {
        command
            .arg("--dir")
            .arg(dir)
            .args(["--dbfilename", "snapshot.rdb"]);
    }
    command
        .spawn()
        .expect("redis-server is installed (scripts/services.sh installs it)")
}

/// A `redis-server` command on `port` of 127.0.0.1 that saves nothing by
/// itself, with `config` (a file, which must come first); more arguments may
/// follow.
pub fn redis_server(config: Option<&std::path::Path>, port: u16) -> std::process::Command {
    let mut command = std::process::Command::new("redis-server");
    command.args(config);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null());
    command
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A MariaDB server of the test's own (a fresh datadir in a temporary
/// folder, its own port and socket), to kill and restart without touching
/// the shared one; killed and removed on drop.
pub struct PrivateMariaDb {
    /// Its port.
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
    /// Its server id when it keeps a binary log (ROW format).
    binlog: Option<u32>,
    /// More server options.
    options: Vec<String>,
    /// Whether it checks privileges (root without a password from
    /// 127.0.0.1): a primary whose replica must apply its triggers needs
    /// a real definer.
    grants: bool,
}

impl PrivateMariaDb {
    /// Creates the datadir, starts the server, waits until it answers.
    pub async fn start() -> Self {
        Self::create(None).await
    }

    /// A server with its binary log on, in ROW format, as the follower
    /// needs it.
    pub async fn with_binlog() -> Self {
        Self::create(Some(1)).await
    }

    /// A server with its binary log on and `options` besides.
    pub async fn with_binlog_and(options: &[&str]) -> Self {
        let mut db = Self::create(Some(1)).await;
        db.options = options.iter().map(|o| (*o).to_owned()).collect();
        db.restart().await;
        db
    }

    /// A primary for [`PrivateMariaDb::replica_of`]: its binary log on, and
    /// privileges checked (so that triggers carry a definer the replica
    /// accepts).
    pub async fn primary() -> Self {
        let mut db = Self::create(Some(1)).await;
        db.grants = true;
        std::fs::write(
            db.dir.join("init.sql"),
            // (Not logged: the replica, without privileges, could not
            // apply it.)
            "SET sql_log_bin = 0;\n\
             CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';\n\
             GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;\n",
        )
        .expect("init file");
        db.restart().await;
        db
    }

    /// A replica of `primary` (which keeps a binary log): its own log on
    /// (what it applies included), replicating by GTID from the start.
    pub async fn replica_of(primary: &PrivateMariaDb) -> Self {
        let replica = Self::create(Some(2)).await;
        replica
            .execute(&format!(
                "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'root', \
                 MASTER_USE_GTID = slave_pos; START SLAVE;",
                primary.port
            ))
            .await;
        replica
    }

    /// What a replica's `SHOW SLAVE STATUS` says went wrong, if anything.
    pub async fn replication_error(&self) -> String {
        let Ok(mut conn) = mysql_async::Conn::from_url(self.server().as_str()).await else {
            return "replica unreachable".into();
        };
        let row: Option<mysql_async::Row> =
            mysql_async::prelude::Queryable::query_first(&mut conn, "SHOW SLAVE STATUS")
                .await
                .unwrap_or_default();
        let Some(row) = row else {
            return "not a replica".into();
        };
        [
            "Slave_IO_Running",
            "Slave_SQL_Running",
            "Last_IO_Error",
            "Last_SQL_Error",
        ]
        .iter()
        .map(|name| {
            format!(
                "{name}: {:?}",
                row.get::<Option<String>, _>(*name).flatten()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
    }

    /// Runs statements on the server (no database selected).
    pub async fn execute(&self, statements: &str) {
        AsyncMysqlConnection::establish(&self.server())
            .await
            .expect("connect")
            .batch_execute(statements)
            .await
            .unwrap_or_else(|e| panic!("{statements}: {e}"));
    }

    async fn create(binlog: Option<u32>) -> Self {
        let dir = std::env::temp_dir().join(unique("cs_mariadb_"));
        // Each server keeps its temporary files to itself: servers started
        // at once with the same tmpdir can collide on temporary table names
        // (seen: mariadb-install-db failing with "Unknown table
        // 'mysql.tmp_user_sys'" when several ran together).
        std::fs::create_dir_all(dir.join("tmp")).expect("temp dir");
        let status = std::process::Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .env("TMPDIR", dir.join("tmp"))
            .output()
            .expect("mariadb-install-db is installed (scripts/services.sh installs it)");
        if !status.status.success() {
            // Not yet owned by a handle whose drop would remove it.
            let _ = std::fs::remove_dir_all(&dir);
        }
        assert!(
            status.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr)
        );
        let mut db = Self {
            port: free_port(),
            dir,
            child: None,
            binlog,
            options: Vec::new(),
            grants: false,
        };
        db.restart().await;
        db
    }

    /// The server URL (no database).
    pub fn server(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// Stops the server cleanly (SIGTERM, then waits), as an operator's
    /// restart would; `restart` starts it again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server on the same datadir and port; waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        let child = std::process::Command::new("/usr/sbin/mariadbd")
            .args(["--no-defaults", "--user=root", "--skip-name-resolve"])
            .arg(if self.grants {
                format!("--init-file={}", self.dir.join("init.sql").display())
            } else {
                "--skip-grant-tables".to_owned()
            })
            .args(match self.binlog {
                Some(id) => vec![
                    "--log-bin=mariadb-bin".to_owned(),
                    "--binlog-format=ROW".to_owned(),
                    "--log-slave-updates".to_owned(),
                    format!("--server-id={id}"),
                ],
                None => vec!["--skip-log-bin".to_owned()],
            })
            .args(&self.options)
            .args(["--bind-address=127.0.0.1", "--innodb-buffer-pool-size=32M"])
            .arg(format!("--port={}", self.port))
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mariadbd is installed");
        self.child = Some(child);
        for _ in 0..200 {
            if AsyncMysqlConnection::establish(&self.server())
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("private mariadbd on port {} did not answer", self.port);
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl PrivateRedis {
    /// Kills the server at once (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new server on the same port: empty, or for a persistent
    /// one with the last snapshot's data.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = spawn_redis(self.port, self.dir.as_deref());
        for _ in 0..100 {
            if self.command(&["PING"]).await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("private redis-server did not come back");
    }
}

/// The body of `GET /metrics` on the admin listener.
pub async fn metrics_text(app: &TestApp) -> String {
    app.client
        .get(format!("{}/metrics", app.admin()))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("text")
}

/// Another instance of the service over the same database and key prefix as
/// `app` (as instances behind a balancer are), with `overrides`.
pub async fn another_instance(app: &TestApp, overrides: &[(&str, Value)]) -> TestApp {
    let mut figment: Figment = Settings::figment("config", "test")
        .merge(("database_url", app.store.database_url.clone()))
        .merge(("redis_url", redis_url()))
        .merge(("redis_prefix", app.store.prefix.clone()))
        .merge(("bind", "127.0.0.1:0"))
        .merge(("admin_bind", "127.0.0.1:0"))
        .merge(("workers", 1))
        .merge(("follow", false));
    for (key, value) in overrides {
        figment = figment.merge((*key, value.clone()));
    }
    let settings = Settings::from_figment(figment).expect("valid settings");
    let built = Application::build(&settings).await.expect("build");
    let address = format!("http://127.0.0.1:{}", built.port());
    let admin_address = format!("http://127.0.0.1:{}", built.admin_port());
    tokio::spawn(built.run_until_stopped());
    TestApp {
        address,
        admin_address,
        settings,
        // Owned by `app`: this handle must not drop the database.
        store: Isolated::borrowed(&app.store),
        client: reqwest::Client::new(),
    }
}

impl Isolated {
    /// A handle on `other`'s database and prefix that does not remove them
    /// when dropped.
    fn borrowed(other: &Isolated) -> Self {
        Self {
            database_url: other.database_url.clone(),
            prefix: other.prefix.clone(),
            owned: false,
        }
    }
}

/// A TCP proxy to `upstream` that can hold back what the server sends: while
/// held, bytes from the server are read and kept, and reach the client only
/// once released. Used to stop a reply in flight at the worst moment.
pub struct HoldingProxy {
    /// The port clients connect to.
    pub port: u16,
    hold: tokio::sync::watch::Sender<bool>,
    held: std::sync::Arc<AtomicU64>,
}

impl HoldingProxy {
    /// Starts forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (hold, watch) = tokio::sync::watch::channel(false);
        let held = std::sync::Arc::new(AtomicU64::new(0));
        let (upstream, counter) = (upstream.to_owned(), held.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let (mut watch, counter) = (watch.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if *watch.borrow() {
                            counter.fetch_add(n as u64, Ordering::SeqCst);
                            while *watch.borrow_and_update() {
                                if watch.changed().await.is_err() {
                                    return;
                                }
                            }
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { port, hold, held }
    }

    /// From now on, replies are held back.
    pub fn hold(&self) {
        self.hold.send_replace(true);
    }

    /// Waits until some reply is being held (the server has answered).
    pub async fn until_a_reply_is_held(&self) {
        for _ in 0..200 {
            if self.held.load(Ordering::SeqCst) > 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no reply reached the proxy");
    }

    /// Lets held replies (and all later ones) through.
    pub fn release(&self) {
        self.hold.send_replace(false);
    }
}

impl PrivateRedis {
    /// Stops the server's process (SIGSTOP): it keeps its data and its
    /// connections, and answers nothing until resumed.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, signal).expect("signal redis-server");
    }
}

/// The stored row of the pair `(low, high)` on `conn`.
pub async fn row_on(conn: &mut AsyncMysqlConnection, low: u64, high: u64) -> Option<Row> {
    use connstatus::db::schema::user_connections as uc;
    use connstatus::db::state::State;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let row: Option<(State, Option<u64>, bool, u64)> = uc::table
        .find((low, high))
        .select((
            uc::state,
            uc::requested_by,
            uc::rejected_at.is_not_null(),
            uc::version,
        ))
        .first(conn)
        .await
        .optional()
        .expect("read row");
    row.map(|(state, by, rejected, version)| {
        let state = match state {
            State::None => "none",
            State::Pending => "pending",
            State::Connected => "connected",
        };
        (state.to_owned(), by, rejected, version)
    })
}
