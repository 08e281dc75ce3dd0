//! Reading a JSON request body within limits: the content type must be JSON
//! (415), the body no larger than the limit (413, checked before and while
//! reading, so a large body is never buffered), the whole body read within
//! the body deadline (408 and the connection closed, so a client trickling
//! its body cannot hold an in-flight slot), and the text valid JSON
//! (400; serde_json's nesting limit turns a deeply nested body into a 400 too).

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

use super::errors::ApiError;
use super::AppState;

/// The body deadline when the app carries no [`AppState`] (the configured
/// default).
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// The first allocation for a body; it grows as bytes arrive, never from
/// what `Content-Length` announces.
const INITIAL_CAPACITY: usize = 1024;

/// Reads and parses the body of `req` as JSON.
pub async fn json(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<serde_json::Value, ApiError> {
    parse(&bytes(req, payload, limit).await?)
}

/// Parses a body read by [`bytes`] as any JSON value.
pub fn parse(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body: not valid JSON ({e})")))
}

/// Reads the body of `req`, which must say it is JSON, within `limit` bytes
/// and the body deadline (`AppState::body_timeout`).
pub async fn bytes(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !(essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json")))
    {
        return Err(ApiError::UnsupportedMediaType(
            content_type.chars().take(100).collect(),
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let deadline = req
        .app_data::<web::Data<AppState>>()
        .map_or(DEFAULT_BODY_TIMEOUT, |state| state.body_timeout);
    let capacity = declared.unwrap_or(INITIAL_CAPACITY).min(INITIAL_CAPACITY);
    tokio::time::timeout(deadline, read(payload, limit, capacity))
        .await
        .map_err(|_| ApiError::RequestTimeout)?
}

/// Reads `payload` to its end, refusing it once it passes `limit`.
async fn read(
    mut payload: web::Payload,
    limit: usize,
    capacity: usize,
) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::with_capacity(capacity);
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("body: could not be read ({e})")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
