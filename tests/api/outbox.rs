//! The refresh queue (outbox): rows that never leave, rows that starve, and
//! what a sweep does while Redis is away.

use std::time::{Duration, Instant};

use connstatus::seed;
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::{metrics_text, spawn_app_on, spawn_app_with, Isolated, PrivateRedis, TestApp};

/// Every row of the refresh queue, pending or landed.
async fn queue_rows(store: &Isolated) -> i64 {
    use connstatus::db::schema::cache_refresh_queue as q;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let mut conn = store.connection().await;
    q::table.count().get_result(&mut conn).await.expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_reset_empties_the_refresh_queue_too() {
    // Arrange: a graph with queued refreshes at versions the new graph's
    // rows (which start again at 1) would not reach for a long time.
    let store = Isolated::new().await;
    store.sql("INSERT INTO users (id) VALUES (1), (2)").await;
    store
        .sql("INSERT INTO cache_refresh_queue (kind, a, b, version) VALUES (1, 1, 2, 7), (2, 2, 0, 3)")
        .await;

    // Act.
    let spec = seed::Spec {
        users: 20,
        connections: 40,
        seed: 1,
    };
    seed::run(&SecretString::from(store.database_url.clone()), spec, true)
        .await
        .expect("seed --reset");

    // Assert.
    assert_eq!(queue_rows(&store).await, 0, "the old graph's queue is gone");
}

/// The value of an unlabelled metric on `/metrics`.
async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = metrics_text(app).await;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not on /metrics:\n{text}"))
        .trim()
        .parse()
        .expect("a number")
}

