//! The HTTP surface: routes, shared state, and the pieces every handler uses
//! (the authenticated caller, the error mapping, the body types). Handlers
//! parse, call a service, and answer: no SQL and no cache calls here.

pub mod admin;
pub mod batch;
pub mod bodies;
pub mod body;
pub mod caller;
pub mod edge;
pub mod errors;
pub mod health;
pub mod mutations;
pub mod openapi;
pub mod status;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use secrecy::SecretString;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use crate::auth::Verifier;
use crate::service::health::Health;
use crate::service::mutations::Mutations;
use crate::service::refresh::Hooks;
use crate::service::statuses::StatusService;
use crate::service::warm::Warmer;
use errors::ApiError;

/// What every worker of an instance shares.
pub struct AppState {
    /// Token verification.
    pub verifier: Verifier,
    /// The bearer token of `/internal/*`.
    pub internal_token: SecretString,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// The most reading one request body may take.
    pub body_timeout: Duration,
    /// The most events one `POST /internal/v1/events` may carry.
    pub max_events: usize,
    /// The most distinct ids in one batch of statuses.
    pub max_batch_ids: usize,
    /// Set once a shutdown starts: readiness answers 503 from then on.
    pub shutting_down: AtomicBool,
    /// The public listener's in-flight cap (for the gauge).
    pub inflight: std::sync::Arc<edge::Inflight>,
    /// The binlog follower's state, for `/readyz`.
    pub follower: std::sync::Arc<crate::service::follow::FollowerStatus>,
}

/// What each worker has of its own: the services, sharing one Redis
/// connection made on the worker's thread.
pub struct Worker {
    /// The read path.
    pub statuses: StatusService,
    /// Connection actions.
    pub mutations: Mutations,
    /// The refresh mechanism behind the events endpoint.
    pub hooks: Hooks,
    /// The warming job, for `POST /internal/v1/cache/warm`.
    pub warmer: Warmer,
    /// Readiness and pool gauges.
    pub health: Health,
    /// Tokens this worker verified recently.
    pub tokens: std::cell::RefCell<crate::auth::TokenCache>,
}

/// Registers the public routes. Every path is served with and without its
/// trailing slash; a known path with another method is 405 with `Allow`;
/// anything else is 404 `{"detail": "Not found."}`. The router tries
/// resources in order: the batch's static path first (a string comparison),
/// then the reads, most of the traffic (a regex each).
pub fn public_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(endpoint(
        "/api/v2/user/connection/statuses/",
        Method::POST,
        batch::post_statuses,
    ))
    .service(endpoint(
        "/api/v2/user/{id}/connection_status/",
        Method::GET,
        status::get_status,
    ))
    .service(endpoint(
        "/api/v2/user/{id}/is_connection/",
        Method::GET,
        status::get_is_connection,
    ))
    .service(endpoint_where(
        "/api/v2/user/{id}/connection/{action}/",
        Method::POST,
        mutations::mutate,
        known_action,
    ))
    .service(endpoint(
        "/api/v2/openapi.json",
        Method::GET,
        openapi::document,
    ));
    health::routes(cfg);
}

/// The metrics label of a resource: its pattern, a static string, so that
/// labelling a request costs neither a second route match nor an allocation.
#[derive(Clone, Copy, Debug)]
pub struct RouteLabel(pub &'static str);

/// The resources of `path`, with and without its trailing slash, that
/// answer `method` with `handler` and anything else with 405 and `Allow`.
pub(crate) fn endpoint<F, Args>(
    path: &'static str,
    method: Method,
    handler: F,
) -> (actix_web::Resource, actix_web::Resource)
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    endpoint_where(path, method, handler, |_| true)
}

/// Whether the `{action}` of a mutation path names an action: only then is
/// another method 405; an unknown action is no resource at all (404).
fn known_action(req: &HttpRequest) -> bool {
    req.match_info()
        .get("action")
        .and_then(crate::domain::transitions::Action::parse)
        .is_some()
}

/// [`endpoint`] for a path whose pattern matches more than exists: a request
/// with another method is 405 only when `exists` says the path names
/// something, else 404. (With `method`, the handler itself answers 404.)
///
/// Two resources of one pattern each, not one resource of two patterns:
/// actix matches a resource of several patterns with a regex set and then
/// the pattern's own regex, on every request that reaches it; one pattern is
/// one match.
pub(crate) fn endpoint_where<F, Args>(
    path: &'static str,
    method: Method,
    handler: F,
    exists: fn(&HttpRequest) -> bool,
) -> (actix_web::Resource, actix_web::Resource)
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    let other = match path.strip_suffix('/') {
        Some(bare) => bare.to_owned(),
        None => format!("{path}/"),
    };
    let allow: &'static str = if method == Method::POST {
        "POST"
    } else {
        "GET"
    };
    let resource = |pattern: String| {
        web::resource(pattern)
            .app_data(RouteLabel(path))
            .route(web::route().method(method.clone()).to(handler.clone()))
            .default_service(web::to(move |req: HttpRequest| async move {
                if exists(&req) {
                    method_not_allowed(req, allow).await
                } else {
                    not_found().await
                }
            }))
    };
    (resource(path.to_owned()), resource(other))
}

/// The answer for a path that does not exist.
pub async fn not_found() -> HttpResponse {
    ApiError::NotFound.error_response()
}

pub(crate) async fn method_not_allowed(req: HttpRequest, allow: &'static str) -> HttpResponse {
    ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        allow,
    }
    .error_response()
}
