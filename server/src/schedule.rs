//! Client schedules (TSM's central scheduler): what a schedule runs, its
//! windows, and what `query event` says about each expected run. Pure: the
//! catalog stores schedules and reported outcomes, this module does the
//! arithmetic, so it is tested without a server.

pub use crate::model::ScheduleAction;
use crate::model::Vocabulary;

/// The longest window and period accepted: a year.
pub const MAX_SPAN_SECS: u64 = 366 * 24 * 3600;

/// The most objects a schedule may name, and the longest object or command.
pub const MAX_OBJECTS: usize = 64;
/// See [`MAX_OBJECTS`].
pub const MAX_TEXT_BYTES: usize = 4096;

/// The most expected runs one `query event` lists.
pub const MAX_EVENTS: usize = 10_000;

const NS: i64 = 1_000_000_000;

/// A client schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Name, upper-case.
    pub name: String,
    /// What it runs.
    pub action: ScheduleAction,
    /// Paths for a backup; the command line for a command.
    pub objects: Vec<String>,
    /// The first window's start, Unix ns.
    pub start_ns: i64,
    /// Seconds between windows; 0: one window only.
    pub period_secs: u64,
    /// Seconds each window lasts.
    pub duration_secs: u64,
    /// Run before the action; a non-zero exit cancels the run.
    pub pre_command: String,
    /// Run after the action, whatever its outcome.
    pub post_command: String,
}

/// A run's window: it may start from `start_ns` until `end_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Opens, Unix ns.
    pub start_ns: i64,
    /// Closes, Unix ns.
    pub end_ns: i64,
}

/// The longest schedule name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Checks a schedule name: 1 to [`MAX_NAME_BYTES`] letters, digits, `_`,
/// `-` or `.`. Applied to names an administrator defines and to the names
/// clients send back, so neither can carry control characters or
/// megabytes into logs and error messages.
///
/// # Errors
/// A message naming the offending name (cut to a printable length).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        let shown: String = name.chars().take(MAX_NAME_BYTES + 1).collect();
        let cut = if shown.len() < name.len() { "..." } else { "" };
        return Err(format!(
            "schedule name {shown:?}{cut} must be 1 to {MAX_NAME_BYTES} letters, digits, '_', '-' or '.'"
        ));
    }
    Ok(())
}

impl Schedule {
    /// Checks what an administrator gave, naming the first thing wrong.
    ///
    /// # Errors
    /// A message for the administrator.
    pub fn check(&self) -> Result<(), String> {
        check_name(&self.name)?;
        if self.objects.is_empty() {
            return Err(match self.action {
                ScheduleAction::Command => {
                    "a command schedule needs the command line in --objects".into()
                }
                _ => "a backup schedule needs the paths to back up in --objects".into(),
            });
        }
        if self.action == ScheduleAction::Command && self.objects.len() != 1 {
            return Err("a command schedule takes one --objects: the whole command line".into());
        }
        if self.objects.len() > MAX_OBJECTS {
            return Err(format!("at most {MAX_OBJECTS} --objects"));
        }
        let texts = self
            .objects
            .iter()
            .chain([&self.pre_command, &self.post_command]);
        for text in texts {
            if text.len() > MAX_TEXT_BYTES || text.contains('\0') {
                return Err(format!(
                    "an object or command is longer than {MAX_TEXT_BYTES} bytes or holds a NUL byte"
                ));
            }
        }
        if self.action == ScheduleAction::DbBackup
            && let Some(bad) = self.objects.iter().find(|o| {
                !DB_KINDS
                    .iter()
                    .any(|k| o.strip_prefix(k).is_some_and(|p| p.starts_with(":/")))
            })
        {
            return Err(format!(
                "object {bad:?} is not a database as KIND:/absolute/path (kinds: {})",
                DB_KINDS.join(", ")
            ));
        }
        if self.action == ScheduleAction::DbBackup {
            let kind_of = |o: &String| o.split_once(':').map(|(k, _)| k.to_string());
            let first = self.objects.first().and_then(kind_of);
            if self.objects.iter().any(|o| kind_of(o) != first) {
                return Err(
                    "a db-backup schedule backs up databases of one kind; define one schedule per kind"
                        .into(),
                );
            }
            if first.as_deref() == Some("postgres") && self.objects.len() != 1 {
                return Err(
                    "a postgres db-backup schedule names one cluster; define one schedule per cluster"
                        .into(),
                );
            }
        }
        if !matches!(
            self.action,
            ScheduleAction::Command | ScheduleAction::DbBackup
        ) && let Some(relative) = self.objects.iter().find(|o| !o.starts_with('/'))
        {
            return Err(format!(
                "object {relative:?} is not an absolute path; a backup schedule names absolute paths"
            ));
        }
        if self.duration_secs == 0 || self.duration_secs > MAX_SPAN_SECS {
            return Err(format!(
                "--duration {} s: give 1 s to 366 days",
                self.duration_secs
            ));
        }
        if self.period_secs > MAX_SPAN_SECS {
            return Err(format!("--period {} s: at most 366 days", self.period_secs));
        }
        if self.period_secs != 0 && self.duration_secs > self.period_secs {
            return Err(format!(
                "--duration {} s is longer than --period {} s: windows would overlap",
                self.duration_secs, self.period_secs
            ));
        }
        if self.start_ns <= 0 {
            return Err("--start is before 1970".into());
        }
        Ok(())
    }

