//! The near cache (`CONNSTATUS_CACHE_L1_ENTRIES`): answers from memory,
//! forgets what Redis invalidates, reads its own instance's writes, and
//! forgets everything when its tracked connection is lost.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{another_instance, metrics_text, spawn_app_with, PrivateRedis, TestApp};

const NEAR: (&str, i64) = ("cache_l1_entries", 10_000);

/// The near cache's hits so far (the counter is per process: tests only
/// compare it before and after their own reads).
async fn near_hits(app: &TestApp) -> u64 {
    metrics_text(app)
        .await
        .lines()
        .find_map(|line| {
            line.strip_prefix("connstatus_cache_l1_lookups_total{result=\"hit\"} ")
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Polls `viewer`'s view of `other` through `app` until it is `want`;
/// returns how long that took (zero when the first read had it), or `None`
/// after `limit`.
async fn until_seen(
    app: &TestApp,
    viewer: u64,
    other: u64,
    want: Option<&str>,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    if app.status(viewer, other).await.as_deref() == want {
        return Some(Duration::ZERO);
    }
    loop {
        if app.status(viewer, other).await.as_deref() == want {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_near_cache_answers_from_memory_and_learns_every_write_of_another_instance() {
    // Arrange: two instances over one database and Redis, both with the
    // near cache on; the pair (1, 2) read through each.
    let a = spawn_app_with(&[(NEAR.0, json!(NEAR.1))]).await;
    let b = another_instance(&a, &[(NEAR.0, json!(NEAR.1))]).await;
    a.users(&[1, 2, 3]).await;
    // The first read fills Redis (and its writes make the instance forget
    // the keys), the second keeps what it reads.
    for _ in 0..2 {
        assert_eq!(a.status(2, 1).await, None);
        assert_eq!(b.status(2, 1).await, None);
    }

    // The second read through an instance comes from its memory.
    let hits = near_hits(&a).await;
    assert_eq!(a.status(2, 1).await, None);
    assert!(near_hits(&a).await >= hits + 2, "user and pair from memory");

    // Act and assert: writes through b, each read through a at once; a
    // read may trail by the invalidation's flight, never for long. And
    // through b itself, at once: its own writes are forgotten before the
    // reply.
    let rounds: usize = std::env::var("CONNSTATUS_NEAR_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let (mut stale, mut worst) = (0, Duration::ZERO);
    for round in 0..rounds {
        let (action, want) = if round % 2 == 0 {
            ("request", Some("received_connection_request"))
        } else {
            ("cancel_request", None)
        };
        let response = b.act(1, "2", action).await;
        assert_eq!(response.status(), 200, "round {round}");
        assert_eq!(b.status(2, 1).await.as_deref(), want, "b, round {round}");
        let waited = until_seen(&a, 2, 1, want, Duration::from_secs(1))
            .await
            .unwrap_or_else(|| panic!("a still stale after 1 s, round {round}"));
        if !waited.is_zero() {
            stale += 1;
            worst = worst.max(waited);
        }
    }
    eprintln!("near cache: {stale} of {rounds} reads through the other instance trailed the write, the longest by {worst:?}");

    // A batch through a agrees too (a mix of kept and read entries).
    b.act(3, "2", "request").await;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (status, body) = a.batch(2, &[1, 3]).await;
        assert_eq!(status, 200);
        let want =
            json!({"connection_statuses": {"1": Value::Null, "3": "received_connection_request"}});
        if body == want {
            break;
        }
        assert!(Instant::now() < deadline, "batch through a: {body}");
    }
}

/// The tracked connections of a Redis: their ids.
async fn tracked_connections(redis: &PrivateRedis) -> Vec<String> {
    let list = match redis
        .command(&["CLIENT", "LIST"])
        .await
        .expect("CLIENT LIST")
    {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).expect("utf-8"),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("CLIENT LIST answered {other:?}"),
    };
    list.lines()
        .filter(|line| {
            line.contains(&format!(
                " name={} ",
                connstatus::cache::near::CONNECTION_NAME
            ))
        })
        .filter_map(|line| line.split_whitespace().find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tracked_connection_forgets_everything_it_kept() {
    // Arrange: the near cache over a Redis of the test's own; viewer 2's
    // view of 1 kept in memory.
    let redis = PrivateRedis::start().await;
    let app = spawn_app_with(&[(NEAR.0, json!(NEAR.1)), ("redis_url", json!(redis.url()))]).await;
    app.users(&[1, 2]).await;
    for _ in 0..2 {
        assert_eq!(app.status(2, 1).await, None);
    }
    let hits = near_hits(&app).await;
    assert_eq!(app.status(2, 1).await, None);
    assert!(near_hits(&app).await > hits, "kept in memory");
    let tracked = tracked_connections(&redis).await;
    assert!(!tracked.is_empty(), "a tracked connection");

    // Act: the tracked connection is cut; while no connection tracks the
    // key, Redis's copy changes (as a write whose invalidation was lost).
    for id in &tracked {
        redis
            .command(&["CLIENT", "KILL", "ID", id])
            .await
            .expect("CLIENT KILL");
    }
    let prefix = app.store.prefix.clone();
    redis.plant(&prefix, "p:2:1", "7:c").await;

    // Assert: the instance answers Redis's new value, not the one it kept.
    let waited = until_seen(&app, 2, 1, Some("connected"), Duration::from_secs(3)).await;
    assert!(
        waited.is_some(),
        "still the kept value 3 s after the connection was lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_the_tracked_connection_that_times_out_leaves_every_worker_answering() {
    // Arrange: the near cache over a Redis of the test's own, entries kept
    // in both workers.
    let redis = PrivateRedis::start().await;
    let app = spawn_app_with(&[
        (NEAR.0, json!(NEAR.1)),
        ("redis_url", json!(redis.url())),
        ("workers", json!(2)),
    ])
    .await;
    app.users(&[1, 2, 3]).await;
    for _ in 0..4 {
        assert_eq!(app.status(2, 1).await, None);
    }

    // Act: Redis stops answering; reads that miss the near cache go to it
    // and time out (the connection is dropped, the near cache flushed).
    redis.pause();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let ask = |viewer: u64, other: u64| {
        client
            .get(format!(
                "{}/api/v2/user/{other}/connection_status/",
                app.address
            ))
            .bearer_auth(app.token(viewer))
            .send()
    };

    // Assert: every request is answered (from MySQL), on whichever worker;
    // and again once Redis is back.
    for round in 0..10 {
        let response = ask(3, 1 + round % 2)
            .await
            .expect("answered while Redis is paused");
        assert_eq!(response.status(), 200, "round {round}");
    }
    redis.resume();
    for round in 0..10 {
        let response = ask(2, 1).await.expect("answered after Redis is back");
        assert_eq!(response.status(), 200, "round {round}");
    }
}
