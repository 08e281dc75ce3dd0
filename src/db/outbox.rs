//! The refresh queue (a transactional outbox): the durable list of cache
//! refreshes. A mutation writes its row in the same transaction as the
//! change; the refresh after the commit marks it landed once Redis holds that
//! version; every instance retries what is overdue. Landed rows are kept for
//! the replay window, so that the refreshes a Redis lost (a failover, a
//! restart from an older snapshot) can be re-armed and replayed, then purged.
//! A pending row that Redis took but that did not settle is postponed, each
//! time twice as long up to a cap, so it cannot hold back the rows behind it.
//! See `docs/consistency.md#the-refresh-queue`.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, TinyInt, Unsigned};
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};

use crate::domain::{Pair, Subject, UserId};

/// The queue's columns of a subject: kind, a, b.
fn columns(subject: Subject) -> (u8, u64, u64) {
    match subject {
        Subject::Pair(pair) => (1, pair.low().get(), pair.high().get()),
        Subject::User(user) => (2, user.get(), 0),
    }
}

/// Records that the cache must reach `version` for `subject` (keeps the
/// highest version asked for); a landed row is pending again, and the row
/// is due at once (its retry schedule starts over).
pub async fn enqueue(
    conn: &mut AsyncMysqlConnection,
    subject: Subject,
    version: u64,
) -> QueryResult<()> {
    let (kind, a, b) = columns(subject);
    diesel::sql_query(
        "INSERT INTO cache_refresh_queue (kind, a, b, version) VALUES (?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE version = GREATEST(version, VALUES(version)), \
         enqueued_at = CURRENT_TIMESTAMP(6), landed_at = NULL, \
         attempts = 0, next_attempt_at = CURRENT_TIMESTAMP(6)",
    )
    .bind::<Unsigned<TinyInt>, _>(kind)
    .bind::<Unsigned<BigInt>, _>(a)
    .bind::<Unsigned<BigInt>, _>(b)
    .bind::<Unsigned<BigInt>, _>(version)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Rows one recording statement inserts at most (4 placeholders each).
const RECORD_CHUNK: usize = 1000;

/// Records that each of `subjects` needs a refresh whose version is not
/// known (version 0: any row version reaches it, and a higher version
/// already queued is kept), as [`enqueue`] does for one: one multi-row
/// insert (one transaction when more than [`RECORD_CHUNK`]). Rows are
/// written in key order, so two recordings never wait on each other in a
/// cycle.
pub async fn record(conn: &mut AsyncMysqlConnection, subjects: &[Subject]) -> QueryResult<()> {
    let mut keys: Vec<(u8, u64, u64)> = subjects.iter().map(|&s| columns(s)).collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.len() <= RECORD_CHUNK {
        return record_keys(conn, &keys).await;
    }
    conn.transaction(async |conn| {
        for chunk in keys.chunks(RECORD_CHUNK) {
            record_keys(conn, chunk).await?;
        }
        Ok(())
    })
    .await
}

async fn record_keys(conn: &mut AsyncMysqlConnection, keys: &[(u8, u64, u64)]) -> QueryResult<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let rows = vec!["(?, ?, ?, 0)"; keys.len()].join(", ");
    let mut query = diesel::sql_query(format!(
        "INSERT INTO cache_refresh_queue (kind, a, b, version) VALUES {rows} \
         ON DUPLICATE KEY UPDATE version = GREATEST(version, VALUES(version)), \
         enqueued_at = CURRENT_TIMESTAMP(6), landed_at = NULL, \
         attempts = 0, next_attempt_at = CURRENT_TIMESTAMP(6)"
    ))
    .into_boxed::<diesel::mysql::Mysql>();
    for &(kind, a, b) in keys {
        query = query
            .bind::<Unsigned<TinyInt>, _>(kind)
            .bind::<Unsigned<BigInt>, _>(a)
            .bind::<Unsigned<BigInt>, _>(b);
    }
    query.execute(conn).await.map(|_| ())
}

