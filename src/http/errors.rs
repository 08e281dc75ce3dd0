//! The one place where failures become HTTP answers: `{"detail": "..."}`
//! with the right status and headers (see `docs/api.md#errors`).

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use super::bodies::Detail;
use crate::auth::AuthError;
use crate::service::mutations::ActError;
use crate::service::statuses::LookupError;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECONDS: &str = "1";

/// Every error a public endpoint can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no or bad credentials.
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    /// 400: bad input; the message says what is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// 403: authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource or user.
    #[error("Not found.")]
    NotFound,
    /// 409: the action makes no sense in the current state.
    #[error("{0}")]
    Conflict(String),
    /// 408: the body did not arrive within the configured time; the
    /// connection is closed after the answer.
    #[error("The request body was not received in time.")]
    RequestTimeout,
    /// 413: the body is larger than the configured limit.
    #[error("Request body is larger than {0} bytes.")]
    PayloadTooLarge(usize),
    /// 415: the body is not JSON.
    #[error("Unsupported media type \"{0}\" in request; send application/json.")]
    UnsupportedMediaType(String),
    /// 405: the path exists, the method does not; carries the `Allow` value.
    #[error("Method \"{method}\" not allowed.")]
    MethodNotAllowed {
        /// The method that was used.
        method: String,
        /// The methods the path takes.
        allow: &'static str,
    },
    /// 431: the request's headers are larger than the configured limit.
    #[error("Request headers are too large.")]
    HeadersTooLarge,
    /// 429: more requests in flight than this instance takes.
    #[error("Too many requests in flight; retry shortly.")]
    Overloaded,
    /// 503: a dependency needed for this answer is down.
    #[error("Service temporarily unavailable, try again soon.")]
    Unavailable(String),
}

impl From<LookupError> for ApiError {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::NotFound => ApiError::NotFound,
            LookupError::Unavailable(why) => ApiError::Unavailable(why.0),
        }
    }
}

impl From<ActError> for ApiError {
    fn from(e: ActError) -> Self {
        match e {
            ActError::Yourself => ApiError::BadRequest(e.to_string()),
            ActError::NotFound => ApiError::NotFound,
            ActError::CallerGone => ApiError::Forbidden(e.to_string()),
            ActError::Conflict(reason) => ApiError::Conflict(reason.into()),
            ActError::Unavailable(why) => ApiError::Unavailable(why),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized(AuthError::Missing) => {
                response.insert_header((header::WWW_AUTHENTICATE, r#"Bearer realm="api""#));
            }
            ApiError::Unauthorized(AuthError::Invalid) => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    r#"Bearer realm="api", error="invalid_token""#,
                ));
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                response.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
            }
            ApiError::Overloaded => {
                response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECONDS));
            }
            ApiError::RequestTimeout => {
                // The rest of a body that is late may still arrive: the
                // connection cannot carry another request.
                response.force_close();
            }
            ApiError::Unavailable(why) => {
                // The cause is for the operator's log, not for the caller.
                tracing::warn!(cause = %why, "answering 503");
                response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECONDS));
            }
            ApiError::BadRequest(_)
            | ApiError::Forbidden(_)
            | ApiError::NotFound
            | ApiError::Conflict(_)
            | ApiError::PayloadTooLarge(_)
            | ApiError::UnsupportedMediaType(_)
            | ApiError::HeadersTooLarge => {}
        }
        response.json(Detail {
            detail: self.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body_of(
        e: ApiError,
    ) -> (
        StatusCode,
        serde_json::Value,
        actix_web::http::header::HeaderMap,
    ) {
        let response = e.error_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .try_into_bytes()
            .expect("in-memory body");
        (
            status,
            serde_json::from_slice(&bytes).expect("json"),
            headers,
        )
    }

    #[test]
    fn every_error_has_the_contract_shape_and_headers() {
        let (status, body, headers) = body_of(ApiError::Unauthorized(AuthError::Missing));
        assert_eq!(status, 401);
        assert_eq!(
            body,
            serde_json::json!({"detail": "Authentication credentials were not provided."})
        );
        assert!(headers.get("www-authenticate").is_some());

        let (status, body, headers) = body_of(ApiError::Unauthorized(AuthError::Invalid));
        assert_eq!(status, 401);
        assert_eq!(body, serde_json::json!({"detail": "Invalid token."}));
        assert!(headers.get("www-authenticate").is_some());

        let (status, body, _) = body_of(ApiError::NotFound);
        assert_eq!(
            (status.as_u16(), body),
            (404, serde_json::json!({"detail": "Not found."}))
        );

        let (status, body, headers) = body_of(ApiError::MethodNotAllowed {
            method: "PUT".into(),
            allow: "GET",
        });
        assert_eq!(status, 405);
        assert_eq!(
            body,
            serde_json::json!({"detail": "Method \"PUT\" not allowed."})
        );
        assert_eq!(
            headers.get("allow").map(|v| v.as_bytes()),
            Some(&b"GET"[..])
        );

        let (status, body, headers) = body_of(ApiError::Unavailable("db down".into()));
        assert_eq!(status, 503);
        assert_eq!(
            body["detail"].as_str().map(|d| d.contains("db down")),
            Some(false)
        );
        assert!(headers.get("retry-after").is_some());
    }

    #[test]
    fn a_late_body_is_408_with_a_detail_and_closes_the_connection() {
        let response = ApiError::RequestTimeout.error_response();
        assert!(
            !response.head().keep_alive(),
            "the connection is closed after the answer"
        );
        let (status, body, _) = body_of(ApiError::RequestTimeout);
        assert_eq!(status, 408);
        assert_eq!(
            body,
            serde_json::json!({"detail": "The request body was not received in time."})
        );
    }
}
