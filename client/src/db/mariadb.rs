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

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::DbKind;
use crate::backup::BackupStats;
use crate::error::{ClientError, ExitStatus};
use crate::logon::session::Session;
use crate::options::ClientOptions;
use crate::output::console::Console;
use crate::output::messages::Msg;
use crate::restore::RestoreStats;

/// How the `mariadb` client is run on a dump or on replayed binary logs,
/// both read from a server: as SQL only (`--binary-mode` turns off the
/// client's own commands, such as `\!` for a shell), and never reading a
/// file of this host for a `LOAD DATA LOCAL` in that SQL, whatever an
/// option file says.
const LOAD_SAFELY: [&str; 2] = ["--binary-mode", "--local-infile=0"];

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

/// A binary log name's base and sequence number (`binlog.000012` ->
/// `("binlog", 12)`), by which logs are ordered: numbers, not text, since
/// `.1000000` follows `.999999`.
fn binlog_sequence(name: &str) -> Option<(&str, u64)> {
    let (base, number) = name.rsplit_once('.')?;
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((base, number.parse().ok()?))
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
    let mut command = Command::new("mariadb-dump");
    command.args(connection.args()).args([
        "--single-transaction",
        "--master-data=2",
        "--flush-logs",
        "--all-databases",
        "--routines",
        "--events",
        "--triggers",
    ]);
    let full = folder(&datadir, "full");
    let name_it = move |head: &[u8]| {
        dump_position(&String::from_utf8_lossy(head))
            .map(|(file, pos)| format!("{full}/{file}.{pos:012}.sql"))
            .ok_or("mariadb-dump's output does not record its binary log position (--master-data=2); is binary logging on?")
    };
    super::store_program_output(
        session,
        options,
        DbKind::Mariadb,
        &datadir,
        "mariadb-dump",
        "install MariaDB's client programs or put them on PATH",
        command,
        name_it,
        console,
    )
    .await
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
    let shown = super::shown(&datadir);
    // Stored logs by name, with their sizes: a closed log never changes, so
    // a stored name whose size differs on disk is another log of that name
    // (RESET MASTER, or a server rebuilt in the same directory).
    let stored: std::collections::HashMap<String, u64> =
        super::versions_below(session, &folder(&datadir, "binlog"), true)
            .await?
            .into_iter()
            .filter_map(|v| v.attrs)
            .filter_map(|a| Some((a.path.rsplit('/').next()?.to_string(), a.size)))
            .collect();
    for name in &names {
        check_binlog_name(name).map_err(|m| db_error(&shown, m))?;
        if let Some(size) = stored.get(name) {
            let on_disk = std::fs::symlink_metadata(dir.join(name))
                .map(|m| m.len())
                .ok();
            if let Some(on_disk) = on_disk.filter(|d| d != size) {
                return Err(db_error(
                    &shown,
                    format!(
                        "binary log {name} on the server is not the one stored under that name ({on_disk} bytes here, {size} stored): the logs were reset or the server rebuilt; take a full backup, and restore older points in time from before the reset"
                    ),
                ));
            }
        }
    }
    // Logs purged before they were stored leave a gap no restore can cross.
    let newest_stored = stored
        .keys()
        .filter_map(|n| binlog_sequence(n))
        .max_by_key(|(_, n)| *n);
    let oldest_listed = names.first().and_then(|n| binlog_sequence(n));
    if let (Some((base, newest)), Some((listed_base, oldest))) = (newest_stored, oldest_listed)
        && base == listed_base
        && oldest > newest + 1
    {
        console.report(
            &Msg::binlogs_missing(&datadir, base, newest + 1, oldest - 1),
            ExitStatus::Warnings,
        );
    }
    let mut total = BackupStats::default();
    for name in names.iter().filter(|n| !stored.contains_key(*n)) {
        let path = dir.join(name);
        // Never through a link, never a FIFO: the log directory is the
        // database user's, and an agent run as root must not store (and
        // later replay) whatever file a link there names.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| {
                let why = if e.raw_os_error() == Some(nix::libc::ELOOP) {
                    "it is a symbolic link, which is refused (the log directory is the database user's); check the server's log directory".to_string()
                } else {
                    format!("{e}; run the agent as the server's user or root")
                };
                db_error(
                    &super::shown(&datadir),
                    format!("binary log {} cannot be read: {why}", super::shown(&path)),
                )
            })?;
        let meta = file.metadata().map_err(|e| ClientError::Io {
            path: path.clone(),
            source: e,
        })?;
        if !meta.is_file() || std::os::unix::fs::MetadataExt::nlink(&meta) != 1 {
            return Err(db_error(
                &super::shown(&datadir),
                format!(
                    "binary log {} is not a file of its own (a FIFO, a device, or a hard link to another file); nothing was stored. Check the server's log directory",
                    super::shown(&path)
                ),
            ));
        }
        let attrs = super::file_attrs(format!("{}/{name}", folder(&datadir, "binlog")), &meta);
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
    check_target(connection, &datadir)?;
    let dump = super::versions_below(session, &folder(&datadir, "full"), true)
        .await?
        .into_iter()
        .filter(|v| point_in_time_ns.is_none_or(|t| v.backup_time_ns <= t))
        .max_by_key(|v| v.backup_time_ns)
        .and_then(|v| v.attrs.map(|a| a.path))
        .ok_or_else(|| {
            let when = point_in_time_ns.map_or_else(String::new, |ns| {
                format!(" before {}", crate::output::timefmt::rfc3339(ns))
            });
            db_error(
                &shown,
                format!("no full backup of this server is stored{when}; `tandem query db --inactive` lists them"),
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
    // Not written to the target's own binary log: its GTIDs would clash
    // with the source's replayed next.
    let load = Command::new("mariadb")
        .args(connection.args())
        .args(LOAD_SAFELY)
        .arg("--init-command=SET sql_log_bin=0")
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
    let logs = replay_chain(session, &datadir, &start_file).await?;
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

/// Refuses a restore target that is the backed-up server itself, holds
/// databases of its own, or runs scheduled events (they would fire while
/// the logs replay and change the data twice). `--all-databases` also
/// brings the source's accounts (the `mysql` schema) into the target.
fn check_target(connection: &Connection, datadir: &Path) -> Result<(), ClientError> {
    let shown = super::shown(datadir);
    if connection.socket.is_none() {
        return Err(db_error(
            &shown,
            "name the server to restore into with --socket (a fresh, empty server): the client's defaults usually reach the live one".into(),
        ));
    }
    let facts = query(
        connection,
        "SELECT @@datadir, @@event_scheduler, (SELECT count(*) FROM information_schema.schemata WHERE schema_name NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys'))",
    )?;
    let fields: Vec<&str> = facts.trim_end().split('\t').collect();
    let [target_dir, scheduler, databases] = fields[..] else {
        return Err(db_error(
            &shown,
            format!("unexpected answer from the target: {facts:?}"),
        ));
    };
    if Path::new(target_dir.trim_end_matches('/')) == datadir {
        return Err(db_error(
            &shown,
            "--socket reaches the backed-up server itself; restore into a fresh server".into(),
        ));
    }
    if databases != "0" {
        return Err(db_error(
            &shown,
            format!(
                "the target server already holds {databases} database(s); restore into a fresh, empty server"
            ),
        ));
    }
    if scheduler.eq_ignore_ascii_case("ON") {
        return Err(db_error(
            &shown,
            "the target server runs its event scheduler; start it with --event-scheduler=OFF for the restore".into(),
        ));
    }
    Ok(())
}

/// The stored binary logs to replay after a dump that starts in
/// `start_file`: that file and every later one of its base name, in
/// sequence, refusing a chain that lacks the first or has a gap (replay
/// would silently skip transactions).
async fn replay_chain(
    session: &Session,
    datadir: &Path,
    start_file: &str,
) -> Result<Vec<String>, ClientError> {
    let shown = super::shown(datadir);
    let (base, first) = binlog_sequence(start_file)
        .ok_or_else(|| db_error(&shown, format!("{start_file:?} is not a binary log name")))?;
    let mut logs: Vec<(u64, String)> =
        super::versions_below(session, &folder(datadir, "binlog"), true)
            .await?
            .into_iter()
            .filter_map(|v| v.attrs.map(|a| a.path))
            .filter_map(|path| {
                let (b, n) = binlog_sequence(path.rsplit('/').next()?)?;
                (b == base && n >= first).then_some((n, path.clone()))
            })
            .collect();
    logs.sort();
    logs.dedup_by_key(|(n, _)| *n);
    if logs.first().is_none_or(|(n, _)| *n != first) {
        return Err(db_error(
            &shown,
            format!(
                "binary log {start_file}, where the full backup's changes continue, is not stored; run `tandem backup db mariadb --binlogs` on the server"
            ),
        ));
    }
    if let Some(w) = logs.windows(2).find(|w| w[1].0 != w[0].0 + 1) {
        return Err(db_error(
            &shown,
            format!(
                "binary logs {base}.{:06} to {base}.{:06} are not stored; no point in time after {base}.{:06} can be restored from this full backup",
                w[0].0 + 1,
                w[1].0 - 1,
                w[0].0
            ),
        ));
    }
    Ok(logs.into_iter().map(|(_, path)| path).collect())
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
        .arg("--disable-log-bin")
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
    // Its messages are read while it runs, so a full pipe never stops it.
    let mut said = decoder
        .stderr
        .take()
        .ok_or("mariadb-binlog's errors are not piped")?;
    let messages = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut said, &mut text);
        text
    });
    let apply = Command::new("mariadb")
        .args(connection.args())
        .args(LOAD_SAFELY)
        .stdin(events)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("the mariadb client could not be started: {e}"))?;
    let status = decoder.wait().map_err(|e| format!("mariadb-binlog: {e}"))?;
    let decoder_said = messages.join().unwrap_or_default();
    // The applying side first: when it fails, the decoder only dies of a
    // closed pipe.
    if !apply.status.success() {
        return Err(format!(
            "replaying the binary logs failed: {}",
            String::from_utf8_lossy(&apply.stderr).trim()
        ));
    }
    if !status.success() {
        return Err(format!("mariadb-binlog failed: {}", decoder_said.trim()));
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
    fn binary_logs_are_ordered_by_number_not_text() {
        assert_eq!(binlog_sequence("binlog.000012"), Some(("binlog", 12)));
        assert_eq!(
            binlog_sequence("mysql-bin.1000000"),
            Some(("mysql-bin", 1_000_000))
        );
        assert!(binlog_sequence("binlog.000999") < binlog_sequence("binlog.1000000"));
        assert_eq!(binlog_sequence("binlog.index"), None);
        assert_eq!(binlog_sequence("binlog."), None);
    }

    #[test]
    fn binary_log_names_are_plain() {
        assert!(check_binlog_name("mysql-bin.000001").is_ok());
        for bad in ["", "..", ".hidden", "a/b", "a b", "x;rm"] {
            assert!(check_binlog_name(bad).is_err(), "{bad:?}");
        }
    }
}
