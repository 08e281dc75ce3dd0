//! Lookups: what the cache holds for a read, in one round trip each.

use super::codec::Spot;
use super::near::{NearLink, Tracked};
use super::{codec, Cache, CacheError};
use crate::domain::{Pair, Presence, Relation, UserId, Versioned};

/// What the cache holds for one lookup (each part `None` on a miss).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cached {
    /// The target user's presence.
    pub user: Option<Versioned<Presence>>,
    /// The pair's relation.
    pub pair: Option<Versioned<Relation>>,
    /// Some key held a value that is not ours (it reads as a miss, like a
    /// reader's lease); the miss's lease must then replace it rather than
    /// only take empty keys.
    pub foreign: bool,
}

/// Decodes a value read from Redis (`None`: no key, or a value that is not
/// ours), and notes in `foreign` when one is not ours.
fn decode_noting<T: codec::Code>(
    raw: Option<&Option<Vec<u8>>>,
    foreign: &mut bool,
) -> Option<Versioned<T>> {
    let raw = raw?.as_deref()?;
    if let Some(value) = codec::decode(raw) {
        return Some(value);
    }
    if codec::is_lease(raw) {
        // A fill or a refresh under way: a refresh's lease still carries
        // the entry it will replace, which stays the answer until then. A
        // lease past its deadline (its holder gave up or died; a hash field
        // does not expire by itself) is a miss, like an expired key.
        if codec::lease_deadline(raw).is_none_or(|deadline| deadline <= super::unix_ms()) {
            return None;
        }
        return codec::behind_lease(raw).and_then(codec::decode);
    }
    *foreign = true;
    None
}

/// Values decoded in order (`None`: missing or not ours), and whether one
/// was not ours.
type Decoded<T> = (Vec<Option<Versioned<T>>>, bool);

/// A value in our encoding (not a lease, not foreign): what the near cache
/// may keep.
fn plain<T: codec::Code>(raw: Option<&Option<Vec<u8>>>) -> Option<Versioned<T>> {
    codec::decode(raw?.as_deref()?)
}

/// Never expected of Redis; a short answer must not shift entries onto the
/// wrong ids.
fn short_answer() -> CacheError {
    CacheError::Redis(redis::RedisError::from((
        redis::ErrorKind::Client,
        "Redis answered a different number of values",
    )))
}

/// `values` when there are `count` of them; otherwise the tracked
/// connection is dropped (it can no longer be trusted to pair replies with
/// requests) and the lookup fails.
fn exactly(
    link: &NearLink,
    values: Vec<Option<Vec<u8>>>,
    count: usize,
) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
    if values.len() == count {
        Ok(values)
    } else {
        link.failed();
        Err(short_answer())
    }
}

impl Cache {
    /// Reads the target user's entry and, when given, the viewer's copy of
    /// the pair's entry: one round trip (two requests at once in a cluster,
    /// where the two keys live in two slots).
    pub async fn lookup(
        &self,
        target: UserId,
        seen: Option<(Pair, UserId)>,
    ) -> Result<Cached, CacheError> {
        if let Some(near) = &self.near {
            return self.lookup_near(near, target, seen).await;
        }
        let mut spots = vec![self.keys.presence(target)];
        spots.extend(seen.map(|(pair, viewer)| self.keys.seen_by(pair, viewer)));
        let mut values = self.guarded(self.read_spots(&spots)).await?.into_iter();
        let values = (values.next().flatten(), values.next().flatten());
        let mut foreign = false;
        let user = decode_noting(Some(&values.0), &mut foreign);
        let pair = decode_noting(Some(&values.1), &mut foreign);
        Ok(Cached {
            user,
            pair,
            foreign,
        })
    }

