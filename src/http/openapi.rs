//! The OpenAPI 3 document of the public API, generated from the handlers'
//! annotations, served at `GET /api/v2/openapi.json` (no token needed).

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// How the caller sees the other user.
#[derive(ToSchema)]
#[schema(as = ConnectionStatusValue)]
#[allow(dead_code)] // documentation only: the handlers write these as fixed strings
pub enum StatusValue {
    /// Both are connected.
    #[schema(rename = "connected")]
    Connected,
    /// The caller asked; no answer the caller may see.
    #[schema(rename = "sent_connection_request")]
    Sent,
    /// The other user asked.
    #[schema(rename = "received_connection_request")]
    Received,
}

/// The six actions of `POST /api/v2/user/{id}/connection/{action}/`.
#[derive(ToSchema)]
#[schema(as = ConnectionAction)]
#[allow(dead_code)]
pub enum ActionValue {
    /// Ask to connect (or accept, if the other already asked).
    #[schema(rename = "request")]
    Request,
    /// Accept the other's request.
    #[schema(rename = "accept")]
    Accept,
    /// Reject the other's request.
    #[schema(rename = "reject")]
    Reject,
    /// Take back a rejection.
    #[schema(rename = "cancel_reject")]
    CancelReject,
    /// Withdraw one's own request.
    #[schema(rename = "cancel_request")]
    CancelRequest,
    /// End a connection.
    #[schema(rename = "remove")]
    Remove,
}

/// `{"connection_status": ...}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StatusBody {
    /// `null` when there is no relation the caller may see.
    #[schema(nullable = true, required = true)]
    connection_status: Option<StatusValue>,
}

/// `{"users": [1, 7, 9]}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BatchRequest {
    /// User ids (positive integers; duplicates are answered once).
    #[schema(max_items = 1000)]
    users: Vec<u64>,
}

/// `{"connection_statuses": {"1": null, "7": "connected"}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BatchBody {
    /// One key per distinct requested id (as a decimal string); each value
    /// a `ConnectionStatusValue` or `null`.
    #[schema(value_type = Object)]
    connection_statuses: std::collections::HashMap<String, Option<String>>,
}

/// Every error: `{"detail": "..."}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Detail {
    /// What went wrong, for people.
    detail: String,
}

/// `GET /healthz` and `/readyz` bodies.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Health {
    /// `ok`, `ready`, `unavailable` or `shutting_down`.
    status: String,
    /// `up` or `down` (readiness only).
    mysql: Option<String>,
    /// `up` or `down` (readiness only).
    redis: Option<String>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "connstatus", description = "The connection status between the logged-in user and other users."),
    paths(
        super::status::get_status,
        super::batch::post_statuses,
        super::mutations::mutate,
        super::health::healthz,
        super::health::readyz,
    ),
    components(schemas(StatusValue, ActionValue, StatusBody, BatchRequest, BatchBody, Detail, Health)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

/// `GET /api/v2/openapi.json`.
pub async fn document() -> HttpResponse {
    match ApiDoc::openapi().to_json() {
        Ok(json) => HttpResponse::Ok()
            .content_type("application/json")
            .body(json),
        Err(e) => {
            tracing::error!(error = %e, "cannot render the OpenAPI document");
            HttpResponse::InternalServerError().finish()
        }
    }
}
