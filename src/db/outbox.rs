//! The refresh queue (a transactional outbox): the durable list of cache
//! refreshes that have not landed yet. A mutation writes its row in the same
//! transaction as the change; the refresh after the commit deletes it once
//! Redis holds that version; every instance retries what is overdue. See
//! `docs/consistency.md#the-refresh-queue`.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, TinyInt, Unsigned};
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use super::schema::cache_refresh_queue;
use crate::domain::{Pair, Subject, UserId};

/// The queue's columns of a subject: kind, a, b.
fn columns(subject: Subject) -> (u8, u64, u64) {
    match subject {
        Subject::Pair(pair) => (1, pair.low().get(), pair.high().get()),
        Subject::User(user) => (2, user.get(), 0),
    }
}

/// Records that the cache must reach `version` for `subject` (keeps the
/// highest version asked for).
pub async fn enqueue(
    conn: &mut AsyncMysqlConnection,
    subject: Subject,
    version: u64,
) -> QueryResult<()> {
    let (kind, a, b) = columns(subject);
    diesel::sql_query(
        "INSERT INTO cache_refresh_queue (kind, a, b, version) VALUES (?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE version = GREATEST(version, VALUES(version)), \
         enqueued_at = CURRENT_TIMESTAMP(6)",
    )
    .bind::<Unsigned<TinyInt>, _>(kind)
    .bind::<Unsigned<BigInt>, _>(a)
    .bind::<Unsigned<BigInt>, _>(b)
    .bind::<Unsigned<BigInt>, _>(version)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Removes `subject` from the queue if the cache now holds `version` or newer
/// (a higher version queued meanwhile stays).
pub async fn dequeue(
    conn: &mut AsyncMysqlConnection,
    subject: Subject,
    version: u64,
) -> QueryResult<()> {
    let (kind, a, b) = columns(subject);
    diesel::delete(
        cache_refresh_queue::table
            .filter(cache_refresh_queue::kind.eq(kind))
            .filter(cache_refresh_queue::a.eq(a))
            .filter(cache_refresh_queue::b.eq(b))
            .filter(cache_refresh_queue::version.le(version)),
    )
    .execute(conn)
    .await
    .map(|_| ())
}

/// Queue entries older than `min_age_ms` (fresher ones are still being
/// refreshed by the request that made them), oldest first.
pub async fn overdue(
    conn: &mut AsyncMysqlConnection,
    min_age_ms: u64,
    limit: i64,
) -> QueryResult<Vec<Subject>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Unsigned<TinyInt>)]
        kind: u8,
        #[diesel(sql_type = Unsigned<BigInt>)]
        a: u64,
        #[diesel(sql_type = Unsigned<BigInt>)]
        b: u64,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT kind, a, b FROM cache_refresh_queue \
         WHERE enqueued_at < NOW(6) - INTERVAL ? MICROSECOND ORDER BY enqueued_at LIMIT ?",
    )
    .bind::<Unsigned<BigInt>, _>(min_age_ms.saturating_mul(1000))
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| match r.kind {
            1 => Pair::new(UserId::new(r.a)?, UserId::new(r.b)?).map(Subject::Pair),
            2 => UserId::new(r.a).map(Subject::User),
            _ => None,
        })
        .collect())
}
