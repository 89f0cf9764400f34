//! `tandem schedule` (TSM `dsmc schedule`): a long-running client that asks
//! the primary for the node's next scheduled run, sleeps until its window
//! opens, runs it, and reports the outcome for `query event`.
//!
//! - The schedule is asked of the primary only (no failover at that step);
//!   the last answer is kept in `state_dir/schedule.json`, so a run falls
//!   due even while the primary is down.
//! - A run is the pre-command (`sh -c`; a non-zero exit cancels the run),
//!   the action as a child `tandem` process with the same options file (so
//!   it logs on, fails over and is refused in failover exactly as the
//!   command typed by hand would be), then the post-command.
//! - Outcomes go to the primary; one that cannot be delivered waits in
//!   `state_dir/schedule-events.json` and is sent at the next successful
//!   logon, so a run during an outage is reported once the primary is back.
//! - Times are the server's: the client measures its clock's offset from
//!   the server's at each answer and sleeps by the server's time. A window
//!   that closed before the client could start is not run late; the server
//!   reports it as missed.
//!
//! Every wait is bounded (at most [`POLL`] before the schedule is asked
//! again), so a changed schedule is seen within five minutes. The server's
//! answer is checked like any input: only `incremental` and `selective` of
//! absolute paths, or a command on a client that allows commands
//! (`schedule_commands`); a pre-command may run only until its window
//! closes, a post-command an hour. One scheduler per state directory
//! (a lock file), so no window runs twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_proto::pb;

use crate::error::ClientError;
use crate::logon::session::Session;
use crate::options::ClientOptions;
use crate::output::console::Console;
use crate::output::messages::Msg;
use crate::output::timefmt;

/// The longest the scheduler sleeps before asking for the schedule again
/// (each ask is a logon).
pub const POLL: Duration = Duration::from_secs(300);

/// The longest a post-command may run before it is killed.
const POST_COMMAND_LIMIT: Duration = Duration::from_secs(3600);

/// Undelivered outcomes kept at most (the oldest go first).
const MAX_PENDING: usize = 1000;

/// The longest message sent with an outcome.
const MAX_MESSAGE_BYTES: usize = 1000;

/// One scheduled run as the server described it (cached between answers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The schedule.
    pub schedule: String,
    /// "incremental", "selective" or "command".
    pub action: String,
    /// Paths, or the command line.
    pub objects: Vec<String>,
    /// The window, server time (Unix ns).
    pub start_ns: i64,
    /// See `start_ns`.
    pub end_ns: i64,
    /// Run before; a non-zero exit cancels the run.
    pub pre_command: String,
    /// Run after.
    pub post_command: String,
    /// Seconds between windows (0: once): the windows after this one.
    #[serde(default)]
    pub period_secs: u64,
}

impl Run {
    /// The window that is open at `now_ns` or opens next, worked out from
    /// this one and the period (so a cached answer serves through an
    /// outage); `None` when the schedule has no window left.
    fn window_at(&self, now_ns: i64) -> Option<(i64, i64)> {
        if self.end_ns > now_ns {
            return Some((self.start_ns, self.end_ns));
        }
        if self.period_secs == 0 {
            return None;
        }
        let period = i64::try_from(self.period_secs)
            .unwrap_or(i64::MAX / 1_000_000_000)
            .saturating_mul(1_000_000_000);
        // Times come from the server: saturating, so none can overflow.
        let k = now_ns.saturating_sub(self.end_ns) / period + 1;
        let start = self.start_ns.saturating_add(k.saturating_mul(period));
        Some((
            start,
            start.saturating_add(self.end_ns.saturating_sub(self.start_ns)),
        ))
    }
}

impl From<pb::ScheduledRun> for Run {
    fn from(r: pb::ScheduledRun) -> Self {
        Run {
            schedule: r.schedule,
            action: r.action,
            objects: r.objects,
            start_ns: r.start_ns,
            end_ns: r.end_ns,
            pre_command: r.pre_command,
            post_command: r.post_command,
            period_secs: r.period_secs,
        }
    }
}

/// An outcome to report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The schedule and its window's start.
    pub schedule: String,
    /// See `schedule`.
    pub window_start_ns: i64,
    /// "completed" or "failed".
    pub state: String,
    /// The action's exit code (or the pre-command's that stopped it).
    pub exit_code: i32,
    /// What happened.
    pub message: String,
    /// Local start and end, converted to server time.
    pub started_ns: i64,
    /// See `started_ns`.
    pub ended_ns: i64,
}

