//! connstatus: the connection status between the logged-in user and another
//! user — `connected`, `sent_connection_request`,
//! `received_connection_request` or `null` — answered from Redis, with MySQL
//! as the source of truth.
//!
//! # Layout
//!
//! `ARCHITECTURE.md` has the map; in short, imports point down this list:
//!
//! - [`http`]: routes and handlers (parse → call a service → answer), the
//!   one error mapping. No SQL, no cache calls.
//! - [`service`]: the use cases — the read path, mutations, the one refresh
//!   mechanism (exported as [`hooks`]), warming, health. The only layer that
//!   sees both `db` and `cache`.
//! - [`db`]: MySQL through Diesel (pool, migrations, queries, the outbox).
//! - [`cache`]: Redis (keys, value codec, lookups, leased writes).
//! - [`auth`], [`config`], [`events`]: JWTs, settings, webhook events.
//! - [`domain`]: ids, pairs, relations, versions, the transition table. Pure.
//!
//! Around them: [`startup`] builds and binds the service, [`cli`] runs the
//! commands (`main.rs` only calls it), [`seed`] makes synthetic graphs,
//! [`telemetry`] and [`meters`] are logs and metrics.

pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod events;
pub mod http;
pub mod meters;
pub mod seed;
pub mod service;
pub mod startup;
pub mod telemetry;

/// The cache-invalidation hook API for Rust callers (see the module's
/// example).
pub use service::refresh as hooks;
