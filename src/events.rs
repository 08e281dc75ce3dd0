//! The platform's webhook events, as `POST /internal/v1/events` takes them
//! (see `docs/api.md#events`): parsed and checked in full before anything is
//! done, so a malformed request changes nothing. An event names the subject
//! to re-read: a pair (`connection_request.*`, `connection.*`) or a user
//! (`user.*`); a type connstatus does not know names none (`None`: it is
//! acknowledged and counted).

use serde_json::Value;

use crate::domain::{Pair, Subject, UserId};

const PAIR_TYPES: [&str; 6] = [
    "connection_request.created",
    "connection_request.rejected",
    "connection_request.restored",
    "connection_request.cancelled",
    "connection.created",
    "connection.deleted",
];
const USER_TYPES: [&str; 2] = ["user.created", "user.deleted"];

/// Parses one event or an array of them; the error names the bad field
/// (`[2].data.to_user.id: ...`).
pub fn parse(body: &Value, max_events: usize) -> Result<Vec<Option<Subject>>, String> {
    match body {
        Value::Object(_) => Ok(vec![parse_one(body, "")?]),
        Value::Array(events) => {
            if events.len() > max_events {
                return Err(format!(
                    "at most {max_events} events per request, got {}",
                    events.len()
                ));
            }
            events
                .iter()
                .enumerate()
                .map(|(i, event)| parse_one(event, &format!("[{i}].")))
                .collect()
        }
        _ => Err("body: expected an event object or an array of events".into()),
    }
}

fn parse_one(event: &Value, at: &str) -> Result<Option<Subject>, String> {
    let Value::Object(fields) = event else {
        return Err(format!(
            "{}: expected an event object",
            at.trim_end_matches('.')
        ));
    };
    let kind = match fields.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(format!("{at}type: expected a string")),
        None => return Err(format!("{at}type: required")),
    };
    if let Some(id) = fields.get("event_id") {
        if !(id.is_u64() || id.is_string()) {
            return Err(format!("{at}event_id: expected an integer or a string"));
        }
    }
    if let Some(created) = fields.get("created") {
        if !created.is_number() {
            return Err(format!(
                "{at}created: expected a number (seconds since the epoch)"
            ));
        }
    }
    if PAIR_TYPES.contains(&kind) {
        let from = user_at(fields.get("data"), "from_user", at)?;
        let to = user_at(fields.get("data"), "to_user", at)?;
        let pair = Pair::new(from, to)
            .ok_or_else(|| format!("{at}data.to_user.id: must differ from data.from_user.id"))?;
        Ok(Some(Subject::Pair(pair)))
    } else if USER_TYPES.contains(&kind) {
        Ok(Some(Subject::User(user_at(
            fields.get("data"),
            "user",
            at,
        )?)))
    } else {
        Ok(None)
    }
}

/// `data.<name>.id`, a positive integer (a JSON number, or a string of digits).
fn user_at(data: Option<&Value>, name: &str, at: &str) -> Result<UserId, String> {
    let Some(Value::Object(data)) = data else {
        return Err(format!("{at}data: required, an object"));
    };
    let Some(Value::Object(user)) = data.get(name) else {
        return Err(format!("{at}data.{name}: required, an object with an id"));
    };
    let id = match user.get("id") {
        Some(Value::Number(n)) => n.as_u64().and_then(UserId::new),
        Some(Value::String(s)) => UserId::parse(s),
        _ => None,
    };
    id.ok_or_else(|| {
        format!("{at}data.{name}.id: expected a user id (an integer from 1 to 2^63-1)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(n: u64) -> UserId {
        UserId::new(n).expect("id")
    }

    #[test]
    fn the_platform_shapes_parse() {
        let one = json!({"event_id": 1, "type": "connection.created", "created": 1625471209.13,
                         "data": {"from_user": {"id": 33}, "to_user": {"id": 1}}});
        assert_eq!(
            parse(&one, 10),
            Ok(vec![Some(Subject::Pair(
                Pair::new(id(1), id(33)).expect("pair")
            ))])
        );
        let many = json!([
            {"type": "user.deleted", "data": {"user": {"id": 42}}},
            {"type": "connection_request.rejected", "data": {"from_user": {"id": "5"}, "to_user": {"id": 6}}},
            {"type": "post.liked", "data": "anything"},
        ]);
        assert_eq!(
            parse(&many, 10),
            Ok(vec![
                Some(Subject::User(id(42))),
                Some(Subject::Pair(Pair::new(id(5), id(6)).expect("pair"))),
                None
            ])
        );
        assert_eq!(parse(&json!([]), 10), Ok(vec![]));
    }

    #[test]
    fn errors_name_the_bad_field() {
        let cases = [
            (json!("x"), "body"),
            (json!([1]), "[0]"),
            (json!({"data": {}}), "type: required"),
            (json!({"type": 5}), "type: expected"),
            (json!({"type": "user.created"}), "data: required"),
            (
                json!({"type": "user.created", "data": {"user": {"id": 0}}}),
                "data.user.id",
            ),
            (
                json!({"type": "user.created", "data": {"user": {"id": -4}}}),
                "data.user.id",
            ),
            (
                json!([{"type": "user.created", "data": {"user": {"id": 1}}},
                    {"type": "connection.deleted", "data": {"from_user": {"id": 1}, "to_user": {"id": 1.5}}}]),
                "[1].data.to_user.id",
            ),
            (
                json!({"type": "connection.deleted", "data": {"from_user": {"id": 3}, "to_user": {"id": 3}}}),
                "must differ",
            ),
            (json!({"type": "x", "event_id": [1]}), "event_id"),
            (json!({"type": "x", "created": "yesterday"}), "created"),
        ];
        for (body, wanted) in cases {
            let error = parse(&body, 10).expect_err("malformed");
            assert!(error.contains(wanted), "{body}: {error}");
        }
        assert!(parse(&json!([{"type": "x"}, {"type": "x"}]), 1).is_err());
    }
}
