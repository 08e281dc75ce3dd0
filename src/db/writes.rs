//! The mutation transaction: one action on one pair, under the pair's row
//! lock, with its refresh recorded in the outbox in the same transaction.

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Unsigned};
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};

use super::reads;
use super::schema::users;
use super::{outbox, Failure};
use crate::domain::transitions::{self, Action, Outcome};
use crate::domain::{Pair, Relation, Side, Subject, UserId};

/// Why a mutation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MutationError {
    /// The other user does not exist or is deleted.
    #[error("not found")]
    NotFound,
    /// The caller's own account does not exist or is deleted.
    #[error("the caller's account does not exist")]
    CallerGone,
    /// The action makes no sense in the current state.
    #[error("{0}")]
    Conflict(&'static str),
    /// MySQL failed.
    #[error(transparent)]
    Db(#[from] DieselError),
    /// MySQL could not be reached in time.
    #[error(transparent)]
    Unavailable(#[from] super::DbError),
}

impl Failure for MutationError {
    fn is_failure(&self) -> bool {
        matches!(self, MutationError::Db(_) | MutationError::Unavailable(_))
    }
}

/// What a mutation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mutated {
    /// The relation after the action (unchanged on a no-op).
    pub relation: Relation,
    /// Whether a row changed (false: the effect already held).
    pub changed: bool,
}

/// Attempts at a mutation transaction that lost a race (two first requests
/// inserting the same row, or a deadlock) before giving up.
const ATTEMPTS: usize = 5;

/// Applies `action` by `caller` on `pair` in one transaction that locks the
/// pair's row, so concurrent mutations of a pair serialize. A change raises
/// the row's version (trigger) and records the refresh in the queue, in the
/// same transaction; the caller refreshes the cache after the commit.
pub async fn mutate(
    conn: &mut AsyncMysqlConnection,
    caller: UserId,
    pair: Pair,
    action: Action,
) -> Result<Mutated, MutationError> {
    let actor = pair.side_of(caller).ok_or(MutationError::NotFound)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = conn
            .transaction(async move |conn| mutate_once(conn, caller, pair, actor, action).await)
            .await;
        match result {
            Err(MutationError::Db(e)) if attempt < ATTEMPTS && lost_race(&e) => continue,
            other => return other,
        }
    }
}

async fn mutate_once(
    conn: &mut AsyncMysqlConnection,
    caller: UserId,
    pair: Pair,
    actor: Side,
    action: Action,
) -> Result<Mutated, MutationError> {
    let active: Vec<(u64, bool)> = users::table
        .filter(users::id.eq_any([pair.low().get(), pair.high().get()]))
        .select((users::id, users::deleted_at.is_null()))
        .load(conn)
        .await?;
    let is_active = |id: UserId| active.iter().any(|&(u, ok)| u == id.get() && ok);
    let other = pair.user(if actor == Side::Low {
        Side::High
    } else {
        Side::Low
    });
    if !is_active(other) {
        return Err(MutationError::NotFound);
    }
    if !is_active(caller) {
        return Err(MutationError::CallerGone);
    }

    let current = reads::pair_for_update(conn, pair).await?;
    let next = match transitions::apply(current.value, actor, action) {
        Outcome::Conflict(reason) => return Err(MutationError::Conflict(reason)),
        Outcome::NoOp => {
            return Ok(Mutated {
                relation: current.value,
                changed: false,
            })
        }
        Outcome::Change(next) => next,
    };
    let (state, requested_by, rejected) = columns(pair, next);
    let version = if current.version == 0 {
        diesel::sql_query(
            "INSERT INTO user_connections (user_low, user_high, state, requested_by, rejected_at) \
             VALUES (?, ?, ?, ?, IF(?, NOW(6), NULL))",
        )
        .bind::<Unsigned<BigInt>, _>(pair.low().get())
        .bind::<Unsigned<BigInt>, _>(pair.high().get())
        .bind::<Text, _>(state)
        .bind::<Nullable<Unsigned<BigInt>>, _>(requested_by)
        .bind::<Bool, _>(rejected)
        .execute(conn)
        .await?;
        1
    } else {
        // A rejection keeps its first timestamp if rejected again.
        diesel::sql_query(
            "UPDATE user_connections SET state = ?, requested_by = ?, \
             rejected_at = IF(?, COALESCE(rejected_at, NOW(6)), NULL) \
             WHERE user_low = ? AND user_high = ?",
        )
        .bind::<Text, _>(state)
        .bind::<Nullable<Unsigned<BigInt>>, _>(requested_by)
        .bind::<Bool, _>(rejected)
        .bind::<Unsigned<BigInt>, _>(pair.low().get())
        .bind::<Unsigned<BigInt>, _>(pair.high().get())
        .execute(conn)
        .await?;
        // The trigger raises the version by exactly one.
        current.version + 1
    };
    outbox::enqueue(conn, Subject::Pair(pair), version).await?;
    Ok(Mutated {
        relation: next,
        changed: true,
    })
}

/// The stored columns of a relation: state, requested_by, rejected.
fn columns(pair: Pair, relation: Relation) -> (&'static str, Option<u64>, bool) {
    match relation {
        Relation::None => ("none", None, false),
        Relation::Connected => ("connected", None, false),
        Relation::Pending { by, rejected } => ("pending", Some(pair.user(by).get()), rejected),
    }
}

/// A transaction that lost a race worth retrying: a duplicate first insert,
/// a deadlock, a lock wait timeout.
fn lost_race(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => true,
        DieselError::DatabaseError(_, info) => {
            let message = info.message();
            message.contains("Deadlock") || message.contains("Lock wait timeout")
        }
        _ => false,
    }
}
