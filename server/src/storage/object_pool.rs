//! An S3 bucket holding a server's sealed containers.
//!
//! A container is one object, `<prefix>containers/NNNNNNNN.tdc`, byte for
//! byte the local file it was sealed as, so the record headers that let a
//! local container be checked or re-indexed work on the object too. Reads
//! are ranged GETs of whole [`BLOCK_BYTES`] blocks, kept in a small LRU
//! cache: a restore reads chunks in container order, so one request serves
//! many chunks.
//!
//! The rest of the store is synchronous (it runs on blocking threads), so
//! the pool owns a small runtime for `object_store`'s async client and waits
//! for each request on the calling thread.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};
use prost::bytes::Bytes;
use serde::Deserialize;

use super::block_cache::{BlockCache, BlockKey};
use super::pool_owner::{MAX_OWNER_BYTES, OWNER_OBJECT, PoolOwner};
use crate::config::PoolConfig;
use crate::error::StorageError;

/// Granule of ranged reads and of the read cache.
pub const BLOCK_BYTES: u64 = 1024 * 1024;
/// Part size of multipart uploads (S3 wants at least 5 MiB but the last).
const PART_BYTES: usize = 16 * 1024 * 1024;
/// Parts in flight at once during an upload.
const PARTS_IN_FLIGHT: usize = 4;
/// Ranged GETs in flight at once during a prefetch.
const GETS_IN_FLIGHT: usize = 8;
/// Largest single GET of a prefetch.
const PREFETCH_SPAN_BYTES: u64 = 4 * 1024 * 1024;
/// Blocks read ahead after the last one a prefetch was asked for.
const READ_AHEAD_BLOCKS: u64 = 16;
/// How long a bucket that did not answer a read is passed over: reads
/// that another pool's copy can serve go there, prefetches skip it, and
/// reads that need it fail at once but for one per [`PROBE_INTERVAL`].
/// Each try costs the client's retries (seconds), so a restore during an
/// outage pays them once per interval, not once per chunk or file.
const UNANSWERED_HOLD: Duration = Duration::from_secs(30);
/// While the bucket is on hold, one read per this interval asks it anyway
/// (the rest fail at once): the outage costs one read's retries per
/// interval, and a bucket that is back serves again within it.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// What [`ObjectPool::may_ask`] allows a read.
enum Ask<'a> {
    /// The bucket is not on hold.
    Freely,
    /// It is, and this read asks it for the others.
    Probe(Probe<'a>),
    /// It is, and this read fails at once.
    Not,
}

/// A read asking a bucket on hold; when it ends (answered or not) the next
/// may ask [`PROBE_INTERVAL`] later.
struct Probe<'a>(&'a ObjectPool);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        let pool = self.0;
        pool.probed_at_ms
            .store(pool.millis_open().max(1), Ordering::Relaxed);
        pool.probing.store(false, Ordering::Release);
    }
}

/// The `credentials_file` format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    access_key_id: String,
    secret_access_key: String,
}

impl std::fmt::Debug for CredentialsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsFile")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// A bucket of sealed containers.
pub struct ObjectPool {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// `s3://bucket/prefix at endpoint`, for messages.
    describe: String,
    /// `s3://bucket/prefix`: what a container's marker records.
    identity: String,
    runtime: Option<tokio::runtime::Runtime>,
    cache: Arc<BlockCache>,
    /// Requests and bytes since the pool was opened.
    traffic: Arc<Traffic>,
    /// The server this pool writes for (see [`ObjectPool::claim`]), and
    /// whether its data dir has markers of containers in this bucket (so
    /// containers found under a prefix with no owner object are its own).
    owner: Mutex<Option<(PoolOwner, bool)>>,
    /// Whether the bucket's owner object has been seen to name `owner`:
    /// nothing is written or deleted before.
    claimed: AtomicBool,
    /// Milliseconds after `opened` at which a read last found the bucket
    /// not answering; 0 once it answered again (see
    /// [`ObjectPool::recently_unanswered`]). An atomic: every read of a
    /// restore looks at it.
    unanswered_at_ms: AtomicU64,
    /// Milliseconds after `opened` at which the last read that asked the
    /// bucket while it was on hold ended (see [`ObjectPool::may_ask`]).
    probed_at_ms: AtomicU64,
    /// Whether such a read is under way: one at a time.
    probing: AtomicBool,
    /// When the pool was opened, the origin of `unanswered_at_ms`.
    opened: Instant,
}

/// Counters of the requests a pool made, for `query stgpool` and the
/// benchmark's requests-per-GB figures.
#[derive(Debug, Default)]
pub struct Traffic {
    /// PUT requests (each multipart part, the create and the complete).
    pub puts: AtomicU64,
    /// Ranged GETs.
    pub gets: AtomicU64,
    /// HEADs (each upload is checked with one).
    pub heads: AtomicU64,
    /// DELETEs.
    pub deletes: AtomicU64,
    /// Bytes sent.
    pub bytes_up: AtomicU64,
    /// Bytes received.
    pub bytes_down: AtomicU64,
}

fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl std::fmt::Debug for ObjectPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectPool")
            .field("at", &self.describe)
            .finish_non_exhaustive()
    }
}

