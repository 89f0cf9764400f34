//! Reads that go on while a storage pool does not answer.
//!
//! TSM reads a file from a copy storage pool when the primary pool's volume
//! is unavailable. Here a chunk may have a copy in more than one pool (a
//! node that moved, two nodes in different pools backing up the same data,
//! a repair); when the bucket holding the copy a reader was pointed at does
//! not answer, another pool's copy serves, read back and checked against
//! the chunk's id first. Only an unavailable pool is passed over this way:
//! a damaged copy still fails its read, so the restore's self-repair and
//! the audits see the damage and deal with it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use tandem_proto::ChunkId;

use super::Repository;
use crate::error::{ServerError, StorageError};
use crate::model::ChunkLocation;

/// At most one activity-log record per unavailable pool in this interval;
/// a restore makes a read call per batch of files.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(60);

/// A chunk's stored bytes and the copy they came from.
#[derive(Debug)]
pub struct ServedCopy {
    /// The stored (compressed) bytes.
    pub data: Vec<u8>,
    /// `(pool that did not answer, pool read instead)` when another pool's
    /// copy served; `None` when the copy asked for did.
    pub rerouted: Option<(u32, u32)>,
}

/// Chunks served from another pool, by `(unavailable pool, pool read)`.
pub type Reroutes = BTreeMap<(u32, u32), u64>;

impl Repository {
    /// The stored bytes of `id`, which the catalog placed at `location`,
    /// for a reader that needs a whole copy from anywhere on this server (a
    /// restore, replication): the copy at `location`, or another pool's
    /// whole copy when `location`'s pool does not answer. A bucket that did
    /// not answer lately is not asked again first where another copy is
    /// whole.
    ///
    /// # Errors
    /// As [`Repository::read_at`]: a damaged copy, or an unavailable pool
    /// with no other whole copy.
    pub fn read_from_any_pool(
        &self,
        id: ChunkId,
        location: ChunkLocation,
    ) -> Result<ServedCopy, ServerError> {
        if self.pools.unanswering(location)
            && let Some(copy) = self.other_pool_copy(id, location.pool)?
        {
            return Ok(copy);
        }
        match self.read_at(id, location) {
            Ok(data) => Ok(ServedCopy {
                data,
                rerouted: None,
            }),
            Err(e @ ServerError::Storage(StorageError::PoolUnavailable { .. })) => {
                self.other_pool_copy(id, location.pool)?.ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    /// A whole copy of `id` in a pool other than `unavailable` that answers.
    fn other_pool_copy(
        &self,
        id: ChunkId,
        unavailable: u32,
    ) -> Result<Option<ServedCopy>, ServerError> {
        for at in self.catalog.chunk_copies(&id)? {
            if at.pool == unavailable || self.pools.unanswering(at) {
                continue;
            }
            // Damaged, or that pool does not answer either: the next one.
            if let Ok(Some(chunk)) = self.checked_copy(id, at) {
                return Ok(Some(ServedCopy {
                    data: chunk.data.to_vec(),
                    rerouted: Some((unavailable, at.pool)),
                }));
            }
        }
        Ok(None)
    }
}

/// When each unavailable pool was last reported, so a long restore during
/// an outage logs it once a minute rather than once per batch.
#[derive(Debug, Default)]
pub struct RerouteNotices {
    last: std::sync::Mutex<HashMap<u32, Instant>>,
}

impl RerouteNotices {
    /// Of `reroutes`, those whose unavailable pool is due a record at
    /// `now`; marks them reported.
    pub fn due(&self, reroutes: &Reroutes, now: Instant) -> Reroutes {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut due_pools = std::collections::BTreeSet::new();
        for &(down, _) in reroutes.keys() {
            let fresh = last
                .get(&down)
                .is_none_or(|at| now.duration_since(*at) >= NOTICE_INTERVAL);
            if fresh || due_pools.contains(&down) {
                due_pools.insert(down);
                last.insert(down, now);
            }
        }
        reroutes
            .iter()
            .filter(|((down, _), _)| due_pools.contains(down))
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_pool_is_reported_once_per_interval_with_every_pool_read_instead() {
        let notices = RerouteNotices::default();
        let start = Instant::now();
        let batch: Reroutes = [((0, 1), 10), ((0, 2), 3), ((5, 1), 1)].into();
        assert_eq!(notices.due(&batch, start), batch, "first time: all");
        let again = notices.due(&batch, start + Duration::from_secs(10));
        assert!(again.is_empty(), "within the interval: none, {again:?}");
        let other: Reroutes = [((0, 1), 4), ((7, 1), 2)].into();
        assert_eq!(
            notices.due(&other, start + Duration::from_secs(20)),
            [((7, 1), 2)].into(),
            "a newly unavailable pool is reported at once"
        );
        assert_eq!(
            notices.due(&other, start + NOTICE_INTERVAL),
            [((0, 1), 4)].into(),
            "pool 0 again after the interval"
        );
    }
}
