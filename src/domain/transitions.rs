//! The six connection actions and what each does to a pair (see
//! `docs/api.md#mutations`). Pure: storage applies the outcome, tests cover every state ×
//! every action × both sides.

use std::fmt;

use super::{Relation, Side};

/// An action a caller takes towards another user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Ask to connect (or accept, if the other already asked).
    Request,
    /// Accept the other's request.
    Accept,
    /// Reject the other's request (the requester is never told).
    Reject,
    /// Take back a rejection.
    CancelReject,
    /// Withdraw one's own request.
    CancelRequest,
    /// End a connection.
    Remove,
}

impl Action {
    /// Every action, for exhaustive tests and routing.
    pub const ALL: [Action; 6] = [
        Action::Request,
        Action::Accept,
        Action::Reject,
        Action::CancelReject,
        Action::CancelRequest,
        Action::Remove,
    ];

    /// The path segment of the action (`cancel_request`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Request => "request",
            Action::Accept => "accept",
            Action::Reject => "reject",
            Action::CancelReject => "cancel_reject",
            Action::CancelRequest => "cancel_request",
            Action::Remove => "remove",
        }
    }

    /// The action named by a path segment.
    pub fn parse(segment: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == segment)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an action does to the current relation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The relation becomes this.
    Change(Relation),
    /// The effect already holds: nothing to write, answer 200 again.
    NoOp,
    /// The action makes no sense now: 409 with this reason.
    Conflict(&'static str),
}

const NO_REQUEST_TO_ACCEPT: &str = "There is no connection request from this user to accept.";
const NO_REQUEST_TO_REJECT: &str = "There is no connection request from this user to reject.";
const NO_REJECTION_TO_CANCEL: &str = "There is no rejected connection request from this user.";
const NO_OWN_REQUEST: &str = "There is no connection request of yours to cancel.";
const NOT_CONNECTED: &str = "You are not connected with this user.";