    fn window(&self, k: i64) -> Window {
        let start_ns = self
            .start_ns
            .saturating_add(k.saturating_mul(self.period_ns()));
        Window {
            start_ns,
            end_ns: start_ns.saturating_add(secs_ns(self.duration_secs)),
        }
    }

    fn period_ns(&self) -> i64 {
        secs_ns(self.period_secs)
    }

    /// The first window that has not closed at `now_ns`; `None` when the
    /// only window of a one-time schedule has.
    #[must_use]
    pub fn next_window(&self, now_ns: i64) -> Option<Window> {
        let first = self.window(0);
        if now_ns < first.end_ns {
            return Some(first);
        }
        if self.period_secs == 0 {
            return None;
        }
        // The window k with start + k*period + duration > now.
        let k = (now_ns - first.end_ns) / self.period_ns() + 1;
        let w = self.window(k);
        Some(if now_ns < self.window(k - 1).end_ns {
            self.window(k - 1)
        } else {
            w
        })
    }

    /// Whether `start_ns` is the start of one of this schedule's windows.
    #[must_use]
    pub fn is_window_start(&self, start_ns: i64) -> bool {
        let Some(offset) = start_ns.checked_sub(self.start_ns).filter(|o| *o >= 0) else {
            return false;
        };
        if self.period_secs == 0 {
            return offset == 0;
        }
        offset % self.period_ns() == 0
    }

    /// The windows starting in `[begin_ns, end_ns]`, at most `limit`.
    #[must_use]
    pub fn windows_between(&self, begin_ns: i64, end_ns: i64, limit: usize) -> Vec<Window> {
        let mut out = Vec::new();
        if end_ns < begin_ns || end_ns < self.start_ns {
            return out;
        }
        let first_k = if begin_ns <= self.start_ns || self.period_secs == 0 {
            0
        } else {
            begin_ns
                .saturating_sub(self.start_ns)
                .saturating_add(self.period_ns() - 1)
                / self.period_ns()
        };
        let mut k = first_k;
        while out.len() < limit {
            let w = self.window(k);
            if w.start_ns > end_ns || (self.period_secs == 0 && k > 0) {
                break;
            }
            if w.start_ns >= begin_ns {
                out.push(w);
            }
            k += 1;
        }
        out
    }
}

fn secs_ns(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX / NS)
        .saturating_mul(NS)
}

/// What a client reported of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    /// "started", "completed" or "failed".
    pub state: String,
    /// The action's exit code (or the pre-command's that stopped it).
    pub exit_code: i32,
    /// What went wrong, or a summary.
    pub message: String,
    /// Started and ended on the client, Unix ns.
    pub started_ns: i64,
    /// See `started_ns`.
    pub ended_ns: i64,
}

/// One expected run of a schedule by a node, as `query event` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedRun {
    /// The schedule.
    pub schedule: String,
    /// The node.
    pub node: String,
    /// Its window.
    pub window: Window,
    /// See [`event_state`].
    pub state: &'static str,
    /// What the client reported, if anything.
    pub reported: Option<Reported>,
}

/// How an expected run stands for `query event` at `now_ns`: what the
/// client reported, else `future`, `pending` (window open) or `missed`.
#[must_use]
pub fn event_state(window: Window, reported: Option<&Reported>, now_ns: i64) -> &'static str {
    match reported.map(|r| r.state.as_str()) {
        Some("completed") => "completed",
        Some("failed") => "failed",
        Some(_) => "in progress",
        None if now_ns < window.start_ns => "future",
        None if now_ns < window.end_ns => "pending",
        None => "missed",
    }
}

