//! The use cases, over the database and the cache: the only layer that sees
//! both. HTTP handlers and the commands call these; these call `db` and
//! `cache`, which never call each other.

pub mod flight;
pub mod follow;
pub mod health;
pub mod mutations;
pub mod refresh;
pub mod statuses;
pub mod warm;
