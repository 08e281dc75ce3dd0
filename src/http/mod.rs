//! The public HTTP surface: routes, shared state, and the pieces every
//! handler uses (the authenticated caller, the error mapping).

pub mod caller;
pub mod errors;
pub mod health;
pub mod status;

use std::sync::atomic::AtomicBool;

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use crate::auth::Verifier;
use crate::status::StatusService;
use errors::ApiError;

/// What every worker of an instance shares. (The read path, with its Redis
/// connection, is per worker: a [`StatusService`] in each worker's app data.)
pub struct AppState {
    /// Token verification.
    pub verifier: Verifier,
    /// Set once a shutdown starts: readiness answers 503 from then on.
    pub shutting_down: AtomicBool,
}

/// The per-worker read path, as handlers receive it.
pub type Statuses = web::Data<StatusService>;

/// Registers the public routes. Every path is served with and without its
/// trailing slash; a known path with another method is 405 with `Allow`;
/// anything else is 404 `{"detail": "Not found."}`.
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource([
            "/api/v2/user/{id}/connection_status/",
            "/api/v2/user/{id}/connection_status",
        ])
        .route(web::get().to(status::get_status))
        .default_service(web::to(|req: HttpRequest| method_not_allowed(req, "GET"))),
    )
    .service(
        web::resource(["/healthz", "/healthz/"])
            .route(web::get().to(health::healthz))
            .default_service(web::to(|req: HttpRequest| method_not_allowed(req, "GET"))),
    )
    .service(
        web::resource(["/readyz", "/readyz/"])
            .route(web::get().to(health::readyz))
            .default_service(web::to(|req: HttpRequest| method_not_allowed(req, "GET"))),
    );
}

/// The answer for a path that does not exist.
pub async fn not_found() -> HttpResponse {
    ApiError::NotFound.error_response()
}

async fn method_not_allowed(req: HttpRequest, allow: &'static str) -> HttpResponse {
    ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        allow,
    }
    .error_response()
}
