//! Moving sealed containers to an S3 pool, and finding them there.
//!
//! A container is written and fsynced locally like in a local pool, so a
//! chunk is indexed only once its bytes are on the local disk. Once sealed
//! (the store has moved on to the next container), a background thread
//! uploads it; only when the bucket holds all of it does a marker file
//! `NNNNNNNN.remote` (its size and the bucket it is in) replace the local
//! file, each step fsynced. So at every instant each indexed chunk is on the
//! local disk, in the bucket, or both, and a crash at any step is repaired
//! by the next start: a local file beside its marker is deleted, a sealed
//! local file without one is uploaded again.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::object_pool::ObjectPool;
use crate::error::StorageError;

/// Longest wait between upload attempts while the bucket fails.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// A container whose bytes live in the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Remote {
    /// Object size in bytes.
    pub(super) size: u64,
}

/// The S3 side of a chunk store.
#[derive(Debug)]
pub(super) struct Offload {
    pub(super) pool: Arc<ObjectPool>,
    shared: Arc<Shared>,
    queue: Mutex<Sender<u32>>,
}

/// What the store and its upload thread share.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    pool: Arc<ObjectPool>,
    /// Containers in the bucket, from their markers.
    remote: Mutex<HashMap<u32, Remote>>,
    /// Held while a container moves to the bucket or is removed, so a
    /// compaction never races an upload of the same container.
    moving: Mutex<()>,
    /// The store's open read handles, dropped once a file is offloaded
    /// (an unlinked file keeps its disk space while a handle is open).
    readers: Arc<Mutex<HashMap<u32, Arc<File>>>>,
    /// Failed upload attempts so far, and the last one's error.
    failures: Mutex<(u64, String)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The marker of container `number` in `dir`.
pub(super) fn marker_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("{number:08}.remote"))
}

/// The intent file that replaces container `number`'s marker while its
/// object is deleted: a crash leaves a deletion to finish, never a marker
/// of an object that is gone.
fn deleting_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("{number:08}.deleting"))
}

/// The number of an intent file's name.
pub(super) fn deleting_number(path: &Path) -> Option<u32> {
    if path.extension()? != "deleting" {
        return None;
    }
    path.file_stem()?
        .to_str()?
        .parse()
        .ok()
        .filter(|n| *n <= super::MAX_CONTAINER_NUMBER)
}

/// The number of a marker file's name.
pub(super) fn marker_number(path: &Path) -> Option<u32> {
    if path.extension()? != "remote" {
        return None;
    }
    path.file_stem()?
        .to_str()?
        .parse()
        .ok()
        .filter(|n| *n <= super::MAX_CONTAINER_NUMBER)
}

