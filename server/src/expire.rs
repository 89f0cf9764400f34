//! Expiration and reclamation (TSM EXPIRE INVENTORY + space reclamation).
//!
//! 1. Delete the versions retention policy lets go ([`crate::catalog::Catalog::expired_versions`])
//!    and the archive copies past their expiry ([`crate::catalog::Catalog::expired_archives`]).
//! 2. Sweep: remove from the index every chunk no version references and no
//!    open session or commit under way has pinned ([`crate::pins`]).
//! 3. Reclaim: start a new container, then for every other container remove it
//!    if nothing live is left, or copy its live chunks out when less than half
//!    of it is live (append + fsync, re-point the index, unlink the old file).
//!
//! Every step is crash-safe: deleted rows are simply gone; copied chunks are
//! indexed only after they are fsynced, so a crash mid-copy leaves unindexed
//! bytes that start-up cuts off; a container whose chunks were re-pointed but
//! that was not yet unlinked is emptied and removed at start-up.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use tandem_proto::ChunkId;

use crate::catalog::{DamagedChunk, ExpiringVersion, ReleasedSpace};
use crate::error::{ServerError, StorageError};
use crate::model::ChunkLocation;
use crate::repository::Repository;
use crate::storage::{ChunkStore, HEADER_BYTES, VerifiedChunk, verify_chunk};

/// Names a preview lists at most, in bytes: its answer stays well under
/// the 64 MiB message cap however long the paths.
const PREVIEW_LIST_BYTES: usize = 32 * 1024 * 1024;

/// Bytes copied per append during compaction.
const COPY_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// The numbers of the sessions open now. Pins of any other session are
/// left over from one that ended without saying so, and are dropped.
pub type OpenSessions<'a> = &'a dyn Fn() -> HashSet<u64>;

/// What an expiration run did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExpireReport {
    /// Versions deleted.
    pub versions_expired: u64,
    /// Archive copies deleted.
    pub archives_expired: u64,
    /// Chunks removed from the index.
    pub chunks_freed: u64,
    /// Containers compacted or removed.
    pub containers_compacted: u64,
    /// Container bytes given back to the file system.
    pub bytes_reclaimed: u64,
    /// Wall time.
    pub elapsed_secs: f64,
}

/// Runs expiration as of `now_ns`, then reclaims space. One run at a time.
///
/// # Errors
/// Catalog and storage errors; what was done before the error stays done.
pub fn expire_inventory(
    repo: &Repository,
    open_sessions: OpenSessions<'_>,
    now_ns: i64,
) -> Result<ExpireReport, ServerError> {
    let started = Instant::now();
    let _one_at_a_time = repo.expire_lock.lock().unwrap_or_else(|e| e.into_inner());
    let expired = repo.catalog.expired_versions(now_ns)?;
    let versions_expired = repo.catalog.delete_versions(&expired)?;
    let archives = repo.catalog.expired_archives(now_ns)?;
    let archives_expired = repo.catalog.delete_archives(&archives)?;
    let mut report = reclaim_locked(repo, open_sessions)?;
    report.versions_expired = versions_expired;
    report.archives_expired = archives_expired;
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// What an expiration as of some time would delete, found without changing
/// anything (TSM `EXPIRE INVENTORY ... PREVIEW`-like).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExpirePreview {
    /// Versions that would be deleted.
    pub versions: u64,
    /// Archive copies that would be deleted.
    pub archives: u64,
    /// What deleting them would release in the index. Container files
    /// shrink only when reclamation compacts them (under half live).
    pub released: ReleasedSpace,
    /// The oldest stored of them, at most the limit asked for, in node,
    /// filespace and path order.
    pub listed: Vec<ExpiringVersion>,
}

/// Finds what [`expire_inventory`] at `now_ns` would delete, listing at most
/// `list_limit` versions; reads only.
///
/// # Errors
/// Catalog errors.
pub fn preview_expiration(
    repo: &Repository,
    now_ns: i64,
    list_limit: usize,
) -> Result<ExpirePreview, ServerError> {
    // Row ids grow as versions are stored: the first are the oldest.
    let mut ids: Vec<i64> = repo
        .catalog
        .expired_versions(now_ns)?
        .into_iter()
        .map(|v| v.row)
        .collect();
    ids.sort_unstable();
    let pinned: HashSet<ChunkId> = repo.pins.lock().all();
    let id_set: HashSet<i64> = ids.iter().copied().collect();
    let archives: HashSet<i64> = repo.catalog.expired_archives(now_ns)?.into_iter().collect();
    let released = repo
        .catalog
        .space_released_by(&id_set, &archives, &pinned, HEADER_BYTES)?;
    Ok(ExpirePreview {
        versions: ids.len() as u64,
        archives: archives.len() as u64,
        released,
        listed: repo
            .catalog
            .describe_versions(&ids, list_limit, PREVIEW_LIST_BYTES)?,
    })
}

