//! Reading the local tree for a backup: walking (symlinks never followed),
//! exclusion, attributes, and content-defined chunking. Runs on a blocking
//! thread and hands its results to the uploader through a bounded channel, so
//! reading/hashing on one core overlaps compressing/sending on the other.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::os::fd::AsFd as _;

use prost::Message as _;
use tandem_proto::ChunkId;
use tandem_proto::pb;
use tokio::sync::mpsc;

use crate::backup::chunker::{Chunker, MAX_CHUNK, MIN_CHUNK};
use crate::backup::inventory::Inventory;
use crate::backup::meta::{self, Lstat, SeenInode, SeenInodes, XattrReader, XattrSource};
use crate::backup::walk::{Entry, Walk};
use crate::names;
use crate::output::messages::Msg;

/// What the scanner hands to the uploader, in order: a file's chunks come
/// before the file's `Object`, so an object is never committed ahead of its data.
#[derive(Debug)]
pub enum Item {
    /// Content of a file being read.
    Chunk {
        /// Its hash.
        id: ChunkId,
        /// Uncompressed bytes.
        data: Vec<u8>,
    },
    /// An object whose content (if any) has been sent as chunks.
    Object {
        /// Attributes.
        attrs: pb::ObjectAttrs,
        /// Content chunks, in order.
        chunks: Vec<ChunkId>,
    },
    /// This many objects identical to the server's active versions.
    Unchanged(u64),
    /// A problem with one object; the backup goes on.
    Problem(Msg),
    /// A file's bytes were read (for progress).
    Scanned(u64),
    /// (Preview only) an object a backup would send; nothing was read.
    Planned {
        /// Its attributes as they are now.
        attrs: pb::ObjectAttrs,
        /// No version of it is stored (else it changed).
        new: bool,
    },
}

/// What a backup does with a file that keeps changing while it is read
/// (TSM's copy group SERIALIZATION, for the two modes a client can honour
/// on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Serialization {
    /// Skip it with a warning (TSM SHRSTATIC, its default).
    #[default]
    SharedStatic,
    /// Store what was read and mark the version "changed during backup"
    /// (TSM SHRDYNAMIC).
    SharedDynamic,
}

/// What to walk and how.
#[derive(Debug)]
pub struct ScanPlan {
    /// Root of the walk (absolute, normalised).
    pub root: std::path::PathBuf,
    /// The include-exclude list: what it leaves out is skipped
    /// (directories with everything below).
    pub rules: crate::backup::rules::Rules,
    /// The server's active versions below `root` (incremental), or `None`
    /// (selective: everything is sent).
    pub inventory: Option<Inventory>,
    /// Reads of a changing file after the first (TSM CHANGINGRETRIES).
    pub changing_retries: u32,
    /// What to do with a file still changing after the retries.
    pub serialization: Serialization,
    /// Only say what would be sent ([`Item::Planned`]); read no content.
    pub preview: bool,
}

/// Attributes of a local object from its `lstat`, or `None` for a socket.
/// `path` and `link_target` are already encoded ([`crate::names`]).
pub fn attrs_of(path: &str, meta: &Lstat, link_target: String) -> Option<pb::ObjectAttrs> {
    let kind = meta::kind_of(meta.file_type)?;
    let device = matches!(
        kind,
        pb::ObjectKind::CharDevice | pb::ObjectKind::BlockDevice
    );
    let file = kind == pb::ObjectKind::File;
    let extra = pb::ObjectExtra {
        rdev: if device { meta.rdev } else { 0 },
        hard_link_group: if file && meta.nlink > 1 {
            meta::hard_link_group(meta.dev, meta.ino)
        } else {
            0
        },
        hard_link_names: if file && meta.nlink > 1 {
            meta.nlink
        } else {
            0
        },
        ctime_ns: meta.ctime_ns,
        ..Default::default()
    };
    Some(pb::ObjectAttrs {
        path: path.to_string(),
        kind: kind as i32,
        size: if file { meta.size } else { 0 },
        mode: meta.mode,
        mtime_ns: meta.mtime_ns,
        uid: meta.uid,
        gid: meta.gid,
        link_target,
        extra: Some(extra),
    })
}

