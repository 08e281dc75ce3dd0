//! The vocabulary of the service: who a user is, what a pair is, what state a
//! pair can be in, and how that state reads from either side.
//!
//! These are pure types with private fields ("parse, don't validate"): once a
//! value exists it is valid, so nothing downstream re-checks a raw integer.
//! This module imports nothing else of the crate.

mod entry;
pub mod transitions;

use std::fmt;

pub use entry::{Entry, Presence, Subject, Versioned};

/// A user id: a positive integer that fits a signed 64-bit column
/// (`1..=i64::MAX`), as the platform's ids do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(u64);

/// The largest id the API accepts (`2^63 - 1`).
const MAX_ID: u64 = i64::MAX as u64;

impl UserId {
    /// Accepts `1..=i64::MAX`; anything else is not a user id.
    pub fn new(raw: u64) -> Option<Self> {
        (1..=MAX_ID).contains(&raw).then_some(Self(raw))
    }

    /// Parses the `{id}` path segment: ASCII digits only, leading zeros
    /// allowed, value in `1..=i64::MAX`. Signs, spaces, non-ASCII digits and
    /// overlong values are rejected without allocating.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // Leading zeros are allowed however many there are; only the
        // significant digits have to fit.
        let significant = &bytes[bytes.iter().take_while(|&&b| b == b'0').count()..];
        if significant.len() > 19 {
            return None;
        }
        let mut value: u64 = 0;
        for &b in significant {
            // 19 digits fit a u64 (max ~1.8e19), so this cannot overflow.
            value = value * 10 + u64::from(b - b'0');
        }
        Self::new(value)
    }

    /// The raw value, for storage and cache keys.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which member of a pair: the lower or the higher id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// `user_low`, the smaller id.
    Low,
    /// `user_high`, the larger id.
    High,
}

/// Two distinct users, always stored in order (`low < high`), as the
/// `user_connections` primary key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pair {
    low: UserId,
    high: UserId,
}

impl Pair {
    /// The pair of two distinct users, in either order; `None` for a user and
    /// themself, who have no pair.
    pub fn new(a: UserId, b: UserId) -> Option<Self> {
        match a.cmp(&b) {
            std::cmp::Ordering::Less => Some(Self { low: a, high: b }),
            std::cmp::Ordering::Greater => Some(Self { low: b, high: a }),
            std::cmp::Ordering::Equal => None,
        }
    }

    /// The pair of `viewer` and `other`, with the viewer's side; `None` when
    /// they are the same user.
    pub fn seen_by(viewer: UserId, other: UserId) -> Option<(Self, Side)> {
        let pair = Self::new(viewer, other)?;
        let side = if viewer == pair.low {
            Side::Low
        } else {
            Side::High
        };
        Some((pair, side))
    }

    /// The smaller id.
    pub fn low(self) -> UserId {
        self.low
    }

    /// The larger id.
    pub fn high(self) -> UserId {
        self.high
    }

    /// Which side `user` is on, or `None` if they are not in the pair.
    pub fn side_of(self, user: UserId) -> Option<Side> {
        if user == self.low {
            Some(Side::Low)
        } else if user == self.high {
            Some(Side::High)
        } else {
            None
        }
    }

    /// The user of the pair who is not `user` (the low one when `user` is
    /// not in the pair).
    pub fn other(self, user: UserId) -> UserId {
        if user == self.low {
            self.high
        } else {
            self.low
        }
    }

    /// The user on `side`.
    pub fn user(self, side: Side) -> UserId {
        match side {
            Side::Low => self.low,
            Side::High => self.high,
        }
    }
}

/// The state of one pair, as stored (one row per ordered pair).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Relation {
    /// No relation (no row, or a row back at `none`).
    None,
    /// A request by `by`, possibly rejected by the other side.
    Pending {
        /// Who asked.
        by: Side,
        /// Whether the recipient rejected it (never shown to `by`).
        rejected: bool,
    },
    /// Both are connected.
    Connected,
}

/// The answer of the API: the relation as one user sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// `"connected"`.
    Connected,
    /// `"sent_connection_request"`.
    SentRequest,
    /// `"received_connection_request"`.
    ReceivedRequest,
    /// JSON `null`.
    Null,
}

impl Status {
    /// The JSON value of `connection_status` (`None` for `null`).
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Status::Connected => Some("connected"),
            Status::SentRequest => Some("sent_connection_request"),
            Status::ReceivedRequest => Some("received_connection_request"),
            Status::Null => None,
        }
    }

    /// The JSON literal of this status (`"connected"` or `null`), ready to be
    /// written into a body without a serializer.
    pub fn json_literal(self) -> &'static str {
        match self {
            Status::Connected => "\"connected\"",
            Status::SentRequest => "\"sent_connection_request\"",
            Status::ReceivedRequest => "\"received_connection_request\"",
            Status::Null => "null",
        }
    }
}

