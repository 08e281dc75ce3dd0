//! Reads of the source of truth, each one round trip. The caller owns the
//! connection (and any transaction around it).

use diesel::prelude::*;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use super::schema::{user_connections, user_tombstones, users};
use super::state::State;
use crate::domain::{Entry, Pair, Presence, Relation, Subject, UserId, Versioned};

/// A user's presence and, when asked, a pair's relation, read together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The target user's presence (version 0: no row).
    pub user: Versioned<Presence>,
    /// The pair's relation (version 0: no row), when a pair was asked for.
    pub pair: Option<Versioned<Relation>>,
}

/// A stored pair row, as selected.
pub(super) type PairRow = (State, Option<u64>, bool, u64);

/// Reads `target`'s presence and, when given, `pair`'s relation in one
/// primary-key point select (a LEFT JOIN of the pair onto the user).
pub async fn snapshot(
    conn: &mut AsyncMysqlConnection,
    target: UserId,
    pair: Option<Pair>,
) -> QueryResult<Snapshot> {
    let Some(pair) = pair else {
        return Ok(Snapshot {
            user: user(conn, target).await?,
            pair: None,
        });
    };
    let row: Option<((u64, bool), Option<PairRow>)> = users::table
        .left_join(
            user_connections::table.on(user_connections::user_low
                .eq(pair.low().get())
                .and(user_connections::user_high.eq(pair.high().get()))),
        )
        .filter(users::id.eq(target.get()))
        .select((
            (users::version, users::deleted_at.is_null()),
            pair_columns().nullable(),
        ))
        .first(conn)
        .await
        .optional()?;
    let (user, pair_row) = match row {
        Some((user, pair_row)) => (presence(Some(user)), pair_row),
        // No user row (a miss on a missing user, rare): the pair cannot have
        // one either (foreign keys); the user may have a tombstone.
        None => {
            let tombstone = tombstones(conn, &[target.get()]).await?;
            (gone(tombstone.get(&target.get()).copied()), None)
        }
    };
    Ok(Snapshot {
        user,
        pair: Some(relation(pair, pair_row)),
    })
}

pub(super) fn presence(row: Option<(u64, bool)>) -> Versioned<Presence> {
    match row {
        Some((version, true)) => Versioned {
            version,
            value: Presence::Active,
        },
        Some((version, false)) => Versioned {
            version,
            value: Presence::Gone,
        },
        None => Versioned {
            version: 0,
            value: Presence::Gone,
        },
    }
}

/// The relation a row stands for. A row that breaks the schema's rules (which
/// the constraints prevent) reads as no relation rather than as a guess.
pub fn relation(pair: Pair, row: Option<PairRow>) -> Versioned<Relation> {
    let Some((state, requested_by, rejected, version)) = row else {
        return Versioned {
            version: 0,
            value: Relation::None,
        };
    };
    let value = match state {
        State::None => Relation::None,
        State::Connected => Relation::Connected,
        State::Pending => match requested_by
            .and_then(UserId::new)
            .and_then(|u| pair.side_of(u))
        {
            Some(by) => Relation::Pending { by, rejected },
            None => Relation::None,
        },
    };
    Versioned { version, value }
}

/// The pair's relation now (version 0: no row).
pub async fn pair(conn: &mut AsyncMysqlConnection, pair: Pair) -> QueryResult<Versioned<Relation>> {
    let row: Option<PairRow> = user_connections::table
        .find((pair.low().get(), pair.high().get()))
        .select(pair_columns())
        .first(conn)
        .await
        .optional()?;
    Ok(relation(pair, row))
}

/// The pair's relation, its row locked until the transaction ends (no row:
/// nothing to lock, version 0).
pub async fn pair_for_update(
    conn: &mut AsyncMysqlConnection,
    pair: Pair,
) -> QueryResult<Versioned<Relation>> {
    let row: Option<PairRow> = user_connections::table
        .find((pair.low().get(), pair.high().get()))
        .select(pair_columns())
        .for_update()
        .first(conn)
        .await
        .optional()?;
    Ok(relation(pair, row))
}

