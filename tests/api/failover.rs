//! A Redis that comes back without writes it had acknowledged (a failover to
//! a replica that had not caught up, or a restart from an older snapshot):
//! the refreshes of the window before it are replayed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{spawn_app_with, PrivateRedis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_lost_by_a_redis_restart_from_an_older_snapshot_are_replayed() {
    // Arrange: a service on a Redis that keeps snapshots; user 1 has asked
    // 2..=6 and 7 (version 1), and every pair is read, so cached at 1.
    let mut redis = PrivateRedis::persistent().await;
    let app = spawn_app_with(&[
        ("redis_url", json!(redis.url())),
        ("refresh_retry_ms", json!(200)),
        ("redis_breaker_ms", json!(200)),
    ])
    .await;
    let mutated = [2, 3, 4, 5, 6];
    app.users(&[1, 2, 3, 4, 5, 6, 7]).await;
    app.store
        .sql(
            "INSERT INTO user_connections (user_low, user_high, state, requested_by) VALUES
             (1, 2, 'pending', 1), (1, 3, 'pending', 1), (1, 4, 'pending', 1),
             (1, 5, 'pending', 1), (1, 6, 'pending', 1), (1, 7, 'pending', 1)",
        )
        .await;
    let prefix = app.store.prefix.clone();
    let key = |other: u64| format!("p:1:{other}");
    for other in mutated.into_iter().chain([7]) {
        assert_eq!(
            app.status(1, other).await.as_deref(),
            Some("sent_connection_request")
        );
        assert_eq!(
            redis.entry(&prefix, &key(other)).await.as_deref(),
            Some("1:l")
        );
    }
    redis.command(&["SAVE"]).await.expect("SAVE");
    let before = redis.info_field("run_id").await.expect("run_id");

    // Act: the requests are accepted; Redis acknowledges version 2 of each.
    for other in mutated {
        assert_eq!(app.act(other, "1", "accept").await.status(), 200);
        assert_eq!(
            redis.entry(&prefix, &key(other)).await.as_deref(),
            Some("2:c")
        );
    }
    // Redis dies (SIGKILL) and comes back from the snapshot: version 1 again.
    redis.kill();
    redis.restart().await;
    let restarted = Instant::now();
    assert_ne!(
        redis.info_field("run_id").await.expect("run_id"),
        before,
        "a new server"
    );
    assert_eq!(
        redis.entry(&prefix, &key(7)).await.as_deref(),
        Some("1:l"),
        "the snapshot was loaded (an untouched pair is as saved)"
    );

    // Assert: every mutated pair agrees with MySQL again, unaided, within 5 s.
    loop {
        let mut stale = Vec::new();
        for other in mutated {
            let value = redis.entry(&prefix, &key(other)).await;
            if value.as_deref() != Some("2:c") {
                stale.push((other, value));
            }
        }
        if stale.is_empty() {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "entries still older than MySQL 5 s after the restart: {stale:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "replayed {} lost refreshes {:?} after Redis came back",
        mutated.len(),
        restarted.elapsed()
    );
    for other in mutated {
        assert_eq!(app.status(1, other).await.as_deref(), Some("connected"));
        assert_eq!(app.status(other, 1).await.as_deref(), Some("connected"));
    }
    assert_eq!(
        app.status(1, 7).await.as_deref(),
        Some("sent_connection_request")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_the_old_server_took_but_marked_landed_after_the_replay_is_replayed_too() {
    // Arrange: pairs (1, 2) and (1, 3) cached at version 1 and saved.
    let mut redis = PrivateRedis::persistent().await;
    let app = spawn_app_with(&[
        ("redis_url", json!(redis.url())),
        ("refresh_retry_ms", json!(200)),
        ("redis_breaker_ms", json!(200)),
        ("mysql_timeout_ms", json!(5000)),
    ])
    .await;
    app.users(&[1, 2, 3]).await;
    app.store
        .sql(
            "INSERT INTO user_connections (user_low, user_high, state, requested_by) VALUES
             (1, 2, 'pending', 1), (1, 3, 'pending', 1)",
        )
        .await;
    let prefix = app.store.prefix.clone();
    let key = |other: u64| format!("p:1:{other}");
    for other in [2, 3] {
        assert_eq!(
            app.status(1, other).await.as_deref(),
            Some("sent_connection_request")
        );
    }
    redis.command(&["SAVE"]).await.expect("SAVE");

    // Act: (1, 3) is accepted through the API. (1, 2) is accepted too, and
    // its refresh is half-way when Redis dies: the old server took version 2,
    // but the refresh has not marked its row landed yet.
    assert_eq!(app.act(3, "1", "accept").await.status(), 200);
    app.store
        .sql("UPDATE user_connections SET state = 'connected', requested_by = NULL WHERE user_low = 1 AND user_high = 2")
        .await;
    // The old server takes the write.
    redis.plant(&prefix, &key(2), "2:c").await;
    redis.kill();
    redis.restart().await;
    let restarted = Instant::now();
    // The replay of the window lands (1, 3): its first pass is done.
    while redis.entry(&prefix, &key(3)).await.as_deref() != Some("2:c") {
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "(1, 3) was not replayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only now does the half-way refresh mark its row landed (well within
    // the MySQL timeout after the change).
    assert_eq!(redis.entry(&prefix, &key(2)).await.as_deref(), Some("1:l"));
    app.store
        .sql("INSERT INTO cache_refresh_queue (kind, a, b, version, landed_at) VALUES (1, 1, 2, 2, NOW(6))")
        .await;
    let late = Instant::now();

    // Assert: a second pass, once no refresh under way at the change can
    // still land (the MySQL timeout), replays it as well.
    while redis.entry(&prefix, &key(2)).await.as_deref() != Some("2:c") {
        assert!(
            late.elapsed() < Duration::from_secs(8),
            "the late acknowledgement was never replayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "late acknowledgement replayed {:?} after it was marked landed ({:?} after the restart)",
        late.elapsed(),
        restarted.elapsed()
    );
    assert_eq!(app.status(2, 1).await.as_deref(), Some("connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landed_refreshes_are_kept_for_the_replay_window_then_purged() {
    let app = spawn_app_with(&[
        ("refresh_retry_ms", json!(200)),
        ("replay_window_seconds", json!(1)),
    ])
    .await;
    app.users(&[1, 2]).await;
    let rows = || async {
        let mut conn = app.store.connection().await;
        landed_and_pending(&mut conn).await
    };
    assert_eq!(app.act(1, "2", "request").await.status(), 200);
    let landed = Instant::now();
    assert_eq!(rows().await, (1, 0), "landed, kept");
    while rows().await != (0, 0) {
        assert!(
            landed.elapsed() < Duration::from_secs(5),
            "a landed row outlived its 1 s window"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        landed.elapsed() >= Duration::from_millis(900),
        "kept for the window"
    );
}

/// Rows of the refresh queue: (landed, pending).
async fn landed_and_pending(conn: &mut diesel_async::AsyncMysqlConnection) -> (i64, i64) {
    use connstatus::db::schema::cache_refresh_queue as q;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let landed = q::table
        .filter(q::landed_at.is_not_null())
        .count()
        .get_result(conn)
        .await
        .expect("count");
    let pending = q::table
        .filter(q::landed_at.is_null())
        .count()
        .get_result(conn)
        .await
        .expect("count");
    (landed, pending)
}
