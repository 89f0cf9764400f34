//! `restore`: plan (select versions, place them safely under DEST, decide
//! replacement), then fetch chunk data in batches, decompressing and checking
//! every chunk's hash on both cores ([`fetch`]), while writer threads write
//! the files ([`writer`]).
//!
//! A file is written to a temporary name and renamed into place only when all
//! its chunks verified and its data is durable, so a damaged file never
//! appears half-written; it is reported by name (TDM1020E) and the other files
//! are restored. Everything happens relative to directory descriptors opened
//! from DEST downwards without following links ([`dest`]), so nothing is
//! written, changed or followed outside DEST; attributes are set in the order
//! that keeps mode and ACL mask exact ([`attrs`]).

mod attrs;
mod budget;
mod dest;
mod dircache;
mod direct;
mod fetch;
mod newest;
mod repair;
mod sources;
mod vault_repair;
mod writer;

pub use self::sources::DataSources;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rustix::fs::{AtFlags, FileType, Mode};
use rustix::io::Errno;
use serde::Serialize;
use tandem_proto::ChunkId;
use tandem_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use self::attrs::Unset;
use self::dest::{DestTree, Placed};
use self::fetch::{FetchJob, Parcel};
use self::newest::NewestPerPath;

use crate::error::{ClientError, ExitStatus};
use crate::logon::session::Session;
use crate::names;
use crate::output::console::Console;
use crate::output::messages::Msg;
use crate::selection::{BackupDates, Selection};

/// How a restore splits a stored path (relative to SOURCE's directory) into
/// the names it places below DEST; refuses anything that could lead outside.
/// Public for the fuzz targets.
///
/// # Errors
/// A sentence naming the offending component.
pub fn dest_components(
    rel: &str,
    dest: &std::path::Path,
) -> Result<Vec<std::ffi::OsString>, String> {
    dest::components(rel, dest)
}

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
    /// Only versions backed up in this range (inactive ones considered).
    pub dates: Option<BackupDates>,
    /// Replacement rule.
    pub replace: Replace,
    /// Retrieve archive copies instead (the newest selected copy of each
    /// path); the version options above do not apply then.
    pub archive: Option<crate::archive::ArchiveFilter>,
}

/// Figures of a restore.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreStats {
    /// Objects restored.
    pub restored: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Objects skipped (exist and not replaced, devices without root).
    pub skipped: u64,
    /// Objects that failed (damaged data, unsafe paths, write errors).
    pub failed: u64,
    /// Names restored as hard links to a file restored under another name.
    pub hard_links: u64,
    /// Files that had more names when backed up than this restore brought
    /// back together: the names restored are linked, the others are not
    /// restored (or were restored apart, as copies).
    pub hard_links_incomplete: u64,
    /// Attributes (extended attributes, ACLs) the target refused; each was
    /// reported with its object.
    pub attributes_not_set: u64,
    /// Stored directories that existed already and were left as they are
    /// (`--replace no`): their contents are restored, their attributes kept.
    pub directories_kept: u64,
    /// With a local vault beside the server: how much of the data came
    /// from each.
    pub sources: Option<DataSources>,
    /// Wall time in seconds.
    pub elapsed_secs: f64,
}

/// A file to write.
#[derive(Debug)]
struct FileJob {
    placed: Placed,
    chunks: Vec<ChunkId>,
    size: u64,
    /// Its stored path (`attrs.path`, encoded) names it in messages about
    /// its data.
    attrs: pb::ObjectAttrs,
    /// The file had holes: all-zero chunks are left unwritten.
    sparse: bool,
}

impl FileJob {
    /// `DEST/...` (encoded), for messages about writing it: made when a
    /// message needs it rather than kept for every file (8 MiB for a tree of
    /// 80,000 files).
    fn shown(&self, dest: &DestTree) -> String {
        dest.shown(&self.placed)
    }
}

/// An object without data: a directory, symlink, FIFO or device.
#[derive(Debug)]
struct NodeJob {
    placed: Placed,
    shown: String,
    attrs: pb::ObjectAttrs,
}

impl NodeJob {
    /// A job for `attrs` at `placed`, with its name for messages.
    fn new(dest: &DestTree, placed: Placed, attrs: pb::ObjectAttrs) -> Self {
        NodeJob {
            shown: dest.shown(&placed),
            placed,
            attrs,
        }
    }
}

/// A further name of a file restored in the same run.
#[derive(Debug)]
struct LinkJob {
    node: NodeJob,
    /// The file job whose file it names.
    leader: usize,
}

/// A stored directory: its attributes are set when this restore made it,
/// or when `--replace` allows changing what exists.
#[derive(Debug)]
struct DirJob {
    node: NodeJob,
    apply: bool,
}

#[derive(Debug, Default)]
struct Plan {
    dirs: Vec<DirJob>,
    files: Vec<FileJob>,
    symlinks: Vec<NodeJob>,
    specials: Vec<NodeJob>,
    hard_links: Vec<LinkJob>,
}

