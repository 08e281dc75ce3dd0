//! `GET /healthz` (the process runs) and `GET /readyz` (this instance can
//! serve), for the load balancer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::http::Method;
use actix_web::{web, HttpResponse};

use super::bodies::{FollowerHealth, Health};
use super::{endpoint, AppState, Worker};

/// How long a readiness probe waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Registers `/healthz` and `/readyz` (both listeners serve them).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(endpoint("/healthz", Method::GET, healthz))
        .service(endpoint("/readyz", Method::GET, readyz));
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "Running", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok",
        mysql: None,
        redis: None,
        follower: None,
    })
}

#[utoipa::path(get, path = "/readyz", security(()), responses(
    (status = 200, description = "This instance can serve", body = Health),
    (status = 503, description = "Shutting down, or neither MySQL nor Redis answers", body = Health),
))]
/// 200 while this instance can serve (MySQL or Redis answers), with each
/// dependency's state; 503 while shutting down or when neither answers.
pub async fn readyz(state: web::Data<AppState>, worker: web::Data<Worker>) -> HttpResponse {
    let up = worker.health.check(PROBE_TIMEOUT).await;
    let shutting_down = state.shutting_down.load(Ordering::Relaxed);
    let ready = !shutting_down && (up.mysql || up.redis);
    let body = Health {
        status: if shutting_down {
            "shutting_down"
        } else if ready {
            "ready"
        } else {
            "unavailable"
        },
        mysql: Some(up_or_down(up.mysql)),
        redis: Some(up_or_down(up.redis)),
        follower: Some(follower(&state)),
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body)
    }
}

fn follower(state: &AppState) -> FollowerHealth {
    let report = state.follower.report();
    FollowerHealth {
        state: report.state.as_str(),
        lag_seconds: report.lag_seconds,
        lag_bytes: report.lag_bytes,
        position: report.position,
        detail: report.detail,
    }
}

fn up_or_down(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}
