//! `connstatus seed`: a deterministic synthetic social graph for demos and
//! benchmarks.
//!
//! Users are `1..=N`. Pairs are drawn with a skew toward low ids (the second
//! member is `N * u^3` for uniform `u`), so a few users have very many
//! connections and most have few, as on a real platform. Each pair gets a
//! state: 45% connected, 25% pending, 10% pending and rejected, 20% back to
//! none. The same `--seed` gives the same graph, row for row. Rows go in with
//! multi-row INSERTs over a few connections at once.

use std::collections::HashSet;
use std::time::Instant;

use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
use futures_util::{stream, StreamExt, TryStreamExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use secrecy::{ExposeSecret, SecretString};

use crate::domain::{Pair, Relation, Side, Status, UserId};

/// What to make.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Number of users (`1..=users`).
    pub users: u64,
    /// Number of distinct pairs with a row.
    pub connections: u64,
    /// The random seed.
    pub seed: u64,
}

/// One generated pair row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// The ordered pair.
    pub pair: Pair,
    /// Its relation.
    pub relation: Relation,
}

/// What was made.
#[derive(Debug, Default)]
pub struct Summary {
    /// Users inserted.
    pub users: u64,
    /// Pairs inserted, by state: none, pending, pending rejected, connected.
    pub by_state: [u64; 4],
    /// Seconds the inserts took.
    pub seconds: f64,
    /// For the demo: for user 1, one other user per status it sees, if any.
    pub examples: Vec<(UserId, Status)>,
    /// The skew: the most connected user and their number of pairs.
    pub max_degree: (u64, u64),
    /// The median number of pairs per user.
    pub median_degree: u64,
}

/// Rows per INSERT statement and concurrent inserting connections.
const CHUNK: usize = 5_000;
const WRITERS: usize = 3;

