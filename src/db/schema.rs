//! Diesel's view of the shared schema (`docs/consistency.md#the-shared-schema`, plus
//! `users.version`). Kept by hand: the `state` ENUM maps to our own SQL type.

diesel::table! {
    use diesel::sql_types::*;

    /// Users; a soft-deleted user (`deleted_at` set) is "not found".
    users (id) {
        id -> Unsigned<BigInt>,
        created_at -> Datetime,
        deleted_at -> Nullable<Datetime>,
        version -> Unsigned<BigInt>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::super::state::StateSql;

    /// One row per ordered pair that ever had a relation.
    user_connections (user_low, user_high) {
        user_low -> Unsigned<BigInt>,
        user_high -> Unsigned<BigInt>,
        state -> StateSql,
        requested_by -> Nullable<Unsigned<BigInt>>,
        rejected_at -> Nullable<Datetime>,
        version -> Unsigned<BigInt>,
        updated_at -> Datetime,
    }
}

diesel::table! {
    /// The version a deleted user row's deletion stands for (see the
    /// migration): reads of a missing user report it.
    user_tombstones (id) {
        id -> Unsigned<BigInt>,
        version -> Unsigned<BigInt>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    users,
    user_connections,
    cache_refresh_queue,
    user_tombstones
);

diesel::table! {
    /// Cache refreshes: pending, or landed within the replay window (see the
    /// migrations).
    cache_refresh_queue (kind, a, b) {
        kind -> Unsigned<TinyInt>,
        a -> Unsigned<BigInt>,
        b -> Unsigned<BigInt>,
        version -> Unsigned<BigInt>,
        enqueued_at -> Datetime,
        landed_at -> Nullable<Datetime>,
        attempts -> Unsigned<Integer>,
        next_attempt_at -> Datetime,
    }
}
