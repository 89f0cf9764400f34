//! MOVE NODEDATA: a node's stored data from one storage pool to another.
//!
//! Each chunk the node's versions and archive copies use that has a copy
//! in the source pool gets a whole copy in the target pool: one the target
//! already has is read and verified, and a missing or damaged one is
//! written from verified bytes (appended and fsynced before it is indexed:
//! the durability order of an upload). Only a source copy whose target
//! copy was proven whole in this run may go, and only where no other node
//! whose pool is the source uses the chunk (that node's deduplication
//! domain keeps it, as in TSM's deduplicated pools) and no open session was
//! told it is there. The source's dead bytes come back when expiration
//! compacts its containers.
//!
//! A move interrupted at any point leaves every chunk with at least one
//! indexed, whole copy; run again, it writes only what is still missing.

use std::collections::HashSet;
use std::time::Instant;

use tandem_proto::ChunkId;

use super::Repository;
use crate::error::ServerError;
use crate::model::{ChunkLocation, Node};
use crate::storage::VerifiedChunk;

/// Chunks looked up together.
const LOOKUP_BATCH: usize = 512;
/// Stored bytes read before they are appended to the target: a batch of
/// large chunks must not hold gigabytes.
const COPY_BATCH_BYTES: usize = 64 << 20;

/// What a move did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MoveReport {
    /// The node's distinct chunks with a copy in the source pool.
    pub chunks: u64,
    /// Copies written to the target pool (missing or damaged there).
    pub copied: u64,
    /// Their stored bytes.
    pub copied_bytes: u64,
    /// Already whole in the target pool (deduplicated there, or an earlier
    /// move).
    pub already: u64,
    /// Source copies removed.
    pub removed: u64,
    /// Source copies kept because a node whose pool is the source, or an
    /// open session, uses the chunk.
    pub shared: u64,
    /// Chunks with no whole copy to read: left where they are (an audit
    /// with --fix can repair them), by id.
    pub damaged: Vec<ChunkId>,
    /// How long it took.
    pub elapsed_secs: f64,
}

/// Why a move could not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// Another move or an expiration holds the store's maintenance lock.
    #[error("an expiration or another move nodedata is running; run this one when it has ended")]
    Busy,
    /// The move failed after `so_far` (what was written stays indexed).
    #[error("{cause} (before it stopped: {} copied, {} removed; run the move again to go on)", .so_far.copied, .so_far.removed)]
    Stopped {
        /// The cause.
        cause: ServerError,
        /// What it had done.
        so_far: Box<MoveReport>,
    },
}

impl From<MoveError> for ServerError {
    fn from(e: MoveError) -> Self {
        ServerError::FailedPrecondition(e.to_string())
    }
}

impl Repository {
    /// Moves node `node`'s data from pool `from` to pool `to` (see the
    /// module). Expiration (compaction of either pool and the sweep) waits
    /// while it runs; a second move is refused.
    ///
    /// # Errors
    /// [`MoveError::Busy`]; [`MoveError::Stopped`] for an unknown pool, a
    /// pool that does not answer, container and catalog errors.
    pub fn move_node_data(&self, node: &Node, from: u32, to: u32) -> Result<MoveReport, MoveError> {
        let _no_expiration = match self.expire_lock.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(MoveError::Busy),
        };
        let started = Instant::now();
        let mut report = MoveReport::default();
        let outcome = self.move_chunks(node, from, to, &mut report);
        report.elapsed_secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => Ok(report),
            Err(cause) => Err(MoveError::Stopped {
                cause,
                so_far: Box::new(report),
            }),
        }
    }

    /// The copying and the removal of [`Self::move_node_data`], counted in
    /// `report` as they go.
    fn move_chunks(
        &self,
        node: &Node,
        from: u32,
        to: u32,
        report: &mut MoveReport,
    ) -> Result<(), ServerError> {
        let target = self.pools.get(to)?;
        self.pools.get(from)?;
        // Source copies whose target copy is proven whole in this run.
        let mut movable = Vec::new();
        let mut pending: Vec<VerifiedChunk> = Vec::new();
        let mut pending_bytes = 0usize;
        let write = |pending: &mut Vec<VerifiedChunk>,
                     report: &mut MoveReport,
                     movable: &mut Vec<ChunkId>|
         -> Result<(), ServerError> {
            if pending.is_empty() {
                return Ok(());
            }
            let written = target.append(pending)?;
            report.copied += self.catalog.put_pool_copies(&written)?;
            report.copied_bytes += written
                .iter()
                .map(|(_, at)| u64::from(at.stored_len))
                .sum::<u64>();
            movable.extend(written.iter().map(|(id, _)| *id));
            pending.clear();
            Ok(())
        };
        for batch in self.catalog.node_chunk_ids(node.id)?.chunks(LOOKUP_BATCH) {
            let sources = self.catalog.pool_chunk_locations(from, batch)?;
            let targets = self.catalog.pool_chunk_locations(to, batch)?;
            let mut present = Vec::new();
            for ((id, source), target) in batch.iter().zip(sources).zip(targets) {
                if let Some(source) = source {
                    present.push((*id, source, target));
                }
            }
            let ahead: Vec<ChunkLocation> = present
                .iter()
                .map(|(_, source, target)| target.unwrap_or(*source))
                .collect();
            self.pools.prefetch(&ahead, true);
            for (id, source, target) in present {
                report.chunks += 1;
                if let Some(target) = target
                    && self.checked_copy(id, target)?.is_some()
                {
                    report.already += 1;
                    movable.push(id);
                    continue;
                }
                match self.first_whole_copy(id, source)? {
                    Some(chunk) => {
                        pending_bytes += chunk.data.len();
                        pending.push(chunk);
                    }
                    None => report.damaged.push(id),
                }
                if pending_bytes >= COPY_BATCH_BYTES {
                    write(&mut pending, report, &mut movable)?;
                    pending_bytes = 0;
                }
            }
        }
        write(&mut pending, report, &mut movable)?;
        // Which copies stay is decided outside the pin lock: a backup that
        // commits meanwhile, using a copy that then goes, reads the target's
        // whole copy. The pins are asked last, so a session told a copy is
        // there keeps it.
        let candidates: HashSet<ChunkId> = movable.iter().copied().collect();
        let mut keep = self
            .catalog
            .chunks_used_in_pool_by_others(node.id, from, &candidates)?;
        keep.extend(
            self.pins
                .lock()
                .all()
                .into_iter()
                .filter(|id| candidates.contains(id)),
        );
        let (kept, gone): (Vec<ChunkId>, Vec<ChunkId>) =
            movable.into_iter().partition(|id| keep.contains(id));
        report.shared = kept.len() as u64;
        report.removed = self.catalog.drop_pool_copies(from, &gone)?;
        Ok(())
    }

    /// A whole copy of `id`: the one at `at`, else another pool's.
    ///
    /// # Errors
    /// A pool that does not answer (that says nothing about the data); catalog errors.
    fn first_whole_copy(
        &self,
        id: ChunkId,
        at: ChunkLocation,
    ) -> Result<Option<VerifiedChunk>, ServerError> {
        if let Some(chunk) = self.checked_copy(id, at)? {
            return Ok(Some(chunk));
        }
        for copy in self.catalog.chunk_copies(&id)? {
            if copy.pool != at.pool
                && let Some(chunk) = self.checked_copy(id, copy)?
            {
                return Ok(Some(chunk));
            }
        }
        Ok(None)
    }
}
