//! Cache keys and values: compact ASCII, decoded without allocating.
//!
//! A value is `<version>:<code>`. The version comes first so that the warm
//! job's script (see `upgrade.lua`) can compare it without knowing the rest;
//! the code is one byte:
//!
//! | entry | code | meaning |
//! |---|---|---|
//! | pair | `n` | no relation |
//! | pair | `c` | connected |
//! | pair | `l` / `h` | pending, requested by the low / high user |
//! | pair | `L` / `H` | the same, rejected by the recipient |
//! | user | `a` | the user exists and is not deleted |
//! | user | `g` | gone: no such user, or soft-deleted |
//!
//! Version 0 stands for "no row in MySQL": any real row (version >= 1) is
//! newer, so a cached "not found" or "no relation" gives way to the first
//! write without special cases. A key or field may also hold a lease,
//! `~<16 hex token><12 hex deadline>`, possibly followed by the entry it
//! stands in front of (see `write.rs`).

use crate::domain::{Pair, Presence, Relation, Side, Subject, UserId, Versioned};

/// A value kind the cache stores, and its one-byte code.
pub trait Code: Copy {
    /// The one-byte code of this value.
    fn code(self) -> u8;
    /// The value of a code, if it is one of ours.
    fn from_code(code: u8) -> Option<Self>;
}

impl Code for Relation {
    fn code(self) -> u8 {
        match self {
            Relation::None => b'n',
            Relation::Connected => b'c',
            Relation::Pending {
                by: Side::Low,
                rejected: false,
            } => b'l',
            Relation::Pending {
                by: Side::High,
                rejected: false,
            } => b'h',
            Relation::Pending {
                by: Side::Low,
                rejected: true,
            } => b'L',
            Relation::Pending {
                by: Side::High,
                rejected: true,
            } => b'H',
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            b'n' => Relation::None,
            b'c' => Relation::Connected,
            b'l' => Relation::Pending {
                by: Side::Low,
                rejected: false,
            },
            b'h' => Relation::Pending {
                by: Side::High,
                rejected: false,
            },
            b'L' => Relation::Pending {
                by: Side::Low,
                rejected: true,
            },
            b'H' => Relation::Pending {
                by: Side::High,
                rejected: true,
            },
            _ => return None,
        })
    }
}

impl Code for Presence {
    fn code(self) -> u8 {
        match self {
            Presence::Active => b'a',
            Presence::Gone => b'g',
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            b'a' => Some(Presence::Active),
            b'g' => Some(Presence::Gone),
            _ => None,
        }
    }
}

/// Encodes `<version>:<code>`.
pub fn encode<T: Code>(entry: Versioned<T>) -> Vec<u8> {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(entry.version).as_bytes();
    let mut out = Vec::with_capacity(digits.len() + 2);
    out.extend_from_slice(digits);
    out.push(b':');
    out.push(entry.value.code());
    out
}

/// The length of a lease's token: `~` and 16 hex digits.
pub const TOKEN_LEN: usize = 17;

/// The length of a lease: its token and 12 hex digits of the Unix time in
/// ms (Redis's clock) when it expires. A string key also expires with it;
/// a hash field cannot, so readers and scripts compare the deadline.
pub const LEASE_LEN: usize = TOKEN_LEN + 12;