/// The markers in `dir`: each container's size, checked against the bucket
/// `identity` they were written for (`None` accepts any, for a listing).
///
/// # Errors
/// I/O errors; [`StorageError::Damaged`] for an unreadable marker;
/// [`StorageError::Pool`] for a marker of another bucket.
pub(super) fn load_markers(
    dir: &Path,
    identity: Option<&str>,
) -> Result<HashMap<u32, Remote>, StorageError> {
    let mut remote = HashMap::new();
    if !dir.exists() {
        return Ok(remote);
    }
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let Some(number) = marker_number(&path) else {
            continue;
        };
        let text = tandem_os::atomic_file::read_small_text(&path, 4096).map_err(io_err(&path))?;
        let mut lines = text.lines();
        let size = lines.next().and_then(|l| l.trim().parse::<u64>().ok());
        let bucket = lines.next().map(str::trim).unwrap_or_default();
        let Some(size) = size else {
            return Err(StorageError::Damaged {
                path,
                offset: 0,
                reason: "a remote-container marker without a size on its first line".into(),
            });
        };
        if let Some(expected) = identity
            && bucket != expected
        {
            return Err(StorageError::Pool {
                pool: expected.to_string(),
                container: Some(number),
                reason: format!(
                    "the container was uploaded to {bucket}, not to the configured pool; configure [pool] with that bucket and prefix again"
                ),
            });
        }
        remote.insert(number, Remote { size });
    }
    Ok(remote)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Offload {
    /// Starts the upload thread for the store in `dir`, with the markers
    /// already found there.
    ///
    /// # Errors
    /// The thread could not be started.
    pub(super) fn start(
        dir: &Path,
        pool: Arc<ObjectPool>,
        remote: HashMap<u32, Remote>,
        readers: Arc<Mutex<HashMap<u32, Arc<File>>>>,
    ) -> Result<Self, StorageError> {
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            pool: pool.clone(),
            remote: Mutex::new(remote),
            moving: Mutex::new(()),
            readers,
            failures: Mutex::new((0, String::new())),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("tandem-upload".into())
            .spawn(move || {
                finish_deletions(&worker);
                let ran =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| upload_loop(&worker, &rx)));
                if ran.is_err() {
                    // Said where operators look (query stgpool, metrics):
                    // nothing is lost, but nothing moves until a restart.
                    let mut seen = lock(&worker.failures);
                    seen.0 += 1;
                    seen.1 = "the upload thread stopped on an internal error; sealed containers stay on the local disk until the server is restarted".into();
                    tracing::error!("{}", seen.1);
                }
            })
            .map_err(io_err(dir))?;
        Ok(Offload {
            pool,
            shared,
            queue: Mutex::new(tx),
        })
    }

    /// Queues sealed container `number` for upload.
    pub(super) fn sealed(&self, number: u32) {
        // The thread ends only when this sender is dropped.
        let _ = lock(&self.queue).send(number);
    }

    /// The container's size if it is in the bucket.
    pub(super) fn remote(&self, number: u32) -> Option<Remote> {
        lock(&self.shared.remote).get(&number).copied()
    }

    /// Every container in the bucket with its size.
    pub(super) fn list(&self) -> Vec<(u32, u64)> {
        lock(&self.shared.remote)
            .iter()
            .map(|(n, r)| (*n, r.size))
            .collect()
    }

    /// Failed upload attempts since the start, and the last one's error.
    pub(super) fn failures(&self) -> (u64, String) {
        lock(&self.shared.failures).clone()
    }

    /// Reads bytes of a container in the bucket.
    ///
    /// # Errors
    /// [`StorageError::Pool`].
    pub(super) fn read(
        &self,
        number: u32,
        remote: Remote,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, StorageError> {
        self.pool.read(number, offset, len, remote.size)
    }

    /// Removes container `number` wherever it is: its marker becomes an
    /// intent to delete (fsynced), then the object goes, then the intent,
    /// then any local file. A crash between leaves an intent the next start
    /// finishes; never a marker of an object that is gone (which would stop
    /// `restore-db`), never an object nothing knows of.
    ///
    /// # Errors
    /// [`StorageError::Pool`] when the bucket refuses; I/O errors.
    pub(super) fn remove(&self, number: u32) -> Result<(), StorageError> {
        let _moving = lock(&self.shared.moving);
        if self.remote(number).is_some() {
            let marker = marker_path(&self.shared.dir, number);
            let intent = deleting_path(&self.shared.dir, number);
            std::fs::rename(&marker, &intent).map_err(io_err(&marker))?;
            sync_dir(&self.shared.dir)?;
            lock(&self.shared.remote).remove(&number);
            crate::faults::pause_point_blocking("pool-deleting");
            // When the bucket refuses, the intent stays: the next start
            // finishes the deletion.
            self.pool.delete(number)?;
            std::fs::remove_file(&intent).map_err(io_err(&intent))?;
        }
        let local = super::ChunkStore::container_path(&self.shared.dir, number);
        match std::fs::remove_file(&local) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&local)(e)),
        }
        lock(&self.shared.readers).remove(&number);
        sync_dir(&self.shared.dir)
    }
}

/// Finishes the deletions a crash (or a refusing bucket) left as intent
/// files; one that fails again stays for the next start.
fn finish_deletions(shared: &Shared) {
    let Ok(entries) = std::fs::read_dir(&shared.dir) else {
        return;
    };
    for path in entries.flatten().map(|e| e.path()) {
        let Some(number) = deleting_number(&path) else {
            continue;
        };
        match shared.pool.delete(number) {
            Ok(()) => {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(cause = %e, "cannot remove {}", path.display());
                } else {
                    tracing::info!(
                        "finished removing container {number} from {}",
                        shared.pool.describe()
                    );
                }
            }
            Err(e) => tracing::warn!(
                "removing container {number} from {} is unfinished: {e}; tried again at the next start",
                shared.pool.describe()
            ),
        }
    }
    let _ = sync_dir(&shared.dir);
}

