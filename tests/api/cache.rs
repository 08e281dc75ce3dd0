//! The cache really serves, refuses older fills, and is never needed.

use connstatus::cache::LeaseFor;
use connstatus::domain::{Entry, Pair, Presence, Relation, Side, UserId, Versioned};
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, Isolated};

fn id(n: u64) -> UserId {
    UserId::new(n).expect("valid id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_first_read_the_cache_answers_even_when_mysql_changed_behind_its_back() {
    // Arrange: a connected pair, read once from each side (misses that fill
    // the pair's entry and both users' entries).
    let app = spawn_app().await;
    app.users(&[1, 2, 3]).await;
    app.store
        .sql("INSERT INTO user_connections (user_low, user_high, state) VALUES (1, 2, 'connected')")
        .await;
    assert_eq!(app.status(1, 2).await.as_deref(), Some("connected"));
    assert_eq!(app.status(2, 1).await.as_deref(), Some("connected"));
    assert_eq!(
        app.store.cached("p:1:2").await.as_deref(),
        Some("1:c"),
        "version 1, connected"
    );
    assert_eq!(app.store.cached("p:2:1").await.as_deref(), Some("1:c"));

    // Act: change the row with plain SQL and send no event.
    app.store
        .sql("UPDATE user_connections SET state = 'none' WHERE user_low = 1 AND user_high = 2")
        .await;

    // Assert: the cached answer is served, from both sides.
    assert_eq!(app.status(1, 2).await.as_deref(), Some("connected"));
    assert_eq!(app.status(2, 1).await.as_deref(), Some("connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_relation_and_not_found_are_cached_too() {
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    assert_eq!(app.status(1, 2).await, None);
    assert_eq!(app.status_of(1, "77").await.status(), 404);
    // Behind the cache's back: a relation appears and user 77 is created.
    app.users(&[77]).await;
    app.store
        .sql("INSERT INTO user_connections (user_low, user_high, state) VALUES (1, 2, 'connected')")
        .await;
    assert_eq!(
        app.status(1, 2).await,
        None,
        "the cached 'no relation' is served"
    );
    assert_eq!(
        app.status_of(1, "77").await.status(),
        404,
        "the cached 'not found' is served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_write_older_than_the_cached_version_is_refused_and_a_newer_one_lands() {
    use connstatus::cache::Upgrade;
    // Arrange: the cache holds version 3 of a pair and version 2 of a user.
    let store = Isolated::new().await;
    let cache = store.cache();
    let redis = store.redis().await;
    let redis = connstatus::cache::link::Link::Pooled(redis);
    let pair = Pair::new(id(1), id(2)).expect("pair");
    let v3 = Versioned {
        version: 3,
        value: Relation::Connected,
    };
    let user_v2 = Versioned {
        version: 2,
        value: Presence::Active,
    };
    let entries = [Entry::Pair(pair, v3), Entry::User(id(2), user_v2)];
    // Into empty keys the job writes nothing at once: it leases them, reads
    // them again, and fills under the leases.
    let outcomes = cache.upgrade_with(&redis, &entries).await.expect("upgrade");
    let fills: Vec<_> = outcomes
        .into_iter()
        .zip(entries)
        .map(|(outcome, entry)| match outcome {
            Upgrade::Leased(lease) => (lease, Some(entry)),
            other => panic!("an empty key was {other:?}"),
        })
        .collect();
    assert_eq!(cache.fill_leased(&fills).await.expect("fill"), 2);

    // Act: writes arrive late, carrying older versions.
    let stale_pair = Versioned {
        version: 2,
        value: Relation::None,
    };
    let stale_user = Versioned {
        version: 0,
        value: Presence::Gone,
    };
    let stale = [
        Entry::Pair(pair, stale_pair),
        Entry::User(id(2), stale_user),
    ];
    let outcomes = cache.upgrade_with(&redis, &stale).await.expect("upgrade");

    // Assert: refused; the cache still holds the newer state.
    assert_eq!(outcomes, [Upgrade::LeftAlone, Upgrade::LeftAlone]);
    let held = cache
        .lookup(id(2), Some((pair, id(1))))
        .await
        .expect("lookup");
    assert_eq!(held.pair, Some(v3));
    assert_eq!(held.user, Some(user_v2));

    // The same version again changes nothing; a newer one lands.
    let same = [Entry::Pair(pair, v3)];
    assert_eq!(
        cache.upgrade_with(&redis, &same).await.expect("upgrade"),
        [Upgrade::LeftAlone]
    );
    let v4 = Versioned {
        version: 4,
        value: Relation::Pending {
            by: Side::High,
            rejected: false,
        },
    };
    let newer = [Entry::Pair(pair, v4)];
    assert_eq!(
        cache.upgrade_with(&redis, &newer).await.expect("upgrade"),
        [Upgrade::Written]
    );
    assert_eq!(
        cache
            .lookup(id(2), Some((pair, id(1))))
            .await
            .expect("lookup")
            .pair,
        Some(v4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readers_fill_lands_only_under_its_own_lease() {
    use connstatus::domain::Subject;
    let store = Isolated::new().await;
    let cache = store.cache();
    let pair = Pair::new(id(1), id(2)).expect("pair");
    let at = |version| Versioned {
        version,
        value: Relation::Connected,
    };
    let lease_on = async |subject| {
        cache
            .lease(&[subject], LeaseFor::Reader(id(1)))
            .await
            .expect("lease")
            .pop()
            .flatten()
    };

    // An empty key is leased, and the fill under the lease lands.
    let lease = lease_on(Subject::Pair(pair)).await.expect("leased");
    assert!(
        lease_on(Subject::Pair(pair)).await.is_none(),
        "a second reader gets no lease while one is out"
    );
    let fill = [(lease, Some(Entry::Pair(pair, at(3))))];
    assert_eq!(cache.fill_leased(&fill).await.expect("fill"), 1);
    assert_eq!(store.cached("p:1:2").await.as_deref(), Some("3:c"));
    // A key that holds a value is not leased: a reader never replaces one.
    assert!(lease_on(Subject::Pair(pair)).await.is_none());

    // A refresh in between takes the lease away: the late fill is refused
    // and the refresh's value stays.
    let user = Subject::User(id(2));
    let lease = lease_on(user).await.expect("leased");
    let newer = Versioned {
        version: 5,
        value: Presence::Active,
    };
    let refresh = cache
        .lease(&[user], LeaseFor::Refresh)
        .await
        .expect("lease")
        .pop()
        .flatten();
    let refresh = [(
        refresh.expect("a refresh always leases"),
        Some(Entry::User(id(2), newer)),
    )];
    assert_eq!(cache.fill_leased(&refresh).await.expect("refresh"), 1);
    let stale = Versioned {
        version: 4,
        value: Presence::Gone,
    };
    let fill = [(lease, Some(Entry::User(id(2), stale)))];
    assert_eq!(cache.fill_leased(&fill).await.expect("fill"), 0);
    assert_eq!(store.cached("u:2").await.as_deref(), Some("5:a"));

    // So does an eviction: the key stays empty rather than take the fill.
    let user = Subject::User(id(3));
    let lease = lease_on(user).await.expect("leased");
    store.evict("u:3").await;
    let fill = [(lease, Some(Entry::User(id(3), stale)))];
    assert_eq!(cache.fill_leased(&fill).await.expect("fill"), 0);
    assert_eq!(store.cached("u:3").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_pair_is_read_again_from_mysql_beside_the_cached_user() {
    // Arrange: both entries cached, then the row changes behind the cache's
    // back and the pair's entry is evicted (the user's stays).
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    app.store
        .sql("INSERT INTO user_connections (user_low, user_high, state, requested_by) VALUES (1, 2, 'pending', 1)")
        .await;
    assert_eq!(
        app.status(1, 2).await.as_deref(),
        Some("sent_connection_request")
    );
    assert_eq!(app.store.cached("u:2").await.as_deref(), Some("1:a"));
    app.store
        .sql("UPDATE user_connections SET state = 'connected', requested_by = NULL WHERE user_low = 1 AND user_high = 2")
        .await;
    app.store.evict("p:1:2").await;

    // Act and assert: the miss reads the pair from MySQL and fills it.
    assert_eq!(app.status(1, 2).await.as_deref(), Some("connected"));
    assert_eq!(app.store.cached("p:1:2").await.as_deref(), Some("2:c"));
    assert_eq!(app.status(2, 1).await.as_deref(), Some("connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_cache_value_is_ignored_and_replaced_from_mysql() {
    let app = spawn_app().await;
    app.users(&[1, 2]).await;
    app.store
        .sql("INSERT INTO user_connections (user_low, user_high, state, requested_by) VALUES (1, 2, 'pending', 2)")
        .await;
    app.store.plant("p:1:2", "{\"json\": true}").await;
    assert_eq!(
        app.status(1, 2).await.as_deref(),
        Some("received_connection_request")
    );
    assert_eq!(app.store.cached("p:1:2").await.as_deref(), Some("1:h"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_unreachable_every_answer_comes_from_mysql() {
    let closed_port = crate::helpers::free_port();
    let app = spawn_app_with(&[(
        "redis_url",
        json!(format!("redis://127.0.0.1:{closed_port}")),
    )])
    .await;
    app.users(&[1, 2, 3, 4, 5]).await;
    app.store
        .sql("UPDATE users SET deleted_at = NOW(6) WHERE id = 5")
        .await;
    app.store
        .sql(
            "INSERT INTO user_connections (user_low, user_high, state, requested_by, rejected_at) VALUES
             (1, 2, 'connected', NULL, NULL), (1, 3, 'pending', 1, NULL), (1, 4, 'pending', 4, NOW(6))",
        )
        .await;
    for round in 0..3 {
        assert_eq!(
            app.status(1, 2).await.as_deref(),
            Some("connected"),
            "round {round}"
        );
        assert_eq!(
            app.status(3, 1).await.as_deref(),
            Some("received_connection_request")
        );
        assert_eq!(
            app.status(1, 4).await,
            None,
            "rejected, seen by the recipient"
        );
        assert_eq!(
            app.status(4, 1).await.as_deref(),
            Some("sent_connection_request")
        );
        assert_eq!(app.status_of(1, "5").await.status(), 404);
        assert_eq!(app.status_of(1, "6").await.status(), 404);
    }
    // And since nothing is cached, a change shows at once.
    app.store
        .sql("UPDATE user_connections SET state = 'none' WHERE user_low = 1 AND user_high = 2")
        .await;
    assert_eq!(app.status(1, 2).await, None);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200, "MySQL alone can serve");
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["redis"], "down");
    assert_eq!(body["mysql"], "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_one_pair_share_a_read_and_all_answer_right() {
    use diesel_async::SimpleAsyncConnection;
    // Arrange: a pair nobody has read, and its table locked by a session of
    // the test's, so that the first miss's select waits while the others
    // arrive.
    let app = std::sync::Arc::new(spawn_app().await);
    app.users(&[1, 2]).await;
    app.store
        .sql("INSERT INTO user_connections (user_low, user_high, state) VALUES (1, 2, 'connected')")
        .await;
    let mut lock = app.store.connection().await;
    lock.batch_execute("LOCK TABLES user_connections WRITE")
        .await
        .expect("lock");

    // Act: twenty reads of the pair at once; the lock ends after 500 ms.
    let reads: Vec<_> = (0..20)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.status(1, 2).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    lock.batch_execute("UNLOCK TABLES").await.expect("unlock");

    // Assert: every answer is right, and misses that arrived while a read
    // was under way shared it (the requests arrive together, so all but a
    // few of them begin before the first select starts).
    for read in reads {
        assert_eq!(read.await.expect("task").as_deref(), Some("connected"));
    }
    let metrics = crate::helpers::metrics_text(&app).await;
    let joined: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("connstatus_cache_single_flight_joined_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(joined >= 1, "no miss shared a read:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_whose_lease_a_later_refresh_took_over_is_what_readers_get_meanwhile() {
    // Arrange: the pair cached as "no relation"; a mutation's refresh takes
    // its leases, then another refresh (the binlog follower's, another
    // instance's) takes them over before the mutation fills.
    use connstatus::domain::Subject;
    let store = Isolated::new().await;
    let cache = store.cache();
    let pair = Pair::new(id(1), id(2)).expect("pair");
    let lease = async || {
        cache
            .lease(&[Subject::Pair(pair)], LeaseFor::Refresh)
            .await
            .expect("lease")
            .pop()
            .flatten()
            .expect("a refresh always leases")
    };
    let none = Versioned {
        version: 0,
        value: Relation::None,
    };
    let first = lease().await;
    assert_eq!(
        cache
            .fill_leased(&[(first, Some(Entry::Pair(pair, none)))])
            .await
            .expect("fill"),
        1
    );
    let mutation = lease().await;
    let follower = lease().await;

    // Act: the mutation's fill arrives after the takeover.
    let requested = Versioned {
        version: 1,
        value: Relation::Pending {
            by: Side::Low,
            rejected: false,
        },
    };
    let written = cache
        .fill_leased(&[(mutation, Some(Entry::Pair(pair, requested)))])
        .await
        .expect("fill");

    // Assert: not written (the later lease's holder fills), but readers on
    // either side answer the mutation's state meanwhile, not the older one.
    assert_eq!(written, 0);
    for viewer in [id(1), id(2)] {
        let seen = cache
            .lookup(viewer, Some((pair, viewer)))
            .await
            .expect("lookup");
        assert_eq!(seen.pair, Some(requested), "seen by {viewer:?}");
    }
    assert_eq!(
        cache
            .fill_leased(&[(follower, Some(Entry::Pair(pair, requested)))])
            .await
            .expect("fill"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_users_hash_stays_bounded_and_every_answer_stays_right() {
    // Arrange: user 1 is connected to every other user; its hash may keep 16.
    let app = spawn_app_with(&[("cache_relations_per_user", json!(16))]).await;
    let others: Vec<u64> = (2..=61).collect();
    app.users(&[&[1], &others[..]].concat()).await;
    let rows: Vec<String> = others
        .iter()
        .filter(|o| *o % 2 == 0)
        .map(|o| format!("(1, {o}, 'connected')"))
        .collect();
    app.store
        .sql(&format!(
            "INSERT INTO user_connections (user_low, user_high, state) VALUES {}",
            rows.join(",")
        ))
        .await;

    // Act: user 1 reads all 60, twice (misses that fill user 1's hash).
    for round in 0..2 {
        for &other in &others {
            let want = (other % 2 == 0).then_some("connected");
            assert_eq!(
                app.status(1, other).await.as_deref(),
                want,
                "{other}, round {round}"
            );
        }
    }

    // Assert: the hash never holds more than the bound, and it expires.
    let key = crate::helpers::spot(&app.store.prefix, "p:1:2").0;
    let mut redis = app.store.redis().await;
    let fields: u64 = redis::cmd("HLEN")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("HLEN");
    assert!((1..=16).contains(&fields), "{fields} fields");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("TTL");
    assert!(ttl > 0, "the hash has a TTL: {ttl}");
}
