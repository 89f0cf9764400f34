//! The logon decision (SPEC 3.3): which server to try next and what to log.
//! Pure: no I/O, no clock. [`crate::logon::session`] tries what [`Logon::next`] says,
//! reports what it saw with [`Logon::observe`], and logs the messages returned.
//!
//! Rules:
//! - Every logon tries the primary first, unless failover is forced.
//! - Only "nobody answered" (refused, timed out, transport failure) leads to the
//!   secondary. An answer that says no (wrong password, locked node) is final:
//!   the secondary holds the same credentials and would say no too.
//! - The secondary must present the certificate whose fingerprint the primary
//!   pushed (checked in the TLS handshake) and the GUID stored in the options
//!   file before any credential is sent to it.
//! - A server that answers with the wrong certificate is not "unreachable":
//!   a primary that fails its pin is a final refusal, never a failover.
//! - The first logon that reaches the primary after a failover session logs
//!   the failback, once.

use tandem_proto::ServerGuid;

use crate::output::messages::Msg;

/// Where a session ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMode {
    /// Logged on to the primary.
    Normal,
    /// Logged on to the replication server: read-only.
    Failover,
    /// Working on the local vault alone: no server took the session.
    Vault,
}

impl SessionMode {
    /// The name shown by `query session`.
    pub fn name(self) -> &'static str {
        match self {
            SessionMode::Normal => "normal",
            SessionMode::Failover => "failover",
            SessionMode::Vault => "vault",
        }
    }
}

/// A server the client may log on to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRef {
    /// Name.
    pub name: String,
    /// URL.
    pub address: String,
    /// Expected GUID (the secondary's, from the options file; none for the
    /// primary, whose certificate pin is what identifies it).
    pub guid: Option<ServerGuid>,
}

/// What the logon decision starts from.
#[derive(Debug, Clone)]
pub struct LogonFacts {
    /// The primary.
    pub primary: ServerRef,
    /// `force_failover` (option or flag).
    pub force_failover: bool,
    /// `use_replication_failover`.
    pub failover_enabled: bool,
    /// The replication server stored in the options file, if any.
    pub secondary: Option<ServerRef>,
    /// The mode of the previous session (from the client's state).
    pub last_mode: SessionMode,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Log on to the primary.
    TryPrimary,
    /// Check the secondary's GUID, then log on to it.
    TrySecondary(ServerRef),
    /// Finished.
    Done(Result<SessionMode, Refusal>),
}

/// What a try saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The server answered; for the secondary, with this GUID.
    Answered {
        /// The GUID it presented, as it sent it (checked here, so a malformed
        /// one is refused and shown as it came).
        guid: String,
    },
    /// Nobody answered in time.
    Unreachable(String),
    /// The server answered no (credentials, lock).
    Rejected(String),
    /// The server is not the one pinned (certificate mismatch, failed
    /// handshake): nothing was sent to it.
    Untrusted(String),
    /// The server proved who it is but stayed busy for all of
    /// `busy_wait_seconds`: it is up, so this is never a reason to fail over.
    Busy(String),
}

/// Why no session could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The primary is unreachable and failover cannot help; `why` says why.
    PrimaryUnreachable {
        /// The transport cause.
        cause: String,
        /// Why no failover was attempted.
        why: String,
    },
    /// A server answered no.
    Rejected {
        /// Which server: the primary, or the secondary when it was tried.
        server: String,
        /// What it said.
        message: String,
    },
    /// The secondary presented another GUID than the options file holds.
    GuidMismatch {
        /// Stored GUID.
        expected: ServerGuid,
        /// Presented GUID.
        found: String,
    },
    /// The secondary is unreachable as well.
    SecondaryUnreachable(String),
    /// Failover is forced but cannot happen; the primary was not tried, so
    /// nothing is said about it.
    ForcedFailoverImpossible(String),
    /// The primary's certificate is not the pinned one.
    PrimaryUntrusted(String),
    /// The secondary's certificate is not the pushed one.
    SecondaryUntrusted(String),
    /// The primary answered but stayed busy: no failover.
    Busy {
        /// The primary.
        server: ServerRef,
        /// What it said last.
        cause: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Primary,
    Secondary,
    Finished,
}

