//! The SQLite agent: `backup db sqlite` and `restore db sqlite`.
//!
//! The copy is taken with SQLite's online backup API in one step, that is
//! inside one read transaction of the source: it is the database as some
//! committed transaction left it, never a mix of two. Writers keep writing
//! meanwhile in WAL mode; in rollback-journal mode they wait for the copy
//! (their busy timeout), as they would for any long reader. The copy is
//! staged in the client's state directory (mode 0700), checked with
//! `PRAGMA quick_check`, and stored byte for byte; a restore checks it again
//! with `PRAGMA integrity_check` before it is renamed into place.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use tandem_proto::pb;

use super::DbKind;
use crate::backup::BackupStats;
use crate::error::{ClientError, ExitStatus};
use crate::logon::session::Session;
use crate::options::ClientOptions;
use crate::output::console::Console;
use crate::output::messages::Msg;
use crate::restore::RestoreStats;

/// How long a copy waits for a writer's lock before it gives up.
const LOCK_WAIT: Duration = Duration::from_secs(120);
/// Pause between tries while the source is locked.
const LOCK_RETRY: Duration = Duration::from_millis(50);
/// A staged copy this old was left by a backup that was killed.
const ABANDONED_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Backs up each SQLite database in `paths`, one backup each; a database
/// that cannot be copied stops the command with its name and the reason.
///
/// # Errors
/// A path that is not a readable SQLite database, staging failures, server
/// and connection failures.
pub async fn backup(
    session: &Session,
    options: &ClientOptions,
    paths: &[PathBuf],
    console: &Console,
) -> Result<BackupStats, ClientError> {
    let mut total = BackupStats::default();
    for path in paths {
        total.inspected += 1;
        match backup_one(session, options, path, console).await {
            Ok(stats) => {
                total.backed_up += stats.backed_up;
                total.bytes_scanned += stats.bytes_scanned;
                total.bytes_sent += stats.bytes_sent;
                total.bytes_deduplicated += stats.bytes_deduplicated;
                total.elapsed_secs += stats.elapsed_secs;
            }
            // This database's own problem: said, counted, and the others
            // are still backed up (exit 12 at the end).
            Err(e @ (ClientError::Database { .. } | ClientError::Io { .. })) => {
                console.report(
                    &Msg {
                        id: e.msg_id(),
                        text: e.to_string(),
                    },
                    ExitStatus::Error,
                );
                total.failed += 1;
                *total.not_backed_up.entry("database error").or_default() += 1;
            }
            Err(other) => return Err(other),
        }
    }
    Ok(total)
}

/// Copies, checks and stores one database.
async fn backup_one(
    session: &Session,
    options: &ClientOptions,
    path: &Path,
    console: &Console,
) -> Result<BackupStats, ClientError> {
    let db = std::fs::canonicalize(path).map_err(|e| ClientError::Database {
        database: super::shown(path),
        message: format!("cannot be opened: {e}; name an existing database file"),
    })?;
    let meta = std::fs::metadata(&db).map_err(|e| ClientError::Io {
        path: db.clone(),
        source: e,
    })?;
    if !meta.is_file() {
        return Err(ClientError::Database {
            database: super::shown(&db),
            message: "is not a regular file; name the database file itself".into(),
        });
    }
    let staging = staging_dir(options)?;
    let copy = staging.path().join("copy.db");
    let (from, to) = (db.clone(), copy.clone());
    let taken_ns = super::now_ns();
    tokio::task::spawn_blocking(move || snapshot(&from, &to))
        .await
        .map_err(|e| ClientError::task_failed("SQLite copy", e))?
        .map_err(|message| ClientError::Database {
            database: super::shown(&db),
            message,
        })?;
    let file = std::fs::File::open(&copy).map_err(|e| ClientError::Io {
        path: copy.clone(),
        source: e,
    })?;
    let attrs = pb::ObjectAttrs {
        path: DbKind::Sqlite.object_path(&db),
        kind: pb::ObjectKind::File as i32,
        mode: meta.mode() & 0o7777,
        mtime_ns: taken_ns,
        uid: meta.uid(),
        gid: meta.gid(),
        ..Default::default()
    };
    let stats = super::store_stream(
        session,
        options,
        DbKind::Sqlite.filespace(),
        &db,
        file,
        move || Ok(attrs),
        console,
    )
    .await?;
    console.report(
        &Msg::db_backed_up(DbKind::Sqlite.name(), &db, stats.bytes_scanned),
        ExitStatus::Success,
    );
    Ok(stats)
}