/// Uploads queued containers one at a time, lowest number first, retrying
/// with a growing wait while the bucket fails (containers sealed meanwhile
/// join the queue without cutting the wait short); after a failure the next
/// attempt takes the next container in turn, so one that keeps failing
/// does not hold up the others. Ends when the store is dropped.
fn upload_loop(shared: &Shared, queue: &Receiver<u32>) {
    let mut pending: BTreeSet<u32> = BTreeSet::new();
    let mut failures = 0u32;
    // Containers below this were tried and failed this turn.
    let mut turn = 0u32;
    loop {
        if pending.is_empty() {
            match queue.recv() {
                Ok(n) => {
                    pending.insert(n);
                }
                Err(_) => return,
            }
        }
        pending.extend(queue.try_iter());
        let Some(number) = pending
            .range(turn..)
            .next()
            .or_else(|| pending.first())
            .copied()
        else {
            continue;
        };
        match offload_one(shared, number) {
            Ok(()) => {
                pending.remove(&number);
                failures = 0;
                turn = 0;
            }
            Err(e) => {
                {
                    let mut seen = lock(&shared.failures);
                    seen.0 += 1;
                    seen.1 = e.to_string();
                }
                turn = number.saturating_add(1);
                failures = failures.saturating_add(1);
                let mut wait = Duration::from_secs(1u64 << failures.min(9)).min(MAX_RETRY_WAIT);
                if matches!(
                    e,
                    StorageError::PoolOwned { .. } | StorageError::PoolRefused { .. }
                ) {
                    // Not an outage: nothing moves until an operator acts.
                    wait = MAX_RETRY_WAIT;
                    tracing::error!(
                        container = number,
                        "TDM0446E {e}; no container is uploaded (they stay on the local disk, which fills) until this is fixed (a new prefix takes a restart)"
                    );
                } else {
                    tracing::warn!(
                        container = number,
                        attempt = failures,
                        retry_in_secs = wait.as_secs(),
                        "TDM0441W upload of container {number} to {} failed: {e}; it stays on the local disk and is tried again in {} s",
                        shared.pool.describe(),
                        wait.as_secs()
                    );
                }
                let until = std::time::Instant::now() + wait;
                loop {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match queue.recv_timeout(left) {
                        Ok(n) => {
                            pending.insert(n);
                        }
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
        }
    }
}

/// Uploads one sealed container and replaces its local file with a marker.
fn offload_one(shared: &Shared, number: u32) -> Result<(), StorageError> {
    let local = super::ChunkStore::container_path(&shared.dir, number);
    if !local.exists() || lock(&shared.remote).contains_key(&number) {
        return Ok(());
    }
    let size = shared.pool.upload(number, &local)?;
    crate::faults::pause_point_blocking("pool-uploaded");
    let _moving = lock(&shared.moving);
    if !local.exists() {
        // Compacted away while it was uploading: nothing points at it.
        return shared.pool.delete(number);
    }
    let marker = marker_path(&shared.dir, number);
    let content = format!("{size}\n{}\n", shared.pool.identity());
    tandem_os::atomic_file::replace(&marker, content.as_bytes(), Some(0o600))
        .map_err(io_err(&marker))?;
    lock(&shared.remote).insert(number, Remote { size });
    // Unlinked first, handles dropped after: a reader that opens the file
    // in between is dropped with the others, and one after finds the
    // marker; no handle keeps a deleted file's space.
    std::fs::remove_file(&local).map_err(io_err(&local))?;
    lock(&shared.readers).remove(&number);
    sync_dir(&shared.dir)?;
    tracing::info!(
        container = number,
        bytes = size,
        "TDM0440I container {number} ({size} bytes) is in {}; its local copy is removed",
        shared.pool.describe()
    );
    Ok(())
}