/// One logon decision.
#[derive(Debug, Clone)]
pub struct Logon {
    facts: LogonFacts,
    phase: Phase,
    outcome: Option<Result<SessionMode, Refusal>>,
}

impl Logon {
    /// Starts a decision. A forced failover without a usable replication
    /// server is refused at once.
    pub fn new(facts: LogonFacts) -> Self {
        let mut logon = Logon {
            facts,
            phase: Phase::Primary,
            outcome: None,
        };
        if logon.facts.force_failover {
            match (&logon.facts.secondary, logon.facts.failover_enabled) {
                (Some(_), true) => logon.phase = Phase::Secondary,
                (None, _) => logon.finish(Err(Refusal::ForcedFailoverImpossible(
                    "no replication server is stored in the options file yet (it arrives after the first backup and replication)".into(),
                ))),
                (Some(_), false) => logon.finish(Err(Refusal::ForcedFailoverImpossible(
                    "use_replication_failover is false".into(),
                ))),
            }
        }
        logon
    }

    fn finish(&mut self, outcome: Result<SessionMode, Refusal>) {
        self.phase = Phase::Finished;
        self.outcome = Some(outcome);
    }

    /// What to try next.
    pub fn next(&self) -> Next {
        match self.phase {
            Phase::Primary => Next::TryPrimary,
            Phase::Secondary => match &self.facts.secondary {
                Some(s) => Next::TrySecondary(s.clone()),
                None => Next::Done(Err(Refusal::SecondaryUnreachable(
                    "no replication server".into(),
                ))),
            },
            Phase::Finished => Next::Done(
                self.outcome
                    .clone()
                    .unwrap_or_else(|| Err(Refusal::SecondaryUnreachable("no outcome".into()))),
            ),
        }
    }

