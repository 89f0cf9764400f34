//! The MariaDB agent: full backups with `mariadb-dump`, binary logs as
//! incrementals, and point-in-time restore by replaying them.
//!
//! Why `mariadb-dump --single-transaction` and not `mariadb-backup`: the
//! dump is one consistent InnoDB snapshot written as a stream, so it goes
//! straight into the upload with no staging copy and no `--prepare` step,
//! and it restores into any later server version. A physical copy restores
//! faster for very large databases but needs a staging directory the size
//! of the data and the same server version. With `--flush-logs` and
//! `--master-data=2` the dump starts a new binary log and records where
//! (`MASTER_LOG_FILE`, `MASTER_LOG_POS`) in a comment at its head, which
//! names the dump and tells the restore where replay starts.
//!
//! A server is named by its data directory (`@@datadir`, as it reports it).
//! Full dumps are stored as `/@mariadb/DATADIR/full/BINLOG.POS.sql`, and
//! each closed binary log as `/@mariadb/DATADIR/binlog/NAME` (`backup db
//! mariadb --binlogs` rotates the log first and stores every closed one not
//! stored yet). A restore loads the newest dump stored before the target
//! time into a running (empty) server, then replays the binary logs from
//! the dump's position with `mariadb-binlog --stop-datetime`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tandem_proto::pb;

use super::DbKind;
use super::child::ChildOutput;
use crate::backup::BackupStats;
use crate::error::{ClientError, ExitStatus};
use crate::logon::session::Session;
use crate::options::ClientOptions;
use crate::output::console::Console;
use crate::output::messages::Msg;
use crate::restore::RestoreStats;

/// Bytes of a dump's head kept to read the binary log position comment
/// (it comes after a few header lines).
const HEAD_KEEP: usize = 64 * 1024;
/// The longest binary log file name taken.
const MAX_BINLOG_NAME: usize = 128;

/// How to reach the server: a Unix socket, or the client programs' own
/// defaults (`~/.my.cnf`, `MYSQL_UNIX_PORT`).
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `--socket` for every client program.
    pub socket: Option<PathBuf>,
}

impl Connection {
    fn args(&self) -> Vec<String> {
        self.socket
            .iter()
            .map(|s| format!("--socket={}", s.display()))
            .collect()
    }
}

fn db_error(server: &str, message: String) -> ClientError {
    ClientError::Database {
        database: crate::names::display(server).to_string(),
        message,
    }
}

fn folder(datadir: &Path, part: &str) -> String {
    format!("{}/{part}", DbKind::Mariadb.object_path(datadir))
}

/// Runs the `mariadb` client with `sql`; its standard output.
fn query(connection: &Connection, sql: &str) -> Result<String, ClientError> {
    let out = Command::new("mariadb")
        .args(connection.args())
        .args(["--batch", "--skip-column-names", "--execute", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            db_error(
                "mariadb",
                format!("the mariadb client could not be started: {e}; install MariaDB's client programs or put them on PATH"),
            )
        })?;
    if !out.status.success() {
        return Err(db_error(
            "mariadb",
            format!(
                "the server refused `{sql}`: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The server's data directory (its name here) and its binary log base
/// name, which must be set: without binary logs there is no point in time
/// to restore to.
fn server_facts(connection: &Connection) -> Result<(PathBuf, PathBuf), ClientError> {
    let text = query(
        connection,
        "SELECT @@datadir, @@log_bin, @@log_bin_basename",
    )?;
    let fields: Vec<&str> = text.trim_end().split('\t').collect();
    let [datadir, log_bin, basename] = fields[..] else {
        return Err(db_error(
            "mariadb",
            format!("unexpected answer to the server query: {text:?}"),
        ));
    };
    if log_bin != "1" || basename == "NULL" {
        return Err(db_error(
            datadir,
            "binary logging is off; set log_bin (and server_id) in the server's configuration and restart it, so point-in-time restores are possible".into(),
        ));
    }
    let datadir = PathBuf::from(datadir.trim_end_matches('/'));
    Ok((datadir, PathBuf::from(basename)))
}

/// The binary log position a dump starts at, from the comment
/// `--master-data=2` writes near its head.
fn dump_position(head: &str) -> Option<(String, u64)> {
    let line = head
        .lines()
        .take(200)
        .find(|l| l.contains("CHANGE MASTER TO MASTER_LOG_FILE="))?;
    let file = line.split("MASTER_LOG_FILE='").nth(1)?.split('\'').next()?;
    let pos = line
        .split("MASTER_LOG_POS=")
        .nth(1)?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    check_binlog_name(file).ok()?;
    Some((file.to_string(), pos))
}

/// Checks a binary log file name: letters, digits, `.`, `-`, `_`.
fn check_binlog_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_BINLOG_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a binary log file name (letters, digits, '.', '-', '_')"
        ))
    }
}

/// A reader that keeps the first [`HEAD_KEEP`] bytes it passes on.
struct KeepHead<R> {
    inner: R,
    head: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl<R: std::io::Read> std::io::Read for KeepHead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        let room = HEAD_KEEP.saturating_sub(head.len()).min(n);
        head.extend_from_slice(&buf[..room]);
        Ok(n)
    }
}

