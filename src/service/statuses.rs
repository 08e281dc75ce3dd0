//! The read path: the status of a pair as one user sees it.
//!
//! Cache first (one `MGET` of the target user's entry and the pair's entry);
//! on a miss one MySQL point select, shared by concurrent misses of the pair
//! (see [`super::flight`]). A miss takes leases on the keys it missed
//! before it reads MySQL, and fills under them (see
//! [`crate::cache::Cache::lease`]): a fill that may be older than the newest
//! write never lands. A Redis failure is never an error: the answer comes
//! from MySQL. Only a MySQL failure on a miss is (a 503 to the caller).

use std::sync::Arc;

use super::flight::Flights;
use crate::cache::{Cache, Cached, Lease, LeaseFor};
use crate::db::{self, DbError, ReadDb};
use crate::domain::{Entry, Pair, Presence, Relation, Status, Subject, UserId, Versioned};
use crate::meters::{self, Lookup};

/// Misses read from MySQL per query in a batch.
const MISS_CHUNK: usize = 500;

/// The newer of two copies of one subject (by version; `b` on a tie).
fn newer<T>(a: Option<Versioned<T>>, b: Option<Versioned<T>>) -> Option<Versioned<T>> {
    match (a, b) {
        (Some(a), Some(b)) if a.version > b.version => Some(a),
        (a, None) => a,
        (_, b) => b,
    }
}

/// The answer for `target` from what is known of it, or `None` when that is
/// not enough (a miss).
fn answer(
    viewer: UserId,
    target: UserId,
    user: Option<Versioned<Presence>>,
    pair: Option<Versioned<Relation>>,
) -> Option<Result<Status, LookupError>> {
    match (user?.value, Pair::seen_by(viewer, target), pair) {
        (Presence::Gone, _, _) => Some(Err(LookupError::NotFound)),
        (Presence::Active, None, _) => Some(Ok(Status::Null)),
        (Presence::Active, Some((_, side)), Some(relation)) => {
            Some(Ok(relation.value.status_for(side)))
        }
        (Presence::Active, Some(_), None) => None,
    }
}

/// The pair entry a miss fills, unless the other user has never had a row:
/// then only the user's (short-lived) "no such user" is cached, so that
/// lookups of made-up ids leave one short entry each, not two long ones.
fn fillable_pair(
    user: Versioned<Presence>,
    pair: Pair,
    relation: Versioned<Relation>,
) -> Option<Entry> {
    let never_existed = user.version == 0 && user.value == Presence::Gone;
    (!never_existed).then_some(Entry::Pair(pair, relation))
}

/// In a batch, a user who does not exist reads as `null`.
fn batch_status(answer: Result<Status, LookupError>) -> Status {
    answer.unwrap_or(Status::Null)
}

/// Why a status could not be answered.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LookupError {
    /// The other user does not exist or is deleted.
    #[error("not found")]
    NotFound,
    /// MySQL was needed and is unavailable (down, pool exhausted, timeout).
    #[error(transparent)]
    Unavailable(#[from] DbError),
}

/// What a miss read: the target's presence and the pair's relation.
type MissRead = Result<(Versioned<Presence>, Option<Versioned<Relation>>), LookupError>;

/// A single GET's miss: the target, the pair, and the user's entry when the
/// cache had it (then only the pair is read).
type MissKey = (UserId, Option<Pair>, Option<Versioned<Presence>>);

/// Answers statuses from the cache and the database. One per worker.
pub struct StatusService {
    reads: Reads,
    /// Concurrent misses of one pair in this worker share one read.
    flights: Flights<MissKey, MissRead>,
}

/// The database reads and the fills after them, cheap to clone into a
/// flight.
#[derive(Clone)]
struct Reads {
    cache: Arc<Cache>,
    /// A replica when there are some (misses may trail the primary by the
    /// replication lag: `docs/consistency.md#read-replicas`).
    db: ReadDb,
}