async fn select_versions(
    session: &Session,
    req: &RestoreRequest,
) -> Result<Vec<pb::ObjectVersion>, ClientError> {
    if let Some(filter) = &req.archive {
        return crate::archive::newest_copies(session, filter).await;
    }
    let mut client = session.client();
    let mut stream = client
        .query_objects(session.request(pb::QueryObjectsRequest {
            filespace: String::new(),
            path_prefix: req.selection.prefix.clone(),
            include_inactive: req.inactive || req.dates.is_some(),
            point_in_time_ns: req.point_in_time_ns.unwrap_or(0),
            with_chunks: true,
        }))
        .await
        .map_err(|s| ClientError::server("listing stored objects", s))?
        .into_inner();
    let mut newest = NewestPerPath::default();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|s| ClientError::server("listing stored objects", s))?;
        for v in batch.versions {
            let Some(path) = v.attrs.as_ref().map(|a| a.path.as_str()) else {
                continue;
            };
            let in_range = req.dates.is_none_or(|d| d.contains(v.backup_time_ns));
            if in_range && req.selection.matches(path) {
                newest.offer(v);
            }
        }
    }
    Ok(newest.into_versions())
}

fn kind_of(attrs: &pb::ObjectAttrs) -> pb::ObjectKind {
    pb::ObjectKind::try_from(attrs.kind).unwrap_or(pb::ObjectKind::Unspecified)
}

/// The names of one hard-linked file in this restore: the first name
/// planned is written, the others link to it. Names count as one file only
/// when they also have the same content and times.
///
/// Keyed by group, size, time and a digest of the chunk ids, so a listing
/// that puts many different files in one group (a server's answer is not
/// trusted) costs a look-up per name, not a scan of the group.
#[derive(Debug, Default)]
struct LinkGroups {
    leaders: HashMap<LinkKey, Vec<usize>>,
}

/// Group, size, modification time and a digest of the chunk ids.
type LinkKey = (u64, u64, i64, u64);

impl LinkGroups {
    fn key(attrs: &pb::ObjectAttrs, chunks: &[ChunkId]) -> Option<LinkKey> {
        use std::hash::{Hash, Hasher};
        let group = attrs.extra.as_ref()?.hard_link_group;
        if group == 0 {
            return None;
        }
        let mut digest = std::collections::hash_map::DefaultHasher::new();
        chunks.hash(&mut digest);
        Some((group, attrs.size, attrs.mtime_ns, digest.finish()))
    }

    fn leader_for(
        &self,
        files: &[FileJob],
        attrs: &pb::ObjectAttrs,
        chunks: &[ChunkId],
    ) -> Option<usize> {
        let key = Self::key(attrs, chunks)?;
        // Equal keys are one file but for a digest collision: compare.
        self.leaders.get(&key)?.iter().copied().find(|&i| {
            let f = &files[i];
            f.chunks == chunks && f.size == attrs.size && f.attrs.mtime_ns == attrs.mtime_ns
        })
    }

    fn add(&mut self, attrs: &pb::ObjectAttrs, chunks: &[ChunkId], index: usize) {
        if let Some(key) = Self::key(attrs, chunks) {
            self.leaders.entry(key).or_default().push(index);
        }
    }
}

/// Files of this restore that had more names than it restores together.
fn incomplete_link_groups(plan: &Plan) -> u64 {
    let mut linked = vec![1u64; plan.files.len()];
    for link in &plan.hard_links {
        linked[link.leader] += 1;
    }
    plan.files
        .iter()
        .zip(linked)
        .filter(|(f, n)| {
            f.attrs
                .extra
                .as_ref()
                .is_some_and(|e| e.hard_link_names > *n)
        })
        .count() as u64
}

