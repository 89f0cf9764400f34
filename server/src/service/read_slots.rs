//! How many streamed answers one caller may have open at once.
//!
//! A streamed answer holds memory on the server for as long as it is open:
//! a `ReadChunks` stream the group of chunks being read and the chunks
//! queued for the client (up to about 90 MiB when the chunks are the
//! largest allowed), a `QueryObjects` stream a few pages of versions (tens
//! of MiB at worst, with long paths). A client that opens streams and never
//! reads them would hold that much per stream, and HTTP/2 lets one
//! connection carry dozens. So every reader (a node, whatever its sessions
//! and connections, or a partner server) gets [`STREAMS_PER_READER`] slots
//! of each kind; a call beyond them **waits** for a slot rather than being
//! refused, because a restore legitimately keeps a second call open while
//! it works through the first (it asks for its next batch early), and
//! several restores of one node may run at once. At most
//! [`WAITING_PER_READER`] calls of a reader wait; one more is refused.
//!
//! Waiting cannot deadlock as long as no client waits for a call while it
//! holds a stream it is not reading: the restore fetch asks for its next
//! batch only once the current batch has asked for all its chunks, and
//! everything else reads each stream to its end before the next call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ServerError;

/// Streams of one kind one reader may have open at once.
pub const STREAMS_PER_READER: usize = 4;
/// Calls of one kind of one reader that may wait for a slot at once.
pub const WAITING_PER_READER: u64 = 16;

/// Who a stream reads for: the slots are counted per reader.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reader {
    /// A node, by row id (all of its sessions together).
    Node(i64),
    /// A partner server, by name.
    Partner(String),
}

/// One reader's slots and waiting calls.
#[derive(Debug)]
struct ReaderSlots {
    streams: Arc<Semaphore>,
    waiting: AtomicU64,
}

/// The slots of every reader for one kind of stream, and how many calls
/// wait for one.
#[derive(Debug)]
pub struct ReadSlots {
    /// What the streams are, for the refusal's message.
    what: &'static str,
    /// Streams one reader may have open at once.
    streams_per_reader: usize,
    /// Calls of one reader that may wait at once.
    waiting_per_reader: u64,
    by_reader: Mutex<HashMap<Reader, Arc<ReaderSlots>>>,
    waiting: AtomicU64,
}

/// A slot held for the life of one stream; dropping it frees the slot.
#[derive(Debug)]
pub struct ReadSlot {
    _permit: OwnedSemaphorePermit,
}