impl StatusService {
    /// A service over `cache`, reading misses from `db`.
    pub fn new(cache: Arc<Cache>, db: ReadDb) -> Self {
        Self {
            reads: Reads { cache, db },
            flights: Flights::default(),
        }
    }

    /// The status of `target` as `viewer` sees it; `NotFound` for a user
    /// who does not exist or is deleted.
    pub async fn status(&self, viewer: UserId, target: UserId) -> Result<Status, LookupError> {
        let ticket = self.flights.ticket();
        let pair = Pair::new(viewer, target);
        let mut redis_failed = false;
        let cached = match self
            .reads
            .cache
            .lookup(target, pair.map(|p| (p, viewer)))
            .await
        {
            Ok(cached) => {
                if let Some(known) = answer(viewer, target, cached.user, cached.pair) {
                    meters::cache_lookups(Lookup::Hit, 1);
                    return known;
                }
                meters::cache_lookups(Lookup::Miss, 1);
                cached
            }
            Err(_) => {
                meters::cache_lookups(Lookup::Error, 1);
                redis_failed = true;
                Cached::default()
            }
        };
        // With the user's entry cached (it exists, else the cache had
        // answered) only the pair is read.
        let known_user = cached.user.filter(|_| pair.is_some());
        // Without the cache's copy to compare with (Redis failed), or with
        // a foreign value to replace (refresh-style leases), a replica's
        // older state could be answered or written over a newer one: such
        // misses read the primary.
        let exact = redis_failed || cached.foreign;
        let reads = self.reads.clone();
        let (read, joined) = self
            .flights
            .run((target, pair, known_user), ticket, move || async move {
                reads
                    .miss(viewer, target, pair, known_user, cached.foreign, exact)
                    .await
            })
            .await;
        if joined {
            meters::single_flight_joined();
        }
        let (user, relation) = read?;
        // A replica's read may trail what the cache already holds (a
        // mutation's refresh, read from the primary): the newer of each.
        let user = newer(cached.user, Some(user)).unwrap_or(user);
        let relation = newer(cached.pair, relation);
        answer(viewer, target, Some(user), relation).unwrap_or(Ok(Status::Null))
    }

    /// For a batch: the status of each of `targets` (distinct) as `viewer`
    /// sees it, `Null` for users that do not exist.
    ///
    /// In a batch a missing user and "no relation" read alike (`null`), so
    /// the user entries are needed only where a relation is cached: one
    /// `MGET` of the pairs, then one of the users behind cached relations
    /// (in a feed most pairs have none, so about one key per id instead of
    /// two: Redis, single-threaded, is what bounds a batch). The misses are
    /// read from MySQL in one query per chunk and filled back in one round
    /// trip per chunk.
    pub async fn statuses(
        &self,
        viewer: UserId,
        targets: &[UserId],
    ) -> Result<Vec<Status>, LookupError> {
        let mut answers: Vec<Option<Status>> = targets
            .iter()
            // A user has no pair with themself: null, whether they exist or not.
            .map(|&target| (target == viewer).then_some(Status::Null))
            .collect();
        let others: Vec<usize> = (0..targets.len())
            .filter(|&i| answers[i].is_none())
            .collect();
        let mut cached_relations = vec![None; targets.len()];
        let (hits, redis_answered, foreign) = self
            .cached_statuses(
                viewer,
                targets,
                &others,
                &mut answers,
                &mut cached_relations,
            )
            .await;
        let misses: Vec<usize> = others
            .iter()
            .copied()
            .filter(|&i| answers[i].is_none())
            .collect();
        if redis_answered {
            meters::cache_lookups(Lookup::Hit, hits);
            meters::cache_lookups(Lookup::Miss, misses.len() as u64);
        } else {
            meters::cache_lookups(Lookup::Error, others.len() as u64);
        }
        for chunk in misses.chunks(MISS_CHUNK) {
            let wanted: Vec<UserId> = chunk.iter().map(|&i| targets[i]).collect();
            let subjects: Vec<Subject> = wanted
                .iter()
                .flat_map(|&t| {
                    [
                        Some(Subject::User(t)),
                        Pair::new(viewer, t).map(Subject::Pair),
                    ]
                })
                .flatten()
                .collect();
            // The entries in the order of `subjects`.
            let read = async || {
                let exact = !redis_answered || foreign;
                let snapshots = self.reads.read_many(viewer, &wanted, exact).await?;
                let mut entries = Vec::with_capacity(subjects.len());
                for (&target, snapshot) in wanted.iter().zip(&snapshots) {
                    entries.push(Some(Entry::User(target, snapshot.user)));
                    if let Some(pair) = Pair::new(viewer, target) {
                        entries.push(
                            snapshot
                                .pair
                                .and_then(|r| fillable_pair(snapshot.user, pair, r)),
                        );
                    }
                }
                Ok((snapshots, entries))
            };
            let snapshots = self
                .reads
                .leased(&subjects, lease_for(viewer, foreign), read)
                .await?;
            for (&i, snapshot) in chunk.iter().zip(&snapshots) {
                // As for a single miss: a replica's read may trail the cache.
                let relation = newer(cached_relations[i], snapshot.pair);
                answers[i] =
                    answer(viewer, targets[i], Some(snapshot.user), relation).map(batch_status);
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or(Status::Null))
            .collect())
    }

