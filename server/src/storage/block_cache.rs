//! The S3 pool's read cache: 1 MiB blocks of container objects, least
//! recently used out first, and the blocks being fetched right now, so a
//! read-ahead running in the background and a read that needs the same
//! block share one GET.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prost::bytes::Bytes;

/// A block: container number and block index.
pub(super) type BlockKey = (u32, u64);

#[derive(Debug)]
struct State {
    blocks: lru::LruCache<BlockKey, Bytes>,
    fetching: HashSet<BlockKey>,
}

/// Cached blocks and blocks in flight.
#[derive(Debug)]
pub(super) struct BlockCache {
    state: Mutex<State>,
    landed: Condvar,
}

impl BlockCache {
    /// A cache of at most `capacity` blocks.
    pub(super) fn new(capacity: NonZeroUsize) -> Self {
        BlockCache {
            state: Mutex::new(State {
                blocks: lru::LruCache::new(capacity),
                fetching: HashSet::new(),
            }),
            landed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks the cache can hold.
    pub(super) fn capacity(&self) -> usize {
        self.lock().blocks.cap().get()
    }

    /// A cached block.
    pub(super) fn get(&self, key: BlockKey) -> Option<Bytes> {
        self.lock().blocks.get(&key).cloned()
    }

    /// Stores a block fetched by a read.
    pub(super) fn put(&self, key: BlockKey, data: Bytes) {
        self.lock().blocks.put(key, data);
    }

    /// Of `keys`, claims those neither cached nor in flight for the caller
    /// to fetch (returned first), and returns those already in flight
    /// (second), which the caller may wait for. Those already cached count
    /// as just used, so they outlive older blocks until they are read.
    pub(super) fn claim(&self, keys: &[BlockKey]) -> (Vec<BlockKey>, Vec<BlockKey>) {
        let mut state = self.lock();
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        for &key in keys {
            if state.blocks.contains(&key) {
                state.blocks.promote(&key);
                continue;
            }
            if state.fetching.insert(key) {
                mine.push(key);
            } else {
                theirs.push(key);
            }
        }
        (mine, theirs)
    }

    /// Ends the fetch of a claimed block: stored when it came, and anyone
    /// waiting for it is woken either way.
    pub(super) fn land(&self, key: BlockKey, data: Option<Bytes>) {
        let mut state = self.lock();
        state.fetching.remove(&key);
        if let Some(data) = data {
            state.blocks.put(key, data);
        }
        drop(state);
        self.landed.notify_all();
    }

    /// Waits until none of `keys` is in flight any more, at most `limit`.
    pub(super) fn wait_for(&self, keys: &[BlockKey], limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut state = self.lock();
        while keys.iter().any(|k| state.fetching.contains(k)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = self
                .landed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Drops every cached block of a deleted container.
    pub(super) fn forget_container(&self, number: u32) {
        let mut state = self.lock();
        let stale: Vec<BlockKey> = state
            .blocks
            .iter()
            .filter(|((n, _), _)| *n == number)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            state.blocks.pop(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_in_flight_is_claimed_once_and_waited_for() {
        let cache = BlockCache::new(NonZeroUsize::new(4).unwrap());
        let (mine, theirs) = cache.claim(&[(1, 0), (1, 1)]);
        assert_eq!((mine.len(), theirs.len()), (2, 0));
        // A second reader finds both in flight and fetches nothing.
        let (mine, theirs) = cache.claim(&[(1, 1), (1, 2)]);
        assert_eq!(mine, vec![(1, 2)]);
        assert_eq!(theirs, vec![(1, 1)]);
        cache.land((1, 0), Some(Bytes::from_static(b"a")));
        cache.land((1, 1), None); // a failed GET wakes waiters too
        cache.wait_for(&[(1, 1)], Duration::from_secs(5));
        assert_eq!(cache.get((1, 0)).as_deref(), Some(&b"a"[..]));
        assert!(cache.get((1, 1)).is_none());
        // Cached blocks are not claimed again.
        assert_eq!(cache.claim(&[(1, 0)]), (vec![], vec![]));
        cache.forget_container(1);
        assert!(cache.get((1, 0)).is_none());
    }
}