/// What `action` by the user on side `actor` does to `current`.
pub fn apply(current: Relation, actor: Side, action: Action) -> Outcome {
    use Outcome::{Change, Conflict, NoOp};
    let mine = |by: Side| by == actor;
    match (action, current) {
        (Action::Request, Relation::None) => Change(Relation::Pending {
            by: actor,
            rejected: false,
        }),
        (Action::Request, Relation::Pending { by, .. }) if mine(by) => NoOp,
        (Action::Request, Relation::Pending { .. }) => Change(Relation::Connected),
        (Action::Request, Relation::Connected) => NoOp,

        (Action::Accept, Relation::Pending { by, .. }) if !mine(by) => Change(Relation::Connected),
        (Action::Accept, Relation::Connected) => NoOp,
        (Action::Accept, _) => Conflict(NO_REQUEST_TO_ACCEPT),

        (
            Action::Reject,
            Relation::Pending {
                by,
                rejected: false,
            },
        ) if !mine(by) => Change(Relation::Pending { by, rejected: true }),
        (Action::Reject, Relation::Pending { by, rejected: true }) if !mine(by) => NoOp,
        (Action::Reject, _) => Conflict(NO_REQUEST_TO_REJECT),

        (Action::CancelReject, Relation::Pending { by, rejected: true }) if !mine(by) => {
            Change(Relation::Pending {
                by,
                rejected: false,
            })
        }
        (
            Action::CancelReject,
            Relation::Pending {
                by,
                rejected: false,
            },
        ) if !mine(by) => NoOp,
        (Action::CancelReject, _) => Conflict(NO_REJECTION_TO_CANCEL),

        (Action::CancelRequest, Relation::Pending { by, .. }) if mine(by) => Change(Relation::None),
        (Action::CancelRequest, Relation::None) => NoOp,
        (Action::CancelRequest, _) => Conflict(NO_OWN_REQUEST),

        (Action::Remove, Relation::Connected) => Change(Relation::None),
        (Action::Remove, Relation::None) => NoOp,
        (Action::Remove, _) => Conflict(NOT_CONNECTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    /// The contract's table, written from the caller's point of view: the
    /// state as the caller C and the other O see it, and the expected result.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Seen {
        None,
        PendingByMe { rejected: bool },
        PendingByOther { rejected: bool },
        Connected,
    }

    fn relation(seen: Seen, me: Side) -> Relation {
        let other = if me == Side::Low {
            Side::High
        } else {
            Side::Low
        };
        match seen {
            Seen::None => Relation::None,
            Seen::PendingByMe { rejected } => Relation::Pending { by: me, rejected },
            Seen::PendingByOther { rejected } => Relation::Pending {
                by: other,
                rejected,
            },
            Seen::Connected => Relation::Connected,
        }
    }

    const STATES: [Seen; 6] = [
        Seen::None,
        Seen::PendingByMe { rejected: false },
        Seen::PendingByMe { rejected: true },
        Seen::PendingByOther { rejected: false },
        Seen::PendingByOther { rejected: true },
        Seen::Connected,
    ];

    /// Expected result per the documented table: `Ok(Some(state))` change,
    /// `Ok(None)` no-op, `Err(())` conflict.
    fn expected(action: Action, seen: Seen) -> Result<Option<Seen>, ()> {
        use Seen::*;
        match (action, seen) {
            (Action::Request, None) => Ok(Some(PendingByMe { rejected: false })),
            (Action::Request, PendingByMe { .. } | Connected) => Ok(Option::None),
            (Action::Request, PendingByOther { .. }) => Ok(Some(Connected)),
            (Action::Accept, PendingByOther { .. }) => Ok(Some(Connected)),
            (Action::Accept, Connected) => Ok(Option::None),
            (Action::Reject, PendingByOther { rejected: false }) => {
                Ok(Some(PendingByOther { rejected: true }))
            }
            (Action::Reject, PendingByOther { rejected: true }) => Ok(Option::None),
            (Action::CancelReject, PendingByOther { rejected: true }) => {
                Ok(Some(PendingByOther { rejected: false }))
            }
            (Action::CancelReject, PendingByOther { rejected: false }) => Ok(Option::None),
            (Action::CancelRequest, PendingByMe { .. }) => Ok(Some(None)),
            (Action::CancelRequest, None) => Ok(Option::None),
            (Action::Remove, Connected) => Ok(Some(None)),
            (Action::Remove, None) => Ok(Option::None),
            _ => Err(()),
        }
    }

    #[test]
    fn every_action_from_every_state_on_both_sides_follows_the_contract() {
        for me in [Side::Low, Side::High] {
            for action in Action::ALL {
                for seen in STATES {
                    let got = apply(relation(seen, me), me, action);
                    let want = match expected(action, seen) {
                        Ok(Some(next)) => Outcome::Change(relation(next, me)),
                        Ok(None) => Outcome::NoOp,
                        Err(()) => match got {
                            Outcome::Conflict(reason) => Outcome::Conflict(reason),
                            _ => panic!(
                                "{action} from {seen:?} as {me:?}: want a conflict, got {got:?}"
                            ),
                        },
                    };
                    assert_eq!(got, want, "{action} from {seen:?} as {me:?}");
                }
            }
        }
    }

    #[test]
    fn a_rejected_request_still_reads_as_sent_to_its_sender_after_any_no_op() {
        let me = Side::Low;
        let rejected = Relation::Pending {
            by: me,
            rejected: true,
        };
        assert_eq!(apply(rejected, me, Action::Request), Outcome::NoOp);
        assert_eq!(rejected.status_for(me), Status::SentRequest);
    }

    proptest::proptest! {
        /// Whatever happened before, an action repeated at once is a no-op
        /// or refused again, never a second change (so a gateway's retry is
        /// safe), and no sequence of actions reaches a relation the documentation
        /// does not have.
        #[test]
        fn retries_are_harmless_and_every_reachable_state_is_valid(
            steps in proptest::collection::vec((0usize..6, proptest::bool::ANY), 0..40)
        ) {
            let mut relation = Relation::None;
            for (action, low) in steps {
                let action = Action::ALL[action];
                let actor = if low { Side::Low } else { Side::High };
                let first = apply(relation, actor, action);
                if let Outcome::Change(next) = first {
                    relation = next;
                }
                let again = apply(relation, actor, action);
                proptest::prop_assert!(
                    !matches!(again, Outcome::Change(_)),
                    "{action} twice by {actor:?}: {first:?} then {again:?}"
                );
                if let Relation::Pending { by, rejected: true } = relation {
                    proptest::prop_assert_eq!(relation.status_for(by), Status::SentRequest);
                }
            }
        }
    }

    #[test]
    fn actions_parse_from_their_path_segment_only() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        assert_eq!(Action::parse("Request"), None);
        assert_eq!(Action::parse(""), None);
    }
}
