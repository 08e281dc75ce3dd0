//! The cache-warming job: the command, the admin endpoint, and re-runs.

use std::process::Command;

use connstatus::db::{self, reads};
use connstatus::domain::{Entry, UserId};
use connstatus::service::warm::{Progress, Tuning, Warmer};
use serde_json::{json, Value};

use crate::helpers::{free_port, redis_url, spawn_app, spawn_app_on, Isolated};

fn warm(store: &Isolated, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_connstatus"))
        .arg("warm")
        .args(args)
        .env("DATABASE_URL", &store.database_url)
        .env("REDIS_URL", redis_url())
        .env("CONNSTATUS_REDIS_PREFIX", &store.prefix)
        .env_remove("CONNSTATUS_ENV")
        .output()
        .expect("run connstatus warm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A warm job over `app`'s database and keys.
fn warmer_for(app: &crate::helpers::TestApp) -> Warmer {
    let cache = app.store.cache();
    let settings = Isolated::cache_settings(&app.store.prefix);
    let redis = connstatus::cache::link::Target::new(
        vec![redis_url()],
        &settings,
        std::time::Duration::from_secs(2),
    )
    .pool(2)
    .expect("pool");
    let pool = db::pool(
        &secrecy::SecretString::from(app.store.database_url.clone()),
        2,
        std::time::Duration::from_secs(5),
    )
    .expect("pool");
    Warmer::new(
        cache,
        redis,
        db::Db::new(pool, std::time::Duration::from_secs(5)),
        Tuning::default(),
    )
}

async fn arrange(store: &Isolated) {
    store
        .sql("INSERT INTO users (id) VALUES (1), (2), (3), (4), (5), (50)")
        .await;
    store
        .sql(
            "INSERT INTO user_connections (user_low, user_high, state, requested_by, rejected_at) VALUES
             (1, 2, 'connected', NULL, NULL), (1, 3, 'pending', 3, NULL), (1, 4, 'pending', 1, NOW(6)),
             (3, 4, 'connected', NULL, NULL)",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmed_pairs_are_served_with_mysql_unreachable_and_a_rerun_changes_nothing() {
    // Arrange: a graph, warmed for user 1 (and its pair with 50: no relation).
    let store = Isolated::new().await;
    arrange(&store).await;
    let (code, stdout, stderr) = warm(&store, &["--users", "1", "--with", "50,5"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("0 errors"), "{stdout}");
    let (code, again, _) = warm(&store, &["--users", "1", "--with", "50,5"]);
    assert_eq!(code, 0);
    assert!(
        again.contains(" 0 written"),
        "a re-run writes nothing: {again}"
    );

    // Act: a service that cannot reach MySQL at all, over the same cache.
    let closed = format!("mysql://root@127.0.0.1:{}/nothing", free_port());
    let app = spawn_app_on(
        store,
        &[
            ("database_url", json!(closed)),
            ("mysql_timeout_ms", json!(500)),
        ],
    )
    .await;

    // Assert: user 1's pairs are answered from the cache, both ways...
    assert_eq!(app.status(1, 2).await.as_deref(), Some("connected"));
    assert_eq!(
        app.status(3, 1).await.as_deref(),
        Some("sent_connection_request")
    );
    assert_eq!(
        app.status(1, 4).await.as_deref(),
        Some("sent_connection_request")
    );
    assert_eq!(app.status(4, 1).await, None, "the rejection stays hidden");
    assert_eq!(app.status(1, 50).await, None, "the warmed 'no relation'");
    // ...and a pair that was not warmed needs MySQL: 503 with Retry-After.
    let response = app.status_of(3, "4").await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_some());
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200, "cache hits can still be served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_all_and_users_file_cover_every_pair() {
    let store = Isolated::new().await;
    arrange(&store).await;
    let (code, stdout, stderr) = warm(&store, &["--all", "--chunk", "2"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("4 pairs and 6 users read, 10 written"),
        "{stdout}"
    );
    assert_eq!(store.cached("p:3:4").await.as_deref(), Some("1:c"));
    assert_eq!(store.cached("u:50").await.as_deref(), Some("1:a"));

    let file = std::env::temp_dir().join(format!("{}.txt", crate::helpers::unique("users_")));
    std::fs::write(&file, "# users to warm\n3, 4\n\n").expect("write");
    let (code, stdout, _) = warm(&store, &["--users-file", file.to_str().expect("path")]);
    assert_eq!(code, 0);
    assert!(stdout.contains("0 written"), "already warm: {stdout}");
    std::fs::write(&file, "3\nfour\n").expect("write");
    let (code, _, stderr) = warm(&store, &["--users-file", file.to_str().expect("path")]);
    assert_ne!(code, 0);
    assert!(stderr.contains(":2:"), "the bad line is named: {stderr}");
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_changed_after_the_scan_is_not_overwritten_by_the_warm() {
    scanned_then_changed(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_changed_after_the_scan_is_not_overwritten_even_once_its_entry_was_evicted() {
    scanned_then_changed(true).await;
}

/// The warm job scans user 1's pairs; then (1, 3) changes, and its new entry
/// is evicted when `evict`; then the job writes what it scanned.
async fn scanned_then_changed(evict: bool) {
    // Arrange: the warm job's scan has read user 1's pairs (version 1)...
    let app = spawn_app().await;
    arrange(&app.store).await;
    let mut conn = app.store.connection().await;
    let scanned = reads::pairs_of(&mut conn, UserId::new(1).expect("id"))
        .await
        .expect("scan");

    // ...then a mutation commits version 2 of (1, 3) and refreshes.
    assert_eq!(app.act(1, "3", "accept").await.status(), 200);
    if evict {
        app.store.evict("p:1:3").await;
    }

    // Act: the job writes what it scanned.
    let warmer = warmer_for(&app);
    let chunk: Vec<Entry> = scanned
        .iter()
        .map(|&(pair, v)| Entry::Pair(pair, v))
        .collect();
    let progress = Progress::default();
    warmer.write_chunk(&chunk, &progress).await;

    // Assert: the newer entry stands; the others were written.
    assert_eq!(app.store.cached("p:1:3").await.as_deref(), Some("2:c"));
    assert_eq!(app.status(3, 1).await.as_deref(), Some("connected"));
    if !evict {
        assert_eq!(connstatus::service::warm::count(&progress.skipped), 1);
    }
    assert_eq!(connstatus::service::warm::count(&progress.errors), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_warm_endpoint_answers_with_the_summary() {
    use secrecy::ExposeSecret;
    let app = spawn_app().await;
    arrange(&app.store).await;
    let url = format!("{}/internal/v1/cache/warm", app.admin());
    let token = app.settings.internal_token.expose_secret().to_owned();
    let response = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .json(&json!({"users": [1], "with": [5]}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let summary: Value = response.json().await.expect("json");
    assert_eq!(summary["pairs"], 4, "{summary}"); // 3 rows of user 1, and (1, 5)
    assert_eq!(summary["errors"], 0);
    assert_eq!(summary["interrupted"], false);
    assert_eq!(app.store.cached("p:1:5").await.as_deref(), Some("0:n"));

    for (body, code) in [
        (json!({"users": "1"}), 400),
        (json!({"users": [0]}), 400),
        (json!({"with": [1]}), 400),
        (json!({"users": (1..=101).collect::<Vec<u64>>()}), 400),
    ] {
        let response = app
            .client
            .post(&url)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), code, "{body}");
    }
    let anonymous = app
        .client
        .post(&url)
        .json(&json!({"users": [1]}))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_deleted_for_good_after_the_scan_is_not_brought_back_by_the_warm() {
    // Arrange: the job's scan has read user 5 (exists); then the row is
    // deleted for good and the event sent; the entry is evicted, and a read
    // of user 5 misses and fills what it finds.
    let app = spawn_app().await;
    arrange(&app.store).await;
    let mut conn = app.store.connection().await;
    let scanned = reads::user(&mut conn, UserId::new(5).expect("id"))
        .await
        .expect("scan");
    app.store.sql("DELETE FROM users WHERE id = 5").await;
    let deleted = json!({"type": "user.deleted", "data": {"user": {"id": 5}}});
    assert_eq!(app.events(&deleted).await.status(), 200);
    app.store.evict("u:5").await;
    assert_eq!(app.status_of(1, "5").await.status(), 404);

    // Act: the job writes what it scanned.
    let chunk = [Entry::User(UserId::new(5).expect("id"), scanned)];
    warmer_for(&app)
        .write_chunk(&chunk, &Progress::default())
        .await;

    // Assert: still not found.
    assert_eq!(app.status_of(1, "5").await.status(), 404);
}