/// The user's presence now. A user with no row is gone, at the version of
/// its tombstone when it had a row once (so the version never goes back:
/// see the tombstone migration), else at 0.
pub async fn user(
    conn: &mut AsyncMysqlConnection,
    user: UserId,
) -> QueryResult<Versioned<Presence>> {
    let row: Option<(u64, bool)> = users::table
        .find(user.get())
        .select((users::version, users::deleted_at.is_null()))
        .first(conn)
        .await
        .optional()?;
    if row.is_some() {
        return Ok(presence(row));
    }
    let tombstone = tombstones(conn, &[user.get()]).await?;
    Ok(gone(tombstone.get(&user.get()).copied()))
}

/// The tombstone versions of users that have no row (see the tombstone
/// migration), by id; ids never deleted are absent.
async fn tombstones(
    conn: &mut AsyncMysqlConnection,
    ids: &[u64],
) -> QueryResult<std::collections::HashMap<u64, u64>> {
    if ids.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let rows: Vec<(u64, u64)> = user_tombstones::table
        .filter(user_tombstones::id.eq_any(ids))
        .select((user_tombstones::id, user_tombstones::version))
        .load(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// A user with no row: gone, at its tombstone's version if it had a row
/// once (so that no copy of an older "exists" can win over it), else at 0.
fn gone(tombstone: Option<u64>) -> Versioned<Presence> {
    Versioned {
        version: tombstone.unwrap_or(0),
        value: Presence::Gone,
    }
}

/// Every pair row of `user`, on either side, with its relation.
pub async fn pairs_of(
    conn: &mut AsyncMysqlConnection,
    user: UserId,
) -> QueryResult<Vec<(Pair, Versioned<Relation>)>> {
    let id = user.get();
    let rows: Vec<(u64, u64, PairRow)> = user_connections::table
        .filter(
            user_connections::user_low
                .eq(id)
                .or(user_connections::user_high.eq(id)),
        )
        .select((
            user_connections::user_low,
            user_connections::user_high,
            pair_columns(),
        ))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(low, high, row)| {
            let pair = Pair::new(UserId::new(low)?, UserId::new(high)?)?;
            Some((pair, relation(pair, Some(row))))
        })
        .collect())
}

/// The columns a pair's relation is read from.
pub(super) fn pair_columns() -> (
    user_connections::state,
    user_connections::requested_by,
    diesel::dsl::IsNotNull<user_connections::rejected_at>,
    user_connections::version,
) {
    (
        user_connections::state,
        user_connections::requested_by,
        user_connections::rejected_at.is_not_null(),
        user_connections::version,
    )
}

/// For a batch: each target's presence and the viewer's pair with it, in
/// one query (the pairs LEFT JOINed onto the users by primary key). Targets
/// with no user row come back as "gone" at version 0. `targets` should be
/// distinct; at most a few hundred per call (the caller chunks).
pub async fn snapshots(
    conn: &mut AsyncMysqlConnection,
    viewer: UserId,
    targets: &[UserId],
) -> QueryResult<Vec<Snapshot>> {
    use diesel::sql_types::{BigInt, Bool, Nullable, Unsigned};
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Unsigned<BigInt>)]
        id: u64,
        #[diesel(sql_type = Unsigned<BigInt>)]
        version: u64,
        #[diesel(sql_type = Bool)]
        active: bool,
        #[diesel(sql_type = Nullable<super::state::StateSql>)]
        state: Option<State>,
        #[diesel(sql_type = Nullable<Unsigned<BigInt>>)]
        requested_by: Option<u64>,
        #[diesel(sql_type = Nullable<Bool>)]
        rejected: Option<bool>,
        #[diesel(sql_type = Nullable<Unsigned<BigInt>>)]
        pair_version: Option<u64>,
    }
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    // The ids are validated integers, so writing them into the IN list is
    // safe; binding 500 placeholders would cost more than it protects.
    let ids: Vec<String> = targets.iter().map(|t| t.get().to_string()).collect();
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT u.id, u.version, u.deleted_at IS NULL AS active, c.state, c.requested_by, \
         c.rejected_at IS NOT NULL AS rejected, c.version AS pair_version \
         FROM users u LEFT JOIN user_connections c \
         ON c.user_low = LEAST(u.id, ?) AND c.user_high = GREATEST(u.id, ?) \
         WHERE u.id IN ({})",
        ids.join(",")
    ))
    .bind::<Unsigned<BigInt>, _>(viewer.get())
    .bind::<Unsigned<BigInt>, _>(viewer.get())
    .load(conn)
    .await?;
    let rows: std::collections::HashMap<u64, Row> = rows.into_iter().map(|r| (r.id, r)).collect();
    let missing: Vec<u64> = targets
        .iter()
        .map(|t| t.get())
        .filter(|id| !rows.contains_key(id))
        .collect();
    let tombstones = tombstones(conn, &missing).await?;
    Ok(targets
        .iter()
        .map(|&target| {
            let row = rows.get(&target.get());
            let user = match row {
                Some(r) => presence(Some((r.version, r.active))),
                None => gone(tombstones.get(&target.get()).copied()),
            };
            let pair = Pair::new(viewer, target).map(|pair| {
                let stored = row
                    .and_then(|r| Some((r.state?, r.requested_by, r.rejected?, r.pair_version?)));
                relation(pair, stored)
            });
            Snapshot { user, pair }
        })
        .collect())
}

