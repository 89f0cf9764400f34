//! Chunk containers: append-only files holding compressed chunk data.
//!
//! A container is `containers/NNNNNNNN.tdc`, a sequence of records
//! `[chunk id: 32][stored_len: u32 LE][raw_len: u32 LE][data]`. The header
//! lets a container be checked or re-indexed without the catalog.
//!
//! Write order (restic's "data before index"): bytes are appended and fsynced,
//! *then* the chunk rows go into the catalog. A crash in between leaves bytes no
//! row points at; [`ChunkStore::open`] cuts every container back to the end of
//! its last indexed chunk, so nothing unacknowledged survives a restart.
//!
//! Appends write whole blocks around the page cache ([`appender`]).
//!
//! In an S3 pool, sealed containers move to a bucket ([`offload`],
//! [`object_pool`]) and are read from there; the store's interface is the
//! same.

mod appender;
mod block_cache;
pub mod object_pool;
mod offload;
pub mod pool_owner;
pub mod pools;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use prost::bytes::Bytes;
use tandem_proto::ChunkId;

use crate::error::StorageError;
use crate::model::{ChunkLocation, DEFAULT_POOL};
use appender::ContainerAppender;

/// Opens a local container for reading, never through a symlink: a link
/// planted in the data dir (a vault's on a share) must not make a read,
/// an audit or an upload to a bucket take another file's bytes.
fn open_container(path: &Path) -> std::io::Result<File> {
    regular_file(
        OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(path)?,
    )
}

/// `file`, if it is a regular file. Containers are opened without blocking
/// (`O_NONBLOCK`, which changes nothing for a regular file), so that a FIFO
/// or a device planted under a container's name is refused here rather
/// than hanging the open or feeding endless bytes.
fn regular_file(file: File) -> std::io::Result<File> {
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(not_a_regular_file())
    }
}

fn not_a_regular_file() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "it is not a regular file (a container is one)",
    )
}
use object_pool::ObjectPool;
use offload::{Offload, Remote};

/// A container is closed for appends once it reaches this size (in a local
/// pool; an S3 pool's `container_mib` sets its own).
const CONTAINER_TARGET_BYTES: u64 = 256 * 1024 * 1024;
/// Size of a record header.
pub const HEADER_BYTES: u64 = 40;
/// Largest uncompressed chunk a client may send (the protocol's ceiling).
pub const MAX_RAW_CHUNK: usize = tandem_proto::MAX_RAW_CHUNK_BYTES;

/// A chunk whose hash was checked, ready to store.
#[derive(Debug, Clone)]
pub struct VerifiedChunk {
    /// Its id.
    pub id: ChunkId,
    /// Compressed bytes as received (a slice of the received message).
    pub data: Bytes,
    /// Uncompressed length.
    pub raw_len: u32,
}

/// A decompression context and an output buffer for verifying chunks.
type VerifyScratch = (zstd::bulk::Decompressor<'static>, Vec<u8>);

/// Verification scratch kept between uses, reused across chunks: a fresh
/// context and a fresh multi-MiB buffer per chunk showed in the server's
/// profile as context set-up, page faults and page zeroing. A shared pool
/// rather than one per thread: verification runs on the blocking pool, whose
/// threads number in the dozens while many nodes upload, and a buffer of up
/// to the largest chunk left on each of them came to 119 MB in a heap profile
/// with 16 nodes backing up at once (21 MB with the pool). Uploads verify at
/// most [`verify_parallelism`] messages at once (`repository::ingest`), so
/// that many sets are kept; more in use at once are dropped after use.
static VERIFY_SCRATCH: std::sync::Mutex<Vec<VerifyScratch>> = std::sync::Mutex::new(Vec::new());

/// Messages verified at once over all uploads: two per core keep the cores
/// busy; more would only multiply scratch buffers and threads.
///
/// Worked out once: `available_parallelism` reads the cgroup files (open,
/// read, close) on every call, and called per chunk, under the scratch
/// pool's lock, it was a fifth of the server's CPU in a backup of 80,000
/// small files.
pub fn verify_parallelism() -> usize {
    static PARALLELISM: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PARALLELISM.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        (2 * cores).clamp(2, 64)
    })
}

/// A record's header: chunk id, stored length, raw length.
fn record_header(chunk: &VerifiedChunk) -> [u8; HEADER_BYTES as usize] {
    let mut header = [0u8; HEADER_BYTES as usize];
    header[..32].copy_from_slice(chunk.id.as_slice());
    header[32..36].copy_from_slice(&(chunk.data.len() as u32).to_le_bytes());
    header[36..].copy_from_slice(&chunk.raw_len.to_le_bytes());
    header
}

/// The magic number that opens every zstd data frame.
const ZSTD_FRAME_MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();

