//! Every relation reads right from both sides (`docs/api.md#status-semantics`).

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_contract_reads_right_from_both_sides() {
    // Arrange: user 1 with one pair in each state; 9 has no row with 1.
    let app = spawn_app().await;
    app.users(&[1, 2, 3, 4, 5, 6, 7, 9]).await;
    app.store
        .sql(
            "INSERT INTO user_connections (user_low, user_high, state, requested_by, rejected_at) VALUES
             (1, 2, 'none', NULL, NULL),
             (1, 3, 'pending', 1, NULL),
             (1, 4, 'pending', 4, NULL),
             (1, 5, 'pending', 1, NOW(6)),
             (1, 6, 'pending', 6, NOW(6)),
             (1, 7, 'connected', NULL, NULL)",
        )
        .await;
    let sent = Some("sent_connection_request".to_owned());
    let received = Some("received_connection_request".to_owned());
    let connected = Some("connected".to_owned());
    let cases = [
        (2, None, None),
        (3, sent.clone(), received.clone()),
        (4, received.clone(), sent.clone()),
        // A rejection is never shown to the requester; the recipient sees null.
        (5, sent.clone(), None),
        (6, None, sent.clone()),
        (7, connected.clone(), connected.clone()),
        (9, None, None),
    ];
    // Act twice (a miss then a hit) and assert the same answers each time.
    for round in ["from MySQL", "from the cache"] {
        for (other, as_one, as_other) in &cases {
            assert_eq!(
                &app.status(1, *other).await,
                as_one,
                "1 looks at {other}, {round}"
            );
            assert_eq!(
                &app.status(*other, 1).await,
                as_other,
                "{other} looks at 1, {round}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_looking_at_themself_gets_null() {
    let app = spawn_app().await;
    app.users(&[5]).await;
    assert_eq!(app.status(5, 5).await, None);
    assert_eq!(app.status(5, 5).await, None, "again, from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_zeros_name_the_same_user() {
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    app.store
        .sql("INSERT INTO user_connections (user_low, user_high, state) VALUES (1, 2, 'connected')")
        .await;
    let response = app.status_of(1, "0002").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body, serde_json::json!({"connection_status": "connected"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_soft_deleted_users_are_not_found() {
    let app = spawn_app().await;
    app.users(&[1, 2, 3]).await;
    app.store
        .sql("UPDATE users SET deleted_at = NOW(6) WHERE id = 3")
        .await;
    for other in ["4", "3", "9223372036854775807"] {
        for round in 0..2 {
            let response = app.status_of(1, other).await;
            assert_eq!(response.status(), 404, "{other}, round {round}");
            let body: serde_json::Value = response.json().await.expect("json");
            assert_eq!(body, serde_json::json!({"detail": "Not found."}));
        }
    }
    assert_eq!(
        app.status(1, 2).await,
        None,
        "an existing stranger is null, not 404"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_are_not_found() {
    let app = spawn_app().await;
    app.users(&[1]).await;
    let forty_digits = "1234567890".repeat(4);
    for id in [
        "abc",
        "0",
        "000",
        "-1",
        "+1",
        "1.0",
        "1e3",
        "0x1",
        "9223372036854775808",
        "18446744073709551616",
        &forty_digits,
        "%D9%A1%D9%A2",
        "%00",
        "%20",
        "1%20",
        "%201",
        "١٢",
        "1;2",
    ] {
        let response = app.status_of(1, id).await;
        assert_eq!(response.status(), 404, "id {id:?}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(
            body,
            serde_json::json!({"detail": "Not found."}),
            "id {id:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_connection_is_true_exactly_for_connected_pairs() {
    // Arrange: user 1 with a pair in each state, and one user with none.
    let app = spawn_app().await;
    app.users(&[1, 2, 3, 4, 5, 6, 9]).await;
    app.store
        .sql(
            "INSERT INTO user_connections (user_low, user_high, state, requested_by, rejected_at) VALUES
             (1, 2, 'none', NULL, NULL), (1, 3, 'pending', 1, NULL),
             (1, 4, 'pending', 4, NOW(6)), (1, 5, 'connected', NULL, NULL)",
        )
        .await;
    let is_connection = async |viewer: u64, id: &str| {
        let response = app
            .get_with_token(
                &format!("/api/v2/user/{id}/is_connection/"),
                &app.token(viewer),
            )
            .await;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("json");
        (status, body)
    };
    // Act and assert, twice (a miss, then the same cache entries).
    for round in ["from MySQL", "from the cache"] {
        for (viewer, other, want) in [
            (1, 2, false),
            (1, 3, false),
            (4, 1, false),
            (5, 1, true),
            (1, 5, true),
            (1, 9, false),
            (1, 1, false),
        ] {
            assert_eq!(
                is_connection(viewer, &other.to_string()).await,
                (200, serde_json::json!({"is_connection": want})),
                "{viewer} -> {other}, {round}"
            );
        }
    }
    assert_eq!(
        app.store.cached("p:1:5").await.as_deref(),
        Some("1:c"),
        "the status's own entry"
    );
    for bad in ["0", "abc", "7", "9223372036854775808"] {
        assert_eq!(is_connection(1, bad).await.0, 404, "{bad}");
    }
    let anonymous = app.get("/api/v2/user/5/is_connection").await;
    assert_eq!(anonymous.status(), 401);
}
