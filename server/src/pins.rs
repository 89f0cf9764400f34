//! Chunks a live session relies on, protected from the chunk sweep.
//!
//! Between "the server has chunk X" (`FindMissingChunks`, or an upload) and
//! the commit of the object that uses X, nothing references X yet. The sweep
//! therefore keeps every chunk pinned by an open session. Pinning and the
//! sweep both hold this lock, so a chunk is either pinned before the sweep
//! looks, or the sweep has already removed it from the index and the client
//! is told it is missing.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use tandem_proto::ChunkId;

/// Pinned chunk ids per session number.
#[derive(Debug, Default)]
pub struct ChunkPins {
    by_session: Mutex<HashMap<u64, HashSet<ChunkId>>>,
}

/// The locked pin table.
pub type PinTable = HashMap<u64, HashSet<ChunkId>>;

impl ChunkPins {
    /// Locks the table. Hold it across "look up in the index" + "pin" (or
    /// "sweep"), never across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, PinTable> {
        self.by_session.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the pins of a session that ended.
    pub fn release(&self, session: u64) {
        self.lock().remove(&session);
    }
}
