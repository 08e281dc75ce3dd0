//! Lookups: what the cache holds for a read, in one round trip each.

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

impl Cache {
    /// Reads the target user's entry and, when given, the viewer's copy of
    /// the pair's entry: one round trip (two requests at once in a cluster,
    /// where the two keys live in two slots).
    pub async fn lookup(
        &self,
        target: UserId,
        seen: Option<(Pair, UserId)>,
    ) -> Result<Cached, CacheError> {
        let user_key = self.keys.user(target);
        let values: (Option<Vec<u8>>, Option<Vec<u8>>) = match seen {
            None => {
                let mut conn = self.link.clone();
                let user = redis::cmd("GET").arg(&user_key).to_owned();
                (self.guarded(user.query_async(&mut conn)).await?, None)
            }
            Some((pair, viewer)) => {
                let spot = self.keys.seen_by(pair, viewer);
                let field = spot.field.map_or(0, UserId::get);
                if self.link.clustered() {
                    let (mut a, mut b) = (self.link.clone(), self.link.clone());
                    let user = redis::cmd("GET").arg(&user_key).to_owned();
                    let relation = redis::cmd("HGET").arg(&spot.key).arg(field).to_owned();
                    self.guarded(async {
                        futures_util::try_join!(
                            user.query_async(&mut a),
                            relation.query_async(&mut b)
                        )
                    })
                    .await?
                } else {
                    let mut pipe = redis::pipe();
                    pipe.cmd("GET").arg(&user_key);
                    pipe.cmd("HGET").arg(&spot.key).arg(field);
                    self.guarded(pipe.query_async(&mut self.link.clone()))
                        .await?
                }
            }
        };
        let mut foreign = false;
        let user = decode_noting(Some(&values.0), &mut foreign);
        let pair = decode_noting(Some(&values.1), &mut foreign);
        Ok(Cached {
            user,
            pair,
            foreign,
        })
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
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.relations(viewer));
        for target in targets {
            cmd.arg(target.get());
        }
        self.decode_all(cmd, targets.len()).await
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
        let mut cmd = redis::cmd("MGET");
        let mut key = String::with_capacity(64);
        for &target in targets {
            self.keys.write_user(target, &mut key);
            cmd.arg(key.as_str());
        }
        self.decode_all(cmd, targets.len()).await
    }

    /// Runs `cmd`, which answers `count` values, and decodes each (a
    /// missing or malformed value is `None`); and whether one was malformed.
    async fn decode_all<T: codec::Code>(
        &self,
        cmd: redis::Cmd,
        count: usize,
    ) -> Result<(Vec<Option<Versioned<T>>>, bool), CacheError> {
        let values: Vec<Option<Vec<u8>>> = self
            .guarded(cmd.query_async(&mut self.link.clone()))
            .await?;
        if values.len() != count {
            // Never expected of Redis; a short answer must not shift
            // entries onto the wrong ids.
            return Err(CacheError::Redis(redis::RedisError::from((
                redis::ErrorKind::Client,
                "Redis answered a different number of values",
            ))));
        }
        let mut foreign = false;
        let decoded = values
            .iter()
            .map(|v| decode_noting(Some(v), &mut foreign))
            .collect();
        Ok((decoded, foreign))
    }
}