/// Whether everything the incremental test compares but extended
/// attributes is equal: kind, size, mtime, mode, owner, link target, device
/// number, hard-link group (TSM's test is size, mtime, mode and owner). A
/// version stored while its file was changing never is.
fn same_but_xattrs(local: &pb::ObjectAttrs, stored: &pb::ObjectAttrs) -> bool {
    let none = pb::ObjectExtra::default();
    let (le, se) = (
        local.extra.as_ref().unwrap_or(&none),
        stored.extra.as_ref().unwrap_or(&none),
    );
    local.kind == stored.kind
        && local.size == stored.size
        && local.mtime_ns == stored.mtime_ns
        && local.mode == stored.mode
        && local.uid == stored.uid
        && local.gid == stored.gid
        && local.link_target == stored.link_target
        && le.rdev == se.rdev
        && le.hard_link_group == se.hard_link_group
        && !se.changed_during_backup
}

fn xattrs_of(attrs: &pb::ObjectAttrs) -> &[pb::Xattr] {
    attrs.extra.as_ref().map_or(&[], |e| e.xattrs.as_slice())
}

fn ctime_of(attrs: &pb::ObjectAttrs) -> i64 {
    attrs.extra.as_ref().map_or(0, |e| e.ctime_ns)
}

/// Whether the stored version still describes the local object, extended
/// attributes and ACLs included.
fn unchanged(local: &pb::ObjectAttrs, stored: &pb::ObjectAttrs) -> bool {
    same_but_xattrs(local, stored) && xattrs_of(local) == xattrs_of(stored)
}

/// Whether the stored version still describes the local object without
/// reading its extended attributes: all else is equal, and so is the ctime,
/// which every change of an attribute moves. Saves an `llistxattr` per
/// object on an unchanged tree. A version whose attributes could not all be
/// stored has no ctime and is always looked at.
fn unchanged_by_ctime(local: &pb::ObjectAttrs, stored: &pb::ObjectAttrs) -> bool {
    ctime_of(stored) != 0 && ctime_of(local) == ctime_of(stored) && same_but_xattrs(local, stored)
}

/// Items handed to the uploader at once, at most.
const BATCH_ITEMS: usize = 512;
/// Chunk bytes after which a batch is handed over even if it has few items.
const BATCH_BYTES: usize = 1024 * 1024;

/// Collects [`Item`]s into batches for the uploader's channel. One hand-off per
/// file was one thread wake-up per file on each side, the largest cost after
/// the file system calls themselves for trees of small files (profiled: a fifth
/// of the client's time in futex calls). Runs of unchanged objects become one
/// count.
struct Batcher<'a> {
    tx: &'a mpsc::Sender<Vec<Item>>,
    items: RefCell<Vec<Item>>,
    bytes: Cell<usize>,
}

impl Batcher<'_> {
    /// Queues `item`; false when the receiver has gone.
    fn send(&self, item: Item) -> bool {
        let mut items = self.items.borrow_mut();
        match (item, items.last_mut()) {
            (Item::Unchanged(n), Some(Item::Unchanged(total))) => *total += n,
            (item, _) => {
                if let Item::Chunk { data, .. } = &item {
                    self.bytes.set(self.bytes.get() + data.len());
                }
                items.push(item);
            }
        }
        let full = items.len() >= BATCH_ITEMS || self.bytes.get() >= BATCH_BYTES;
        drop(items);
        !full || self.flush()
    }

    /// Hands over what is queued; false when the receiver has gone.
    fn flush(&self) -> bool {
        let items = self.items.take();
        self.bytes.set(0);
        items.is_empty() || self.tx.blocking_send(items).is_ok()
    }
}

/// What the scanner keeps from file to file.
#[derive(Default)]
struct Scanner {
    chunker: Chunker,
    xattrs: XattrReader,
    /// Files with several names already read ([`SeenInodes`]).
    seen: SeenInodes,
    /// Ids of all-zero chunks by length, for holes.
    zero_ids: HashMap<usize, ChunkId>,
    /// Zero chunks whose data was handed over in this backup: a hole needs
    /// only their ids after that.
    zeros_sent: HashSet<ChunkId>,
    changing_retries: u32,
    serialization: Serialization,
    /// The first failed inventory lookup. Its path was sent as new, and its
    /// row may still be in the inventory: made inactive at the end, it
    /// would take the version just sent with it, so nothing is.
    lookup_failed: Option<rusqlite::Error>,
}