/// What the scheduler keeps in the state directory.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    /// The last answer: the node's next runs.
    runs: Vec<Run>,
    /// The window start of the last run of each schedule, so a window is
    /// run once even across a restart of the scheduler.
    done: HashMap<String, i64>,
}

fn cache_path(state_dir: &Path) -> PathBuf {
    state_dir.join("schedule.json")
}

fn pending_path(state_dir: &Path) -> PathBuf {
    state_dir.join("schedule-events.json")
}

/// Longest record the scheduler reads back (its events are capped at
/// [`MAX_PENDING`], each message at a line).
const MAX_RECORD_BYTES: u64 = 16 << 20;

/// A record of the scheduler's in `state_dir`, or the default when there is
/// none. Read only from a directory no one else may write, never through a
/// link and never past [`MAX_RECORD_BYTES`]: the cached schedule says which
/// commands to run.
fn read_json<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> T {
    let trusted = path
        .parent()
        .is_some_and(|dir| crate::state_dir::ensure(dir).is_ok());
    if !trusted {
        return T::default();
    }
    tandem_os::atomic_file::read_small(path, MAX_RECORD_BYTES)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ClientError> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| ClientError::Internal(format!("encoding {}: {e}", path.display())))?;
    if let Some(dir) = path.parent() {
        crate::state_dir::ensure(dir)?;
    }
    tandem_os::atomic_file::replace(path, &bytes, Some(0o600)).map_err(|e| ClientError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

fn local_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Options for talking to the primary only: the scheduler's own calls do
/// not fail over (the cached schedule covers an outage), so an outage does
/// not fill the error log with a failover every minute.
fn primary_only(options: &ClientOptions) -> ClientOptions {
    let mut o = options.clone();
    o.use_replication_failover = false;
    o.force_failover = false;
    o
}

/// Asks the primary for the node's runs; delivers waiting outcomes on the
/// way. Returns the runs and the server's clock minus the local one.
async fn ask_primary(
    options: &ClientOptions,
    console: &Console,
) -> Result<(Vec<Run>, i64), ClientError> {
    let quiet = Console::new(None, true, false);
    let session = Session::establish(&primary_only(options), &quiet).await?;
    let sent_at = local_now_ns();
    let reply = session
        .client()
        .query_schedule(session.request(pb::QueryScheduleRequest {}))
        .await
        .map_err(|s| ClientError::server("asking for the schedule", s));
    let received_at = local_now_ns();
    let result = match reply {
        Ok(reply) => {
            let reply = reply.into_inner();
            let offset = reply.now_ns.saturating_sub(sent_at / 2 + received_at / 2);
            deliver_pending(&session, &options.state_dir(), console).await;
            Ok((reply.runs.into_iter().map(Run::from).collect(), offset))
        }
        Err(e) => Err(e),
    };
    session.logoff().await;
    result
}

/// Sends the outcomes that could not be delivered before; keeps those the
/// server still cannot take.
async fn deliver_pending(session: &Session, state_dir: &Path, console: &Console) {
    let path = pending_path(state_dir);
    let pending: Vec<Outcome> = read_json(&path);
    if pending.is_empty() {
        return;
    }
    let mut left = Vec::new();
    for outcome in pending {
        match report(session, &outcome).await {
            Ok(()) => console.report(
                &Msg::schedule_reported_late(&outcome.schedule, outcome.window_start_ns),
                crate::error::ExitStatus::Success,
            ),
            // Refused for good (the schedule was deleted, say): dropped.
            Err(ReportError::Refused(_)) => {}
            Err(ReportError::Unreachable) => left.push(outcome),
        }
    }
    let _ = write_json(&path, &left);
}

enum ReportError {
    /// The server answered no; sending it again would not help.
    Refused(String),
    /// The server did not answer.
    Unreachable,
}

async fn report(session: &Session, outcome: &Outcome) -> Result<(), ReportError> {
    session
        .client()
        .report_schedule_event(session.request(pb::ReportScheduleEventRequest {
            schedule: outcome.schedule.clone(),
            window_start_ns: outcome.window_start_ns,
            state: outcome.state.clone(),
            exit_code: outcome.exit_code,
            message: outcome.message.clone(),
            started_ns: outcome.started_ns,
            ended_ns: outcome.ended_ns,
        }))
        .await
        .map(|_| ())
        .map_err(|s| {
            // Only a considered "no" about this outcome is final; anything
            // else (no answer, a busy or failing server) is tried again.
            if matches!(
                s.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::NotFound
                    | tonic::Code::PermissionDenied
                    | tonic::Code::FailedPrecondition
            ) {
                ReportError::Refused(s.message().to_string())
            } else {
                ReportError::Unreachable
            }
        })
}

/// Tells the primary a run has started (`query event` shows it in
/// progress); best effort: not kept when the primary does not answer.
async fn report_started(options: &ClientOptions, run: &Run, started_ns: i64) {
    let quiet = Console::new(None, true, false);
    if let Ok(session) = Session::establish(&primary_only(options), &quiet).await {
        let started = Outcome {
            schedule: run.schedule.clone(),
            window_start_ns: run.start_ns,
            state: "started".into(),
            exit_code: 0,
            message: String::new(),
            started_ns,
            ended_ns: 0,
        };
        let _ = report(&session, &started).await;
        session.logoff().await;
    }
}

/// Reports `outcome` to the primary, or keeps it for later.
async fn deliver(options: &ClientOptions, outcome: Outcome, console: &Console) {
    let quiet = Console::new(None, true, false);
    let delivered = match Session::establish(&primary_only(options), &quiet).await {
        Ok(session) => {
            let sent = report(&session, &outcome).await;
            session.logoff().await;
            match sent {
                Ok(()) => true,
                Err(ReportError::Refused(why)) => {
                    console.report(
                        &Msg::schedule_report_refused(&outcome.schedule, &why),
                        crate::error::ExitStatus::Warnings,
                    );
                    true
                }
                Err(ReportError::Unreachable) => false,
            }
        }
        Err(_) => false,
    };
    if !delivered {
        let path = pending_path(&options.state_dir());
        let mut pending: Vec<Outcome> = read_json(&path);
        pending.push(outcome);
        if pending.len() > MAX_PENDING {
            pending.drain(..pending.len() - MAX_PENDING);
        }
        if let Err(e) = write_json(&path, &pending) {
            console.report(
                &Msg::schedule_report_lost(&e.to_string()),
                crate::error::ExitStatus::Warnings,
            );
        }
    }
}

/// How much of a child's standard error is kept: its end, where the reason
/// for a failure is. A command that writes without end cannot fill memory.
const STDERR_TAIL_BYTES: usize = 64 * 1024;

/// Runs `sh -c command` in a process group of its own, for at most
/// `limit` (then the whole group is killed); returns its exit code (128 +
/// signal when killed) and its last line of output on standard error.
async fn shell(command: &str, limit: Duration) -> (i32, String) {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(command).process_group(0);
    run_child(cmd, Some(limit)).await
}

/// Runs `cmd` with no input, its output dropped and the end of its
/// standard error kept; for at most `limit`, when given (in a process group
/// of its own then, which is killed at the limit).
async fn run_child(mut cmd: tokio::process::Command, limit: Option<Duration>) -> (i32, String) {
    if limit.is_some() {
        cmd.process_group(0);
    }
    cmd.kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return (-1, truncate(&format!("could not start: {e}"))),
    };
    let group = child.id();
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = child
        .stderr
        .take()
        .map(|stderr| tokio::spawn(read_tail(stderr, STDERR_TAIL_BYTES, tail.clone())));
    let status = match limit {
        None => child.wait().await,
        Some(limit) => match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                if let Some(pid) = group.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                if let Some(reader) = reader {
                    reader.abort();
                }
                return (
                    137,
                    format!("killed after {} s, its time limit", limit.as_secs()),
                );
            }
        },
    };
    // The rest of what it wrote: a process it left behind that holds its
    // standard error open is waited for only a moment.
    if let Some(mut reader) = reader
        && tokio::time::timeout(STDERR_AFTER_EXIT, &mut reader)
            .await
            .is_err()
    {
        reader.abort();
    }
    let tail = std::mem::take(&mut *tail.lock().unwrap_or_else(|e| e.into_inner()));
    match status {
        Ok(status) => exit_of(status, &tail),
        Err(e) => (-1, truncate(&format!("could not wait for it: {e}"))),
    }
}

