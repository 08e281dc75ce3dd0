//! `GET /api/v2/user/{id}/connection_status/` (see
//! `docs/api.md#get-the-connection-status`).

use actix_web::{web, HttpResponse};

use super::bodies::{Detail, StatusBody};
use super::caller::Caller;
use super::errors::ApiError;
use super::Worker;
use crate::domain::UserId;

/// The caller's connection status with user `{id}`.
#[utoipa::path(
    get,
    path = "/api/v2/user/{id}/connection_status/",
    params(("id" = String, Path, description = "The other user: ASCII digits, 1 to 2^63-1", example = "2")),
    responses(
        (status = 200, description = "The status as the caller sees it", body = StatusBody),
        (status = 401, description = "No or bad credentials", body = Detail),
        (status = 404, description = "No such user, or a malformed id", body = Detail),
        (status = 429, description = "Too many requests in flight", body = Detail),
        (status = 503, description = "MySQL needed and unavailable", body = Detail),
    )
)]
///
/// Authentication comes first (401 before 404, as the platform's endpoint
/// does); an id that is not `1..=2^63-1` in ASCII digits is "not found".
pub async fn get_status(
    caller: Caller,
    id: web::Path<String>,
    worker: web::Data<Worker>,
) -> Result<HttpResponse, ApiError> {
    let target = UserId::parse(&id).ok_or(ApiError::NotFound)?;
    let status = worker.statuses.status(caller.0, target).await?;
    Ok(HttpResponse::Ok().json(StatusBody::from(status)))
}
