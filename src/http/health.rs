//! `GET /healthz` (the process runs) and `GET /readyz` (this instance can
//! serve), for the load balancer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use serde::Serialize;

use super::{endpoint, AppState, Worker};
use crate::status::StatusService;

/// How long a readiness probe waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Registers `/healthz` and `/readyz` (both listeners serve them).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(endpoint("/healthz", Method::GET, healthz))
        .service(endpoint("/readyz", Method::GET, readyz));
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "Running", body = super::openapi::Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    mysql: &'static str,
    redis: &'static str,
}

#[utoipa::path(get, path = "/readyz", security(()), responses(
    (status = 200, description = "This instance can serve", body = super::openapi::Health),
    (status = 503, description = "Shutting down, or neither MySQL nor Redis answers", body = super::openapi::Health),
))]
/// 200 while this instance can serve (MySQL or Redis answers), with each
/// dependency's state; 503 while shutting down or when neither answers.
pub async fn readyz(state: web::Data<AppState>, worker: web::Data<Worker>) -> HttpResponse {
    let (mysql, redis) = tokio::join!(mysql_up(&worker.statuses), redis_up(&worker.statuses));
    let shutting_down = state.shutting_down.load(Ordering::Relaxed);
    let ready = !shutting_down && (mysql || redis);
    let body = Readiness {
        status: if shutting_down {
            "shutting_down"
        } else if ready {
            "ready"
        } else {
            "unavailable"
        },
        mysql: up_or_down(mysql),
        redis: up_or_down(redis),
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body)
    }
}

fn up_or_down(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

async fn mysql_up(statuses: &StatusService) -> bool {
    use diesel_async::SimpleAsyncConnection;
    let probe = async {
        let mut conn = statuses.db().get().await.ok()?;
        match conn.batch_execute("SELECT 1").await {
            Ok(()) => Some(()),
            Err(_) => {
                crate::db::discard(conn);
                None
            }
        }
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(()))
    )
}

async fn redis_up(statuses: &StatusService) -> bool {
    statuses.cache().ping(PROBE_TIMEOUT).await
}