/// How long standard error is read after the child ended.
const STDERR_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Reads `from` to its end into `tail`, keeping at most its last `keep`
/// bytes there (shared, so what was read is there even if this is stopped).
async fn read_tail(
    mut from: impl tokio::io::AsyncRead + Unpin,
    keep: usize,
    tail: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > keep {
                    let cut = tail.len() - keep;
                    tail.drain(..cut);
                }
            }
        }
    }
}

/// The exit code (128 + signal when killed) and the last non-empty line of
/// standard error.
fn exit_of(status: std::process::ExitStatus, stderr: &[u8]) -> (i32, String) {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1);
    let text = String::from_utf8_lossy(stderr);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    (code, truncate(last.trim()))
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.to_string();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Whether the server's description of a run is one this client carries
/// out: a backup of absolute paths, or a command (allowed separately).
/// Anything else (a restore, a relative path, an option in disguise) is
/// refused: the server's word is input like any other.
fn check_run(run: &Run) -> Result<(), String> {
    match run.action.as_str() {
        "command" if run.objects.len() == 1 => Ok(()),
        "command" => Err("a command schedule must carry exactly one command line".into()),
        "incremental" | "selective" => match run.objects.iter().find(|o| !o.starts_with('/')) {
            None if !run.objects.is_empty() => Ok(()),
            None => Err("a backup schedule must name the paths to back up".into()),
            Some(bad) => Err(format!(
                "object {:?} is not an absolute path; the run is not carried out",
                truncate(bad)
            )),
        },
        "db-backup" => match run.objects.iter().find(|o| db_object(o).is_none()) {
            None if run
                .objects
                .iter()
                .any(|o| db_object(o).map(|d| d.0) != db_object(&run.objects[0]).map(|d| d.0)) =>
            {
                Err("a db-backup schedule must name databases of one kind".into())
            }
            None if !run.objects.is_empty() => Ok(()),
            None => Err("a db-backup schedule must name the databases to back up".into()),
            Some(bad) => Err(format!(
                "object {:?} is not a database as KIND:/absolute/path; the run is not carried out",
                truncate(bad)
            )),
        },
        other => Err(format!(
            "action {:?} is not one a schedule may run (incremental, selective, db-backup, command)",
            truncate(other)
        )),
    }
}

