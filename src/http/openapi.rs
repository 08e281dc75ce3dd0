//! The OpenAPI 3 document of the public API, generated from the handlers'
//! annotations and the body types of [`super::bodies`] (the same types the
//! handlers send), served at `GET /api/v2/openapi.json` (no token needed).

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::bodies::{
    BatchBody, BatchRequest, ConnectionStatus, Detail, FollowerHealth, Health, IsConnectionBody,
    StatusBody,
};

/// The six actions of `POST /api/v2/user/{id}/connection/{action}/` (path
/// values only; the handler parses them with [`crate::domain::transitions::Action::parse`]).
#[derive(utoipa::ToSchema)]
#[schema(as = ConnectionAction)]
#[allow(dead_code)] // a schema of path values: never constructed
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
        super::status::get_is_connection,
        super::batch::post_statuses,
        super::mutations::mutate,
        super::health::healthz,
        super::health::readyz,
    ),
    components(schemas(ConnectionStatus, ActionValue, StatusBody, IsConnectionBody, BatchRequest, BatchBody, Detail, Health, FollowerHealth)),
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
