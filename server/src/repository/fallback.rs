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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use prost::bytes::Bytes;
use tandem_proto::ChunkId;

use super::Repository;
use crate::error::{ServerError, StorageError};
use crate::model::ChunkLocation;
use crate::storage::pools::Pools;

/// At most one activity-log record per unavailable pool in this interval;
/// a restore makes a read call per batch of files.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(60);

/// A chunk's stored bytes and the copy they came from.
#[derive(Debug)]
pub struct ServedCopy {
    /// The stored (compressed) bytes.
    pub data: Bytes,
    /// `(pool that did not answer, pool read instead)` when another pool's
    /// copy served; `None` when the copy asked for did.
    pub rerouted: Option<(u32, u32)>,
}

/// Chunks of an unavailable pool by `(that pool, pool read instead)`; the
/// second is `None` for chunks no other pool could serve.
pub type Reroutes = BTreeMap<(u32, Option<u32>), u64>;

/// What a read of chunks did while pools did not answer, one line per
/// unavailable pool; `whose` says whose chunks (`of node ALICE`).
pub fn describe_reroutes(pools: &Pools, whose: &str, reroutes: &Reroutes) -> Vec<String> {
    let mut by_pool: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for ((down, used), n) in reroutes {
        by_pool.entry(*down).or_default().push(match used {
            Some(used) => format!("{n} read from {}", pools.name_of(*used)),
            None => format!("{n} not read: no other pool holds a whole copy"),
        });
    }
    by_pool
        .into_iter()
        .map(|(down, what)| {
            format!(
                "storage pool {} did not answer; chunk(s) {whose} were read from other pools' whole copies where there are any ({})",
                pools.name_of(down),
                what.join(", ")
            )
        })
        .collect()
}

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
    /// with no other whole copy; catalog errors.
    pub fn read_from_any_pool(
        &self,
        id: ChunkId,
        location: ChunkLocation,
    ) -> Result<ServedCopy, ServerError> {
        // Asked before the bucket only while it is on hold; never twice.
        let looked_elsewhere = self.pools.unanswering(location);
        if looked_elsewhere && let Ok(Some(copy)) = self.other_pool_copy(id, location.pool) {
            return Ok(copy);
        }
        match self.read_at(id, location) {
            Ok(data) => Ok(ServedCopy {
                data: data.into(),
                rerouted: None,
            }),
            Err(e @ ServerError::Storage(StorageError::PoolUnavailable { .. }))
                if !looked_elsewhere =>
            {
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
            match self.checked_copy(id, at) {
                Ok(Some(chunk)) => {
                    return Ok(Some(ServedCopy {
                        data: chunk.data,
                        rerouted: Some((unavailable, at.pool)),
                    }));
                }
                Ok(None) => tracing::warn!(
                    "chunk {id}: the copy in storage pool {} is damaged (found while its copy in {} could not be read); `audit pool {} --fix` repairs it",
                    self.pools.name_of(at.pool),
                    self.pools.name_of(unavailable),
                    self.pools.name_of(at.pool),
                ),
                Err(_) => {}
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
    /// Splits `reroutes` into those whose unavailable pool is due a record
    /// at `now` (marked reported) and the rest.
    pub fn due(&self, reroutes: &Reroutes, now: Instant) -> (Reroutes, Reroutes) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pools: BTreeSet<u32> = reroutes.keys().map(|(down, _)| *down).collect();
        let mut due_pools = BTreeSet::new();
        for down in pools {
            let due = last
                .get(&down)
                .is_none_or(|at| now.duration_since(*at) >= NOTICE_INTERVAL);
            if due {
                due_pools.insert(down);
                last.insert(down, now);
            }
        }
        reroutes
            .iter()
            .map(|(k, v)| (*k, *v))
            .partition(|((down, _), _)| due_pools.contains(down))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_pool_is_reported_once_per_interval_with_every_pool_read_instead() {
        let notices = RerouteNotices::default();
        let start = Instant::now();
        let batch: Reroutes = [((0, Some(1)), 10), ((0, None), 3), ((5, Some(1)), 1)].into();
        assert_eq!(
            notices.due(&batch, start),
            (batch.clone(), Reroutes::new()),
            "first time: all"
        );
        let (due, rest) = notices.due(&batch, start + Duration::from_secs(10));
        assert!(due.is_empty(), "within the interval: none, {due:?}");
        assert_eq!(rest, batch, "the rest goes to the server's log only");
        let other: Reroutes = [((0, Some(1)), 4), ((7, Some(1)), 2)].into();
        assert_eq!(
            notices.due(&other, start + Duration::from_secs(20)),
            ([((7, Some(1)), 2)].into(), [((0, Some(1)), 4)].into()),
            "a newly unavailable pool is reported at once"
        );
        assert_eq!(
            notices.due(&other, start + NOTICE_INTERVAL),
            ([((0, Some(1)), 4)].into(), [((7, Some(1)), 2)].into()),
            "pool 0 again after the interval"
        );
    }
}
