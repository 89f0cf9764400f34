//! `restore`: plan (select versions, place them safely under DEST, decide
//! replacement), then fetch chunk data in batches, decompressing and checking
//! every chunk's hash on both cores ([`fetch`]), while writer threads write
//! the files ([`writer`]).
//!
//! A file is written to a temporary name and renamed into place only when all
//! its chunks verified and its data is durable, so a damaged file never
//! appears half-written; it is reported by name (TDM1020E) and the other files
//! are restored.

mod direct;
mod fetch;
mod writer;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tandem_proto::ChunkId;
use tandem_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use self::fetch::{FetchJob, Parcel};

use crate::console::Console;
use crate::error::{ClientError, ExitStatus};
use crate::messages::Msg;
use crate::selection::Selection;
use crate::session::Session;
use crate::target::{PlacedDirs, safe_target};

/// What to do when a target exists (TSM REPLACE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Replace {
    /// Keep existing files; report them as skipped.
    No,
    /// Replace existing files, except read-only ones.
    Yes,
    /// Replace existing files, read-only ones too.
    All,
}

/// Restore settings.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// Which objects.
    pub selection: Selection,
    /// Where to (default: in place).
    pub dest: Option<PathBuf>,
    /// Versions active at this time (Unix ns).
    pub point_in_time_ns: Option<i64>,
    /// Consider inactive versions too (the newest version of each path wins).
    pub inactive: bool,
    /// Replacement rule.
    pub replace: Replace,
}

/// Figures of a restore.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreStats {
    /// Objects restored.
    pub restored: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Objects skipped (exist and not replaced).
    pub skipped: u64,
    /// Objects that failed (damaged data, unsafe paths, write errors).
    pub failed: u64,
    /// Wall time in seconds.
    pub elapsed_secs: f64,
}

/// A file to write.
#[derive(Debug)]
struct FileJob {
    path: String,
    target: PathBuf,
    chunks: Vec<ChunkId>,
    size: u64,
    attrs: pb::ObjectAttrs,
}

#[derive(Debug, Default)]
struct Plan {
    dirs: Vec<(PathBuf, pb::ObjectAttrs)>,
    files: Vec<FileJob>,
    links: Vec<(PathBuf, pb::ObjectAttrs)>,
}

async fn select_versions(
    session: &Session,
    req: &RestoreRequest,
) -> Result<Vec<pb::ObjectVersion>, ClientError> {
    let mut client = session.client();
    let mut stream = client
        .query_objects(session.request(pb::QueryObjectsRequest {
            filespace: String::new(),
            path_prefix: req.selection.prefix.clone(),
            include_inactive: req.inactive,
            point_in_time_ns: req.point_in_time_ns.unwrap_or(0),
            with_chunks: true,
        }))
        .await
        .map_err(|s| ClientError::server("listing stored objects", s))?
        .into_inner();
    // Newest selected version per path (versions arrive by path, then time).
    let mut newest: BTreeMap<String, pb::ObjectVersion> = BTreeMap::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|s| ClientError::server("listing stored objects", s))?;
        for v in batch.versions {
            let Some(path) = v.attrs.as_ref().map(|a| a.path.clone()) else {
                continue;
            };
            if req.selection.matches(&path) {
                newest.insert(path, v);
            }
        }
    }
    Ok(newest.into_values().collect())
}

/// Places every version under the destination; reports what cannot be placed.
fn plan(
    versions: Vec<pb::ObjectVersion>,
    req: &RestoreRequest,
    dest: &Path,
    dirs: &mut PlacedDirs,
    console: &Console,
    stats: &mut RestoreStats,
) -> Plan {
    let mut plan = Plan::default();
    for v in versions {
        let Some(attrs) = v.attrs else { continue };
        let Some(rel) = req.selection.relative(&attrs.path).map(str::to_string) else {
            continue;
        };
        if rel.is_empty() {
            continue; // SOURCE's own directory: it is DEST itself
        }
        let target = match safe_target(dest, &rel, dirs) {
            Ok(t) => t,
            Err(why) => {
                console.report(&Msg::escapes(&attrs.path, why), ExitStatus::Error);
                stats.failed += 1;
                continue;
            }
        };
        let kind = pb::ObjectKind::try_from(attrs.kind).unwrap_or(pb::ObjectKind::Unspecified);
        if kind == pb::ObjectKind::Directory {
            plan.dirs.push((target, attrs));
            continue;
        }
        // In a directory this restore made, nothing can be in the way.
        let existing = if dirs.in_new_dir(&target) {
            None
        } else {
            std::fs::symlink_metadata(&target).ok()
        };
        if let Some(existing) = existing {
            let skip = match req.replace {
                Replace::No => true,
                Replace::Yes => {
                    existing.permissions().readonly() && !existing.file_type().is_symlink()
                }
                Replace::All => false,
            };
            if existing.is_dir() {
                console.report(
                    &Msg::write_failed(&target.to_string_lossy(), "a directory is in the way"),
                    ExitStatus::Error,
                );
                stats.failed += 1;
                continue;
            }
            if skip {
                console.report(&Msg::exists(&target.to_string_lossy()), ExitStatus::Skipped);
                stats.skipped += 1;
                continue;
            }
        }
        match kind {
            pb::ObjectKind::File => {
                let chunks = v
                    .chunk_ids
                    .iter()
                    .filter_map(|c| ChunkId::from_slice(c).ok())
                    .collect();
                plan.files.push(FileJob {
                    path: attrs.path.clone(),
                    target,
                    chunks,
                    size: attrs.size,
                    attrs,
                });
            }
            pb::ObjectKind::Symlink => plan.links.push((target, attrs)),
            _ => {}
        }
    }
    plan
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The stored mtime (Unix nanoseconds, negative before 1970).
fn stored_mtime(attrs: &pb::ObjectAttrs) -> SystemTime {
    let offset = Duration::from_nanos(attrs.mtime_ns.unsigned_abs());
    if attrs.mtime_ns >= 0 {
        SystemTime::UNIX_EPOCH + offset
    } else {
        SystemTime::UNIX_EPOCH - offset
    }
}

/// Applies mode, owner (when root) and mtime by path: for directories and
/// symbolic links, whose attributes are set after their contents.
fn apply_attrs(target: &Path, attrs: &pb::ObjectAttrs, is_link: bool) -> std::io::Result<()> {
    if is_root() {
        std::os::unix::fs::lchown(target, Some(attrs.uid), Some(attrs.gid))?;
    }
    let mtime = filetime::FileTime::from_system_time(stored_mtime(attrs));
    if is_link {
        return filetime::set_symlink_file_times(target, mtime, mtime);
    }
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(attrs.mode))?;
    filetime::set_file_times(target, mtime, mtime)
}