/// A `db-backup` object's kind and absolute path (`sqlite:/srv/app.db`).
fn db_object(object: &str) -> Option<(crate::db::DbKind, &str)> {
    let (kind, path) = object.split_once(':')?;
    // The agents that back up a database named by a path (MariaDB is
    // reached through its client programs: schedule it as a command).
    let kind = [crate::db::DbKind::Sqlite, crate::db::DbKind::Postgres]
        .into_iter()
        .find(|k| k.name() == kind)?;
    path.starts_with('/').then_some((kind, path))
}

/// The arguments of the child `tandem` that carries out `run` (after the
/// options): `incremental -- PATH...`, or `backup db KIND -- PATH...`.
/// Every object is checked by [`check_run`] first, so all are one kind's.
fn action_args(run: &Run) -> Vec<String> {
    let mut args = Vec::new();
    if run.action == "db-backup" {
        let kind = run
            .objects
            .first()
            .and_then(|o| db_object(o))
            .map_or("sqlite", |(k, _)| k.name());
        args.extend(["backup".to_string(), "db".into(), kind.into(), "--".into()]);
        args.extend(
            run.objects
                .iter()
                .filter_map(|o| db_object(o).map(|(_, p)| p.to_string())),
        );
    } else {
        args.extend([run.action.clone(), "--".into()]);
        args.extend(run.objects.iter().cloned());
    }
    args
}

