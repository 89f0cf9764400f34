//! The repository's part of self-repair: checking a node's copies of
//! chunks (read, decompress, hash), and putting verified copies from
//! elsewhere in place of damaged or missing ones, in the durability order
//! (appended and fsynced before the index points at them).

use std::collections::HashSet;

use tandem_proto::ChunkId;

use super::Repository;
use crate::error::{ServerError, StorageError};
use crate::model::ChunkLocation;
use crate::storage::{self, VerifiedChunk};

/// What a check of a node's chunks found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChunkCheck {
    /// Stored for the node, and whole.
    pub intact: Vec<ChunkId>,
    /// Stored for the node but unreadable or not what their id says, with why.
    pub damaged: Vec<(ChunkId, String)>,
    /// The container of each damaged chunk's (first) damaged copy.
    pub damaged_containers: std::collections::HashMap<ChunkId, u32>,
    /// Not stored for the node: freed since a restored catalog's copy,
    /// lost, or stored only for other nodes. These are not told apart, so a
    /// node learns nothing about other nodes' chunks; a copy from the node's
    /// own replica proves it held the chunk.
    pub absent: Vec<ChunkId>,
}

/// Stored bytes a check fetches ahead at once.
const PREFETCH_STEP_BYTES: u64 = 8 << 20;

/// What a read of chunks at their indexed places found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LocatedCheck {
    /// Read and whole.
    pub intact: Vec<ChunkId>,
    /// Unreadable or not what their id says: the container and why.
    pub damaged: Vec<(ChunkId, u32, String)>,
    /// No longer indexed when read (expiration freed them meanwhile).
    pub gone: Vec<ChunkId>,
    /// Stored bytes read.
    pub bytes_read: u64,
}

impl Repository {
    /// Checks node `node`'s copies of `ids` (each once): reads every owned
    /// chunk and verifies it as an upload is verified.
    ///
    /// # Errors
    /// Catalog errors (a damaged chunk is a finding, not an error).
    pub fn check_chunks(&self, node: i64, ids: &[ChunkId]) -> Result<ChunkCheck, ServerError> {
        let mut seen = HashSet::new();
        let ids: Vec<ChunkId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        let owned = self.catalog.owned_chunk_locations(node, &ids)?;
        let mut out = ChunkCheck::default();
        let mut located = Vec::with_capacity(ids.len());
        for (id, location) in ids.iter().zip(owned) {
            if location.is_none() {
                out.absent.push(*id);
                continue;
            }
            // Every pool's copy: a damaged one is found even where another
            // pool holds the chunk whole.
            located.extend(
                self.catalog
                    .chunk_copies(id)?
                    .into_iter()
                    .map(|at| (*id, at)),
            );
        }
        let check = self.check_located(&located)?;
        let mut damaged = HashSet::new();
        for (id, container, why) in check.damaged {
            if damaged.insert(id) {
                out.damaged.push((id, why));
                out.damaged_containers.insert(id, container);
            }
        }
        let mut seen = HashSet::new();
        out.intact = check
            .intact
            .into_iter()
            .filter(|id| !damaged.contains(id) && seen.insert(*id))
            .collect();
        let mut gone = HashSet::new();
        out.absent.extend(
            check
                .gone
                .into_iter()
                .filter(|id| !damaged.contains(id) && !seen.contains(id) && gone.insert(*id)),
        );
        Ok(out)
    }

    /// Reads every chunk of `chunks` at its indexed place (fetched ahead
    /// together) and verifies it as an upload is verified.
    ///
    /// # Errors
    /// The pool not answering (`StorageError::PoolUnavailable`): that says
    /// nothing about the data, so the check stops rather than call every
    /// chunk damaged. A damaged chunk is a finding, not an error.
    pub fn check_located(
        &self,
        chunks: &[(ChunkId, ChunkLocation)],
    ) -> Result<LocatedCheck, ServerError> {
        // In stored order, fetched ahead a few MiB at a time: the blocks of
        // one step fit the read cache with room for the read-ahead, so
        // none is evicted before it is verified.
        let mut chunks = chunks.to_vec();
        chunks.sort_unstable_by_key(|(_, l)| (l.container, l.offset));
        let mut out = LocatedCheck::default();
        let mut fetched_to = 0usize;
        for (at, (id, location)) in chunks.iter().enumerate() {
            if at == fetched_to {
                let mut bytes = 0u64;
                let step: Vec<ChunkLocation> = chunks[at..]
                    .iter()
                    .map(|(_, l)| *l)
                    .take_while(|l| {
                        bytes += u64::from(l.stored_len);
                        bytes <= PREFETCH_STEP_BYTES || bytes == u64::from(l.stored_len)
                    })
                    .collect();
                fetched_to = at + step.len();
                self.pools.prefetch(&step, true);
            }
            let read = match self.read_at(*id, *location) {
                Err(e @ ServerError::Storage(StorageError::PoolUnavailable { .. })) => {
                    return Err(e);
                }
                // Freed by expiration since it was listed: not damage.
                Err(_)
                    if self
                        .catalog
                        .chunk_locations(&[*id])?
                        .pop()
                        .flatten()
                        .is_none() =>
                {
                    out.gone.push(*id);
                    continue;
                }
                other => other,
            };
            out.bytes_read += u64::from(location.stored_len);
            let verdict = read.map_err(|e| e.to_string()).and_then(|data| {
                storage::verify_chunk(*id, data.into(), u64::from(location.raw_len))
                    .map_err(|e| e.to_string())
            });
            match verdict {
                Ok(_) => out.intact.push(*id),
                Err(why) => out.damaged.push((*id, location.container, why)),
            }
        }
        Ok(out)
    }

