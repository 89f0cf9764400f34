//! Waiting for a server that is busy, not down.
//!
//! A server that completed the TLS handshake has proved who it is: it
//! answered. When it then says it is busy (too many logons being checked at
//! once) or is slow to answer the logon (its connection places are all taken
//! and this one waits in line), the client waits and tries again, up to
//! `busy_wait_seconds`. Treating it as unreachable would fail over from a
//! primary that is only loaded, and tell the auditors it was down.
//!
//! Only an authenticated answer counts: a connection refused, reset or timed
//! out before the handshake completes is still "unreachable", so nobody
//! between client and server can hold a client back from failing over by
//! claiming the server is busy.

use std::time::{Duration, Instant};

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;

use crate::logon::failover::ServerRef;
use crate::output::console::Console;
use crate::output::messages::Msg;

/// At most this many rounds of tries, whatever `busy_wait_seconds` says: with
/// pauses of at least a quarter of a second, more than a day's worth.
pub(crate) const MAX_BUSY_ROUNDS: u32 = 100_000;

/// The wait of one logon decision, bounded by `busy_wait_seconds` however
/// many servers it tries: said once per server (TDM1071W, in `dsierror.log`
/// too), then a growing pause before each new round until the time is up.
pub(crate) struct BusyWait {
    deadline: Instant,
    seconds: u64,
    /// The server TDM1071W was last said about (said once per server).
    said_about: Option<String>,
    pauses: ExponentialBackoff,
}

impl BusyWait {
    pub(crate) fn new(seconds: u64) -> Self {
        BusyWait {
            deadline: Instant::now() + Duration::from_secs(seconds),
            seconds,
            said_about: None,
            pauses: ExponentialBackoff {
                initial_interval: Duration::from_millis(250),
                max_interval: Duration::from_secs(4),
                multiplier: 2.0,
                randomization_factor: 0.3,
                max_elapsed_time: None,
                ..ExponentialBackoff::default()
            },
        }
    }

    /// The configured wait, in seconds.
    pub(crate) fn seconds(&self) -> u64 {
        self.seconds
    }

    /// How long a logon call on a connection whose handshake completed may
    /// wait for its answer: until the end of the busy wait, and never less
    /// than `floor` (the connect budget's share of the try).
    pub(crate) fn answer_timeout(&self, floor: Duration) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(floor)
    }

    /// Pauses before the next round and returns `true`, or returns `false`
    /// at once when the time is up. Says once per server that it waits.
    pub(crate) async fn pause(
        &mut self,
        console: &Console,
        server: &ServerRef,
        cause: &str,
    ) -> bool {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if self.said_about.as_deref() != Some(server.address.as_str()) {
            self.said_about = Some(server.address.clone());
            // A warning in the log, but not a warning exit: nothing was lost
            // if the command then goes through.
            console.report(
                &Msg::server_busy(&server.name, &server.address, cause, self.seconds),
                crate::error::ExitStatus::Success,
            );
        }
        let pause = self.pauses.next_backoff().unwrap_or(Duration::from_secs(4));
        tokio::time::sleep(pause.min(left)).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary() -> ServerRef {
        ServerRef {
            name: "P".into(),
            address: "https://127.0.0.1:1".into(),
            guid: None,
        }
    }

    #[tokio::test]
    async fn no_wait_means_the_first_busy_answer_is_final() {
        let mut wait = BusyWait::new(0);
        let (console, server) = (Console::new(None, true, false), primary());
        assert!(!wait.pause(&console, &server, "busy").await);
        assert_eq!(
            wait.answer_timeout(Duration::from_millis(700)),
            Duration::from_millis(700),
            "with no busy wait the answer gets the connect budget, as before"
        );
    }

    #[tokio::test]
    async fn a_busy_server_gets_pauses_until_the_time_is_up() {
        let mut wait = BusyWait::new(1);
        let (console, server) = (Console::new(None, true, false), primary());
        assert!(wait.answer_timeout(Duration::ZERO) > Duration::from_millis(500));
        let started = Instant::now();
        let mut rounds = 0;
        while wait.pause(&console, &server, "busy").await {
            rounds += 1;
            assert!(rounds < 20, "the pauses grow: few rounds in a second");
        }
        assert!(rounds >= 2, "{rounds} rounds");
        assert!(started.elapsed() >= Duration::from_secs(1));
    }
}
