//! Degraded modes (`docs/operations.md#degraded-modes`): the test's own Redis and MariaDB are
//! killed and restarted under traffic (never the shared ones).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{
    metrics_text, spawn_app_on, spawn_app_with, Isolated, PrivateMariaDb, PrivateRedis,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_traffic_never_costs_an_answer() {
    // Arrange: a service on a private Redis, with pairs in several states.
    let mut redis = PrivateRedis::start().await;
    let app = spawn_app_with(&[
        ("redis_url", json!(redis.url())),
        ("redis_breaker_ms", json!(300)),
    ])
    .await;
    app.users(&[1, 2, 3, 4]).await;
    app.store
        .sql(
            "INSERT INTO user_connections (user_low, user_high, state, requested_by) VALUES
             (1, 2, 'connected', NULL), (1, 3, 'pending', 3)",
        )
        .await;
    let expect = [
        (1, 2, Some("connected")),
        (3, 1, Some("sent_connection_request")),
        (4, 3, None),
    ];
    let check = |round: &'static str| {
        let app = &app;
        async move {
            for (viewer, other, want) in expect {
                assert_eq!(
                    app.status(viewer, other).await.as_deref(),
                    want,
                    "{viewer} -> {other}, {round}"
                );
            }
        }
    };
    check("warm").await;
    let prefix = app.store.prefix.clone();
    assert_eq!(redis.entry(&prefix, "p:1:2").await.as_deref(), Some("1:c"));

    // Act: kill Redis; keep reading and writing.
    redis.kill();
    for _ in 0..20 {
        check("redis down").await;
    }
    assert_eq!(
        app.act(4, "1", "request").await.status(),
        200,
        "a mutation with Redis down"
    );
    assert_eq!(
        app.status(1, 4).await.as_deref(),
        Some("received_connection_request")
    );
    let metrics = metrics_text(&app).await;
    assert!(
        metrics.contains("connstatus_redis_breaker_open 1"),
        "breaker open:\n{metrics}"
    );
    assert!(
        metrics.contains("connstatus_redis_errors_total"),
        "{metrics}"
    );

    // Assert: Redis back (empty); the service uses it again by itself.
    redis.restart().await;
    let started = Instant::now();
    loop {
        check("redis back").await;
        if redis.entry(&prefix, "p:1:2").await.as_deref() == Some("1:c") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the cache was not filled again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.status(1, 4).await.as_deref(),
        Some("received_connection_request")
    );
    let metrics = metrics_text(&app).await;
    assert!(
        metrics.contains("connstatus_redis_breaker_open 0"),
        "breaker closed again:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_killed_serves_cache_hits_refuses_the_rest_and_recovers() {
    // Arrange: a service on a private MariaDB; pair (1, 2) cached, (1, 3) not.
    let mut mysql = PrivateMariaDb::start().await;
    let store = Isolated::on(&mysql.server()).await;
    let app = spawn_app_on(store, &[("mysql_timeout_ms", json!(1000))]).await;
    app.users(&[1, 2, 3]).await;
    app.store
        .sql("INSERT INTO user_connections (user_low, user_high, state) VALUES (1, 2, 'connected'), (1, 3, 'connected')")
        .await;
    assert_eq!(app.status(1, 2).await.as_deref(), Some("connected"));
    assert_eq!(app.status(2, 1).await.as_deref(), Some("connected"));

    // Act: kill MySQL.
    mysql.kill();

    // Assert: hits still answer; a miss and a mutation are 503 + Retry-After.
    for _ in 0..5 {
        assert_eq!(app.status(1, 2).await.as_deref(), Some("connected"));
    }
    for response in [app.status_of(1, "3").await, app.act(1, "2", "remove").await] {
        assert_eq!(response.status(), 503);
        assert!(response.headers().get("retry-after").is_some());
        let body: serde_json::Value = response.json().await.expect("json");
        assert!(body["detail"].is_string());
    }
    let ready = app.get("/readyz").await;
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["mysql"], "down");

    // MySQL back: the service recovers by itself; the failed mutation left
    // nothing half-done.
    mysql.restart().await;
    let started = Instant::now();
    loop {
        let response = app.status_of(1, "3").await;
        if response.status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no recovery: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.status(1, 3).await.as_deref(), Some("connected"));
    assert_eq!(
        app.store.row(1, 2).await,
        Some(("connected".into(), None, false, 1)),
        "untouched"
    );
    assert_eq!(app.act(1, "2", "remove").await.status(), 200);
    assert_eq!(app.status(2, 1).await, None);
}

/// The calls outside the request path (the sweeper's look at which server
/// answers, `seed --reset`'s purge) are bounded by the Redis timeout on
/// their own: the connection sets no timer on a command
/// (`docs/operations.md#timeouts`), so without their bound a Redis that
/// stopped answering would hold them for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_outside_the_request_path_end_within_the_timeout_while_redis_is_stopped() {
    // Arrange: a cache on a private Redis, connected and answering.
    let redis = PrivateRedis::start().await;
    let cache = crate::helpers::cache_on(&redis.url(), &crate::helpers::unique("bound:"));
    assert!(cache.identity().await.expect("identity").is_some());
    assert_eq!(cache.purge().await.expect("purge"), Some(0));

    // Act: the server stops answering (SIGSTOP keeps the connection open).
    redis.pause();
    let started = Instant::now();
    let identity = tokio::time::timeout(Duration::from_secs(10), cache.identity()).await;
    let identity_took = started.elapsed();
    let started = Instant::now();
    let purge = tokio::time::timeout(Duration::from_secs(10), cache.purge()).await;
    let purge_took = started.elapsed();
    redis.resume();

    // Assert: each failed after about the timeout (2 s in the tests), not
    // the test's own 10 s.
    assert!(
        matches!(identity, Ok(Err(_))),
        "identity ended in {identity_took:?}"
    );
    assert!(matches!(purge, Ok(Err(_))), "purge ended in {purge_took:?}");
    for took in [identity_took, purge_took] {
        assert!(
            took >= Duration::from_millis(1_900) && took < Duration::from_secs(5),
            "took {took:?}"
        );
    }
    // And the connection is usable again once the server is back.
    assert!(cache.identity().await.expect("identity after").is_some());
}