/// Walks `plan.root`, sending [`Item`]s in batches; returns the inventory paths
/// to deactivate (gone locally or now excluded), leaving out anything below a
/// directory that could not be read. Stops early if the receiver goes away.
pub fn scan(mut plan: ScanPlan, tx: &mpsc::Sender<Vec<Item>>) -> Vec<String> {
    let batcher = Batcher {
        tx,
        items: RefCell::new(Vec::new()),
        bytes: Cell::new(0),
    };
    let send = |item: Item| batcher.send(item);
    let mut scanner = Scanner {
        changing_retries: plan.changing_retries,
        serialization: plan.serialization,
        ..Scanner::default()
    };
    let mut unreadable_dirs: Vec<String> = Vec::new();
    // An excluded root yields nothing: say so, or it looks like an empty tree.
    let root_is_dir = std::fs::metadata(&plan.root).is_ok_and(|m| m.is_dir());
    if let crate::backup::rules::Decision::Excluded(rule) =
        plan.rules.decide_in_tree(&plan.root, root_is_dir)
    {
        let root = names::encode(plan.root.as_os_str());
        if !send(Item::Problem(Msg::root_excluded(
            &root,
            rule.kind.option(),
            &rule.pattern,
        ))) {
            return Vec::new();
        }
    }
    let mut walker = Walk::new(&plan.root, plan.rules.clone());
    while let Some(entry) = walker.next() {
        let entry = match entry {
            Ok(e) => e,
            Err(err) => {
                let path = names::encode(err.path.as_os_str());
                if err.depth == 0 && err.error.kind() == std::io::ErrorKind::NotFound {
                    if !send(Item::Problem(Msg::not_found(&path))) {
                        return Vec::new();
                    }
                } else {
                    unreadable_dirs.push(path.clone());
                    if !send(Item::Problem(Msg::unreadable(&path, err.error))) {
                        return Vec::new();
                    }
                }
                continue;
            }
        };
        let path = names::encode(entry.path.as_os_str());
        if path.len() > tandem_proto::MAX_PATH_BYTES {
            let why = format!(
                "its path has {} bytes, more than the {} a stored path may have",
                path.len(),
                tandem_proto::MAX_PATH_BYTES
            );
            // Kept out of deactivation like an unreadable directory, and not
            // entered: everything below is longer still.
            walker.skip_entered(&entry);
            let shown = match path.char_indices().nth(300) {
                Some((cut, _)) => format!("{}...", &path[..cut]),
                None => path.clone(),
            };
            unreadable_dirs.push(path);
            if !send(Item::Problem(Msg::unreadable(&shown, why))) {
                return Vec::new();
            }
            continue;
        }
        if !scanner.entry(&path, &entry, &mut plan, &send) {
            return Vec::new();
        }
    }
    let remaining = match scanner.lookup_failed.take() {
        Some(e) => plan.inventory.map(|_| Err(e)),
        None => plan.inventory.map(|inventory| inventory.remaining()),
    };
    let deactivate = match remaining {
        None => Vec::new(),
        Some(Ok(left)) => left
            .into_iter()
            .filter(|p| !unreadable_dirs.iter().any(|d| crate::paths::within(p, d)))
            .collect(),
        Some(Err(e)) => {
            // Deactivating nothing is the safe side: versions stay active.
            let _ = send(Item::Problem(Msg::inventory_failed(e)));
            Vec::new()
        }
    };
    batcher.flush();
    deactivate
}

/// (size, mtime, ctime) of an open file: any difference between two reads of
/// them means the file changed in between.
fn change_marks(meta: &Lstat) -> (u64, i64, i64) {
    (meta.size, meta.mtime_ns, meta.ctime_ns)
}

/// How one read of a file went.
enum Read {
    /// The data was read and the file did not change meanwhile.
    Quiet(Vec<ChunkId>, Lstat),
    /// The file changed while it was read: what was read (the chunks, and
    /// the bytes they stand for), and its state before.
    Changed(Vec<ChunkId>, u64, Lstat),
    /// The receiver has gone.
    Stopped,
}