/// A full backup: `mariadb-dump` of every database in one transaction,
/// streamed into the upload, named after the binary log position it
/// starts at.
///
/// # Errors
/// Binary logging off, `mariadb-dump` failing (its message is given),
/// server and connection failures.
pub async fn backup_full(
    session: &Session,
    options: &ClientOptions,
    connection: &Connection,
    console: &Console,
) -> Result<BackupStats, ClientError> {
    let (datadir, _) = server_facts(connection)?;
    let shown = super::shown(&datadir);
    let child = Command::new("mariadb-dump")
        .args(connection.args())
        .args([
            "--single-transaction",
            "--master-data=2",
            "--flush-logs",
            "--all-databases",
            "--routines",
            "--events",
            "--triggers",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            db_error(
                &shown,
                format!("mariadb-dump could not be started: {e}; install MariaDB's client programs or put them on PATH"),
            )
        })?;
    let output = ChildOutput::new("mariadb-dump", child).map_err(|e| ClientError::Io {
        path: "mariadb-dump".into(),
        source: e,
    })?;
    let head = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let source = KeepHead {
        inner: output,
        head: head.clone(),
    };
    let full = folder(&datadir, "full");
    let attrs = move || {
        let head = head.lock().unwrap_or_else(|e| e.into_inner());
        let (file, pos) = dump_position(&String::from_utf8_lossy(&head)).ok_or_else(|| {
            std::io::Error::other(
                "mariadb-dump's output does not record its binary log position (--master-data=2); is binary logging on?",
            )
        })?;
        Ok(pb::ObjectAttrs {
            path: format!("{full}/{file}.{pos:012}.sql"),
            kind: pb::ObjectKind::File as i32,
            mode: 0o600,
            mtime_ns: super::now_ns(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            ..Default::default()
        })
    };
    let stats = super::store_stream(
        session,
        options,
        DbKind::Mariadb.filespace(),
        &datadir,
        source,
        attrs,
        console,
    )
    .await
    .map_err(|e| match e {
        ClientError::Io { source, .. } => db_error(&shown, source.to_string()),
        other => other,
    })?;
    console.report(
        &Msg::db_backed_up(DbKind::Mariadb.name(), &datadir, stats.bytes_scanned),
        ExitStatus::Success,
    );
    Ok(stats)
}

/// An incremental backup: rotates the binary log (`FLUSH BINARY LOGS`) and
/// stores every closed binary log that is not stored yet, read from the
/// server's log directory (run as a user who may read it).
///
/// # Errors
/// Binary logging off, unreadable logs, server and connection failures.
pub async fn backup_binlogs(
    session: &Session,
    options: &ClientOptions,
    connection: &Connection,
    console: &Console,
) -> Result<BackupStats, ClientError> {
    let (datadir, basename) = server_facts(connection)?;
    query(connection, "FLUSH BINARY LOGS")?;
    let listed = query(connection, "SHOW BINARY LOGS")?;
    let mut names: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split('\t').next())
        .map(str::to_string)
        .collect();
    // The last one is the log being written: not closed, not stored.
    names.pop();
    let dir = basename.parent().unwrap_or(Path::new("/")).to_path_buf();
    let stored: std::collections::HashSet<String> =
        super::versions_below(session, &folder(&datadir, "binlog"), true)
            .await?
            .into_iter()
            .filter_map(|v| v.attrs.map(|a| a.path))
            .filter_map(|p| p.rsplit('/').next().map(str::to_string))
            .collect();
    let mut total = BackupStats::default();
    for name in names.iter().filter(|n| !stored.contains(*n)) {
        check_binlog_name(name).map_err(|m| db_error(&super::shown(&datadir), m))?;
        let path = dir.join(name);
        let file = std::fs::File::open(&path).map_err(|e| {
            db_error(
                &super::shown(&datadir),
                format!(
                    "binary log {} cannot be read: {e}; run the agent as the server's user or root",
                    super::shown(&path)
                ),
            )
        })?;
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().map_err(|e| ClientError::Io {
            path: path.clone(),
            source: e,
        })?;
        let attrs = pb::ObjectAttrs {
            path: format!("{}/{name}", folder(&datadir, "binlog")),
            kind: pb::ObjectKind::File as i32,
            mode: meta.mode() & 0o7777,
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            uid: meta.uid(),
            gid: meta.gid(),
            ..Default::default()
        };
        let stats = super::store_stream(
            session,
            options,
            DbKind::Mariadb.filespace(),
            &path,
            file,
            move || Ok(attrs),
            console,
        )
        .await?;
        total.inspected += 1;
        total.backed_up += stats.backed_up;
        total.bytes_scanned += stats.bytes_scanned;
        total.bytes_sent += stats.bytes_sent;
        total.bytes_deduplicated += stats.bytes_deduplicated;
        total.elapsed_secs += stats.elapsed_secs;
    }
    total.unchanged = (names.len() as u64).saturating_sub(total.backed_up);
    total.inspected += total.unchanged;
    console.report(
        &Msg::binlogs_stored(&datadir, total.backed_up, total.unchanged),
        ExitStatus::Success,
    );
    Ok(total)
}

