//! The floors of this machine, as minimal servers for the load benchmark
//! (`scripts/load.sh`): what any answer must cost at the least.
//!
//! - `h ADDR`: Floor H — an actix-web handler doing one Redis `GET` over a
//!   per-worker multiplexed connection and returning a JSON body: the least
//!   a cached answer can cost.
//! - `m ADDR`: Floor M — the same with one MySQL primary-key select through
//!   diesel-async's pool instead: the least a cache miss can cost.
//! - `z ADDR`: Floor Z — the same handler answering at once, with no I/O:
//!   the most any answer from process memory (the near cache's) can reach
//!   on this machine, with the load generator on the same cores.
//!
//! Environment: `REDIS_URL`, `DATABASE_URL`, `FLOOR_KEY` (the Redis key
//! Floor H reads; `{id}` in it stands for the id in the request's path). Not a Criterion bench: `cargo bench --bench floors` alone
//! prints this help and exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use actix_web::{web, App, HttpResponse, HttpServer};
use connstatus::db::schema::users;
use diesel::prelude::*;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

// The same allocator as the service: a floor built with less would not be
// the least this machine can do.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Pool = diesel_async::pooled_connection::deadpool::Pool<AsyncMysqlConnection>;

/// The key Floor H reads: `FLOOR_KEY` with `{id}` replaced by the path's id,
/// so that the floor can read one hot key or keys spread like the service's.
struct FloorKey {
    before: String,
    after: Option<String>,
}

async fn floor_h(
    conn: web::Data<redis::aio::MultiplexedConnection>,
    key: web::Data<FloorKey>,
    id: web::Path<String>,
) -> HttpResponse {
    let mut conn = conn.get_ref().clone();
    let mut name = String::with_capacity(64);
    name.push_str(&key.before);
    if let Some(after) = &key.after {
        name.push_str(&id);
        name.push_str(after);
    }
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(name.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    answer(value.is_some())
}

/// Extracts the id like the others, then answers without looking anything up.
async fn floor_z(_id: web::Path<String>) -> HttpResponse {
    answer(true)
}

async fn floor_m(pool: web::Data<Pool>, id: web::Path<u64>) -> HttpResponse {
    let mut conn = pool.get().await.unwrap();
    let version: Option<u64> = users::table
        .filter(users::id.eq(id.into_inner()))
        .select(users::version)
        .first(&mut conn)
        .await
        .optional()
        .unwrap();
    answer(version.is_some())
}

/// Every floor's body, built the same way (a `format!`, as the floors
/// always have, so that their figures stay comparable across runs).
fn answer(found: bool) -> HttpResponse {
    let status = if found { "\"connected\"" } else { "null" };
    HttpResponse::Ok()
        .content_type("application/json")
        .body(format!("{{\"connection_status\":{status}}}"))
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (mode, addr) = match args.as_slice() {
        [mode, addr] if ["h", "m", "z"].contains(&mode.as_str()) => (mode.clone(), addr.clone()),
        _ => {
            eprintln!("usage: floors (h|m|z) ADDR   (see scripts/load.sh)");
            return Ok(());
        }
    };
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let db_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/connstatus".into());
    let key = std::env::var("FLOOR_KEY").unwrap_or_else(|_| "floor:key".into());
    let key = match key.split_once("{id}") {
        Some((before, after)) => FloorKey {
            before: before.into(),
            after: Some(after.into()),
        },
        None => FloorKey {
            before: key,
            after: None,
        },
    };
    let key = web::Data::new(key);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    actix_web::rt::System::new().block_on(async move {
        let pool = {
            let mut config = ManagerConfig::default();
            config.recycling_method = RecyclingMethod::Fast;
            let manager = AsyncDieselConnectionManager::<AsyncMysqlConnection>::new_with_config(
                db_url, config,
            );
            Pool::builder(manager).max_size(16).build().unwrap()
        };
        let client = redis::Client::open(redis_url).unwrap();
        HttpServer::new(move || {
            let app = App::new().app_data(key.clone());
            if mode == "h" {
                // One multiplexed connection per worker, made on the worker.
                let client = client.clone();
                app.data_factory(move || {
                    let client = client.clone();
                    async move { client.get_multiplexed_async_connection().await }
                })
                .route("/floor/{id}", web::get().to(floor_h))
            } else if mode == "z" {
                app.route("/floor/{id}", web::get().to(floor_z))
            } else {
                app.app_data(web::Data::new(pool.clone()))
                    .route("/floor/{id}", web::get().to(floor_m))
            }
        })
        .workers(workers)
        .bind(addr)?
        .run()
        .await
    })
}
