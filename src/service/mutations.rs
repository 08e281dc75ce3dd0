//! Mutations: one action of a caller towards another user, committed to
//! MySQL first, then refreshed into the cache through the same refresh
//! every writer uses (see `docs/api.md#mutations`).

use super::refresh::Hooks;
use crate::db::writes::{self, MutationError};
use crate::db::Db;
use crate::domain::transitions::Action;
use crate::domain::{Pair, Status, UserId};

/// Why an action was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// The caller named themself.
    #[error("You cannot do that with yourself.")]
    Yourself,
    /// The other user does not exist or is deleted.
    #[error("not found")]
    NotFound,
    /// The caller's own account does not exist or is deleted.
    #[error("Your account cannot change connections.")]
    CallerGone,
    /// The action makes no sense in the current state; the text says why.
    #[error("{0}")]
    Conflict(&'static str),
    /// MySQL failed or did not answer in time; nothing was changed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

/// Applies actions: commit, then refresh.
#[derive(Clone, Debug)]
pub struct Mutations {
    db: Db,
    hooks: Hooks,
}

impl Mutations {
    /// Mutations on `db`, refreshed through `hooks`.
    pub fn new(db: Db, hooks: Hooks) -> Self {
        Self { db, hooks }
    }

    /// `action` by `caller` towards `target`; the caller's status afterwards.
    /// A no-op (the effect already holds) answers again, so a retry is safe.
    pub async fn act(
        &self,
        caller: UserId,
        target: UserId,
        action: Action,
    ) -> Result<Status, ActError> {
        let (pair, side) = Pair::seen_by(caller, target).ok_or(ActError::Yourself)?;
        let mutated = self
            .db
            .run(async |conn| writes::mutate(conn, caller, pair, action).await)
            .await
            .map_err(|e| match e {
                MutationError::NotFound => ActError::NotFound,
                MutationError::CallerGone => ActError::CallerGone,
                MutationError::Conflict(reason) => ActError::Conflict(reason),
                MutationError::Db(e) => ActError::Unavailable(e.to_string()),
                MutationError::Unavailable(e) => ActError::Unavailable(e.0),
            })?;
        // Committed. A no-op refreshes too: the cache may be behind a writer
        // that sent no event. A failure here is queued or logged, never
        // answered: the change is in MySQL and the queue will land it.
        if let Err(e) = self.hooks.pair_changed(pair.low(), pair.high()).await {
            tracing::warn!(error = %e, "refresh after mutation failed; the queue will retry");
        }
        Ok(mutated.relation.status_for(side))
    }
}