impl Scanner {
    /// Handles one walked entry; false when the receiver has gone.
    fn entry(
        &mut self,
        path: &str,
        entry: &Entry,
        plan: &mut ScanPlan,
        send: &impl Fn(Item) -> bool,
    ) -> bool {
        let meta = Lstat::from(&entry.stat);
        let link_target = if meta.file_type == rustix::fs::FileType::Symlink {
            match entry.read_link() {
                Ok(t) => names::encode_bytes(&t),
                Err(e) => {
                    // A link that cannot be read is not a deleted one: its
                    // stored version stays active (taken out of what the
                    // backup makes inactive). One gone meanwhile is deleted.
                    if e.kind() != std::io::ErrorKind::NotFound
                        && let Some(Err(failed)) = plan.inventory.as_mut().map(|i| i.take(path))
                    {
                        self.lookup_failed.get_or_insert(failed);
                    }
                    return send(Item::Problem(Msg::unreadable(path, e)));
                }
            }
        } else {
            String::new()
        };
        let Some(mut attrs) = attrs_of(path, &meta, link_target) else {
            return send(Item::Problem(Msg::socket(path)));
        };
        // A lookup that fails counts as "not stored": the object is sent again,
        // the safe side (and nothing is made inactive, see `lookup_failed`).
        let stored = match plan.inventory.as_mut().map(|inv| inv.take(path)) {
            Some(Ok(stored)) => stored,
            Some(Err(e)) => {
                self.lookup_failed.get_or_insert(e);
                None
            }
            None => None,
        };
        if stored
            .as_ref()
            .is_some_and(|s| unchanged_by_ctime(&attrs, s))
        {
            return send(Item::Unchanged(1));
        }
        let known = stored.is_some();
        // A regular file is opened here, once: its attributes are read from
        // the descriptor (no path walk through /proc for each file, and they
        // belong to the file the first read of data then uses). One that
        // cannot be opened is looked at by path; its read then reports why
        // it cannot be opened.
        let opened = (meta.file_type == rustix::fs::FileType::RegularFile && !plan.preview)
            .then(|| entry.open().ok())
            .flatten();
        let read = match &opened {
            Some(file) => self.xattrs.read_from(XattrSource::File(file.as_fd())),
            None => self.xattrs.read(&entry.proc_path()),
        };
        match read {
            Ok(xattrs) => {
                if let Some(extra) = attrs.extra.as_mut() {
                    extra.xattrs = xattrs;
                    // Room for the fields set after the read (flags, counts).
                    if extra.encoded_len() + 64 > tandem_proto::MAX_EXTRA_BYTES {
                        let size = extra.encoded_len();
                        extra.xattrs.clear();
                        extra.ctime_ns = 0;
                        let why = format!(
                            "together they take {size} bytes, more than the {} a version may carry",
                            tandem_proto::MAX_EXTRA_BYTES
                        );
                        if !send(Item::Problem(Msg::xattrs_unreadable(path, why))) {
                            return false;
                        }
                    }
                }
            }
            Err(e) => {
                if let Some(extra) = attrs.extra.as_mut() {
                    extra.ctime_ns = 0;
                }
                if !send(Item::Problem(Msg::xattrs_unreadable(path, e))) {
                    return false;
                }
            }
        }
        if stored.is_some_and(|s| unchanged(&attrs, &s)) {
            return send(Item::Unchanged(1));
        }
        if plan.preview {
            return send(Item::Planned { attrs, new: !known });
        }
        if attrs.kind != pb::ObjectKind::File as i32 {
            return send(Item::Object {
                attrs,
                chunks: Vec::new(),
            });
        }
        if meta.nlink > 1
            && let Some(seen) = self
                .seen
                .get(meta.dev, meta.ino, attrs.size, attrs.mtime_ns)
        {
            // Another name of a file read in this backup: same data.
            let chunks = seen.chunks.clone();
            if let Some(extra) = attrs.extra.as_mut() {
                extra.sparse = seen.sparse;
            }
            return send(Item::Object { attrs, chunks });
        }
        self.file(entry, opened, attrs, &meta, send)
    }

