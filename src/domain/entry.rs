//! What the cache holds copies of: a *subject* (a pair or a user) and its
//! state at a row version.
//!
//! Versions order the copies: every change of a row raises its `version` by
//! one (a database trigger makes that true for every writer), so of two
//! copies of one subject the higher version is the newer. Version 0 stands
//! for "no row": any real row is newer. See `docs/consistency.md`.

use super::{Pair, Relation, UserId};

/// A value read from MySQL, with the row version it was read at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Versioned<T> {
    /// The row's `version` (0: no row).
    pub version: u64,
    /// The value at that version.
    pub value: T,
}

/// Whether a user can be looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Presence {
    /// Exists and not deleted.
    Active,
    /// Never existed, or soft-deleted: "Not found." to callers.
    Gone,
}

/// What one cache entry is about: a pair's relation or a user's presence.
/// Events name subjects, the refresh queue stores them, refreshes re-read
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A pair of users.
    Pair(Pair),
    /// One user.
    User(UserId),
}

/// A subject with its state at a row version: what a refresh or a fill
/// writes to the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The relation of a pair.
    Pair(Pair, Versioned<Relation>),
    /// The presence of a user.
    User(UserId, Versioned<Presence>),
}

impl Entry {
    /// What the entry is about.
    pub fn subject(self) -> Subject {
        match self {
            Entry::Pair(pair, _) => Subject::Pair(pair),
            Entry::User(user, _) => Subject::User(user),
        }
    }

    /// The row version it was read at.
    pub fn version(self) -> u64 {
        match self {
            Entry::Pair(_, v) => v.version,
            Entry::User(_, v) => v.version,
        }
    }
}