    /// Answers what the cache can of `targets[i]` for each `i` in `others`
    /// (never the viewer), keeping in `kept` the relations it found but could
    /// not answer from (their user is not cached); returns how many it
    /// answered, whether Redis did answer, and whether some key held a
    /// value that is not ours.
    async fn cached_statuses(
        &self,
        viewer: UserId,
        targets: &[UserId],
        others: &[usize],
        answers: &mut [Option<Status>],
        kept: &mut [Option<Versioned<Relation>>],
    ) -> (u64, bool, bool) {
        let asked: Vec<UserId> = others.iter().map(|&i| targets[i]).collect();
        let Ok((relations, mut foreign)) = self.reads.cache.lookup_pairs(viewer, &asked).await
        else {
            return (0, false, false);
        };
        let mut hits = 0;
        let mut related = Vec::new();
        for (&i, relation) in others.iter().zip(relations) {
            match relation {
                Some(r) if r.value == Relation::None => {
                    answers[i] = Some(Status::Null);
                    hits += 1;
                }
                Some(r) => related.push((i, r)),
                None => {}
            }
        }
        if related.is_empty() {
            return (hits, true, foreign);
        }
        let users: Vec<UserId> = related.iter().map(|&(i, _)| targets[i]).collect();
        let Ok((presences, foreign_user)) = self.reads.cache.lookup_users(&users).await else {
            return (hits, false, foreign);
        };
        foreign |= foreign_user;
        for (&(i, relation), presence) in related.iter().zip(presences) {
            answers[i] = answer(viewer, targets[i], presence, Some(relation)).map(batch_status);
            hits += u64::from(answers[i].is_some());
            kept[i] = Some(relation);
        }
        (hits, true, foreign)
    }
}

/// A miss leases the viewer's copies of what it missed; over a value that is
/// not ours it replaces every copy, as a refresh does.
fn lease_for(viewer: UserId, foreign: bool) -> LeaseFor {
    if foreign {
        LeaseFor::Refresh
    } else {
        LeaseFor::Reader(viewer)
    }
}

