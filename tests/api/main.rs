//! End-to-end tests against a real MySQL and a real Redis. One binary, one
//! module per area; `helpers` gives every test its own database and prefix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod batch;
mod binary;
mod cache;
mod concurrency;
mod degraded;
mod events;
mod failover;
mod faults;
mod follow;
mod helpers;
mod mutations;
mod near;
mod never_wrong;
mod operations;
mod outbox;
mod replicas;
mod routes;
mod schema;
mod sentinel;
mod status;
mod topology;
mod warm;