    /// Takes what the last try saw; returns the messages to log, in order.
    pub fn observe(&mut self, seen: Seen) -> Vec<Msg> {
        let p = self.facts.primary.clone();
        match (self.phase, seen) {
            (Phase::Primary, Seen::Answered { .. }) => {
                self.finish(Ok(SessionMode::Normal));
                if self.facts.last_mode == SessionMode::Failover {
                    vec![Msg::failback(&p.name, &p.address)]
                } else {
                    Vec::new()
                }
            }
            (Phase::Primary, Seen::Rejected(message)) => {
                self.finish(Err(Refusal::Rejected {
                    server: p.name,
                    message,
                }));
                Vec::new()
            }
            (Phase::Primary, Seen::Untrusted(why)) => {
                self.finish(Err(Refusal::PrimaryUntrusted(why)));
                Vec::new()
            }
            (Phase::Secondary, Seen::Untrusted(why)) => {
                // Reported once, as the command's error (TDM2113E).
                self.finish(Err(Refusal::SecondaryUntrusted(why)));
                Vec::new()
            }
            (Phase::Primary, Seen::Unreachable(cause)) => {
                let why = if !self.facts.failover_enabled {
                    Some("use_replication_failover is false")
                } else if self.facts.secondary.is_none() {
                    Some(
                        "no replication server is stored in the options file yet (it arrives after the first backup and replication)",
                    )
                } else {
                    None
                };
                match (why, &self.facts.secondary) {
                    (None, Some(s)) => {
                        let msgs = vec![
                            Msg::primary_failed(&p.name, &p.address, &cause),
                            Msg::trying_secondary(&s.name, &s.address),
                        ];
                        self.phase = Phase::Secondary;
                        msgs
                    }
                    (why, _) => {
                        self.finish(Err(Refusal::PrimaryUnreachable {
                            cause,
                            why: why.unwrap_or("no replication server").to_string(),
                        }));
                        Vec::new()
                    }
                }
            }
            (Phase::Secondary, Seen::Answered { guid }) => {
                let Some(s) = self.facts.secondary.clone() else {
                    return Vec::new();
                };
                let presented = guid.parse::<ServerGuid>().ok();
                match s.guid {
                    Some(expected) if presented == Some(expected) => {
                        self.finish(Ok(SessionMode::Failover));
                    }
                    Some(expected) => self.finish(Err(Refusal::GuidMismatch {
                        expected,
                        found: guid,
                    })),
                    None => self.finish(Err(Refusal::SecondaryUntrusted(
                        "no GUID is stored for it in the options file".into(),
                    ))),
                }
                // TDM2108I is logged once the logon succeeded; a refusal is
                // reported once, as the command's error (TDM2112E).
                Vec::new()
            }
            (Phase::Secondary, Seen::Unreachable(cause)) => {
                // Reported once, as the command's error (TDM2114E).
                self.finish(Err(Refusal::SecondaryUnreachable(cause)));
                Vec::new()
            }
            (Phase::Primary, Seen::Busy(cause)) => {
                self.finish(Err(Refusal::Busy { server: p, cause }));
                Vec::new()
            }
            (Phase::Secondary, Seen::Busy(cause)) => {
                // The failover is under way: reported like a secondary that
                // does not answer (TDM2114E).
                self.finish(Err(Refusal::SecondaryUnreachable(format!(
                    "it stayed busy: {cause}"
                ))));
                Vec::new()
            }
            (Phase::Secondary, Seen::Rejected(message)) => {
                let server = self
                    .facts
                    .secondary
                    .as_ref()
                    .map_or(p.name, |s| s.name.clone());
                self.finish(Err(Refusal::Rejected { server, message }));
                Vec::new()
            }
            (Phase::Finished, _) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECONDARY_GUID: &str = "91.0f.ef.90.5c.cc.11.e1.ae.34.08.00.00.00.00.02";

    fn facts() -> LogonFacts {
        LogonFacts {
            primary: ServerRef {
                name: "PRIMARY".into(),
                address: "http://127.0.0.1:1500".into(),
                guid: None,
            },
            force_failover: false,
            failover_enabled: true,
            secondary: Some(ServerRef {
                name: "SECONDARY".into(),
                address: "http://127.0.0.1:1501".into(),
                guid: Some(SECONDARY_GUID.parse().unwrap()),
            }),
            last_mode: SessionMode::Normal,
        }
    }

    fn ids(msgs: &[Msg]) -> Vec<&'static str> {
        msgs.iter().map(|m| m.id).collect()
    }

    #[test]
    fn primary_up_is_a_normal_session_with_nothing_logged() {
        let mut l = Logon::new(facts());
        assert_eq!(l.next(), Next::TryPrimary);
        assert!(l.observe(Seen::Answered { guid: "x".into() }).is_empty());
        assert_eq!(l.next(), Next::Done(Ok(SessionMode::Normal)));
    }

    #[test]
    fn refused_or_silent_primary_fails_over_with_2106_and_2107() {
        for cause in ["connection refused", "no answer within 1500 ms"] {
            let mut l = Logon::new(facts());
            let msgs = l.observe(Seen::Unreachable(cause.into()));
            assert_eq!(ids(&msgs), ["TDM2106I", "TDM2107I"]);
            assert!(msgs[0].text.contains(cause));
            assert!(matches!(l.next(), Next::TrySecondary(_)));
            assert!(
                l.observe(Seen::Answered {
                    guid: SECONDARY_GUID.to_ascii_uppercase()
                })
                .is_empty()
            );
            assert_eq!(l.next(), Next::Done(Ok(SessionMode::Failover)));
        }
    }

    #[test]
    fn no_block_or_failover_disabled_means_a_clear_refusal() {
        let mut f = facts();
        f.secondary = None;
        let mut l = Logon::new(f);
        assert!(l.observe(Seen::Unreachable("refused".into())).is_empty());
        assert!(
            matches!(l.next(), Next::Done(Err(Refusal::PrimaryUnreachable { ref why, .. })) if why.contains("no replication server"))
        );
        let mut f = facts();
        f.failover_enabled = false;
        let mut l = Logon::new(f);
        l.observe(Seen::Unreachable("refused".into()));
        assert!(
            matches!(l.next(), Next::Done(Err(Refusal::PrimaryUnreachable { ref why, .. })) if why.contains("use_replication_failover"))
        );
    }

    #[test]
    fn a_wrong_password_never_fails_over() {
        let mut l = Logon::new(facts());
        assert!(
            l.observe(Seen::Rejected("wrong password".into()))
                .is_empty()
        );
        assert_eq!(
            l.next(),
            Next::Done(Err(Refusal::Rejected {
                server: "PRIMARY".into(),
                message: "wrong password".into()
            }))
        );
    }

    #[test]
    fn a_secondary_that_says_no_is_named_as_the_one_that_refused() {
        let mut l = Logon::new(facts());
        l.observe(Seen::Unreachable("refused".into()));
        assert!(l.observe(Seen::Rejected("node locked".into())).is_empty());
        assert_eq!(
            l.next(),
            Next::Done(Err(Refusal::Rejected {
                server: "SECONDARY".into(),
                message: "node locked".into()
            }))
        );
    }

    #[test]
    fn an_untrusted_primary_never_fails_over_and_an_untrusted_secondary_is_refused() {
        let mut l = Logon::new(facts());
        assert!(l.observe(Seen::Untrusted("pin mismatch".into())).is_empty());
        assert_eq!(
            l.next(),
            Next::Done(Err(Refusal::PrimaryUntrusted("pin mismatch".into())))
        );
        let mut l = Logon::new(facts());
        l.observe(Seen::Unreachable("refused".into()));
        assert!(l.observe(Seen::Untrusted("pin mismatch".into())).is_empty());
        assert!(matches!(
            l.next(),
            Next::Done(Err(Refusal::SecondaryUntrusted(_)))
        ));
    }

    #[test]
    fn forced_failover_skips_the_primary() {
        let mut f = facts();
        f.force_failover = true;
        let l = Logon::new(f.clone());
        assert!(matches!(l.next(), Next::TrySecondary(_)));
        f.secondary = None;
        assert!(matches!(
            Logon::new(f.clone()).next(),
            Next::Done(Err(Refusal::ForcedFailoverImpossible(ref why))) if why.contains("no replication server")
        ));
        f.secondary = facts().secondary;
        f.failover_enabled = false;
        assert!(matches!(
            Logon::new(f).next(),
            Next::Done(Err(Refusal::ForcedFailoverImpossible(ref why))) if why.contains("use_replication_failover")
        ));
    }

    #[test]
    fn a_guid_mismatch_is_refused() {
        for presented in [
            "91.0f.ef.90.5c.cc.11.e1.ae.34.08.00.00.00.00.03",
            "cc.dd",
            "",
        ] {
            let mut l = Logon::new(facts());
            l.observe(Seen::Unreachable("refused".into()));
            assert!(
                l.observe(Seen::Answered {
                    guid: presented.into()
                })
                .is_empty()
            );
            assert_eq!(
                l.next(),
                Next::Done(Err(Refusal::GuidMismatch {
                    expected: SECONDARY_GUID.parse().unwrap(),
                    found: presented.into()
                }))
            );
        }
    }

    #[test]
    fn secondary_down_too_is_reported() {
        let mut l = Logon::new(facts());
        l.observe(Seen::Unreachable("refused".into()));
        assert!(
            l.observe(Seen::Unreachable("refused as well".into()))
                .is_empty()
        );
        assert!(matches!(
            l.next(),
            Next::Done(Err(Refusal::SecondaryUnreachable(_)))
        ));
    }

    #[test]
    fn failback_is_logged_once_after_a_failover_session() {
        let mut f = facts();
        f.last_mode = SessionMode::Failover;
        let mut l = Logon::new(f);
        assert_eq!(
            ids(&l.observe(Seen::Answered { guid: "x".into() })),
            ["TDM2109I"]
        );
        let mut l = Logon::new(facts());
        assert!(l.observe(Seen::Answered { guid: "x".into() }).is_empty());
    }

    #[test]
    fn a_busy_primary_is_no_reason_to_fail_over() {
        let mut l = Logon::new(facts());
        assert!(l.observe(Seen::Busy("too many logons".into())).is_empty());
        match l.next() {
            Next::Done(Err(Refusal::Busy { server, cause })) => {
                assert_eq!(server.name, facts().primary.name);
                assert_eq!(cause, "too many logons");
            }
            other => panic!("a busy primary ends the decision without failover: {other:?}"),
        }
    }
}
