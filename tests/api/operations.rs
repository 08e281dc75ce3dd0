//! Operating behind a gateway: request ids, load shedding, metrics,
//! readiness and drain on SIGTERM, hostile clients.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use diesel_async::SimpleAsyncConnection;
use serde_json::json;

use crate::helpers::{metrics_text, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sane_request_id_is_kept_and_any_other_replaced() {
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    let url = format!("{}/api/v2/user/2/connection_status/", app.address);
    let kept = app
        .client
        .get(&url)
        .bearer_auth(app.token(1))
        .header("X-Request-Id", "gw-42.a_b:c")
        .send()
        .await
        .expect("request");
    assert_eq!(
        kept.headers().get("x-request-id").map(|v| v.as_bytes()),
        Some(&b"gw-42.a_b:c"[..])
    );
    for bad in ["has space", "<script>", &"x".repeat(200)] {
        let response = app
            .client
            .get(&url)
            .bearer_auth(app.token(1))
            .header("X-Request-Id", bad)
            .send()
            .await
            .expect("request");
        let id = response
            .headers()
            .get("x-request-id")
            .expect("an id")
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_ne!(id, bad);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    }
    let errors_too = app.client.get(&url).send().await.expect("request");
    assert_eq!(errors_too.status(), 401);
    assert!(errors_too.headers().get("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_inflight_cap_requests_get_429_at_once_and_the_service_recovers() {
    // Arrange: a cap of 2, and a pair row locked by a transaction of the
    // test's, so that mutations of it wait (in flight) until it ends.
    let app = spawn_app_with(&[
        ("max_inflight", json!(2)),
        ("mysql_timeout_ms", json!(10_000)),
    ])
    .await;
    app.users(&[1, 2, 3]).await;
    app.store
        .sql("INSERT INTO user_connections (user_low, user_high, state) VALUES (1, 2, 'none')")
        .await;
    let mut lock = app.store.connection().await;
    lock.batch_execute(
        "BEGIN; SELECT * FROM user_connections WHERE user_low = 1 AND user_high = 2 FOR UPDATE",
    )
    .await
    .expect("lock");
    let app = std::sync::Arc::new(app);
    let blocked: Vec<_> = (0..2)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.act(1, "2", "request").await.status().as_u16() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Act: one more request.
    let started = Instant::now();
    let shed = app.status_of(1, "3").await;

    // Assert: 429 at once, with Retry-After; health still answers.
    assert_eq!(shed.status(), 429);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(shed.headers().get("retry-after").is_some());
    let body: serde_json::Value = shed.json().await.expect("json");
    assert!(body["detail"].is_string());
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200, "probes are never shed");

    lock.batch_execute("ROLLBACK").await.expect("unlock");
    for task in blocked {
        assert_eq!(task.await.expect("task"), 200);
    }
    assert_eq!(app.status(1, 3).await, None, "healthy afterwards");
    let metrics = metrics_text(&app).await;
    assert!(
        metrics.contains("connstatus_http_shed_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_cache_and_pools() {
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    app.status(1, 2).await; // a miss, then a hit
    app.status(1, 2).await;
    let _ = app.status_of(1, "abc").await;
    let text = metrics_text(&app).await;
    for wanted in [
        r#"connstatus_http_requests_total{route="/api/v2/user/{id}/connection_status/",method="GET",status="200"} 2"#,
        r#"connstatus_http_requests_total{route="/api/v2/user/{id}/connection_status/",method="GET",status="404"} 1"#,
        "connstatus_http_request_duration_seconds_bucket{route=\"/api/v2/user/{id}/connection_status/\",le=",
        r#"connstatus_cache_lookups_total{result="hit"} 1"#,
        r#"connstatus_cache_lookups_total{result="miss"} 1"#,
        r#"connstatus_cache_fills_total{result="written"} 2"#,
        r#"connstatus_mysql_pool_connections{state="max"} 16"#,
        r#"connstatus_redis_pool_connections{state="max"} 4"#,
        "connstatus_mysql_pool_wait_seconds_bucket",
        "connstatus_redis_breaker_open 0",
        "connstatus_http_inflight",
    ] {
        assert!(text.contains(wanted), "missing {wanted} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_samples_are_folded_away_without_a_scraper() {
    // The recorder holds every histogram sample until an upkeep runs; with
    // no upkeep and no scraper the service's memory grew by ~1 MB/s under
    // load. The upkeep must run by itself, without anyone reading /metrics.
    let app = spawn_app_with(&[("metrics_upkeep_ms", json!(100))]).await;
    app.users(&[1, 2]).await;
    app.status(1, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = metrics_text(&app).await;
    let runs = text
        .lines()
        .find_map(|l| l.strip_prefix("connstatus_metrics_upkeep_total "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(runs >= 2, "the upkeep ran {runs} times in 500 ms:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_4xx_or_a_closed_connection_never_a_500() {
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    let url = format!("{}/api/v2/user/2/connection_status/", app.address);

    // A 64 KiB header: 431 (a closed connection would do too).
    let huge = app
        .client
        .get(&url)
        .bearer_auth(app.token(1))
        .header("X-Filler", "a".repeat(64 * 1024))
        .send()
        .await;
    if let Ok(response) = huge {
        assert_eq!(response.status(), 431);
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body, json!({"detail": "Request headers are too large."}));
    }
    // Many small headers add up the same way.
    let mut many = app.client.get(&url).bearer_auth(app.token(1));
    for i in 0..90 {
        many = many.header(format!("x-h{i}"), "b".repeat(200));
    }
    assert_eq!(many.send().await.expect("request").status(), 431);
    // A 10 MiB body.
    let body = app
        .client
        .post(format!("{}/api/v2/user/connection/statuses/", app.address))
        .bearer_auth(app.token(1))
        .header("Content-Type", "application/json")
        .body(vec![b'1'; 10 * 1024 * 1024])
        .send()
        .await;
    if let Ok(response) = body {
        assert_eq!(response.status(), 413);
    }
    // A slowloris: headers a byte at a time, never finished. The server cuts
    // it off (408 or a close) instead of holding a worker forever.
    let address = app.address.trim_start_matches("http://").to_owned();
    let slow = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let started = Instant::now();
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " {
            if stream.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        loop {
            if stream.write_all(b"a").is_err() || started.elapsed() > Duration::from_secs(12) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        (
            started.elapsed(),
            String::from_utf8_lossy(&answer).into_owned(),
        )
    });
    let (took, answer) = slow.await.expect("slow client");
    assert!(
        took < Duration::from_secs(12),
        "the slow client was held {took:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // And the service is fine.
    assert_eq!(app.status(1, 2).await, None);
}

/// What a client that sends its body one byte a second ends up with.
#[derive(Debug)]
enum Trickled {
    /// The server answered (the head of its answer).
    Answered(String),
    /// The server closed the connection without an answer.
    Closed,
    /// Still open, unanswered, when the client gave up.
    Open,
}

/// A batch request whose head is complete (valid token, JSON, 100 bytes
/// announced) but whose body arrives one byte a second, for at most `for_`.
async fn trickle(address: String, token: String, for_: Duration) -> Trickled {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/v2/user/connection/statuses/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while started.elapsed() < for_ {
        if stream.write_all(b" ").await.is_err() {
            return Trickled::Closed;
        }
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) if answer.is_empty() => return Trickled::Closed,
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    if answer.is_empty() {
        Trickled::Open
    } else {
        Trickled::Answered(String::from_utf8_lossy(&answer).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_bodies_are_cut_off_and_free_their_inflight_slots() {
    // Arrange: four slots, a body deadline of 2 s.
    let app = spawn_app_with(&[
        ("max_inflight", json!(4)),
        ("body_timeout_ms", json!(2_000)),
    ])
    .await;
    app.users(&[1, 2]).await;
    let address = app.address.trim_start_matches("http://").to_owned();

    // Act: four clients take every slot and trickle their bodies.
    let started = Instant::now();
    let tricklers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(trickle(
                address.clone(),
                app.token(1),
                Duration::from_secs(6),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let while_held = app.status_of(1, "2").await.status();

    // Assert: while they hold the slots a plain GET is shed; once the
    // deadline (plus margin) has passed each got 408 or a closed connection,
    // and the slots are free again.
    assert_eq!(while_held, 429, "the four tricklers hold every slot");
    for trickler in tricklers {
        let outcome = trickler.await.expect("trickler");
        match &outcome {
            Trickled::Answered(head) => assert!(head.starts_with("HTTP/1.1 408"), "{head}"),
            Trickled::Closed => {}
            Trickled::Open => panic!("a trickler was still held after {:?}", started.elapsed()),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "cut off only after {:?}",
        started.elapsed()
    );
    assert_eq!(app.status(1, 2).await, None, "the slots are free again");
}
