//! Cache keys and values: compact ASCII, decoded without allocating.
//!
//! A value is one decimal number, `8 × version + code`, so that Redis keeps
//! it as an integer in a small hash (two or three bytes instead of a
//! string's five to eight: a cached relation is two such values). The
//! scripts (`*.lua`) read the version as `floor(value / 8)`. The codes:
//!
//! | entry | code | meaning |
//! |---|---|---|
//! | pair | 0 | no relation |
//! | pair | 1 | connected |
//! | pair | 2 / 3 | pending, requested by the low / high user |
//! | pair | 4 / 5 | the same, rejected by the recipient |
//! | user | 6 | the user exists and is not deleted |
//! | user | 7 | gone: no such user, or soft-deleted |
//!
//! E.g. `57` is version 7, connected. Version 0 stands for "no row in MySQL":
//! any real row (version >= 1) is newer, so a cached "not found" or "no
//! relation" gives way to the first write without special cases. Versions
//! stay below 2^50 (the scripts' numbers are doubles). A field may also
//! hold a lease, `~<16 hex token><12 hex deadline>`, possibly followed by
//! the entry it stands in front of (see `write.rs`).
//!
//! [`readable`] spells a value as `<version>:<letter>` (`7:c`), for people
//! and tests: letters `n c l h L H a g` in the order of the codes.

use crate::domain::{Pair, Presence, Relation, Side, Subject, UserId, Versioned};

/// A value kind the cache stores, and its one-letter code (see
/// [`LETTERS`] for the number stored).
pub trait Code: Copy {
    /// The letter of this value.
    fn code(self) -> u8;
    /// The value of a letter, if it is one of ours.
    fn from_code(code: u8) -> Option<Self>;
}

/// The letters of the codes, in the order of their numbers (0..=7).
pub const LETTERS: &[u8; 8] = b"nclhLHag";

/// The largest version a value can carry.
pub const MAX_VERSION: u64 = (1 << 50) - 1;

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

/// Encodes `8 × version + code`. A version beyond [`MAX_VERSION`] (a row
/// changed 2^50 times) is written as that bound: every later write then
/// compares equal, so the cache keeps what it has until the TTL, never an
/// older state over a newer one.
pub fn encode<T: Code>(entry: Versioned<T>) -> Vec<u8> {
    let code = LETTERS
        .iter()
        .position(|&l| l == entry.value.code())
        .unwrap_or(0) as u64;
    let mut buf = itoa::Buffer::new();
    buf.format(entry.version.min(MAX_VERSION) * 8 + code)
        .as_bytes()
        .to_vec()
}

/// `raw` as `<version>:<letter>` (e.g. `7:c`), if it is a value of ours.
pub fn readable(raw: &[u8]) -> Option<String> {
    let (version, code) = split(raw)?;
    Some(format!("{version}:{}", char::from(code)))
}

/// The inverse of [`readable`]: the stored form of `7:c`.
pub fn from_readable(text: &str) -> Option<Vec<u8>> {
    let (version, letter) = text.split_once(':')?;
    let version: u64 = version.parse().ok().filter(|&v| v <= MAX_VERSION)?;
    let [letter] = letter.as_bytes() else {
        return None;
    };
    let code = LETTERS.iter().position(|l| l == letter)? as u64;
    Some((version * 8 + code).to_string().into_bytes())
}

/// The version and the letter of a stored value.
fn split(raw: &[u8]) -> Option<(u64, u8)> {
    if raw.is_empty() || raw.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in raw {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    let version = n >> 3;
    (version <= MAX_VERSION).then(|| (version, LETTERS[(n & 7) as usize]))
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
    let (version, code) = split(raw)?;
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
    /// A command `cmd` on this spot: its key, then its field (no allocation
    /// for the field: it is written as a number, or the presence's name).
    pub fn command(&self, cmd: &str) -> redis::Cmd {
        let mut command = redis::cmd(cmd);
        command.arg(&self.key);
        match self.field {
            Some(other) => command.arg(other.get()),
            None => command.arg(PRESENCE_FIELD),
        };
        command
    }

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
        Spot {
            key: self.relations(viewer),
            field: Some(pair.other(viewer)),
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
            for version in [0, 1, 42, MAX_VERSION] {
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
    fn a_value_is_one_number_eight_times_the_version_plus_the_code() {
        let v = Versioned {
            version: 17,
            value: Relation::Pending {
                by: Side::High,
                rejected: true,
            },
        };
        assert_eq!(encode(v), b"141");
        assert_eq!(readable(b"141").as_deref(), Some("17:H"));
        assert_eq!(from_readable("17:H").as_deref(), Some(&b"141"[..]));
        assert_eq!(from_readable("0:g").as_deref(), Some(&b"7"[..]));
        assert_eq!(from_readable("1:x"), None);
        // Beyond the bound the version saturates: never a wrap to an older one.
        let huge = Versioned {
            version: u64::MAX,
            value: Presence::Active,
        };
        assert_eq!(
            decode::<Presence>(&encode(huge)).map(|v| v.version),
            Some(MAX_VERSION)
        );
    }

    #[test]
    fn malformed_values_decode_to_nothing() {
        for raw in [
            &b""[..],
            b"c",
            b"1:c",
            b"-9",
            b" 9",
            b"9 ",
            b"1.5",
            b"99999999999999999999",
            b"9007199254740993",
            b"{\"s\":1}",
            b"14",
        ] {
            assert_eq!(
                decode::<Relation>(raw),
                None,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        // A relation's code is not a presence, nor the other way round.
        assert_eq!(decode::<Presence>(b"24"), None);
        assert_eq!(decode::<Relation>(b"30"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_version_and_value_round_trips(version in 0..=MAX_VERSION, code in 0usize..6) {
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