impl Relation {
    /// How the user on `viewer`'s side sees this relation (see `docs/api.md#status-semantics`):
    /// a rejection is hidden from the requester, and the rejecting recipient
    /// sees nothing.
    pub fn status_for(self, viewer: Side) -> Status {
        match self {
            Relation::None => Status::Null,
            Relation::Connected => Status::Connected,
            Relation::Pending { by, .. } if by == viewer => Status::SentRequest,
            Relation::Pending {
                rejected: false, ..
            } => Status::ReceivedRequest,
            Relation::Pending { rejected: true, .. } => Status::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> UserId {
        UserId::new(n).expect("valid id")
    }

    #[test]
    fn parse_accepts_digits_and_leading_zeros() {
        assert_eq!(UserId::parse("1"), Some(id(1)));
        assert_eq!(UserId::parse("0007"), Some(id(7)));
        assert_eq!(
            UserId::parse("9223372036854775807"),
            Some(id(9_223_372_036_854_775_807))
        );
        assert_eq!(
            UserId::parse(&format!("{}42", "0".repeat(40))),
            Some(id(42))
        );
    }

    #[test]
    fn parse_rejects_everything_else() {
        for bad in [
            "",
            "0",
            "000",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1a",
            "abc",
            "9223372036854775808",
            "18446744073709551616",
            "99999999999999999999",
            "١٢",
            "1.0",
            "0x10",
            "%00",
        ] {
            assert_eq!(UserId::parse(bad), None, "{bad:?} must not parse");
        }
        assert_eq!(UserId::parse(&"1".repeat(40)), None);
    }

    proptest::proptest! {
        #[test]
        fn parse_agrees_with_the_definition(text in "\\PC{0,30}|[0-9]{1,30}|0{0,25}[1-9][0-9]{0,19}") {
            let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
            let value = text.trim_start_matches('0').parse::<u128>().ok();
            let expected = match (digits, value) {
                (true, Some(v)) if (1..=i64::MAX as u128).contains(&v) => UserId::new(v as u64),
                _ => None,
            };
            proptest::prop_assert_eq!(UserId::parse(&text), expected);
        }
    }

    #[test]
    fn pair_orders_its_members_and_refuses_a_user_with_themself() {
        let p = Pair::new(id(9), id(3)).expect("distinct");
        assert_eq!((p.low(), p.high()), (id(3), id(9)));
        assert_eq!(Pair::new(id(3), id(9)), Some(p));
        assert_eq!(p.side_of(id(3)), Some(Side::Low));
        assert_eq!(p.side_of(id(9)), Some(Side::High));
        assert_eq!(p.side_of(id(5)), None);
        assert_eq!(Pair::new(id(4), id(4)), None);
        assert_eq!(Pair::seen_by(id(9), id(3)), Some((p, Side::High)));
        assert_eq!(Pair::seen_by(id(3), id(9)), Some((p, Side::Low)));
        assert_eq!(Pair::seen_by(id(3), id(3)), None);
    }

    #[test]
    fn every_relation_reads_as_the_contract_says_from_both_sides() {
        use Side::*;
        let cases = [
            (Relation::None, Low, Status::Null),
            (Relation::None, High, Status::Null),
            (Relation::Connected, Low, Status::Connected),
            (Relation::Connected, High, Status::Connected),
            (
                Relation::Pending {
                    by: Low,
                    rejected: false,
                },
                Low,
                Status::SentRequest,
            ),
            (
                Relation::Pending {
                    by: Low,
                    rejected: false,
                },
                High,
                Status::ReceivedRequest,
            ),
            (
                Relation::Pending {
                    by: Low,
                    rejected: true,
                },
                Low,
                Status::SentRequest,
            ),
            (
                Relation::Pending {
                    by: Low,
                    rejected: true,
                },
                High,
                Status::Null,
            ),
            (
                Relation::Pending {
                    by: High,
                    rejected: false,
                },
                High,
                Status::SentRequest,
            ),
            (
                Relation::Pending {
                    by: High,
                    rejected: false,
                },
                Low,
                Status::ReceivedRequest,
            ),
            (
                Relation::Pending {
                    by: High,
                    rejected: true,
                },
                High,
                Status::SentRequest,
            ),
            (
                Relation::Pending {
                    by: High,
                    rejected: true,
                },
                Low,
                Status::Null,
            ),
        ];
        for (relation, viewer, expected) in cases {
            assert_eq!(
                relation.status_for(viewer),
                expected,
                "{relation:?} seen from {viewer:?}"
            );
        }
    }
}