impl Drop for ObjectPool {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside async code; the
        // pool may be dropped there (a server's state at shutdown).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn setup_error(describe: &str, reason: impl std::fmt::Display) -> StorageError {
    StorageError::Pool {
        pool: describe.to_string(),
        container: None,
        reason: reason.to_string(),
    }
}

/// Reads `access_key_id` and `secret_access_key` from `path`, which only
/// its owner may read.
fn read_credentials(path: &FsPath, describe: &str) -> Result<CredentialsFile, StorageError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        setup_error(
            describe,
            format!("credentials_file {}: {e}", path.display()),
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(setup_error(
            describe,
            format!(
                "credentials_file {} is readable by others (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|e| {
            // Not the file's lines: the one at fault may be the secret key.
            let cause = tandem_os::secret_text::without_quoted_lines(&e.to_string());
            setup_error(
                describe,
                format!(
                    "credentials_file {} must hold `access_key_id = \"...\"` and `secret_access_key = \"...\"`: {cause}",
                    path.display()
                ),
            )
        })
}

impl ObjectPool {
    /// Connects to the bucket `config` names (no request is made yet).
    ///
    /// # Errors
    /// [`StorageError::Pool`] for missing credentials or a bad setting.
    pub fn open(config: &PoolConfig) -> Result<Self, StorageError> {
        let bucket = config.bucket.clone().unwrap_or_default();
        // `SRV1` and `SRV1/` name the same folder of the bucket.
        let prefix = match config.prefix.as_str() {
            "" => String::new(),
            p if p.ends_with('/') => p.to_string(),
            p => format!("{p}/"),
        };
        let describe = format!(
            "s3://{bucket}/{prefix} at {}",
            config
                .endpoint
                .as_deref()
                .unwrap_or("AWS (region's endpoint)")
        );
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(!config.path_style)
            // Headers are signed, payloads not (UNSIGNED-PAYLOAD, as the AWS
            // SDKs do over TLS): hashing every uploaded byte once more costs
            // CPU the backup needs, TLS (or loopback) protects the bytes in
            // transit, and every chunk is checked against its own hash when
            // read back and by audits. The upload checksum below is the
            // store's own check of each part on arrival.
            .with_unsigned_payload(true)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: 4,
                retry_timeout: Duration::from_secs(60),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(300)),
            )
            // After the client options, which would reset it.
            .with_allow_http(config.plain_http());
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if config.upload_checksum {
            builder = builder.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
        }
        let (key, secret) = match &config.credentials_file {
            Some(path) => {
                let c = read_credentials(path, &describe)?;
                (c.access_key_id, c.secret_access_key)
            }
            None => match (
                std::env::var("AWS_ACCESS_KEY_ID"),
                std::env::var("AWS_SECRET_ACCESS_KEY"),
            ) {
                (Ok(k), Ok(s)) => (k, s),
                _ => {
                    return Err(setup_error(
                        &describe,
                        "no credentials: set pool.credentials_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the server's environment",
                    ));
                }
            },
        };
        builder = builder
            .with_access_key_id(key)
            .with_secret_access_key(secret);
        let store = builder.build().map_err(|e| setup_error(&describe, e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tandem-s3")
            .enable_all()
            .build()
            .map_err(|e| setup_error(&describe, e))?;
        let blocks = usize::try_from(config.cache_mib * 1024 * 1024 / BLOCK_BYTES)
            .ok()
            .and_then(NonZeroUsize::new)
            .unwrap_or(NonZeroUsize::MIN);
        Ok(ObjectPool {
            store: Arc::new(store),
            identity: format!("s3://{bucket}/{prefix}"),
            prefix,
            describe,
            runtime: Some(runtime),
            cache: Arc::new(BlockCache::new(blocks)),
            traffic: Arc::default(),
            owner: Mutex::default(),
            claimed: AtomicBool::new(false),
            unanswered_at_ms: AtomicU64::new(0),
            probed_at_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            opened: Instant::now(),
        })
    }

    /// Whether a read found the bucket not answering in the last
    /// [`UNANSWERED_HOLD`] and no read has succeeded since. Reads of
    /// chunks with a whole copy in another pool go there meanwhile,
    /// prefetches skip the bucket, and reads that need it fail at once but
    /// for one per [`PROBE_INTERVAL`] (cached blocks are still served).
    #[must_use]
    pub fn recently_unanswered(&self) -> bool {
        match self.unanswered_at_ms.load(Ordering::Relaxed) {
            0 => false,
            at => self.millis_open().saturating_sub(at) < UNANSWERED_HOLD.as_millis() as u64,
        }
    }

    /// Whether a read may ask the bucket now: always, unless it is on hold
    /// ([`Self::recently_unanswered`]); then one read at a time does, once
    /// [`PROBE_INTERVAL`] has passed since the bucket last failed to answer
    /// or was last asked (and ends the hold if it is answered). So the
    /// other reads do not each wait out the retries, however long a try
    /// takes, and a bucket that is back is found within about that interval
    /// of the next read rather than the whole hold.
    fn may_ask(&self) -> Ask<'_> {
        if !self.recently_unanswered() {
            return Ask::Freely;
        }
        let now = self.millis_open();
        let since = self
            .probed_at_ms
            .load(Ordering::Relaxed)
            .max(self.unanswered_at_ms.load(Ordering::Relaxed));
        if now.saturating_sub(since) < PROBE_INTERVAL.as_millis() as u64
            || self.probing.swap(true, Ordering::AcqRel)
        {
            return Ask::Not;
        }
        Ask::Probe(Probe(self))
    }

    /// Records whether a request to the bucket got an answer (any answer:
    /// an error status is one). Racing requests may leave either result:
    /// at worst one more read waits out the retries, or one is passed over.
    fn note_answer(&self, answered: bool) {
        if !answered {
            self.unanswered_at_ms
                .store(self.millis_open().max(1), Ordering::Relaxed);
        } else if self.unanswered_at_ms.load(Ordering::Relaxed) != 0 {
            self.unanswered_at_ms.store(0, Ordering::Relaxed);
        }
    }

    fn millis_open(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Where the pool is, for messages.
    #[must_use]
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Requests and bytes so far.
    #[must_use]
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// The bucket and prefix, `s3://bucket/prefix`.
    #[must_use]
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Names the server this pool writes for; [`Self::claim`] then checks
    /// (or makes) the prefix its own before the first write. `has_markers`:
    /// the server's data dir knows containers it uploaded here (a server
    /// from before owner objects existed adopts its own prefix).
    pub fn set_owner(&self, owner: PoolOwner, has_markers: bool) {
        *self.owner.lock().unwrap_or_else(|e| e.into_inner()) = Some((owner, has_markers));
    }

    /// Makes sure the prefix belongs to the owner set with
    /// [`Self::set_owner`]: reads the owner object, or, when there is none,
    /// writes one (only if there still is none, so of two servers starting
    /// at once one wins) and reads back which one won. Uploads and deletes
    /// call it until it succeeds once.
    ///
    /// # Errors
    /// [`StorageError::PoolOwned`] when the prefix is another server's (or
    /// holds containers but no owner object, or an owner object that is
    /// not one a Tandem server wrote); [`StorageError::PoolRefused`] when
    /// the bucket refuses the credentials or the request;
    /// [`StorageError::Pool`] when it cannot be reached.
    pub fn claim(&self) -> Result<(), StorageError> {
        if self.claimed.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some((ours, has_markers)) =
            self.owner.lock().unwrap_or_else(|e| e.into_inner()).clone()
        else {
            return Err(setup_error(
                &self.describe,
                "nothing may be written before the pool knows which server it belongs to",
            ));
        };
        let found = match self.read_owner()? {
            Some(found) => found,
            None => {
                if !has_markers && self.holds_containers()? {
                    return Err(StorageError::PoolOwned {
                        pool: self.describe.clone(),
                        reason: format!(
                            "it holds containers but no {OWNER_OBJECT}, and this server's data dir knows none of them (another server writes there: one from before owner objects, or one whose first upload has not happened yet). Give this server its own `prefix` in [pool]; start the server those containers belong to once, with the bucket reachable, and it claims the prefix"
                        ),
                    });
                }
                self.create_owner(&ours)?;
                self.read_owner()?.ok_or_else(|| {
                    setup_error(
                        &self.describe,
                        format!("{OWNER_OBJECT} was written but cannot be read back"),
                    )
                })?
            }
        };
        if !found.same_server(&ours) {
            let advice = if found.server == ours.server {
                // Same name, new GUID: most likely this server lost its
                // catalog and was started afresh; emptying the prefix would
                // delete its own backups.
                format!(
                    "a server of the same name with a new GUID is usually one that lost its catalog and was started afresh: stop it, move the new empty catalog.db out of its data dir, and bring its catalog back with `tandem-server restore-db COPY` (a copy keeps the GUID). Do not empty the prefix to get past this: it holds {}'s backups",
                    ours.server
                )
            } else {
                format!(
                    "give this server its own `prefix` in [pool]; only if {:?} is gone for good and nothing under the prefix is wanted, empty the prefix, {OWNER_OBJECT} with it",
                    found.server
                )
            };
            return Err(StorageError::PoolOwned {
                pool: self.describe.clone(),
                reason: format!(
                    "it belongs to server {:?} (GUID {:?}, since {:?}) and this is server {} (GUID {}); two servers writing one prefix would overwrite each other's containers. To fix: {advice}",
                    found.server, found.guid, found.claimed, ours.server, ours.guid
                ),
            });
        }
        if !self.claimed.swap(true, Ordering::AcqRel) && found.claimed == ours.claimed {
            tracing::info!(
                "TDM0445I {} now belongs to server {} (GUID {})",
                self.describe,
                ours.server,
                ours.guid
            );
        }
        Ok(())
    }

    /// Whether any container object is under the prefix (one LIST).
    fn holds_containers(&self) -> Result<bool, StorageError> {
        use futures_util::StreamExt;
        let store = self.store.clone();
        let folder = ObjectPath::from(format!("{}containers", self.prefix));
        count(&self.traffic.gets, 1);
        let first = self.wait(async move { store.list(Some(&folder)).next().await });
        match first {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(self.claim_failed("listing containers/", e)),
        }
    }

    /// A failed request of the claim: the bucket refusing (credentials,
    /// policy, an unsupported header) stops the start; one that did not
    /// answer does not.
    fn claim_failed(&self, doing: &str, e: object_store::Error) -> StorageError {
        match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::NotImplemented => StorageError::PoolRefused {
                pool: self.describe.clone(),
                reason: format!(
                    "{doing}: {e}. The server needs to list, read, write and delete objects under its prefix (s3:ListBucket on the bucket, s3:GetObject, s3:PutObject, s3:DeleteObject and s3:AbortMultipartUpload on PREFIX*), and a store that honours If-None-Match"
                ),
            },
            e => setup_error(&self.describe, format!("{doing}: {e}")),
        }
    }

    fn owner_key(&self) -> ObjectPath {
        ObjectPath::from(format!("{}{OWNER_OBJECT}", self.prefix))
    }

    /// The owner object, if there is one.
    fn read_owner(&self) -> Result<Option<PoolOwner>, StorageError> {
        let store = self.store.clone();
        let key = self.owner_key();
        count(&self.traffic.heads, 1);
        count(&self.traffic.gets, 1);
        let read = self.wait(async move {
            let meta = match store.head(&key).await {
                Ok(meta) => meta,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            if meta.size > MAX_OWNER_BYTES {
                return Ok(Some(Err(meta.size)));
            }
            let answer = store.get(&key).await?.into_stream();
            let bytes = collect_at_most(answer, MAX_OWNER_BYTES).await?;
            Ok(Some(Ok(bytes)))
        });
        let not_ours = |reason: String| StorageError::PoolOwned {
            pool: self.describe.clone(),
            reason: format!(
                "{reason}; the prefix holds something other than this server's containers. Give this server its own `prefix` in [pool]"
            ),
        };
        match read.map_err(|e| self.claim_failed(&format!("reading {OWNER_OBJECT}"), e))? {
            None => Ok(None),
            Some(Err(size)) => Err(not_ours(format!(
                "its {OWNER_OBJECT} holds {size} bytes, more than the {MAX_OWNER_BYTES} an owner record takes"
            ))),
            Some(Ok(bytes)) => {
                let text = String::from_utf8_lossy(&bytes);
                PoolOwner::parse(&text).map(Some).map_err(|e| {
                    not_ours(format!("its {OWNER_OBJECT} is not an owner record ({e})"))
                })
            }
        }
    }

    /// Writes the owner object if there is none (an existing one is left
    /// for [`Self::read_owner`] to judge).
    fn create_owner(&self, ours: &PoolOwner) -> Result<(), StorageError> {
        let store = self.store.clone();
        let key = self.owner_key();
        let body = PutPayload::from(ours.to_toml());
        count(&self.traffic.puts, 1);
        let put = self.wait(async move {
            let create = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            store.put_opts(&key, body, create).await
        });
        match put {
            Ok(_)
            | Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(()),
            Err(e) => Err(self.claim_failed(&format!("writing {OWNER_OBJECT}"), e)),
        }
    }

    fn object(&self, number: u32) -> ObjectPath {
        object_key(&self.prefix, number)
    }

    fn error(&self, number: u32, reason: impl std::fmt::Display) -> StorageError {
        StorageError::Pool {
            pool: self.describe.clone(),
            container: Some(number),
            reason: reason.to_string(),
        }
    }

    /// Runs `future` on the pool's runtime and waits for it on this thread
    /// (a blocking one: the store's callers run there).
    fn wait<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> T {
        let runtime = self
            .runtime
            .as_ref()
            .expect("runtime lives as long as the pool");
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .expect("the pool's runtime runs until the pool is dropped")
    }

    /// Uploads the sealed container file `path` as container `number` and
    /// checks that the bucket holds all of it. Returns its size.
    ///
    /// # Errors
    /// [`StorageError::Pool`] when the upload fails or the object's size
    /// differs; [`StorageError::Io`] reading the file.
    pub fn upload(&self, number: u32, path: &FsPath) -> Result<u64, StorageError> {
        self.claim()?;
        let store = self.store.clone();
        let location = self.object(number);
        let file_path: PathBuf = path.to_path_buf();
        let io = |source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let expected = std::fs::metadata(path).map_err(io)?.len();
        self.refuse_to_overwrite(number, expected)?;
        let result: Result<Result<u64, String>, std::io::Error> = self.wait(async move {
            use tokio::io::AsyncReadExt;
            // Never through a symlink: the bucket gets this container's bytes.
            let mut file = tokio::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&file_path)
                .await?;
            let upload = match store.put_multipart(&location).await {
                Ok(u) => u,
                Err(e) => return Ok(Err(e.to_string())),
            };
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut buf = vec![0u8; PART_BYTES];
            loop {
                // A failed upload is aborted, so no parts are left behind
                // in the bucket (and billed).
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = writer.abort().await;
                        return Err(e);
                    }
                };
                if n == 0 {
                    break;
                }
                if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    let _ = writer.abort().await;
                    return Ok(Err(e.to_string()));
                }
                writer.write(&buf[..n]);
            }
            if let Err(e) = writer.finish().await {
                return Ok(Err(e.to_string()));
            }
            match store.head(&location).await {
                Ok(meta) => Ok(Ok(meta.size)),
                Err(e) => Ok(Err(e.to_string())),
            }
        });
        let parts = expected.div_ceil(PART_BYTES as u64).max(1);
        count(&self.traffic.puts, parts + 2);
        count(&self.traffic.heads, 1);
        let stored = result.map_err(io)?.map_err(|e| self.error(number, e))?;
        count(&self.traffic.bytes_up, stored);
        if stored != expected {
            return Err(self.error(
                number,
                format!("the bucket holds {stored} bytes after uploading {expected}"),
            ));
        }
        Ok(stored)
    }

    /// Refuses to upload container `number` over an object of another size
    /// at its key: that object is a container this data dir does not know
    /// (a catalog restored onto a new machine without its markers, an
    /// endpoint changed to another store with the same bucket), and
    /// overwriting it would destroy backups. The same size is this
    /// container's own earlier upload, cut off before its marker.
    ///
    /// # Errors
    /// [`StorageError::PoolOwned`] for another object; [`StorageError::Pool`]
    /// when the bucket does not answer.
    fn refuse_to_overwrite(&self, number: u32, size: u64) -> Result<(), StorageError> {
        let store = self.store.clone();
        let location = self.object(number);
        count(&self.traffic.heads, 1);
        match self.wait(async move { store.head(&location).await }) {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Ok(meta) if meta.size == size => Ok(()),
            Ok(meta) => Err(StorageError::PoolOwned {
                pool: self.describe.clone(),
                reason: format!(
                    "container {number} ({size} bytes) would overwrite an object of {} bytes at {} that this data dir knows nothing of: the prefix holds containers of another server or of this one's lost data dir. Nothing was uploaded; give this server its own `prefix` in [pool], or bring back the data dir (with its containers/*.remote markers) that uploaded them",
                    meta.size,
                    self.object(number)
                ),
            }),
            Err(e) => Err(self.error(number, e)),
        }
    }

    /// Reads `len` bytes at `offset` of container `number`, through the
    /// block cache.
    ///
    /// # Errors
    /// [`StorageError::Pool`] when the object cannot be read or is shorter.
    pub fn read(
        &self,
        number: u32,
        offset: u64,
        len: usize,
        size: u64,
    ) -> Result<Vec<u8>, StorageError> {
        let end = offset + len as u64;
        if end > size {
            return Err(self.error(
                number,
                format!("bytes {offset}..{end} lie past the container's end ({size})"),
            ));
        }
        let first = offset / BLOCK_BYTES;
        let last = end.saturating_sub(1) / BLOCK_BYTES;
        let mut blocks: Vec<Option<Bytes>> = (first..=last)
            .map(|b| self.cache.get((number, b)))
            .collect();
        // Fetch the missing blocks in one ranged GET spanning them.
        let missing: Vec<u64> = (first..=last)
            .zip(&blocks)
            .filter(|(_, b)| b.is_none())
            .map(|(n, _)| n)
            .collect();
        if let (Some(&lo), Some(&hi)) = (missing.first(), missing.last()) {
            let range = lo * BLOCK_BYTES..((hi + 1) * BLOCK_BYTES).min(size);
            let fetched = self.get_range(number, range.clone())?;
            if fetched.len() as u64 != range.end - range.start {
                return Err(self.error(
                    number,
                    format!(
                        "asked for {} bytes at {}, got {} (the object is shorter than the catalog says)",
                        range.end - range.start,
                        range.start,
                        fetched.len()
                    ),
                ));
            }
            for block in lo..=hi {
                let at = usize::try_from((block - lo) * BLOCK_BYTES).unwrap_or(usize::MAX);
                // A copy: a slice would keep the whole GET's buffer alive.
                let piece = Bytes::copy_from_slice(
                    &fetched[at..(at + BLOCK_BYTES as usize).min(fetched.len())],
                );
                self.cache.put((number, block), piece.clone());
                blocks[usize::try_from(block - first).unwrap_or(0)] = Some(piece);
            }
        }
        let mut out = Vec::with_capacity(len);
        for (i, block) in blocks.into_iter().enumerate() {
            let block = block.unwrap_or_default();
            let block_start = (first + i as u64) * BLOCK_BYTES;
            let from = offset.max(block_start) - block_start;
            let to = end.min(block_start + block.len() as u64) - block_start;
            out.extend_from_slice(&block[from as usize..to as usize]);
        }
        Ok(out)
    }

    /// Fetches into the cache, with several GETs in flight, the blocks of
    /// every `(container, offset, len, container size)` not cached yet, so
    /// the reads that follow are served from memory; blocks another fetch
    /// is bringing are waited for, not fetched twice. Then starts, without
    /// waiting, a read-ahead of the [`READ_AHEAD_BLOCKS`] blocks after the
    /// last one asked of each container: the next request of a restore
    /// reads on from there. Blocks beyond half of what the cache holds are
    /// left for the reads to fetch; a failed GET is left for the read that
    /// needs it to report. A caller that knows what it reads next (the next
    /// wave of [`waves`]) asks for no read-ahead. A bucket that did not
    /// answer lately is not asked (the reads find out whether it is back).
    pub fn prefetch(&self, wanted: &[(u32, u64, u64, u64)], read_ahead: bool) {
        if self.recently_unanswered() {
            return;
        }
        let mut needed: Vec<BlockKey> = Vec::new();
        let mut sizes: HashMap<u32, u64> = HashMap::new();
        for &(number, offset, len, size) in wanted {
            let end = (offset + len).min(size);
            if end > offset {
                sizes.insert(number, size);
                needed
                    .extend((offset / BLOCK_BYTES..=(end - 1) / BLOCK_BYTES).map(|b| (number, b)));
            }
        }
        needed.sort_unstable();
        needed.dedup();
        needed.truncate(self.cache.capacity() / 2);
        let (mine, theirs) = self.cache.claim(&needed);
        if !mine.is_empty() {
            self.wait(self.fetch(spans_of(&mine, &sizes)));
        }
        self.cache.wait_for(&theirs, Duration::from_secs(120));
        if !read_ahead {
            return;
        }
        // Read-ahead: the blocks after the last one asked, per container.
        let mut last: HashMap<u32, u64> = HashMap::new();
        for &(number, block) in &needed {
            last.insert(number, block);
        }
        let mut ahead: Vec<BlockKey> = Vec::new();
        for (number, block) in last {
            let blocks_in = sizes
                .get(&number)
                .copied()
                .unwrap_or(0)
                .div_ceil(BLOCK_BYTES);
            let end = (block + 1 + READ_AHEAD_BLOCKS).min(blocks_in);
            ahead.extend((block + 1..end).map(|b| (number, b)));
        }
        ahead.sort_unstable();
        // Never more than a quarter of the cache, so read-ahead does not
        // evict what was just fetched for this request. (An eighth made the
        // audit of the benchmark pool 74% slower.)
        ahead.truncate(self.cache.capacity() / 4);
        let (mine, _) = self.cache.claim(&ahead);
        if let (false, Some(runtime)) = (mine.is_empty(), &self.runtime) {
            runtime.spawn(self.fetch(spans_of(&mine, &sizes)));
        }
    }

    /// Blocks one wave of a pipelined read may touch: a quarter of the
    /// cache, so the wave being read, the next one being fetched and a
    /// read-ahead fit in it together. A restoring client asks for its next
    /// batch while it takes the current one, so two requests read at once;
    /// a client's batch is at most 16 MiB (more only for one large file),
    /// so with the default cache (256 MiB, waves of 64) a request seldom
    /// needs more than one wave and the two fit. (Waves of an eighth left
    /// too few GETs in flight and were no faster.)
    pub fn wave_blocks(&self) -> usize {
        (self.cache.capacity() / 4).max(1)
    }

    /// Fetches `spans` with [`GETS_IN_FLIGHT`] GETs at once and lands every
    /// block of each in the cache (or lands it empty when its GET failed, so
    /// waiters go on and their own read reports the error).
    fn fetch(&self, spans: Vec<(u32, Range<u64>)>) -> impl Future<Output = ()> + Send + 'static {
        use futures_util::StreamExt;
        count(&self.traffic.gets, spans.len() as u64);
        let requests: Vec<_> = spans
            .into_iter()
            .map(|(n, range)| (n, range, self.object(n)))
            .collect();
        let store = self.store.clone();
        let cache = self.cache.clone();
        let traffic = self.traffic.clone();
        async move {
            futures_util::stream::iter(requests)
                .map(|(number, range, location)| {
                    let store = store.clone();
                    let cache = cache.clone();
                    let traffic = traffic.clone();
                    async move {
                        let data = get_range_bounded(store.as_ref(), &location, range.clone())
                            .await
                            .ok()
                            .filter(|d| d.len() as u64 == range.end - range.start);
                        if let Some(d) = &data {
                            count(&traffic.bytes_down, d.len() as u64);
                        }
                        land_span(&cache, number, range, data.as_ref());
                    }
                })
                .buffer_unordered(GETS_IN_FLIGHT)
                .collect::<Vec<()>>()
                .await;
        }
    }

    fn get_range(&self, number: u32, range: Range<u64>) -> Result<Bytes, StorageError> {
        // A bucket on hold is not asked: each try would wait out the
        // client's retries again (seconds per read, a minute when its
        // address swallows connections), and a restore of many files during
        // an outage would take that long per file.
        let _probe = match self.may_ask() {
            Ask::Freely => None,
            Ask::Probe(probe) => Some(probe),
            Ask::Not => return Err(self.on_hold(number)),
        };
        let store = self.store.clone();
        let location = self.object(number);
        count(&self.traffic.gets, 1);
        let wanted = range.clone();
        let data = self
            .wait(async move { get_range_bounded(store.as_ref(), &location, range).await })
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    self.error(number, "the object is missing from the bucket")
                }
                other => self.failed_read(number, &wanted, &other),
            })?;
        self.note_answer(true);
        count(&self.traffic.bytes_down, data.len() as u64);
        Ok(data)
    }

    /// The error of a read that did not ask the bucket: it is on hold.
    fn on_hold(&self, number: u32) -> StorageError {
        StorageError::PoolUnavailable {
            pool: self.describe.clone(),
            container: number,
            reason: format!(
                "it did not answer a read lately; until it does, one read at a time asks it, at most every {} s, and the others fail at once. Run the command again once the object store answers",
                PROBE_INTERVAL.as_secs()
            ),
        }
    }

    /// Tells a read that failed because the object changed (cut short
    /// behind the server's back: a 416 for a range past its end) from one
    /// that failed because the store is away, with a HEAD: damage is named
    /// as damage, so an audit counts it and a restore repairs it, while a
    /// store that does not answer stays "unavailable".
    fn failed_read(
        &self,
        number: u32,
        wanted: &Range<u64>,
        error: &object_store::Error,
    ) -> StorageError {
        let store = self.store.clone();
        let location = self.object(number);
        count(&self.traffic.heads, 1);
        let head = self.wait(async move { store.head(&location).await });
        // Only a bucket that does not answer a HEAD either is passed over
        // for a while; one object that fails its GETs is not the bucket.
        self.note_answer(
            !matches!(&head, Err(e) if !matches!(e, object_store::Error::NotFound { .. })),
        );
        match head {
            Ok(meta) if meta.size < wanted.end => self.error(
                number,
                format!(
                    "the object holds {} bytes, less than the {} the container was uploaded with ({error})",
                    meta.size, wanted.end
                ),
            ),
            Err(object_store::Error::NotFound { .. }) => {
                self.error(number, "the object is missing from the bucket")
            }
            _ => StorageError::PoolUnavailable {
                pool: self.describe.clone(),
                container: number,
                reason: error.to_string(),
            },
        }
    }

    /// Deletes container `number` from the bucket (a missing one is gone
    /// already) and drops its cached blocks.
    ///
    /// # Errors
    /// [`StorageError::Pool`] when the bucket refuses.
    pub fn delete(&self, number: u32) -> Result<(), StorageError> {
        self.claim()?;
        self.cache.forget_container(number);
        let store = self.store.clone();
        let location = self.object(number);
        count(&self.traffic.deletes, 1);
        match self.wait(async move { store.delete(&location).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(number, e)),
        }
    }
}

