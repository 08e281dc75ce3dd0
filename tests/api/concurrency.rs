//! A randomized interleaving of mutations through the API, external writers
//! with events, and readers, over a few users; afterwards every pair read
//! through the service from both sides must equal what MySQL says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_async::SimpleAsyncConnection;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::helpers::{expected, spawn_app, TestApp};

const USERS: u64 = 10;
const ACTIONS: [&str; 6] = [
    "request",
    "accept",
    "reject",
    "cancel_reject",
    "cancel_request",
    "remove",
];

fn seconds() -> u64 {
    std::env::var("CONNSTATUS_TEST_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

fn two_users(rng: &mut StdRng) -> (u64, u64) {
    let a = rng.random_range(1..=USERS);
    let mut b = rng.random_range(1..=USERS - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

async fn api_mutator(app: Arc<TestApp>, seed: u64, until: Instant, ops: Arc<AtomicU64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    while Instant::now() < until {
        let (caller, other) = two_users(&mut rng);
        let action = ACTIONS[rng.random_range(0..ACTIONS.len())];
        let code = app
            .act(caller, &other.to_string(), action)
            .await
            .status()
            .as_u16();
        assert!(
            code == 200 || code == 409,
            "{action} by {caller} on {other}: {code}"
        );
        ops.fetch_add(1, Ordering::Relaxed);
    }
}

async fn external_writer(app: Arc<TestApp>, seed: u64, until: Instant, ops: Arc<AtomicU64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conn = app.store.connection().await;
    while Instant::now() < until {
        let (a, b) = two_users(&mut rng);
        let (low, high) = (a.min(b), a.max(b));
        let by = if rng.random_bool(0.5) { low } else { high };
        let (state, requested_by, rejected_at) = match rng.random_range(0..4) {
            0 => ("none", "NULL".to_owned(), "NULL"),
            1 => ("pending", by.to_string(), "NULL"),
            2 => ("pending", by.to_string(), "NOW(6)"),
            _ => ("connected", "NULL".to_owned(), "NULL"),
        };
        // Plain SQL following section 5a, then the event.
        let write = conn
            .batch_execute(&format!(
                "INSERT INTO user_connections (user_low, user_high, state, requested_by, rejected_at) \
                 VALUES ({low}, {high}, '{state}', {requested_by}, {rejected_at}) \
                 ON DUPLICATE KEY UPDATE state = VALUES(state), requested_by = VALUES(requested_by), \
                 rejected_at = VALUES(rejected_at)"
            ))
            .await;
        if write.is_err() {
            continue; // a deadlock with a mutation: nothing changed, nothing to tell
        }
        let event = json!({"type": "connection.created", "data": {"from_user": {"id": a}, "to_user": {"id": b}}});
        let response = app.events(&event).await;
        assert_eq!(response.status(), 200);
        ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads one pair with the GET, or a few users at once with the batch (its
/// two-step lookup and its own fills race the writers too).
async fn reader(app: Arc<TestApp>, seed: u64, until: Instant, ops: Arc<AtomicU64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    while Instant::now() < until {
        let (viewer, other) = two_users(&mut rng);
        if rng.random_bool(0.5) {
            app.status(viewer, other).await;
        } else {
            let users: Vec<u64> = (0..3).map(|_| rng.random_range(1..=USERS)).collect();
            let (code, body) = batch(&app, viewer, &users).await;
            assert_eq!(code, 200, "{body}");
        }
        ops.fetch_add(1, Ordering::Relaxed);
    }
}

async fn batch(app: &TestApp, viewer: u64, users: &[u64]) -> (u16, Value) {
    let response = app
        .client
        .post(format!("{}/api/v2/user/connection/statuses/", app.address))
        .bearer_auth(app.token(viewer))
        .json(&json!({ "users": users }))
        .send()
        .await
        .expect("request");
    let code = response.status().as_u16();
    (code, response.json().await.expect("json"))
}

/// Drops random pair entries, as TTL expiry or eviction under memory
/// pressure would: readers then miss and fill while writers write, which is
/// the race the only-if-newer fill exists for.
async fn evictor(app: Arc<TestApp>, seed: u64, until: Instant, ops: Arc<AtomicU64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    while Instant::now() < until {
        let (a, b) = two_users(&mut rng);
        app.store.evict(&format!("p:{a}:{b}")).await;
        ops.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_any_interleaving_every_pair_reads_what_mysql_says() {
    let app = Arc::new(spawn_app().await);
    app.users(&(1..=USERS).collect::<Vec<_>>()).await;
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let until = Instant::now() + Duration::from_secs(seconds());
    let (mutations, writes, reads) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tasks = Vec::new();
    for i in 0..4 {
        tasks.push(tokio::spawn(api_mutator(
            app.clone(),
            seed + i,
            until,
            mutations.clone(),
        )));
    }
    for i in 4..6 {
        tasks.push(tokio::spawn(external_writer(
            app.clone(),
            seed + i,
            until,
            writes.clone(),
        )));
    }
    for i in 6..9 {
        tasks.push(tokio::spawn(reader(
            app.clone(),
            seed + i,
            until,
            reads.clone(),
        )));
    }
    let evictions = Arc::new(AtomicU64::new(0));
    // Eviction stops first, so that an entry a racing fill left stale has
    // time to be the last word on its pair instead of being evicted.
    let evict_until = until - Duration::from_secs(2).min(Duration::from_secs(seconds()) / 2);
    tasks.push(tokio::spawn(evictor(
        app.clone(),
        seed + 9,
        evict_until,
        evictions.clone(),
    )));
    for task in tasks {
        task.await.expect("task");
    }

    // Writes have stopped: every pair, from both sides, must agree with MySQL.
    let mut stale = Vec::new();
    let mut checked = 0;
    let everyone: Vec<u64> = (1..=USERS).collect();
    for low in 1..=USERS {
        for high in low + 1..=USERS {
            let row = app.store.row(low, high).await;
            for (viewer, other) in [(low, high), (high, low)] {
                let seen = app
                    .status(viewer, other)
                    .await
                    .map(Value::from)
                    .unwrap_or(Value::Null);
                let (_, all) = batch(&app, viewer, &everyone).await;
                let in_batch = &all["connection_statuses"][other.to_string()];
                let want = expected(row.as_ref(), viewer);
                checked += 1;
                if seen != want || *in_batch != want {
                    stale.push(format!(
                        "{viewer} sees {other} as {seen} (batch: {in_batch}), MySQL says {want} ({row:?})"
                    ));
                }
            }
        }
    }
    println!(
        "operations: {} API mutations, {} external writes with events, {} reads, {} evictions; \
         {} pair reads checked afterwards, {} stale",
        mutations.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
        evictions.load(Ordering::Relaxed),
        checked,
        stale.len()
    );
    assert!(stale.is_empty(), "stale answers:\n{}", stale.join("\n"));
    assert_eq!(app.store.queued().await, 0, "no refresh left behind");
}