/// When a lease expires (Unix ms), if `raw` is one.
pub fn lease_deadline(raw: &[u8]) -> Option<u64> {
    let digits = raw.get(TOKEN_LEN..LEASE_LEN).filter(|_| is_lease(raw))?;
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// Whether a stored value is a lease (`~<token>`): a fill or a refresh is
/// under way.
pub fn is_lease(raw: &[u8]) -> bool {
    raw.first() == Some(&b'~')
}

/// The entry a refresh's lease stands in front of (`~<token><entry>`), still
/// the answer while the refresh reads MySQL; `None` for a bare lease.
pub fn behind_lease(raw: &[u8]) -> Option<&[u8]> {
    raw.get(LEASE_LEN..)
        .filter(|rest| is_lease(raw) && !rest.is_empty())
}

/// Decodes a stored value; anything malformed is `None` and is treated as a
/// miss, so a foreign or corrupted value can never become an answer.
pub fn decode<T: Code>(raw: &[u8]) -> Option<Versioned<T>> {
    let (&code, rest) = raw.split_last()?;
    let (&colon, digits) = rest.split_last()?;
    if colon != b':' || digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut version: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        version = version.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(Versioned {
        version,
        value: T::from_code(code)?,
    })
}

/// The field of a user's hash that holds whether the user exists (the
/// other fields are ids: digits).
pub const PRESENCE_FIELD: &str = "u";

/// Where one copy of an entry lives: a field of a user's hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spot {
    /// The user's hash.
    pub key: String,
    /// The other user, for a relation; `None` for the user's presence
    /// ([`PRESENCE_FIELD`]).
    pub field: Option<UserId>,
}

impl Spot {
    /// The field's name in Redis.
    pub fn field_name(&self) -> String {
        self.field.map_or_else(
            || PRESENCE_FIELD.to_owned(),
            |other| other.get().to_string(),
        )
    }
}