/// Draws the graph. Pure and deterministic: the same spec, the same rows.
pub fn generate(spec: Spec) -> Result<Vec<Row>, String> {
    let max_pairs = spec.users.saturating_mul(spec.users.saturating_sub(1)) / 2;
    if spec.users == 0 || UserId::new(spec.users).is_none() {
        return Err("--users: must be between 1 and 2^63-1".into());
    }
    if spec.connections > max_pairs / 2 {
        return Err(format!(
            "--connections: {} users have {max_pairs} pairs; ask for at most half of them ({})",
            spec.users,
            max_pairs / 2
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let target = usize::try_from(spec.connections).map_err(|_| "--connections: too many")?;
    let mut seen = HashSet::with_capacity(target);
    let mut rows = Vec::with_capacity(target);
    while rows.len() < target {
        let a = rng.random_range(1..=spec.users);
        let u: f64 = rng.random();
        let b = ((spec.users as f64) * u * u * u) as u64 + 1;
        let (Some(a), Some(b)) = (UserId::new(a), UserId::new(b.min(spec.users))) else {
            continue;
        };
        let Some(pair) = Pair::new(a, b) else {
            continue;
        };
        if !seen.insert(pair) {
            continue;
        }
        let by = if rng.random_bool(0.5) {
            Side::Low
        } else {
            Side::High
        };
        let relation = match rng.random_range(0..100) {
            0..45 => Relation::Connected,
            45..70 => Relation::Pending {
                by,
                rejected: false,
            },
            70..80 => Relation::Pending { by, rejected: true },
            _ => Relation::None,
        };
        rows.push(Row { pair, relation });
    }
    Ok(rows)
}

/// Inserts the graph into the (migrated, empty) database at `url`.
/// With `reset`, existing rows are removed first (TRUNCATE: the rows-are-never-
/// deleted rule is for live data, not for a demo graph being replaced), and
/// the refresh queue with them: the new rows start again at version 1, so
/// the old graph's queued versions would never be reached.
pub async fn run(url: &SecretString, spec: Spec, reset: bool) -> Result<Summary, String> {
    let rows = generate(spec)?;
    let started = Instant::now();
    let mut conn = connect(url).await?;
    if reset {
        conn.batch_execute(
            "SET FOREIGN_KEY_CHECKS = 0; TRUNCATE TABLE user_connections; TRUNCATE TABLE users; \
             TRUNCATE TABLE user_tombstones; \
             SET FOREIGN_KEY_CHECKS = 1; TRUNCATE TABLE cache_refresh_queue;",
        )
        .await
        .map_err(|e| format!("reset failed: {e}"))?;
    } else {
        ensure_empty(&mut conn).await?;
    }

    let users: Vec<String> = (1..=spec.users).map(|id| format!("({id})")).collect();
    insert_chunks(url, "INSERT INTO users (id) VALUES ", &users).await?;
    let values: Vec<String> = rows.iter().map(values_of).collect();
    insert_chunks(
        url,
        "INSERT INTO user_connections (user_low, user_high, state, requested_by, rejected_at) VALUES ",
        &values,
    )
    .await?;

    let mut summary = Summary {
        users: spec.users,
        seconds: started.elapsed().as_secs_f64(),
        ..Summary::default()
    };
    for row in &rows {
        let slot = match row.relation {
            Relation::None => 0,
            Relation::Pending {
                rejected: false, ..
            } => 1,
            Relation::Pending { rejected: true, .. } => 2,
            Relation::Connected => 3,
        };
        summary.by_state[slot] += 1;
    }
    summary.examples = examples(&rows, spec.users);
    (summary.max_degree, summary.median_degree) = degrees(&rows, spec.users);
    Ok(summary)
}

/// For user 1, one other user for each status it sees (including `null`
/// for someone it has no row with), so the demo can show every answer.
fn examples(rows: &[Row], users: u64) -> Vec<(UserId, Status)> {
    let Some(me) = UserId::new(1) else {
        return vec![];
    };
    let mut out: Vec<(UserId, Status)> = Vec::new();
    let mut related = HashSet::new();
    for row in rows {
        let Some(side) = row.pair.side_of(me) else {
            continue;
        };
        let other = row.pair.user(if side == Side::Low {
            Side::High
        } else {
            Side::Low
        });
        related.insert(other);
        let status = row.relation.status_for(side);
        if !out.iter().any(|(_, s)| *s == status) {
            out.push((other, status));
        }
    }
    if !out.iter().any(|(_, s)| *s == Status::Null) {
        if let Some(stranger) = (2..=users)
            .filter_map(UserId::new)
            .find(|u| !related.contains(u))
        {
            out.push((stranger, Status::Null));
        }
    }
    out
}

/// The most connected user with their degree, and the median degree.
fn degrees(rows: &[Row], users: u64) -> ((u64, u64), u64) {
    let mut degree = vec![0u64; usize::try_from(users).unwrap_or(0) + 1];
    for row in rows {
        for id in [row.pair.low().get(), row.pair.high().get()] {
            if let Some(d) = usize::try_from(id).ok().and_then(|i| degree.get_mut(i)) {
                *d += 1;
            }
        }
    }
    let max = degree
        .iter()
        .enumerate()
        .skip(1)
        .max_by_key(|&(_, d)| *d)
        .map_or((0, 0), |(i, &d)| (i as u64, d));
    let mut sorted: Vec<u64> = degree.into_iter().skip(1).collect();
    sorted.sort_unstable();
    (max, sorted.get(sorted.len() / 2).copied().unwrap_or(0))
}

fn values_of(row: &Row) -> String {
    let (low, high) = (row.pair.low().get(), row.pair.high().get());
    match row.relation {
        Relation::None => format!("({low},{high},'none',NULL,NULL)"),
        Relation::Connected => format!("({low},{high},'connected',NULL,NULL)"),
        Relation::Pending { by, rejected } => {
            let by = row.pair.user(by).get();
            let rejected_at = if rejected { "NOW(6)" } else { "NULL" };
            format!("({low},{high},'pending',{by},{rejected_at})")
        }
    }
}

async fn connect(url: &SecretString) -> Result<AsyncMysqlConnection, String> {
    AsyncMysqlConnection::establish(url.expose_secret())
        .await
        .map_err(|e| format!("cannot connect to MySQL: {e}"))
}

async fn ensure_empty(conn: &mut AsyncMysqlConnection) -> Result<(), String> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let any: Option<u64> = crate::db::schema::users::table
        .select(crate::db::schema::users::id)
        .first(conn)
        .await
        .optional()
        .map_err(|e| format!("cannot read users: {e}"))?;
    match any {
        Some(_) => Err("the database already has users; pass --reset to replace them".into()),
        None => Ok(()),
    }
}

/// Runs `prefix` + chunks of `values` over a few connections at once.
async fn insert_chunks(url: &SecretString, prefix: &str, values: &[String]) -> Result<(), String> {
    let mut conns = Vec::with_capacity(WRITERS);
    for _ in 0..WRITERS {
        conns.push(tokio::sync::Mutex::new(connect(url).await?));
    }
    let conns = &conns;
    stream::iter(values.chunks(CHUNK).enumerate())
        .map(|(i, chunk)| async move {
            let sql = format!("{prefix}{}", chunk.join(","));
            let mut conn = conns[i % WRITERS].lock().await;
            conn.batch_execute(&sql)
                .await
                .map_err(|e| format!("insert failed: {e}"))
        })
        .buffer_unordered(WRITERS)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> Spec {
        Spec {
            users: 500,
            connections: 5_000,
            seed,
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_graph_and_another_seed_another() {
        let a = generate(spec(7)).expect("graph");
        assert_eq!(a, generate(spec(7)).expect("graph"));
        assert_ne!(a, generate(spec(8)).expect("graph"));
        assert_eq!(a.len(), 5_000);
    }

    #[test]
    fn the_graph_has_every_state_distinct_pairs_and_a_skew() {
        let rows = generate(spec(1)).expect("graph");
        let distinct: HashSet<Pair> = rows.iter().map(|r| r.pair).collect();
        assert_eq!(distinct.len(), rows.len());
        for wanted in [
            Relation::None,
            Relation::Connected,
            Relation::Pending {
                by: Side::Low,
                rejected: false,
            },
            Relation::Pending {
                by: Side::High,
                rejected: true,
            },
        ] {
            assert!(
                rows.iter().any(|r| r.relation == wanted),
                "{wanted:?} missing"
            );
        }
        let degree = |id: u64| {
            rows.iter()
                .filter(|r| r.pair.low().get() == id || r.pair.high().get() == id)
                .count()
        };
        // The skew: user 1 is far more connected than the median user.
        assert!(
            degree(1) > 10 * degree(400).max(1),
            "{} vs {}",
            degree(1),
            degree(400)
        );
    }

    #[test]
    fn impossible_requests_are_refused() {
        assert!(generate(Spec {
            users: 10,
            connections: 40,
            seed: 1
        })
        .is_err());
        assert!(generate(Spec {
            users: 0,
            connections: 0,
            seed: 1
        })
        .is_err());
    }

    #[test]
    fn examples_show_every_status_user_one_has() {
        let rows = generate(spec(3)).expect("graph");
        let examples = examples(&rows, 500);
        for status in [
            Status::Connected,
            Status::SentRequest,
            Status::ReceivedRequest,
            Status::Null,
        ] {
            assert!(
                examples.iter().any(|(_, s)| *s == status),
                "{status:?} missing"
            );
        }
    }
}