impl Reads {
    /// A single GET's miss: leases on the missed keys, one point select
    /// (only the pair's row when the user's entry is known), then the fills
    /// under the leases.
    async fn miss(
        &self,
        viewer: UserId,
        target: UserId,
        pair: Option<Pair>,
        known_user: Option<Versioned<Presence>>,
        foreign: bool,
        exact: bool,
    ) -> MissRead {
        if let (Some(user), Some(pair)) = (known_user, pair) {
            let read = async || {
                let relation = self
                    .query(exact, async |conn| db::reads::pair(conn, pair).await)
                    .await?;
                Ok((relation, vec![Some(Entry::Pair(pair, relation))]))
            };
            let relation = self
                .leased(&[Subject::Pair(pair)], lease_for(viewer, foreign), read)
                .await?;
            return Ok((user, Some(relation)));
        }
        let mut subjects = vec![Subject::User(target)];
        subjects.extend(pair.map(Subject::Pair));
        let read = async || {
            let snapshot = self.read(target, pair, exact).await?;
            let mut entries = vec![Some(Entry::User(target, snapshot.user))];
            if let (Some(pair), Some(relation)) = (pair, snapshot.pair) {
                entries.push(fillable_pair(snapshot.user, pair, relation));
            }
            Ok(((snapshot.user, snapshot.pair), entries))
        };
        self.leased(&subjects, lease_for(viewer, foreign), read)
            .await
    }

    /// Takes leases on `subjects`, runs `read` (which answers, and gives
    /// the entry to fill for each subject, in the same order, `None` for
    /// none), then fills each entry whose lease it holds. Without Redis,
    /// nothing is leased and nothing filled: the answer stands.
    async fn leased<T>(
        &self,
        subjects: &[Subject],
        mode: LeaseFor,
        read: impl AsyncFnOnce() -> Result<(T, Vec<Option<Entry>>), LookupError>,
    ) -> Result<T, LookupError> {
        let leases = match self.cache.lease(subjects, mode).await {
            Ok(leases) => leases,
            Err(e) => {
                tracing::debug!(error = %e, "no lease: the miss will not fill");
                Vec::new()
            }
        };
        let read = read().await;
        let entries = match &read {
            Ok((_, entries)) => entries.as_slice(),
            // Nothing to fill: the leases are given back all the same.
            Err(_) => &[],
        };
        let fills: Vec<(Lease, Option<Entry>)> = leases
            .into_iter()
            .enumerate()
            .filter_map(|(i, lease)| Some((lease?, entries.get(i).copied().flatten())))
            .collect();
        self.fill(&fills).await;
        read.map(|(answer, _)| answer)
    }

    /// Fills what a miss read under its leases, counting the outcome; a
    /// refused fill (the lease was gone) or a failure only means the next
    /// read misses again.
    async fn fill(&self, fills: &[(Lease, Option<Entry>)]) {
        if fills.is_empty() {
            return;
        }
        let n = fills.iter().filter(|(_, entry)| entry.is_some()).count() as u64;
        match self.cache.fill_leased(fills).await {
            Ok(written) => meters::cache_fills(written, n),
            Err(e) => {
                meters::cache_fill_errors(n);
                tracing::debug!(error = %e, "cache fill skipped");
            }
        }
    }

    async fn read_many(
        &self,
        viewer: UserId,
        targets: &[UserId],
        exact: bool,
    ) -> Result<Vec<db::reads::Snapshot>, LookupError> {
        Ok(self
            .query(exact, async |conn| {
                db::reads::snapshots(conn, viewer, targets).await
            })
            .await?)
    }

    async fn read(
        &self,
        target: UserId,
        pair: Option<Pair>,
        exact: bool,
    ) -> Result<db::reads::Snapshot, LookupError> {
        Ok(self
            .query(exact, async |conn| {
                db::reads::snapshot(conn, target, pair).await
            })
            .await?)
    }

    /// A read on the primary when it must be `exact`, else where reads go
    /// (a replica when there are some).
    async fn query<T>(
        &self,
        exact: bool,
        work: impl AsyncFn(&mut diesel_async::AsyncMysqlConnection) -> diesel::QueryResult<T>,
    ) -> Result<T, DbError> {
        if exact {
            self.db.primary().query(async |conn| work(conn).await).await
        } else {
            self.db.query(work).await
        }
    }
}
