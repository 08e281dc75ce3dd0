//! The real `connstatus` binary, configured only through the documented
//! environment variable names.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{redis_url, Isolated};

/// How many migrations `migrations/` holds.
fn migrations() -> usize {
    std::fs::read_dir("migrations")
        .expect("migrations/")
        .count()
}

pub(crate) fn connstatus(store: &Isolated) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_connstatus"));
    command
        .env("DATABASE_URL", &store.database_url)
        .env("REDIS_URL", redis_url())
        .env("CONNSTATUS_REDIS_PREFIX", &store.prefix)
        .env("CONNSTATUS_BIND", "127.0.0.1:0")
        .env("CONNSTATUS_ADMIN_BIND", "127.0.0.1:0")
        .env("CONNSTATUS_WORKERS", "1")
        .env("CONNSTATUS_DRAIN_SECONDS", "1")
        .env_remove("CONNSTATUS_ENV")
        .env_remove("CONNSTATUS_JWT_SECRET")
        .env_remove("RUST_LOG");
    command
}

/// Starts `connstatus serve` and waits for the public address it logs.
pub(crate) fn serve(command: &mut Command) -> (std::process::Child, String) {
    let mut child = command.stderr(Stdio::piped()).spawn().expect("start serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.trim().to_owned());
            }
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("serve reports its address");
    (child, address)
}