/// Marks `subject` landed if the cache now holds `version` or newer (a
/// higher version queued meanwhile stays pending). The row is kept for the
/// replay window ([`purge_landed`] removes it afterwards).
pub async fn dequeue(
    conn: &mut AsyncMysqlConnection,
    subject: Subject,
    version: u64,
) -> QueryResult<()> {
    let (kind, a, b) = columns(subject);
    diesel::sql_query(
        "UPDATE cache_refresh_queue SET landed_at = NOW(6) \
         WHERE kind = ? AND a = ? AND b = ? AND version <= ? AND landed_at IS NULL",
    )
    .bind::<Unsigned<TinyInt>, _>(kind)
    .bind::<Unsigned<BigInt>, _>(a)
    .bind::<Unsigned<BigInt>, _>(b)
    .bind::<Unsigned<BigInt>, _>(version)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Deletes at most `limit` rows that landed more than `window_us`
/// microseconds ago; returns how many.
pub async fn purge_landed(
    conn: &mut AsyncMysqlConnection,
    window_us: u64,
    limit: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM cache_refresh_queue \
         WHERE landed_at < NOW(6) - INTERVAL ? MICROSECOND LIMIT ?",
    )
    .bind::<Unsigned<BigInt>, _>(window_us)
    .bind::<BigInt, _>(limit)
    .execute(conn)
    .await
}

/// Makes every row that landed within the last `window_us` microseconds
/// pending again (the Redis that took those writes may have lost them), and
/// every pending row due at once; returns how many rows changed.
pub async fn rearm(conn: &mut AsyncMysqlConnection, window_us: u64) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE cache_refresh_queue SET landed_at = NULL, attempts = 0, next_attempt_at = NOW(6) \
         WHERE landed_at IS NULL OR landed_at >= NOW(6) - INTERVAL ? MICROSECOND",
    )
    .bind::<Unsigned<BigInt>, _>(window_us)
    .execute(conn)
    .await
}

/// Pushes back the next attempt of those of `subjects` still pending: the
/// n-th postponement waits `base_us · 2^(n-1)`, at most `cap_us`.
pub async fn postpone(
    conn: &mut AsyncMysqlConnection,
    subjects: &[Subject],
    base_us: u64,
    cap_us: u64,
) -> QueryResult<usize> {
    let mut changed = 0;
    for chunk in subjects.chunks(500) {
        let keys = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        // The delay uses the attempts before this one (assignments run left
        // to right).
        let mut query = diesel::sql_query(format!(
            "UPDATE cache_refresh_queue SET \
             next_attempt_at = NOW(6) + INTERVAL \
               CAST(LEAST(? * POW(2, LEAST(attempts, 40)), ?) AS UNSIGNED) MICROSECOND, \
             attempts = attempts + 1 \
             WHERE landed_at IS NULL AND (kind, a, b) IN ({keys})"
        ))
        .into_boxed::<diesel::mysql::Mysql>()
        .bind::<Unsigned<BigInt>, _>(base_us)
        .bind::<Unsigned<BigInt>, _>(cap_us);
        for &subject in chunk {
            let (kind, a, b) = columns(subject);
            query = query
                .bind::<Unsigned<TinyInt>, _>(kind)
                .bind::<Unsigned<BigInt>, _>(a)
                .bind::<Unsigned<BigInt>, _>(b);
        }
        changed += query.execute(conn).await?;
    }
    Ok(changed)
}

/// Pending entries that are due and older than `min_age_ms` (fresher ones
/// are still being refreshed by the request that made them), the longest
/// due first.
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
         WHERE landed_at IS NULL AND next_attempt_at <= NOW(6) \
         AND enqueued_at < NOW(6) - INTERVAL ? MICROSECOND \
         ORDER BY next_attempt_at LIMIT ?",
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

/// The pending rows: how many, and the age of the oldest in microseconds
/// (0 when none).
pub async fn pending(conn: &mut AsyncMysqlConnection) -> QueryResult<(u64, u64)> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        depth: i64,
        #[diesel(sql_type = BigInt)]
        oldest_us: i64,
    }
    let row: Row = diesel::sql_query(
        "SELECT COUNT(*) AS depth, \
         COALESCE(TIMESTAMPDIFF(MICROSECOND, MIN(enqueued_at), NOW(6)), 0) AS oldest_us \
         FROM cache_refresh_queue WHERE landed_at IS NULL",
    )
    .get_result(conn)
    .await?;
    Ok((
        u64::try_from(row.depth).unwrap_or(0),
        u64::try_from(row.oldest_us).unwrap_or(0),
    ))
}