/// Plants `n` pending refreshes of pairs (1, 1000 + i), enqueued an hour ago
/// at `version`.
async fn plant(store: &Isolated, n: u64, version: u64) {
    let rows: Vec<String> = (0..n)
        .map(|i| format!("(1, 1, {}, {version}, NOW(6) - INTERVAL 1 HOUR)", 1000 + i))
        .collect();
    store
        .sql(&format!(
            "INSERT INTO cache_refresh_queue (kind, a, b, version, enqueued_at) VALUES {}",
            rows.join(",")
        ))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_a_sweep_stops_at_the_first_failure() {
    // Arrange: a service whose Redis is dead, 200 overdue refreshes.
    let mut redis = PrivateRedis::start().await;
    let app = spawn_app_with(&[
        ("redis_url", json!(redis.url())),
        ("refresh_retry_ms", json!(200)),
        ("redis_breaker_ms", json!(200)),
    ])
    .await;
    redis.kill();
    plant(&app.store, 200, 0).await;
    app.users(&[1, 2]).await;
    assert_eq!(app.status(1, 2).await, None, "answered from MySQL");
    let checkouts = "connstatus_mysql_pool_wait_seconds_count";
    let before = metric(&app, checkouts).await;

    // Act: ten sweeper rounds go by.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Assert: each round asked MySQL a few things, not one per row, and
    // re-enqueued nothing (the rows keep their age).
    let used = metric(&app, checkouts).await - before;
    println!("{used} MySQL checkouts in 2 s of sweeping 200 rows with Redis down");
    assert!(
        used < 100.0,
        "{used} MySQL calls in ten rounds for 200 rows that cannot land now"
    );
    let mut conn = app.store.connection().await;
    let touched: i64 = {
        use connstatus::db::schema::cache_refresh_queue as q;
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        q::table
            .filter(
                q::enqueued_at.gt(diesel::dsl::sql::<diesel::sql_types::Datetime>(
                    "NOW(6) - INTERVAL 30 MINUTE",
                )),
            )
            .count()
            .get_result(&mut conn)
            .await
            .expect("count")
    };
    assert_eq!(touched, 0, "rows re-enqueued while Redis was down");

    // Redis back: every row lands.
    redis.restart().await;
    let back = Instant::now();
    while app.store.queued().await > 0 {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the queue did not drain once Redis was back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("200 rows landed {:?} after Redis came back", back.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_never_settle_do_not_starve_newer_ones() {
    // Arrange: a pair cached at version 1 and changed by a writer that sent
    // no event: its refresh to version 2 is queued ten minutes ago. Ahead of
    // it, a full sweep's worth (1000) of older rows that can never settle:
    // their queued version is higher than anything the rows will ever have.
    let app = spawn_app_with(&[("refresh_retry_ms", json!(200))]).await;
    app.users(&[1, 2]).await;
    app.store
        .sql("INSERT INTO user_connections (user_low, user_high, state, requested_by) VALUES (1, 2, 'pending', 1)")
        .await;
    assert_eq!(
        app.status(2, 1).await.as_deref(),
        Some("received_connection_request")
    );
    app.store
        .sql("UPDATE user_connections SET state = 'connected', requested_by = NULL WHERE user_low = 1 AND user_high = 2")
        .await;
    plant(&app.store, 1000, 1_000_000).await;
    app.store
        .sql("INSERT INTO cache_refresh_queue (kind, a, b, version, enqueued_at) VALUES (1, 1, 2, 2, NOW(6) - INTERVAL 10 MINUTE)")
        .await;
    let planted = Instant::now();

    // Assert: the newer row lands all the same.
    while app.store.cached("p:1:2").await.as_deref() != Some("2:c") {
        assert!(
            planted.elapsed() < Duration::from_secs(20),
            "the newer refresh never landed behind 1000 that cannot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "the newer row landed {:?} after it was queued behind 1000 unsettleable rows",
        planted.elapsed()
    );
    assert_eq!(app.status(2, 1).await.as_deref(), Some("connected"));
    assert_eq!(app.store.queued().await, 1000, "only those that cannot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_one_round_drains_without_waiting_a_tick_per_round() {
    // Arrange: 2500 due refreshes (three rounds' worth, as a replay after a
    // failover may re-arm) before the service starts, whose first tick is at
    // start-up and whose next one is a minute later.
    let store = Isolated::new().await;
    plant(&store, 2500, 0).await;
    let app = spawn_app_on(store, &[("refresh_retry_ms", json!(60_000))]).await;
    let started = Instant::now();

    // Assert: all of them land in the first tick, not one round per tick.
    while app.store.queued().await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} rows still pending half an interval after start-up",
            app.store.queued().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("2500 rows drained {:?} after start-up", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_and_the_oldest_pending_age_are_on_metrics() {
    // Arrange: five refreshes pending for an hour (they cannot settle), one
    // landed row (not pending).
    let app = spawn_app_with(&[("refresh_retry_ms", json!(200))]).await;
    plant(&app.store, 5, 1_000_000).await;
    app.store
        .sql("INSERT INTO cache_refresh_queue (kind, a, b, version, landed_at) VALUES (2, 9, 0, 1, NOW(6))")
        .await;

    // Assert: the sweeper samples them.
    let started = Instant::now();
    while !metrics_text(&app)
        .await
        .contains("connstatus_refresh_queue_depth 5\n")
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no queue depth of 5 on /metrics:\n{}",
            metrics_text(&app).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let oldest = metric(&app, "connstatus_refresh_queue_oldest_seconds").await;
    assert!(
        (3600.0..3700.0).contains(&oldest),
        "oldest pending row is an hour old, not {oldest} s"
    );

    // Once they are done, both fall to 0.
    app.store
        .sql("UPDATE cache_refresh_queue SET landed_at = NOW(6)")
        .await;
    while !metrics_text(&app)
        .await
        .contains("connstatus_refresh_queue_depth 0\n")
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the depth did not fall to 0"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric(&app, "connstatus_refresh_queue_oldest_seconds").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_stall_is_not_an_attempt() {
    // Arrange: three due refreshes; MySQL cannot read pairs (a second
    // session holds the table) for longer than several rounds.
    let app = spawn_app_with(&[
        ("refresh_retry_ms", json!(200)),
        ("mysql_timeout_ms", json!(300)),
    ])
    .await;
    plant(&app.store, 3, 0).await;
    let mut locker = app.store.connection().await;
    {
        use diesel_async::SimpleAsyncConnection;
        locker
            .batch_execute("LOCK TABLES user_connections WRITE")
            .await
            .expect("lock");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    // Assert: no row was postponed for it, and all land once MySQL reads.
    let attempts: Option<i64> = {
        use connstatus::db::schema::cache_refresh_queue as q;
        use diesel::dsl::max;
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let mut conn = app.store.connection().await;
        q::table
            .select(max(q::attempts))
            .first::<Option<u32>>(&mut conn)
            .await
            .expect("attempts")
            .map(i64::from)
    };
    assert_eq!(attempts, Some(0), "a stall counted as an attempt");
    {
        use diesel_async::SimpleAsyncConnection;
        locker.batch_execute("UNLOCK TABLES").await.expect("unlock");
    }
    let unlocked = Instant::now();
    while app.store.queued().await > 0 {
        assert!(
            unlocked.elapsed() < Duration::from_secs(3),
            "rows still pending after MySQL answered again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_unknown_version_keeps_a_higher_one_and_lands_on_any_refresh() {
    use connstatus::db::outbox;
    use connstatus::db::schema::cache_refresh_queue as q;
    use connstatus::domain::{Pair, Subject, UserId};
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let store = Isolated::new().await;
    let mut conn = store.connection().await;
    let id = |n| UserId::new(n).expect("id");
    let pair = Subject::Pair(Pair::new(id(1), id(2)).expect("pair"));
    let user = Subject::User(id(9));
    let rows = async |conn: &mut diesel_async::AsyncMysqlConnection| {
        q::table
            .select((q::kind, q::a, q::version, q::landed_at.is_not_null()))
            .order((q::kind, q::a))
            .load::<(u8, u64, u64, bool)>(conn)
            .await
            .expect("rows")
    };

    // A mutation's version 5 is pending; events name the pair and a user.
    outbox::enqueue(&mut conn, pair, 5).await.expect("enqueue");
    outbox::record(&mut conn, &[user, pair, user])
        .await
        .expect("record");
    assert_eq!(
        rows(&mut conn).await,
        [(1, 1, 5, false), (2, 9, 0, false)],
        "the higher version is kept; unknown is 0"
    );

    // A refresh that read version 0 (no row) lands the user's record; one
    // that read 4 does not land the pair's 5, one that read 5 does.
    outbox::dequeue(&mut conn, user, 0).await.expect("dequeue");
    outbox::dequeue(&mut conn, pair, 4).await.expect("dequeue");
    assert_eq!(rows(&mut conn).await, [(1, 1, 5, false), (2, 9, 0, true)]);
    outbox::dequeue(&mut conn, pair, 5).await.expect("dequeue");
    assert_eq!(rows(&mut conn).await, [(1, 1, 5, true), (2, 9, 0, true)]);

    // A record of a landed subject makes it pending again at its version.
    outbox::record(&mut conn, &[pair]).await.expect("record");
    assert_eq!(rows(&mut conn).await, [(1, 1, 5, false), (2, 9, 0, true)]);
}