    /// Stores verified copies of chunks of node `node` in place of damaged
    /// or missing ones: appended and fsynced, then the index re-pointed (or
    /// added) and the node made an owner, under the pin lock so the sweep
    /// cannot slip in between. Returns the ids now in place.
    ///
    /// # Errors
    /// Container and catalog errors; nothing is re-pointed for a group
    /// whose append or fsync failed.
    pub fn replace_chunks(
        &self,
        node: i64,
        chunks: &[VerifiedChunk],
    ) -> Result<Vec<ChunkId>, ServerError> {
        // Each copy that does not read back whole is replaced in its own
        // pool; a chunk with no copy left goes to the node's pool.
        let mut by_pool: std::collections::BTreeMap<u32, Vec<VerifiedChunk>> =
            std::collections::BTreeMap::new();
        for chunk in chunks {
            let copies = self.catalog.chunk_copies(&chunk.id)?;
            let mut targets: Vec<u32> = copies
                .iter()
                .filter(|at| !self.reads_whole(chunk.id, **at))
                .map(|at| at.pool)
                .collect();
            if copies.is_empty() {
                targets.push(self.catalog.node_pool(node)?);
            }
            for pool in targets {
                by_pool.entry(pool).or_default().push(chunk.clone());
            }
        }
        let mut written = Vec::new();
        for (pool, group) in by_pool {
            written.extend(self.pools.get(pool)?.append(&group)?);
        }
        let _sweep = self.pins.lock();
        // Verified bytes prove the node holds each chunk, written or not:
        // a chunk stored whole only for other nodes becomes the node's too.
        let all: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
        self.catalog.replace_chunks(node, &written, &all)?;
        Ok(all)
    }

    /// Whether the copy of `id` at `at` reads back and matches its id.
    fn reads_whole(&self, id: ChunkId, at: ChunkLocation) -> bool {
        self.whole_copy(id, at).is_some()
    }

    /// The copy of `id` at `at`, if it reads back and matches its id (a
    /// pool that does not answer counts as not whole here).
    fn whole_copy(&self, id: ChunkId, at: ChunkLocation) -> Option<VerifiedChunk> {
        self.checked_copy(id, at).ok().flatten()
    }

    /// The copy of `id` at `at` when it reads back and matches its id;
    /// `None` when it is damaged or gone.
    ///
    /// # Errors
    /// A pool that does not answer: not damage, so a move stops rather
    /// than call the data damaged.
    pub(super) fn checked_copy(
        &self,
        id: ChunkId,
        at: ChunkLocation,
    ) -> Result<Option<VerifiedChunk>, ServerError> {
        match self.pools.read(at) {
            Ok(data) => Ok(storage::verify_chunk(id, data.into(), u64::from(at.raw_len)).ok()),
            Err(e @ StorageError::PoolUnavailable { .. }) => Err(e.into()),
            Err(_) => Ok(None),
        }
    }

    /// Repairs chunks of node `node` from this server's own copies, as TSM
    /// repairs a primary pool from a copy pool: for each of `ids` that
    /// another storage pool holds whole, every copy that does not read back
    /// whole is replaced with it. Returns the ids repaired, each with the
    /// name of the pool its copy came from; the others are left for the
    /// replication partner.
    ///
    /// # Errors
    /// Container and catalog errors, as [`Repository::replace_chunks`].
    pub fn repair_from_other_pools(
        &self,
        node: i64,
        ids: &[ChunkId],
    ) -> Result<Vec<(ChunkId, String)>, ServerError> {
        let mut whole = Vec::new();
        let mut sources = Vec::new();
        for id in ids {
            let copies = self.catalog.chunk_copies(id)?;
            if copies.len() < 2 {
                continue;
            }
            if let Some((chunk, pool)) = copies
                .iter()
                .find_map(|at| Some((self.whole_copy(*id, *at)?, at.pool)))
            {
                whole.push(chunk);
                sources.push((*id, self.pools.name_of(pool)));
            }
        }
        if !whole.is_empty() {
            self.replace_chunks(node, &whole)?;
        }
        Ok(sources)
    }
}
