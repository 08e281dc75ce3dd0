//! Statuses for many users at once (`docs/api.md#statuses-for-many-users-at-once`).

use serde_json::{json, Map, Value};

use crate::helpers::{spawn_app, TestApp};

async fn post(
    app: &TestApp,
    viewer: u64,
    body: reqwest::Body,
    content_type: &str,
) -> reqwest::Response {
    app.client
        .post(format!("{}/api/v2/user/connection/statuses/", app.address))
        .bearer_auth(app.token(viewer))
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .expect("request")
}

async fn statuses(app: &TestApp, viewer: u64, users: Value) -> (u16, Value) {
    let response = post(
        app,
        viewer,
        json!({ "users": users }).to_string().into(),
        "application/json",
    )
    .await;
    (
        response.status().as_u16(),
        response.json().await.expect("json"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_every_distinct_id_as_the_single_get_does() {
    // Arrange: user 1 with every kind of relation; 6 deleted; 99 unknown.
    let app = spawn_app().await;
    app.users(&[1, 2, 3, 4, 5, 6, 7]).await;
    app.store
        .sql("UPDATE users SET deleted_at = NOW(6) WHERE id = 6")
        .await;
    app.store
        .sql(
            "INSERT INTO user_connections (user_low, user_high, state, requested_by, rejected_at) VALUES
             (1, 2, 'connected', NULL, NULL), (1, 3, 'pending', 1, NULL),
             (1, 4, 'pending', 4, NULL), (1, 5, 'pending', 5, NOW(6)), (1, 6, 'connected', NULL, NULL)",
        )
        .await;
    // Some pairs already cached, some not.
    assert_eq!(app.status(1, 2).await.as_deref(), Some("connected"));
    assert_eq!(
        app.status(1, 4).await.as_deref(),
        Some("received_connection_request")
    );

    let ids = json!([2, 3, 4, 5, 6, 7, 1, 99, 3, 2, 9223372036854775808u64]);
    for round in ["mixed cache", "all cached", "user entries evicted"] {
        if round == "user entries evicted" {
            // Relations cached, users not: the batch must look the users up
            // (6 is deleted) rather than trust the relation alone.
            for user in [2, 3, 4, 5, 6, 7] {
                app.store.evict(&format!("u:{user}")).await;
            }
        }
        let (code, body) = statuses(&app, 1, ids.clone()).await;
        assert_eq!(code, 200, "{round}: {body}");
        let expected = json!({"connection_statuses": {
            "2": "connected", "3": "sent_connection_request", "4": "received_connection_request",
            "5": null, "6": null, "7": null, "1": null, "99": null, "9223372036854775808": null
        }});
        assert_eq!(body, expected, "{round}");
    }
    // Each answer equals the single GET's, from the other side too.
    for other in [2u64, 3, 4, 5, 7] {
        let (_, body) = statuses(&app, other, json!([1])).await;
        let single = app
            .status(other, 1)
            .await
            .map(Value::from)
            .unwrap_or(Value::Null);
        assert_eq!(
            body["connection_statuses"]["1"], single,
            "{other} looks at 1"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_and_the_empty_list() {
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    let (code, body) = statuses(&app, 1, json!([])).await;
    assert_eq!((code, body), (200, json!({"connection_statuses": {}})));

    let thousand: Vec<u64> = (1..=1000).collect();
    let (code, body) = statuses(&app, 1, json!(thousand)).await;
    assert_eq!(code, 200);
    let map: &Map<String, Value> = body["connection_statuses"].as_object().expect("object");
    assert_eq!(map.len(), 1000);
    assert!(map.values().all(Value::is_null));

    let with_duplicates: Vec<u64> = (1..=1000).chain(1..=1000).collect();
    assert_eq!(
        statuses(&app, 1, json!(with_duplicates)).await.0,
        200,
        "1000 distinct ids, sent twice"
    );

    let too_many: Vec<u64> = (1..=1001).collect();
    let (code, body) = statuses(&app, 1, json!(too_many)).await;
    assert_eq!(code, 400);
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("1000")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_clear_errors() {
    let app = spawn_app().await;
    app.users(&[1]).await;
    for (users, why) in [
        (json!(["1"]), "a string"),
        (json!([-1]), "a negative"),
        (json!([0]), "zero"),
        (json!([1.5]), "a float"),
        (json!([[1]]), "a nested array"),
        (json!([{"id": 1}]), "an object"),
        (json!([null]), "null"),
        (json!("1,2"), "not an array"),
    ] {
        let (code, body) = statuses(&app, 1, users.clone()).await;
        assert_eq!(code, 400, "{why}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("users")),
            "{why}: {body}"
        );
    }
    for (text, why) in [
        ("{\"users\": [18446744073709551616]}", "beyond 64 bits"),
        ("{not json", "not JSON"),
        ("{}", "no users"),
        ("[1,2]", "an array body"),
        ("", "empty"),
    ] {
        let response = post(&app, 1, text.to_owned().into(), "application/json").await;
        assert_eq!(response.status(), 400, "{why}");
        let body: Value = response.json().await.expect("json");
        assert!(body["detail"].is_string(), "{why}: {body}");
    }
    let response = post(&app, 1, "{\"users\": [1]}".into(), "text/plain").await;
    assert_eq!(response.status(), 415);
    let response = post(
        &app,
        1,
        "users=1".into(),
        "application/x-www-form-urlencoded",
    )
    .await;
    assert_eq!(response.status(), 415);
    let huge = format!("{{\"users\": [{}1]}}", "1,".repeat(600_000));
    let response = post(&app, 1, huge.into(), "application/json").await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.expect("json");
    assert!(body["detail"].is_string());
    let deep = format!("{{\"users\": {}{}}}", "[".repeat(5_000), "]".repeat(5_000));
    assert_eq!(
        post(&app, 1, deep.into(), "application/json")
            .await
            .status(),
        400
    );
    let unauthenticated = app
        .client
        .post(format!("{}/api/v2/user/connection/statuses", app.address))
        .json(&json!({"users": [1]}))
        .send()
        .await
        .expect("request");
    assert_eq!(unauthenticated.status(), 401);
    let get = app
        .get_with_token("/api/v2/user/connection/statuses/", &app.token(1))
        .await;
    assert_eq!(get.status(), 405);
}
