//! `POST /api/v2/user/{id}/connection/<action>/` (see `docs/api.md#mutations`).

use actix_web::{web, HttpResponse};

use super::bodies::{Detail, StatusBody};
use super::caller::Caller;
use super::errors::ApiError;
use super::openapi::ActionValue;
use super::Worker;
use crate::domain::transitions::Action;
use crate::domain::UserId;

#[utoipa::path(
    post,
    path = "/api/v2/user/{id}/connection/{action}/",
    params(
        ("id" = String, Path, description = "The other user: ASCII digits, 1 to 2^63-1", example = "2"),
        ("action" = ActionValue, Path, description = "What the caller does"),
    ),
    responses(
        (status = 200, description = "The caller's status after the action", body = StatusBody),
        (status = 400, description = "The caller acted on themself", body = Detail),
        (status = 401, description = "No or bad credentials", body = Detail),
        (status = 403, description = "The caller's account is gone", body = Detail),
        (status = 404, description = "No such user or action", body = Detail),
        (status = 409, description = "The action makes no sense now", body = Detail),
        (status = 429, description = "Too many requests in flight", body = Detail),
        (status = 503, description = "MySQL unavailable", body = Detail),
    )
)]
/// Applies an action of the caller towards user `{id}` and answers with the
/// caller's status afterwards (MySQL commits first, then the cache is
/// refreshed: see [`crate::service::mutations`]).
pub async fn mutate(
    caller: Caller,
    path: web::Path<(String, String)>,
    worker: web::Data<Worker>,
) -> Result<HttpResponse, ApiError> {
    let (id, action) = path.into_inner();
    let action = Action::parse(&action).ok_or(ApiError::NotFound)?;
    let target = UserId::parse(&id).ok_or(ApiError::NotFound)?;
    let status = worker.mutations.act(caller.0, target, action).await?;
    Ok(HttpResponse::Ok().json(StatusBody::from(status)))
}
