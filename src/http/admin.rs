//! The admin listener (CONTRACT section 6): `/internal/*` behind the internal
//! token, never routed by the gateway. Health and readiness are here too.

use std::collections::HashSet;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::{stream, StreamExt, TryStreamExt};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use super::errors::ApiError;
use super::{body, health, method_not_allowed, AppState, Worker};
use crate::auth::AuthError;
use crate::events::{self, Notice};
use crate::hooks::Refreshed;

/// Registers the admin routes.
pub fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(["/internal/v1/events", "/internal/v1/events/"])
            .route(web::post().to(post_events))
            .default_service(web::to(|req: HttpRequest| method_not_allowed(req, "POST"))),
    );
    health::routes(cfg);
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

/// `POST /internal/v1/events`: one event or an array, in the platform's
/// webhook shape. Everything is checked before anything is done; then each
/// distinct pair or user is re-read from MySQL and refreshed in the cache.
async fn post_events(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    worker: web::Data<Worker>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let value = body::json(&req, payload, state.max_body_bytes).await?;
    let notices = events::parse(&value, state.max_events).map_err(ApiError::BadRequest)?;
    let ignored = notices.iter().filter(|n| **n == Notice::Ignored).count();
    let processed = notices.len() - ignored;
    let distinct: HashSet<Notice> = notices
        .into_iter()
        .filter(|n| *n != Notice::Ignored)
        .collect();
    let hooks = &worker.hooks;
    let refreshed: Vec<Refreshed> = stream::iter(distinct)
        .map(|notice| async move {
            match notice {
                Notice::Pair(pair) => hooks.pair_changed(pair.low(), pair.high()).await,
                Notice::User(user) => hooks.user_changed(user).await,
                Notice::Ignored => Ok(Refreshed::default()),
            }
        })
        .buffer_unordered(8)
        .try_collect()
        .await
        .map_err(|e| ApiError::Unavailable(e.0))?;
    let queued: u64 = refreshed.iter().map(|r| r.queued).sum();
    if queued > 0 {
        tracing::warn!(
            queued,
            "events accepted; some refreshes queued until Redis answers"
        );
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"processed": processed, "ignored": ignored})))
}
