//! The six actions (`docs/api.md#mutations`), every state, both sides — the
//! answer, what each user then reads, and the row in MySQL.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, Row};

/// A pair state as the caller sees it, and how to store it.
#[derive(Clone, Copy, Debug)]
enum Seen {
    NoRow,
    NoneRow,
    PendingByMe { rejected: bool },
    PendingByOther { rejected: bool },
    Connected,
}

const STATES: [Seen; 7] = [
    Seen::NoRow,
    Seen::NoneRow,
    Seen::PendingByMe { rejected: false },
    Seen::PendingByMe { rejected: true },
    Seen::PendingByOther { rejected: false },
    Seen::PendingByOther { rejected: true },
    Seen::Connected,
];

const ACTIONS: [&str; 6] = [
    "request",
    "accept",
    "reject",
    "cancel_reject",
    "cancel_request",
    "remove",
];

/// What the transition table (docs/api.md#transitions) says: `Some(next)` for a change, `None` for a
/// no-op, `Err(())` for a conflict.
fn contract(action: &str, seen: Seen) -> Result<Option<Seen>, ()> {
    use Seen::*;
    let none = matches!(seen, NoRow | NoneRow);
    match action {
        "request" if none => Ok(Some(PendingByMe { rejected: false })),
        "request" => match seen {
            PendingByOther { .. } => Ok(Some(Connected)),
            _ => Ok(None),
        },
        "accept" => match seen {
            PendingByOther { .. } => Ok(Some(Connected)),
            Connected => Ok(None),
            _ => Err(()),
        },
        "reject" => match seen {
            PendingByOther { rejected: false } => Ok(Some(PendingByOther { rejected: true })),
            PendingByOther { rejected: true } => Ok(None),
            _ => Err(()),
        },
        "cancel_reject" => match seen {
            PendingByOther { rejected: true } => Ok(Some(PendingByOther { rejected: false })),
            PendingByOther { rejected: false } => Ok(None),
            _ => Err(()),
        },
        "cancel_request" => match seen {
            PendingByMe { .. } => Ok(Some(NoneRow)),
            _ if none => Ok(None),
            _ => Err(()),
        },
        "remove" => match seen {
            Connected => Ok(Some(NoneRow)),
            _ if none => Ok(None),
            _ => Err(()),
        },
        _ => unreachable!(),
    }
}

/// The status strings (caller's, other's) of a state.
fn statuses(seen: Seen) -> (Value, Value) {
    match seen {
        Seen::NoRow | Seen::NoneRow => (Value::Null, Value::Null),
        Seen::PendingByMe { rejected } => (
            json!("sent_connection_request"),
            if rejected {
                Value::Null
            } else {
                json!("received_connection_request")
            },
        ),
        Seen::PendingByOther { rejected } => (
            if rejected {
                Value::Null
            } else {
                json!("received_connection_request")
            },
            json!("sent_connection_request"),
        ),
        Seen::Connected => (json!("connected"), json!("connected")),
    }
}

