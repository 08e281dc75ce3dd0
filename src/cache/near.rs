//! The near cache (L1): entries kept in this process, kept coherent by
//! Redis's server-assisted client-side caching (RESP3 `CLIENT TRACKING`).
//! Off by default (`CONNSTATUS_CACHE_L1_ENTRIES`); what it changes in the
//! consistency promises is in `docs/consistency.md#the-near-cache`.
//!
//! Why it never keeps a value Redis has since replaced:
//!
//! - Everything it keeps was read on a tracked connection: Redis remembers
//!   the keys that connection read and pushes an invalidation on it when one
//!   changes (expires, is evicted, or the database is flushed).
//! - The push is handled in the connection's driver as it arrives (the push
//!   sender is a plain function, not a channel), so it is handled before
//!   any reply that follows it on the connection.
//! - A key's record is opened, with a generation never used before, before
//!   its read is sent; an invalidation or a flush removes the record; a read
//!   keeps its values only in the record it opened. So a reply that an
//!   invalidation overtook (or that raced a flush) is dropped, not kept.
//! - A lost connection (the driver's disconnect notice, a failed or timed out
//!   command, a failed periodic `PING`) flushes everything: invalidations may
//!   have been lost with it. A new connection flushes again.
//! - This process's own writes forget the keys they touched before they
//!   return, so a caller reads its own writes through the same instance.
//!
//! Another instance's write reaches this cache when its invalidation
//! arrives: eventual, by the push's delay (measured in
//! `bench-results/near.txt`), not read-after-write.
//!
//! Only values in our encoding are kept; leases and foreign values are
//! read from Redis every time, as without the near cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use lru::LruCache;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, PushInfo, PushKind, Value};

use super::codec::Keys;
use crate::domain::{Presence, Relation, UserId, Versioned};

/// How often a tracked connection is checked: a connection that died
/// without a word (a partition, no RST) must not leave entries in place
/// for longer than about this plus the timeout.
const PING_EVERY: Duration = Duration::from_secs(1);

/// The name the tracked connections give themselves (`CLIENT LIST`).
pub const CONNECTION_NAME: &str = "connstatus-l1";

/// What this cache keeps values of: a user's presence, or the user's
/// relations; both live in the user's hash `<prefix>{<id>}r`, whose
/// invalidation drops both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tracked {
    /// The user's presence (field `u`).
    User(UserId),
    /// The user's relations (the other fields).
    Relations(UserId),
}

/// What is kept of one Redis key.
struct Record {
    generation: u64,
    user: Option<Versioned<Presence>>,
    relations: HashMap<UserId, Versioned<Relation>>,
}

impl Record {
    fn weight(&self) -> usize {
        1 + self.relations.len()
    }
}

struct Map {
    records: LruCache<Tracked, Record>,
    /// Entries held: one per record plus one per relation kept.
    weight: usize,
}

impl Map {
    fn remove(&mut self, key: &Tracked) {
        if let Some(record) = self.records.pop(key) {
            self.weight -= record.weight();
        }
    }
}

/// One worker's near cache. One map behind one lock: only its worker
/// looks it up (its tracked connection's driver and pinger run on the same
/// thread); other workers take the lock only to forget what they wrote.
pub struct Near {
    map: Mutex<Map>,
    bound: usize,
    generation: AtomicU64,
    keys: Keys,
}

impl std::fmt::Debug for Near {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Near")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl Near {
    /// A near cache of at most about `entries` entries (presences and
    /// relations), for the keys under `keys`.
    pub fn new(entries: usize, keys: Keys) -> Self {
        Self {
            map: Mutex::new(Map {
                records: LruCache::unbounded(),
                weight: 0,
            }),
            bound: entries.max(1),
            generation: AtomicU64::new(1),
            keys,
        }
    }