/// Restores the copy of database `name` that `point_in_time_ns` selects to
/// `dest` (`name` itself by default; an existing directory receives the
/// database under its own file name). An existing file is replaced only
/// with `replace`, together with its stale `-wal`, `-shm` and `-journal`
/// files, which SQLite would otherwise apply to the restored database.
///
/// # Errors
/// The destination exists without `replace`; no such copy; the restored
/// copy fails `PRAGMA integrity_check`; server and connection failures.
pub async fn restore(
    session: &Session,
    name: &Path,
    dest: Option<&Path>,
    point_in_time_ns: Option<i64>,
    replace: bool,
    console: &Console,
) -> Result<RestoreStats, ClientError> {
    let name = super::stored_name(name)?;
    let dest = destination(&name, dest)?;
    let taken = std::iter::once(dest.clone())
        .chain(SIDE_FILES.iter().map(|suffix| side_file(&dest, suffix)))
        .find(|p| p.symlink_metadata().is_ok());
    if let Some(taken) = taken
        && !replace
    {
        return Err(ClientError::Database {
            database: super::shown(&name),
            message: format!(
                "{} exists; restore elsewhere, or give --replace after stopping every program that uses the database",
                super::shown(&taken)
            ),
        });
    }
    let parent = dest.parent().unwrap_or(Path::new("/")).to_path_buf();
    if !parent.is_dir() {
        return Err(ClientError::Database {
            database: super::shown(&name),
            message: format!(
                "the destination's directory {} does not exist; create it first",
                super::shown(&parent)
            ),
        });
    }
    let (stage, restored, stats) = super::restore_to_staging(
        session,
        DbKind::Sqlite,
        &name,
        &parent,
        point_in_time_ns,
        console,
    )
    .await?;
    let checked = restored.clone();
    tokio::task::spawn_blocking(move || check_integrity(&checked))
        .await
        .map_err(|e| ClientError::task_failed("SQLite check", e))?
        .map_err(|message| ClientError::Database {
            database: super::shown(&name),
            message: format!("the restored copy is not sound, nothing was replaced: {message}"),
        })?;
    put_in_place(&restored, &dest, stage.path())?;
    console.report(
        &Msg::db_restored(DbKind::Sqlite.name(), &name, &dest),
        ExitStatus::Success,
    );
    Ok(stats)
}

/// Where a restore of `name` goes: `dest`, or inside it when it is a
/// directory, or `name` itself.
fn destination(name: &Path, dest: Option<&Path>) -> Result<PathBuf, ClientError> {
    let Some(dest) = dest else {
        return Ok(name.to_path_buf());
    };
    let names_directory = dest.as_os_str().as_encoded_bytes().ends_with(b"/");
    let dest = crate::paths::absolute(dest).map_err(|e| ClientError::Io {
        path: dest.to_path_buf(),
        source: e,
    })?;
    if dest.is_dir() {
        return Ok(dest.join(name.file_name().unwrap_or_default()));
    }
    if names_directory {
        return Err(ClientError::Database {
            database: super::shown(name),
            message: format!(
                "{} names a directory that does not exist; create it, or name the file without the trailing /",
                super::shown(&dest)
            ),
        });
    }
    Ok(dest)
}

/// The files SQLite keeps beside a database, which belong to it.
const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

fn side_file(db: &Path, suffix: &str) -> PathBuf {
    let mut side = db.as_os_str().to_os_string();
    side.push(suffix);
    PathBuf::from(side)
}

