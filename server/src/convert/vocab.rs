//! The replication vocabulary on the wire: each domain enum of
//! [`crate::model::vocab`] has a protobuf enum of the same values, so
//! `tandem-admin --json` and any other admin client read typed values, not
//! free words. A number this build does not know, and `UNSPECIFIED`, are
//! refused where they are received, naming the number.

use tandem_proto::pb;

use crate::error::ServerError;
use crate::model::{ReplMode, ReplRule, ReplState, RunState, Vocabulary};

/// Declares `to_pb` and `from_pb` between a domain enum and its protobuf
/// enum, value by value.
macro_rules! on_the_wire {
    ($domain:ident, $wire:ident, $what:literal, { $($value:ident => $number:ident),+ $(,)? }) => {
        impl $domain {
            /// The value as its protobuf number.
            #[must_use]
            pub fn to_pb(self) -> i32 {
                let wire = match self {
                    $(Self::$value => pb::$wire::$number),+
                };
                wire as i32
            }

            /// The value a protobuf number stands for.
            ///
            /// # Errors
            /// [`ServerError::InvalidArgument`] for `UNSPECIFIED` or a number
            /// this build does not know, naming it.
            pub fn from_pb(number: i32) -> Result<Self, ServerError> {
                match pb::$wire::try_from(number) {
                    $(Ok(pb::$wire::$number) => Ok(Self::$value),)+
                    _ => Err(ServerError::InvalidArgument(format!(
                        "{} number {number} is not one this server knows (allowed: {})",
                        $what,
                        Self::words()
                    ))),
                }
            }
        }
    };
}

on_the_wire!(ReplState, ReplState, "replstate", {
    Enabled => Enabled,
    Disabled => Disabled,
});

on_the_wire!(ReplMode, ReplMode, "replmode", {
    None => None,
    Send => Send,
    Receive => Receive,
});

on_the_wire!(ReplRule, ReplRule, "replrule", {
    AllData => AllData,
    ActiveData => ActiveData,
    None => None,
});

on_the_wire!(RunState, RunState, "run state", {
    Running => Running,
    Completed => Completed,
    Failed => Failed,
});

/// The word an administrator reads for a value received as `number`, or
/// `unknown(N)` for a number this build cannot name (a newer server).
pub fn shown<T: std::fmt::Display>(value: Result<T, ServerError>, number: i32) -> String {
    value.map_or_else(|_| format!("unknown({number})"), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_survives_the_wire() {
        for v in ReplState::ALL {
            assert_eq!(ReplState::from_pb(v.to_pb()).unwrap(), *v);
        }
        for v in ReplMode::ALL {
            assert_eq!(ReplMode::from_pb(v.to_pb()).unwrap(), *v);
        }
        for v in ReplRule::ALL {
            assert_eq!(ReplRule::from_pb(v.to_pb()).unwrap(), *v);
        }
        for v in RunState::ALL {
            assert_eq!(RunState::from_pb(v.to_pb()).unwrap(), *v);
        }
    }

    #[test]
    fn unspecified_and_strangers_are_refused_by_number() {
        let err = ReplRule::from_pb(0).unwrap_err().to_string();
        assert!(err.contains("replrule number 0"), "{err}");
        assert!(err.contains("all_data, active_data, none"), "{err}");
        assert!(RunState::from_pb(99).is_err());
        assert_eq!(shown(RunState::from_pb(99), 99), "unknown(99)");
        assert_eq!(shown(RunState::from_pb(2), 2), "completed");
    }
}
