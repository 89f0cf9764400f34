//! The replication vocabulary as types: a node's replication state, mode and
//! rule, and a run's state. The catalog stores them as the words TSM
//! administrators know (`enabled`, `receive`, `active_data`…); these enums
//! are how the rest of the server holds them, so a misspelled word cannot
//! slip through a comparison, and a word the catalog should never hold is
//! refused where it is read, naming the value, instead of silently meaning
//! something else.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// A stored or given word that is not one of a vocabulary's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not one of: {allowed}")]
pub struct UnknownWord {
    /// Which vocabulary.
    pub what: &'static str,
    /// The word given.
    pub value: String,
    /// The words allowed, comma-separated.
    pub allowed: String,
}

/// What every vocabulary enum offers, so a parser or renderer can be written
/// once for all of them.
pub trait Vocabulary:
    Copy + Send + Sync + 'static + std::str::FromStr<Err = UnknownWord> + std::fmt::Display
{
    /// Every value, in declaration order.
    const ALL: &'static [Self];

    /// The word stored and shown for this value.
    fn as_str(self) -> &'static str;

    /// Every word, comma-separated, for an error that lists what is allowed.
    fn words() -> String {
        Self::ALL
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Declares an enum whose variants are written as fixed words, with
/// `as_str`, `Display`, `FromStr` and SQLite conversions.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident ($what:literal) {
        $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl Vocabulary for $name {
            const ALL: &'static [Self] = &[$(Self::$variant),+];

            fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownWord;

            fn from_str(word: &str) -> Result<Self, UnknownWord> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == word)
                    .ok_or_else(|| UnknownWord {
                        what: $what,
                        value: word.to_string(),
                        allowed: Self::words(),
                    })
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e: UnknownWord| FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

vocabulary! {
    /// Whether a node is replicated (TSM REPLSTATE).
    ReplState ("replstate") {
        /// Replicated by `replicate node` and the schedule.
        Enabled = "enabled",
        /// Not replicated (the default).
        #[default]
        Disabled = "disabled",
    }
}

vocabulary! {
    /// Which way a node's data flows (TSM REPLMODE).
    ReplMode ("replmode") {
        /// Never replicated yet.
        #[default]
        None = "none",
        /// This server is the node's source.
        Send = "send",
        /// This server holds the node as a read-only replica.
        Receive = "receive",
    }
}

vocabulary! {
    /// Which versions of a node are replicated (TSM replication rules).
    ReplRule ("replrule") {
        /// Active and inactive versions (ALL_DATA).
        #[default]
        AllData = "all_data",
        /// Active versions only (ACTIVE_DATA).
        ActiveData = "active_data",
        /// Nothing.
        None = "none",
    }
}

vocabulary! {
    /// How a replication run stands.
    RunState ("run state") {
        /// Under way (or cut short by a stop; marked failed at the next start).
        #[default]
        Running = "running",
        /// Ended with everything sent.
        Completed = "completed",
        /// Ended with an error, named in the run's message.
        Failed = "failed",
    }
}

vocabulary! {
    /// Where a planned role switch of a node stands, on either server.
    SwitchStep ("switch step") {
        /// Old primary: no new sessions; running ones may finish.
        #[default]
        Draining = "draining",
        /// Old primary: no writes at all; the final replication runs.
        Frozen = "frozen",
        /// Old primary: the partner was asked to take the node over; only
        /// the partner knows whether it did.
        HandingOver = "handing_over",
        /// Old primary, done: the node is the partner's replica here.
        HandedOver = "handed_over",
        /// New primary: took the node over from the partner.
        Taken = "taken",
    }
}

vocabulary! {
    /// What a client schedule runs (TSM ACTION).
    ScheduleAction ("action") {
        /// `tandem incremental OBJECTS...`.
        #[default]
        Incremental = "incremental",
        /// `tandem selective OBJECTS...`.
        Selective = "selective",
        /// `tandem backup db KIND PATH...`, objects written `KIND:PATH`
        /// (`sqlite:/srv/app.db`).
        DbBackup = "db-backup",
        /// A shell command line (the one object) on the client.
        Command = "command",
    }
}

impl SwitchStep {
    /// A switch on its old primary that has started and not ended: the node
    /// takes no new sessions.
    #[must_use]
    pub fn is_unfinished(self) -> bool {
        matches!(
            self,
            SwitchStep::Draining | SwitchStep::Frozen | SwitchStep::HandingOver
        )
    }

    /// No write of the node may be stored: the final replication has begun
    /// or is over.
    #[must_use]
    pub fn blocks_writes(self) -> bool {
        matches!(self, SwitchStep::Frozen | SwitchStep::HandingOver)
    }
}

impl From<ReplRule> for tandem_replication::ReplicationRule {
    fn from(rule: ReplRule) -> Self {
        match rule {
            ReplRule::AllData => tandem_replication::ReplicationRule::AllData,
            ReplRule::ActiveData => tandem_replication::ReplicationRule::ActiveData,
            ReplRule::None => tandem_replication::ReplicationRule::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_strangers_are_named() {
        for rule in ReplRule::ALL {
            assert_eq!(rule.as_str().parse::<ReplRule>(), Ok(*rule));
        }
        assert_eq!("receive".parse::<ReplMode>(), Ok(ReplMode::Receive));
        let err = "ALL_DATA".parse::<ReplRule>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "replrule \"ALL_DATA\" is not one of: all_data, active_data, none"
        );
    }

    #[test]
    fn the_catalog_refuses_a_word_it_should_never_hold() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let stored: RunState = db
            .query_row("SELECT ?1", [RunState::Completed], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, RunState::Completed);
        let err = db
            .query_row("SELECT 'finished'", [], |r| r.get::<_, RunState>(0))
            .unwrap_err();
        assert!(
            err.to_string().contains("\"finished\" is not one of"),
            "{err}"
        );
    }
}
