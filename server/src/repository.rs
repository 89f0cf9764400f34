//! The repository: one data directory's node data as a library, with no
//! gRPC, sessions, TLS or scheduling around it.
//!
//! It is the catalog (what exists), the chunk containers (the bytes) and the
//! pins (chunks a session has been told are present, kept from the sweep
//! until it commits or ends). Everything that stores or reads node data goes
//! through it: the `Backup` service, replication in either role, expiration,
//! and the tests that drive two repositories in one process. The server's
//! state holds one; a local vault or a recovery opens another.
//!
//! - [`ingest`]: verified chunks in, in the durability order (chunks
//!   already stored are pinned first; new ones are appended, fsynced, then
//!   indexed and pinned), overlapped for a stream of uploads.
//! - [`repair`]: checking a node's copies and putting verified ones in
//!   place of damaged ones.
//! - [`move_data`]: MOVE NODEDATA, a node's data from one pool to another.
//! - [`fallback`]: reads served from another pool's copy while a pool does
//!   not answer.
//!
//! Callers run these methods on blocking threads (rusqlite and fsync block).

pub mod fallback;
pub mod ingest;
pub mod move_data;
mod pool_setup;
pub mod repair;

pub use pool_setup::{PoolSetup, check_pool_dirs, pool_dir};

use std::path::Path;
use std::sync::{Arc, Mutex};

use tandem_proto::{ChunkId, StoredChunk};

use crate::catalog::Catalog;
use crate::config::{PoolConfig, PoolKind};
use crate::error::{ServerError, StorageError};
use crate::model::{ChunkLocation, Node, Policy};
use crate::pins::ChunkPins;
use crate::storage::object_pool::ObjectPool;
use crate::storage::pool_owner::PoolOwner;
use crate::storage::pools::{PoolEntry, Pools};
use crate::storage::{ChunkStore, ContainerNumbers, PoolPlace};

/// The bucket of an S3 pool; `None` for a local one.
///
/// # Errors
/// [`crate::error::StorageError::Pool`] for missing credentials or a bad
/// setting.
pub fn open_pool(pool: &PoolConfig) -> Result<Option<ObjectPool>, ServerError> {
    Ok(match pool.kind {
        PoolKind::Local => None,
        PoolKind::S3 => Some(ObjectPool::open(pool)?),
    })
}

/// How long a start waits for the bucket to answer its claim. An endpoint
/// that takes connections and never answers would otherwise hold the start
/// for the whole request timeout and its retries (minutes).
const START_CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Claims `bucket`'s prefix for this server at start: a prefix another
/// server owns, or a bucket that refuses the credentials, stops the start;
/// one that cannot be reached now, or does not answer within
/// [`START_CLAIM_WAIT`], is claimed later: the claim goes on in the
/// background, and every upload or delete waits for a claim that succeeded.
///
/// # Errors
/// [`StorageError::PoolOwned`], [`StorageError::PoolRefused`].
fn claim_pool(bucket: Arc<ObjectPool>) -> Result<(), ServerError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let claiming = Arc::clone(&bucket);
    let spawned = std::thread::Builder::new()
        .name("pool-claim".into())
        .spawn(move || {
            // A claim that ends after the start stopped waiting is logged
            // here: uploads check again, but the operator should hear it.
            if let Err(late) = tx.send(claiming.claim()) {
                match late.0 {
                    Ok(()) => tracing::info!(
                        "{} answered: the claim of its prefix succeeded",
                        claiming.describe()
                    ),
                    Err(e) => tracing::warn!(
                        "TDM0441W {e}; sealed containers stay on the local disk until this is fixed"
                    ),
                }
            }
        });
    // Without a thread of its own, the claim runs here, as it did before.
    let answer = match spawned {
        Ok(_) => rx.recv_timeout(START_CLAIM_WAIT).ok(),
        Err(_) => Some(bucket.claim()),
    };
    let later =
        "the server starts, and sealed containers stay on the local disk until the bucket answers";
    match answer {
        Some(Ok(())) => Ok(()),
        Some(Err(e @ (StorageError::PoolOwned { .. } | StorageError::PoolRefused { .. }))) => {
            Err(e.into())
        }
        Some(Err(e)) => {
            tracing::warn!("TDM0441W {e}; {later}");
            Ok(())
        }
        None => {
            tracing::warn!(
                "TDM0441W {} did not answer the claim of its prefix within {} s; {later}",
                bucket.describe(),
                START_CLAIM_WAIT.as_secs()
            );
            Ok(())
        }
    }
}

