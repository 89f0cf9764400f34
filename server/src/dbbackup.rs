//! Catalog backups (TSM BACKUP DB): one copy of the live catalog, taken on
//! demand (`tandem-admin backup db`) or on the schedule the configuration
//! sets (`db_backup_dir`), named so that copies sort by time, and the
//! retention of the newest `db_backup_keep` copies.
//!
//! The containers are not copied: they only ever grow or are compacted,
//! and `tandem-server restore-db` reconciles an older catalog with them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::actlog::{self, ServerMsg};
use crate::catalog::Catalog;
use crate::error::ServerError;
use crate::state::ServerState;

/// The time format in a copy's name: sortable, to the millisecond.
const STAMP_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";

/// One catalog copy that was written.
#[derive(Debug, Clone)]
pub struct DbBackupTaken {
    /// The copy's file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

/// The file name of a copy of server `server`'s catalog taken at `at`.
#[must_use]
pub fn copy_name(server: &str, at: DateTime<Utc>) -> String {
    format!("tandem-db-{server}-{}.sqlite", at.format(STAMP_FORMAT))
}

/// When the copy named `name` was taken, if it is a copy of `server`'s
/// catalog by its name.
fn taken_at(name: &str, server: &str) -> Option<DateTime<Utc>> {
    let stamp = name
        .strip_prefix("tandem-db-")?
        .strip_prefix(server)?
        .strip_prefix('-')?
        .strip_suffix(".sqlite")?;
    NaiveDateTime::parse_from_str(stamp, STAMP_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

/// Writes a copy of `catalog` into `dir`, which must be an existing
/// directory given by its absolute path, and syncs it and the directory.
/// The copy is written under a `.partial` name and renamed only when whole
/// and synced, so a failed copy never looks like a copy (nor counts for
/// the schedule or the retention). Blocks for as long as the copy takes.
///
/// # Errors
/// [`ServerError::InvalidArgument`] for an unusable `dir`,
/// [`ServerError::FailedPrecondition`] for one others could replace or
/// write in; catalog errors.
pub fn take(catalog: &Catalog, server: &str, dir: &Path) -> Result<DbBackupTaken, ServerError> {
    if !dir.is_absolute() || !dir.is_dir() {
        return Err(ServerError::InvalidArgument(format!(
            "{} is not an existing directory given by its absolute path on the server's machine; create it first",
            dir.display()
        )));
    }
    // Whoever could replace the directory or put files in it could hand a
    // recovery a catalog of their making, or make the retention delete the
    // real copies: this user's or root's, closed to others' writes (even
    // sticky), and no step on the way another user could replace.
    refuse_open_copies_dir(dir)?;
    let path = dir.join(copy_name(server, Utc::now()));
    let partial = PathBuf::from(format!("{}.partial", path.display()));
    let written = catalog
        .backup_to(&partial)
        .map_err(ServerError::from)
        .and_then(|bytes| {
            std::fs::rename(&partial, &path).map_err(|source| ServerError::Setup {
                context: format!("renaming {} into place", partial.display()),
                source,
            })?;
            Ok(bytes)
        });
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    // Only this user's files count as copies (`copies_in`): on a file
    // system that shows every file as another's, a copy would never count,
    // and the schedule would take one after another.
    if let Err(e) = refuse_foreign_copy(&path) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    // The copy's directory entry is durable too.
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(DbBackupTaken { path, bytes })
}

/// Refuses a copies directory others may write in (sticky or not) or
/// that belongs to another user (not root), and one that a step on the way
/// lets another user replace.
fn refuse_open_copies_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::MetadataExt;
    let what = "the catalog copies' directory";
    let meta = std::fs::metadata(dir).map_err(|source| ServerError::Setup {
        context: format!("cannot read {what} {}", dir.display()),
        source,
    })?;
    let me = nix::unistd::geteuid().as_raw();
    let why = "others could put copies of their own there or have the real ones pruned";
    if meta.uid() != me && meta.uid() != 0 {
        return Err(ServerError::FailedPrecondition(format!(
            "{what} {} belongs to uid {}, not to this user (uid {me}) or root: {why}; choose a directory of this user's",
            dir.display(),
            meta.uid(),
        )));
    }
    if meta.mode() & tandem_os::way::OTHERS_WRITE != 0 {
        return Err(ServerError::FailedPrecondition(format!(
            "others may write in {what} {} (mode {:04o}): {why}; run `chmod go-w {}`",
            dir.display(),
            meta.mode() & 0o7777,
            dir.display()
        )));
    }
    crate::state::refuse_replaceable(dir, what, me)
}

/// Refuses a copy just written that does not show as this user's file.
fn refuse_foreign_copy(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(path)
        .map_err(|source| ServerError::Setup {
            context: format!("cannot read {}", path.display()),
            source,
        })?
        .uid();
    let me = nix::unistd::geteuid().as_raw();
    if owner != me {
        return Err(ServerError::FailedPrecondition(format!(
            "the copy {} shows as uid {owner}'s, not this user's (uid {me}), so it could not be told from a file someone else put there; it was removed. Keep catalog copies on a file system that records owners",
            path.display()
        )));
    }
    Ok(())
}

/// The copies of `server`'s catalog in `dir`, oldest first, with when each
/// was taken (by its name). Other files are left alone.
///
/// # Errors
/// I/O errors reading `dir`.
pub fn copies_in(dir: &Path, server: &str) -> std::io::Result<Vec<(DateTime<Utc>, PathBuf)>> {
    let mut copies = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        // Only files this user wrote: another's could be a forged copy. A
        // file gone meanwhile is not one.
        if let Some(at) = name.to_str().and_then(|n| taken_at(n, server))
            && entry.file_type()?.is_file()
            && entry.metadata().is_ok_and(|m| {
                std::os::unix::fs::MetadataExt::uid(&m) == nix::unistd::geteuid().as_raw()
            })
        {
            copies.push((at, entry.path()));
        }
    }
    copies.sort();
    Ok(copies)
}

/// Deletes all but the newest `keep` copies of `server`'s catalog in `dir`
/// and returns what it deleted.
///
/// # Errors
/// I/O errors; copies deleted before the error stay deleted.
pub fn prune(dir: &Path, server: &str, keep: usize) -> std::io::Result<Vec<PathBuf>> {
    let copies = copies_in(dir, server)?;
    let surplus = copies.len().saturating_sub(keep.max(1));
    let mut deleted = Vec::new();
    for (_, path) in copies.into_iter().take(surplus) {
        std::fs::remove_file(&path)?;
        deleted.push(path);
    }
    Ok(deleted)
}

/// Takes a catalog copy into `db_backup_dir` whenever the newest one there
/// is `db_backup_interval_hours` old (at once when there is none, so a
/// restart never skips one), keeps the newest `db_backup_keep`, until
/// shutdown. A failed copy is logged (TDM0427E) and tried again within the
/// hour.
pub async fn schedule(state: Arc<ServerState>, shutdown: CancellationToken) {
    let Some(dir) = state.config.db_backup_dir.clone() else {
        return;
    };
    let hours = state.config.db_backup_interval_hours;
    if hours == 0 {
        return;
    }
    let period = std::time::Duration::from_secs(hours * 3600);
    let retry = period.min(std::time::Duration::from_secs(3600));
    let server = state.config.name.clone();
    loop {
        let newest = copies_in(&dir, &server)
            .ok()
            .and_then(|copies| copies.last().map(|(at, _)| *at));
        let wait = newest.map_or(std::time::Duration::ZERO, |at| {
            let age = (Utc::now() - at).to_std().unwrap_or_default();
            period.saturating_sub(age)
        });
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let run_state = state.clone();
        let (run_dir, run_server) = (dir.clone(), server.clone());
        let keep = state.config.db_backup_keep;
        let result = tokio::task::spawn_blocking(move || {
            let taken = take(&run_state.repo.catalog, &run_server, &run_dir)?;
            let pruned =
                prune(&run_dir, &run_server, keep).map_err(|source| ServerError::Setup {
                    context: format!("pruning catalog copies in {}", run_dir.display()),
                    source,
                })?;
            Ok::<_, ServerError>((taken, pruned.len()))
        })
        .await
        .map_err(ServerError::from)
        .and_then(|r| r);
        match result {
            Ok((taken, pruned)) => {
                actlog::record(
                    &state.repo.catalog,
                    ServerMsg::CatalogBackedUp,
                    "",
                    "",
                    format!(
                        "catalog backed up to {} ({} bytes) (scheduled; {pruned} older copy(ies) removed, newest {keep} kept)",
                        taken.path.display(),
                        taken.bytes
                    ),
                )
                .await;
            }
            Err(e) => {
                actlog::record(
                    &state.repo.catalog,
                    ServerMsg::CatalogBackupFailed,
                    "",
                    "",
                    format!(
                        "scheduled catalog backup to {} failed: {e}; trying again in {} minute(s)",
                        dir.display(),
                        retry.as_secs() / 60
                    ),
                )
                .await;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(retry) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_names_sort_by_time_and_belong_to_their_server() {
        let at = DateTime::parse_from_rfc3339("2026-12-03T08:09:10.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let name = copy_name("PRIMARY", at);
        assert_eq!(name, "tandem-db-PRIMARY-20261203T080910.123Z.sqlite");
        assert_eq!(taken_at(&name, "PRIMARY"), Some(at));
        assert_eq!(taken_at(&name, "PRIM"), None);
        assert_eq!(taken_at("tandem-db-PRIMARY-junk.sqlite", "PRIMARY"), None);
    }

    #[test]
    fn prune_keeps_the_newest_copies_and_leaves_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for stamp in [
            "20260101T000000.000Z",
            "20260301T000000.000Z",
            "20260201T000000.000Z",
        ] {
            std::fs::write(dir.path().join(format!("tandem-db-A-{stamp}.sqlite")), "x").unwrap();
        }
        std::fs::write(
            dir.path().join("tandem-db-B-20250101T000000.000Z.sqlite"),
            "x",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        // A copy cut short is no copy.
        std::fs::write(
            dir.path()
                .join("tandem-db-A-20270101T000000.000Z.sqlite.partial"),
            "x",
        )
        .unwrap();
        let deleted = prune(dir.path(), "A", 2).unwrap();
        assert_eq!(
            deleted,
            vec![dir.path().join("tandem-db-A-20260101T000000.000Z.sqlite")]
        );
        let left = copies_in(dir.path(), "A").unwrap();
        assert_eq!(left.len(), 2);
        assert!(
            dir.path()
                .join("tandem-db-B-20250101T000000.000Z.sqlite")
                .exists()
        );
        assert!(dir.path().join("notes.txt").exists());
    }
}
