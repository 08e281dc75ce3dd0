//! The database enforces the rules for every writer (`docs/consistency.md#rules-every-writer-follows`).

use connstatus::db;
use diesel_async::SimpleAsyncConnection;
use secrecy::SecretString;

use crate::helpers::Isolated;

async fn refused(store: &Isolated, statement: &str) -> String {
    let mut conn = store.connection().await;
    match conn.batch_execute(statement).await {
        Ok(()) => panic!("accepted: {statement}"),
        Err(e) => e.to_string(),
    }
}

async fn version_of(store: &Isolated, low: u64, high: u64) -> u64 {
    use connstatus::db::schema::user_connections as uc;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let mut conn = store.connection().await;
    uc::table
        .filter(uc::user_low.eq(low).and(uc::user_high.eq(high)))
        .select(uc::version)
        .first(&mut conn)
        .await
        .expect("row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_rows_that_break_the_rules() {
    let store = Isolated::new().await;
    store
        .sql("INSERT INTO users (id) VALUES (1), (2), (3)")
        .await;
    let insert = "INSERT INTO user_connections (user_low, user_high, state, requested_by) VALUES";
    for (values, why) in [
        ("(2, 1, 'none', NULL)", "unordered pair"),
        ("(1, 1, 'none', NULL)", "a user with themself"),
        ("(1, 9, 'none', NULL)", "an unknown user"),
        ("(1, 2, 'pending', NULL)", "pending without requester"),
        ("(1, 2, 'pending', 3)", "requester outside the pair"),
        ("(1, 2, 'connected', 1)", "requester while connected"),
        ("(1, 2, 'bogus', NULL)", "unknown state"),
    ] {
        let error = refused(&store, &format!("{insert} {values}")).await;
        assert!(!error.is_empty(), "{why}");
    }
    let lenient = "SET SESSION sql_mode = ''; INSERT INTO user_connections (user_low, user_high, state) VALUES (1, 2, 'bogus')";
    refused(&store, lenient).await;
    store.sql(&format!("{insert} (1, 2, 'pending', 1)")).await;
    let error = refused(&store, "DELETE FROM user_connections WHERE user_low = 1").await;
    assert!(error.contains("never deleted"), "{error}");
    refused(
        &store,
        "UPDATE user_connections SET rejected_at = NOW(6), state = 'none', requested_by = NULL",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_update_raises_the_version_whoever_writes() {
    let store = Isolated::new().await;
    store.sql("INSERT INTO users (id) VALUES (1), (2)").await;
    store.sql("INSERT INTO user_connections (user_low, user_high, state, requested_by) VALUES (1, 2, 'pending', 2)").await;
    assert_eq!(version_of(&store, 1, 2).await, 1);
    store
        .sql("UPDATE user_connections SET state = 'connected', requested_by = NULL")
        .await;
    assert_eq!(version_of(&store, 1, 2).await, 2);
    // A writer that tries to set the version itself cannot move it backwards.
    store
        .sql("UPDATE user_connections SET state = 'none', version = 1")
        .await;
    assert_eq!(version_of(&store, 1, 2).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_revert_and_apply_again() {
    let store = Isolated::new().await;
    let url = SecretString::from(store.database_url.clone());
    db::revert_all(&url).await.expect("down.sql works");
    let error = refused(&store, "SELECT * FROM user_connections").await;
    assert!(error.contains("doesn't exist"), "{error}");
    let applied = db::migrate(&url).await.expect("up again");
    let all = std::fs::read_dir("migrations")
        .expect("migrations/")
        .count();
    assert_eq!(applied.len(), all, "every migration applied again");
    assert!(db::migrate(&url).await.expect("idempotent").is_empty());
}
