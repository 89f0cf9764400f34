//! Where a command's messages go: stderr for the user, the error log for
//! warnings and errors, and the worst severity seen for the exit code.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::ExitStatus;
use crate::output::error_log::ErrorLog;
use crate::output::messages::{Msg, Severity};

/// A ticking `{spinner} {elapsed} {msg}` line on stderr, drawn only when
/// stderr is a terminal: the one progress style of both consoles.
#[must_use]
pub fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Output settings and the message sink of one command.
#[derive(Debug)]
pub struct Console {
    log: Option<ErrorLog>,
    /// Print only warnings and errors.
    pub quiet: bool,
    /// Print a JSON document on stdout instead of tables.
    pub json: bool,
    worst: Mutex<ExitStatus>,
    /// The progress line on the terminal, if one is shown: messages are
    /// printed above it, never glued to it.
    progress: Mutex<Option<ProgressBar>>,
}

impl Console {
    /// A console writing warnings and errors to `log`, if given.
    pub fn new(log: Option<ErrorLog>, quiet: bool, json: bool) -> Self {
        Console {
            log,
            quiet,
            json,
            worst: Mutex::new(ExitStatus::Success),
            progress: Mutex::new(None),
        }
    }

    /// Starts a progress line (`{elapsed} {msg}`) on stderr, hidden with
    /// `--quiet`, `--json` or when stderr is not a terminal. Messages
    /// reported while it runs are printed above it. End it with
    /// [`Self::end_progress`].
    pub fn start_progress(&self) -> ProgressBar {
        let bar = if self.quiet || self.json {
            ProgressBar::hidden()
        } else {
            spinner()
        };
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        bar
    }

    /// Clears the progress line, if any.
    pub fn end_progress(&self) {
        if let Some(bar) = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            bar.finish_and_clear();
        }
    }

    /// Reports a message. `status` is the exit code it implies (e.g. a skipped
    /// file is [`ExitStatus::Skipped`]).
    pub fn report(&self, msg: &Msg, status: ExitStatus) {
        {
            let mut worst = self.worst.lock().unwrap_or_else(|e| e.into_inner());
            *worst = (*worst).max(status);
        }
        if msg.severity() != Severity::Info || !self.quiet {
            self.show(msg);
        }
        if msg.severity() != Severity::Info {
            self.log_only(msg);
        }
    }

    /// Prints a message on stderr: `ID text`, or with `--json` one JSON
    /// object per line, `{"error"|"warning"|"info": {"id", "message"}}`.
    fn show(&self, msg: &Msg) {
        let line = if self.json {
            msg.to_json().to_string()
        } else {
            msg.to_string()
        };
        let bar = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Reports an audit event (failover, failback): on the console and in the
    /// error log whatever its severity, since auditors read the log.
    pub fn audit(&self, msg: &Msg) {
        if !self.quiet {
            self.show(msg);
        }
        self.log_only(msg);
    }

    /// Writes a message to the error log only.
    pub fn log_only(&self, msg: &Msg) {
        if let Some(log) = &self.log
            && let Err(e) = log.append(msg)
        {
            eprintln!(
                "TDM1008W cannot write the error log {}: {e}",
                log.path().display()
            );
        }
    }

    /// The worst status reported so far.
    pub fn status(&self) -> ExitStatus {
        *self.worst.lock().unwrap_or_else(|e| e.into_inner())
    }
}
