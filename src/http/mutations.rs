//! `POST /api/v2/user/{id}/connection/<action>/` (CONTRACT section 2.3).

use actix_web::http::header::ContentType;
use actix_web::{web, HttpResponse};

use super::caller::Caller;
use super::errors::ApiError;
use super::Worker;
use crate::db;
use crate::db::writes::{self, MutationError};
use crate::domain::{Pair, UserId};
use crate::transitions::Action;

#[utoipa::path(
    post,
    path = "/api/v2/user/{id}/connection/{action}/",
    params(
        ("id" = String, Path, description = "The other user: ASCII digits, 1 to 2^63-1", example = "2"),
        ("action" = super::openapi::ActionValue, Path, description = "What the caller does"),
    ),
    responses(
        (status = 200, description = "The caller's status after the action", body = super::openapi::StatusBody),
        (status = 400, description = "The caller acted on themself", body = super::openapi::Detail),
        (status = 401, description = "No or bad credentials", body = super::openapi::Detail),
        (status = 403, description = "The caller's account is gone", body = super::openapi::Detail),
        (status = 404, description = "No such user or action", body = super::openapi::Detail),
        (status = 409, description = "The action makes no sense now", body = super::openapi::Detail),
        (status = 429, description = "Too many requests in flight", body = super::openapi::Detail),
        (status = 503, description = "MySQL unavailable", body = super::openapi::Detail),
    )
)]
/// Applies an action of the caller towards user `{id}` and answers with the
/// caller's status afterwards. MySQL commits first; then the cache is
/// refreshed through the same hook external writers use. A cache that cannot
/// be written does not fail the request: the refresh is queued.
pub async fn mutate(
    caller: Caller,
    path: web::Path<(String, String)>,
    worker: web::Data<Worker>,
) -> Result<HttpResponse, ApiError> {
    let (id, action) = path.into_inner();
    let action = Action::parse(&action).ok_or(ApiError::NotFound)?;
    let target = UserId::parse(&id).ok_or(ApiError::NotFound)?;
    let (pair, side) = Pair::seen_by(caller.0, target)
        .ok_or_else(|| ApiError::BadRequest("You cannot do that with yourself.".into()))?;

    let hooks = &worker.hooks;
    let mut conn = hooks
        .connection()
        .await
        .map_err(|e| ApiError::Unavailable(e.0))?;
    let work = writes::mutate(&mut conn, caller.0, pair, action);
    let result = tokio::time::timeout(worker.db_timeout, work).await;
    if matches!(result, Err(_) | Ok(Err(MutationError::Db(_)))) {
        // A connection that failed or was cut off mid-transaction is not
        // trusted again.
        db::discard(conn);
    } else {
        drop(conn);
    }
    let mutated = match result {
        Err(_) => return Err(ApiError::Unavailable("mutation timed out".into())),
        Ok(Err(MutationError::NotFound)) => return Err(ApiError::NotFound),
        Ok(Err(MutationError::CallerGone)) => {
            return Err(ApiError::Forbidden(
                "Your account cannot change connections.".into(),
            ))
        }
        Ok(Err(MutationError::Conflict(reason))) => return Err(ApiError::Conflict(reason.into())),
        Ok(Err(MutationError::Db(e))) => return Err(ApiError::Unavailable(e.to_string())),
        Ok(Ok(mutated)) => mutated,
    };
    // Committed. A no-op refreshes too: the cache may be behind a writer
    // that sent no event. A failure here is queued or logged, never answered.
    if let Err(e) = hooks.pair_changed(pair.low(), pair.high()).await {
        tracing::warn!(error = %e, "refresh after mutation failed; the queue will retry");
    }
    let body = format!(
        "{{\"connection_status\":{}}}",
        mutated.relation.status_for(side).json_literal()
    );
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body))
}