/// Checks that `data` is exactly one zstd data frame no larger than zstd's
/// bound for `raw_len` bytes. A decoder skips skippable frames and trailing
/// frames would be stored and served too: without this check one upload
/// could attach tens of MiB of padding to a chunk every node shares.
fn check_frame(data: &[u8], raw_len: usize) -> Result<(), String> {
    let bound = zstd::zstd_safe::compress_bound(raw_len);
    if data.len() > bound {
        return Err(format!(
            "{} compressed bytes for {raw_len} raw bytes; zstd never needs more than {bound}",
            data.len()
        ));
    }
    if data.get(..4) != Some(&ZSTD_FRAME_MAGIC[..]) {
        return Err("not a zstd data frame (a skippable frame or no frame at all)".into());
    }
    match zstd::zstd_safe::find_frame_compressed_size(data) {
        Ok(n) if n == data.len() => Ok(()),
        Ok(n) => Err(format!(
            "{} bytes follow the zstd frame of {n} bytes; send exactly one frame",
            data.len() - n
        )),
        Err(code) => Err(format!(
            "malformed zstd frame: {}",
            zstd::zstd_safe::get_error_name(code)
        )),
    }
}

/// Runs `work` with a verification scratch set from the pool (a new one when
/// all are in use), and puts it back.
fn with_verify_scratch<R>(
    work: impl FnOnce(&mut VerifyScratch) -> std::io::Result<R>,
) -> std::io::Result<R> {
    let kept = VERIFY_SCRATCH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop();
    let mut scratch = match kept {
        Some(scratch) => scratch,
        None => (zstd::bulk::Decompressor::new()?, Vec::new()),
    };
    let result = work(&mut scratch);
    let mut pool = VERIFY_SCRATCH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if pool.len() < verify_parallelism() {
        pool.push(scratch);
    }
    result
}

/// Checks that `data` is one zstd frame that decompresses to `raw_len`
/// bytes hashing to `id`.
///
/// # Errors
/// [`StorageError::ChunkMalformed`] or [`StorageError::ChunkMismatch`].
pub fn verify_chunk(id: ChunkId, data: Bytes, raw_len: u64) -> Result<VerifiedChunk, StorageError> {
    let malformed = |reason: String| StorageError::ChunkMalformed { chunk: id, reason };
    let raw_len_usize = usize::try_from(raw_len)
        .ok()
        .filter(|n| *n <= MAX_RAW_CHUNK)
        .ok_or_else(|| malformed(format!("raw length {raw_len} exceeds {MAX_RAW_CHUNK}")))?;
    check_frame(&data, raw_len_usize).map_err(malformed)?;
    let hashed = with_verify_scratch(|(decompressor, raw)| {
        raw.clear();
        raw.reserve(raw_len_usize);
        decompressor.decompress_to_buffer(&data, raw)?;
        Ok::<_, std::io::Error>((raw.len(), ChunkId::of(raw)))
    });
    let (len, hashed) = hashed.map_err(|e| malformed(e.to_string()))?;
    if len != raw_len_usize {
        return Err(malformed(format!(
            "decompressed to {len} bytes, expected {raw_len}"
        )));
    }
    if hashed != id {
        return Err(StorageError::ChunkMismatch { chunk: id });
    }
    Ok(VerifiedChunk {
        id,
        data,
        raw_len: raw_len_usize as u32,
    })
}

/// What `query stgpool` shows: where the containers are and, in an S3
/// pool, the object store's traffic since the server started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// `local` or `s3`.
    pub kind: &'static str,
    /// The containers directory, or the bucket and endpoint.
    pub location: String,
    /// Containers on the local disk.
    pub local_containers: u64,
    /// Their bytes.
    pub local_bytes: u64,
    /// Containers in the bucket.
    pub remote_containers: u64,
    /// Their bytes.
    pub remote_bytes: u64,
    /// Sealed containers waiting for upload.
    pub uploads_pending: u64,
    /// PUT requests (multipart parts included).
    pub put_requests: u64,
    /// Ranged GETs.
    pub get_requests: u64,
    /// HEAD requests.
    pub head_requests: u64,
    /// DELETE requests.
    pub delete_requests: u64,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// Bytes downloaded.
    pub bytes_downloaded: u64,
    /// Failed upload attempts.
    pub upload_failures: u64,
    /// The last failed upload's error.
    pub last_upload_error: String,
}

/// Container numbers, unique across a server's storage pools: a new
/// container in any pool takes the next one. So a number names one
/// container wherever it is (`audit container N`, the catalog's rows, an
/// object's key in a bucket), and pools never collide.
#[derive(Debug, Default)]
pub struct ContainerNumbers(std::sync::atomic::AtomicU32);

impl ContainerNumbers {
    /// Numbers after `highest`, the highest in use in any pool.
    #[must_use]
    pub fn after(highest: u32) -> Arc<Self> {
        Arc::new(ContainerNumbers(std::sync::atomic::AtomicU32::new(highest)))
    }

