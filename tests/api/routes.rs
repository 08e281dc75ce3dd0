//! Paths, methods and the shape of answers that are not statuses.

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trailing_slash_is_optional() {
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    for path in [
        "/api/v2/user/2/connection_status/",
        "/api/v2/user/2/connection_status",
    ] {
        let response = app.get_with_token(path, &app.token(1)).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_are_405_with_allow() {
    let app = spawn_app().await;
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in [
            "/api/v2/user/2/connection_status/",
            "/api/v2/user/2/connection_status",
        ] {
            let response = app
                .client
                .request(
                    method.parse().expect("method"),
                    format!("{}{path}", app.address),
                )
                .bearer_auth(app.token(1))
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 405, "{method} {path}");
            assert_eq!(
                response.headers().get("allow").map(|v| v.as_bytes()),
                Some(&b"GET"[..])
            );
            let body: serde_json::Value = response.json().await.expect("json");
            assert_eq!(
                body,
                serde_json::json!({"detail": format!("Method \"{method}\" not allowed.")})
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_json() {
    let app = spawn_app().await;
    for path in [
        "/",
        "/api/v2/user/2",
        "/api/v2/user/2/connection_status/x",
        "/internal/v1/events",
    ] {
        let response = app.get_with_token(path, &app.token(1)).await;
        assert_eq!(response.status(), 404, "{path}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body, serde_json::json!({"detail": "Not found."}), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_without_credentials() {
    let app = spawn_app().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("json");
    // (The test apps run without the binlog follower.)
    assert_eq!(
        body,
        serde_json::json!({"status": "ready", "mysql": "up", "redis": "up",
            "follower": {"state": "off", "lag_seconds": 0.0, "lag_bytes": 0}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_action_is_404_whatever_the_method_and_a_known_one_405_with_allow() {
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    for method in ["GET", "POST", "PUT", "DELETE"] {
        for path in [
            "/api/v2/user/2/connection/frobnicate/",
            "/api/v2/user/2/connection/frobnicate",
        ] {
            let response = app
                .client
                .request(
                    method.parse().expect("method"),
                    format!("{}{path}", app.address),
                )
                .bearer_auth(app.token(1))
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), 404, "{method} {path}");
            assert!(response.headers().get("allow").is_none(), "{method} {path}");
            let body: serde_json::Value = response.json().await.expect("json");
            assert_eq!(
                body,
                serde_json::json!({"detail": "Not found."}),
                "{method} {path}"
            );
        }
    }
    let known = app
        .client
        .get(format!("{}/api/v2/user/2/connection/request/", app.address))
        .bearer_auth(app.token(1))
        .send()
        .await
        .expect("request");
    assert_eq!(known.status(), 405);
    assert_eq!(
        known.headers().get("allow").map(|v| v.as_bytes()),
        Some(&b"POST"[..])
    );
    let body: serde_json::Value = known.json().await.expect("json");
    assert_eq!(
        body,
        serde_json::json!({"detail": "Method \"GET\" not allowed."})
    );
}