    fn map(&self) -> MutexGuard<'_, Map> {
        // A panic while holding the lock left a consistent map (no user
        // code runs under it): go on with it.
        lock(&self.map)
    }

    /// The user's presence, if kept.
    pub fn user(&self, id: UserId) -> Option<Versioned<Presence>> {
        let found = self
            .map()
            .records
            .get(&Tracked::User(id))
            .and_then(|r| r.user);
        crate::meters::near_lookup(found.is_some());
        found
    }

    /// `owner`'s copy of its relation with `other`, if kept.
    pub fn relation(&self, owner: UserId, other: UserId) -> Option<Versioned<Relation>> {
        let key = Tracked::Relations(owner);
        let found = self
            .map()
            .records
            .get(&key)
            .and_then(|r| r.relations.get(&other).copied());
        crate::meters::near_lookup(found.is_some());
        found
    }

    /// Opens `key`'s record before a read of it is sent, and returns the
    /// generation the read's values must be kept under.
    pub fn open(&self, key: Tracked) -> u64 {
        let mut map = self.map();
        if let Some(record) = map.records.get(&key) {
            return record.generation;
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        map.records.put(
            key,
            Record {
                generation,
                user: None,
                relations: HashMap::new(),
            },
        );
        map.weight += 1;
        self.trim(&mut map, key);
        generation
    }

    /// Keeps a user's presence read under `generation`, if its record is
    /// still the one the read opened.
    pub fn keep_user(&self, id: UserId, generation: u64, value: Versioned<Presence>) {
        let key = Tracked::User(id);
        let mut map = self.map();
        if let Some(record) = map.records.peek_mut(&key) {
            if record.generation == generation {
                record.user = Some(value);
            }
        }
    }

    /// Keeps relations of `owner` read under `generation`, if its record is
    /// still the one the read opened.
    pub fn keep_relations(
        &self,
        owner: UserId,
        generation: u64,
        values: impl IntoIterator<Item = (UserId, Versioned<Relation>)>,
    ) {
        let key = Tracked::Relations(owner);
        let mut map = self.map();
        let Some(record) = map.records.peek_mut(&key) else {
            return;
        };
        if record.generation != generation {
            return;
        }
        // One heavy viewer must not take the whole map (it would push out
        // everything else, then itself): a record keeps at most half of it.
        let room = self.bound / 2;
        let before = record.relations.len();
        for (other, value) in values {
            if record.relations.len() < room || record.relations.contains_key(&other) {
                record.relations.insert(other, value);
            }
        }
        let added = record.relations.len() - before;
        map.weight += added;
        self.trim(&mut map, key);
    }

    /// Drops least recently used records until the map is within its
    /// bound, sparing `keep` (just written to) unless it alone is too big.
    fn trim(&self, map: &mut Map, keep: Tracked) {
        while map.weight > self.bound {
            let Some((key, record)) = map.records.pop_lru() else {
                break;
            };
            if key == keep && !map.records.is_empty() {
                map.records.put(key, record);
                continue;
            }
            map.weight -= record.weight();
        }
    }

    /// Forgets what is kept of the Redis key named `name`, if it is one of
    /// ours: a user's hash holds both the presence and the relations.
    pub fn forget_named(&self, name: &[u8]) {
        if let Some((id, b'r')) = self.keys.parse(name) {
            let mut map = self.map();
            map.remove(&Tracked::User(id));
            map.remove(&Tracked::Relations(id));
        }
    }

    /// Forgets everything.
    pub fn flush(&self) {
        let mut map = self.map();
        map.records.clear();
        map.weight = 0;
        drop(map);
        crate::meters::near_flush();
    }

    /// Handles a push from a tracked connection: an invalidation forgets
    /// its keys (all of them when Redis sends none: the database was
    /// flushed); a disconnection forgets everything.
    pub fn on_push(&self, info: &PushInfo) {
        match info.kind {
            PushKind::Invalidate => match info.data.first() {
                Some(Value::Array(names)) => {
                    for name in names {
                        if let Value::BulkString(name) = name {
                            self.forget_named(name);
                        }
                    }
                    crate::meters::near_invalidations(names.len() as u64);
                }
                _ => self.flush(),
            },
            PushKind::Disconnection => self.flush(),
            _ => {}
        }
    }

    /// Entries held now (for tests and `/metrics`).
    pub fn len(&self) -> usize {
        self.map().weight
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The current tracked connection of one worker, and its serial number (a
/// disconnect notice clears only the connection it came from).
type Slot = Arc<Mutex<Option<(u64, MultiplexedConnection)>>>;

/// Every worker's near cache of one process: a write forgets its keys in
/// all of them.
pub type Nears = Arc<std::sync::RwLock<Vec<Arc<Near>>>>;

/// One worker's near cache and tracked connection to Redis, over which
/// every read that fills it is made. Each worker has its own (no lock or
/// cache line shared between workers on a hit; an invalidation reaches the
/// connection that read the key, so each worker's stays right on its own).
pub struct NearLink {
    near: Arc<Near>,
    all: Nears,
    client: Client,
    timeout: Duration,
    slot: Slot,
    serial: AtomicU64,
    connecting: tokio::sync::Mutex<()>,
}

/// A link's near cache leaves the process's list with it: a worker that
/// actix restarts would otherwise leave its old cache, entries and all, in
/// the list for good, and every write would keep forgetting keys in it.
impl Drop for NearLink {
    fn drop(&mut self) {
        self.all
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|near| !Arc::ptr_eq(near, &self.near));
    }
}

impl std::fmt::Debug for NearLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearLink").finish_non_exhaustive()
    }
}