/// Sweeps and compacts without deleting versions (after a filespace deletion).
///
/// # Errors
/// Catalog and storage errors.
pub fn reclaim(
    repo: &Repository,
    open_sessions: OpenSessions<'_>,
) -> Result<ExpireReport, ServerError> {
    let started = Instant::now();
    let _one_at_a_time = repo.expire_lock.lock().unwrap_or_else(|e| e.into_inner());
    let mut report = reclaim_locked(repo, open_sessions)?;
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

fn reclaim_locked(
    repo: &Repository,
    open_sessions: OpenSessions<'_>,
) -> Result<ExpireReport, ServerError> {
    let mut report = ExpireReport {
        chunks_freed: sweep(repo, open_sessions)?,
        ..ExpireReport::default()
    };
    let live: HashMap<u32, u64> = repo
        .catalog
        .container_live_bytes(HEADER_BYTES)?
        .into_iter()
        .collect();
    for (_, pool) in repo.pools.iter() {
        let store = &pool.store;
        let active = store.seal()?;
        for (number, size) in store.containers()? {
            // The open container, and any a backup opened since the seal (it
            // may have filled `active` meanwhile): their chunks may not be
            // indexed yet, so "no live bytes" says nothing about them.
            if number >= active {
                continue;
            }
            let live_bytes = live.get(&number).copied().unwrap_or(0);
            if live_bytes == 0 {
                store.remove_container(number)?;
            } else if live_bytes.saturating_mul(2) < size {
                if !compact(repo, store, number, live_bytes)? {
                    continue;
                }
            } else {
                continue;
            }
            report.containers_compacted += 1;
            report.bytes_reclaimed += size.saturating_sub(live_bytes);
        }
    }
    Ok(report)
}

/// Removes unreferenced, unpinned chunks from the index. The catalog is
/// read from a snapshot without the pin lock (see [`crate::pins`] for why
/// that keeps every chunk a session relies on); the lock is held to open
/// the snapshot and to delete.
fn sweep(repo: &Repository, open_sessions: OpenSessions<'_>) -> Result<u64, ServerError> {
    let mut begun = begin_sweep(repo, open_sessions)?;
    let unreferenced = begun.read();
    finish_sweep(repo, begun, unreferenced)
}

/// A sweep between its two holds of the pin lock.
struct SweepBegun<'a> {
    /// `None` once read: its read transaction is closed before the sweep
    /// deletes, so nothing that waits for old snapshots (a checkpoint)
    /// waits for it while the sweep waits for the writer.
    snapshot: Option<crate::catalog::SweepSnapshot>,
    pinned_at_start: HashSet<ChunkId>,
    recording: Recording<'a>,
}

impl SweepBegun<'_> {
    /// The chunks unreferenced in the snapshot, which is then closed.
    fn read(&mut self) -> Result<Vec<ChunkId>, crate::error::CatalogError> {
        match self.snapshot.take() {
            Some(snapshot) => snapshot.unreferenced_chunks(),
            None => Ok(Vec::new()),
        }
    }
}

/// Stops the pin table's recording if the sweep ends without
/// [`finish_sweep`] (a panic), or every later pin would be kept for ever.
struct Recording<'a> {
    pins: &'a crate::pins::ChunkPins,
    ended: bool,
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.pins.lock().end_sweep();
        }
    }
}

/// Under the pin lock: drops the pins of sessions that are gone, opens the
/// snapshot and starts recording pins.
fn begin_sweep<'a>(
    repo: &'a Repository,
    open_sessions: OpenSessions<'_>,
) -> Result<SweepBegun<'a>, ServerError> {
    let mut pins = repo.pins.lock();
    // Asked under the pin lock: a session that opens later pins after the
    // sweep began, and what it pins is recorded.
    let open = open_sessions();
    pins.keep_sessions(&open);
    let snapshot = repo.catalog.sweep_snapshot()?;
    Ok(SweepBegun {
        snapshot: Some(snapshot),
        pinned_at_start: pins.begin_sweep(),
        recording: Recording {
            pins: &repo.pins,
            ended: false,
        },
    })
}

