//! The refresh queue (outbox): rows that never leave, rows that starve, and
//! what a sweep does while Redis is away.

use connstatus::seed;
use secrecy::SecretString;

use crate::helpers::Isolated;

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
