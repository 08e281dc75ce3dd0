//! Read replicas (`docs/consistency.md#read-replicas`), on a private MariaDB
//! primary and its replica: misses read the replica, the binlog follower
//! reads the replica's log, and the staleness of an answer is bounded by how
//! far the replica trails the primary.

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
use serde_json::json;

use crate::helpers::{spawn_app_on, Isolated, PrivateMariaDb, TestApp};

/// Whether `sql` (a `SELECT COUNT(*)`) counts `n` on the server at `url`.
async fn counts(url: &str, sql: &str, n: i64) -> bool {
    use diesel::sql_types::BigInt;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let Ok(mut conn) = AsyncMysqlConnection::establish(url).await else {
        return false;
    };
    let counted: Result<Vec<Count>, _> = diesel::sql_query(sql).load(&mut conn).await;
    matches!(counted.as_deref(), Ok([c]) if c.n == n)
}

async fn until(what: &str, within: Duration, check: impl AsyncFn() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn follower_state(app: &TestApp) -> String {
    let body: serde_json::Value = app.get("/readyz").await.json().await.expect("json");
    body["follower"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replication_stopped_for_30_s_answers_trail_the_primary_then_catch_up_within_the_bound(
) {
    // Arrange: a primary and its replica; the service writes to the primary
    // and reads misses from the replica; its follower is on.
    let primary = PrivateMariaDb::primary().await;
    let replica = PrivateMariaDb::replica_of(&primary).await;
    let store = Isolated::on(&primary.server()).await;
    let name = store
        .database_url
        .rsplit('/')
        .next()
        .expect("a database")
        .to_owned();
    let replica_url = format!("{}/{name}", replica.server());
    store
        .sql(
            "INSERT INTO users (id) VALUES (1), (2), (3), (4); \
             INSERT INTO user_connections (user_low, user_high, state) VALUES (1, 2, 'none'), (1, 3, 'none'), (1, 4, 'none')",
        )
        .await;
    let started = Instant::now();
    while !counts(
        &replica_url,
        "SELECT COUNT(*) AS n FROM user_connections",
        3,
    )
    .await
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the replica does not have the rows: {}",
            replica.replication_error().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let app = spawn_app_on(
        store,
        &[
            ("follow", json!(true)),
            ("database_replica_url", json!(replica_url)),
        ],
    )
    .await;
    until(
        "the follower is active",
        Duration::from_secs(15),
        async || follower_state(&app).await == "active",
    )
    .await;
    assert_eq!(app.status(1, 2).await, None);

    // Act: replication stops; a writer changes (1, 2) on the primary with
    // plain SQL.
    replica.execute("STOP SLAVE").await;
    let stopped = Instant::now();
    AsyncMysqlConnection::establish(&app.store.database_url)
        .await
        .expect("connect")
        .batch_execute(
            "UPDATE user_connections SET state = 'connected' WHERE user_low = 1 AND user_high IN (2, 4)",
        )
        .await
        .expect("update");

    // Assert: while the replica trails, the follower (on the replica's log)
    // has nothing to refresh, and a miss reads the replica: both answer the
    // replica's state, within the bound.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        app.status(1, 2).await,
        None,
        "refreshed before the replica had it"
    );
    app.store.evict("p:1:2").await;
    assert_eq!(
        app.status(1, 2).await,
        None,
        "the miss did not read the replica"
    );
    // A mutation through the service is read at once all the same: it
    // commits on the primary and refreshes from it.
    assert_eq!(app.act(1, "3", "request").await.status(), 200);
    assert_eq!(
        app.status(1, 3).await.as_deref(),
        Some("sent_connection_request")
    );
    // So is a batch, whose miss (the user's entry gone) reads the replica.
    app.store.evict("u:3").await;
    let (status, batch) = app.batch(1, &[3]).await;
    assert_eq!(status, 200);
    assert_eq!(
        batch["connection_statuses"]["3"],
        json!("sent_connection_request")
    );
    // A key holding a value that is not ours is replaced by a miss whatever
    // it holds: that miss reads the primary, never a replica's older state.
    app.store.plant("p:1:4", "not ours").await;
    assert_eq!(app.status(1, 4).await.as_deref(), Some("connected"));
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    assert_eq!(app.status(1, 2).await, None);

    // Replication resumes: the replica catches up, the follower sees the
    // change in its log and refreshes from the primary.
    replica.execute("START SLAVE").await;
    let took = until(
        "the answer catches up",
        Duration::from_secs(5),
        async || app.status(1, 2).await.as_deref() == Some("connected"),
    )
    .await;
    eprintln!("caught up {took:?} after replication resumed");
}