/// The object key of container `number`.
fn object_key(prefix: &str, number: u32) -> ObjectPath {
    ObjectPath::from(format!("{prefix}containers/{number:08}.tdc"))
}

/// Runs of adjacent claimed blocks of one container, each one ranged GET
/// of at most [`PREFETCH_SPAN_BYTES`].
fn spans_of(blocks: &[BlockKey], sizes: &HashMap<u32, u64>) -> Vec<(u32, Range<u64>)> {
    let mut spans: Vec<(u32, Range<u64>)> = Vec::new();
    for &(number, block) in blocks {
        let size = sizes.get(&number).copied().unwrap_or(0);
        let start = block * BLOCK_BYTES;
        let end = ((block + 1) * BLOCK_BYTES).min(size);
        match spans.last_mut() {
            Some((n, range))
                if *n == number
                    && range.end == start
                    && range.end - range.start < PREFETCH_SPAN_BYTES =>
            {
                range.end = end;
            }
            _ => spans.push((number, start..end)),
        }
    }
    spans
}

/// Splits a read of `items` (in read order; `Some((container, offset,
/// len))` for a chunk in the bucket, `None` for one that needs no fetch)
/// into consecutive waves that each touch at most `budget` blocks, so each
/// wave can be fetched whole into the cache while the one before it is
/// read. A restore of small files scattered over many containers asked for
/// 80 blocks in one request; with the fetch cut off at half the cache, the
/// rest were read one GET at a time.
pub fn waves(items: &[Option<(u32, u64, u64)>], budget: usize) -> Vec<Range<usize>> {
    let mut waves = Vec::new();
    let mut start = 0;
    let mut touched: HashSet<BlockKey> = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let Some((number, offset, len)) = *item else {
            continue;
        };
        let first = offset / BLOCK_BYTES;
        let last = (offset + len).saturating_sub(1).max(offset) / BLOCK_BYTES;
        let new = (first..=last)
            .filter(|b| !touched.contains(&(number, *b)))
            .count();
        if !touched.is_empty() && touched.len() + new > budget {
            waves.push(start..i);
            start = i;
            touched.clear();
        }
        touched.extend((first..=last).map(|b| (number, b)));
    }
    if start < items.len() {
        waves.push(start..items.len());
    }
    waves
}