    /// The values of `spots`, in order: one pipeline of `HGET`s, or in a
    /// cluster (where a pipeline must stay in one slot) the `HGET`s at once.
    async fn read_spots(&self, spots: &[Spot]) -> redis::RedisResult<Vec<Option<Vec<u8>>>> {
        let hget = |spot: &Spot| spot.command("HGET");
        if self.link.clustered() {
            futures_util::future::try_join_all(spots.iter().map(|spot| {
                let mut link = self.link.clone();
                let cmd = hget(spot);
                async move { cmd.query_async::<Option<Vec<u8>>>(&mut link).await }
            }))
            .await
        } else {
            let mut pipe = redis::pipe();
            for spot in spots {
                pipe.add_command(hget(spot));
            }
            pipe.query_async(&mut self.link.clone()).await
        }
    }

    /// [`Cache::lookup`] with the near cache: what it holds is the answer;
    /// the rest is read through the tracked connection (one round trip) and
    /// kept.
    async fn lookup_near(
        &self,
        link: &NearLink,
        target: UserId,
        seen: Option<(Pair, UserId)>,
    ) -> Result<Cached, CacheError> {
        let near = link.near();
        // The viewer's copy of the pair; its key is built only on a miss.
        let user = near.user(target);
        let pair = seen.and_then(|(pair, viewer)| near.relation(viewer, pair.other(viewer)));
        let user_read = user.is_none().then(|| near.open(Tracked::User(target)));
        let pair_read = seen.filter(|_| pair.is_none()).map(|(pair, viewer)| {
            let generation = near.open(Tracked::Relations(viewer));
            (viewer, self.keys.seen_by(pair, viewer), generation)
        });
        if user_read.is_none() && pair_read.is_none() {
            return Ok(Cached {
                user,
                pair,
                foreign: false,
            });
        }
        let mut pipe = redis::pipe();
        if user_read.is_some() {
            pipe.add_command(self.keys.presence(target).command("HGET"));
        }
        if let Some((_, spot, _)) = &pair_read {
            pipe.add_command(spot.command("HGET"));
        }
        let count = usize::from(user_read.is_some()) + usize::from(pair_read.is_some());
        let values = self.values_near(link, &pipe, count).await?;
        let mut values = values.iter();
        let mut foreign = false;
        let user = match user_read {
            Some(generation) => {
                let raw = values.next();
                if let Some(value) = plain(raw) {
                    near.keep_user(target, generation, value);
                }
                decode_noting(raw, &mut foreign)
            }
            None => user,
        };
        let pair = match pair_read {
            Some((viewer, spot, generation)) => {
                let raw = values.next();
                if let (Some(value), Some(other)) = (plain(raw), spot.field) {
                    near.keep_relations(viewer, generation, [(other, value)]);
                }
                decode_noting(raw, &mut foreign)
            }
            None => pair,
        };
        Ok(Cached {
            user,
            pair,
            foreign,
        })
    }

    /// Runs `pipe` on the near cache's tracked connection (so that Redis
    /// tracks what it reads); a failure also drops the connection and
    /// flushes the near cache.
    async fn through_near<T: redis::FromRedisValue>(
        &self,
        link: &NearLink,
        pipe: &redis::Pipeline,
    ) -> Result<T, CacheError> {
        let result = self
            .guarded(async {
                let mut conn = link.connection().await?;
                pipe.query_async(&mut conn).await
            })
            .await;
        if result.is_err() {
            link.failed();
        }
        result
    }

