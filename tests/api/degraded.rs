//! Dependencies that misbehave without failing outright: a Redis that drops
//! packets, a flood of probes. Answers stay right and bounded in time.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{metrics_text, spawn_app_with};

/// The value of an unlabelled counter (or the sum of a histogram's
/// `_count`) in a Prometheus text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| rest.split_whitespace().last())
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A listener whose accept queue is full and never served: connections to
/// it hang (the kernel drops their SYNs), as to a blackholed host. Returns
/// its address and what keeps it full.
async fn blackhole() -> (
    std::net::SocketAddr,
    Vec<tokio::net::TcpStream>,
    tokio::net::TcpListener,
) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    (addr, fillers, listener)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_redis_costs_each_request_at_most_the_redis_timeout() {
    // Arrange: Redis "answers" from a host that drops every packet.
    let (addr, _fillers, _listener) = blackhole().await;
    let app = spawn_app_with(&[
        ("redis_url", json!(format!("redis://{addr}"))),
        ("redis_timeout_ms", json!(500)),
        ("redis_breaker_ms", json!(200)),
    ])
    .await;
    app.users(&[1, 2]).await;
    app.store
        .sql("INSERT INTO user_connections (user_low, user_high, state) VALUES (1, 2, 'connected')")
        .await;

    // Act: requests one after another for a while, each timed.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(3) {
        let asked = Instant::now();
        assert_eq!(app.status(1, 2).await.as_deref(), Some("connected"));
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Assert: right answers, none held much beyond one Redis timeout.
    assert!(
        slowest < Duration::from_millis(900),
        "the slowest request took {slowest:?} (Redis timeout 500 ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_breaker_one_probe_goes_first_while_the_others_skip_redis() {
    // Arrange: a blackholed Redis, a short breaker, many clients at once.
    let (addr, _fillers, _listener) = blackhole().await;
    let app = std::sync::Arc::new(
        spawn_app_with(&[
            ("redis_url", json!(format!("redis://{addr}"))),
            ("redis_timeout_ms", json!(100)),
            ("redis_breaker_ms", json!(200)),
        ])
        .await,
    );
    app.users(&[1, 2]).await;
    let before = metric(&metrics_text(&app).await, "connstatus_redis_errors_total");

    // Act: 16 clients asking as fast as they can for 2 s.
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(2) {
                    assert_eq!(app.status(1, 2).await, None);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client");
    }

    // Assert: after the first wave (16 requests at once, before anything
    // was known), Redis was tried about once per breaker period (2 s /
    // (200 ms breaker + 100 ms timeout) ≈ 7), not by every waiting request.
    let errors = metric(&metrics_text(&app).await, "connstatus_redis_errors_total") - before;
    assert!(errors <= 16 + 12, "{errors} Redis calls failed in 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_readiness_probes_takes_almost_no_mysql_connections() {
    // The queue's sweeper also takes connections: once at start, then not
    // again within the test.
    let app = spawn_app_with(&[("refresh_retry_ms", json!(60_000))]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let checkouts = async || {
        metric(
            &metrics_text(&app).await,
            "connstatus_mysql_pool_wait_seconds_count",
        )
    };
    let before = checkouts().await;
    let started = Instant::now();
    let probes: Vec<_> = (0..200)
        .map(|_| {
            let client = app.client.clone();
            let url = format!("{}/readyz", app.address);
            tokio::spawn(async move { client.get(url).send().await.expect("probe").status() })
        })
        .collect();
    for probe in probes {
        assert_eq!(probe.await.expect("probe"), 200);
    }
    let seconds = started.elapsed().as_secs();
    let taken = checkouts().await - before;
    // One check a second (the public listener has one worker here), however
    // long a loaded machine takes to answer the flood.
    assert!(
        taken <= seconds + 1,
        "200 probes in {seconds} s took {taken} MySQL connections"
    );
}