/// A data directory's catalog, containers and pins.
#[derive(Debug)]
pub struct Repository {
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// The storage pools and their containers.
    pub pools: Pools,
    /// Chunks open sessions and commits under way rely on (kept by the
    /// chunk sweep).
    pub pins: ChunkPins,
    /// Held by an expiration run: one at a time.
    pub(crate) expire_lock: Mutex<()>,
    /// Memory all upload streams together may hold in received chunks.
    pub ingest_budget: ingest::IngestBudget,
    /// When reads last reported each unavailable pool.
    pub reroute_notices: fallback::RerouteNotices,
}

impl Repository {
    /// Opens `dir/catalog.db` and `dir/containers`, creating them if needed
    /// and cutting container bytes the catalog never indexed (an upload cut
    /// short). The caller must hold the directory exclusively: two
    /// repositories over one directory would cut each other's appends.
    ///
    /// # Errors
    /// Catalog and container errors, each naming the file at fault.
    pub fn open(
        dir: &Path,
        policy: Policy,
        pools: PoolSetup<'_>,
        server_name: &str,
        admit: impl FnOnce(&Catalog) -> Result<(), ServerError>,
    ) -> Result<Self, ServerError> {
        let catalog = Arc::new(Catalog::open(&dir.join("catalog.db"), policy)?);
        // The caller's checks of the catalog (the server's name) come before
        // anything touches a pool: a start they refuse claims no prefix,
        // uploads nothing and deletes nothing in a bucket.
        admit(&catalog)?;
        let guid = catalog.server_guid()?.to_string();
        let setup = pool_setup::prepare(dir, &catalog, pools, &guid)?;
        let numbers = ContainerNumbers::after(setup.highest);
        let mut entries = std::collections::BTreeMap::new();
        for place in &setup.places {
            let bucket = open_pool(place.config)?;
            if let Some(bucket) = &bucket {
                bucket.set_owner(
                    PoolOwner::new(&guid, server_name),
                    ChunkStore::has_remote_markers(&place.dir),
                );
            }
            // Opening checks the data dir's markers against the bucket
            // first: a start with a mistyped prefix fails before it claims
            // anything.
            let store = ChunkStore::open_in_pool(
                PoolPlace {
                    id: place.id,
                    table: &place.table,
                    dir: &place.dir,
                    numbers: numbers.clone(),
                    taken: &place.taken,
                },
                &place.ends,
                bucket,
                place.config.container_bytes(),
            )?;
            if let Some(bucket) = store.shared_object_pool() {
                claim_pool(bucket)?;
            }
            let name = place.name.clone();
            entries.insert(place.id, PoolEntry { name, store });
        }
        Ok(Repository {
            catalog,
            pools: Pools::new(entries, setup.unconfigured, numbers)?,
            pins: ChunkPins::default(),
            expire_lock: Mutex::new(()),
            ingest_budget: ingest::IngestBudget::default(),
            reroute_notices: fallback::RerouteNotices::default(),
        })
    }