/// Restores the server named `datadir` (as it was backed up) into the
/// running server `connection` reaches, which should be empty: loads the
/// newest full dump stored before `point_in_time_ns` (the newest without
/// it), then replays the stored binary logs from the dump's position up to
/// that time.
///
/// # Errors
/// No dump, a failing `mariadb` or `mariadb-binlog` (their messages are
/// given), server and connection failures.
pub async fn restore(
    session: &Session,
    options: &ClientOptions,
    datadir: &Path,
    connection: &Connection,
    point_in_time_ns: Option<i64>,
    console: &Console,
) -> Result<RestoreStats, ClientError> {
    let datadir = PathBuf::from(datadir.to_string_lossy().trim_end_matches('/'));
    let shown = super::shown(&datadir);
    let dump = super::versions_below(session, &folder(&datadir, "full"), true)
        .await?
        .into_iter()
        .filter(|v| point_in_time_ns.is_none_or(|t| v.backup_time_ns <= t))
        .max_by_key(|v| v.backup_time_ns)
        .and_then(|v| v.attrs.map(|a| a.path))
        .ok_or_else(|| {
            db_error(
                &shown,
                "no full backup of this server is stored before that time; `tandem query db --inactive` lists them".into(),
            )
        })?;
    let dump_name = dump.rsplit('/').next().unwrap_or_default().to_string();
    let (start_file, start_pos) = dump_name
        .strip_suffix(".sql")
        .and_then(|n| n.rsplit_once('.'))
        .and_then(|(f, p)| Some((f.to_string(), p.parse::<u64>().ok()?)))
        .ok_or_else(|| {
            db_error(
                &shown,
                format!("stored dump {dump_name:?} has an unexpected name"),
            )
        })?;
    // The dump holds every database: it is staged where only this user
    // may read it.
    let staging_root = super::staging_root(options)?;
    let (stage, dump_file, mut stats) = super::restore_object_to_staging(
        session,
        DbKind::Mariadb,
        &dump,
        &datadir,
        &staging_root,
        super::Version::Newest,
        console,
    )
    .await?;
    let load = Command::new("mariadb")
        .args(connection.args())
        .stdin(
            std::fs::File::open(&dump_file).map_err(|e| ClientError::Io {
                path: dump_file.clone(),
                source: e,
            })?,
        )
        .output()
        .map_err(|e| {
            db_error(
                &shown,
                format!("the mariadb client could not be started: {e}"),
            )
        })?;
    if !load.status.success() {
        return Err(db_error(
            &shown,
            format!(
                "loading the full backup failed: {}",
                String::from_utf8_lossy(&load.stderr).trim()
            ),
        ));
    }
    // The binary logs from the dump's own onward, in order.
    let mut logs: Vec<String> = super::versions_below(session, &folder(&datadir, "binlog"), true)
        .await?
        .into_iter()
        .filter_map(|v| v.attrs.map(|a| a.path))
        .filter(|p| {
            p.rsplit('/')
                .next()
                .is_some_and(|n| n >= start_file.as_str())
        })
        .collect();
    logs.sort();
    logs.dedup();
    let mut files = Vec::new();
    for log in &logs {
        let (_inner, restored, more) = super::restore_object_to_staging(
            session,
            DbKind::Mariadb,
            log,
            &datadir,
            stage.path(),
            super::Version::Newest,
            console,
        )
        .await?;
        let kept = stage.path().join(restored.file_name().unwrap_or_default());
        std::fs::rename(&restored, &kept).map_err(|e| ClientError::Io {
            path: kept.clone(),
            source: e,
        })?;
        stats.restored += more.restored;
        stats.bytes += more.bytes;
        files.push(kept);
    }
    if !files.is_empty() {
        replay(connection, &files, start_pos, point_in_time_ns).map_err(|m| db_error(&shown, m))?;
    }
    console.report(
        &Msg::mariadb_restored(&datadir, files.len(), point_in_time_ns),
        ExitStatus::Success,
    );
    Ok(stats)
}

