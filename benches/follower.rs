//! The binlog follower's figures (`cargo bench --bench follower`; also run
//! by `scripts/follow-bench.sh`, which writes `bench-results/follower.txt`):
//!
//! 1. Latency: 1 000 single commits by plain SQL, one at a time; the time
//!    from each commit's return to its new entry in Redis (polled).
//! 2. Throughput: with no follower running, `FOLLOW_CHANGES` (1 000 000)
//!    row changes in transactions of 20 000; then a follower starts at the
//!    position before them and the time until it has applied them all
//!    (its stored position passes the log's end) gives rows per second.
//! 3. The floor it is compared to: the warm job over the same graph,
//!    entries per second.
//!
//! Needs the local MariaDB with its binary log on (`scripts/services.sh`)
//! and Redis. Environment: `DATABASE_URL` (default
//! `mysql://root@127.0.0.1:3306/connstatus_bench_follow`, dropped and
//! created), `REDIS_URL`, `FOLLOW_CHANGES`, `FOLLOW_PAIRS` (200 000).
//! Not a Criterion bench: it runs once and prints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use connstatus::config::Settings;
use connstatus::hooks::Hooks;
use connstatus::seed;
use connstatus::service::follow::{Follower, FollowerStatus, State};
use connstatus::service::warm::{Progress, Scope, Tuning, Warmer};
use mysql_async::prelude::Queryable;
use secrecy::SecretString;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn settings(url: &str, redis: &str) -> Settings {
    let figment = Settings::figment("config", "development")
        .merge(("database_url", url))
        .merge(("redis_url", redis))
        .merge(("redis_prefix", "bench:follow:"));
    Settings::from_figment(figment).expect("settings")
}

/// Starts a follower in this process; returns its task and status.
fn start(settings: &Settings) -> (tokio::task::JoinHandle<()>, std::sync::Arc<FollowerStatus>) {
    let status = FollowerStatus::new(State::Starting);
    let hooks = Hooks::from_settings(settings).expect("hooks");
    let follower = Follower::from_settings(settings, hooks, status.clone()).expect("follower");
    (tokio::spawn(follower.run_forever()), status)
}