/// Under the pin lock: deletes what was unreferenced in the snapshot and
/// pinned neither when the sweep began nor since (whatever is pinned now
/// was pinned then or since), and stops the recording.
fn finish_sweep(
    repo: &Repository,
    mut begun: SweepBegun<'_>,
    unreferenced: Result<Vec<ChunkId>, crate::error::CatalogError>,
) -> Result<u64, ServerError> {
    let pins = &mut repo.pins.lock();
    let pinned_since = pins.end_sweep();
    begun.recording.ended = true;
    let dead: Vec<ChunkId> = unreferenced?
        .into_iter()
        .filter(|id| !begun.pinned_at_start.contains(id) && !pinned_since.contains(id))
        .collect();
    Ok(repo.catalog.delete_chunks(&dead)?)
}

/// Copies a container's live chunks to its pool's active container and
/// removes it; each copy is checked against its id first, so a bad read
/// never takes the place of a good chunk. A container some live chunk of
/// which could not be copied (its record's header or data damaged, or the
/// read wrong) is kept, and those chunks are recorded as damaged (`query
/// damaged`) for an audit or a repair from another pool or the partner:
/// removing it would lose them without a word. Returns whether the
/// container was removed. `live_bytes` is what the index placed in it
/// before (headers included): only when fewer were copied is the index
/// searched for what is left, a pass over all of it.
fn compact(
    repo: &Repository,
    store: &ChunkStore,
    number: u32,
    live_bytes: u64,
) -> Result<bool, ServerError> {
    // The container's own headers say what it holds; a record is live when
    // the index still points its pool's copy at that very record. Headers
    // that do not add up leave the container as it is (its chunks are read
    // by their index entries, not by walking it; an audit finds any that
    // are damaged), and the run goes on with the next container.
    let records = match store.records(number) {
        Ok(records) => records,
        Err(e @ StorageError::Damaged { .. }) => {
            tracing::warn!(
                container = number,
                cause = %e,
                "compaction left a container whose record headers are damaged as it is; `audit pool` reads and checks its chunks"
            );
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let ids: Vec<ChunkId> = records.iter().map(|(id, _)| *id).collect();
    let indexed = repo.catalog.pool_chunk_locations(store.pool(), &ids)?;
    let chunks = records
        .into_iter()
        .zip(indexed)
        .filter(|((_, at), index)| *index == Some(*at))
        .map(|(record, _)| record);
    let mut batch: Vec<VerifiedChunk> = Vec::new();
    let mut from: Vec<ChunkLocation> = Vec::new();
    let mut batch_bytes = 0usize;
    let flush = |batch: &mut Vec<VerifiedChunk>,
                 from: &mut Vec<ChunkLocation>|
     -> Result<(), ServerError> {
        if batch.is_empty() {
            return Ok(());
        }
        let moved: Vec<_> = store
            .append(batch)?
            .into_iter()
            .zip(from.iter())
            .map(|((id, to), at)| (id, *at, to))
            .collect();
        repo.catalog.relocate_chunks(&moved)?;
        batch.clear();
        from.clear();
        Ok(())
    };
    let mut unreadable: HashMap<ChunkId, String> = HashMap::new();
    let mut copied_bytes = 0u64;
    for (id, loc) in chunks {
        // Only what the bytes themselves show is damage; a read that failed
        // (a bucket that did not answer, an I/O error) ends this run as
        // before, with the container whole and nothing marked.
        let chunk = store
            .read(loc)
            .and_then(|data| verify_chunk(id, data.into(), u64::from(loc.raw_len)));
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(
                e @ (StorageError::ChunkMismatch { .. }
                | StorageError::ChunkMalformed { .. }
                | StorageError::Damaged { .. }),
            ) => {
                unreadable.insert(id, e.to_string());
                continue;
            }
            Err(e) => {
                flush(&mut batch, &mut from)?;
                return Err(e.into());
            }
        };
        batch_bytes += chunk.data.len();
        copied_bytes += u64::from(loc.stored_len) + HEADER_BYTES;
        batch.push(chunk);
        from.push(loc);
        if batch_bytes >= COPY_BATCH_BYTES {
            flush(&mut batch, &mut from)?;
            batch_bytes = 0;
        }
    }
    flush(&mut batch, &mut from)?;
    if unreadable.is_empty() && copied_bytes >= live_bytes {
        store.remove_container(number)?;
        return Ok(true);
    }
    // Whatever the index still places in this container was not copied (or
    // a repair moved it elsewhere meanwhile, and it is not here any more).
    let pool = store.pool();
    let left = repo
        .catalog
        .chunks_in_containers(number, number.saturating_add(1), |_, at| at.pool == pool)?;
    if left.is_empty() {
        store.remove_container(number)?;
        return Ok(true);
    }
    let damaged: Vec<DamagedChunk> = left
        .iter()
        .map(|(id, at)| {
            let reason = unreadable.remove(id).unwrap_or_else(|| {
                format!(
                    "no whole record of it at offset {} of container {number} (its header is damaged): compaction kept the container",
                    at.offset
                )
            });
            DamagedChunk::now(*id, number, 0, reason, &[])
        })
        .collect();
    tracing::warn!(
        container = number,
        pool,
        chunks = damaged.len(),
        "compaction kept a container: live chunks in it could not be copied; they are recorded as damaged (query damaged)"
    );
    repo.catalog.mark_damaged(&damaged)?;
    Ok(false)
}

/// One line for the activity log.
pub fn describe(report: &ExpireReport, trigger: &str) -> String {
    format!(
        "{trigger} expiration: {} version(s) and {} archive copy(ies) expired, {} chunk(s) freed, {} container(s) compacted, {} bytes reclaimed in {:.2} s",
        report.versions_expired,
        report.archives_expired,
        report.chunks_freed,
        report.containers_compacted,
        report.bytes_reclaimed,
        report.elapsed_secs
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use prost::bytes::Bytes;
    use tandem_proto::ChunkId;

    use super::*;
    use crate::model::{NewVersion, ObjectKind};

    use crate::repository::open_for_test as repository;

    fn chunk(text: &str) -> VerifiedChunk {
        VerifiedChunk {
            id: ChunkId::of(text.as_bytes()),
            data: Bytes::from(zstd::bulk::compress(text.as_bytes(), 1).unwrap()),
            raw_len: text.len() as u32,
        }
    }

    fn file(path: &str, chunk: ChunkId) -> NewVersion {
        NewVersion {
            attrs: crate::catalog::tests::attrs(path, ObjectKind::File),
            chunks: vec![chunk],
        }
    }

    fn indexed(repo: &Repository) -> HashSet<ChunkId> {
        repo.catalog.all_chunk_ids().unwrap().into_iter().collect()
    }

    /// The interleavings the sweep must survive without the pin lock while
    /// it reads: a chunk pinned before it began, or after, and committed by
    /// a session that then ended or was pushed out, is kept; so is one a
    /// commit names without having asked; one nobody pinned or references
    /// is freed.
    #[test]
    fn chunks_committed_while_a_sweep_reads_are_kept_and_only_unused_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        let node = repo
            .catalog
            .register_node("N1", "hash", 1)
            .unwrap()
            .unwrap()
            .id;
        let [early, late, unasked, unused] = ["early", "late", "unasked", "unused"].map(chunk);
        // Uploaded in a session that ended without committing: nothing
        // references or pins them now.
        let all = vec![early.clone(), late.clone(), unasked.clone(), unused.clone()];
        repo.store_chunks(1, node, all).unwrap();
        repo.pins.release(1);
        // Session 2 learns `early` is stored before the sweep begins, and is
        // then pushed out (not among the open sessions the sweep is told of).
        assert!(
            repo.missing_and_pin(2, node, &[early.id])
                .unwrap()
                .is_empty()
        );
        let early_commit = repo.pin_for_commit([&early.id]);

        let begun = begin_sweep(&repo, &|| HashSet::from([3])).unwrap();
        // After the snapshot, before the sweep reads it: session 3 learns
        // `late` is stored; commits land (session 3's also names `unasked`,
        // which it never asked about), and the sessions end.
        assert!(
            repo.missing_and_pin(3, node, &[late.id])
                .unwrap()
                .is_empty()
        );
        repo.catalog
            .commit_objects(node, "/", &[file("/early", early.id)], &[], 10)
            .unwrap();
        drop(early_commit);
        {
            let _pinned = repo.pin_for_commit([&late.id, &unasked.id]);
            let both = [file("/late", late.id), file("/unasked", unasked.id)];
            repo.catalog
                .commit_objects(node, "/", &both, &[], 10)
                .unwrap();
        }
        repo.pins.release(3);
        let mut begun = begun;
        let unreferenced = begun.read();
        assert_eq!(finish_sweep(&repo, begun, unreferenced).unwrap(), 1);
        assert_eq!(
            indexed(&repo),
            HashSet::from([early.id, late.id, unasked.id])
        );

        // The next sweep finds them referenced, and nothing is pinned or
        // recorded any more.
        assert_eq!(sweep(&repo, &HashSet::new).unwrap(), 0);
        assert!(repo.pins.lock().all().is_empty());
        assert!(repo.pins.lock().end_sweep().is_empty());
    }

    /// A sweep that stops between its two halves leaves no recording on.
    #[test]
    fn a_sweep_that_stops_half_way_stops_recording() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path());
        drop(begin_sweep(&repo, &HashSet::new).unwrap());
        repo.pins.lock().pin(9, [chunk("x").id]);
        assert!(repo.pins.lock().end_sweep().is_empty());
    }
}
