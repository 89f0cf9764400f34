//! Reading the local tree for a backup: walking (symlinks never followed),
//! exclusion, attributes, and content-defined chunking. Runs on a blocking
//! thread and hands its results to the uploader through a bounded channel, so
//! reading/hashing on one core overlaps compressing/sending on the other.

use std::cell::{Cell, RefCell};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use globset::GlobSet;
use tandem_proto::ChunkId;
use tandem_proto::pb;
use tokio::sync::mpsc;

use crate::chunker::Chunker;
use crate::inventory::Inventory;
use crate::messages::Msg;

/// Smallest chunk the chunker cuts (except at the end of a file).
pub const MIN_CHUNK: u32 = 256 * 1024;
/// Average chunk size.
pub const AVG_CHUNK: u32 = 1024 * 1024;
/// Largest chunk; stays well under the 8 MiB the server accepts.
pub const MAX_CHUNK: u32 = 4 * 1024 * 1024;

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
}

/// What to walk and how.
#[derive(Debug)]
pub struct ScanPlan {
    /// Root of the walk (absolute, normalised).
    pub root: std::path::PathBuf,
    /// Paths matching are skipped (directories with everything below).
    pub excludes: GlobSet,
    /// The server's active versions below `root` (incremental), or `None`
    /// (selective: everything is sent).
    pub inventory: Option<Inventory>,
}

/// Attributes of a local object, or `None` for kinds not backed up (sockets,
/// devices, fifos).
pub fn attrs_of(path: &str, meta: &Metadata, link_target: String) -> Option<pb::ObjectAttrs> {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        pb::ObjectKind::File
    } else if ft.is_dir() {
        pb::ObjectKind::Directory
    } else if ft.is_symlink() {
        pb::ObjectKind::Symlink
    } else {
        return None;
    };
    Some(pb::ObjectAttrs {
        path: path.to_string(),
        kind: kind as i32,
        size: if ft.is_file() { meta.len() } else { 0 },
        mode: meta.mode() & 0o7777,
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        uid: meta.uid(),
        gid: meta.gid(),
        link_target,
    })
}

/// Whether the stored version still describes the local object (TSM's
/// incremental test: size, mtime, mode, owner; plus kind and link target).
fn unchanged(local: &pb::ObjectAttrs, stored: &pb::ObjectAttrs) -> bool {
    local.kind == stored.kind
        && local.size == stored.size
        && local.mtime_ns == stored.mtime_ns
        && local.mode == stored.mode
        && local.uid == stored.uid
        && local.gid == stored.gid
        && local.link_target == stored.link_target
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
    let mut chunker = Chunker::default();
    let mut unreadable_dirs: Vec<String> = Vec::new();
    let excludes = plan.excludes.clone();
    let walker = walkdir::WalkDir::new(&plan.root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(move |e| !excludes.is_match(e.path()));
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(err) => {
                let path = err
                    .path()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if err.depth() == 0
                    && err
                        .io_error()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
                {
                    if !send(Item::Problem(Msg::not_found(&path))) {
                        return Vec::new();
                    }
                } else {
                    unreadable_dirs.push(path.clone());
                    if !send(Item::Problem(Msg::unreadable(&path, err))) {
                        return Vec::new();
                    }
                }
                continue;
            }
        };
        let Some(path) = entry.path().to_str().map(str::to_string) else {
            if !send(Item::Problem(Msg::not_utf8(
                &entry.path().to_string_lossy(),
            ))) {
                return Vec::new();
            }
            continue;
        };
        if !scan_entry(&path, entry.path(), &mut plan, &mut chunker, &send) {
            return Vec::new();
        }
    }
    let deactivate = match plan.inventory {
        Some(inventory) => match inventory.remaining() {
            Ok(left) => left
                .into_iter()
                .filter(|p| !unreadable_dirs.iter().any(|d| crate::paths::within(p, d)))
                .collect(),
            Err(e) => {
                // Deactivating nothing is the safe side: versions stay active.
                let _ = send(Item::Problem(Msg::inventory_failed(e)));
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    batcher.flush();
    deactivate
}

/// Handles one walked entry; false when the receiver has gone.
fn scan_entry(
    path: &str,
    fs_path: &Path,
    plan: &mut ScanPlan,
    chunker: &mut Chunker,
    send: &impl Fn(Item) -> bool,
) -> bool {
    let meta = match std::fs::symlink_metadata(fs_path) {
        Ok(m) => m,
        Err(e) => return send(Item::Problem(Msg::unreadable(path, e))),
    };
    let link_target = if meta.file_type().is_symlink() {
        match std::fs::read_link(fs_path) {
            Ok(t) => t.to_string_lossy().into_owned(),
            Err(e) => return send(Item::Problem(Msg::unreadable(path, e))),
        }
    } else {
        String::new()
    };
    let Some(attrs) = attrs_of(path, &meta, link_target) else {
        return true; // special files are not backed up
    };
    // A lookup that fails counts as "not stored": the object is sent again,
    // the safe side.
    let stored = plan
        .inventory
        .as_mut()
        .and_then(|inv| inv.take(path).ok().flatten());
    if stored.is_some_and(|s| unchanged(&attrs, &s)) {
        return send(Item::Unchanged(1));
    }
    if attrs.kind != pb::ObjectKind::File as i32 {
        return send(Item::Object {
            attrs,
            chunks: Vec::new(),
        });
    }
    read_file(fs_path, attrs, chunker, send)
}

/// Sends a read file's object. A file that grew or shrank while it was read
/// is stored as read, with the size that matches the data, and reported.
fn finish_file(
    mut attrs: pb::ObjectAttrs,
    read: u64,
    chunks: Vec<ChunkId>,
    send: &impl Fn(Item) -> bool,
) -> bool {
    if read != attrs.size {
        if !send(Item::Problem(Msg::changed(&attrs.path))) {
            return false;
        }
        attrs.size = read;
    }
    send(Item::Object { attrs, chunks })
}

/// Reads a file through the chunker and sends its chunks, then the object.
/// Memory stays bounded by the chunker's buffer whatever the file's size.
fn read_file(
    fs_path: &Path,
    attrs: pb::ObjectAttrs,
    chunker: &mut Chunker,
    send: &impl Fn(Item) -> bool,
) -> bool {
    let file = match std::fs::File::open(fs_path) {
        Ok(f) => f,
        Err(e) => return send(Item::Problem(Msg::unreadable(&attrs.path, e))),
    };
    let mut chunks = Vec::new();
    let split = chunker.split(file, |piece| {
        let id = ChunkId::of(piece);
        chunks.push(id);
        send(Item::Scanned(piece.len() as u64))
            && send(Item::Chunk {
                id,
                data: piece.to_vec(),
            })
    });
    match split {
        Ok(Some(read)) => finish_file(attrs, read, chunks, send),
        Ok(None) => false,
        Err(e) => send(Item::Problem(Msg::unreadable(&attrs.path, e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
