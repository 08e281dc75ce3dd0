//! The admin listener (see `docs/api.md#admin-listener`): `/internal/*`
//! behind the internal token, never routed by the gateway. Health,
//! readiness and metrics are here too.

use std::collections::HashSet;

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use super::bodies::EventsReply;
use super::errors::ApiError;
use super::{body, endpoint, health, AppState, Worker};
use crate::auth::AuthError;
use crate::domain::{Subject, UserId};
use crate::events;
use crate::service::warm::{Progress, Scope};

/// Registers the admin routes.
pub fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(endpoint("/internal/v1/events", Method::POST, post_events))
        .service(endpoint("/internal/v1/cache/warm", Method::POST, post_warm))
        .service(endpoint("/metrics", Method::GET, get_metrics));
    health::routes(cfg);
}

/// `GET /metrics`: Prometheus text. Gauges are sampled now. Not behind the
/// internal token: the admin listener is private, and scrapers rarely carry
/// one.
async fn get_metrics(state: web::Data<AppState>, worker: web::Data<Worker>) -> HttpResponse {
    let Some(handle) = crate::meters::handle() else {
        return HttpResponse::ServiceUnavailable().body("metrics recorder unavailable\n");
    };
    pool_gauges(
        "connstatus_mysql_pool_connections",
        worker.health.mysql_pool(),
    );
    pool_gauges(
        "connstatus_redis_pool_connections",
        worker.warmer.redis_status(),
    );
    let open = if worker.health.redis_breaker_open() {
        1.0
    } else {
        0.0
    };
    metrics::gauge!("connstatus_redis_breaker_open").set(open);
    metrics::gauge!("connstatus_http_inflight").set(state.inflight.now() as f64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}

/// A pool's use as gauges: open, idle, waiting, max.
fn pool_gauges(name: &'static str, status: deadpool::Status) {
    for (state, value) in [
        ("open", status.size),
        ("idle", status.available),
        ("waiting", status.waiting),
        ("max", status.max_size),
    ] {
        metrics::gauge!(name, "state" => state).set(value as f64);
    }
}

/// The most users one warm request may name (each may have many pairs).
const MAX_WARM_USERS: usize = 100;

/// `POST /internal/v1/cache/warm` with `{"users": [...], "with": [...]}`:
/// warms those users' pairs (and their pairs with `with`, relation or not),
/// answering with the job's summary.
async fn post_warm(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    worker: web::Data<Worker>,
) -> Result<HttpResponse, ApiError> {
    let value = authorized_json(&req, payload, &state).await?;
    let users = user_list(&value, "users", MAX_WARM_USERS, true)?;
    let with = user_list(&value, "with", state.max_batch_ids, false)?;
    let progress = Progress::default();
    let summary = worker
        .warmer
        .run(
            &Scope::Users { users, with },
            &progress,
            std::future::pending(),
        )
        .await
        .map_err(ApiError::Unavailable)?;
    Ok(HttpResponse::Ok().json(summary))
}

/// A list of user ids under `key`: required or not, at most `max`.
fn user_list(
    value: &serde_json::Value,
    key: &str,
    max: usize,
    required: bool,
) -> Result<Vec<UserId>, ApiError> {
    let bad = |why: String| ApiError::BadRequest(why);
    let Some(object) = value.as_object() else {
        return Err(bad("body: expected an object".into()));
    };
    let list = match object.get(key) {
        None if !required => return Ok(Vec::new()),
        None => return Err(bad(format!("{key}: required, an array of user ids"))),
        Some(serde_json::Value::Array(list)) => list,
        Some(_) => return Err(bad(format!("{key}: expected an array of user ids"))),
    };
    if list.len() > max {
        return Err(bad(format!("{key}: at most {max} ids per request")));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64().and_then(UserId::new).ok_or_else(|| {
                bad(format!(
                    "{key}[{i}]: expected a user id (an integer from 1 to 2^63-1)"
                ))
            })
        })
        .collect()
}

/// Checks `Authorization: Bearer <internal token>` in constant time. A user
/// JWT is just a wrong token here.
fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let text = header.to_str().map_err(|_| AuthError::Invalid)?.trim();
    let (scheme, token) = text.split_once(' ').ok_or(AuthError::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing.into());
    }
    let expected = state.internal_token.expose_secret().as_bytes();
    if bool::from(token.trim().as_bytes().ct_eq(expected)) {
        Ok(())
    } else {
        Err(AuthError::Invalid.into())
    }
}

/// The body of an `/internal/*` request, once its token is checked.
async fn authorized_json(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<serde_json::Value, ApiError> {
    authorize(req, state)?;
    body::json(req, payload, state.max_body_bytes).await
}

/// `POST /internal/v1/events`: one event or an array, in the platform's
/// webhook shape. Everything is checked before anything is done; then every
/// distinct pair or user is recorded durably (503 if that fails: nothing is
/// acknowledged), re-read from MySQL and refreshed in the cache. A refresh
/// that fails stays recorded and the sweeper lands it: still 200.
async fn post_events(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    worker: web::Data<Worker>,
) -> Result<HttpResponse, ApiError> {
    let value = authorized_json(&req, payload, &state).await?;
    let subjects = events::parse(&value, state.max_events).map_err(ApiError::BadRequest)?;
    let processed = subjects.iter().flatten().count();
    let ignored = subjects.len() - processed;
    let distinct: HashSet<Subject> = subjects.into_iter().flatten().collect();
    let distinct: Vec<Subject> = distinct.into_iter().collect();
    let refreshed = worker
        .hooks
        .subjects_changed(&distinct)
        .await
        .map_err(|e| ApiError::Unavailable(e.0))?;
    if refreshed.queued > 0 {
        tracing::warn!(
            queued = refreshed.queued,
            "events accepted; some refreshes queued until they can land"
        );
    }
    Ok(HttpResponse::Ok().json(EventsReply { processed, ignored }))
}