/// `mariadb-binlog --start-position=POS [--stop-datetime=T] FILES... |
/// mariadb`: the start position applies to the first file.
fn replay(
    connection: &Connection,
    files: &[PathBuf],
    start_pos: u64,
    point_in_time_ns: Option<i64>,
) -> Result<(), String> {
    let mut decode = Command::new("mariadb-binlog");
    decode
        .env("TZ", "UTC")
        .arg(format!("--start-position={start_pos}"))
        .args(files)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ns) = point_in_time_ns {
        // Whole seconds, as binary log events carry them: events of the
        // target's own second are left out.
        let at = chrono::DateTime::from_timestamp_nanos(ns).format("%Y-%m-%d %H:%M:%S");
        decode.arg(format!("--stop-datetime={at}"));
    }
    let mut decoder = decode
        .spawn()
        .map_err(|e| format!("mariadb-binlog could not be started: {e}"))?;
    let events = decoder
        .stdout
        .take()
        .ok_or("mariadb-binlog's output is not piped")?;
    let apply = Command::new("mariadb")
        .args(connection.args())
        .stdin(events)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("the mariadb client could not be started: {e}"))?;
    let decoded = decoder
        .wait_with_output()
        .map_err(|e| format!("mariadb-binlog: {e}"))?;
    if !decoded.status.success() {
        return Err(format!(
            "mariadb-binlog failed: {}",
            String::from_utf8_lossy(&decoded.stderr).trim()
        ));
    }
    if !apply.status.success() {
        return Err(format!(
            "replaying the binary logs failed: {}",
            String::from_utf8_lossy(&apply.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_is_named_after_the_binary_log_position_it_records() {
        let head = "-- MariaDB dump 10.19\n--\n-- Position to start replication or point-in-time recovery from\n--\n\n-- CHANGE MASTER TO MASTER_LOG_FILE='binlog.000003', MASTER_LOG_POS=385;\n";
        assert_eq!(dump_position(head), Some(("binlog.000003".into(), 385)));
        assert_eq!(dump_position("-- no position here\n"), None);
        let forged = "-- CHANGE MASTER TO MASTER_LOG_FILE='../../etc/passwd', MASTER_LOG_POS=4;\n";
        assert_eq!(dump_position(forged), None);
    }

    #[test]
    fn binary_log_names_are_plain() {
        assert!(check_binlog_name("mysql-bin.000001").is_ok());
        for bad in ["", "..", ".hidden", "a/b", "a b", "x;rm"] {
            assert!(check_binlog_name(bad).is_err(), "{bad:?}");
        }
    }
}