    /// Reads a file, again while it keeps changing (up to the retries), and
    /// sends its object or, per [`Serialization`], a warning.
    /// `opened`: the file, when the caller has opened it already.
    fn file(
        &mut self,
        entry: &Entry,
        mut opened: Option<std::fs::File>,
        mut attrs: pb::ObjectAttrs,
        walked: &Lstat,
        send: &impl Fn(Item) -> bool,
    ) -> bool {
        let mut tries = 0;
        let (chunks, before, changed) = loop {
            let file = match opened.take() {
                Some(file) => Ok(file),
                None => entry.open(),
            };
            match file.and_then(|file| self.read_once(file, send)) {
                Err(e) => return send(Item::Problem(Msg::unreadable(&attrs.path, e))),
                Ok(Read::Stopped) => return false,
                Ok(Read::Quiet(chunks, before)) => break (chunks, before, false),
                Ok(Read::Changed(chunks, covered, mut before)) => {
                    if tries < self.changing_retries {
                        tries += 1;
                        continue;
                    }
                    if self.serialization == Serialization::SharedStatic {
                        return send(Item::Problem(Msg::kept_changing(&attrs.path, tries + 1)));
                    }
                    if !send(Item::Problem(Msg::changed(&attrs.path, tries + 1))) {
                        return false;
                    }
                    // The size that goes with the data is what was read.
                    before.size = covered;
                    break (chunks, before, true);
                }
            }
        };
        // The attributes that go with the data are those of the read.
        attrs.size = before.size;
        attrs.mode = before.mode;
        attrs.mtime_ns = before.mtime_ns;
        attrs.uid = before.uid;
        attrs.gid = before.gid;
        let sparse = before.may_have_holes();
        if let Some(extra) = attrs.extra.as_mut().filter(|e| e.ctime_ns != 0) {
            extra.ctime_ns = before.ctime_ns;
        }
        if let Some(extra) = attrs.extra.as_mut() {
            extra.changed_during_backup = changed;
            extra.sparse = sparse;
        }
        // Other names share what was read, when they show the same size and
        // mtime as the read did; a file that kept changing is read again.
        if walked.nlink > 1 && !changed {
            self.seen.insert(
                walked.dev,
                walked.ino,
                SeenInode {
                    size: before.size,
                    mtime_ns: before.mtime_ns,
                    chunks: chunks.clone(),
                    sparse,
                },
            );
        }
        send(Item::Object { attrs, chunks })
    }

    /// Reads a file once, holes by `SEEK_DATA`/`SEEK_HOLE` without reading
    /// them, and tells whether it changed meanwhile.
    fn read_once(
        &mut self,
        file: std::fs::File,
        send: &impl Fn(Item) -> bool,
    ) -> std::io::Result<Read> {
        let before = Lstat::of_file(&file)?;
        if before.file_type != rustix::fs::FileType::RegularFile {
            return Err(std::io::Error::other(
                "it is no longer a regular file (replaced while the backup ran)",
            ));
        }
        let size = before.size;
        let mut chunks = Vec::new();
        let holes_possible = before.may_have_holes();
        let mut offset = 0u64;
        // The file's read position, while nothing but reads moved it: a file
        // without holes is read without a seek (a seek per file was one
        // system call in eight of a small-file backup). Looking for holes
        // moves it, so a file that may have them seeks before each extent.
        let mut position = (!holes_possible).then_some(0u64);
        while offset < size {
            let (data_start, data_end) = if holes_possible {
                next_data(&file, offset, size)?
            } else {
                (offset, size)
            };
            if data_start > offset && !self.hole(data_start - offset, &mut chunks, send) {
                return Ok(Read::Stopped);
            }
            if data_start >= size {
                break;
            }
            let mut extent = &file;
            if position != Some(data_start) {
                std::io::Seek::seek(&mut extent, std::io::SeekFrom::Start(data_start))?;
            }
            let split = self
                .chunker
                .split(extent.take(data_end - data_start), |piece| {
                    let id = ChunkId::of(piece);
                    chunks.push(id);
                    send(Item::Scanned(piece.len() as u64))
                        && send(Item::Chunk {
                            id,
                            data: piece.to_vec(),
                        })
                });
            match split {
                Ok(Some(read)) if read == data_end - data_start => {
                    offset = data_end;
                    position = position.map(|_| data_end);
                }
                // Shorter than its size said: it shrank while being read.
                Ok(Some(read)) => return Ok(Read::Changed(chunks, data_start + read, before)),
                Ok(None) => return Ok(Read::Stopped),
                Err(e) => return Err(e),
            }
        }
        let after = Lstat::of_file(&file)?;
        Ok(if change_marks(&before) == change_marks(&after) {
            Read::Quiet(chunks, before)
        } else {
            Read::Changed(chunks, size, before)
        })
    }

