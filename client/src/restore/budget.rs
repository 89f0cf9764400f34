//! A bound, in bytes, on the data queued for one writer thread.
//!
//! A bound in parcels does not fit both kinds of restore: two parcels of
//! small files are a few dozen files, gone in one wait of the writer for
//! the disk, after which the dealer stops for that writer while the other
//! one runs dry; two parcels of a large file are 2 MiB. A bound in bytes
//! lets the queue hold many small files and still caps what large ones keep
//! in memory.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::fetch::{Fetched, Parcel};

/// What a message without data counts for: its own size and its part of
/// the queue, so a parcel of empty files is not free.
const MESSAGE_BYTES: u64 = 64;

/// Bytes queued for one writer, and whether it still takes any.
#[derive(Debug, Default)]
struct Queued {
    bytes: u64,
    closed: bool,
}

/// The bytes the dealer may have queued for one writer at a time.
#[derive(Debug)]
pub(super) struct ByteBudget {
    queued: Mutex<Queued>,
    freed: Condvar,
    limit: u64,
}

impl ByteBudget {
    pub(super) fn new(limit: u64) -> Self {
        ByteBudget {
            queued: Mutex::new(Queued::default()),
            freed: Condvar::new(),
            limit,
        }
    }

    /// What a parcel counts for.
    pub(super) fn size_of(parcel: &Parcel) -> u64 {
        parcel
            .iter()
            .map(|m| match m {
                Fetched::Data(raw) => raw.len() as u64 + MESSAGE_BYTES,
                _ => MESSAGE_BYTES,
            })
            .sum()
    }

    fn lock(&self) -> MutexGuard<'_, Queued> {
        // Only counters are behind the lock; a panic elsewhere leaves them
        // usable.
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `bytes` more fit, then counts them as queued. A parcel
    /// larger than the whole budget goes when nothing else is queued.
    /// False when the writer has stopped taking parcels.
    pub(super) fn take(&self, bytes: u64) -> bool {
        let mut queued = self.lock();
        while !queued.closed && queued.bytes > 0 && queued.bytes + bytes > self.limit {
            queued = self
                .freed
                .wait(queued)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if queued.closed {
            return false;
        }
        queued.bytes += bytes;
        true
    }

    /// The writer has handled a parcel of `bytes`.
    pub(super) fn give_back(&self, bytes: u64) {
        let mut queued = self.lock();
        debug_assert!(queued.bytes >= bytes, "gave back more than was taken");
        queued.bytes = queued.bytes.saturating_sub(bytes);
        self.freed.notify_all();
    }

    /// The writer takes no more parcels (it finished or panicked): a dealer
    /// waiting for room stops waiting.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.freed.notify_all();
    }
}

/// Closes a budget when dropped, so a writer that panics still releases a
/// dealer waiting on it.
#[derive(Debug)]
pub(super) struct CloseOnDrop<'a>(pub(super) &'a ByteBudget);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn parcels_count_their_data_and_each_message() {
        let parcel = vec![
            Fetched::Begin(0),
            Fetched::Data(vec![0; 1000]),
            Fetched::End,
        ];
        assert_eq!(ByteBudget::size_of(&parcel), 1000 + 3 * MESSAGE_BYTES);
    }

    #[test]
    fn a_full_budget_waits_for_room_and_an_oversized_parcel_goes_alone() {
        let budget = Arc::new(ByteBudget::new(100));
        assert!(budget.take(60));
        assert!(budget.take(40));
        let waiting = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || budget.take(1))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiting.is_finished(), "the budget is full");
        assert_eq!(budget.lock().bytes, 100, "nothing more was counted");
        budget.give_back(60);
        assert!(waiting.join().unwrap());
        budget.give_back(41);
        // Larger than the whole budget: taken when nothing else is queued.
        assert!(budget.take(1000));
        budget.give_back(1000);
        assert_eq!(budget.lock().bytes, 0);
    }

    #[test]
    fn a_closed_budget_releases_the_dealer() {
        let budget = Arc::new(ByteBudget::new(10));
        assert!(budget.take(10));
        let waiting = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || budget.take(5))
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(CloseOnDrop(&budget));
        assert!(!waiting.join().unwrap(), "the writer is gone");
        assert!(!budget.take(1));
    }
}