    /// For a batch: the viewer's copy of its pair with each of `targets`
    /// (none of which may be the viewer): one `HMGET` of the viewer's hash,
    /// one key and one slot; and whether some field held a value that is
    /// not ours.
    pub async fn lookup_pairs(
        &self,
        viewer: UserId,
        targets: &[UserId],
    ) -> Result<(Vec<Option<Versioned<Relation>>>, bool), CacheError> {
        if targets.is_empty() {
            return Ok((Vec::new(), false));
        }
        let Some(link) = &self.near else {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.keys.relations(viewer));
            for target in targets {
                cmd.arg(target.get());
            }
            return self.decode_all(cmd, targets.len()).await;
        };
        let near = link.near();
        let mut found: Vec<_> = targets
            .iter()
            .map(|&target| near.relation(viewer, target))
            .collect();
        let missing: Vec<usize> = (0..targets.len()).filter(|&i| found[i].is_none()).collect();
        if missing.is_empty() {
            return Ok((found, false));
        }
        let generation = near.open(Tracked::Relations(viewer));
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.relations(viewer));
        for &i in &missing {
            cmd.arg(targets[i].get());
        }
        let mut pipe = redis::pipe();
        pipe.add_command(cmd);
        let (values,): (Vec<Option<Vec<u8>>>,) = self.through_near(link, &pipe).await?;
        let values = exactly(link, values, missing.len())?;
        let mut foreign = false;
        let mut kept = Vec::with_capacity(missing.len());
        for (&i, raw) in missing.iter().zip(&values) {
            if let Some(value) = plain(Some(raw)) {
                kept.push((targets[i], value));
            }
            found[i] = decode_noting(Some(raw), &mut foreign);
        }
        near.keep_relations(viewer, generation, kept);
        Ok((found, foreign))
    }

    /// For a batch: the user entry of each of `targets`, in one `MGET` (split
    /// by slot in a cluster); and whether some key held a value that is not
    /// ours.
    pub async fn lookup_users(
        &self,
        targets: &[UserId],
    ) -> Result<(Vec<Option<Versioned<Presence>>>, bool), CacheError> {
        if targets.is_empty() {
            return Ok((Vec::new(), false));
        }
        let Some(link) = &self.near else {
            let spots: Vec<Spot> = targets.iter().map(|&t| self.keys.presence(t)).collect();
            let values = self.guarded(self.read_spots(&spots)).await?;
            return self.decode_values(&values, targets.len());
        };
        let near = link.near();
        let mut found: Vec<_> = targets.iter().map(|&target| near.user(target)).collect();
        let missing: Vec<(usize, u64)> = (0..targets.len())
            .filter(|&i| found[i].is_none())
            .map(|i| (i, near.open(Tracked::User(targets[i]))))
            .collect();
        if missing.is_empty() {
            return Ok((found, false));
        }
        let mut pipe = redis::pipe();
        for &(i, _) in &missing {
            pipe.add_command(self.keys.presence(targets[i]).command("HGET"));
        }
        let values = self.values_near(link, &pipe, missing.len()).await?;
        let mut foreign = false;
        for (&(i, generation), raw) in missing.iter().zip(&values) {
            if let Some(value) = plain(Some(raw)) {
                near.keep_user(targets[i], generation, value);
            }
            found[i] = decode_noting(Some(raw), &mut foreign);
        }
        Ok((found, foreign))
    }

    /// Runs `pipe`, `count` commands of one value each, on the near
    /// cache's tracked connection.
    async fn values_near(
        &self,
        link: &NearLink,
        pipe: &redis::Pipeline,
        count: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        let values = self.through_near(link, pipe).await?;
        exactly(link, values, count)
    }

    /// Runs `cmd`, which answers `count` values, and decodes each (a
    /// missing or malformed value is `None`); and whether one was malformed.
    async fn decode_all<T: codec::Code>(
        &self,
        cmd: redis::Cmd,
        count: usize,
    ) -> Result<Decoded<T>, CacheError> {
        let values: Vec<Option<Vec<u8>>> = self
            .guarded(cmd.query_async(&mut self.link.clone()))
            .await?;
        self.decode_values(&values, count)
    }

    /// Decodes `count` values read from Redis (a missing or malformed one is
    /// `None`); and whether one was malformed.
    fn decode_values<T: codec::Code>(
        &self,
        values: &[Option<Vec<u8>>],
        count: usize,
    ) -> Result<Decoded<T>, CacheError> {
        if values.len() != count {
            return Err(short_answer());
        }
        let mut foreign = false;
        let decoded = values
            .iter()
            .map(|v| decode_noting(Some(v), &mut foreign))
            .collect();
        Ok((decoded, foreign))
    }
}
