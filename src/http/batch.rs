//! `POST /api/v2/user/connection/statuses/` (see
//! `docs/api.md#statuses-for-many-users-at-once`): the statuses of many
//! users at once, for feeds.

use actix_web::http::header::ContentType;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::bodies::{BatchBody, BatchRequest, Detail, Statuses};
use super::caller::Caller;
use super::errors::ApiError;
use super::{body, AppState, Worker};
use crate::domain::{Status, UserId};

/// `{"users": [1, 7, 9]}` → `{"connection_statuses": {"1": null, "7": "connected", ...}}`.
#[utoipa::path(
    post,
    path = "/api/v2/user/connection/statuses/",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One status per distinct id", body = BatchBody),
        (status = 400, description = "Not JSON, no users array, or not positive integers", body = Detail),
        (status = 401, description = "No or bad credentials", body = Detail),
        (status = 413, description = "Body too large", body = Detail),
        (status = 415, description = "Not JSON", body = Detail),
        (status = 429, description = "Too many requests in flight", body = Detail),
        (status = 503, description = "MySQL needed and unavailable", body = Detail),
    )
)]
/// Every distinct id is a key; ids of no existing user map to `null`.
pub async fn post_statuses(
    req: HttpRequest,
    caller: Caller,
    payload: web::Payload,
    state: web::Data<AppState>,
    worker: web::Data<Worker>,
) -> Result<HttpResponse, ApiError> {
    let raw = body::bytes(&req, payload, state.max_body_bytes).await?;
    // The usual body parses straight into ids; anything else takes the
    // slow path through a JSON value, which also says what is wrong.
    let ids = match serde_json::from_slice::<BatchRequest>(&raw) {
        Ok(usual) if !usual.users.contains(&0) => distinct(usual.users, state.max_batch_ids),
        _ => requested_ids(&body::parse(&raw)?, state.max_batch_ids),
    }
    .map_err(ApiError::BadRequest)?;
    // Ids beyond 2^63-1 are positive integers but can name no user: null,
    // without asking anyone.
    let targets: Vec<UserId> = ids.iter().filter_map(|&id| UserId::new(id)).collect();
    let found = worker.statuses.statuses(caller.0, &targets).await?;
    let mut found = found.into_iter();
    let statuses = ids
        .iter()
        .map(|&id| match UserId::new(id) {
            Some(_) => found.next().unwrap_or(Status::Null),
            None => Status::Null,
        })
        .collect();
    let body = BatchBody {
        connection_statuses: Statuses { ids, statuses },
    };
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body.to_json()))
}

/// The distinct ids of `{"users": [...]}`, in first-seen order; the error
/// says what is wrong.
pub fn requested_ids(value: &Value, max: usize) -> Result<Vec<u64>, String> {
    let Value::Object(fields) = value else {
        return Err("body: expected an object with a \"users\" array".into());
    };
    let Some(users) = fields.get("users") else {
        return Err("users: required, an array of user ids".into());
    };
    let Value::Array(users) = users else {
        return Err("users: expected an array of user ids".into());
    };
    let ids = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            user.as_u64().filter(|&id| id > 0).ok_or_else(|| {
                format!(
                    "users[{i}]: expected a positive integer, got {}",
                    kind(user)
                )
            })
        })
        .collect::<Result<Vec<u64>, String>>()?;
    distinct(ids, max)
}

/// `ids` without repeats, in first-seen order, or an error when more than
/// `max` are distinct. Sorting (id, position) finds the first of each id
/// without hashing: cheaper than a hash set for the sizes a batch has.
fn distinct(ids: Vec<u64>, max: usize) -> Result<Vec<u64>, String> {
    let mut order: Vec<(u64, usize)> = ids.iter().copied().zip(0..).collect();
    order.sort_unstable();
    let mut first = vec![false; ids.len()];
    let mut count = 0;
    let mut last = None;
    for &(id, at) in &order {
        if last != Some(id) {
            first[at] = true;
            count += 1;
            last = Some(id);
        }
    }
    if count > max {
        return Err(format!("users: at most {max} distinct ids per request"));
    }
    Ok(ids
        .into_iter()
        .zip(first)
        .filter_map(|(id, first)| first.then_some(id))
        .collect())
}

fn kind(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_distinct_positive_integers_in_first_seen_order() {
        assert_eq!(
            requested_ids(&json!({"users": [7, 1, 7, 9]}), 10),
            Ok(vec![7, 1, 9])
        );
        assert_eq!(requested_ids(&json!({"users": []}), 10), Ok(vec![]));
        assert_eq!(
            requested_ids(&json!({"users": [1, 1, 1, 2]}), 2),
            Ok(vec![1, 2])
        );
        assert_eq!(
            requested_ids(&json!({"users": [18446744073709551615u64]}), 2),
            Ok(vec![u64::MAX])
        );
    }

    proptest::proptest! {
        #[test]
        fn distinct_keeps_the_first_of_each_id_in_first_seen_order(
            ids in proptest::collection::vec(1u64..20, 0..60),
            max in 0usize..25,
        ) {
            let mut seen = std::collections::HashSet::new();
            let naive: Vec<u64> = ids.iter().copied().filter(|&id| seen.insert(id)).collect();
            match distinct(ids, max) {
                Ok(got) => {
                    proptest::prop_assert!(naive.len() <= max);
                    proptest::prop_assert_eq!(got, naive);
                }
                Err(e) => {
                    proptest::prop_assert!(naive.len() > max);
                    proptest::prop_assert!(e.contains("at most"));
                }
            }
        }
    }

    #[test]
    fn anything_else_says_what_is_wrong() {
        for (body, wanted) in [
            (json!([1, 2]), "body"),
            (json!({}), "users: required"),
            (json!({"users": 5}), "users: expected an array"),
            (json!({"users": [1, "2"]}), "users[1]"),
            (json!({"users": [0]}), "users[0]"),
            (json!({"users": [-1]}), "users[0]"),
            (json!({"users": [1.5]}), "users[0]"),
            (json!({"users": [1.0]}), "users[0]"),
            (json!({"users": [[1]]}), "users[0]"),
            (json!({"users": [null]}), "users[0]"),
            (json!({"users": [1, 2, 3]}), "at most 2"),
        ] {
            let error = requested_ids(&body, 2).expect_err("refused");
            assert!(error.contains(wanted), "{body}: {error}");
        }
    }
}
