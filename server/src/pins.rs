//! Chunks a live session relies on, protected from the chunk sweep.
//!
//! Between "the server has chunk X" (`FindMissingChunks`, or an upload) and
//! the commit of the object that uses X, nothing references X yet. The sweep
//! therefore keeps every chunk pinned by an open session. A commit pins the
//! chunks it names too, before it checks they are stored, so a client that
//! names a chunk it was never told about in this session is covered as well.
//!
//! The sweep reads the whole catalog, which takes seconds in a large one, so
//! it does not hold this lock while it reads. It takes it twice: at the start,
//! to copy the pins held then, start recording every chunk pinned from then
//! on ([`PinTable::begin_sweep`]) and open its read snapshot; and at the end,
//! to delete, under the lock, only chunks that were unreferenced in the
//! snapshot and pinned neither at the start nor since. A
//! chunk a session relies on is either pinned before the deletion, and kept,
//! or pinned after it, in which case the index no longer has it and the
//! client is told it is missing (or its commit is refused as naming a chunk
//! not stored).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use tandem_proto::ChunkId;

/// Pinned chunk ids per session number, and per commit under way.
#[derive(Debug, Default)]
pub struct ChunkPins {
    table: Mutex<PinTable>,
}

impl ChunkPins {
    /// Locks the table. Hold it across "look up in the index" + "pin" (or
    /// the sweep's deletion), never across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, PinTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the pins of a session that ended.
    pub fn release(&self, session: u64) {
        self.lock().by_session.remove(&session);
    }
}

/// The pins of every open session, and what was pinned while a sweep read
/// its snapshot.
#[derive(Debug, Default)]
pub struct PinTable {
    by_session: HashMap<u64, HashSet<ChunkId>>,
    /// The chunks of commits under way, by a number of their own: a
    /// session's pins may go while its commit still runs (the session was
    /// cancelled, or pushed out by the node's newer sessions).
    by_commit: HashMap<u64, HashSet<ChunkId>>,
    next_commit: u64,
    /// While a sweep reads its snapshot: every id pinned since it began.
    pinned_since_sweep_began: Option<HashSet<ChunkId>>,
}

impl PinTable {
    /// Pins `ids` for `session` until it ends.
    pub fn pin(&mut self, session: u64, ids: impl IntoIterator<Item = ChunkId>) {
        let held = self.by_session.entry(session).or_default();
        hold(held, self.pinned_since_sweep_began.as_mut(), ids);
    }

    /// Pins `ids` for one commit, until [`Self::unpin_commit`] with the
    /// number returned.
    pub fn pin_commit(&mut self, ids: impl IntoIterator<Item = ChunkId>) -> u64 {
        self.next_commit += 1;
        let held = self.by_commit.entry(self.next_commit).or_default();
        hold(held, self.pinned_since_sweep_began.as_mut(), ids);
        self.next_commit
    }

    /// Drops the pins of a commit that returned.
    pub fn unpin_commit(&mut self, commit: u64) {
        self.by_commit.remove(&commit);
    }

    /// Drops the pins of every session not in `open` (left over from
    /// sessions that ended without saying so).
    pub fn keep_sessions(&mut self, open: &HashSet<u64>) {
        self.by_session.retain(|session, _| open.contains(session));
    }

    /// Every pinned id, once.
    #[must_use]
    pub fn all(&self) -> HashSet<ChunkId> {
        self.by_session
            .values()
            .chain(self.by_commit.values())
            .flatten()
            .copied()
            .collect()
    }

    /// A sweep begins: returns every id pinned now, and records every id
    /// pinned from now until [`Self::end_sweep`].
    pub fn begin_sweep(&mut self) -> HashSet<ChunkId> {
        self.pinned_since_sweep_began = Some(HashSet::new());
        self.all()
    }

    /// The sweep ends: returns what was pinned since it began, and stops
    /// recording.
    pub fn end_sweep(&mut self) -> HashSet<ChunkId> {
        self.pinned_since_sweep_began.take().unwrap_or_default()
    }
}

/// Adds `ids` to `held`, and to `recorded` while a sweep reads.
fn hold(
    held: &mut HashSet<ChunkId>,
    recorded: Option<&mut HashSet<ChunkId>>,
    ids: impl IntoIterator<Item = ChunkId>,
) {
    match recorded {
        Some(recorded) => {
            for id in ids {
                recorded.insert(id);
                held.insert(id);
            }
        }
        None => held.extend(ids),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> ChunkId {
        ChunkId::from_slice(&[byte; 32]).unwrap()
    }

    #[test]
    fn a_sweep_sees_what_was_pinned_at_its_start_and_since_even_by_sessions_that_ended() {
        let pins = ChunkPins::default();
        pins.lock().pin(1, [id(1)]);
        let at_start = pins.lock().begin_sweep();
        assert_eq!(at_start, HashSet::from([id(1)]));
        // A session pins, commits and ends while the sweep reads.
        pins.lock().pin(2, [id(2), id(1)]);
        pins.release(2);
        pins.release(1);
        let mut table = pins.lock();
        assert!(table.all().is_empty());
        assert_eq!(table.end_sweep(), HashSet::from([id(1), id(2)]));
        // Recording stops with the sweep.
        table.pin(3, [id(3)]);
        assert!(table.end_sweep().is_empty());
        assert_eq!(table.all(), HashSet::from([id(3)]));
        table.keep_sessions(&HashSet::from([4]));
        assert!(table.all().is_empty());
    }

    #[test]
    fn a_commits_pins_outlast_its_session_and_go_when_it_returns() {
        let pins = ChunkPins::default();
        let commit = pins.lock().pin_commit([id(5)]);
        let mut table = pins.lock();
        // The session is pushed out while its commit runs.
        table.keep_sessions(&HashSet::new());
        assert_eq!(table.begin_sweep(), HashSet::from([id(5)]));
        table.unpin_commit(commit);
        assert!(table.all().is_empty());
        assert!(table.end_sweep().is_empty());
    }
}
