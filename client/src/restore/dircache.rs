//! The few directory descriptors a restore keeps open, by path below DEST,
//! dropping the one used longest ago when full.
//!
//! Emptying the whole cache when it filled up made a restore of a deep tree
//! walk every new directory again from DEST: with directories eight deep,
//! four new ones filled 32 entries, so nearly every directory cost a
//! descriptor per component (57,000 extra `openat` and `close` calls in a
//! restore of 80,000 files in 6,665 directories). Dropping only the least
//! recently used keeps the parents a depth-first restore is working in.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// Descriptors by directory path (components below DEST joined with `/`).
#[derive(Debug)]
pub(super) struct DirCache {
    capacity: usize,
    /// Each entry with the tick of its last use.
    entries: HashMap<Vec<u8>, (Arc<OwnedFd>, u64)>,
    tick: u64,
}

impl DirCache {
    /// An empty cache holding at most `capacity` (at least one) descriptors.
    pub(super) fn new(capacity: usize) -> Self {
        DirCache {
            capacity: capacity.max(1),
            entries: HashMap::with_capacity(capacity.max(1)),
            tick: 0,
        }
    }

    /// The descriptor of `path`, marked as just used.
    pub(super) fn get(&mut self, path: &[u8]) -> Option<Arc<OwnedFd>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(path).map(|(fd, used)| {
            *used = tick;
            fd.clone()
        })
    }

    /// Keeps `fd` for `path`, dropping the least recently used entry when
    /// the cache is full. A linear search: the cache holds a few dozen.
    pub(super) fn insert(&mut self, path: Vec<u8>, fd: Arc<OwnedFd>) {
        self.tick += 1;
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&path) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(path, (fd, self.tick));
    }

    /// Forgets every descriptor.
    #[cfg(test)]
    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Descriptors held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> Arc<OwnedFd> {
        Arc::new(OwnedFd::from(std::fs::File::open("/").unwrap()))
    }

    #[test]
    fn a_full_cache_drops_the_entry_used_longest_ago_and_keeps_the_rest() {
        let mut cache = DirCache::new(3);
        cache.insert(b"a".to_vec(), fd());
        cache.insert(b"a/b".to_vec(), fd());
        cache.insert(b"a/b/c".to_vec(), fd());
        // "a" is used again: "a/b" is now the oldest.
        assert!(cache.get(b"a").is_some());
        cache.insert(b"a/b/d".to_vec(), fd());
        assert_eq!(cache.len(), 3);
        assert!(cache.get(b"a/b").is_none());
        assert!(cache.get(b"a").is_some());
        assert!(cache.get(b"a/b/c").is_some());
        assert!(cache.get(b"a/b/d").is_some());
    }

    #[test]
    fn replacing_an_entry_drops_nothing_else() {
        let mut cache = DirCache::new(2);
        cache.insert(b"x".to_vec(), fd());
        cache.insert(b"y".to_vec(), fd());
        cache.insert(b"x".to_vec(), fd());
        assert_eq!(cache.len(), 2);
        assert!(cache.get(b"y").is_some());
        cache.clear();
        assert_eq!(cache.len(), 0);
    }
}
