//! A server's storage pools: the default pool (`[pool]`, id 0) and those
//! `[pools.NAME]` adds, each a [`ChunkStore`] of its own, by the id the
//! catalog gave its name. A chunk's location names its pool, so reads go
//! to the right store; a node's new data goes to its pool's store.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{ChunkStore, ContainerNumbers, PoolStatus};
use crate::error::StorageError;
use crate::model::{ChunkLocation, DEFAULT_POOL};

/// One configured pool.
#[derive(Debug)]
pub struct PoolEntry {
    /// Its upper-case name (`DEFAULT` for `[pool]`).
    pub name: String,
    /// Its containers.
    pub store: ChunkStore,
}

/// The configured pools, by catalog id; the default pool is always there.
#[derive(Debug)]
pub struct Pools {
    by_id: BTreeMap<u32, PoolEntry>,
    /// Names of pools the catalog knows and the configuration does not.
    unconfigured: BTreeMap<u32, String>,
    /// Kept so the set's container numbers outlive any one store.
    _numbers: Arc<ContainerNumbers>,
}

impl Pools {
    /// The pools of `entries`, whose stores share `numbers`.
    ///
    /// # Errors
    /// [`StorageError::Pool`] when the default pool is not among them.
    pub fn new(
        entries: BTreeMap<u32, PoolEntry>,
        unconfigured: BTreeMap<u32, String>,
        numbers: Arc<ContainerNumbers>,
    ) -> Result<Self, StorageError> {
        if !entries.contains_key(&DEFAULT_POOL) {
            return Err(StorageError::Pool {
                pool: "DEFAULT".into(),
                container: None,
                reason: "the default pool was not opened".into(),
            });
        }
        Ok(Pools {
            by_id: entries,
            unconfigured,
            _numbers: numbers,
        })
    }

    /// The store of pool `id`.
    ///
    /// # Errors
    /// [`StorageError::Pool`] for a pool the configuration no longer names
    /// (its data cannot be reached until it does again).
    pub fn get(&self, id: u32) -> Result<&ChunkStore, StorageError> {
        self.by_id.get(&id).map(|e| &e.store).ok_or_else(|| {
            let name = self.name_of(id);
            StorageError::Pool {
                reason: format!(
                    "this storage pool is not in the server's configuration; add [pools.{name}] again and restart, \
                     or send the node's data elsewhere with update node --pool"
                ),
                pool: name,
                container: None,
            }
        })
    }

    /// The default pool's store.
    #[must_use]
    pub fn default_store(&self) -> &ChunkStore {
        &self.by_id[&DEFAULT_POOL].store
    }

    /// Every pool, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &PoolEntry)> {
        self.by_id.iter().map(|(id, e)| (*id, e))
    }

    /// The id of the pool named `name` (upper case).
    #[must_use]
    pub fn id_of(&self, name: &str) -> Option<u32> {
        self.iter().find(|(_, e)| e.name == name).map(|(id, _)| id)
    }

    /// The name of pool `id` (`number N` for one the configuration lacks).
    #[must_use]
    pub fn name_of(&self, id: u32) -> String {
        self.by_id
            .get(&id)
            .map(|e| e.name.clone())
            .or_else(|| self.unconfigured.get(&id).cloned())
            .unwrap_or_else(|| format!("number {id}"))
    }

    /// Reads a chunk's stored bytes from its pool.
    ///
    /// # Errors
    /// As [`ChunkStore::read`]; an unknown pool.
    pub fn read(&self, loc: ChunkLocation) -> Result<Vec<u8>, StorageError> {
        self.get(loc.pool)?.read(loc)
    }

    /// [`ChunkStore::unanswering`] for `loc`'s pool (an unconfigured pool
    /// is not: reading it names the problem).
    #[must_use]
    pub fn unanswering(&self, loc: ChunkLocation) -> bool {
        self.by_id
            .get(&loc.pool)
            .is_some_and(|e| e.store.unanswering(loc))
    }

    /// [`ChunkStore::prefetch`], each pool's locations to its store.
    pub fn prefetch(&self, locations: &[ChunkLocation], read_ahead: bool) {
        for (id, entry) in &self.by_id {
            let mine: Vec<ChunkLocation> = locations
                .iter()
                .filter(|l| l.pool == *id)
                .copied()
                .collect();
            if !mine.is_empty() {
                entry.store.prefetch(&mine, read_ahead);
            }
        }
    }

    /// [`ChunkStore::read_waves`] for a read that may span pools: waves
    /// are cut by each pool's store for its own locations (the others'
    /// count as nothing to fetch), and the finer cut wins.
    #[must_use]
    pub fn read_waves(&self, locations: &[Option<ChunkLocation>]) -> Vec<std::ops::Range<usize>> {
        let mut cuts = std::collections::BTreeSet::new();
        for (id, entry) in &self.by_id {
            let mine: Vec<Option<ChunkLocation>> = locations
                .iter()
                .map(|l| l.filter(|l| l.pool == *id))
                .collect();
            if mine.iter().all(Option::is_none) && *id != DEFAULT_POOL {
                continue;
            }
            for wave in entry.store.read_waves(&mine) {
                cuts.insert(wave.start);
                cuts.insert(wave.end);
            }
        }
        let cuts: Vec<usize> = cuts.into_iter().collect();
        cuts.windows(2).map(|w| w[0]..w[1]).collect()
    }

    /// Every pool's status, with its name, in id order.
    ///
    /// # Errors
    /// As [`ChunkStore::pool_status`].
    pub fn statuses(&self) -> Result<Vec<(String, PoolStatus)>, StorageError> {
        self.by_id
            .values()
            .map(|e| Ok((e.name.clone(), e.store.pool_status()?)))
            .collect()
    }
}