/// Renames the checked copy over `dest`. The files SQLite keeps beside the
/// database being replaced are first moved into the staging directory
/// `stage` (same filesystem), so SQLite cannot replay them into the
/// restored copy; if the rename fails they are moved back, and the
/// database being replaced is left whole. A symlink at `dest` is replaced
/// itself; what it points to is not touched.
fn put_in_place(restored: &Path, dest: &Path, stage: &Path) -> Result<(), ClientError> {
    let io = |path: &Path, e: std::io::Error| ClientError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let put_back = |moved: &[(PathBuf, PathBuf)]| {
        for (from, to) in moved {
            let _ = std::fs::rename(to, from);
        }
    };
    for suffix in SIDE_FILES {
        let side = side_file(dest, suffix);
        let aside = stage.join(format!("replaced{suffix}"));
        match std::fs::rename(&side, &aside) {
            Ok(()) => moved.push((side, aside)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                put_back(&moved);
                return Err(io(&side, e));
            }
        }
    }
    if let Err(e) = std::fs::rename(restored, dest) {
        put_back(&moved);
        return Err(ClientError::Database {
            database: super::shown(dest),
            message: format!(
                "the checked copy could not take its place ({e}); the database there is unchanged. A mount point cannot be replaced: restore to another path and copy it"
            ),
        });
    }
    super::sync_parent(dest).map_err(|e| io(dest, e))
}

/// A private directory for one staged copy, removed when dropped.
/// Both it and `state_dir/staging` are the user's alone (0700): the copy
/// is the whole database. Copies left by a backup that was killed (a day
/// old or more) are removed first.
fn staging_dir(options: &ClientOptions) -> Result<tempfile::TempDir, ClientError> {
    use std::os::unix::fs::PermissionsExt;
    let root = super::staging_root(options)?;
    remove_abandoned(&root);
    tempfile::Builder::new()
        .prefix("sqlite-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&root)
        .map_err(|e| ClientError::Io {
            path: root.clone(),
            source: e,
        })
}

/// Removes staged copies a killed backup left in `root`, once they are a
/// day old (a running backup's copy is younger).
fn remove_abandoned(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ABANDONED_AFTER);
        if old && entry.file_name().to_string_lossy().starts_with("sqlite-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Copies the database at `db` to a new database at `copy` in one step of
/// the online backup API, and checks the copy.
fn snapshot(db: &Path, copy: &Path) -> Result<(), String> {
    // Read-only: a missing file is an error rather than a new empty
    // database, and the database file is never written. (In WAL mode SQLite
    // makes the `-wal` and `-shm` files it reads through if a clean close
    // removed them, and a read-only connection leaves them, empty; as root
    // they are given the database's owner.) A hot journal left by a crashed
    // writer is not rolled back here: its content is the database owner's
    // to write, and a rollback deletes the "super-journal" the journal
    // names, wherever that is, as this process (often root).
    let source = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot be opened: {e}"))?;
    source
        .query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
        .map_err(|e| explain_read_failure(db, &e, "cannot be read as a SQLite database"))?;
    // Made 0600 before SQLite opens it: the copy holds the whole database.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(copy)
        .map_err(|e| format!("staging copy: {e}"))?;
    let mut target = Connection::open(copy).map_err(|e| format!("staging copy: {e}"))?;
    {
        let backup =
            Backup::new(&source, &mut target).map_err(|e| format!("cannot start the copy: {e}"))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match backup
                .step(-1)
                .map_err(|e| explain_read_failure(db, &e, "copy failed"))?
            {
                StepResult::Done => break,
                StepResult::Busy | StepResult::Locked if Instant::now() < deadline => {
                    std::thread::sleep(LOCK_RETRY);
                }
                StepResult::Busy | StepResult::Locked => {
                    return Err(format!(
                        "stayed locked for {} s: a writer held it all that time, or a program keeps it in exclusive locking mode (PRAGMA locking_mode), which no other connection can read; run the backup when it is less busy, or stop that program",
                        LOCK_WAIT.as_secs()
                    ));
                }
                // One step of every page ends with Done; More cannot end it.
                _ => {}
            }
        }
    }
    let verdict: String = target
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| format!("the copy cannot be checked: {e}"))?;
    if verdict != "ok" {
        return Err(format!(
            "the copy fails PRAGMA quick_check ({verdict}); the database itself may be damaged"
        ));
    }
    target
        .close()
        .map_err(|(_, e)| format!("staging copy: {e}"))
}