/// Many subjects as MySQL has them now, in the order asked: pairs and users
/// each in one query by primary key (a pair with no row: no relation at
/// version 0; a user with no row: gone at version 0). At most a few
/// thousand per call (the caller pages).
pub async fn entries(
    conn: &mut AsyncMysqlConnection,
    subjects: &[Subject],
) -> QueryResult<Vec<Entry>> {
    let pairs: Vec<Pair> = subjects
        .iter()
        .filter_map(|s| match s {
            Subject::Pair(p) => Some(*p),
            Subject::User(_) => None,
        })
        .collect();
    let users: Vec<u64> = subjects
        .iter()
        .filter_map(|s| match s {
            Subject::User(u) => Some(u.get()),
            Subject::Pair(_) => None,
        })
        .collect();
    let mut pair_rows = std::collections::HashMap::new();
    // The ids are validated integers, so writing them into the IN list is
    // safe (and cheaper than thousands of placeholders).
    for chunk in pairs.chunks(IN_LIST) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|p| format!("({},{})", p.low(), p.high()))
            .collect();
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Unsigned<diesel::sql_types::BigInt>)]
            user_low: u64,
            #[diesel(sql_type = diesel::sql_types::Unsigned<diesel::sql_types::BigInt>)]
            user_high: u64,
            #[diesel(sql_type = super::state::StateSql)]
            state: State,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Unsigned<diesel::sql_types::BigInt>>)]
            requested_by: Option<u64>,
            #[diesel(sql_type = diesel::sql_types::Bool)]
            rejected: bool,
            #[diesel(sql_type = diesel::sql_types::Unsigned<diesel::sql_types::BigInt>)]
            version: u64,
        }
        let rows: Vec<Row> = diesel::sql_query(format!(
            "SELECT user_low, user_high, state, requested_by, rejected_at IS NOT NULL AS rejected, version \
             FROM user_connections WHERE (user_low, user_high) IN ({})",
            keys.join(",")
        ))
        .load(conn)
        .await?;
        for r in rows {
            pair_rows.insert(
                (r.user_low, r.user_high),
                (r.state, r.requested_by, r.rejected, r.version),
            );
        }
    }
    let mut user_rows = std::collections::HashMap::new();
    for chunk in users.chunks(IN_LIST) {
        let rows: Vec<(u64, u64, bool)> = users::table
            .filter(users::id.eq_any(chunk))
            .select((users::id, users::version, users::deleted_at.is_null()))
            .load(conn)
            .await?;
        for (id, version, active) in rows {
            user_rows.insert(id, (version, active));
        }
    }
    let missing: Vec<u64> = users
        .iter()
        .copied()
        .filter(|id| !user_rows.contains_key(id))
        .collect();
    let tombstones = tombstones(conn, &missing).await?;
    Ok(subjects
        .iter()
        .map(|&subject| match subject {
            Subject::Pair(p) => Entry::Pair(
                p,
                relation(p, pair_rows.get(&(p.low().get(), p.high().get())).copied()),
            ),
            Subject::User(u) => Entry::User(
                u,
                match user_rows.get(&u.get()) {
                    Some(&row) => presence(Some(row)),
                    None => gone(tombstones.get(&u.get()).copied()),
                },
            ),
        })
        .collect())
}

/// Keys per `IN (...)` list in [`entries`].
const IN_LIST: usize = 1000;
