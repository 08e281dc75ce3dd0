//! `GET /api/v2/user/{id}/connection_status/` and its family member
//! `GET /api/v2/user/{id}/is_connection/` (see
//! `docs/api.md#get-the-connection-status`), from the same cache entries.

use actix_web::http::header::ContentType;
use actix_web::{web, HttpResponse};

use super::bodies::{Detail, IsConnectionBody, StatusBody};
use super::caller::Caller;
use super::errors::ApiError;
use super::Worker;
use crate::domain::{Status, UserId};

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
    let status = status_of(caller, &id, &worker).await?;
    Ok(json(StatusBody::literal(status)))
}

/// The caller's status with the user a path's `{id}` names ("not found" for
/// an id that is not `1..=2^63-1` in ASCII digits).
async fn status_of(caller: Caller, id: &str, worker: &Worker) -> Result<Status, ApiError> {
    let target = UserId::parse(id).ok_or(ApiError::NotFound)?;
    Ok(worker.statuses.status(caller.0, target).await?)
}

/// Whether the caller and user `{id}` are connected.
#[utoipa::path(
    get,
    path = "/api/v2/user/{id}/is_connection/",
    params(("id" = String, Path, description = "The other user: ASCII digits, 1 to 2^63-1", example = "2")),
    responses(
        (status = 200, description = "true exactly when the two are connected", body = IsConnectionBody),
        (status = 401, description = "No or bad credentials", body = Detail),
        (status = 404, description = "No such user, or a malformed id", body = Detail),
        (status = 429, description = "Too many requests in flight", body = Detail),
        (status = 503, description = "MySQL needed and unavailable", body = Detail),
    )
)]
///
/// As the platform's published client asks it; yourself is `false`.
pub async fn get_is_connection(
    caller: Caller,
    id: web::Path<String>,
    worker: web::Data<Worker>,
) -> Result<HttpResponse, ApiError> {
    let status = status_of(caller, &id, &worker).await?;
    Ok(json(IsConnectionBody::literal(status == Status::Connected)))
}

/// A 200 with a JSON body written beforehand: one of a handful of bodies, so
/// the hot path skips the serializer and the allocation.
fn json(body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body)
}