/// Lands each block of a fetched span (`None`: its GET failed).
fn land_span(cache: &BlockCache, number: u32, range: Range<u64>, data: Option<&Bytes>) {
    let mut block = range.start / BLOCK_BYTES;
    let mut at = range.start;
    while at < range.end {
        let next = ((block + 1) * BLOCK_BYTES).min(range.end);
        // A copy: a slice would keep the whole GET's buffer alive, and the
        // cache would hold several times `cache_mib`.
        let piece = data.map(|d| {
            Bytes::copy_from_slice(&d[(at - range.start) as usize..(next - range.start) as usize])
        });
        cache.land((number, block), piece);
        at = next;
        block += 1;
    }
}

/// `range` of the object at `location`, taking no more of the answer than
/// the range's length: object_store's own `get_range` collects the whole
/// body, however long (or endless) a broken or hostile endpoint makes it.
async fn get_range_bounded(
    store: &dyn ObjectStore,
    location: &ObjectPath,
    range: Range<u64>,
) -> object_store::Result<Bytes> {
    let wanted = range.end.saturating_sub(range.start);
    let options = object_store::GetOptions {
        range: Some(range.into()),
        ..Default::default()
    };
    let answer = store.get_opts(location, options).await?.into_stream();
    collect_at_most(answer, wanted).await
}

