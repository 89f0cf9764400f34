//! How many chunk-reading streams one caller may have open at once.
//!
//! A `ReadChunks` stream holds memory on the server for as long as it is
//! open: the group of chunks being read and the chunks queued for the
//! client (up to about 90 MiB when the chunks are the largest allowed). A
//! client that opens streams and never reads them would hold that much per
//! stream, and HTTP/2 lets one connection carry dozens. So every reader (a
//! node, whatever its sessions and connections, or a partner server) gets
//! [`STREAMS_PER_READER`] slots; a call beyond them **waits** for a slot
//! rather than being refused, because a restore legitimately keeps a second
//! call open while it works through the first (it asks for its next batch
//! early), and several restores of one node may run at once. The wait ends
//! when a stream of the same reader ends, or when the caller gives up.
//!
//! Waiting cannot deadlock as long as each client consumes a stream it
//! holds without first needing another slot: the restore fetch opens its
//! current call (and has its answer) before it asks for the next batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Chunk-reading streams one reader may have open at once.
pub const STREAMS_PER_READER: usize = 4;

/// Who a stream reads for: the slots are counted per reader.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reader {
    /// A node, by row id (all of its sessions together).
    Node(i64),
    /// A partner server, by name.
    Partner(String),
}

/// The read slots of every reader, and how many calls wait for one.
#[derive(Debug, Default)]
pub struct ReadSlots {
    by_reader: Mutex<HashMap<Reader, Arc<Semaphore>>>,
    waiting: AtomicU64,
}

/// A slot held for the life of one stream; dropping it frees the slot.
#[derive(Debug)]
pub struct ReadSlot {
    _permit: OwnedSemaphorePermit,
}

/// Counts a call as waiting until it has a slot or is dropped.
struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ReadSlots {
    /// A slot for `reader`, once one is free.
    pub async fn acquire(&self, reader: Reader) -> ReadSlot {
        let slots = {
            let mut map = self.by_reader.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(reader)
                .or_insert_with(|| Arc::new(Semaphore::new(STREAMS_PER_READER)))
                .clone()
        };
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return ReadSlot { _permit: permit };
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        let permit = slots
            .acquire_owned()
            .await
            .expect("read-slot semaphores are never closed");
        ReadSlot { _permit: permit }
    }

    /// Streams open now, over all readers.
    pub fn open(&self) -> u64 {
        let map = self.by_reader.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|s| (STREAMS_PER_READER - s.available_permits()) as u64)
            .sum()
    }

    /// Calls waiting for a slot now.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lets the spawned waiter run until it is counted (bounded).
    async fn wait_for_a_waiter(slots: &ReadSlots) {
        for _ in 0..100_000 {
            if slots.waiting() > 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the call never started waiting");
    }

    #[tokio::test]
    async fn a_reader_beyond_its_slots_waits_until_one_is_freed() {
        let slots = Arc::new(ReadSlots::default());
        let mut held = Vec::new();
        for _ in 0..STREAMS_PER_READER {
            held.push(slots.acquire(Reader::Node(1)).await);
        }
        // Another reader is not held up by node 1.
        let other = slots.acquire(Reader::Partner("B".into())).await;
        assert_eq!(slots.open(), STREAMS_PER_READER as u64 + 1);

        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(Reader::Node(1)).await })
        };
        wait_for_a_waiter(&slots).await;
        assert!(!waiter.is_finished());
        held.pop();
        let slot = waiter.await.unwrap();
        assert_eq!(slots.waiting(), 0);
        assert_eq!(slots.open(), STREAMS_PER_READER as u64 + 1);
        drop((slot, other, held));
        assert_eq!(slots.open(), 0);
    }

    #[tokio::test]
    async fn a_waiting_call_that_is_dropped_is_no_longer_counted() {
        let slots = Arc::new(ReadSlots::default());
        let _held: Vec<_> = futures_util::future::join_all(
            (0..STREAMS_PER_READER).map(|_| slots.acquire(Reader::Node(7))),
        )
        .await;
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(Reader::Node(7)).await })
        };
        wait_for_a_waiter(&slots).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(slots.waiting(), 0);
        assert_eq!(slots.open(), STREAMS_PER_READER as u64);
    }
}
