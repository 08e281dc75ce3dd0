//! connstatus: the connection status between the logged-in user and another
//! user — `connected`, `sent_connection_request`,
//! `received_connection_request` or `null` — answered from Redis, with MySQL
//! as the source of truth.
//!
//! # Layout
//!
//! - [`domain`]: user ids, ordered pairs, relations and how each side sees
//!   them. Pure.
//! - [`auth`]: bearer JWT verification with `biscuit`.
//! - [`config`]: layered, typed, validated settings.
//! - [`db`]: MySQL through Diesel (pool, migrations, queries).
//! - [`cache`]: Redis (keys, value codec, the only-if-newer fill).
//! - [`status`]: the read path, cache first, MySQL on a miss.
//! - [`flight`]: single-flight, one MySQL read for concurrent misses of a pair.
//! - [`http`]: routes, handlers, the error mapping.
//! - [`startup`]: builds and binds the service.
//! - [`seed`]: the deterministic synthetic graph.
//! - [`cli`]: the `connstatus` commands; `main.rs` only calls it.

pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod events;
pub mod flight;
pub mod hooks;
pub mod http;
pub mod metrics;
pub mod seed;
pub mod startup;
pub mod status;
pub mod telemetry;
pub mod transitions;
pub mod warm;