async fn until_active(status: &FollowerStatus) {
    let started = Instant::now();
    while status.report().state != State::Active {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "follower not active"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn end_of_log(conn: &mut mysql_async::Conn) -> (String, u64) {
    let row: mysql_async::Row = conn
        .query_first("SHOW MASTER STATUS")
        .await
        .unwrap()
        .expect("the binary log is on (scripts/services.sh turns it on)");
    (row.get(0).unwrap(), row.get(1).unwrap())
}

async fn stored(conn: &mut mysql_async::Conn) -> Option<(String, u64)> {
    conn.query_first("SELECT file, pos FROM binlog_follower_position WHERE id = 1")
        .await
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let url = env_or(
        "DATABASE_URL",
        "mysql://root@127.0.0.1:3306/connstatus_bench_follow",
    );
    let redis_url = env_or("REDIS_URL", "redis://127.0.0.1:6379");
    let changes: u64 = env_or("FOLLOW_CHANGES", "1000000").parse().unwrap();
    let pairs: u64 = env_or("FOLLOW_PAIRS", "200000").parse().unwrap();
    let secret = SecretString::from(url.clone());
    let _ = connstatus::db::drop_database(&secret).await;
    connstatus::db::migrate(&secret).await.unwrap();
    let spec = seed::Spec {
        users: pairs / 10,
        connections: pairs,
        seed: 7,
    };
    seed::run(&secret, spec, true).await.unwrap();
    let settings = settings(&url, &redis_url);
    let redis = redis::Client::open(redis_url.as_str()).unwrap();
    let mut r = redis.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("EVAL")
        .arg("for _,k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end")
        .arg(0)
        .arg("bench:follow:*")
        .query_async(&mut r)
        .await
        .unwrap();
    let mut sql = mysql_async::Conn::from_url(url.as_str()).await.unwrap();

    // 1. Latency.
    let (task, status) = start(&settings);
    until_active(&status).await;
    let probe: Vec<(u64, u64)> = sql
        .query("SELECT user_low, user_high FROM user_connections LIMIT 10")
        .await
        .unwrap();
    let mut times = Vec::with_capacity(1000);
    for i in 0..1000 {
        let (low, high) = probe[i % probe.len()];
        let state = if (i / probe.len()).is_multiple_of(2) {
            "connected"
        } else {
            "none"
        };
        sql.query_drop(format!(
            "UPDATE user_connections SET state = '{state}', requested_by = NULL, rejected_at = NULL \
             WHERE user_low = {low} AND user_high = {high}"
        ))
        .await
        .unwrap();
        let committed = Instant::now();
        let version: u64 = sql
            .query_first(format!(
                "SELECT version FROM user_connections WHERE user_low = {low} AND user_high = {high}"
            ))
            .await
            .unwrap()
            .unwrap();
        let key = format!("bench:follow:p:{low}:{high}");
        let want = format!("{version}:");
        loop {
            let value: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut r)
                .await
                .unwrap();
            if value.as_deref().is_some_and(|v| v.starts_with(&want)) {
                break;
            }
            assert!(
                committed.elapsed() < Duration::from_secs(5),
                "{key} not refreshed"
            );
            tokio::task::yield_now().await;
        }
        times.push(committed.elapsed());
    }
    times.sort();
    let latency = format!(
        "commit -> entry in Redis, 1000 single commits: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&times, 0.50).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    println!("{latency}");

    // 2. Throughput: the log is written while no follower runs.
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Ranges of user_low holding about 20 000 rows each: one transaction
    // each, by primary key range.
    let per_low: Vec<(u64, u64)> = sql
        .query(
            "SELECT user_low, COUNT(*) FROM user_connections GROUP BY user_low ORDER BY user_low",
        )
        .await
        .unwrap();
    let mut ranges = Vec::new();
    let (mut from, mut rows) = (None, 0);
    for (low, n) in per_low {
        let start = *from.get_or_insert(low);
        rows += n;
        if rows >= 20_000 {
            ranges.push((start, low));
            (from, rows) = (None, 0);
        }
    }
    if let Some(start) = from {
        ranges.push((start, u64::MAX));
    }
    let written_at = Instant::now();
    let mut done = 0u64;
    let mut round = 0u64;
    'write: loop {
        for &(first, last) in &ranges {
            if done >= changes {
                break 'write;
            }
            let state = if round.is_multiple_of(2) {
                "connected"
            } else {
                "none"
            };
            sql.query_drop(format!(
                "UPDATE user_connections SET state = '{state}', requested_by = NULL, rejected_at = NULL \
                 WHERE user_low BETWEEN {first} AND {last}"
            ))
            .await
            .unwrap();
            done += sql.affected_rows();
        }
        round += 1;
    }
    let end = end_of_log(&mut sql).await;
    println!(
        "{done} row changes written in {:.1} s (no follower running)",
        written_at.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let (task, status) = start(&settings);
    loop {
        if let Some((file, pos)) = stored(&mut sql).await {
            if (file.as_str(), pos) >= (end.0.as_str(), end.1) {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "follower did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let throughput = format!(
        "follower: {done} row changes applied in {seconds:.1} s = {:.0} rows/s (state at the end: {})",
        done as f64 / seconds,
        status.report().state.as_str()
    );
    println!("{throughput}");
    task.abort();

    // 3. The warm job over the same graph, for comparison.
    let warmer = Warmer::from_settings(&settings, Tuning::default()).unwrap();
    let progress = Progress::default();
    let summary = warmer
        .run(&Scope::All, &progress, std::future::pending())
        .await
        .unwrap();
    let warm = format!(
        "warm --all over the same graph: {} pairs + {} users in {:.1} s = {:.0} entries/s",
        summary.pairs, summary.users, summary.seconds, summary.entries_per_second
    );
    println!("{warm}");
    println!(
        "ratio: follower rows/s / warm entries/s = {:.2}",
        done as f64 / seconds / summary.entries_per_second
    );
    let _ = connstatus::db::drop_database(&secret).await;
}