/// Places every version under the destination; reports what cannot be placed.
fn plan(
    versions: Vec<pb::ObjectVersion>,
    req: &RestoreRequest,
    dest: &DestTree,
    console: &Console,
    stats: &mut RestoreStats,
) -> Plan {
    let mut plan = Plan::default();
    // Sized once: grown by doubling, the list of a tree of many small files
    // held up to twice the room it needed at the restore's peak.
    plan.files.reserve_exact(
        versions
            .iter()
            .filter(|v| v.attrs.as_ref().map(kind_of) == Some(pb::ObjectKind::File))
            .count(),
    );
    let mut groups = LinkGroups::default();
    for v in versions {
        let Some(attrs) = v.attrs else { continue };
        let placed = match req.selection.relative(&attrs.path) {
            None => continue,
            Some("") => continue, // SOURCE's own directory: it is DEST itself
            Some(rel) => dest.place(rel),
        };
        let placed = match placed {
            Ok(p) => p,
            Err(why) => {
                console.report(&Msg::escapes(&attrs.path, why), ExitStatus::Error);
                stats.failed += 1;
                continue;
            }
        };
        let kind = kind_of(&attrs);
        if kind == pb::ObjectKind::Directory {
            match dest.make_dir(&placed) {
                Ok(()) => plan.dirs.push(DirJob {
                    apply: req.replace != Replace::No || dest.made(&placed),
                    node: NodeJob::new(dest, placed, attrs),
                }),
                Err(why) => {
                    console.report(&Msg::escapes(&attrs.path, why), ExitStatus::Error);
                    stats.failed += 1;
                }
            }
            continue;
        }
        if !may_replace(dest, &placed, req.replace, console, stats) {
            continue;
        }
        if kind != pb::ObjectKind::File {
            let node = NodeJob::new(dest, placed, attrs);
            match kind {
                pb::ObjectKind::Symlink => plan.symlinks.push(node),
                pb::ObjectKind::Fifo | pb::ObjectKind::CharDevice | pb::ObjectKind::BlockDevice => {
                    plan.specials.push(node)
                }
                _ => {
                    console.report(
                        &Msg::write_failed(
                            &node.shown,
                            format!(
                                "its kind ({}) is unknown to this client; use a newer one",
                                node.attrs.kind
                            ),
                        ),
                        ExitStatus::Error,
                    );
                    stats.failed += 1;
                }
            }
            continue;
        }
        // Exactly as many as listed (a collected iterator of results starts
        // at room for four).
        let mut chunks = Vec::with_capacity(v.chunk_ids.len());
        let parsed = v
            .chunk_ids
            .iter()
            .try_for_each(|c| ChunkId::from_slice(c).map(|id| chunks.push(id)));
        if parsed.is_err() {
            console.report(
                &Msg::corrupt(&attrs.path, "the server listed a malformed chunk id"),
                ExitStatus::Error,
            );
            stats.failed += 1;
            continue;
        }
        if let Some(leader) = groups.leader_for(&plan.files, &attrs, &chunks) {
            let node = NodeJob::new(dest, placed, attrs);
            plan.hard_links.push(LinkJob { node, leader });
            continue;
        }
        // A file's name for messages is made when one is shown, not here:
        // for each of many small files it cost more than placing the file.
        groups.add(&attrs, &chunks, plan.files.len());
        let sparse = attrs.extra.as_ref().is_some_and(|e| e.sparse);
        plan.files.push(FileJob {
            placed,
            chunks,
            size: attrs.size,
            attrs,
            sparse,
        });
    }
    plan
}

/// Whether a non-directory may be written at `placed`: nothing there, or
/// something `--replace` allows to replace. Reports the refusals.
fn may_replace(
    dest: &DestTree,
    placed: &Placed,
    replace: Replace,
    console: &Console,
    stats: &mut RestoreStats,
) -> bool {
    // In a directory this restore made, nothing can be in the way.
    if dest.in_new_dir(placed) {
        return true;
    }
    let existing = dest.dir(&placed.parent).ok().and_then(|dir| {
        rustix::fs::statat(dir.as_fd(), &placed.name, AtFlags::SYMLINK_NOFOLLOW).ok()
    });
    let Some(existing) = existing else {
        return true;
    };
    let kind = FileType::from_raw_mode(existing.st_mode);
    if kind == FileType::Directory {
        console.report(
            &Msg::write_failed(&dest.shown(placed), "a directory is in the way"),
            ExitStatus::Error,
        );
        stats.failed += 1;
        return false;
    }
    let read_only = existing.st_mode & 0o222 == 0 && kind != FileType::Symlink;
    let skip = match replace {
        Replace::No => true,
        Replace::Yes => read_only,
        Replace::All => false,
    };
    if skip {
        console.report(&Msg::exists(&dest.shown(placed)), ExitStatus::Skipped);
        stats.skipped += 1;
    }
    !skip
}