/// Runs the action as a child `tandem` with the same options file.
async fn action(run: &Run, options_path: &Path) -> (i32, String) {
    if run.action == "command" {
        // No practical limit: a command, like a backup, takes what it takes.
        return shell(
            run.objects.first().map_or("", String::as_str),
            Duration::from_secs(30 * 86_400),
        )
        .await;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return (-1, format!("cannot find the tandem program: {e}")),
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--options")
        .arg(options_path)
        .arg("--quiet")
        .args(action_args(run));
    run_child(cmd, None).await
}

/// Carries out one run: pre-command, action, post-command; the outcome.
/// The action's exit codes 0, 4 and 8 (done, some objects skipped,
/// warnings) count as completed, as TSM counts them. A run that needs a
/// server-defined command on a client without `schedule_commands` is not
/// run at all (a backup without its pre-command could be worse than none).
async fn carry_out(
    run: &Run,
    options_path: &Path,
    offset_ns: i64,
    started_ns: i64,
    commands_allowed: bool,
) -> Outcome {
    let outcome = |state: &str, exit_code: i32, message: String| Outcome {
        schedule: run.schedule.clone(),
        window_start_ns: run.start_ns,
        state: state.to_string(),
        exit_code,
        message,
        started_ns,
        ended_ns: local_now_ns().saturating_add(offset_ns),
    };
    if let Err(why) = check_run(run) {
        return outcome("failed", 12, why);
    }
    let needs_commands =
        run.action == "command" || !run.pre_command.is_empty() || !run.post_command.is_empty();
    if needs_commands && !commands_allowed {
        return outcome(
            "failed",
            12,
            "this client does not run commands a server defines (command schedules, pre- and post-commands); set schedule_commands = true in its options to allow them".into(),
        );
    }
    if !run.pre_command.is_empty() {
        // Until the window closes: a run must start within it.
        let left = Duration::from_nanos(
            u64::try_from(
                run.end_ns
                    .saturating_sub(local_now_ns().saturating_add(offset_ns)),
            )
            .unwrap_or(0),
        )
        .max(Duration::from_secs(1));
        let (code, last) = shell(&run.pre_command, left).await;
        if code != 0 {
            return outcome(
                "failed",
                code,
                truncate(&format!(
                    "the pre-command exited {code}, so the {} was not run: {last}",
                    run.action
                )),
            );
        }
    }
    let (code, last) = action(run, options_path).await;
    let mut state = if matches!(code, 0 | 4 | 8) {
        "completed"
    } else {
        "failed"
    };
    let mut message = if state == "completed" {
        format!("{} ended with exit code {code}", run.action)
    } else {
        format!("{} ended with exit code {code}: {last}", run.action)
    };
    if !run.post_command.is_empty() {
        let (post, post_last) = shell(&run.post_command, POST_COMMAND_LIMIT).await;
        if post != 0 {
            state = "failed";
            message = format!("{message}; the post-command exited {post}: {post_last}");
        }
    }
    outcome(state, code, truncate(&message))
}

/// The run to wait for or carry out now: the soonest window, open at
/// server time `now_ns` or opening next, that was not run yet (a window
/// already run gives way to the one after it).
fn next_due(runs: &[Run], done: &HashMap<String, i64>, now_ns: i64) -> Option<Run> {
    runs.iter()
        .filter_map(|r| {
            let (start, end) = r.window_at(now_ns)?;
            let (start, end) = if done.get(&r.schedule) == Some(&start) {
                // Run already: the next window, if any.
                let after = Run {
                    start_ns: start,
                    end_ns: end,
                    ..r.clone()
                };
                after.window_at(end)?
            } else {
                (start, end)
            };
            Some(Run {
                start_ns: start,
                end_ns: end,
                ..r.clone()
            })
        })
        .min_by_key(|r| (r.start_ns, r.schedule.clone()))
}

/// `tandem schedule`: runs until killed. Reloads the options file before
/// each step, so a primary that moved (and the rewritten file) is followed.
///
/// # Errors
/// Only an options file that cannot be read any more.
pub async fn run(
    options_path: &Path,
    env: &HashMap<String, String>,
    console: &Console,
) -> Result<(), ClientError> {
    let mut last_good = ClientOptions::load(options_path, env)?;
    let _lock = lock_state_dir(&last_good.state_dir())?;
    console.report(&Msg::scheduler_started(), crate::error::ExitStatus::Success);
    let mut offset_ns = 0i64;
    let mut told_offline = false;
    // Kept in memory too, so a window is run once even when the file
    // cannot be written; read again only if `state_dir` changes.
    let mut cache_dir = last_good.state_dir();
    let mut cache: Cache = read_json(&cache_path(&cache_dir));
    // Server time of the last pass: windows that close between two passes
    // without running are reported (TDM1059W).
    let mut last_pass_ns: Option<i64> = None;
    loop {
        // A file being edited, or briefly unreadable, does not stop the
        // scheduler: it goes on with the options it read last.
        match ClientOptions::load(options_path, env) {
            Ok(o) => last_good = o,
            Err(e) => console.report(
                &Msg::schedule_options_unreadable(&e.to_string()),
                crate::error::ExitStatus::Warnings,
            ),
        }
        let options = last_good.clone();
        let state_dir = options.state_dir();
        if state_dir != cache_dir {
            cache = read_json(&cache_path(&state_dir));
            cache_dir = state_dir.clone();
        }
        match ask_primary(&options, console).await {
            Ok((runs, offset)) => {
                offset_ns = offset;
                cache.runs = runs;
                // Forget windows of schedules no longer associated.
                let runs = &cache.runs;
                cache
                    .done
                    .retain(|name, _| runs.iter().any(|r| &r.schedule == name));
                let _ = write_json(&cache_path(&state_dir), &cache);
                told_offline = false;
            }
            Err(e) => {
                if !told_offline {
                    console.report(
                        &Msg::schedule_offline(&e.to_string(), cache.runs.len()),
                        crate::error::ExitStatus::Success,
                    );
                    told_offline = true;
                }
            }
        }
        let now = local_now_ns().saturating_add(offset_ns);
        if let Some(since) = last_pass_ns {
            for (schedule, closed) in closed_unrun(&cache.runs, &cache.done, since, now) {
                console.report(
                    &Msg::schedule_window_closed(&schedule, &timefmt::show(closed)),
                    crate::error::ExitStatus::Success,
                );
            }
        }
        last_pass_ns = Some(now);
        let Some(due) = next_due(&cache.runs, &cache.done, now) else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        if due.start_ns > now {
            console.report(
                &Msg::schedule_waiting(&due.schedule, &timefmt::show(due.start_ns)),
                crate::error::ExitStatus::Success,
            );
        }
        // Each node starts at its own moment in the first quarter of the
        // window (at most five minutes in), so a fleet does not log on all
        // at once (TSM RANDOMIZE). One sleep to that moment: a wait longer
        // than POLL asks the schedule again at its end; a shorter one goes
        // on with the answer just had, so a slow logon cannot spend the
        // window.
        let target = due
            .start_ns
            .saturating_add(splay_ns(&options.node_name, &due));
        if now < target {
            let wait = Duration::from_nanos(u64::try_from(target.saturating_sub(now)).unwrap_or(0));
            tokio::time::sleep(wait.min(POLL)).await;
            if wait > POLL {
                continue;
            }
        }
        // Run it once, if its window is still open now.
        cache.done.insert(due.schedule.clone(), due.start_ns);
        let _ = write_json(&cache_path(&state_dir), &cache);
        let started_ns = local_now_ns().saturating_add(offset_ns);
        last_pass_ns = Some(started_ns);
        if started_ns >= due.end_ns {
            console.report(
                &Msg::schedule_window_closed(&due.schedule, &timefmt::show(due.end_ns)),
                crate::error::ExitStatus::Success,
            );
            continue;
        }
        console.report(
            &Msg::schedule_running(&due.schedule, &due.action, &due.objects.join(" ")),
            crate::error::ExitStatus::Success,
        );
        // The start is reported within what is left of the window, so the
        // action begins inside it however slow the primary is to answer.
        let left =
            Duration::from_nanos(u64::try_from(due.end_ns.saturating_sub(started_ns)).unwrap_or(0));
        let _ = tokio::time::timeout(left, report_started(&options, &due, started_ns)).await;
        let outcome = carry_out(
            &due,
            options_path,
            offset_ns,
            started_ns,
            options.schedule_commands,
        )
        .await;
        console.report(
            &Msg::schedule_outcome(
                &outcome.schedule,
                &outcome.state,
                outcome.exit_code,
                &outcome.message,
            ),
            crate::error::ExitStatus::Success,
        );
        deliver(&options, outcome, console).await;
    }
}

/// Windows that were open or still to open at server time `since_ns` and
/// closed by `now_ns` without being run (a run before them went on, the
/// primary was slow to answer, the host slept): the schedule and when its
/// last such window closed. Each is found once, as `since_ns` moves on.
fn closed_unrun(
    runs: &[Run],
    done: &HashMap<String, i64>,
    since_ns: i64,
    now_ns: i64,
) -> Vec<(String, i64)> {
    runs.iter()
        .filter_map(|r| {
            let (first_start, _) = r.window_at(since_ns)?;
            // The last window that closed by now (the one open at `now_ns`
            // has not closed): at or after the first one open at `since_ns`.
            let (start, end) = last_closed_window(r, now_ns)?;
            (start >= first_start && done.get(&r.schedule) != Some(&start))
                .then(|| (r.schedule.clone(), end))
        })
        .collect()
}

/// The latest window of `run` that closed at or before `now_ns`.
fn last_closed_window(run: &Run, now_ns: i64) -> Option<(i64, i64)> {
    if run.end_ns > now_ns {
        // The cached window itself has not closed; none before it is known.
        return None;
    }
    // The window open at `now_ns` or opening next; the one before it
    // closed (with a period), else the cached one is the last.
    match run.window_at(now_ns) {
        Some((start, _)) if run.period_secs > 0 && start > run.start_ns => {
            let period = i64::try_from(run.period_secs)
                .unwrap_or(i64::MAX / 1_000_000_000)
                .saturating_mul(1_000_000_000);
            let before = start.saturating_sub(period);
            Some((
                before,
                before.saturating_add(run.end_ns.saturating_sub(run.start_ns)),
            ))
        }
        _ => Some((run.start_ns, run.end_ns)),
    }
}

/// How long after its window opens `node` starts `run`: a fixed fraction
/// (from the node, schedule and window, so it is the same after a restart)
/// of the first quarter of the window, at most five minutes.
fn splay_ns(node: &str, run: &Run) -> i64 {
    use std::hash::{Hash, Hasher};
    let span = (run.end_ns.saturating_sub(run.start_ns) / 4).min(300 * 1_000_000_000);
    if span <= 0 {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (node.to_ascii_uppercase(), &run.schedule, run.start_ns).hash(&mut h);
    i64::try_from(h.finish() % u64::try_from(span).unwrap_or(1)).unwrap_or(0)
}

/// Holds an exclusive lock on `state_dir/schedule.lock` for the
/// scheduler's life: a second scheduler with the same state directory
/// would run every window twice.
///
/// # Errors
/// [`ClientError::Usage`] when another scheduler holds it;
/// [`ClientError::StateDir`] when others may write in the directory; I/O
/// errors.
fn lock_state_dir(state_dir: &Path) -> Result<std::fs::File, ClientError> {
    use std::os::unix::fs::OpenOptionsExt;
    crate::state_dir::ensure(state_dir)?;
    let path = state_dir.join("schedule.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| ClientError::Io {
            path: path.clone(),
            source: e,
        })?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| {
            ClientError::Usage(format!(
                "another `tandem schedule` runs with the state directory {} ({} is locked); run one scheduler per node",
                state_dir.display(),
                path.display()
            ))
        },
    )?;
    Ok(file)
}