/// What went wrong reading the source database `db`, with what to do when
/// it is a hot journal this agent will not roll back.
fn explain_read_failure(db: &Path, e: &rusqlite::Error, what: &str) -> String {
    if e.sqlite_error().map(|f| f.extended_code) == Some(rusqlite::ffi::SQLITE_READONLY_ROLLBACK) {
        return format!(
            "has a hot journal ({}-journal): a writer stopped in the middle of a transaction. The backup does not roll it back for the application; let the application open the database once (or run `sqlite3 {} 'PRAGMA quick_check'` as the database's owner), then back up again",
            db.display(),
            shell_quoted(db)
        );
    }
    format!("{what}: {e}")
}

/// `path` in single quotes for a shell, as advice to copy and paste.
fn shell_quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// Runs `PRAGMA integrity_check` on the database at `path`.
fn check_integrity(path: &Path) -> Result<(), String> {
    // Read-write: the copy is ours, in the staging directory, and a
    // read-write connection to a WAL-mode copy removes the `-wal` and
    // `-shm` files it makes when it closes (a read-only one leaves them).
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| e.to_string())?;
    let verdict: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if verdict == "ok" {
        Ok(())
    } else {
        Err(format!("PRAGMA integrity_check says {verdict}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database in rollback-journal mode whose last transaction was cut
    /// off: the database and its journal, copied while the writer held the
    /// transaction open, make a hot journal nobody holds a lock for.
    fn hot_journal_db(dir: &Path) -> PathBuf {
        let live = dir.join("live.db");
        let writer = Connection::open(&live).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode=DELETE; PRAGMA cache_size=1;
                 CREATE TABLE t(x BLOB);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<200)
                 INSERT INTO t SELECT randomblob(1000) FROM n;",
            )
            .unwrap();
        writer
            .execute_batch("BEGIN; UPDATE t SET x = randomblob(1000);")
            .unwrap();
        let crashed = dir.join("crashed.db");
        std::fs::copy(&live, &crashed).unwrap();
        std::fs::copy(dir.join("live.db-journal"), dir.join("crashed.db-journal")).unwrap();
        writer.execute_batch("ROLLBACK").unwrap();
        crashed
    }

    #[test]
    fn a_hot_journal_is_refused_and_nothing_of_the_source_changes() {
        let dir = tempfile::tempdir().unwrap();
        let db = hot_journal_db(dir.path());
        let journal = dir.path().join("crashed.db-journal");
        let (db_before, journal_before) = (
            std::fs::read(&db).unwrap(),
            std::fs::read(&journal).unwrap(),
        );
        let err = snapshot(&db, &dir.path().join("copy.db")).unwrap_err();
        assert!(err.contains("hot journal"), "{err}");
        assert!(err.contains("as the database's owner"), "{err}");
        assert_eq!(std::fs::read(&db).unwrap(), db_before);
        assert_eq!(std::fs::read(&journal).unwrap(), journal_before);
    }

    /// Makes a database at `db` with `setup` (which leaves x = `value` in
    /// table t), closes it, copies it with [`snapshot`], and checks that the
    /// copy holds the value and the database's file is unchanged.
    fn copied_unchanged(db: &Path, setup: &str, value: i64) {
        Connection::open(db).unwrap().execute_batch(setup).unwrap();
        let before = std::fs::read(db).unwrap();
        let copy = db.with_extension("copy");
        snapshot(db, &copy).unwrap();
        let copied: i64 = Connection::open(&copy)
            .unwrap()
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(copied, value);
        assert_eq!(std::fs::read(db).unwrap(), before);
    }

    #[test]
    fn a_wal_database_closed_cleanly_is_copied_and_its_file_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("it's.db");
        copied_unchanged(
            &db,
            "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (7);",
            7,
        );
        assert_eq!(
            shell_quoted(&db),
            format!("'{}'", db.display()).replace("it's", r"it'\''s")
        );
    }

    #[test]
    fn a_database_without_a_journal_is_copied_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        copied_unchanged(
            &dir.path().join("app.db"),
            "CREATE TABLE t(x); INSERT INTO t VALUES (42);",
            42,
        );
    }
}
