//! Lookups: what the cache holds for a read, in one round trip each.

use super::{codec, Cache, CacheError};
use crate::domain::{Pair, Presence, Relation, UserId, Versioned};
use codec::Keys;

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
        // the entry it will replace, which stays the answer until then.
        return codec::behind_lease(raw).and_then(codec::decode);
    }
    *foreign = true;
    None
}

impl Cache {
    /// Reads the target user's entry and, when given, the pair's entry in
    /// one round trip.
    pub async fn lookup(&self, target: UserId, pair: Option<Pair>) -> Result<Cached, CacheError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(self.keys.user(target));
        if let Some(pair) = pair {
            cmd.arg(self.keys.pair(pair));
        }
        let values: Vec<Option<Vec<u8>>> = self
            .guarded(cmd.query_async(&mut self.conn.clone()))
            .await?;
        let mut foreign = false;
        let user = decode_noting(values.first(), &mut foreign);
        let pair = decode_noting(values.get(1), &mut foreign);
        Ok(Cached {
            user,
            pair,
            foreign,
        })
    }

    /// For a batch: the viewer's pair entry with each of `targets` (none of
    /// which may be the viewer), in one `MGET`; and whether some key held a
    /// value that is not ours.
    pub async fn lookup_pairs(
        &self,
        viewer: UserId,
        targets: &[UserId],
    ) -> Result<(Vec<Option<Versioned<Relation>>>, bool), CacheError> {
        self.mget(
            targets
                .iter()
                .filter_map(|&target| Pair::new(viewer, target)),
            targets.len(),
            Keys::write_pair,
        )
        .await
    }

    /// For a batch: the user entry of each of `targets`, in one `MGET`;
    /// and whether some key held a value that is not ours.
    pub async fn lookup_users(
        &self,
        targets: &[UserId],
    ) -> Result<(Vec<Option<Versioned<Presence>>>, bool), CacheError> {
        self.mget(targets.iter().copied(), targets.len(), Keys::write_user)
            .await
    }

    /// `MGET` of `keys` (exactly `count` of them), each value decoded (a
    /// missing or malformed value is `None`), and whether one was malformed.
    async fn mget<T: codec::Code, K>(
        &self,
        keys: impl Iterator<Item = K>,
        count: usize,
        write: impl Fn(&Keys, K, &mut String),
    ) -> Result<(Vec<Option<Versioned<T>>>, bool), CacheError> {
        if count == 0 {
            return Ok((Vec::new(), false));
        }
        let mut cmd = redis::cmd("MGET");
        let mut key = String::with_capacity(64);
        for k in keys {
            write(&self.keys, k, &mut key);
            cmd.arg(key.as_str());
        }
        let values: Vec<Option<Vec<u8>>> = self
            .guarded(cmd.query_async(&mut self.conn.clone()))
            .await?;
        if values.len() != count {
            // Never expected of Redis; a short answer must not shift
            // entries onto the wrong ids.
            return Err(CacheError::Redis(redis::RedisError::from((
                redis::ErrorKind::Client,
                "MGET answered a different number of values",
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