/// A fresh name for an object being made in a directory; it is created with
/// "must not exist" semantics, so a name someone else took is never used.
fn temp_name() -> OsString {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // `process::id` is a system call each time; the id does not change.
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    OsString::from(format!(
        ".tandem-restore-{}-{}",
        PID.get_or_init(std::process::id),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Runs `make` with fresh temporary names until one is free (bounded), and
/// returns the name used.
fn make_temp(
    mut make: impl FnMut(&OsString) -> rustix::io::Result<()>,
) -> std::io::Result<OsString> {
    for _ in 0..100 {
        let name = temp_name();
        match make(&name) {
            Ok(()) => return Ok(name),
            Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::other(
        "no free temporary name after 100 tries",
    ))
}

/// Reports the attributes a target refused; they do not fail the object.
fn report_unsets(console: &Console, shown: &str, unsets: Vec<Unset>, stats: &mut RestoreStats) {
    for u in unsets {
        console.report(
            &Msg::attr_not_set(shown, &u.what, u.cause),
            ExitStatus::Warnings,
        );
        stats.attributes_not_set += 1;
    }
}

/// Makes a symlink, FIFO or device under a temporary name, gives it its
/// attributes, and renames it into place. A symlink's times and extended
/// attributes can only be set by name, and a node is opened by name once
/// made, so where another user could swap that name (for a hard link to a
/// file elsewhere) all of it happens in a private directory made beside it
/// ([`Stage`], one per directory, kept in `stages` for the next node), and
/// only the finished node is renamed into place.
fn restore_node(
    dest: &DestTree,
    job: &NodeJob,
    stages: &mut Stages,
) -> std::io::Result<Vec<Unset>> {
    let (dir, stage) = stages.for_dir(dest, &job.placed.parent)?;
    let work = stage.map_or(dir, |s| s.fd.as_fd());
    let kind = kind_of(&job.attrs);
    let mode = Mode::from_raw_mode(job.attrs.mode & 0o777);
    let rdev = job.attrs.extra.as_ref().map_or(0, |e| e.rdev);
    let tmp = make_temp(|name| match kind {
        pb::ObjectKind::Symlink => rustix::fs::symlinkat(
            names::decode(&job.attrs.link_target).as_os_str(),
            work,
            name,
        ),
        pb::ObjectKind::Fifo => rustix::fs::mknodat(work, name, FileType::Fifo, mode, 0),
        pb::ObjectKind::CharDevice => {
            rustix::fs::mknodat(work, name, FileType::CharacterDevice, mode, rdev)
        }
        _ => rustix::fs::mknodat(work, name, FileType::BlockDevice, mode, rdev),
    })?;
    let expected = match kind {
        pb::ObjectKind::Symlink => FileType::Symlink,
        pb::ObjectKind::Fifo => FileType::Fifo,
        pb::ObjectKind::CharDevice => FileType::CharacterDevice,
        _ => FileType::BlockDevice,
    };
    let placed = attrs::apply_at(work, &tmp, &job.attrs, expected).and_then(|unsets| {
        rustix::fs::renameat(work, &tmp, dir, &job.placed.name)?;
        Ok(unsets)
    });
    if placed.is_err() {
        let _ = rustix::fs::unlinkat(work, &tmp, AtFlags::empty());
    }
    placed
}

/// The directory the last node went to, and its stage if it needs one.
#[derive(Default)]
struct Stages {
    current: Option<StagedDir>,
}

/// A directory nodes go to: its place below DEST, its descriptor, and the
/// stage made in it.
struct StagedDir {
    parent: Arc<[u8]>,
    dir: Arc<OwnedFd>,
    stage: Option<Stage>,
}

impl Stages {
    /// The directory `parent` (as in [`Placed`]) and its stage, made when
    /// another user could rename entries there; the last directory's
    /// stage is removed when another is asked for.
    fn for_dir(
        &mut self,
        dest: &DestTree,
        parent: &Arc<[u8]>,
    ) -> std::io::Result<(BorrowedFd<'_>, Option<&Stage>)> {
        if self.current.as_ref().is_none_or(|d| d.parent != *parent) {
            self.finish();
            let dir = dest.dir(parent)?;
            let stage = if others_may_rename_in(dir.as_fd())? {
                Stage::make(dir.as_fd())?
            } else {
                None
            };
            self.current = Some(StagedDir {
                parent: Arc::clone(parent),
                dir,
                stage,
            });
        }
        let here = self
            .current
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no directory"))?;
        Ok((here.dir.as_fd(), here.stage.as_ref()))
    }

    /// Removes the last stage.
    fn finish(&mut self) {
        if let Some(StagedDir {
            dir,
            stage: Some(stage),
            ..
        }) = self.current.take()
        {
            stage.remove(dir.as_fd());
        }
    }
}

/// Whether a user other than this process's could rename or replace
/// entries of the directory `dir`: it is not ours, or others may write it
/// and it is not sticky (in a sticky directory only an entry's owner, the
/// directory's owner and root may rename it).
fn others_may_rename_in(dir: BorrowedFd<'_>) -> std::io::Result<bool> {
    let st = rustix::fs::fstat(dir)?;
    let ours = st.st_uid == rustix::process::geteuid().as_raw();
    let shared = st.st_mode & 0o022 != 0 && st.st_mode & 0o1000 == 0;
    Ok(!ours || shared)
}

/// Whether `dir` is on a network file system, whose server may give new
/// files another owner than the process that makes them (NFS, SMB).
fn maps_owners(dir: BorrowedFd<'_>) -> std::io::Result<bool> {
    const NFS: i64 = 0x6969;
    const SMB: i64 = 0x517B;
    const CIFS: i64 = 0xFF53_4D42;
    const SMB2: i64 = 0xFE53_4D42;
    // f_type's type differs by architecture.
    #[allow(clippy::unnecessary_cast)]
    let kind = rustix::fs::fstatfs(dir)?.f_type as i64;
    Ok(matches!(kind, NFS | SMB | CIFS | SMB2))
}

/// A private directory (mode 0700, this process's user) made in the
/// directory a node is restored to, where the node is made and given its
/// attributes out of other users' reach.
struct Stage {
    name: OsString,
    fd: OwnedFd,
}

impl Stage {
    /// The stage made in `dir`; `None` on a network file system that does
    /// not give this user's new directories to this user (NFS's root
    /// squash): there root can do no more than the owner of the directory,
    /// and the node is made directly in `dir`, as everywhere before stages.
    fn make(dir: BorrowedFd<'_>) -> std::io::Result<Option<Stage>> {
        #[cfg(test)]
        tests::STAGES_MADE.with(|n| n.set(n.get() + 1));
        let name = make_temp(|name| rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)))?;
        let opened = rustix::fs::openat(
            dir,
            &name,
            rustix::fs::OFlags::PATH
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .and_then(|fd| {
            // Another user may have put their own directory in its place.
            let st = rustix::fs::fstat(&fd)?;
            if st.st_uid == rustix::process::geteuid().as_raw() && st.st_mode & 0o077 == 0 {
                Ok(Some(fd))
            } else if maps_owners(dir)? {
                Ok(None)
            } else {
                Err(std::io::Error::other(
                    "a private directory made to restore it in was replaced by another user's",
                ))
            }
        });
        match opened {
            Ok(Some(fd)) => Ok(Some(Stage { name, fd })),
            Ok(None) => {
                let _ = rustix::fs::unlinkat(dir, &name, AtFlags::REMOVEDIR);
                Ok(None)
            }
            Err(e) => {
                let _ = rustix::fs::unlinkat(dir, &name, AtFlags::REMOVEDIR);
                Err(e)
            }
        }
    }

    /// Removes the (now empty) directory; one another user moved away is
    /// left where they put it.
    fn remove(self, dir: BorrowedFd<'_>) {
        let _ = rustix::fs::unlinkat(dir, &self.name, AtFlags::REMOVEDIR);
    }
}

/// Links a further name to the file its leader restored, after checking
/// that the leader's name still holds the file this restore wrote (a local
/// user who can write its directory could have put another file there):
/// the link is made from a descriptor of that very inode.
fn restore_hard_link(
    dest: &DestTree,
    job: &LinkJob,
    leader: &FileJob,
    inode: writer::Inode,
) -> std::io::Result<()> {
    let from = dest.dir(&leader.placed.parent)?;
    let to = dest.dir(&job.node.placed.parent)?;
    let node = rustix::fs::openat(
        from.as_fd(),
        &leader.placed.name,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&node)?;
    #[allow(clippy::unnecessary_cast)] // stat field types differ by architecture
    let found = (st.st_dev as u64, st.st_ino as u64);
    if found != inode {
        return Err(std::io::Error::other(format!(
            "{} is no longer the file this restore wrote",
            names::display(&leader.shown(dest))
        )));
    }
    let through = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&node));
    let tmp = make_temp(|name| {
        rustix::fs::linkat(
            rustix::fs::CWD,
            through.as_str(),
            to.as_fd(),
            name,
            AtFlags::SYMLINK_FOLLOW,
        )
    })?;
    rustix::fs::renameat(to.as_fd(), &tmp, to.as_fd(), &job.node.placed.name).inspect_err(
        |_| {
            let _ = rustix::fs::unlinkat(to.as_fd(), &tmp, AtFlags::empty());
        },
    )?;
    Ok(())
}

/// Gives a directory its attributes (after its contents are in place).
fn restore_dir_attrs(dest: &DestTree, job: &NodeJob) -> std::io::Result<Vec<Unset>> {
    let parent = dest.dir(&job.placed.parent)?;
    let dir = rustix::fs::openat(
        parent.as_fd(),
        &job.placed.name,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    attrs::apply_to_fd(dir.as_fd(), &job.attrs, true)
}

/// Restores the objects that have no data, after the files: hard links,
/// symlinks, FIFOs and devices, then directories deepest first, so writing
/// into them does not disturb their restored mtime and read-only modes do
/// not block what goes inside.
fn restore_nodes(
    dest: &DestTree,
    plan: &Plan,
    written: &[Option<writer::Inode>],
    console: &Console,
    stats: &mut RestoreStats,
) {
    for link in &plan.hard_links {
        let leader = &plan.files[link.leader];
        let Some(inode) = written.get(link.leader).copied().flatten() else {
            console.report(
                &Msg::write_failed(
                    &link.node.shown,
                    format!(
                        "it is a hard link to {}, which was not restored",
                        names::display(&leader.shown(dest))
                    ),
                ),
                ExitStatus::Error,
            );
            stats.failed += 1;
            continue;
        };
        match restore_hard_link(dest, link, leader, inode) {
            Ok(()) => {
                stats.restored += 1;
                stats.hard_links += 1;
            }
            Err(e) => {
                console.report(&Msg::write_failed(&link.node.shown, e), ExitStatus::Error);
                stats.failed += 1;
            }
        }
    }
    let mut stages = Stages::default();
    for job in plan.symlinks.iter().chain(&plan.specials) {
        let device = matches!(
            kind_of(&job.attrs),
            pb::ObjectKind::CharDevice | pb::ObjectKind::BlockDevice
        );
        if device && !attrs::may_make_devices() {
            console.report(
                &Msg::special_not_created(&job.shown, "only root may create device files"),
                ExitStatus::Skipped,
            );
            stats.skipped += 1;
            continue;
        }
        match restore_node(dest, job, &mut stages) {
            Ok(unsets) => {
                stats.restored += 1;
                report_unsets(console, &job.shown, unsets, stats);
            }
            Err(e) => {
                console.report(&Msg::write_failed(&job.shown, e), ExitStatus::Error);
                stats.failed += 1;
            }
        }
    }
    stages.finish();
    for job in plan.dirs.iter().rev() {
        if !job.apply {
            stats.directories_kept += 1;
            continue;
        }
        match restore_dir_attrs(dest, &job.node) {
            Ok(unsets) => {
                stats.restored += 1;
                report_unsets(console, &job.node.shown, unsets, stats);
            }
            Err(e) => {
                console.report(&Msg::write_failed(&job.node.shown, e), ExitStatus::Error);
                stats.failed += 1;
            }
        }
    }
}

/// How often the restore's progress line is brought up to date, at most.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

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
    let (dest_path, named) = match &req.dest {
        Some(d) => (d.clone(), true),
        None => (PathBuf::from(names::decode(&req.selection.base)), false),
    };
    let dest = DestTree::open(&dest_path, named, req.replace != Replace::No).map_err(|e| {
        ClientError::Io {
            path: dest_path.clone(),
            source: e,
        }
    })?;
    let plan = plan(versions, &req, &dest, console, &mut stats);
    stats.hard_links_incomplete = incomplete_link_groups(&plan);
    let (split, vault_refused) = sources::split(session.vault_beside(), &plan.files).await;
    let mut written = vec![None; plan.files.len()];
    let mut server_order = split.server;
    // A vault that stopped answering is reported once, by the command.
    if let (Some(vault), Some(cause)) = (session.vault_beside(), vault_refused)
        && vault.vault_stalled().is_none()
    {
        console.report(
            &Msg::vault_unusable(&format!("{}: {cause}", vault.info.address)),
            ExitStatus::Warnings,
        );
    }
    let mut vault_served: HashSet<usize> = HashSet::new();
    let mut vault_damaged: BTreeSet<ChunkId> = BTreeSet::new();
    if let Some(vault) = session.vault_beside()
        && !split.vault.is_empty()
    {
        console.report(
            &Msg::restoring_from_vault(&vault.info.address, split.vault.len(), &session.info.name),
            ExitStatus::Success,
        );
        let from_vault = split.vault;
        let (vault_written, damaged) = transfer(
            vault,
            &plan.files,
            from_vault.clone(),
            &dest,
            console,
            &mut stats,
            true,
        )
        .await?;
        merge_written(&mut written, vault_written);
        // A file the vault could not serve whole comes from the server;
        // the chunk at fault is named.
        let failed: BTreeSet<usize> = damaged.iter().map(|f| f.job).collect();
        vault_damaged.extend(damaged.iter().filter_map(|f| f.chunk));
        if let Some(first) = damaged.first() {
            console.report(
                &Msg::vault_data_damaged(
                    &vault.info.address,
                    &first.cause,
                    failed.len(),
                    &session.info.name,
                ),
                ExitStatus::Warnings,
            );
        }
        let (retried, served): (Vec<FetchJob>, Vec<FetchJob>) = from_vault
            .into_iter()
            .partition(|(i, _, _)| failed.contains(i));
        vault_served.extend(served.iter().map(|(i, _, _)| *i));
        server_order.extend(retried);
        server_order.sort_by_key(|(i, _, _)| *i);
    }
    let (server_written, mut failures) = transfer(
        session,
        &plan.files,
        server_order,
        &dest,
        console,
        &mut stats,
        true,
    )
    .await?;
    merge_written(&mut written, server_written);
    // Files that failed for their data: the server repairs what it can
    // from its replication partner, and those whose chunks are whole now
    // are fetched once more. No chunk is asked about twice.
    let mut asked: HashSet<ChunkId> = HashSet::new();
    let mut usable: HashSet<ChunkId> = HashSet::new();
    let mut unrecoverable = Vec::new();
    for round in 1..=REPAIR_ROUNDS {
        if failures.is_empty() {
            break;
        }
        let fresh: BTreeSet<ChunkId> = failures
            .iter()
            .filter_map(|f| f.chunk)
            .filter(|c| !asked.contains(c))
            .collect();
        if !fresh.is_empty() {
            let summary = match repair::ask(session, &fresh).await {
                Ok(summary) => summary,
                Err(status) => repair::RepairSummary {
                    unrepaired: fresh.len() as u64,
                    reason: status.message().to_string(),
                    ..repair::RepairSummary::default()
                },
            };
            asked.extend(fresh);
            if summary.repaired > 0 {
                let files: HashSet<usize> = failures.iter().map(|f| f.job).collect();
                console.audit(&Msg::chunks_repaired(
                    &session.info.name,
                    summary.repaired,
                    &summary.sources(),
                    files.len(),
                ));
            }
            if summary.unrepaired > 0 {
                console.report(
                    &Msg::chunks_not_repaired(
                        &session.info.name,
                        summary.unrepaired,
                        &summary.reason,
                    ),
                    ExitStatus::Warnings,
                );
            }
            usable.extend(summary.usable);
        }
        let (retry, hopeless) = repair::split_retries(std::mem::take(&mut failures), &usable);
        unrecoverable.extend(hopeless);
        if retry.is_empty() {
            break;
        }
        let again: Vec<FetchJob> = retry
            .iter()
            .map(|&i| (i, plan.files[i].chunks.clone(), plan.files[i].size))
            .collect();
        let last = round == REPAIR_ROUNDS;
        let (more_written, more_failures) = transfer(
            session,
            &plan.files,
            again,
            &dest,
            console,
            &mut stats,
            !last,
        )
        .await?;
        merge_written(&mut written, more_written);
        failures = more_failures;
    }
    unrecoverable.extend(failures);
    unrecoverable.sort_by_key(|f| f.job);
    let mut reported = HashSet::new();
    for failure in unrecoverable {
        if reported.insert(failure.job) {
            console.report(
                &Msg::data_failed(
                    &plan.files[failure.job].attrs.path,
                    &failure.cause,
                    failure.damaged,
                ),
                ExitStatus::Error,
            );
            stats.failed += 1;
        }
    }
    if session.vault_beside().is_some() {
        // Only files put in place count, each where its data came from.
        let mut counted = DataSources::default();
        for (i, _) in written.iter().enumerate().filter(|(_, w)| w.is_some()) {
            counted.add(vault_served.contains(&i), plan.files[i].size);
        }
        stats.sources = Some(counted);
    }
    tokio::task::block_in_place(|| {
        restore_nodes(&dest, &plan, &written, console, &mut stats);
        // The renames, links and directories are durable too.
        if let Err(e) = dest.sync() {
            console.report(
                &Msg::write_failed(
                    &names::encode(dest_path.as_os_str()),
                    format!("syncing failed: {e}"),
                ),
                ExitStatus::Error,
            );
        }
    });
    // With the restored files in place, the server's copies (repaired
    // above where needed) replace the vault's damaged ones, so the next
    // restore takes those files from the vault again.
    if let Some(vault) = session.vault_beside()
        && !vault_damaged.is_empty()
    {
        vault_repair::repair(session, vault, vault_damaged, console).await;
    }
    stats.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// Takes the files a later transfer put in place.
fn merge_written(written: &mut [Option<writer::Inode>], more: Vec<Option<writer::Inode>>) {
    for (slot, inode) in written.iter_mut().zip(more) {
        if inode.is_some() {
            *slot = inode;
        }
    }
}

/// Repair-and-retry rounds for files that failed for their data.
const REPAIR_ROUNDS: usize = 2;

/// Fetches and writes the files of `order`, with progress; returns where
/// each was put and, with `defer_data_failures`, the files that failed for
/// their data (unreported, for a repair).
async fn transfer(
    session: &Session,
    files: &[FileJob],
    order: Vec<FetchJob>,
    dest: &DestTree,
    console: &Console,
    stats: &mut RestoreStats,
    defer_data_failures: bool,
) -> Result<(Vec<Option<writer::Inode>>, Vec<writer::DataFailure>), ClientError> {
    let (tx, mut rx) = mpsc::channel::<Parcel>(4);
    let total_files = order.len();
    let total_bytes: u64 = order.iter().map(|(_, _, size)| size).sum();
    let fetcher = tokio::spawn(fetch::fetch(session.clone(), order, tx));
    let progress = console.start_progress();
    let (mut files_begun, mut bytes_fetched) = (0usize, 0u64);
    // The line is redrawn a few times a second at most, so a restore of
    // many small files does not format a message per parcel.
    let mut shown_at = Instant::now();
    let outcome = tokio::task::block_in_place(|| {
        writer::write_files(files, dest, console, stats, defer_data_failures, || {
            let parcel = rx.blocking_recv()?;
            for message in &parcel {
                match message {
                    fetch::Fetched::Begin(_) => files_begun += 1,
                    fetch::Fetched::Data(data) => bytes_fetched += data.len() as u64,
                    fetch::Fetched::End
                    | fetch::Fetched::Failed { .. }
                    | fetch::Fetched::Skipped { .. } => {}
                }
            }
            if shown_at.elapsed() >= PROGRESS_EVERY {
                shown_at = Instant::now();
                progress.set_message(format!(
                    "restoring: {files_begun} of {total_files} file(s), {} of {}",
                    crate::backup::human_bytes(bytes_fetched),
                    crate::backup::human_bytes(total_bytes)
                ));
            }
            Some(parcel)
        })
    });
    console.end_progress();
    fetcher
        .await
        .map_err(|e| ClientError::task_failed("fetch task", e))?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Private directories [`Stage::make`] made on this thread.
        pub(super) static STAGES_MADE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    fn file(group: u64, mtime_ns: i64, chunk: u8) -> (pb::ObjectAttrs, Vec<ChunkId>) {
        let attrs = pb::ObjectAttrs {
            size: 10,
            mtime_ns,
            extra: Some(pb::ObjectExtra {
                hard_link_group: group,
                ..Default::default()
            }),
            ..Default::default()
        };
        (attrs, vec![ChunkId::of(&[chunk])])
    }

    /// Plans names the way `plan` does: a leader, or a new file.
    fn plan_names(names: &[(pb::ObjectAttrs, Vec<ChunkId>)]) -> (Vec<FileJob>, usize) {
        let mut groups = LinkGroups::default();
        let mut files = Vec::new();
        let mut links = 0;
        for (attrs, chunks) in names {
            if groups.leader_for(&files, attrs, chunks).is_some() {
                links += 1;
                continue;
            }
            groups.add(attrs, chunks, files.len());
            files.push(FileJob {
                placed: dest::Placed {
                    parent: std::sync::Arc::from(&b""[..]),
                    name: "f".into(),
                },
                chunks: chunks.clone(),
                size: attrs.size,
                attrs: attrs.clone(),
                sparse: false,
            });
        }
        (files, links)
    }

    #[test]
    fn nodes_are_staged_only_where_another_user_could_rename_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let may = |mode: u32| {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let fd = rustix::fs::open(dir.path(), rustix::fs::OFlags::PATH, Mode::empty()).unwrap();
            others_may_rename_in(fd.as_fd()).unwrap()
        };
        assert!(!may(0o700));
        assert!(!may(0o755));
        assert!(may(0o775));
        assert!(may(0o777));
        assert!(!may(0o1777), "sticky: only we may rename our entries");
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
            assert!(may(0o700), "its owner may rename anything in it");
        }
    }

    #[test]
    fn a_node_restored_where_others_may_rename_is_made_in_a_private_stage() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let tree = DestTree::open(dir.path(), true, false).unwrap();
        let mut stages = Stages::default();
        for (name, kind, target) in [
            ("link", pb::ObjectKind::Symlink, "some/target"),
            ("fifo", pb::ObjectKind::Fifo, ""),
        ] {
            let job = NodeJob {
                placed: tree.place(name).unwrap(),
                shown: name.into(),
                attrs: pb::ObjectAttrs {
                    kind: kind as i32,
                    link_target: target.into(),
                    mode: 0o640,
                    mtime_ns: 1_000_000_000_000_000_000,
                    ..Default::default()
                },
            };
            restore_node(&tree, &job, &mut stages).unwrap();
        }
        stages.finish();
        // One for the directory, however many nodes go there.
        assert_eq!(STAGES_MADE.with(std::cell::Cell::get), 1);
        let link = dir.path().join("link");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            std::path::Path::new("some/target")
        );
        let fifo = std::fs::symlink_metadata(dir.path().join("fifo")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
        assert_eq!(fifo.permissions().mode() & 0o777, 0o640);
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&fifo), 1_000_000_000);
        // Nothing else is left: no stage, no temporary name.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["fifo", "link"]);
        // In a directory only we can change, no stage is needed.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let job = NodeJob {
            placed: tree.place("plain").unwrap(),
            shown: "plain".into(),
            attrs: pb::ObjectAttrs {
                kind: pb::ObjectKind::Fifo as i32,
                mode: 0o600,
                ..Default::default()
            },
        };
        restore_node(&tree, &job, &mut stages).unwrap();
        stages.finish();
        assert_eq!(STAGES_MADE.with(std::cell::Cell::get), 1);
    }

    #[test]
    fn names_link_only_to_the_same_file_however_many_share_a_group() {
        // A listing putting 50,000 different files in one group (hostile, or
        // a server's bug): each is a file of its own, found by key.
        let mut names: Vec<_> = (0..50_000).map(|i| file(7, i, 1)).collect();
        // Two more names of the first, one with other content, one in no group.
        names.push(file(7, 0, 1));
        names.push(file(7, 0, 2));
        names.push(file(0, 0, 1));
        let (files, links) = plan_names(&names);
        assert_eq!(links, 1);
        assert_eq!(files.len(), 50_002);
    }
}
