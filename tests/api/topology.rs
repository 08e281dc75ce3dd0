//! The scale-out topology of `scripts/cluster.sh` (a Redis Cluster of three
//! masters with a replica each, a MariaDB primary and replica, three
//! instances behind HAProxy), driven through its env file like an operator
//! would: the black-box API run through the balancer, a mutation through one
//! instance read at once through the others, a Redis master SIGKILLed under
//! load, a rolling restart under load, and the MariaDB replica stopped for
//! 30 s. One test: the steps share one topology, whose ports are fixed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use biscuit::jwa::SignatureAlgorithm;
use biscuit::jws::Secret;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
use futures_util::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::helpers::{claims_for, expected, row_on, sign};

/// Users of the topology's graph; pairs `(u, u + 1)` for odd `u` below
/// `LOAD_PAIRS * 2` are the load's (only their low user acts on them).
const USERS: u64 = 3_000;
const LOAD_PAIRS: u64 = 200;
/// The first user of the random pairs (the four before it are step 5's).
const FREE: u64 = LOAD_PAIRS * 2 + 5;

/// A topology brought up by `scripts/cluster.sh up`; taken down on drop.
struct Topology {
    env: HashMap<String, String>,
    secret: Vec<u8>,
    client: reqwest::Client,
}

fn cluster_sh(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("scripts/cluster.sh")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CONNSTATUS_BIN", env!("CARGO_BIN_EXE_connstatus"))
        .env("RUST_LOG", "warn,connstatus=info")
        .output()
        .expect("scripts/cluster.sh runs");
    assert!(
        out.status.success(),
        "cluster.sh {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The shell assignments of `target/cluster/env` (`NAME='value'`).
fn read_env() -> HashMap<String, String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/cluster/env");
    std::fs::read_to_string(path)
        .expect("target/cluster/env")
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            let value = value.trim().trim_matches('\'').replace("'\\''", "'");
            Some((name.trim().to_owned(), value))
        })
        .collect()
}

impl Topology {
    fn up() -> Self {
        let started = Instant::now();
        cluster_sh(&["up"]);
        println!("cluster.sh up took {:?}", started.elapsed());
        let env = read_env();
        let secret = env["CONNSTATUS_JWT_SECRET"].clone().into_bytes();
        Self {
            env,
            secret,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
        }
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.env[name]
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    fn token(&self, user: u64) -> String {
        sign(
            SignatureAlgorithm::HS256,
            &Secret::Bytes(self.secret.clone()),
            claims_for(json!(user.to_string())),
        )
    }

    async fn primary(&self) -> AsyncMysqlConnection {
        AsyncMysqlConnection::establish(&self.env["DATABASE_URL"])
            .await
            .expect("primary")
    }

    async fn replica(&self) -> AsyncMysqlConnection {
        AsyncMysqlConnection::establish(&self.env["DATABASE_REPLICA_URL"])
            .await
            .expect("replica")
    }

    /// The status `viewer` gets for `other` through `base`: 200's status, or
    /// the HTTP code as an error.
    async fn status(&self, base: &str, viewer: u64, other: u64) -> Result<Value, String> {
        let response = self
            .client
            .get(format!("{base}/api/v2/user/{other}/connection_status/"))
            .bearer_auth(self.token(viewer))
            .send()
            .await
            .map_err(|e| format!("transport: {e}"))?;
        let code = response.status().as_u16();
        if code != 200 {
            return Err(format!("HTTP {code}"));
        }
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        Ok(body["connection_status"].clone())
    }

    async fn act(&self, base: &str, caller: u64, other: u64, action: &str) -> Result<u16, String> {
        let response = self
            .client
            .post(format!("{base}/api/v2/user/{other}/connection/{action}/"))
            .bearer_auth(self.token(caller))
            .send()
            .await
            .map_err(|e| format!("transport: {e}"))?;
        Ok(response.status().as_u16())
    }

    /// The pairs of `pairs` some instance answers otherwise than the
    /// primary's rows say (from either side).
    async fn disagreements(&self, pairs: &[(u64, u64)]) -> Vec<String> {
        let mut conn = self.primary().await;
        let mut wrong = Vec::new();
        for &(low, high) in pairs {
            let row = row_on(&mut conn, low, high).await;
            for base in self.list("INSTANCE_URLS") {
                for (viewer, other) in [(low, high), (high, low)] {
                    let want = expected(row.as_ref(), viewer);
                    match self.status(&base, viewer, other).await {
                        Ok(got) if got == want => {}
                        got => {
                            wrong.push(format!("{base} {viewer}->{other}: {got:?}, want {want}"))
                        }
                    }
                }
            }
        }
        wrong
    }

    /// The Redis nodes that are masters now, by address.
    async fn redis_masters(&self) -> Vec<String> {
        let mut masters = Vec::new();
        for node in self.list("REDIS_NODES") {
            let Ok(client) = redis::Client::open(format!("redis://{node}")) else {
                continue;
            };
            let role = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("ROLE")
                    .query_async::<Vec<redis::Value>>(&mut conn)
                    .await
            };
            if let Ok(Ok(role)) = tokio::time::timeout(Duration::from_millis(500), role).await {
                if role.first() == Some(&redis::Value::BulkString(b"master".to_vec())) {
                    masters.push(node);
                }
            }
        }
        masters
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // To look at the instances' logs after a failure.
        if std::env::var_os("CONNSTATUS_KEEP_TOPOLOGY").is_some() {
            return;
        }
        let _ = std::process::Command::new("scripts/cluster.sh")
            .arg("down")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output();
    }
}