impl NearLink {
    /// A link to the Redis of `url` (connected on first use), filling
    /// `near`, which joins `all`; every call bounded by `timeout`.
    pub fn new(near: Arc<Near>, all: Nears, url: &str, timeout: Duration) -> Result<Self, String> {
        use redis::IntoConnectionInfo;
        let bad = |e: redis::RedisError| format!("REDIS_URL: {e}");
        let info = url.into_connection_info().map_err(bad)?;
        // Invalidations arrive as pushes on the tracked connection itself
        // only in RESP3.
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings)).map_err(bad)?;
        all.write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(near.clone());
        Ok(Self {
            near,
            all,
            client,
            timeout,
            slot: Arc::default(),
            serial: AtomicU64::new(0),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// The near cache this link fills.
    pub fn near(&self) -> &Near {
        &self.near
    }

    /// Forgets the Redis key named `name` in every worker's near cache
    /// (this process wrote it).
    pub fn forget_everywhere(&self, name: &[u8]) {
        for near in self
            .all
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            near.forget_named(name);
        }
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        lock(&self.slot).as_ref().map(|(_, c)| c.clone())
    }

    /// The tracked connection, opened (and tracking turned on) if there is
    /// none.
    pub async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let serial = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
        let near: Weak<Near> = Arc::downgrade(&self.near);
        let slot = Arc::downgrade(&self.slot);
        let on_push = move |info: PushInfo| -> Result<(), ()> {
            if let Some(near) = near.upgrade() {
                near.on_push(&info);
            }
            if info.kind == PushKind::Disconnection {
                if let Some(slot) = slot.upgrade() {
                    clear(&slot, serial);
                }
            }
            Ok(())
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(on_push);
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::pipe()
            .cmd("CLIENT")
            .arg("SETNAME")
            .arg(CONNECTION_NAME)
            .ignore()
            .cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        // Whatever was kept before may have missed invalidations that went
        // to a connection now gone.
        self.near.flush();
        *lock(&self.slot) = Some((serial, conn.clone()));
        tokio::spawn(watch(
            conn.clone(),
            Arc::downgrade(&self.near),
            Arc::downgrade(&self.slot),
            serial,
            self.timeout,
        ));
        Ok(conn)
    }

    /// After a failed or timed-out call: the connection is dropped and
    /// everything kept is forgotten (invalidations may have been lost).
    pub fn failed(&self) {
        self.near.flush();
        // The lock is let go before the connection is (its driver may hand
        // a disconnect notice to the push sender, which takes this lock).
        let dropped = lock(&self.slot).take();
        drop(dropped);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn clear(slot: &Mutex<Option<(u64, MultiplexedConnection)>>, serial: u64) {
    let mut slot = lock(slot);
    if slot.as_ref().is_some_and(|(s, _)| *s == serial) {
        *slot = None;
    }
}

/// Pings a tracked connection every [`PING_EVERY`] until it fails (then
/// flushes and drops it) or another connection replaced it.
async fn watch(
    mut conn: MultiplexedConnection,
    near: Weak<Near>,
    slot: Weak<Mutex<Option<(u64, MultiplexedConnection)>>>,
    serial: u64,
    timeout: Duration,
) {
    loop {
        tokio::time::sleep(PING_EVERY).await;
        let Some(slot) = slot.upgrade() else { return };
        if lock(&slot).as_ref().is_none_or(|(s, _)| *s != serial) {
            return;
        }
        let ping = redis::cmd("PING");
        let alive = matches!(
            tokio::time::timeout(timeout, ping.query_async::<Value>(&mut conn)).await,
            Ok(Ok(_))
        );
        if !alive {
            if let Some(near) = near.upgrade() {
                near.flush();
            }
            clear(&slot, serial);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> UserId {
        UserId::new(n).unwrap()
    }

    fn near(entries: usize) -> Near {
        Near::new(entries, Keys::new("t:"))
    }

    #[test]
    fn a_dropped_link_takes_its_near_cache_out_of_the_process_list() {
        let all = Nears::default();
        let link = |entries| {
            NearLink::new(
                Arc::new(near(entries)),
                all.clone(),
                "redis://127.0.0.1:1",
                Duration::from_millis(100),
            )
            .unwrap()
        };
        let (first, second) = (link(10), link(20));
        assert_eq!(all.read().unwrap().len(), 2);

        drop(first);
        let left = all.read().unwrap();
        assert_eq!(left.len(), 1);
        assert!(Arc::ptr_eq(&left[0], &second.near));
        drop(left);

        drop(second);
        assert!(all.read().unwrap().is_empty());
    }

    const ACTIVE: Versioned<Presence> = Versioned {
        version: 3,
        value: Presence::Active,
    };

    #[test]
    fn a_read_keeps_its_values_only_in_the_record_it_opened() {
        let near = near(1000);
        let generation = near.open(Tracked::User(id(1)));
        near.keep_user(id(1), generation, ACTIVE);
        assert_eq!(near.user(id(1)), Some(ACTIVE));

        // An invalidation between the open and the reply: the reply is dropped.
        let generation = near.open(Tracked::User(id(2)));
        near.forget_named(b"t:{2}r");
        near.keep_user(id(2), generation, ACTIVE);
        assert_eq!(near.user(id(2)), None);

        // Invalidated, then opened again by another read: the first read's
        // reply still does not land.
        let first = near.open(Tracked::Relations(id(3)));
        near.forget_named(b"t:{3}r");
        let second = near.open(Tracked::Relations(id(3)));
        assert_ne!(first, second);
        let value = Versioned {
            version: 1,
            value: Relation::Connected,
        };
        near.keep_relations(id(3), first, [(id(4), value)]);
        assert_eq!(near.relation(id(3), id(4)), None);
        near.keep_relations(id(3), second, [(id(4), value)]);
        assert_eq!(near.relation(id(3), id(4)), Some(value));

        // A flush drops everything, and pending reads with it.
        let pending = near.open(Tracked::User(id(5)));
        near.flush();
        near.keep_user(id(5), pending, ACTIVE);
        assert!(near.is_empty());
    }

    #[test]
    fn invalidation_pushes_forget_their_keys_and_a_null_one_everything() {
        let near = near(1000);
        for n in 1..=3 {
            let generation = near.open(Tracked::User(id(n)));
            near.keep_user(id(n), generation, ACTIVE);
        }
        near.on_push(&PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(vec![
                Value::BulkString(b"t:{1}r".to_vec()),
                Value::BulkString(b"other:{2}r".to_vec()),
            ])],
        });
        assert_eq!(near.user(id(1)), None);
        assert_eq!(near.user(id(2)), Some(ACTIVE));
        near.on_push(&PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        });
        assert!(near.is_empty());
    }

    #[test]
    fn the_bound_holds_and_drops_the_least_recently_used() {
        let near = near(128);
        for n in 1..=10_000 {
            let generation = near.open(Tracked::User(id(n)));
            near.keep_user(id(n), generation, ACTIVE);
        }
        assert!(near.len() <= 128, "{} entries", near.len());
        assert_eq!(near.user(id(10_000)), Some(ACTIVE));
        assert_eq!(near.user(id(1)), None);
    }
}