/// Builds keys under one prefix. The layout (`docs/operations.md#the-key-layout`):
/// one hash per user, `<prefix>{<user>}r`, with
///
/// - field `u`: whether the user exists;
/// - one field per other user (`<other id>` → the pair's value): the user's
///   relations. A pair has two copies, one in each user's hash, so that
///   everything one viewer's request reads about its relations is one key,
///   and one slot of a cluster.
///
/// One key per user (a key costs Redis ~140 bytes beyond its content: a
/// separate presence key was a quarter of the cache's memory); the hash tag
/// is the user id.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (e.g. `cs:3:`; no braces, see the config).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// `<prefix>{<id>}r`: the user's relations.
    pub fn relations(&self, user: UserId) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 24);
        self.write(user, b'r', &mut key);
        key
    }

    /// Where whether the user exists is kept: the field
    /// [`PRESENCE_FIELD`] of the user's own hash.
    pub fn presence(&self, user: UserId) -> Spot {
        Spot {
            key: self.relations(user),
            field: None,
        }
    }

    fn write(&self, user: UserId, kind: u8, key: &mut String) {
        let mut id = itoa::Buffer::new();
        key.clear();
        key.push_str(&self.prefix);
        key.push('{');
        key.push_str(id.format(user.get()));
        key.push('}');
        key.push(char::from(kind));
    }

    /// The copy of `pair`'s entry that `viewer` (one of the two) reads.
    pub fn seen_by(&self, pair: Pair, viewer: UserId) -> Spot {
        let other = if pair.low() == viewer {
            pair.high()
        } else {
            pair.low()
        };
        Spot {
            key: self.relations(viewer),
            field: Some(other),
        }
    }

    /// Every copy of a subject's entry: a user's one, a pair's two.
    pub fn spots(&self, subject: Subject) -> Vec<Spot> {
        match subject {
            Subject::User(user) => vec![self.presence(user)],
            Subject::Pair(pair) => vec![
                self.seen_by(pair, pair.low()),
                self.seen_by(pair, pair.high()),
            ],
        }
    }

    /// The user and the kind (`u` or `r`) of a key under this prefix.
    pub fn parse(&self, key: &[u8]) -> Option<(UserId, u8)> {
        let rest = key
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b"{")?;
        let close = rest.iter().position(|&b| b == b'}')?;
        let (digits, tail) = (&rest[..close], &rest[close + 1..]);
        let [kind] = tail else { return None };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let id = std::str::from_utf8(digits).ok()?.parse().ok()?;
        Some((UserId::new(id)?, *kind))
    }

    /// The glob that matches every key under the prefix.
    pub fn pattern(&self) -> String {
        format!("{}*", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELATIONS: [Relation; 6] = [
        Relation::None,
        Relation::Connected,
        Relation::Pending {
            by: Side::Low,
            rejected: false,
        },
        Relation::Pending {
            by: Side::High,
            rejected: false,
        },
        Relation::Pending {
            by: Side::Low,
            rejected: true,
        },
        Relation::Pending {
            by: Side::High,
            rejected: true,
        },
    ];

    #[test]
    fn every_value_round_trips() {
        for value in RELATIONS {
            for version in [0, 1, 42, u64::MAX] {
                let v = Versioned { version, value };
                assert_eq!(decode::<Relation>(&encode(v)), Some(v));
            }
        }
        for value in [Presence::Active, Presence::Gone] {
            let v = Versioned { version: 9, value };
            assert_eq!(decode::<Presence>(&encode(v)), Some(v));
        }
    }

    #[test]
    fn encoding_is_compact_ascii_with_the_version_first() {
        let v = Versioned {
            version: 17,
            value: Relation::Pending {
                by: Side::High,
                rejected: true,
            },
        };
        assert_eq!(encode(v), b"17:H");
    }

    #[test]
    fn malformed_values_decode_to_nothing() {
        for raw in [
            &b""[..],
            b"c",
            b":c",
            b"1c",
            b"1:x",
            b"a:c",
            b"-1:c",
            b"1:cc",
            b"99999999999999999999:c",
            b"{\"s\":1}",
            b"1:a",
        ] {
            assert_eq!(
                decode::<Relation>(raw),
                None,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(decode::<Presence>(b"3:n"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_version_and_value_round_trips(version in proptest::num::u64::ANY, code in 0usize..6) {
            let v = Versioned { version, value: RELATIONS[code] };
            proptest::prop_assert_eq!(decode::<Relation>(&encode(v)), Some(v));
        }

        #[test]
        fn any_bytes_decode_to_a_value_or_nothing_and_never_panic(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..32)) {
            if let Some(v) = decode::<Relation>(&raw) {
                proptest::prop_assert_eq!(decode::<Relation>(&encode(v)), Some(v));
            }
            let _ = decode::<Presence>(&raw);
        }
    }

    #[test]
    fn keys_carry_the_prefix_and_the_user_as_hash_tag() {
        let keys = Keys::new("cs:3:");
        let (a, b) = (UserId::new(90).expect("id"), UserId::new(7).expect("id"));
        let pair = Pair::new(a, b).expect("pair");
        assert_eq!(keys.relations(a), "cs:3:{90}r");
        assert_eq!(keys.presence(a).key, "cs:3:{90}r");
        assert_eq!(keys.presence(a).field_name(), "u");
        assert_eq!(keys.seen_by(pair, a).field_name(), "7");
        assert_eq!(
            keys.seen_by(pair, a),
            Spot {
                key: "cs:3:{90}r".into(),
                field: Some(b)
            }
        );
        assert_eq!(
            keys.spots(Subject::Pair(pair)),
            vec![keys.seen_by(pair, b), keys.seen_by(pair, a)]
        );
        assert_eq!(keys.spots(Subject::User(b)).len(), 1);
        assert_eq!(keys.pattern(), "cs:3:*");
    }

    #[test]
    fn key_names_parse_back_and_others_do_not() {
        let keys = Keys::new("cs:3:");
        let a = UserId::new(90).expect("id");
        assert_eq!(keys.parse(keys.relations(a).as_bytes()), Some((a, b'r')));
        for other in [
            "cs:2:{90}r",
            "cs:3:{90}",
            "cs:3:{}r",
            "cs:3:{0}r",
            "cs:3:{9x}r",
            "cs:3:{90}rr",
            "cs:3:90r",
        ] {
            assert_eq!(keys.parse(other.as_bytes()), None, "{other}");
        }
    }
}
