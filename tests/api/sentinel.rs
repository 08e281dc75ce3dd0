//! `CONNSTATUS_REDIS_MODE=sentinel`: the service finds the master through a
//! real Redis Sentinel, and finds the new one after the old is SIGKILLed.

use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{free_port, redis_server, spawn_app_with, unique};

/// A redis-server process of the test's own (a master, a replica or a
/// sentinel), killed on drop.
struct Server {
    port: u16,
    child: Child,
}

impl Server {
    fn spawn(config: Option<&std::path::Path>, args: &[String]) -> Self {
        let port = free_port();
        let child = redis_server(config, port)
            .args(args)
            .spawn()
            .expect("redis-server is installed (scripts/services.sh installs it)");
        Self { port, child }
    }

    async fn command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn).await
    }

    async fn until_up(&self) {
        for _ in 0..100 {
            if self.command(&["PING"]).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on {} did not answer", self.port);
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The master the sentinel names for `cs` (its port).
async fn master_port(sentinel: &Server) -> Option<u16> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", sentinel.port)).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let (_, port): (String, String) = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg("cs")
        .query_async(&mut conn)
        .await
        .ok()?;
    port.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_sentinel_the_service_follows_the_master_across_a_failover() {
    // Arrange: a master, its replica, and a sentinel watching them.
    let mut master = Server::spawn(None, &[]);
    master.until_up().await;
    let replica = Server::spawn(
        None,
        &[
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ],
    );
    replica.until_up().await;
    let dir = std::env::temp_dir().join(unique("cs_sentinel_"));
    std::fs::create_dir_all(&dir).expect("dir");
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "sentinel monitor cs 127.0.0.1 {} 1\nsentinel down-after-milliseconds cs 1000\nsentinel failover-timeout cs 5000\n",
            master.port
        ),
    )
    .expect("sentinel.conf");
    let sentinel = Server::spawn(Some(&conf), &["--sentinel".into()]);
    sentinel.until_up().await;
    let app = spawn_app_with(&[
        ("redis_mode", json!("sentinel")),
        (
            "redis_url",
            json!(format!("redis://127.0.0.1:{}", sentinel.port)),
        ),
        ("redis_sentinel_master", json!("cs")),
        ("redis_breaker_ms", json!(200)),
        ("refresh_retry_ms", json!(200)),
    ])
    .await;
    app.users(&[1, 2, 3]).await;
    assert_eq!(app.status(1, 2).await, None);
    let cached = master
        .command(&["HGET", &format!("{}{{1}}r", app.store.prefix), "2"])
        .await
        .expect("HGET");
    assert_eq!(
        cached,
        redis::Value::BulkString(connstatus::cache::codec::from_readable("0:n").expect("value")),
        "cached on the master"
    );

    // Act: the master dies; the sentinel promotes the replica.
    master.kill();
    let killed = Instant::now();
    while master_port(&sentinel).await != Some(replica.port) {
        assert!(killed.elapsed() < Duration::from_secs(20), "no failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("sentinel failover {:?} after SIGKILL", killed.elapsed());

    // Assert: mutations and reads go on, and land on the new master.
    assert_eq!(app.act(1, "3", "request").await.status(), 200);
    assert_eq!(
        app.status(3, 1).await.as_deref(),
        Some("received_connection_request")
    );
    let key = format!("{}{{3}}r", app.store.prefix);
    let started = Instant::now();
    loop {
        let value = replica.command(&["HGET", &key, "1"]).await.expect("HGET");
        if value
            == redis::Value::BulkString(
                connstatus::cache::codec::from_readable("1:l").expect("value"),
            )
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not on the new master: {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.status(1, 2).await, None);
    let _ = std::fs::remove_dir_all(&dir);
}
