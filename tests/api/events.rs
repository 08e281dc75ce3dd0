//! External writers (`docs/api.md#events`), the events endpoint, the hooks, and
//! the guarantee that a late fill never wins.

use std::time::{Duration, Instant};

use connstatus::cache::LeaseFor;
use connstatus::db::reads;
use connstatus::domain::{Entry, Pair, Subject, UserId};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, PrivateRedis};

fn id(n: u64) -> UserId {
    UserId::new(n).expect("valid id")
}

fn connection_event(kind: &str, from: u64, to: u64) -> Value {
    json!({"event_id": 1, "type": kind, "created": 1625471209.13,
           "data": {"from_user": {"id": from}, "to_user": {"id": to}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_write_shows_after_its_event_and_not_before() {
    // Arrange: both users read the pair (cached: no relation).
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    assert_eq!(app.status(1, 2).await, None);
    assert_eq!(app.status(2, 1).await, None);

    // Act 1: an external writer creates a request by 2, sends no event.
    app.store
        .sql("INSERT INTO user_connections (user_low, user_high, state, requested_by) VALUES (1, 2, 'pending', 2)")
        .await;
    assert_eq!(
        app.status(1, 2).await,
        None,
        "without the event the cached answer stands"
    );

    // Act 2: the event arrives.
    let response = app
        .events(&connection_event("connection_request.created", 2, 1))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.expect("json"),
        json!({"processed": 1, "ignored": 0})
    );

    // Assert: both sides see it at once.
    assert_eq!(
        app.status(1, 2).await.as_deref(),
        Some("received_connection_request")
    );
    assert_eq!(
        app.status(2, 1).await.as_deref(),
        Some("sent_connection_request")
    );

    // The same for an accept written by hand, sent in an array with an
    // unknown event type, which is acknowledged and counted.
    app.store
        .sql("UPDATE user_connections SET state = 'connected', requested_by = NULL WHERE user_low = 1 AND user_high = 2")
        .await;
    let batch =
        json!([connection_event("connection.created", 1, 2), {"type": "post.liked", "data": {}}]);
    let response = app.events(&batch).await;
    assert_eq!(
        response.json::<Value>().await.expect("json"),
        json!({"processed": 1, "ignored": 1})
    );
    assert_eq!(app.status(2, 1).await.as_deref(), Some("connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_make_deletions_and_creations_visible() {
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    assert_eq!(app.status(1, 2).await, None);
    assert_eq!(
        app.status_of(1, "3").await.status(),
        404,
        "3 does not exist yet (cached)"
    );

    app.store
        .sql("UPDATE users SET deleted_at = NOW(6) WHERE id = 2")
        .await;
    app.users(&[3]).await;
    assert_eq!(
        app.status(1, 2).await,
        None,
        "still cached before the events"
    );
    assert_eq!(
        app.status_of(1, "3").await.status(),
        404,
        "still cached before the events"
    );

    let response = app
        .events(&json!([
            {"type": "user.deleted", "data": {"user": {"id": 2}}},
            {"type": "user.created", "data": {"user": {"id": "3"}}}
        ]))
        .await;
    assert_eq!(
        response.json::<Value>().await.expect("json"),
        json!({"processed": 2, "ignored": 0})
    );
    assert_eq!(app.status_of(1, "2").await.status(), 404, "deleted");
    assert_eq!(app.status(1, 3).await, None, "created");

    // A hard-deleted user row is gone from the cache too.
    app.store.sql("DELETE FROM users WHERE id = 3").await;
    app.events(&json!({"type": "user.deleted", "data": {"user": {"id": 3}}}))
        .await;
    assert_eq!(app.status_of(1, "3").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_endpoint_needs_the_internal_token_and_is_not_public() {
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    let url = format!("{}/internal/v1/events", app.admin());
    let body = connection_event("connection.created", 1, 2);
    let cases = [
        (None, "Authentication credentials were not provided."),
        (Some("Bearer wrong-token".to_owned()), "Invalid token."),
        (Some(format!("Bearer {}", app.token(1))), "Invalid token."),
        (Some("Bearer ".to_owned()), "Invalid token."),
    ];
    for (header, detail) in cases {
        let mut request = app.client.post(&url).json(&body);
        if let Some(h) = &header {
            request = request.header("Authorization", h);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 401, "{header:?}");
        assert!(response.headers().get("www-authenticate").is_some());
        assert_eq!(
            response.json::<Value>().await.expect("json"),
            json!({"detail": detail})
        );
    }
    let public = app
        .client
        .post(format!("{}/internal/v1/events", app.address))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(
        public.status(),
        404,
        "/internal/* does not exist on the public listener"
    );
    let health = app
        .client
        .get(format!("{}/readyz", app.admin()))
        .send()
        .await
        .expect("request");
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_400_and_nothing_of_the_request_is_applied() {
    use secrecy::ExposeSecret;
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    assert_eq!(app.status(1, 2).await, None);
    app.store
        .sql("INSERT INTO user_connections (user_low, user_high, state) VALUES (1, 2, 'connected')")
        .await;
    let token = app.settings.internal_token.expose_secret().to_owned();
    let url = format!("{}/internal/v1/events", app.admin());

    // A good event followed by a bad one: the good one must not be applied.
    let bodies = [
        (
            json!([connection_event("connection.created", 1, 2), {"type": "connection.created", "data": {}}]),
            "[1].data",
        ),
        (
            json!({"type": "connection.deleted", "data": {"from_user": {"id": 1}, "to_user": {"id": "x"}}}),
            "data.to_user.id",
        ),
        (json!({"data": {"user": {"id": 1}}}), "type"),
        (json!(42), "body"),
    ];
    for (body, field) in bodies {
        let response = app.events(&body).await;
        assert_eq!(response.status(), 400, "{body}");
        let detail = response.json::<Value>().await.expect("json")["detail"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(detail.contains(field), "{detail} names {field}");
    }
    let not_json = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(not_json.status(), 400);
    let wrong_type = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("Content-Type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(wrong_type.status(), 415);
    let huge = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .expect("request");
    assert_eq!(huge.status(), 413);
    assert_eq!(
        huge.json::<Value>().await.expect("json")["detail"],
        "Request body is larger than 1048576 bytes."
    );
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let nested = app
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .body(deep)
        .send()
        .await
        .expect("request");
    assert_eq!(nested.status(), 400);

    assert_eq!(
        app.status(1, 2).await,
        None,
        "no event of those requests was applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_read_before_a_committed_write_arrives_late_and_is_refused() {
    // Arrange: a reader's view of the pair at version 1 (pending by 1).
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    app.store
        .sql("INSERT INTO user_connections (user_low, user_high, state, requested_by) VALUES (1, 2, 'pending', 1)")
        .await;
    let pair = Pair::new(id(1), id(2)).expect("pair");
    let cache = app.store.cache();
    let lease = cache
        .lease(&[Subject::Pair(pair)], LeaseFor::Reader(id(1)))
        .await
        .expect("lease")
        .pop()
        .flatten()
        .expect("the key was empty");
    let mut conn = app.store.connection().await;
    let slow_read = reads::snapshot(&mut conn, id(2), Some(pair))
        .await
        .expect("read");
    assert_eq!(slow_read.pair.map(|p| p.version), Some(1));

    // Act: a writer commits version 2 (accepted) and refreshes; then the slow
    // reader's fill of version 1 arrives.
    assert_eq!(app.act(2, "1", "accept").await.status(), 200);
    let relation = slow_read.pair.expect("pair read");
    let written = cache
        .fill_leased(&[(lease, Some(Entry::Pair(pair, relation)))])
        .await
        .expect("fill");

    // Assert: refused; the cache and every reader have version 2.
    assert_eq!(written, 0);
    assert_eq!(app.store.cached("p:1:2").await.as_deref(), Some("2:c"));
    assert_eq!(app.status(1, 2).await.as_deref(), Some("connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_while_redis_is_unreachable_lands_in_the_cache_once_it_is_back() {
    // Arrange: a private Redis the test can pause, holding the pair as "none".
    let redis = PrivateRedis::start().await;
    let app = spawn_app_with(&[
        ("redis_url", json!(redis.url())),
        ("refresh_retry_ms", json!(200)),
        ("redis_breaker_ms", json!(200)),
    ])
    .await;
    app.users(&[1, 2]).await;
    assert_eq!(app.status(1, 2).await, None);
    let prefix = app.store.prefix.clone();
    assert_eq!(redis.entry(&prefix, "p:1:2").await.as_deref(), Some("0:n"));

    // Act: Redis stops answering (clients paused); a mutation commits.
    redis
        .command(&["CLIENT", "PAUSE", "1500", "ALL"])
        .await
        .expect("pause");
    let started = Instant::now();
    let response = app.act(1, "2", "request").await;
    assert_eq!(
        response.status(),
        200,
        "a Redis failure never fails a committed mutation"
    );
    assert!(
        app.store.queued().await >= 1,
        "the refresh is queued in MySQL"
    );
    assert_eq!(
        app.status(2, 1).await.as_deref(),
        Some("received_connection_request"),
        "answered from MySQL meanwhile"
    );

    // Assert: once Redis answers again the queued refresh lands, unaided.
    loop {
        if redis.entry(&prefix, "p:1:2").await.as_deref() == Some("1:l")
            && redis.entry(&prefix, "p:2:1").await.as_deref() == Some("1:l")
            && app.store.queued().await == 0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the queued refresh did not land"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "landed {:?} after the mutation (pause 1.5 s)",
        started.elapsed()
    );
    assert_eq!(
        app.status(1, 2).await.as_deref(),
        Some("sent_connection_request")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_recorded_first_so_a_mysql_failure_mid_batch_loses_none() {
    use diesel_async::SimpleAsyncConnection;
    // Arrange: pairs (1, 2), (1, 3) and users 2, 4 cached; then an external
    // writer connects 1 and 2, has 3 ask 1, and deletes 4, sending no event.
    let app = spawn_app_with(&[
        ("refresh_retry_ms", json!(200)),
        ("mysql_timeout_ms", json!(500)),
    ])
    .await;
    app.users(&[1, 2, 3, 4]).await;
    for other in [2, 3, 4] {
        assert_eq!(app.status(1, other).await, None);
    }
    app.store
        .sql(
            "INSERT INTO user_connections (user_low, user_high, state, requested_by) VALUES
             (1, 2, 'connected', NULL), (1, 3, 'pending', 3);
             UPDATE users SET deleted_at = NOW(6) WHERE id = 4",
        )
        .await;
    // MySQL stops answering reads of users mid-batch: a second session
    // holds the table, so every user refresh times out; pairs still read.
    let mut locker = app.store.connection().await;
    locker
        .batch_execute("LOCK TABLES users WRITE")
        .await
        .expect("lock");

    // Act: one batch naming both pairs and two users.
    let batch = json!([
        connection_event("connection.created", 1, 2),
        connection_event("connection_request.created", 3, 1),
        {"type": "user.deleted", "data": {"user": {"id": 4}}},
        {"type": "user.created", "data": {"user": {"id": 2}}},
    ]);
    let response = app.events(&batch).await;

    // Assert: acknowledged; what could be refreshed is in the cache at once,
    // the rest is recorded.
    assert_eq!(response.status(), 200, "recorded, so acknowledged");
    assert_eq!(
        response.json::<Value>().await.expect("json"),
        json!({"processed": 4, "ignored": 0})
    );
    assert_eq!(app.status(1, 2).await.as_deref(), Some("connected"));
    assert_eq!(
        app.status(1, 3).await.as_deref(),
        Some("received_connection_request")
    );
    assert_eq!(app.status(1, 4).await, None, "not refreshed yet");
    assert!(app.store.queued().await >= 2, "the users' refreshes wait");

    // MySQL answers again: the sweeper lands them, unaided.
    locker.batch_execute("UNLOCK TABLES").await.expect("unlock");
    let answered = Instant::now();
    while app.status_of(1, "4").await.status() != 404 || app.store.queued().await > 0 {
        assert!(
            answered.elapsed() < Duration::from_secs(5),
            "the recorded refreshes did not land"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "recorded refreshes landed {:?} after MySQL answered",
        answered.elapsed()
    );

    // Only a failure to record is a 503: then nothing is acknowledged.
    locker
        .batch_execute("LOCK TABLES cache_refresh_queue WRITE")
        .await
        .expect("lock");
    let response = app
        .events(&json!({"type": "user.deleted", "data": {"user": {"id": 3}}}))
        .await;
    locker.batch_execute("UNLOCK TABLES").await.expect("unlock");
    assert_eq!(response.status(), 503, "not recorded, not acknowledged");
    assert!(response.headers().get("retry-after").is_some());
}