/// `tandem query schedule`: the node's next runs.
///
/// # Errors
/// The server's refusal.
pub async fn query(session: &Session, console: &Console) -> Result<(), ClientError> {
    let reply = session
        .client()
        .query_schedule(session.request(pb::QueryScheduleRequest {}))
        .await
        .map_err(|s| ClientError::server("asking for the schedule", s))?
        .into_inner();
    let runs: Vec<Run> = reply.runs.into_iter().map(Run::from).collect();
    if console.json {
        let rows: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "schedule": r.schedule, "action": r.action, "objects": r.objects,
                    "window_start": timefmt::json(r.start_ns), "window_end": timefmt::json(r.end_ns),
                    "pre_command": r.pre_command, "post_command": r.post_command,
                })
            })
            .collect();
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(());
    }
    if runs.is_empty() {
        crate::outln!(
            "Node {} has no schedule on server {}.",
            session.info.node,
            session.info.name
        );
        return Ok(());
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header([
        "Schedule",
        "Action",
        "Objects",
        "Window opens",
        "Window closes",
    ]);
    for r in &runs {
        // The server's words: shown without its control characters.
        let shown =
            |text: &str| crate::output::messages::without_controls(text, false).into_owned();
        table.add_row(vec![
            shown(&r.schedule),
            shown(&r.action),
            shown(&r.objects.join(" ")),
            timefmt::show(r.start_ns),
            timefmt::show(r.end_ns),
        ]);
    }
    crate::outln!("{table}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_extreme_times_do_not_overflow() {
        let run = Run {
            schedule: "S".into(),
            action: "incremental".into(),
            objects: Vec::new(),
            start_ns: i64::MAX,
            end_ns: i64::MIN,
            pre_command: String::new(),
            post_command: String::new(),
            period_secs: 1,
        };
        for now in [i64::MIN, 0, i64::MAX] {
            let _ = run.window_at(now);
        }
        assert_eq!(splay_ns("N", &run), 0);
        let wide = Run {
            start_ns: i64::MIN,
            end_ns: i64::MAX,
            ..run
        };
        let _ = wide.window_at(i64::MAX);
        assert!(splay_ns("N", &wide) >= 0);
    }

    fn run(name: &str, start: i64, end: i64, period_secs: u64) -> Run {
        Run {
            schedule: name.into(),
            action: "incremental".into(),
            objects: vec!["/data".into()],
            start_ns: start,
            end_ns: end,
            pre_command: String::new(),
            post_command: String::new(),
            period_secs,
        }
    }

    const S: i64 = 1_000_000_000;

    #[test]
    fn the_soonest_open_window_not_yet_run_is_due() {
        let runs = [
            run("B", 100 * S, 200 * S, 0),
            run("A", 150 * S, 250 * S, 0),
            run("C", 10 * S, 20 * S, 0),
        ];
        let mut done = HashMap::new();
        let due =
            |done: &HashMap<String, i64>, now: i64| next_due(&runs, done, now).map(|r| r.schedule);
        assert_eq!(due(&done, 50 * S).as_deref(), Some("B"));
        done.insert("B".to_string(), 100 * S);
        assert_eq!(due(&done, 160 * S).as_deref(), Some("A"));
        assert_eq!(due(&done, 260 * S), None, "every window closed");
    }

    #[test]
    fn windows_that_closed_unrun_between_two_passes_are_named_once() {
        // Every 100 s, open 50 s; once, 300-400 s; once, long closed.
        let runs = [
            run("P", 100 * S, 150 * S, 100),
            run("O", 300 * S, 400 * S, 0),
            run("G", 10 * S, 20 * S, 0),
        ];
        let mut done = HashMap::new();
        // A run from 120 s to 460 s: P's windows of 200, 300 and 400 s and
        // O's closed meanwhile (P's 100 s window was the one run).
        done.insert("P".to_string(), 100 * S);
        let closed = closed_unrun(&runs, &done, 120 * S, 460 * S);
        assert_eq!(
            closed,
            vec![("P".to_string(), 450 * S), ("O".to_string(), 400 * S)],
            "the latest of each, the long-closed one not at all"
        );
        // The next pass names nothing new.
        assert!(closed_unrun(&runs, &done, 460 * S, 470 * S).is_empty());
        // A window run is not named; one still open is not either.
        done.insert("O".to_string(), 300 * S);
        let closed = closed_unrun(&runs, &done, 290 * S, 420 * S);
        assert_eq!(closed, vec![("P".to_string(), 350 * S)]);
        assert!(closed_unrun(&runs, &done, 290 * S, 310 * S).is_empty());
        // P's 100 s window, open at the pass before and run: nothing.
        assert!(closed_unrun(&runs, &done, 110 * S, 160 * S).is_empty());
    }

    #[test]
    fn a_periodic_schedule_goes_on_from_a_cached_answer() {
        // Windows every 10 s, 2 s long, the cached one at 100 s.
        let runs = [run("P", 100 * S, 102 * S, 10)];
        let mut done = HashMap::new();
        let at = |done: &HashMap<String, i64>, now: i64| {
            next_due(&runs, done, now).map(|r| (r.start_ns / S, r.end_ns / S))
        };
        assert_eq!(at(&done, 101 * S), Some((100, 102)), "open now");
        assert_eq!(at(&done, 105 * S), Some((110, 112)), "the next one");
        assert_eq!(
            at(&done, 1001 * S),
            Some((1000, 1002)),
            "long after, still in step"
        );
        done.insert("P".to_string(), 1000 * S);
        assert_eq!(
            at(&done, 1001 * S),
            Some((1010, 1012)),
            "run already: the one after"
        );
    }

    #[test]
    fn each_node_starts_in_the_first_quarter_of_the_window() {
        let r = run("P", 100 * S, 108 * S, 10);
        let a = splay_ns("alice", &r);
        assert!((0..2 * S).contains(&a), "{a}");
        assert_eq!(a, splay_ns("ALICE", &r), "the same after a restart");
        let long = run("L", 0, 3600 * S, 0);
        assert!(splay_ns("bob", &long) < 300 * S);
        let spread: std::collections::HashSet<i64> = (0..20)
            .map(|i| splay_ns(&format!("node{i}"), &long))
            .collect();
        assert!(spread.len() > 10, "nodes start at different moments");
    }

    #[tokio::test]
    async fn a_command_that_writes_without_end_keeps_only_the_end_of_its_errors() {
        // ~20 MB on standard error, then the line that says why.
        let (code, last) = shell(
            "head -c 20000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo the real reason >&2; exit 7",
            Duration::from_secs(60),
        )
        .await;
        assert_eq!((code, last.as_str()), (7, "the real reason"));
        // Read in pieces, far more than is kept: only the end stays.
        use tokio::io::AsyncReadExt;
        let pieces = (&b"01234"[..]).chain(&b"56789"[..]).chain(&b"abcde"[..]);
        let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        read_tail(pieces, 4, tail.clone()).await;
        assert_eq!(*tail.lock().unwrap(), b"bcde");
    }

    #[tokio::test]
    async fn a_process_left_holding_standard_error_is_not_waited_for() {
        // The command ends at once; what it started holds stderr for 20 s
        // (and then ends by itself). Had the scheduler waited for it, the
        // last line would be the late one.
        let (code, last) = shell(
            "echo before it ended >&2; (sleep 20; echo late >&2) & exit 3",
            Duration::from_secs(120),
        )
        .await;
        assert_eq!((code, last.as_str()), (3, "before it ended"));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let text = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = truncate(&text);
        assert!(cut.len() <= MAX_MESSAGE_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