/// The row values (state, requested_by, rejected) of a state.
fn stored(seen: Seen, me: u64, other: u64) -> Option<(&'static str, Option<u64>, bool)> {
    match seen {
        Seen::NoRow => None,
        Seen::NoneRow => Some(("none", None, false)),
        Seen::PendingByMe { rejected } => Some(("pending", Some(me), rejected)),
        Seen::PendingByOther { rejected } => Some(("pending", Some(other), rejected)),
        Seen::Connected => Some(("connected", None, false)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_from_every_state_on_both_sides_follows_the_contract() {
    // Arrange: one pair of users per case, stored in the case's state.
    let app = spawn_app().await;
    let mut cases = Vec::new();
    for action in ACTIONS {
        for seen in STATES {
            for caller_is_low in [true, false] {
                let n = cases.len() as u64;
                let (low, high) = (2 * n + 1, 2 * n + 2);
                let (me, other) = if caller_is_low {
                    (low, high)
                } else {
                    (high, low)
                };
                cases.push((action, seen, me, other, low, high));
            }
        }
    }
    app.users(&(1..=2 * cases.len() as u64).collect::<Vec<_>>())
        .await;
    let rows: Vec<String> = cases
        .iter()
        .filter_map(|&(_, seen, me, other, low, high)| {
            stored(seen, me, other).map(|(state, by, rejected)| {
                let by = by.map_or("NULL".to_owned(), |b| b.to_string());
                let at = if rejected { "NOW(6)" } else { "NULL" };
                format!("({low}, {high}, '{state}', {by}, {at})")
            })
        })
        .collect();
    app.store
        .sql(&format!(
            "INSERT INTO user_connections (user_low, user_high, state, requested_by, rejected_at) VALUES {}",
            rows.join(", ")
        ))
        .await;

    for (action, seen, me, other, low, high) in cases {
        let what = format!("{action} by {me} on {other} from {seen:?}");
        let before: Option<Row> = app.store.row(low, high).await;
        // Fill the cache first, so the test also proves the refresh.
        assert_eq!(
            app.status(me, other)
                .await
                .map(Value::from)
                .unwrap_or(Value::Null),
            statuses(seen).0,
            "{what}: before"
        );

        // Act.
        let response = app.act(me, &other.to_string(), action).await;

        // Assert: the answer, both users' reads, and the row.
        let code = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        let after_state = match contract(action, seen) {
            Ok(next) => {
                let now = next.unwrap_or(seen);
                assert_eq!(code, 200, "{what}: {body}");
                assert_eq!(
                    body,
                    json!({"connection_status": statuses(now).0}),
                    "{what}"
                );
                now
            }
            Err(()) => {
                assert_eq!(code, 409, "{what}: {body}");
                assert!(
                    body["detail"].as_str().is_some_and(|d| !d.is_empty()),
                    "{what}: {body}"
                );
                seen
            }
        };
        let (mine, theirs) = statuses(after_state);
        assert_eq!(
            app.status(me, other)
                .await
                .map(Value::from)
                .unwrap_or(Value::Null),
            mine,
            "{what}: caller reads"
        );
        assert_eq!(
            app.status(other, me)
                .await
                .map(Value::from)
                .unwrap_or(Value::Null),
            theirs,
            "{what}: other reads"
        );

        let row = app.store.row(low, high).await;
        match contract(action, seen) {
            Ok(Some(next)) => {
                let (state, by, rejected) = stored(next, me, other).expect("a change leaves a row");
                let version = before.as_ref().map_or(1, |b| b.3 + 1);
                assert_eq!(
                    row,
                    Some((state.to_owned(), by, rejected, version)),
                    "{what}: row"
                );
            }
            _ => assert_eq!(row, before, "{what}: a no-op or a conflict changes no row"),
        }
    }
    assert_eq!(app.store.queued().await, 0, "every refresh landed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mutations_get_clear_errors_and_change_nothing() {
    let app = spawn_app().await;
    app.users(&[1, 2, 3, 4]).await;
    app.store
        .sql("UPDATE users SET deleted_at = NOW(6) WHERE id IN (3, 4)")
        .await;

    let cases: [(u64, &str, &str, u16); 8] = [
        (1, "1", "request", 400),
        (1, "0001", "request", 400),
        (1, "99", "request", 404),
        (1, "3", "request", 404),
        (1, "abc", "request", 404),
        (1, "2", "befriend", 404),
        (1, "-2", "accept", 404),
        (4, "1", "request", 403),
    ];
    for (caller, id, action, code) in cases {
        let response = app.act(caller, id, action).await;
        assert_eq!(response.status(), code, "{action} by {caller} on {id}");
        let body: Value = response.json().await.expect("json");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}"
        );
    }
    let unauthenticated = app
        .client
        .post(format!("{}/api/v2/user/2/connection/request/", app.address))
        .send()
        .await
        .expect("request");
    assert_eq!(unauthenticated.status(), 401);
    let get = app
        .get_with_token("/api/v2/user/2/connection/request/", &app.token(1))
        .await;
    assert_eq!(get.status(), 405);
    assert_eq!(
        get.headers().get("allow").map(|v| v.as_bytes()),
        Some(&b"POST"[..])
    );

    assert_eq!(app.store.row(1, 2).await, None);
    assert_eq!(app.store.row(1, 3).await, None);
    assert_eq!(app.store.row(1, 4).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_mutation_is_a_no_op_that_answers_the_same() {
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    for _ in 0..3 {
        let response = app.act(1, "2", "request").await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        assert_eq!(
            body,
            json!({"connection_status": "sent_connection_request"})
        );
    }
    assert_eq!(
        app.store.row(1, 2).await,
        Some(("pending".into(), Some(1), false, 1))
    );
    // The trailing slash is optional here too.
    let response = app
        .client
        .post(format!("{}/api/v2/user/1/connection/accept", app.address))
        .bearer_auth(app.token(2))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(app.status(1, 2).await.as_deref(), Some("connected"));
}