fn output(command: &mut Command) -> (i32, String, String) {
    let out = command.output().expect("run connstatus");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_token_and_a_request_work_from_the_binary_and_sigterm_exits_zero() {
    let store = Isolated::new().await;
    let (code, seeded, _) = output(connstatus(&store).args([
        "seed",
        "--users",
        "50",
        "--connections",
        "300",
        "--reset",
    ]));
    assert_eq!(code, 0, "{seeded}");
    let example = seeded
        .lines()
        .find(|l| l.starts_with("example: user 1 -> user ") && l.ends_with(": connected"))
        .expect("seed names a connected example");
    let other: u64 = example
        .trim_start_matches("example: user 1 -> user ")
        .trim_end_matches(": connected")
        .parse()
        .expect("an id");
    let (code, token, _) =
        output(connstatus(&store).args(["token", "--user", "1", "--ttl", "10m"]));
    assert_eq!(code, 0);

    let (mut child, address) = serve(connstatus(&store).arg("serve"));

    let response = reqwest::Client::new()
        .get(format!(
            "http://{address}/api/v2/user/{other}/connection_status/"
        ))
        .bearer_auth(token.trim())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body, serde_json::json!({"connection_status": "connected"}));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    let store = Isolated::new().await;
    for (name, value) in [
        ("CONNSTATUS_MAX_INFLIGHT", "lots"),
        ("CONNSTATUS_BIND", "not-an-address"),
        ("CONNSTATUS_JWT_ALGORITHM", "none"),
        ("DATABASE_URL", "postgres://x/y"),
        ("CONNSTATUS_JWT_SECRET", ""),
    ] {
        let (code, _, stderr) = output(connstatus(&store).env(name, value).arg("serve"));
        assert_eq!(code, 2, "{name}={value}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{name}: one line: {stderr}"
        );
        assert!(stderr.contains(name), "{name} named in: {stderr}");
    }
    // A public key that does not exist, for RS256.
    let (code, _, stderr) = output(
        connstatus(&store)
            .env("CONNSTATUS_JWT_ALGORITHM", "RS256")
            .env("CONNSTATUS_JWT_PUBLIC_KEY", "tests/fixtures/missing.pem")
            .arg("serve"),
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("CONNSTATUS_JWT_PUBLIC_KEY"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_value_is_reported_exactly_as_the_readme_shows() {
    let store = Isolated::new().await;
    for (name, value, line) in [
        (
            "CONNSTATUS_MAX_INFLIGHT",
            "lots",
            r#"configuration error: CONNSTATUS_MAX_INFLIGHT: invalid type: found string "lots", expected usize"#,
        ),
        (
            "CONNSTATUS_MAX_INFLIGHT",
            "0",
            "configuration error: CONNSTATUS_MAX_INFLIGHT: must be greater than 0",
        ),
        (
            "CONNSTATUS_JWT_CACHE_SIZE",
            "lots",
            r#"configuration error: CONNSTATUS_JWT_CACHE_SIZE: invalid type: found string "lots", expected usize"#,
        ),
    ] {
        let (code, _, stderr) = output(
            connstatus(&store)
                .env(name, value)
                .args(["token", "--user", "1"]),
        );
        assert_eq!(code, 2, "{name}={value}: {stderr}");
        assert_eq!(stderr.trim_end(), line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_refuses_the_development_secrets() {
    let store = Isolated::new().await;
    let (code, _, stderr) = output(
        connstatus(&store)
            .env("CONNSTATUS_ENV", "production")
            .arg("serve"),
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("CONNSTATUS_INTERNAL_TOKEN") || stderr.contains("CONNSTATUS_JWT_SECRET"),
        "{stderr}"
    );
    let (code, _, stderr) = output(
        connstatus(&store)
            .env("CONNSTATUS_ENV", "production")
            .env("CONNSTATUS_INTERNAL_TOKEN", "p".repeat(40))
            .arg("serve"),
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("CONNSTATUS_JWT_SECRET"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_or_under_an_unknown_profile_nothing_runs_on_development_secrets() {
    // `token` binds nothing: the configuration alone decides, and with the
    // development secret it would mint a token anyone could mint.
    let store = Isolated::new().await;
    let own_token = "t".repeat(40);
    for (env, named) in [
        (
            vec![("CONNSTATUS_BIND", "0.0.0.0:8080")],
            "CONNSTATUS_INTERNAL_TOKEN",
        ),
        (
            vec![
                ("CONNSTATUS_ADMIN_BIND", "0.0.0.0:9091"),
                ("CONNSTATUS_INTERNAL_TOKEN", own_token.as_str()),
            ],
            "CONNSTATUS_JWT_SECRET",
        ),
        (vec![("CONNSTATUS_ENV", "stagin")], "CONNSTATUS_ENV"),
    ] {
        let mut command = connstatus(&store);
        command
            .envs(env.iter().copied())
            .args(["token", "--user", "1"]);
        let (code, stdout, stderr) = output(&mut command);
        assert_eq!(code, 2, "{env:?}: {stdout}{stderr}");
        assert_eq!(stdout, "", "{env:?}: no token is minted");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{env:?}: one line: {stderr}"
        );
        assert!(
            stderr.starts_with(&format!("configuration error: {named}: ")),
            "{env:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_database_and_is_idempotent() {
    let store = Isolated::new().await;
    let fresh = Isolated {
        database_url: format!(
            "{}/{}",
            crate::helpers::mysql_server(),
            crate::helpers::unique("cs_test_new_")
        ),
        prefix: store.prefix.clone(),
        owned: true,
    };
    let mut command = connstatus(&store);
    command
        .env("DATABASE_URL", &fresh.database_url)
        .arg("migrate");
    let (code, stdout, stderr) = output(&mut command);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("migrations applied: {}", migrations())),
        "{stdout}"
    );
    let (code, stdout, _) = output(&mut command);
    assert_eq!(code, 0);
    assert!(stdout.contains("migrations applied: 0"), "{stdout}");
    fresh.sql("SELECT COUNT(*) FROM user_connections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_makes_the_same_graph_from_the_same_seed() {
    let (a, b, c) = (
        Isolated::new().await,
        Isolated::new().await,
        Isolated::new().await,
    );
    let args = |seed: &str| {
        [
            "seed",
            "--users",
            "2000",
            "--connections",
            "20000",
            "--seed",
            seed,
        ]
        .map(String::from)
    };
    for (store, seed) in [(&a, "7"), (&b, "7"), (&c, "8")] {
        let (code, stdout, stderr) = output(connstatus(store).args(args(seed)));
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stdout.contains("seeded 2000 users and 20000 pairs"),
            "{stdout}"
        );
    }
    let (sum_a, sum_b, sum_c) = (checksum(&a).await, checksum(&b).await, checksum(&c).await);
    assert_eq!(sum_a, sum_b, "same seed, same graph");
    assert_ne!(sum_a, sum_c, "another seed, another graph");
    // Seeding again without --reset refuses rather than mixing graphs.
    let (code, _, stderr) = output(connstatus(&a).args(args("7")));
    assert_ne!(code, 0);
    assert!(stderr.contains("--reset"), "{stderr}");
}

async fn checksum(store: &Isolated) -> (i64, String) {
    use diesel::sql_types::{BigInt, Text};
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Sum {
        #[diesel(sql_type = BigInt)]
        n: i64,
        #[diesel(sql_type = Text)]
        digest: String,
    }
    let mut conn = store.connection().await;
    let sum: Sum = diesel::sql_query(
        "SELECT COUNT(*) AS n, CAST(SUM(CRC32(CONCAT_WS(',', user_low, user_high, state, \
         IFNULL(requested_by, 0), rejected_at IS NULL))) AS CHAR) AS digest FROM user_connections",
    )
    .get_result(&mut conn)
    .await
    .expect("checksum");
    (sum.n, sum.digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_503_drains_finishes_in_flight_work_and_exits_zero() {
    use diesel_async::SimpleAsyncConnection;
    // Arrange: a running binary (drain 2 s, grace 10 s), and a pair row
    // locked by the test so that a mutation of it stays in flight.
    let store = Isolated::new().await;
    store
        .sql("INSERT INTO users (id) VALUES (1), (2), (3)")
        .await;
    store
        .sql("INSERT INTO user_connections (user_low, user_high, state) VALUES (1, 2, 'none')")
        .await;
    let (_, token, _) = output(connstatus(&store).args(["token", "--user", "1"]));
    let token = token.trim().to_owned();
    let (mut child, public) = serve(
        connstatus(&store)
            .env("CONNSTATUS_DRAIN_SECONDS", "2")
            .env("CONNSTATUS_GRACE_SECONDS", "10")
            .env("CONNSTATUS_MYSQL_TIMEOUT_MS", "8000")
            .arg("serve"),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut lock = store.connection().await;
    lock.batch_execute(
        "BEGIN; SELECT * FROM user_connections WHERE user_low = 1 AND user_high = 2 FOR UPDATE",
    )
    .await
    .expect("lock");
    let in_flight = {
        let (client, public, token) = (client.clone(), public.clone(), token.clone());
        tokio::spawn(async move {
            client
                .post(format!("http://{public}/api/v2/user/2/connection/request/"))
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Act: SIGTERM.
    let signalled = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Assert: readiness is 503 at once, while requests are still served.
    let ready = client
        .get(format!("http://{public}/readyz"))
        .send()
        .await
        .expect("readyz during drain");
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["status"], "shutting_down");
    let served = client
        .get(format!("http://{public}/api/v2/user/3/connection_status/"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("a request during the drain");
    assert_eq!(served.status(), 200);

    // The in-flight mutation finishes once the lock goes, after the drain.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    lock.batch_execute("ROLLBACK").await.expect("unlock");
    assert_eq!(
        in_flight
            .await
            .expect("task")
            .expect("in-flight request answered"),
        200
    );
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "not exited within the grace period"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "the drain delay was honoured"
    );
    assert!(
        client
            .get(format!("http://{public}/healthz"))
            .send()
            .await
            .is_err(),
        "closed after exit"
    );
}