    /// Runs `f` on a blocking thread (rusqlite and fsync block) and waits
    /// for it; async callers reach the repository this way.
    ///
    /// # Errors
    /// `f`'s error, or [`ServerError::Task`] when the thread died.
    pub async fn blocking<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Repository) -> Result<R, ServerError> + Send + 'static,
    ) -> Result<R, ServerError> {
        let repo = self.clone();
        tokio::task::spawn_blocking(move || f(&repo)).await?
    }

    /// The registered node `name` (upper case).
    ///
    /// # Errors
    /// [`ServerError::NodeNotFound`]; catalog errors.
    pub fn registered_node(&self, name: &str) -> Result<Node, ServerError> {
        self.catalog
            .node(name)?
            .ok_or_else(|| ServerError::NodeNotFound {
                node: name.to_string(),
            })
    }

    /// Of `ids`, those node `node` does not own (see
    /// [`Catalog::unowned_chunks`]); the others are pinned for `session`
    /// under the same lock, so what is reported present stays present until
    /// the session ends.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn missing_and_pin(
        &self,
        session: u64,
        node: i64,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, ServerError> {
        let pool = self.catalog.node_pool(node)?;
        let mut pins = self.pins.lock();
        let missing = self.catalog.unowned_chunks(node, pool, ids)?;
        let absent: std::collections::HashSet<&ChunkId> = missing.iter().collect();
        pins.pin(
            session,
            ids.iter().filter(|id| !absent.contains(id)).copied(),
        );
        Ok(missing)
    }

    /// Pins the chunks a commit names, before the commit checks that they
    /// are stored, until the returned guard is dropped after it: a sweep
    /// running meanwhile keeps them (see [`crate::pins`]), whether or not
    /// the session was told of them and whether or not it still exists.
    #[must_use = "the chunks are pinned only while the guard lives"]
    pub fn pin_for_commit<'a>(
        &self,
        chunks: impl IntoIterator<Item = &'a ChunkId>,
    ) -> CommitPins<'_> {
        let commit = self.pins.lock().pin_commit(chunks.into_iter().copied());
        CommitPins {
            pins: &self.pins,
            commit,
        }
    }

    /// The stored bytes of `ids`, in the order asked, whoever owns them
    /// (callers that act for one node check ownership first); a chunk whose
    /// pool does not answer comes from another pool's whole copy
    /// ([`Repository::read_from_any_pool`]).
    ///
    /// # Errors
    /// A chunk that is not indexed, named; container read errors.
    pub fn read_chunks(&self, ids: &[ChunkId]) -> Result<Vec<StoredChunk>, ServerError> {
        let locations = self.catalog.chunk_locations(ids)?;
        self.pools.prefetch(
            &locations.iter().flatten().copied().collect::<Vec<_>>(),
            true,
        );
        let mut reroutes = fallback::Reroutes::new();
        let read = ids
            .iter()
            .zip(locations)
            .map(|(id, location)| {
                let location = location.ok_or_else(|| {
                    ServerError::FailedPrecondition(format!(
                        "chunk {id} is not stored in this repository"
                    ))
                })?;
                let copy = self.read_from_any_pool(*id, location)?;
                if let Some((down, used)) = copy.rerouted {
                    *reroutes.entry((down, Some(used))).or_default() += 1;
                }
                Ok(StoredChunk {
                    id: *id,
                    data: copy.data,
                    raw_len: u64::from(location.raw_len),
                })
            })
            .collect();
        for text in fallback::describe_reroutes(&self.pools, "being replicated", &reroutes) {
            tracing::warn!("TDM0436W {text}");
        }
        read
    }

    /// The stored bytes of chunk `id` at `location`. Compaction may have
    /// moved the chunk since its location was looked up; then the read fails,
    /// and the chunk is looked up again and read once more at its new place.
    ///
    /// # Errors
    /// The chunk unreadable at both places (the first error is returned).
    pub fn read_at(&self, id: ChunkId, location: ChunkLocation) -> Result<Vec<u8>, ServerError> {
        match self.pools.read(location) {
            Ok(data) => Ok(data),
            // The same copy, moved within its pool: another pool's copy
            // would hide this one's damage from an audit.
            Err(first) => match self
                .catalog
                .pool_chunk_locations(location.pool, &[id])?
                .pop()
                .flatten()
            {
                Some(moved) if moved != location => Ok(self.pools.read(moved)?),
                _ => Err(first.into()),
            },
        }
    }
}

/// A repository in `dir` with the default pool, for unit tests.
#[cfg(test)]
pub(crate) fn open_for_test(dir: &Path) -> Repository {
    Repository::open(
        dir,
        Policy::default(),
        PoolSetup {
            default: &PoolConfig::default(),
            more: &std::collections::BTreeMap::new(),
        },
        "TEST",
        |_| Ok(()),
    )
    .unwrap()
}

/// The pins of one commit under way ([`Repository::pin_for_commit`]).
#[derive(Debug)]
pub struct CommitPins<'a> {
    pins: &'a ChunkPins,
    commit: u64,
}

impl Drop for CommitPins<'_> {
    fn drop(&mut self) {
        self.pins.lock().unpin_commit(self.commit);
    }
}