    /// Stands for `len` bytes of hole with all-zero chunks of the largest
    /// size: their ids are computed once, their data handed over once per
    /// backup, and nothing is read.
    fn hole(
        &mut self,
        mut len: u64,
        chunks: &mut Vec<ChunkId>,
        send: &impl Fn(Item) -> bool,
    ) -> bool {
        while len > 0 {
            let piece = len.min(u64::from(MAX_CHUNK)) as usize;
            let id = *self
                .zero_ids
                .entry(piece)
                .or_insert_with(|| ChunkId::of(&vec![0u8; piece]));
            chunks.push(id);
            if self.zeros_sent.insert(id)
                && !send(Item::Chunk {
                    id,
                    data: vec![0u8; piece],
                })
            {
                return false;
            }
            len -= piece as u64;
        }
        true
    }
}

/// Holes shorter than this are read as data: a chunk per tiny extent would
/// cut the file into pieces far below the chunker's minimum.
const MIN_HOLE: u64 = MIN_CHUNK as u64;

/// The next stretch to read at or after `offset`: (start, end), with start =
/// `size` when only a hole is left. Holes shorter than [`MIN_HOLE`] are part
/// of the stretch. A file system without `SEEK_DATA` reports the rest as
/// data.
fn next_data(file: &std::fs::File, offset: u64, size: u64) -> std::io::Result<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    use rustix::io::Errno;
    let data_at = |from: u64| match seek(file, SeekFrom::Data(from)) {
        Ok(at) => Ok(at.min(size)),
        Err(Errno::NXIO) => Ok(size),
        Err(e) => Err(e),
    };
    let mut start = match data_at(offset) {
        Ok(at) => at,
        Err(e) if e == Errno::INVAL || e == Errno::NOTSUP => return Ok((offset, size)),
        Err(e) => return Err(e.into()),
    };
    if start - offset < MIN_HOLE {
        start = offset;
    }
    let mut end = start;
    while end < size {
        let hole = seek(file, SeekFrom::Hole(end)).map_or(size, |h| h.min(size));
        if hole >= size {
            end = size;
            break;
        }
        let next = data_at(hole).unwrap_or(size);
        if next - hole >= MIN_HOLE {
            end = hole.max(start);
            break;
        }
        end = next.max(end + 1).min(size);
    }
    Ok((start.min(size), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ctime_shortcut_needs_a_stored_ctime_and_all_else_equal() {
        let with = |ctime: i64, size: u64, xattr: &[u8]| pb::ObjectAttrs {
            path: "/a".into(),
            kind: 1,
            size,
            extra: Some(pb::ObjectExtra {
                ctime_ns: ctime,
                xattrs: vec![pb::Xattr {
                    name: xattr.to_vec(),
                    value: Vec::new(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let stored = with(7, 10, b"user.a");
        // The local side has not read its attributes (none yet).
        let mut local = with(7, 10, b"");
        local.extra.as_mut().unwrap().xattrs.clear();
        assert!(unchanged_by_ctime(&local, &stored));
        assert!(
            !unchanged_by_ctime(&with(8, 10, b""), &stored),
            "ctime moved"
        );
        assert!(
            !unchanged_by_ctime(&with(7, 11, b""), &stored),
            "size changed"
        );
        assert!(
            !unchanged_by_ctime(&local, &with(0, 10, b"user.a")),
            "no stored ctime"
        );
        assert!(
            !unchanged(&with(7, 10, b"user.b"), &stored),
            "attributes differ"
        );
    }

    #[test]
    fn unchanged_compares_the_incremental_attributes() {
        let a = pb::ObjectAttrs {
            path: "/a".into(),
            kind: 1,
            size: 10,
            mode: 0o644,
            mtime_ns: 5,
            uid: 1,
            gid: 1,
            link_target: String::new(),
            extra: None,
        };
        assert!(unchanged(&a, &a.clone()));
        for changed in [
            pb::ObjectAttrs {
                size: 11,
                ..a.clone()
            },
            pb::ObjectAttrs {
                mtime_ns: 6,
                ..a.clone()
            },
            pb::ObjectAttrs {
                mode: 0o600,
                ..a.clone()
            },
            pb::ObjectAttrs {
                uid: 2,
                ..a.clone()
            },
        ] {
            assert!(!unchanged(&changed, &a));
        }
    }
}
