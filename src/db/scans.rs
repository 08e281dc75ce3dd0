//! Keyset-paginated scans for the warming job: pages in primary-key order,
//! each starting after the last key of the page before (never `OFFSET`), so
//! a scan of millions of rows costs the same per page from start to end.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Unsigned};
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use super::reads::{self, pair_columns, presence};
use super::schema::{user_connections as uc, users};
use super::state::{State, StateSql};
use crate::domain::{Entry, Pair, UserId};

/// Where a page starts: after this key (`(0, 0)` for the first page).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct After {
    /// The first key column of the last row read.
    pub a: u64,
    /// The second key column of the last row read (0 where there is none).
    pub b: u64,
}

/// A page of entries and where the next page starts (`None`: last page).
pub type Page = (Vec<Entry>, Option<After>);

/// The next page from `rows` read with `limit`: only a full page may have
/// another after it.
fn next_after<T>(rows: &[T], limit: usize, key: impl Fn(&T) -> After) -> Option<After> {
    rows.last().filter(|_| rows.len() == limit).map(key)
}

/// Every pair row, in key order.
pub async fn all_pairs(
    conn: &mut AsyncMysqlConnection,
    after: After,
    limit: usize,
) -> QueryResult<Page> {
    let rows: Vec<(u64, u64, reads::PairRow)> = uc::table
        .filter(
            uc::user_low
                .gt(after.a)
                .or(uc::user_low.eq(after.a).and(uc::user_high.gt(after.b))),
        )
        .order((uc::user_low, uc::user_high))
        .limit(i64::try_from(limit).unwrap_or(i64::MAX))
        .select((uc::user_low, uc::user_high, pair_columns()))
        .load(conn)
        .await?;
    let next = next_after(&rows, limit, |&(a, b, _)| After { a, b });
    let entries = rows
        .into_iter()
        .filter_map(|(low, high, row)| {
            let pair = Pair::new(UserId::new(low)?, UserId::new(high)?)?;
            Some(Entry::Pair(pair, reads::relation(pair, Some(row))))
        })
        .collect();
    Ok((entries, next))
}

/// Every user row, in id order.
pub async fn all_users(
    conn: &mut AsyncMysqlConnection,
    after: After,
    limit: usize,
) -> QueryResult<Page> {
    let rows: Vec<(u64, u64, bool)> = users::table
        .filter(users::id.gt(after.a))
        .order(users::id)
        .limit(i64::try_from(limit).unwrap_or(i64::MAX))
        .select((users::id, users::version, users::deleted_at.is_null()))
        .load(conn)
        .await?;
    let next = next_after(&rows, limit, |&(a, ..)| After { a, b: 0 });
    let entries = rows
        .into_iter()
        .filter_map(|(id, version, active)| {
            Some(Entry::User(
                UserId::new(id)?,
                presence(Some((version, active))),
            ))
        })
        .collect();
    Ok((entries, next))
}

/// A pair row with the other member's presence.
#[derive(QueryableByName)]
struct PartnerRow {
    #[diesel(sql_type = Unsigned<BigInt>)]
    user_low: u64,
    #[diesel(sql_type = Unsigned<BigInt>)]
    user_high: u64,
    #[diesel(sql_type = StateSql)]
    state: State,
    #[diesel(sql_type = Nullable<Unsigned<BigInt>>)]
    requested_by: Option<u64>,
    #[diesel(sql_type = Bool)]
    rejected: bool,
    #[diesel(sql_type = Unsigned<BigInt>)]
    version: u64,
    #[diesel(sql_type = Unsigned<BigInt>)]
    other_version: u64,
    #[diesel(sql_type = Bool)]
    other_active: bool,
}

/// `user`'s pair rows on one side (`as_low`: the pairs where `user` is the
/// lower id), after `after` (the other member's id in `b` as low, in `a` as
/// high), each with the other member's own entry: a read of that pair also
/// needs to know the other user exists.
pub async fn partners(
    conn: &mut AsyncMysqlConnection,
    user: UserId,
    as_low: bool,
    after: After,
    limit: usize,
) -> QueryResult<Page> {
    // `user_low = ?` walks the primary key, `user_high = ?` the
    // (user_high, user_low) index: both in key order, both keyset pages.
    let (mine, other, from) = if as_low {
        ("user_low", "user_high", after.b)
    } else {
        ("user_high", "user_low", after.a)
    };
    let rows: Vec<PartnerRow> = diesel::sql_query(format!(
        "SELECT c.user_low, c.user_high, c.state, c.requested_by, c.rejected_at IS NOT NULL AS rejected, \
         c.version, u.version AS other_version, u.deleted_at IS NULL AS other_active \
         FROM user_connections c JOIN users u ON u.id = c.{other} \
         WHERE c.{mine} = ? AND c.{other} > ? ORDER BY c.{other} LIMIT ?"
    ))
    .bind::<Unsigned<BigInt>, _>(user.get())
    .bind::<Unsigned<BigInt>, _>(from)
    .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
    .load(conn)
    .await?;
    let next = next_after(&rows, limit, |r| After {
        a: r.user_low,
        b: r.user_high,
    });
    let mut entries = Vec::with_capacity(rows.len() * 2);
    for r in rows {
        let (Some(low), Some(high)) = (UserId::new(r.user_low), UserId::new(r.user_high)) else {
            continue;
        };
        let Some(pair) = Pair::new(low, high) else {
            continue;
        };
        let row = (r.state, r.requested_by, r.rejected, r.version);
        entries.push(Entry::Pair(pair, reads::relation(pair, Some(row))));
        let other = if as_low { high } else { low };
        entries.push(Entry::User(
            other,
            presence(Some((r.other_version, r.other_active))),
        ));
    }
    Ok((entries, next))
}
