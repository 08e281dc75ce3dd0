//! What every request passes through first: its `X-Request-Id`, the
//! in-flight cap (429 beyond it), its log span, and its metrics.

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use std::cell::RefCell;
use std::collections::HashMap;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, Error, ResponseError};
use metrics::{Counter, Histogram};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::errors::ApiError;

/// The request id header, kept from the gateway or made here.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Limits on what a request may bring.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The most header bytes (names, values, separators) a request may
    /// carry; beyond it, 431. (actix itself refuses heads over 128 KiB.)
    pub max_header_bytes: usize,
}

/// The in-flight cap of one instance, shared by its workers: a semaphore
/// with a permit per request in flight, taken without waiting.
#[derive(Debug)]
pub struct Inflight {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Inflight {
    /// A cap of `max` requests in flight.
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        })
    }

    /// Requests in flight now.
    pub fn now(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// A place under the cap, or `None` at once when there is none; the
    /// place is freed when the permit drops, whatever happens.
    fn enter(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// A request id from the gateway is kept when it is sane: 1 to 128
/// characters of letters, digits and `-_.:`. Anything else is replaced, so
/// that no caller can inject text into the logs.
fn sane(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let ok = (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then_some(text)
}

/// The middleware (`from_fn`). Health and readiness are never shed: the
/// balancer must see them even when the instance is saturated.
pub async fn edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let started = Instant::now();
    let id = request_id(&req);
    let method = method_label(req.method());
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    let max_header_bytes = req
        .app_data::<web::Data<Limits>>()
        .map(|l| l.max_header_bytes);
    if max_header_bytes.is_some_and(|max| header_bytes > max) {
        return Ok(refuse(req, ApiError::HeadersTooLarge, id, method, started));
    }
    let probe = matches!(
        req.path(),
        "/healthz" | "/healthz/" | "/readyz" | "/readyz/"
    );
    let slot = match req.app_data::<web::Data<Arc<Inflight>>>() {
        Some(cap) if !probe => match cap.enter() {
            Some(slot) => Some(slot),
            None => {
                metrics::counter!("connstatus_http_shed_total").increment(1);
                return Ok(refuse(req, ApiError::Overloaded, id, method, started));
            }
        },
        _ => None,
    };
    let span = tracing::info_span!(
        "request",
        request_id = id.to_str().unwrap_or(""),
        method,
        path = %req.path()
    );
    let mut res = next
        .call(req)
        .instrument(span.clone())
        .await?
        .map_into_left_body();
    drop(slot);
    let status = res.status().as_u16();
    record(route_of(res.request()), method, status, started);
    res.headers_mut().insert(REQUEST_ID, id);
    span.in_scope(|| {
        tracing::debug!(
            status,
            micros = started.elapsed().as_micros() as u64,
            "answered"
        );
    });
    Ok(res)
}

/// Answers `error` without running the handler.
fn refuse<B>(
    req: ServiceRequest,
    error: ApiError,
    id: HeaderValue,
    method: &'static str,
    started: Instant,
) -> ServiceResponse<EitherBody<B>> {
    let response = error.error_response();
    let mut res = req.into_response(response).map_into_right_body();
    record(
        route_of(res.request()),
        method,
        res.status().as_u16(),
        started,
    );
    res.headers_mut().insert(REQUEST_ID, id);
    res
}

/// The gateway's id when sane, else a new UUID; built without a String.
fn request_id(req: &ServiceRequest) -> HeaderValue {
    if let Some(value) = req.headers().get(REQUEST_ID).filter(|v| sane(v).is_some()) {
        return value.clone();
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("-"))
}

/// The method as a metrics label; anything unusual is `OTHER`, so that no
/// client can make up label values.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The route label of a request: its resource's pattern (a label per route,
/// not per id), or `unmatched`.
fn route_of(req: &actix_web::HttpRequest) -> &'static str {
    req.app_data::<super::RouteLabel>()
        .map_or("unmatched", |r| r.0)
}

/// Metric handles by (route pattern's address, method, status).
type Handles =
    HashMap<(usize, &'static str, u16), (Counter, Histogram), foldhash::fast::RandomState>;

thread_local! {
    /// This worker's metric handles per (route, method, status): looking a
    /// handle up in the global registry hashes and compares its labels, and
    /// this runs on every request.
    static HANDLES: RefCell<Handles> = RefCell::new(HashMap::default());
}

fn record(route: &'static str, method: &'static str, status: u16, started: Instant) {
    let elapsed = started.elapsed().as_secs_f64();
    HANDLES.with_borrow_mut(|handles| {
        let (counter, histogram) = handles
            .entry((route.as_ptr() as usize, method, status))
            .or_insert_with(|| {
                (
                    metrics::counter!(
                        "connstatus_http_requests_total",
                        "route" => route,
                        "method" => method,
                        "status" => status.to_string()
                    ),
                    metrics::histogram!("connstatus_http_request_duration_seconds", "route" => route),
                )
            });
        counter.increment(1);
        histogram.record(elapsed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_request_ids_are_kept() {
        for good in ["abc", "0f8e-11ee.x:y_z", &"a".repeat(128)] {
            assert_eq!(
                sane(&HeaderValue::from_str(good).expect("header")),
                Some(good)
            );
        }
        for bad in ["", "a b", "a\\nb", "<script>", &"a".repeat(129), "é"] {
            let Ok(value) = HeaderValue::from_str(bad) else {
                continue;
            };
            assert_eq!(sane(&value), None, "{bad:?}");
        }
    }

    #[test]
    fn the_cap_admits_up_to_max_and_frees_on_drop() {
        let cap = Inflight::new(2);
        let a = cap.enter();
        let b = cap.enter();
        assert!(a.is_some() && b.is_some());
        assert!(cap.enter().is_none(), "the third is refused");
        assert_eq!(cap.now(), 2, "a refused request holds no place");
        drop(a);
        assert!(cap.enter().is_some(), "a freed place is taken again");
        drop(b);
        assert_eq!(cap.now(), 0);
    }
}