/// Parses a span as `--period` and `--duration` take it: a number with
/// `s`, `m`, `h`, `d` or `w` (seconds, minutes, hours, days, weeks), or
/// `once` / `0` for no period.
///
/// # Errors
/// A message naming the value.
pub fn parse_span(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("once") || t == "0" {
        return Ok(0);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a span such as 30s, 15m, 1h, 1d or 1w"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h, d or w")),
    };
    n.checked_mul(unit_secs)
        .filter(|s| *s <= MAX_SPAN_SECS)
        .ok_or_else(|| format!("{text:?} is longer than 366 days"))
}

/// The database kinds a `db-backup` schedule may name (the client's agents).
pub const DB_KINDS: [&str; 2] = ["sqlite", "postgres"];

impl ScheduleAction {
    /// Every action's word, for messages.
    #[must_use]
    pub fn all_words() -> String {
        Self::words()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(period: u64, duration: u64) -> Schedule {
        Schedule {
            name: "DAILY".into(),
            action: ScheduleAction::Incremental,
            objects: vec!["/data".into()],
            start_ns: 1_000 * NS,
            period_secs: period,
            duration_secs: duration,
            pre_command: String::new(),
            post_command: String::new(),
        }
    }

    #[test]
    fn the_next_window_is_the_open_one_or_the_one_after() {
        let s = every(100, 10);
        let w = |start: i64| Window {
            start_ns: start * NS,
            end_ns: (start + 10) * NS,
        };
        assert_eq!(s.next_window(0), Some(w(1000)));
        assert_eq!(s.next_window(1005 * NS), Some(w(1000)), "open now");
        assert_eq!(s.next_window(1010 * NS), Some(w(1100)), "closed at its end");
        assert_eq!(s.next_window(1099 * NS), Some(w(1100)));
        assert_eq!(s.next_window(1_000_005 * NS), Some(w(1_000_000)));
        let once = every(0, 10);
        assert_eq!(once.next_window(1009 * NS), Some(w(1000)));
        assert_eq!(once.next_window(1010 * NS), None);
        assert!(s.is_window_start(1200 * NS));
        assert!(!s.is_window_start(1201 * NS));
        assert!(!s.is_window_start(900 * NS));
        assert!(once.is_window_start(1000 * NS) && !once.is_window_start(1100 * NS));
    }

    #[test]
    fn windows_between_are_bounded_and_in_order() {
        let s = every(100, 10);
        let got = s.windows_between(1050 * NS, 1300 * NS, 100);
        let starts: Vec<i64> = got.iter().map(|w| w.start_ns / NS).collect();
        assert_eq!(starts, [1100, 1200, 1300]);
        assert_eq!(s.windows_between(0, 1_000_000 * NS, 5).len(), 5);
        assert!(s.windows_between(2000 * NS, 1000 * NS, 5).is_empty());
        assert_eq!(every(0, 10).windows_between(0, 5000 * NS, 5).len(), 1);
    }

    #[test]
    fn event_states_follow_the_report_and_the_clock() {
        let w = Window {
            start_ns: 100,
            end_ns: 200,
        };
        assert_eq!(event_state(w, None, 50), "future");
        assert_eq!(event_state(w, None, 150), "pending");
        assert_eq!(event_state(w, None, 200), "missed");
        let mut r = Reported {
            state: "started".into(),
            exit_code: 0,
            message: String::new(),
            started_ns: 120,
            ended_ns: 0,
        };
        assert_eq!(event_state(w, Some(&r), 500), "in progress");
        r.state = "failed".into();
        assert_eq!(event_state(w, Some(&r), 500), "failed");
    }

    #[test]
    fn spans_and_bad_schedules_are_named() {
        assert_eq!(parse_span("30s"), Ok(30));
        assert_eq!(parse_span("1h"), Ok(3600));
        assert_eq!(parse_span("2w"), Ok(14 * 86_400));
        assert_eq!(parse_span("once"), Ok(0));
        assert!(parse_span("1y").is_err());
        assert!(parse_span("h").is_err());
        assert!(parse_span("9999999999999d").is_err());
        let mut s = every(60, 120);
        assert!(s.check().unwrap_err().contains("overlap"));
        s.duration_secs = 10;
        assert_eq!(s.check(), Ok(()));
        s.objects = vec!["relative/path".into()];
        assert!(s.check().unwrap_err().contains("absolute"));
        s.name = "bad name".into();
        assert!(s.check().is_err());
    }
}