/// Applies owner (when root), mode and mtime through a written file's open
/// descriptor, before the batch's sync makes them durable with the data, and
/// without a path lookup per call. As in [`apply_attrs`], the owner goes
/// first: changing it clears set-user-ID bits.
fn apply_file_attrs(file: &std::fs::File, attrs: &pb::ObjectAttrs) -> std::io::Result<()> {
    if is_root() {
        std::os::unix::fs::fchown(file, Some(attrs.uid), Some(attrs.gid))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(attrs.mode))?;
    let mtime = stored_mtime(attrs);
    file.set_times(
        std::fs::FileTimes::new()
            .set_accessed(mtime)
            .set_modified(mtime),
    )
}

fn restore_link(target: &Path, attrs: &pb::ObjectAttrs) -> std::io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".tandem-restore-")
        .make_in(dir, |p| std::os::unix::fs::symlink(&attrs.link_target, p))?;
    tmp.persist(target).map_err(|e| e.error)?;
    apply_attrs(target, attrs, true)
}

/// Restores the selected objects.
///
/// # Errors
/// Server and connection failures; problems with single objects are reported
/// on `console` and counted.
pub async fn run(
    session: &Session,
    req: RestoreRequest,
    console: &Console,
) -> Result<RestoreStats, ClientError> {
    let started = Instant::now();
    let mut stats = RestoreStats::default();
    let versions = select_versions(session, &req).await?;
    if versions.is_empty() {
        console.report(&Msg::no_match(&req.selection.prefix), ExitStatus::Skipped);
        return Ok(stats);
    }
    let dest = req
        .dest
        .clone()
        .unwrap_or_else(|| PathBuf::from(&req.selection.base));
    let mut placed = PlacedDirs::default();
    if std::fs::symlink_metadata(&dest).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        placed.created(&dest);
    }
    std::fs::create_dir_all(&dest).map_err(|e| ClientError::Io {
        path: dest.clone(),
        source: e,
    })?;
    let plan = plan(versions, &req, &dest, &mut placed, console, &mut stats);
    let Plan { dirs, files, links } = plan;
    let (tx, mut rx) = mpsc::channel::<Parcel>(4);
    let order: Vec<FetchJob> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (i, f.chunks.clone(), f.size))
        .collect();
    let fetcher = tokio::spawn(fetch::fetch(session.clone(), order, tx));
    tokio::task::block_in_place(|| {
        writer::write_files(&files, &dest, console, &mut stats, || rx.blocking_recv());
        for (target, attrs) in &links {
            match restore_link(target, attrs) {
                Ok(()) => stats.restored += 1,
                Err(e) => {
                    console.report(
                        &Msg::write_failed(&target.to_string_lossy(), e),
                        ExitStatus::Error,
                    );
                    stats.failed += 1;
                }
            }
        }
        // Directories last, deepest first, so writing into them does not
        // disturb their restored mtime and read-only modes do not block files.
        for (target, attrs) in dirs.iter().rev() {
            let made = std::fs::create_dir(target).or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists && target.is_dir() {
                    Ok(())
                } else {
                    Err(e)
                }
            });
            match made.and_then(|()| apply_attrs(target, attrs, false)) {
                Ok(()) => stats.restored += 1,
                Err(e) => {
                    console.report(
                        &Msg::write_failed(&target.to_string_lossy(), e),
                        ExitStatus::Error,
                    );
                    stats.failed += 1;
                }
            }
        }
        // The renames, links and directories are durable too.
        if let Err(e) = writer::sync_dest(&dest) {
            console.report(
                &Msg::write_failed(&dest.to_string_lossy(), format!("syncing failed: {e}")),
                ExitStatus::Error,
            );
        }
    });
    fetcher
        .await
        .map_err(|e| ClientError::Usage(format!("fetch task failed: {e}")))?;
    stats.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(stats)
}