    /// The number for a new container.
    fn next(&self) -> u32 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
    }

    /// Notes that `number` is in use.
    fn observe(&self, number: u32) {
        self.0
            .fetch_max(number, std::sync::atomic::Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct Appender {
    number: u32,
    out: ContainerAppender,
}

/// Which pool a [`ChunkStore`] is and where its containers are.
#[derive(Debug, Clone)]
pub struct PoolPlace<'a> {
    /// `pools.id` in the catalog.
    pub id: u32,
    /// Its table in the configuration (`pool`, `pools.NAME`), for messages.
    pub table: &'a str,
    /// The containers directory (an S3 pool's staging directory).
    pub dir: &'a Path,
    /// The server's container numbers, shared by its pools.
    pub numbers: Arc<ContainerNumbers>,
    /// Numbers other pools have (files, markers, indexed chunks).
    pub taken: &'a std::collections::HashSet<u32>,
}

/// The containers of one storage pool.
#[derive(Debug)]
pub struct ChunkStore {
    /// The storage pool these containers are (`pools.id` in the catalog).
    pool: u32,
    dir: PathBuf,
    /// Shared with the server's other pools.
    numbers: Arc<ContainerNumbers>,
    /// Size at which a container is sealed.
    seal_bytes: u64,
    appender: Mutex<Appender>,
    readers: Arc<Mutex<HashMap<u32, Arc<File>>>>,
    /// The bucket sealed containers move to, in an S3 pool.
    offload: Option<Offload>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic mid-append leaves at worst unindexed bytes, which are harmless.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ChunkStore {
    /// Opens the containers in `dir` as a local pool, cutting each back to
    /// `indexed_ends` (the end of its last indexed chunk; containers absent
    /// from it are emptied).
    ///
    /// # Errors
    /// I/O errors on the directory or a container.
    pub fn open(dir: &Path, indexed_ends: &[(u32, u64)]) -> Result<Self, StorageError> {
        let taken = std::collections::HashSet::new();
        let numbers =
            ContainerNumbers::after(Self::numbers_in(dir)?.into_iter().max().unwrap_or(0));
        Self::open_in_pool(
            PoolPlace {
                id: DEFAULT_POOL,
                table: "pool",
                dir,
                numbers,
                taken: &taken,
            },
            indexed_ends,
            None,
            CONTAINER_TARGET_BYTES,
        )
    }

    /// Every container number `dir` holds or has in a bucket (its files,
    /// markers and pending deletions).
    ///
    /// # Errors
    /// I/O errors reading the directory.
    pub fn numbers_in(dir: &Path) -> Result<std::collections::HashSet<u32>, StorageError> {
        let mut numbers = std::collections::HashSet::new();
        if !dir.exists() {
            return Ok(numbers);
        }
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            let number = container_number(&path)
                .or_else(|| offload::marker_number(&path))
                .or_else(|| offload::deleting_number(&path));
            numbers.extend(number);
        }
        Ok(numbers)
    }

    /// Opens the containers in `dir` as [`Self::open`] does; with `pool`,
    /// sealed containers (`seal_bytes` each) move to its bucket, and those
    /// already there are read from it.
    ///
    /// # Errors
    /// I/O errors on the directory or a container; [`StorageError::Pool`]
    /// when containers are in a bucket but no pool, or another, is given.
    pub fn open_in_pool(
        place: PoolPlace<'_>,
        indexed_ends: &[(u32, u64)],
        pool: Option<ObjectPool>,
        seal_bytes: u64,
    ) -> Result<Self, StorageError> {
        let PoolPlace {
            id: pool_id,
            table,
            dir,
            numbers,
            taken,
        } = place;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let remote = offload::load_markers(dir, pool.as_ref().map(ObjectPool::identity))?;
        if pool.is_none()
            && let Some(number) = remote.keys().min()
        {
            return Err(StorageError::Pool {
                pool: "none configured".into(),
                container: Some(*number),
                reason: format!(
                    "{} container(s) of this pool are in an S3 bucket ({} names it); configure the [{table}] they were uploaded to",
                    remote.len(),
                    offload::marker_path(dir, *number).display()
                ),
            });
        }
        let ends: HashMap<u32, u64> = indexed_ends.iter().copied().collect();
        let mut highest = remote.keys().copied().max().unwrap_or(0);
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let Some(number) = container_number(&entry.path()) else {
                continue;
            };
            let path = entry.path();
            if remote.contains_key(&number) {
                // Uploaded, marked, then a crash before the local copy went.
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            highest = highest.max(number);
            let end = ends.get(&number).copied().unwrap_or(0);
            // Named first by its type (a FIFO opened for writing without a
            // reader fails with a less telling error), then checked again
            // on the open file.
            let is_file = entry.file_type().map_err(io_err(&path))?.is_file();
            let file = if is_file {
                OpenOptions::new()
                    .write(true)
                    .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                    .open(&path)
                    .and_then(regular_file)
            } else {
                Err(not_a_regular_file())
            }
            .map_err(io_err(&path))?;
            let len = file.metadata().map_err(io_err(&path))?.len();
            if len > end {
                tracing::warn!(
                    container = number,
                    len,
                    end,
                    "cutting unacknowledged bytes from container"
                );
                file.set_len(end).map_err(io_err(&path))?;
                file.sync_all().map_err(io_err(&path))?;
            }
        }
        // A number this high was never handed out (a billion containers
        // would come first): a file put there under that name would move
        // the numbering to where new containers could no longer be seen.
        if highest > HIGHEST_NUMBER_IN_USE {
            return Err(StorageError::Pool {
                pool: table.to_string(),
                container: Some(highest),
                reason: format!(
                    "{} holds a container numbered {highest}, and Tandem never numbers containers above {HIGHEST_NUMBER_IN_USE}: something else put that file there. Move it away and start again",
                    dir.display()
                ),
            });
        }
        // Appends go on in this pool's newest local container; never to a
        // container that is in the bucket or whose number another pool has
        // (taken while this pool was out of the configuration), and a new
        // one takes the next number of all pools.
        numbers.observe(highest);
        let number = if highest == 0 || remote.contains_key(&highest) || taken.contains(&highest) {
            numbers.next()
        } else {
            highest
        };
        // Containers emptied by a compaction that crashed before unlinking them.
        for (n, _) in Self::list_containers(dir)? {
            let path = Self::container_path(dir, n);
            if n != number && std::fs::metadata(&path).map(|m| m.len()).unwrap_or(1) == 0 {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        let appender = Self::open_appender(dir, number)?;
        let readers = Arc::new(Mutex::new(HashMap::new()));
        let offload = match pool {
            None => None,
            Some(pool) => {
                let offload = Offload::start(dir, Arc::new(pool), remote, readers.clone())?;
                // Sealed before the last stop but not yet in the bucket.
                for (n, _) in Self::list_containers(dir)? {
                    if n != number {
                        offload.sealed(n);
                    }
                }
                Some(offload)
            }
        };
        Ok(ChunkStore {
            pool: pool_id,
            dir: dir.to_path_buf(),
            numbers,
            seal_bytes,
            appender: Mutex::new(appender),
            readers,
            offload,
        })
    }

    /// The storage pool these containers are (`pools.id`).
    #[must_use]
    pub fn pool(&self) -> u32 {
        self.pool
    }

    /// The file of container `number` in `dir`.
    #[must_use]
    pub fn container_path(dir: &Path, number: u32) -> PathBuf {
        dir.join(format!("{number:08}.tdc"))
    }

    fn open_appender(dir: &Path, number: u32) -> Result<Appender, StorageError> {
        let path = Self::container_path(dir, number);
        let existed = path.exists();
        let out = ContainerAppender::open(&path).map_err(io_err(&path))?;
        if !existed {
            // Make the new directory entry durable before any chunk in it is indexed.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))?;
        }
        Ok(Appender { number, out })
    }

    /// Appends chunks and fsyncs them. The returned locations may be indexed
    /// once this returns: the bytes are on disk.
    ///
    /// # Errors
    /// I/O errors writing or syncing a container.
    pub fn append(
        &self,
        chunks: &[VerifiedChunk],
    ) -> Result<Vec<(ChunkId, ChunkLocation)>, StorageError> {
        let mut locations = Vec::with_capacity(chunks.len());
        let mut to_sync: Vec<(u32, Arc<File>)> = Vec::new();
        let headers: Vec<[u8; HEADER_BYTES as usize]> = chunks.iter().map(record_header).collect();
        {
            let mut app = lock(&self.appender);
            // Chunks from `first` on go to the current container, in one
            // append per container (gathered into the appender's aligned
            // block, see `appender`).
            let mut first = 0;
            let mut end = app.out.len();
            for (i, chunk) in chunks.iter().enumerate() {
                if end >= self.seal_bytes {
                    self.write_records(&mut app, &headers[first..i], &chunks[first..i])?;
                    first = i;
                    to_sync.push((app.number, app.out.file()));
                    let sealed = app.number;
                    *app = Self::open_appender(&self.dir, self.numbers.next())?;
                    // Queued now: a later failure in this call must not
                    // leave it unqueued until the next start.
                    if let Some(offload) = &self.offload {
                        offload.sealed(sealed);
                    }
                    end = app.out.len();
                }
                let stored_len = chunk.data.len() as u32;
                let offset = end + HEADER_BYTES;
                end = offset + u64::from(stored_len);
                locations.push((
                    chunk.id,
                    ChunkLocation {
                        pool: self.pool,
                        container: app.number,
                        offset,
                        stored_len,
                        raw_len: chunk.raw_len,
                    },
                ));
            }
            self.write_records(&mut app, &headers[first..], &chunks[first..])?;
            to_sync.push((app.number, app.out.file()));
        }
        // fsync outside the lock so concurrent sessions can append meanwhile.
        for (number, file) in to_sync {
            file.sync_data()
                .map_err(io_err(&Self::container_path(&self.dir, number)))?;
        }
        Ok(locations)
    }

    /// Writes records (header, then data, per chunk) at the end of the
    /// current container, where [`Self::append`] placed them.
    fn write_records(
        &self,
        app: &mut Appender,
        headers: &[[u8; HEADER_BYTES as usize]],
        chunks: &[VerifiedChunk],
    ) -> Result<(), StorageError> {
        let pieces: Vec<&[u8]> = headers
            .iter()
            .zip(chunks)
            .flat_map(|(h, c)| [h.as_slice(), &c.data[..]])
            .collect();
        let path = Self::container_path(&self.dir, app.number);
        if let Err(e) = crate::faults::fail_point("container-write") {
            // As a disk that fills up mid-write: part of the records land.
            let _ = app.out.append(&pieces[..pieces.len() / 2]);
            return Err(io_err(&path)(e));
        }
        app.out.append(&pieces).map_err(io_err(&path))
    }

    /// Reads a chunk's stored (compressed) bytes.
    ///
    /// # Errors
    /// I/O errors, including a container shorter than the index says.
    pub fn read(&self, loc: ChunkLocation) -> Result<Vec<u8>, StorageError> {
        let path = Self::container_path(&self.dir, loc.container);
        // The length comes from the catalog (a vault's may sit where others
        // write): no stored chunk is longer than zstd's bound for the
        // largest raw chunk, and a longer claim must not size a buffer.
        let most = zstd::zstd_safe::compress_bound(tandem_proto::MAX_RAW_CHUNK_BYTES);
        if loc.stored_len as usize > most {
            return Err(StorageError::Damaged {
                path,
                offset: loc.offset,
                reason: format!(
                    "the catalog gives a chunk {} stored bytes, more than any chunk may have ({most})",
                    loc.stored_len
                ),
            });
        }
        let file = match self.reader(loc.container) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Moved to the bucket (the marker is written before the
                // local file goes, so it is known by now).
                if let Some((offload, remote)) = self.remote(loc.container) {
                    return offload.read(
                        loc.container,
                        remote,
                        loc.offset,
                        loc.stored_len as usize,
                    );
                }
                return Err(io_err(&path)(e));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut data = vec![0u8; loc.stored_len as usize];
        file.read_exact_at(&mut data, loc.offset)
            .map_err(io_err(&path))?;
        Ok(data)
    }

    /// Whether `loc` lies in a container in the S3 pool's bucket and the
    /// bucket did not answer a read lately: a reader that has another
    /// pool's copy reads that instead of waiting out the retries.
    #[must_use]
    pub fn unanswering(&self, loc: ChunkLocation) -> bool {
        self.offload.as_ref().is_some_and(|offload| {
            offload.pool.recently_unanswered() && offload.remote(loc.container).is_some()
        })
    }

    /// Warms the S3 pool's read cache for `locations` (several GETs in
    /// flight), ahead of reading them one by one; nothing to do in a local
    /// pool or for containers still on the local disk.
    pub fn prefetch(&self, locations: &[ChunkLocation], read_ahead: bool) {
        let Some(offload) = &self.offload else {
            return;
        };
        let wanted: Vec<(u32, u64, u64, u64)> = locations
            .iter()
            .filter_map(|loc| {
                let remote = offload.remote(loc.container)?;
                Some((
                    loc.container,
                    loc.offset,
                    u64::from(loc.stored_len),
                    remote.size,
                ))
            })
            .collect();
        if !wanted.is_empty() {
            offload.pool.prefetch(&wanted, read_ahead);
        }
    }

    /// Splits a read of `locations`, in order, into consecutive waves
    /// (index ranges) small enough to prefetch whole into an S3 pool's
    /// cache while the wave before is read. In a local pool, and for
    /// containers still on the local disk, there is nothing to fetch: one
    /// wave.
    pub fn read_waves(&self, locations: &[Option<ChunkLocation>]) -> Vec<std::ops::Range<usize>> {
        let Some(offload) = &self.offload else {
            return if locations.is_empty() {
                Vec::new()
            } else {
                std::iter::once(0..locations.len()).collect()
            };
        };
        let items: Vec<Option<(u32, u64, u64)>> = locations
            .iter()
            .map(|loc| {
                let loc = (*loc)?;
                offload.remote(loc.container)?;
                Some((loc.container, loc.offset, u64::from(loc.stored_len)))
            })
            .collect();
        object_pool::waves(&items, offload.pool.wave_blocks())
    }

    /// An open handle on a local container, kept for later reads.
    fn reader(&self, number: u32) -> std::io::Result<Arc<File>> {
        let mut readers = lock(&self.readers);
        if let Some(f) = readers.get(&number) {
            return Ok(f.clone());
        }
        let f = Arc::new(open_container(&Self::container_path(&self.dir, number))?);
        readers.insert(number, f.clone());
        Ok(f)
    }

    /// The bucket side and the object, when container `number` is in one.
    fn remote(&self, number: u32) -> Option<(&Offload, Remote)> {
        let offload = self.offload.as_ref()?;
        Some((offload, offload.remote(number)?))
    }

    /// The S3 pool, when the store has one.
    #[must_use]
    pub fn object_pool(&self) -> Option<&ObjectPool> {
        self.offload.as_ref().map(|o| o.pool.as_ref())
    }

    /// [`Self::object_pool`], for work that may outlive this borrow (the
    /// start's claim, which goes on in the background when slow).
    #[must_use]
    pub fn shared_object_pool(&self) -> Option<Arc<ObjectPool>> {
        self.offload.as_ref().map(|o| Arc::clone(&o.pool))
    }

    /// Whether `dir` holds markers of containers uploaded to a bucket.
    #[must_use]
    pub fn has_remote_markers(dir: &Path) -> bool {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| offload::marker_number(&e.path()).is_some())
        })
    }

    /// Where the containers are and, in an S3 pool, the traffic so far.
    ///
    /// # Errors
    /// I/O errors listing the containers directory.
    pub fn pool_status(&self) -> Result<PoolStatus, StorageError> {
        let local = Self::list_containers(&self.dir)?;
        let mut status = PoolStatus {
            local_containers: local.len() as u64,
            local_bytes: local.iter().map(|(_, size)| size).sum(),
            ..PoolStatus::default()
        };
        let Some(offload) = &self.offload else {
            status.kind = "local";
            status.location = self.dir.display().to_string();
            return Ok(status);
        };
        let remote = offload.list();
        let traffic = offload.pool.traffic();
        let read = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let (failures, last_error) = offload.failures();
        Ok(PoolStatus {
            kind: "s3",
            location: offload.pool.describe().to_string(),
            remote_containers: remote.len() as u64,
            remote_bytes: remote.iter().map(|(_, size)| size).sum(),
            // Every local container but the open one waits for its upload.
            uploads_pending: status.local_containers.saturating_sub(1),
            put_requests: read(&traffic.puts),
            get_requests: read(&traffic.gets),
            head_requests: read(&traffic.heads),
            delete_requests: read(&traffic.deletes),
            bytes_uploaded: read(&traffic.bytes_up),
            bytes_downloaded: read(&traffic.bytes_down),
            upload_failures: failures,
            last_upload_error: last_error,
            ..status
        })
    }
}

impl ChunkStore {
    fn list_containers(dir: &Path) -> Result<Vec<(u32, u64)>, StorageError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            if let Some(n) = container_number(&path) {
                match std::fs::metadata(&path) {
                    Ok(meta) => out.push((n, meta.len())),
                    // Moved to the bucket since the directory was read.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The records of container `number` in file order, as its own headers
    /// describe them (whether the catalog still points at them or not).
    ///
    /// # Errors
    /// I/O and pool errors; [`StorageError::Damaged`] when a record runs
    /// past the end.
    pub fn records(&self, number: u32) -> Result<Vec<(ChunkId, ChunkLocation)>, StorageError> {
        let pool = self.offload.as_ref().map(|o| &*o.pool);
        let remote = self.remote(number).map(|(_, r)| r.size);
        let bytes = match ContainerBytes::of(&self.dir, number, pool, remote) {
            // Moved to the bucket between the two looks.
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound
                    && let Some((_, r)) = self.remote(number) =>
            {
                ContainerBytes::of(&self.dir, number, pool, Some(r.size))?
            }
            other => other?,
        };
        records_in(&bytes, self.pool, number, false)
    }

    /// Every record of every container in `dir` (and in `pool`'s bucket, for
    /// the containers moved there), read from the containers' own headers
    /// without opening a store (which would cut containers back to what the
    /// catalog indexes): what a restored catalog is checked against before
    /// the server starts on it. The newest container's torn tail (a write a
    /// crash cut short) ends its list, as it was never acknowledged;
    /// anywhere else a record that does not fit is damage, and an error,
    /// since the intact records after it could not be found.
    ///
    /// # Errors
    /// I/O and pool errors; [`StorageError::Damaged`] for a container whose
    /// records do not add up.
    pub fn scan_dir(
        dir: &Path,
        pool_id: u32,
        pool: Option<&ObjectPool>,
    ) -> Result<Vec<(ChunkId, ChunkLocation)>, StorageError> {
        let mut all = Vec::new();
        if !dir.exists() {
            return Ok(all);
        }
        let remote = offload::load_markers(dir, pool.map(ObjectPool::identity))?;
        if pool.is_none()
            && let Some(number) = remote.keys().min()
        {
            return Err(StorageError::Pool {
                pool: "none configured".into(),
                container: Some(*number),
                reason: "containers of this data dir are in an S3 bucket; configure the [pool] they were uploaded to".into(),
            });
        }
        let mut containers: Vec<(u32, Option<u64>)> = Self::list_containers(dir)?
            .into_iter()
            .filter(|(n, _)| !remote.contains_key(n))
            .map(|(n, _)| (n, None))
            .collect();
        containers.extend(remote.iter().map(|(n, r)| (*n, Some(r.size))));
        containers.sort_unstable();
        let newest = containers.last().map(|(number, _)| *number);
        for (number, size) in containers {
            let bytes = ContainerBytes::of(dir, number, pool, size)?;
            all.extend(records_in(&bytes, pool_id, number, Some(number) == newest)?);
        }
        Ok(all)
    }

    /// Every container with its file size.
    ///
    /// # Errors
    /// I/O errors listing the directory.
    pub fn containers(&self) -> Result<Vec<(u32, u64)>, StorageError> {
        let mut all = Self::list_containers(&self.dir)?;
        if let Some(offload) = &self.offload {
            let remote = offload.list();
            all.retain(|(n, _)| !remote.iter().any(|(r, _)| r == n));
            all.extend(remote);
            all.sort_unstable();
        }
        Ok(all)
    }

    /// Starts a new container for appends if the current one holds data, so
    /// the current one can be compacted. Returns the container now appended to.
    ///
    /// # Errors
    /// I/O errors creating the new container.
    pub fn seal(&self) -> Result<u32, StorageError> {
        let mut app = lock(&self.appender);
        if app.out.len() > 0 {
            let sealed = app.number;
            *app = Self::open_appender(&self.dir, self.numbers.next())?;
            if let Some(offload) = &self.offload {
                offload.sealed(sealed);
            }
        }
        Ok(app.number)
    }

    /// Deletes a container that no indexed chunk points into any more
    /// (its file, or its object in an S3 pool). Readers that already opened
    /// the file keep reading their handle until done.
    ///
    /// # Errors
    /// I/O errors removing the file; pool errors deleting the object.
    pub fn remove_container(&self, number: u32) -> Result<(), StorageError> {
        if let Some(offload) = &self.offload {
            return offload.remove(number);
        }
        let path = Self::container_path(&self.dir, number);
        lock(&self.readers).remove(&number);
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }
}

/// Where a container's bytes are read from while walking its records.
enum ContainerBytes<'a> {
    Local { path: PathBuf, file: File, len: u64 },
    Remote { pool: &'a ObjectPool, size: u64 },
}

impl<'a> ContainerBytes<'a> {
    /// Container `number`: in the bucket when `remote_size` is given.
    fn of(
        dir: &Path,
        number: u32,
        pool: Option<&'a ObjectPool>,
        remote_size: Option<u64>,
    ) -> Result<Self, StorageError> {
        if let (Some(pool), Some(size)) = (pool, remote_size) {
            return Ok(ContainerBytes::Remote { pool, size });
        }
        let path = ChunkStore::container_path(dir, number);
        let file = open_container(&path).map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        Ok(ContainerBytes::Local { path, file, len })
    }

    fn len(&self) -> u64 {
        match self {
            ContainerBytes::Local { len, .. } => *len,
            ContainerBytes::Remote { size, .. } => *size,
        }
    }

    /// A name for messages.
    fn path(&self, number: u32) -> PathBuf {
        match self {
            ContainerBytes::Local { path, .. } => path.clone(),
            ContainerBytes::Remote { pool, .. } => {
                PathBuf::from(format!("{}containers/{number:08}.tdc", pool.identity()))
            }
        }
    }

    fn read_exact_at(&self, number: u32, buf: &mut [u8], offset: u64) -> Result<(), StorageError> {
        match self {
            ContainerBytes::Local { path, file, .. } => {
                file.read_exact_at(buf, offset).map_err(io_err(path))
            }
            ContainerBytes::Remote { pool, size } => {
                let data = pool.read(number, offset, buf.len(), *size)?;
                buf.copy_from_slice(&data);
                Ok(())
            }
        }
    }
}

/// The records of one container, from its headers.
fn records_in(
    bytes: &ContainerBytes<'_>,
    pool: u32,
    number: u32,
    stop_at_torn_tail: bool,
) -> Result<Vec<(ChunkId, ChunkLocation)>, StorageError> {
    let len = bytes.len();
    let mut records = Vec::new();
    let mut offset = 0u64;
    let mut header = [0u8; HEADER_BYTES as usize];
    while offset < len {
        let damaged = |reason: String| StorageError::Damaged {
            path: bytes.path(number),
            offset,
            reason,
        };
        let short = len - offset < HEADER_BYTES;
        if !short {
            bytes.read_exact_at(number, &mut header, offset)?;
        }
        let stored_len = u32::from_le_bytes(header[32..36].try_into().unwrap_or_default());
        let raw_len = u32::from_le_bytes(header[36..].try_into().unwrap_or_default());
        let data_at = offset + HEADER_BYTES;
        let end = data_at + u64::from(stored_len);
        let torn = short || end > len;
        if torn && stop_at_torn_tail {
            break;
        }
        if short {
            return Err(damaged(format!(
                "{} bytes left, less than a record header",
                len - offset
            )));
        }
        if end > len {
            return Err(damaged(format!(
                "a record of {stored_len} bytes runs past the end ({len})"
            )));
        }
        let id = ChunkId::from_slice(&header[..32]).map_err(|e| damaged(e.to_string()))?;
        records.push((
            id,
            ChunkLocation {
                pool,
                container: number,
                offset: data_at,
                stored_len,
                raw_len,
            },
        ));
        offset = end;
    }
    Ok(records)
}

fn container_number(path: &Path) -> Option<u32> {
    if path.extension()? != "tdc" {
        return None;
    }
    path.file_stem()?
        .to_str()?
        .parse()
        .ok()
        .filter(|n| *n <= MAX_CONTAINER_NUMBER)
}

/// The highest container number a store takes for its own: far more
/// containers than any disk holds, and far enough from `u32::MAX` that a
/// file planted under a number near it (a vault's directory may be on a
/// share) cannot make the numbering wrap round onto containers in use.
/// Files named above it are not containers and are left alone.
const MAX_CONTAINER_NUMBER: u32 = 1 << 31;

/// The highest number a store starts from: below it by 2^30 containers,
/// so that every number it hands out stays at or below
/// [`MAX_CONTAINER_NUMBER`], where it is seen.
const HIGHEST_NUMBER_IN_USE: u32 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_numbered_near_the_top_are_not_containers() {
        assert_eq!(container_number(Path::new("00000001.tdc")), Some(1));
        assert_eq!(
            container_number(Path::new("2147483648.tdc")),
            Some(MAX_CONTAINER_NUMBER)
        );
        assert_eq!(container_number(Path::new("2147483649.tdc")), None);
        assert_eq!(container_number(Path::new("4294967295.tdc")), None);
        assert_eq!(offload::marker_number(Path::new("4294967295.remote")), None);
        assert_eq!(
            offload::deleting_number(Path::new("4294967295.deleting")),
            None
        );
    }

    #[test]
    fn a_store_with_a_container_numbered_near_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1073741825.tdc"), b"").unwrap();
        let err = ChunkStore::open(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("never numbers containers above"), "{err}");
        assert!(err.contains("1073741825"), "{err}");
    }

    fn chunk(data: &[u8]) -> VerifiedChunk {
        let compressed = zstd::bulk::compress(data, 1).unwrap();
        verify_chunk(ChunkId::of(data), compressed.into(), data.len() as u64).unwrap()
    }

    #[test]
    fn appended_chunks_read_back_and_unindexed_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path(), &[]).unwrap();
        let a = store.append(&[chunk(b"alpha")]).unwrap();
        let b = store.append(&[chunk(b"beta beta")]).unwrap();
        let data = store.read(a[0].1).unwrap();
        assert_eq!(zstd::bulk::decompress(&data, 100).unwrap(), b"alpha");
        drop(store);
        // Only `a` was indexed: reopening cuts `b`'s bytes.
        let end = a[0].1.offset + u64::from(a[0].1.stored_len);
        let store = ChunkStore::open(dir.path(), &[(1, end)]).unwrap();
        assert!(store.read(b[0].1).is_err());
        let c = store.append(&[chunk(b"gamma")]).unwrap();
        assert_eq!(c[0].1.offset, end + HEADER_BYTES);
    }

    #[test]
    fn a_container_lists_its_records_from_their_headers() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path(), &[]).unwrap();
        let mut written = store.append(&[chunk(b"one"), chunk(b"two 2")]).unwrap();
        written.extend(store.append(&[chunk(&[7u8; 100_000])]).unwrap());
        assert_eq!(store.records(1).unwrap(), written);
        // A torn last record is reported with its offset, not read past.
        let path = dir.path().join("00000001.tdc");
        let len = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 1).unwrap();
        let last = written[2].1.offset - HEADER_BYTES;
        match store.records(1).unwrap_err() {
            StorageError::Damaged { offset, .. } => assert_eq!(offset, last),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn containers_in_a_bucket_are_not_opened_as_a_local_pool() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000003.remote"), "1048576\ns3://b/p/\n").unwrap();
        let err = ChunkStore::open(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("configure the [pool]"), "{err}");
        assert!(err.contains("00000003.remote"), "{err}");
        let err = ChunkStore::scan_dir(dir.path(), DEFAULT_POOL, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("S3 bucket"), "{err}");
        // A marker that does not say its size is damage, named as such.
        std::fs::write(dir.path().join("00000003.remote"), "lots\n").unwrap();
        let err = ChunkStore::open(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("without a size"), "{err}");
    }

    #[test]
    fn a_chunk_that_does_not_match_its_id_is_rejected() {
        let compressed = zstd::bulk::compress(b"real", 1).unwrap();
        let err = verify_chunk(ChunkId::of(b"claimed"), compressed.into(), 4).unwrap_err();
        assert!(matches!(err, StorageError::ChunkMismatch { .. }));
        let err = verify_chunk(ChunkId::of(b"x"), Bytes::from_static(b"not zstd"), 1).unwrap_err();
        assert!(err.to_string().contains("not a zstd data frame"), "{err}");
        assert!(matches!(err, StorageError::ChunkMalformed { .. }));
    }

    #[test]
    fn padding_after_or_before_the_frame_is_refused() {
        let raw = vec![0u8; 4 << 20];
        let id = ChunkId::of(&raw);
        let frame = zstd::bulk::compress(&raw, 1).unwrap();
        assert!(verify_chunk(id, Bytes::from(frame.clone()), raw.len() as u64).is_ok());
        // A skippable frame (magic 0x184D2A50, length, payload) after the data.
        let mut skippable = 0x184D_2A50u32.to_le_bytes().to_vec();
        skippable.extend_from_slice(&1024u32.to_le_bytes());
        skippable.extend_from_slice(&[7u8; 1024]);
        let mut trailing = frame.clone();
        trailing.extend_from_slice(&skippable);
        let err = verify_chunk(id, Bytes::from(trailing), raw.len() as u64).unwrap_err();
        assert!(err.to_string().contains("follow the zstd frame"), "{err}");
        let mut leading = skippable;
        leading.extend_from_slice(&frame);
        let err = verify_chunk(id, Bytes::from(leading), raw.len() as u64).unwrap_err();
        assert!(err.to_string().contains("skippable"), "{err}");
        let mut twice = frame.clone();
        twice.extend_from_slice(&frame);
        assert!(verify_chunk(id, Bytes::from(twice), raw.len() as u64).is_err());
        let small = b"tiny".to_vec();
        let huge = vec![0u8; 64 << 10];
        let err = verify_chunk(ChunkId::of(&small), Bytes::from(huge), 4).unwrap_err();
        assert!(err.to_string().contains("never needs more"), "{err}");
    }
}