/// Requests through the balancer, until stopped: reads of random load pairs
/// from either side, and one request or cancel in ten by the pair's low
/// user (only ever none <-> pending by low, so every action is a 200).
/// Counts every answer by kind.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    unavailable: AtomicU64,
    failed: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Load {
    fn start(
        topology: &Arc<Topology>,
        tasks: usize,
    ) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
        let load = Arc::new(Load::default());
        let handles = (0..tasks)
            .map(|task| {
                let (load, topology) = (load.clone(), topology.clone());
                tokio::spawn(async move {
                    let base = topology.env["BALANCER_URL"].clone();
                    let mut rng = rand::rngs::StdRng::seed_from_u64(task as u64);
                    while !load.stop.load(Ordering::Relaxed) {
                        let low = 2 * rng.random_range(0..LOAD_PAIRS) + 1;
                        let outcome = if rng.random_range(0..10) == 0 {
                            let action = ["request", "cancel_request"][rng.random_range(0..2)];
                            topology.act(&base, low, low + 1, action).await
                        } else {
                            let (viewer, other) = if rng.random() {
                                (low, low + 1)
                            } else {
                                (low + 1, low)
                            };
                            topology
                                .status(&base, viewer, other)
                                .await
                                .map(|_| 200)
                                .or_else(|e| match e.strip_prefix("HTTP ") {
                                    Some(code) => Ok(code.parse().unwrap_or(0)),
                                    None => Err(e),
                                })
                        };
                        match outcome {
                            Ok(200) => load.ok.fetch_add(1, Ordering::Relaxed),
                            // The contract's answer while MySQL or Redis is
                            // away and the cache cannot answer.
                            Ok(503) => load.unavailable.fetch_add(1, Ordering::Relaxed),
                            other => {
                                load.failed.lock().expect("lock").push(format!("{other:?}"));
                                0
                            }
                        };
                    }
                })
            })
            .collect();
        (load, handles)
    }

    async fn stop(&self, handles: Vec<tokio::task::JoinHandle<()>>) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in handles {
            handle.await.expect("load task");
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} ok, {} 503, {} failed",
            self.ok.load(Ordering::Relaxed),
            self.unavailable.load(Ordering::Relaxed),
            self.failed.lock().expect("lock").len()
        )
    }
}

