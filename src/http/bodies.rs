//! The JSON bodies the service answers with. The handlers serialize these
//! types, and the OpenAPI document is generated from the same types, so the
//! document cannot drift from what is sent.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use utoipa::ToSchema;

use crate::domain::Status;

/// How the caller sees the other user (`null` when there is no relation the
/// caller may see).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ConnectionStatusValue)]
pub enum ConnectionStatus {
    /// Both are connected.
    Connected,
    /// The caller asked; no answer the caller may see.
    SentConnectionRequest,
    /// The other user asked.
    ReceivedConnectionRequest,
}

impl ConnectionStatus {
    /// The body value of a status (`None` is JSON `null`).
    pub fn of(status: Status) -> Option<Self> {
        match status {
            Status::Connected => Some(Self::Connected),
            Status::SentRequest => Some(Self::SentConnectionRequest),
            Status::ReceivedRequest => Some(Self::ReceivedConnectionRequest),
            Status::Null => None,
        }
    }
}

/// `{"connection_status": ...}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusBody {
    /// `null` when there is no relation the caller may see.
    #[schema(nullable = true, required = true)]
    pub connection_status: Option<ConnectionStatus>,
}

impl StatusBody {
    /// The body for `status`, as serde_json writes [`StatusBody`] (a test
    /// holds them equal): the hot path writes it without a serializer.
    pub fn literal(status: Status) -> &'static str {
        match status {
            Status::Connected => r#"{"connection_status":"connected"}"#,
            Status::SentRequest => r#"{"connection_status":"sent_connection_request"}"#,
            Status::ReceivedRequest => r#"{"connection_status":"received_connection_request"}"#,
            Status::Null => r#"{"connection_status":null}"#,
        }
    }
}

impl From<Status> for StatusBody {
    fn from(status: Status) -> Self {
        Self {
            connection_status: ConnectionStatus::of(status),
        }
    }
}

/// `{"is_connection": true}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct IsConnectionBody {
    /// True exactly when the two users are connected.
    pub is_connection: bool,
}

impl IsConnectionBody {
    /// The body, as serde_json writes [`IsConnectionBody`] (a test holds
    /// them equal).
    pub fn literal(is_connection: bool) -> &'static str {
        if is_connection {
            r#"{"is_connection":true}"#
        } else {
            r#"{"is_connection":false}"#
        }
    }
}

/// `{"users": [1, 7, 9]}`.
#[derive(Debug, serde::Deserialize, ToSchema)]
pub struct BatchRequest {
    /// User ids (positive integers; duplicates are answered once).
    #[schema(max_items = 1000)]
    pub users: Vec<u64>,
}

/// `{"connection_statuses": {"1": null, "7": "connected"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchBody {
    /// One key per distinct requested id (as a decimal string), in the order
    /// first asked; each value a `ConnectionStatusValue` or `null`.
    #[schema(value_type = Object)]
    pub connection_statuses: Statuses,
}

/// The statuses of a batch, in the order of the ids asked (serialized as a
/// JSON object without building a map first).
#[derive(Debug)]
pub struct Statuses {
    /// The distinct ids, in the order first asked.
    pub ids: Vec<u64>,
    /// The status of each id.
    pub statuses: Vec<Status>,
}

impl Serialize for Statuses {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.ids.len()))?;
        let mut digits = itoa::Buffer::new();
        for (&id, &status) in self.ids.iter().zip(&self.statuses) {
            map.serialize_entry(digits.format(id), &ConnectionStatus::of(status))?;
        }
        map.end()
    }
}

impl BatchBody {
    /// The body as serde_json writes it (a test holds them equal), written
    /// straight into one buffer: ids are digits and statuses a handful of
    /// literals, so nothing needs escaping, and the serializer's per-entry
    /// work was a tenth of a batch's instructions.
    pub fn to_json(&self) -> Vec<u8> {
        let Statuses { ids, statuses } = &self.connection_statuses;
        const HEAD: &str = r#"{"connection_statuses":{"#;
        // The longest entry: 20 digits, quotes, colon, the longest status
        // and a comma.
        let mut out = Vec::with_capacity(HEAD.len() + 2 + ids.len() * 55);
        out.extend_from_slice(HEAD.as_bytes());
        let mut digits = itoa::Buffer::new();
        for (n, (&id, &status)) in ids.iter().zip(statuses).enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(digits.format(id).as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(status.json_literal().as_bytes());
        }
        out.extend_from_slice(b"}}");
        out
    }
}

/// Every error: `{"detail": "..."}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Detail {
    /// What went wrong, for people.
    pub detail: String,
}

/// `GET /healthz` and `/readyz` bodies.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready`, `unavailable` or `shutting_down`.
    pub status: &'static str,
    /// `up` or `down` (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mysql: Option<&'static str>,
    /// `up` or `down` (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<&'static str>,
    /// The binlog follower (readiness only). Informational: a follower
    /// that is behind or unavailable does not fail readiness.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follower: Option<FollowerHealth>,
}

/// The binlog follower's part of `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FollowerHealth {
    /// `off`, `starting`, `standby` (another instance follows), `active`,
    /// `behind` (lag above the warning threshold), `rewarming` or
    /// `unavailable`.
    pub state: &'static str,
    /// How far behind the log's end, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// How far behind, in bytes of log.
    pub lag_bytes: u64,
    /// The position applied (`file:offset`), while following.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// Why it is unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `POST /internal/v1/events`'s answer.
#[derive(Debug, Serialize)]
pub struct EventsReply {
    /// Events of a known type.
    pub processed: usize,
    /// Events of a type connstatus does not know.
    pub ignored: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(body: &T) -> String {
        serde_json::to_string(body).expect("serializes")
    }

    #[test]
    fn bodies_have_the_platforms_json() {
        assert_eq!(
            json(&StatusBody::from(Status::SentRequest)),
            r#"{"connection_status":"sent_connection_request"}"#
        );
        assert_eq!(
            json(&StatusBody::from(Status::Null)),
            r#"{"connection_status":null}"#
        );
        let batch = BatchBody {
            connection_statuses: Statuses {
                ids: vec![9, 1, 7],
                statuses: vec![Status::ReceivedRequest, Status::Null, Status::Connected],
            },
        };
        assert_eq!(
            json(&batch),
            r#"{"connection_statuses":{"9":"received_connection_request","1":null,"7":"connected"}}"#
        );
    }

    #[test]
    fn the_written_batch_body_is_what_the_serializer_writes() {
        let all = [
            Status::Connected,
            Status::SentRequest,
            Status::ReceivedRequest,
            Status::Null,
        ];
        for n in [0, 1, 2, 7, 1000] {
            let ids: Vec<u64> = (0..n).map(|i| i * 7919 + u64::MAX / (i + 1)).collect();
            let statuses = (0..n).map(|i| all[i as usize % 4]).collect();
            let batch = BatchBody {
                connection_statuses: Statuses { ids, statuses },
            };
            let written = String::from_utf8(batch.to_json()).expect("UTF-8");
            assert_eq!(written, json(&batch));
        }
    }

    #[test]
    fn the_written_bodies_are_what_the_serializer_writes() {
        for status in [
            Status::Connected,
            Status::SentRequest,
            Status::ReceivedRequest,
            Status::Null,
        ] {
            assert_eq!(StatusBody::literal(status), json(&StatusBody::from(status)));
        }
        for is_connection in [true, false] {
            assert_eq!(
                IsConnectionBody::literal(is_connection),
                json(&IsConnectionBody { is_connection })
            );
        }
    }
}
