//! The few directory descriptors a restore keeps open, by path below DEST.
//!
//! Two limits, for two reasons:
//! - **Count** ([`DirCache::new`]'s capacity): when full, the descriptor used
//!   longest ago is dropped, so a restore holds a bounded number of
//!   descriptors however large the tree is.
//! - **Age**: a descriptor serves only until `max_age` more directories have
//!   been opened after it. A directory moved away by someone else after it
//!   was checked keeps its descriptor; the age limit bounds how long the
//!   restore could follow it before walking the path again from DEST, with
//!   every check. The limit is the one the earlier design had implicitly:
//!   it emptied the whole cache each time 32 directories had been opened.
//!
//! Emptying everything at once also dropped the ancestors a depth-first
//! restore keeps coming back to, so most new directories were walked again
//! from DEST, one descriptor per component. Dropping by use and by age keeps
//! them for the next directories.

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use lru::LruCache;

/// A cached descriptor and the insertion count when it was opened.
#[derive(Debug)]
struct Entry {
    fd: Arc<OwnedFd>,
    opened_at: u64,
}

/// Descriptors by directory path (components below DEST joined with `/`).
#[derive(Debug)]
pub(super) struct DirCache {
    entries: LruCache<Vec<u8>, Entry>,
    /// Descriptors put in so far.
    inserted: u64,
    /// Insertions after which a descriptor is no longer used.
    max_age: u64,
}

impl DirCache {
    /// An empty cache of at most `capacity` descriptors (at least one),
    /// each used until `max_age` more have been put in after it.
    pub(super) fn new(capacity: usize, max_age: u64) -> Self {
        DirCache {
            entries: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
            inserted: 0,
            max_age,
        }
    }

    /// The descriptor of `path`, marked as just used; `None` when it is not
    /// cached or too old (it is then dropped).
    pub(super) fn get(&mut self, path: &[u8]) -> Option<Arc<OwnedFd>> {
        let entry = self.entries.get(path)?;
        if self.inserted - entry.opened_at > self.max_age {
            self.entries.pop(path);
            return None;
        }
        Some(entry.fd.clone())
    }

    /// Keeps `fd`, just opened, for `path`, dropping the least recently
    /// used descriptor when the cache is full.
    pub(super) fn insert(&mut self, path: Vec<u8>, fd: Arc<OwnedFd>) {
        self.inserted += 1;
        let opened_at = self.inserted;
        self.entries.put(path, Entry { fd, opened_at });
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
        let mut cache = DirCache::new(3, 100);
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
    fn the_count_never_passes_the_capacity() {
        let mut cache = DirCache::new(4, 1_000);
        for i in 0..100 {
            cache.insert(format!("d{i}").into_bytes(), fd());
            assert!(cache.len() <= 4);
        }
        assert_eq!(cache.len(), 4);
        assert!(cache.get(b"d99").is_some());
        assert!(cache.get(b"d95").is_none());
    }

    #[test]
    fn a_descriptor_in_constant_use_still_expires_after_max_age_insertions() {
        let mut cache = DirCache::new(8, 3);
        cache.insert(b"top".to_vec(), fd());
        for i in 0..3 {
            assert!(cache.get(b"top").is_some(), "insertion {i}");
            cache.insert(format!("top/{i}").into_bytes(), fd());
        }
        assert!(cache.get(b"top").is_some(), "3 insertions later");
        cache.insert(b"top/3".to_vec(), fd());
        assert!(cache.get(b"top").is_none(), "4 insertions later");
        // Opened again, it serves again.
        cache.insert(b"top".to_vec(), fd());
        assert!(cache.get(b"top").is_some());
    }

    #[test]
    fn replacing_an_entry_drops_nothing_else() {
        let mut cache = DirCache::new(2, 100);
        cache.insert(b"x".to_vec(), fd());
        cache.insert(b"y".to_vec(), fd());
        cache.insert(b"x".to_vec(), fd());
        assert_eq!(cache.len(), 2);
        assert!(cache.get(b"y").is_some());
    }
}