async fn arrange(topology: &Topology) {
    let mut conn = topology.primary().await;
    let users: Vec<String> = (1..=USERS).map(|u| format!("({u})")).collect();
    conn.batch_execute(&format!(
        "INSERT INTO users (id) VALUES {}",
        users.join(",")
    ))
    .await
    .expect("users");
    // A sprinkle of relations outside the load pairs, for the black-box run.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut rows = Vec::new();
    for _ in 0..500 {
        let a = rng.random_range(FREE..=USERS);
        let b = rng.random_range(FREE..=USERS);
        if a != b {
            rows.push(format!("({}, {}, 'connected')", a.min(b), a.max(b)));
        }
    }
    conn.batch_execute(&format!(
        "INSERT IGNORE INTO user_connections (user_low, user_high, state) VALUES {}",
        rows.join(",")
    ))
    .await
    .expect("pairs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_scale_out_topology_stays_right_through_failover_restarts_and_replica_lag() {
    let topology = Arc::new(Topology::up());
    arrange(&topology).await;
    let instances = topology.list("INSTANCE_URLS");
    assert_eq!(instances.len(), 3);

    // 1. The black-box API run (schemathesis, from the OpenAPI document)
    //    through the balancer.
    let out = std::process::Command::new("scripts/schemathesis.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SCHEMATHESIS_BASE_URL", &topology.env["BALANCER_URL"])
        .env("SCHEMATHESIS_TOKEN", topology.token(1))
        .env("SCHEMATHESIS_EXAMPLES", "20")
        .output()
        .expect("schemathesis.sh");
    assert!(
        out.status.success(),
        "schemathesis through the balancer:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 2. A mutation through one instance is read at once through each of
    //    the others: 1 000 random fresh pairs, each first read (cached as
    //    "no relation") through all three.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut pairs = std::collections::BTreeSet::new();
    while pairs.len() < 1_000 {
        let a = rng.random_range(FREE..=USERS);
        let b = rng.random_range(FREE..=USERS);
        if a != b {
            pairs.insert((a.min(b), a.max(b)));
        }
    }
    let pairs: Vec<(u64, u64)> = pairs.into_iter().collect();
    let stale = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    futures_util::stream::iter(pairs.iter().enumerate())
        .for_each_concurrent(8, |(n, &(low, high))| {
            let (topology, instances, stale) = (topology.clone(), instances.clone(), stale.clone());
            async move {
                let before: Vec<Value> = futures_util::future::join_all(
                    instances
                        .iter()
                        .map(|base| topology.status(base, high, low)),
                )
                .await
                .into_iter()
                .map(|r| r.expect("read before"))
                .collect();
                let writer = &instances[n % 3];
                let action_code = topology.act(writer, low, high, "request").await;
                if action_code != Ok(200) {
                    // An existing relation of the sprinkle: already read right.
                    assert!(before.iter().all(|b| b == &before[0]), "{before:?}");
                    return;
                }
                for base in &instances {
                    let seen = topology.status(base, high, low).await.expect("read after");
                    if seen != json!("received_connection_request") {
                        stale.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "stale: {base} {high}->{low} {seen} after a request through {writer}"
                        );
                    }
                }
            }
        })
        .await;
    println!(
        "1 000 cross-instance mutations read back in {:?}",
        started.elapsed()
    );
    assert_eq!(
        stale.load(Ordering::Relaxed),
        0,
        "stale reads through other instances"
    );

    // 3. A Redis master SIGKILLed under load: its replica is promoted; no
    //    5xx but 503; every entry agrees with MySQL within 10 s after.
    let load_pairs: Vec<(u64, u64)> = (0..LOAD_PAIRS).map(|i| (2 * i + 1, 2 * i + 2)).collect();
    let masters = topology.redis_masters().await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    let nodes = topology.list("REDIS_NODES");
    let pids = topology.list("PIDS_REDIS");
    let victim = nodes
        .iter()
        .position(|n| n == &masters[0])
        .expect("a master");
    let (load, handles) = Load::start(&topology, 8);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid: i32 = pids[victim].parse().expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
    let killed = Instant::now();
    loop {
        let now = topology.redis_masters().await;
        if now.len() == 3 && !now.contains(&nodes[victim]) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "no replica promoted: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "replica of {} promoted {:?} after SIGKILL",
        nodes[victim],
        killed.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop(handles).await;
    println!("load across the Redis failover: {}", load.summary());
    assert!(
        load.failed.lock().expect("lock").is_empty(),
        "{:?}",
        load.failed.lock()
    );
    let settled = Instant::now();
    loop {
        let wrong = topology.disagreements(&load_pairs).await;
        if wrong.is_empty() {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(10),
            "{} answers still disagree with MySQL 10 s after the failover: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "every load pair agrees {:?} after the load stopped",
        settled.elapsed()
    );

    // 4. A rolling restart of the three instances under load through
    //    HAProxy: zero failed requests.
    let (load, handles) = Load::start(&topology, 8);
    for n in 1..=3 {
        let pid: i32 = read_env()["PIDS_INSTANCES"]
            .split_whitespace()
            .nth(n - 1)
            .and_then(|p| p.parse().ok())
            .expect("pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let stopped = Instant::now();
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.contains(") Z"))
                .unwrap_or(false)
        {
            assert!(
                stopped.elapsed() < Duration::from_secs(40),
                "instance {n} did not exit"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let n = n.to_string();
        tokio::task::spawn_blocking(move || cluster_sh(&["start-instance", &n]))
            .await
            .expect("start-instance");
    }
    load.stop(handles).await;
    println!("load across a rolling restart: {}", load.summary());
    assert!(
        load.failed.lock().expect("lock").is_empty(),
        "{:?}",
        load.failed.lock()
    );
    assert_eq!(
        load.unavailable.load(Ordering::Relaxed),
        0,
        "503s during a rolling restart"
    );

    // 5. Replication to the MariaDB replica stopped for 30 s: a plain-SQL
    //    change on the primary is not seen (misses read the replica, the
    //    follower reads its log) while a mutation through the API is; after
    //    START SLAVE the plain change reaches every answer within the bound
    //    (replica lag + follower delay, a few seconds here).
    let env = read_env();
    let instances: Vec<String> = env["INSTANCE_URLS"]
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let (x, y) = (LOAD_PAIRS * 2 + 1, LOAD_PAIRS * 2 + 2);
    let (m, n) = (LOAD_PAIRS * 2 + 3, LOAD_PAIRS * 2 + 4);
    for base in &instances {
        topology.status(base, x, y).await.expect("cached");
    }
    let mut replica = topology.replica().await;
    replica
        .batch_execute("STOP SLAVE")
        .await
        .expect("STOP SLAVE");
    let mut primary = topology.primary().await;
    primary
        .batch_execute(&format!(
            "INSERT INTO user_connections (user_low, user_high, state) VALUES ({x}, {y}, 'connected')
             ON DUPLICATE KEY UPDATE state = 'connected', requested_by = NULL, rejected_at = NULL, version = version + 1"
        ))
        .await
        .expect("plain change");
    assert_eq!(topology.act(&instances[0], m, n, "request").await, Ok(200));
    for base in &instances {
        assert_eq!(
            topology.status(base, n, m).await,
            Ok(json!("received_connection_request")),
            "a mutation is read at once while the replica is stopped"
        );
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    for base in &instances {
        assert_eq!(
            topology.status(base, x, y).await,
            Ok(Value::Null),
            "the replica's state while it is stopped"
        );
    }
    replica
        .batch_execute("START SLAVE")
        .await
        .expect("START SLAVE");
    let restarted = Instant::now();
    loop {
        let mut all = true;
        for base in &instances {
            all &= topology.status(base, x, y).await == Ok(json!("connected"));
        }
        if all {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "not caught up 10 s after START SLAVE"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "after START SLAVE every instance answers the primary's state in {:?}",
        restarted.elapsed()
    );
}