/// The whole of `answer`, or an error as soon as it is longer than `max`
/// bytes.
async fn collect_at_most(
    mut answer: futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>,
    max: u64,
) -> object_store::Result<Bytes> {
    use futures_util::StreamExt;
    let mut whole: Vec<u8> = Vec::new();
    while let Some(piece) = answer.next().await {
        let piece = piece?;
        if whole.len() as u64 + piece.len() as u64 > max {
            return Err(object_store::Error::Generic {
                store: "S3",
                source: format!("the answer is longer than the {max} bytes asked for").into(),
            });
        }
        if whole.is_empty() && piece.len() as u64 == max {
            // The usual case, the answer in one piece: no copy.
            return Ok(piece);
        }
        whole.extend_from_slice(&piece);
    }
    Ok(whole.into())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::config::PoolKind;

    fn answer(
        pieces: Vec<&'static [u8]>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<Bytes>> {
        use futures_util::StreamExt;
        futures_util::stream::iter(pieces.into_iter().map(|p| Ok(Bytes::from_static(p)))).boxed()
    }

    #[tokio::test]
    async fn an_answer_longer_than_asked_is_cut_off_not_collected() {
        let whole = collect_at_most(answer(vec![b"abcd"]), 4).await.unwrap();
        assert_eq!(&whole[..], b"abcd");
        let pieces = collect_at_most(answer(vec![b"ab", b"cd"]), 4)
            .await
            .unwrap();
        assert_eq!(&pieces[..], b"abcd");
        let short = collect_at_most(answer(vec![b"ab"]), 4).await.unwrap();
        assert_eq!(&short[..], b"ab");
        let long = collect_at_most(answer(vec![b"ab", b"cd", b"e"]), 4)
            .await
            .unwrap_err();
        assert!(
            long.to_string().contains("longer than the 4 bytes"),
            "{long}"
        );
        // An endless answer ends at the bound.
        use futures_util::StreamExt;
        let endless = futures_util::stream::repeat_with(|| Ok(Bytes::from_static(b"x"))).boxed();
        assert!(collect_at_most(endless, 1 << 20).await.is_err());
    }

    fn s3_config(credentials: &FsPath) -> PoolConfig {
        PoolConfig {
            kind: PoolKind::S3,
            endpoint: Some("http://127.0.0.1:9".into()),
            bucket: Some("b".into()),
            credentials_file: Some(credentials.to_path_buf()),
            ..PoolConfig::default()
        }
    }

    #[test]
    fn reads_split_into_waves_of_at_most_the_budget_in_blocks() {
        const MIB: u64 = BLOCK_BYTES;
        // Nothing to read: no wave. Nothing remote: one wave of it all.
        assert!(waves(&[], 4).is_empty());
        assert_eq!(waves(&[None, None], 4), vec![0..2]);
        // Chunks sharing a block count it once; a chunk across a block
        // boundary counts both blocks; a new container's blocks are new.
        let items = [
            Some((1, 0, 100)),
            Some((1, 200, 100)),
            Some((1, MIB - 10, 20)),      // blocks 0 and 1
            None,                         // costs nothing
            Some((2, 0, 10)),             // a third block: still within 3
            Some((1, 5 * MIB, 10)),       // a fourth: the next wave
            Some((1, 5 * MIB + 50, 0)),   // empty, in the same block
            Some((3, 7 * MIB, 3 * MIB)),  // three blocks, a wave of its own
            Some((3, 20 * MIB, 4 * MIB)), // larger than the budget: alone
        ];
        assert_eq!(waves(&items, 3), vec![0..5, 5..7, 7..8, 8..9]);
        // Every item lands in exactly one wave, in order.
        let all: Vec<usize> = waves(&items, 1).into_iter().flatten().collect();
        assert_eq!(all, (0..items.len()).collect::<Vec<_>>());
    }

    #[test]
    fn a_credentials_file_others_can_read_or_that_lies_about_its_keys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s3.toml");
        std::fs::write(&file, "access_key_id = \"k\"\nsecret_access_key = \"s\"\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ObjectPool::open(&s3_config(&file)).unwrap_err().to_string();
        assert!(
            err.contains("readable by others") && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ObjectPool::open(&s3_config(&file)).is_ok());
        // An unknown key, or a missing one, is named; the secret never is.
        std::fs::write(&file, "access_key_id = \"k\"\nsecret = \"s3cr3t\"\n").unwrap();
        let err = ObjectPool::open(&s3_config(&file)).unwrap_err().to_string();
        assert!(err.contains("must hold"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
        // Nor when the secret's own line is the one that does not parse
        // (the parser quotes the line it fails on).
        std::fs::write(
            &file,
            "access_key_id = \"k\"\nsecret_access_key = \"s3cr\\q3t\"\n",
        )
        .unwrap();
        let err = ObjectPool::open(&s3_config(&file)).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("s3cr"), "{err}");
        // A prefix without its slash names the same folder.
        let mut config = s3_config(&file);
        std::fs::write(&file, "access_key_id = \"k\"\nsecret_access_key = \"s\"\n").unwrap();
        config.prefix = "SRV1".into();
        assert_eq!(
            ObjectPool::open(&config).unwrap().identity(),
            "s3://b/SRV1/"
        );
    }
}