/// Counts a call as waiting (overall and for its reader) until it has a
/// slot or is dropped.
struct Waiting<'a> {
    all: &'a AtomicU64,
    reader: &'a AtomicU64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.all.fetch_sub(1, Ordering::Relaxed);
        self.reader.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ReadSlots {
    /// Slots for streams described as `what` ("data streams").
    #[must_use]
    pub fn new(what: &'static str) -> Self {
        Self::sized(what, STREAMS_PER_READER, WAITING_PER_READER)
    }

    /// Slots for streams described as `what`, `streams` per caller with
    /// `waiting` more of its calls waiting.
    #[must_use]
    pub fn sized(what: &'static str, streams: usize, waiting: u64) -> Self {
        ReadSlots {
            what,
            streams_per_reader: streams,
            waiting_per_reader: waiting,
            by_reader: Mutex::default(),
            waiting: AtomicU64::new(0),
        }
    }

    /// A slot for `reader`, once one is free.
    ///
    /// # Errors
    /// [`ServerError::ResourceExhausted`] when as many of the reader's calls
    /// as these slots let wait (by default [`WAITING_PER_READER`]) wait
    /// already.
    pub async fn acquire(&self, reader: Reader) -> Result<ReadSlot, ServerError> {
        let mine = {
            let mut map = self.by_reader.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(reader)
                .or_insert_with(|| {
                    Arc::new(ReaderSlots {
                        streams: Arc::new(Semaphore::new(self.streams_per_reader)),
                        waiting: AtomicU64::new(0),
                    })
                })
                .clone()
        };
        if let Ok(permit) = mine.streams.clone().try_acquire_owned() {
            return Ok(ReadSlot { _permit: permit });
        }
        if mine.waiting.fetch_add(1, Ordering::Relaxed) >= self.waiting_per_reader {
            mine.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(ServerError::ResourceExhausted(format!(
                "{} {} of this caller are open and {} more wait for them; end some (a client that opens streams and does not read them holds them) and try again",
                self.streams_per_reader, self.what, self.waiting_per_reader
            )));
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting {
            all: &self.waiting,
            reader: &mine.waiting,
        };
        let permit = mine
            .streams
            .clone()
            .acquire_owned()
            .await
            .expect("read-slot semaphores are never closed");
        Ok(ReadSlot { _permit: permit })
    }

    /// Streams open now, over all readers.
    pub fn open(&self) -> u64 {
        let map = self.by_reader.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|s| (self.streams_per_reader - s.streams.available_permits()) as u64)
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

    /// Lets spawned waiters run until `n` are counted (bounded).
    async fn wait_for_waiters(slots: &ReadSlots, n: u64) {
        for _ in 0..100_000 {
            if slots.waiting() >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the calls never started waiting");
    }

    #[tokio::test]
    async fn sized_slots_keep_their_own_counts() {
        let slots = Arc::new(ReadSlots::sized("upload streams", 2, 1));
        let held = (
            slots.acquire(Reader::Node(1)).await.unwrap(),
            slots.acquire(Reader::Node(1)).await.unwrap(),
        );
        assert_eq!(slots.open(), 2);
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(Reader::Node(1)).await })
        };
        wait_for_waiters(&slots, 1).await;
        let refused = slots
            .acquire(Reader::Node(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("2 upload streams") && refused.contains("1 more wait"),
            "{refused}"
        );
        drop(held);
        let slot = waiter.await.unwrap().unwrap();
        assert_eq!(slots.open(), 1);
        drop(slot);
        assert_eq!(slots.open(), 0);
    }

    #[tokio::test]
    async fn a_reader_beyond_its_slots_waits_until_one_is_freed() {
        let slots = Arc::new(ReadSlots::new("data streams"));
        let mut held = Vec::new();
        for _ in 0..STREAMS_PER_READER {
            held.push(slots.acquire(Reader::Node(1)).await.unwrap());
        }
        // Another reader is not held up by node 1.
        let other = slots.acquire(Reader::Partner("B".into())).await.unwrap();
        assert_eq!(slots.open(), STREAMS_PER_READER as u64 + 1);

        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(Reader::Node(1)).await })
        };
        wait_for_waiters(&slots, 1).await;
        assert!(!waiter.is_finished());
        held.pop();
        let slot = waiter.await.unwrap().unwrap();
        assert_eq!(slots.waiting(), 0);
        assert_eq!(slots.open(), STREAMS_PER_READER as u64 + 1);
        drop((slot, other, held));
        assert_eq!(slots.open(), 0);
    }

    #[tokio::test]
    async fn a_waiting_call_that_is_dropped_is_no_longer_counted() {
        let slots = Arc::new(ReadSlots::new("data streams"));
        let _held: Vec<_> = futures_util::future::join_all(
            (0..STREAMS_PER_READER).map(|_| slots.acquire(Reader::Node(7))),
        )
        .await;
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(Reader::Node(7)).await })
        };
        wait_for_waiters(&slots, 1).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(slots.waiting(), 0);
        assert_eq!(slots.open(), STREAMS_PER_READER as u64);
    }

    #[tokio::test]
    async fn beyond_the_waiting_calls_one_more_is_refused_and_others_still_wait() {
        let slots = Arc::new(ReadSlots::new("data streams"));
        let _held: Vec<_> = futures_util::future::join_all(
            (0..STREAMS_PER_READER).map(|_| slots.acquire(Reader::Node(3))),
        )
        .await;
        let waiters: Vec<_> = (0..WAITING_PER_READER)
            .map(|_| {
                let slots = slots.clone();
                tokio::spawn(async move { slots.acquire(Reader::Node(3)).await })
            })
            .collect();
        wait_for_waiters(&slots, WAITING_PER_READER).await;
        let refused = slots.acquire(Reader::Node(3)).await.unwrap_err();
        assert!(
            matches!(&refused, ServerError::ResourceExhausted(m) if m.contains("4 data streams of this caller are open and 16 more wait")),
            "{refused:?}"
        );
        // Other readers are not refused.
        let _other = slots.acquire(Reader::Node(4)).await.unwrap();
        assert_eq!(slots.waiting(), WAITING_PER_READER);
        for waiter in waiters {
            waiter.abort();
        }
    }
}
