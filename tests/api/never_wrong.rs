//! The cache's stale windows, each forced open on purpose at the worst
//! moment: an answer must never be older than MySQL once writes stop.

use serde_json::json;

use crate::helpers::{another_instance, mysql_server, spawn_app, HoldingProxy, TestApp};

/// Instance A, over `b`'s database and keys, reaching MySQL through a proxy
/// that can hold its replies back, with one pooled connection.
async fn behind_a_proxy(b: &TestApp) -> (TestApp, HoldingProxy) {
    let server = mysql_server();
    let upstream = server.rsplit('@').next().unwrap_or(&server);
    let proxy = HoldingProxy::start(upstream).await;
    // (mysql_async would otherwise switch to MariaDB's Unix socket, around
    // the proxy.)
    let proxied = format!(
        "{}?prefer_socket=false",
        b.store
            .database_url
            .replace(upstream, &format!("127.0.0.1:{}", proxy.port))
    );
    let a = another_instance(
        b,
        &[
            ("database_url", json!(proxied)),
            ("mysql_pool_size", json!(1)),
        ],
    )
    .await;
    (a, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_fill_never_lands_after_a_newer_entry_was_evicted() {
    // Arrange: instance B talks to MySQL directly; instance A, over the same
    // database and keys, through a proxy that can hold MySQL's replies back.
    let b = spawn_app().await;
    b.users(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]).await;
    let (a, proxy) = behind_a_proxy(&b).await;
    // A's one pooled connection is made now, not while replies are held.
    assert_eq!(a.status(10, 9).await, None);

    for other in 2..=9u64 {
        // Act: A misses on (1, other) and reads MySQL (no relation yet); its
        // reply is held. Meanwhile B requests a connection (commit and
        // refresh), and the refreshed entry is evicted. Then A's reply goes on.
        proxy.hold();
        let reader = {
            let a_url = a.address.clone();
            let token = a.token(1);
            tokio::spawn(async move {
                reqwest::Client::new()
                    .get(format!("{a_url}/api/v2/user/{other}/connection_status/"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("request")
                    .status()
            })
        };
        proxy.until_a_reply_is_held().await;
        assert_eq!(b.act(1, &other.to_string(), "request").await.status(), 200);
        b.store.evict(&format!("p:1:{other}")).await;
        proxy.release();
        assert_eq!(reader.await.expect("task"), 200);

        // Assert: the old "no relation" was not put back; every read says
        // what MySQL says.
        let cached = b.store.cached(&format!("p:1:{other}")).await;
        assert!(
            cached.as_deref() != Some("0:n"),
            "pair (1, {other}): the late fill landed: {cached:?}"
        );
        assert_eq!(
            a.status(1, other).await.as_deref(),
            Some("sent_connection_request"),
            "pair (1, {other}) through A"
        );
        assert_eq!(
            b.status(other, 1).await.as_deref(),
            Some("received_connection_request"),
            "pair (1, {other}) through B"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_deleted_for_good_and_created_again_is_found_again() {
    // Arrange: user 7 is soft-deleted and the cache knows it ("gone" at
    // version 2); then the row is deleted for good, with no event.
    let app = spawn_app().await;
    app.users(&[1, 7]).await;
    assert_eq!(app.status(1, 7).await, None);
    app.store
        .sql("UPDATE users SET deleted_at = NOW(6) WHERE id = 7")
        .await;
    let deleted = json!({"type": "user.deleted", "data": {"user": {"id": 7}}});
    assert_eq!(app.events(&deleted).await.status(), 200);
    assert_eq!(app.status_of(1, "7").await.status(), 404);
    app.store.sql("DELETE FROM users WHERE id = 7").await;

    // Act: the user is created again, and the event sent.
    app.users(&[7]).await;
    let created = json!({"type": "user.created", "data": {"user": {"id": 7}}});
    assert_eq!(app.events(&created).await.status(), 200);

    // Assert: found; its version continued above the deleted row's.
    assert_eq!(app.status(1, 7).await, None, "found, no relation");
    let cached = app.store.cached("u:7").await.expect("cached");
    assert!(cached.ends_with(":a"), "{cached}");
    let version: u64 = cached
        .split(':')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a version");
    assert!(version > 2, "the version went back to {version}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_never_existed_leave_one_short_lived_entry_each() {
    let app = spawn_app_with_short_negatives().await;
    app.users(&[1]).await;
    for id in [424_242u64, 9_000_000_001, 77] {
        assert_eq!(app.status_of(1, &id.to_string()).await.status(), 404);
        let mut redis = app.store.redis().await;
        let user_ttl: i64 = redis::cmd("TTL")
            .arg(crate::helpers::spot(&app.store.prefix, &format!("u:{id}")).0)
            .query_async(&mut redis)
            .await
            .expect("TTL");
        assert!(
            (1..=30).contains(&user_ttl),
            "user {id}: TTL {user_ttl}, want the negative TTL (30 s)"
        );
        assert_eq!(
            app.store.cached(&format!("p:1:{id}")).await,
            None,
            "no pair entry for a user that does not exist"
        );
        // Still answered from the cache while it lasts.
        assert_eq!(app.status_of(1, &id.to_string()).await.status(), 404);
    }
}

async fn spawn_app_with_short_negatives() -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(&[("negative_ttl_seconds", json!(30))]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_refresh_never_lands_after_a_newer_entry_was_evicted() {
    // Arrange as for the reader's fill: A reaches MySQL through a proxy that
    // can hold replies; B directly.
    let b = spawn_app().await;
    b.users(&[1, 2, 3, 4]).await;
    let (a, proxy) = behind_a_proxy(&b).await;
    // A's one pooled connection is made now, not while replies are held.
    assert_eq!(a.status(4, 3).await, None);

    for other in 2..=3u64 {
        // Act: an event makes A refresh (1, other): it reads "no relation",
        // and the reply is held. B then connects the pair (commit, refresh),
        // the entry is evicted, and A's refresh goes on.
        proxy.hold();
        let event = json!({"type": "connection.created",
                           "data": {"from_user": {"id": 1}, "to_user": {"id": other}}});
        let refresher = {
            let a_admin = a.admin();
            let token = secrecy::ExposeSecret::expose_secret(&a.settings.internal_token).to_owned();
            tokio::spawn(async move {
                reqwest::Client::new()
                    .post(format!("{a_admin}/internal/v1/events"))
                    .bearer_auth(token)
                    .json(&event)
                    .send()
                    .await
                    .expect("request")
                    .status()
            })
        };
        proxy.until_a_reply_is_held().await;
        assert_eq!(b.act(1, &other.to_string(), "request").await.status(), 200);
        assert_eq!(b.act(other, "1", "accept").await.status(), 200);
        b.store.evict(&format!("p:1:{other}")).await;
        proxy.release();
        assert_eq!(refresher.await.expect("task"), 200);

        // Assert: the old state was not written back.
        let cached = b.store.cached(&format!("p:1:{other}")).await;
        assert!(
            cached.as_deref() != Some("0:n"),
            "pair (1, {other}): the late refresh landed: {cached:?}"
        );
        assert_eq!(a.status(1, other).await.as_deref(), Some("connected"));
        assert_eq!(b.status(other, 1).await.as_deref(), Some("connected"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_stalls_every_entry_agrees_with_mysql_within_two_seconds() {
    // Arrange: a service on a Redis of the test's own, two pairs cached.
    let mut redis = crate::helpers::PrivateRedis::start().await;
    // Default timeouts, breaker and retry interval: the bound is the
    // service's, not a test's tuning.
    let app = crate::helpers::spawn_app_with(&[("redis_url", json!(redis.url()))]).await;
    app.users(&[1, 2, 3]).await;
    for round in 0..20 {
        if round % 2 == 0 {
            // Every other round right after a restart (an empty Redis, new
            // connections, scripts to load again).
            redis.restart().await;
        }
        // Both pairs cached (status() insists on a 200).
        app.status(1, 2).await;
        app.status(1, 3).await;

        // Act: Redis stops answering; a mutation goes through the API and an
        // external write is announced by an event; then Redis resumes.
        redis.pause();
        let action = if round % 2 == 0 {
            "request"
        } else {
            "cancel_request"
        };
        assert_eq!(app.act(1, "2", action).await.status(), 200, "round {round}");
        let state = if round % 2 == 0 { "connected" } else { "none" };
        app.store
            .sql(&format!(
                "INSERT INTO user_connections (user_low, user_high, state) VALUES (1, 3, '{state}') \
                 ON DUPLICATE KEY UPDATE state = '{state}', requested_by = NULL, rejected_at = NULL"
            ))
            .await;
        let event = json!({"type": "connection.created",
                           "data": {"from_user": {"id": 1}, "to_user": {"id": 3}}});
        assert_eq!(app.events(&event).await.status(), 200, "round {round}");
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        redis.resume();

        // Assert: within 2 s every entry agrees with MySQL.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let agree = entries_agree(&app, &redis, &[(1, 2), (1, 3)]).await;
            if agree.is_ok() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: 2 s after Redis resumed: {agree:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Whether each pair's cache entry is absent or holds the row's version and
/// state, and each answer is MySQL's.
async fn entries_agree(
    app: &crate::helpers::TestApp,
    redis: &crate::helpers::PrivateRedis,
    pairs: &[(u64, u64)],
) -> Result<(), String> {
    for &(low, high) in pairs {
        let (state, by, rejected, version) = app.store.row(low, high).await.expect("row");
        let code = match (state.as_str(), by, rejected) {
            ("none", ..) => "n",
            ("connected", ..) => "c",
            ("pending", Some(b), false) if b == low => "l",
            ("pending", Some(_), false) => "h",
            ("pending", Some(b), true) if b == low => "L",
            _ => "H",
        };
        let want = format!("{version}:{code}");
        let seen_by_low = match code {
            "c" => Some("connected"),
            "l" | "L" => Some("sent_connection_request"),
            "h" => Some("received_connection_request"),
            _ => None,
        };
        let answer = app.status(low, high).await;
        if answer.as_deref() != seen_by_low {
            return Err(format!(
                "{low} -> {high} answers {answer:?}, MySQL says {seen_by_low:?}"
            ));
        }
        let cached = redis
            .entry(&app.store.prefix, &format!("p:{low}:{high}"))
            .await;
        match cached.as_deref() {
            None => {}
            Some(v) if v == want || v.starts_with('~') => {}
            Some(v) => return Err(format!("p:{low}:{high} holds {v}, MySQL has {want}")),
        }
    }
    Ok(())
}
