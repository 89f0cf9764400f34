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

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use tandem_proto::pb;

use super::DbKind;
use crate::backup::BackupStats;
use crate::error::ClientError;
use crate::logon::session::Session;
use crate::options::ClientOptions;
use crate::output::console::Console;
use crate::output::messages::Msg;
use crate::restore::RestoreStats;

/// How long a copy waits for a writer's lock before it gives up.
const LOCK_WAIT: Duration = Duration::from_secs(120);
/// Pause between tries while the source is locked.
const LOCK_RETRY: Duration = Duration::from_millis(50);

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
        let db = std::fs::canonicalize(path).map_err(|e| ClientError::Database {
            database: path.display().to_string(),
            message: format!("cannot be opened: {e}; name an existing database file"),
        })?;
        let meta = std::fs::metadata(&db).map_err(|e| ClientError::Io {
            path: db.clone(),
            source: e,
        })?;
        if !meta.is_file() {
            return Err(ClientError::Database {
                database: db.display().to_string(),
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
                database: db.display().to_string(),
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
            crate::error::ExitStatus::Success,
        );
        total.inspected += stats.inspected;
        total.backed_up += stats.backed_up;
        total.bytes_scanned += stats.bytes_scanned;
        total.bytes_sent += stats.bytes_sent;
        total.bytes_deduplicated += stats.bytes_deduplicated;
        total.elapsed_secs += stats.elapsed_secs;
    }
    Ok(total)
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
    if dest.symlink_metadata().is_ok() && !replace {
        return Err(ClientError::Database {
            database: name.display().to_string(),
            message: format!(
                "{} exists; restore elsewhere, or give --replace after stopping every program that uses it",
                dest.display()
            ),
        });
    }
    let parent = dest.parent().unwrap_or(Path::new("/")).to_path_buf();
    let (_stage, restored, stats) = super::restore_to_staging(
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
            database: name.display().to_string(),
            message: format!("the restored copy is not sound, nothing was replaced: {message}"),
        })?;
    put_in_place(&restored, &dest)?;
    console.report(
        &Msg::db_restored(DbKind::Sqlite.name(), &name, &dest),
        crate::error::ExitStatus::Success,
    );
    Ok(stats)
}

/// Where a restore of `name` goes: `dest`, or inside it when it is a
/// directory, or `name` itself.
fn destination(name: &Path, dest: Option<&Path>) -> Result<PathBuf, ClientError> {
    let Some(dest) = dest else {
        return Ok(name.to_path_buf());
    };
    let dest = crate::paths::absolute(dest).map_err(|e| ClientError::Io {
        path: dest.to_path_buf(),
        source: e,
    })?;
    if dest.is_dir() {
        return Ok(dest.join(name.file_name().unwrap_or_default()));
    }
    Ok(dest)
}

/// Renames the checked copy over `dest`, first removing the files SQLite
/// keeps beside a database, which belong to the database being replaced.
fn put_in_place(restored: &Path, dest: &Path) -> Result<(), ClientError> {
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = dest.as_os_str().to_os_string();
        side.push(suffix);
        match std::fs::remove_file(&side) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ClientError::Io {
                    path: side.into(),
                    source: e,
                });
            }
            _ => {}
        }
    }
    std::fs::rename(restored, dest)
        .and_then(|()| super::sync_parent(dest))
        .map_err(|e| ClientError::Io {
            path: dest.to_path_buf(),
            source: e,
        })
}

/// A private directory for one staged copy, removed when dropped.
fn staging_dir(options: &ClientOptions) -> Result<tempfile::TempDir, ClientError> {
    let root = options.state_dir().join("staging");
    std::fs::create_dir_all(&root)
        .and_then(|()| tempfile::Builder::new().prefix("sqlite-").tempdir_in(&root))
        .map_err(|e| ClientError::Io {
            path: root,
            source: e,
        })
}

/// Copies the database at `db` to a new database at `copy` in one step of
/// the online backup API, and checks the copy.
fn snapshot(db: &Path, copy: &Path) -> Result<(), String> {
    // Read-write without create: a missing file is an error rather than a
    // new empty database, and a hot journal left by a crashed writer is
    // rolled back as any connection would.
    let source = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot be opened: {e}"))?;
    source
        .query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
        .map_err(|e| format!("cannot be read as a SQLite database: {e}"))?;
    let mut target = Connection::open(copy).map_err(|e| format!("staging copy: {e}"))?;
    {
        let backup =
            Backup::new(&source, &mut target).map_err(|e| format!("cannot start the copy: {e}"))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match backup.step(-1).map_err(|e| format!("copy failed: {e}"))? {
                StepResult::Done => break,
                StepResult::Busy | StepResult::Locked if Instant::now() < deadline => {
                    std::thread::sleep(LOCK_RETRY);
                }
                StepResult::Busy | StepResult::Locked => {
                    return Err(format!(
                        "stayed locked by a writer for {} s; run the backup again when it is less busy",
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

/// Runs `PRAGMA integrity_check` on the database at `path`.
fn check_integrity(path: &Path) -> Result<(), String> {
    // Read-write: a read-only connection cannot open a WAL-mode copy that
    // has no `-shm` file yet. The copy is ours, in the staging directory.
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
