//! The authenticated caller, as an extractor: a handler that takes a
//! [`Caller`] runs only for a request with a valid bearer token.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};

use super::errors::ApiError;
use super::{AppState, Worker};
use crate::domain::UserId;

/// The user a valid token names.
#[derive(Clone, Copy, Debug)]
pub struct Caller(pub UserId);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            // Only reachable if the app was built without its state: a
            // programming error, reported as an opaque 503 rather than a panic.
            return ready(Err(ApiError::Unavailable("no application state".into())));
        };
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let result = match req.app_data::<web::Data<Worker>>() {
            Some(worker) => worker
                .tokens
                .borrow_mut()
                .authenticate(&state.verifier, header),
            None => state.verifier.authenticate(header),
        };
        ready(result.map(Caller).map_err(ApiError::from))
    }
}
