//! MOVE NODEDATA: a node's stored data from one storage pool to another.
//!
//! Each chunk the node's versions and archive copies use that has a copy
//! in the source pool gets one in the target pool (read whole, verified,
//! appended and fsynced before it is indexed: the durability order of an
//! upload). Only then is the source pool's copy removed, and only where no
//! other node's data uses the chunk and no open session was told it is
//! there: a chunk shared with another node stays in the source pool too, as
//! it would in TSM's deduplicated pools. The source's dead bytes come back
//! at the next expiration's compaction.
//!
//! A move interrupted at any point leaves every chunk with at least one
//! indexed, whole copy; run again, it copies only what is missing.

use std::collections::HashSet;
use std::time::Instant;

use tandem_proto::ChunkId;

use super::Repository;
use crate::error::ServerError;
use crate::model::{ChunkLocation, Node};
use crate::storage::VerifiedChunk;

/// Chunks looked up, read and appended together.
const MOVE_BATCH: usize = 512;

/// What a move did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MoveReport {
    /// The node's distinct chunks with a copy in the source pool.
    pub chunks: u64,
    /// Copied to the target pool.
    pub copied: u64,
    /// Their stored bytes.
    pub copied_bytes: u64,
    /// Already in the target pool (deduplicated there, or an earlier move).
    pub already: u64,
    /// Source copies removed.
    pub removed: u64,
    /// Source copies kept because another node's data, or an open session,
    /// uses the chunk.
    pub shared: u64,
    /// Chunks with no whole copy to read: left where they are (an audit
    /// with --fix can repair them), by id.
    pub damaged: Vec<ChunkId>,
    /// How long it took.
    pub elapsed_secs: f64,
}

impl Repository {
    /// Moves node `node`'s data from pool `from` to pool `to` (see the
    /// module). Runs while no expiration does: compaction of either pool
    /// and the sweep wait for it.
    ///
    /// # Errors
    /// The same pool twice; container and catalog errors (what was copied
    /// and indexed before stays, and a second run goes on from there).
    pub fn move_node_data(
        &self,
        node: &Node,
        from: u32,
        to: u32,
    ) -> Result<MoveReport, ServerError> {
        if from == to {
            return Err(ServerError::InvalidArgument(format!(
                "the source and target pool are both {}; name two different pools",
                self.pools.name_of(from)
            )));
        }
        let target = self.pools.get(to)?;
        self.pools.get(from)?;
        let _no_expiration = self.expire_lock.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let mut report = MoveReport::default();
        let mut in_source = Vec::new();
        for batch in self.catalog.node_chunk_ids(node.id)?.chunks(MOVE_BATCH) {
            let sources = self.catalog.pool_chunk_locations(from, batch)?;
            let targets = self.catalog.pool_chunk_locations(to, batch)?;
            let mut wanted: Vec<(ChunkId, ChunkLocation)> = Vec::new();
            for ((id, source), target) in batch.iter().zip(sources).zip(targets) {
                let Some(source) = source else { continue };
                report.chunks += 1;
                in_source.push(*id);
                if target.is_some() {
                    report.already += 1;
                } else {
                    wanted.push((*id, source));
                }
            }
            let locations: Vec<ChunkLocation> = wanted.iter().map(|(_, at)| *at).collect();
            self.pools.prefetch(&locations, true);
            let mut whole: Vec<VerifiedChunk> = Vec::with_capacity(wanted.len());
            for (id, at) in wanted {
                match self.any_whole_copy(id, at)? {
                    Some(chunk) => whole.push(chunk),
                    None => report.damaged.push(id),
                }
            }
            if whole.is_empty() {
                continue;
            }
            let written = target.append(&whole)?;
            report.copied += self.catalog.add_pool_copies(&written)?;
            report.copied_bytes += written
                .iter()
                .map(|(_, at)| u64::from(at.stored_len))
                .sum::<u64>();
        }
        let damaged: HashSet<ChunkId> = report.damaged.iter().copied().collect();
        // Under the pin lock, as the sweep decides: a backup told a chunk is
        // in the source pool keeps it there until its session ends.
        let pins = self.pins.lock();
        let mut keep = self.catalog.chunks_used_by_other_nodes(node.id)?;
        keep.extend(pins.values().flatten().copied());
        let (kept, gone): (Vec<ChunkId>, Vec<ChunkId>) = in_source
            .into_iter()
            .filter(|id| !damaged.contains(id))
            .partition(|id| keep.contains(id));
        report.shared = kept.len() as u64;
        report.removed = self.catalog.drop_pool_copies(from, &gone)?;
        drop(pins);
        report.elapsed_secs = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// A whole copy of `id`: the one at `at` when it reads back and matches
    /// its id, else another pool's.
    fn any_whole_copy(
        &self,
        id: ChunkId,
        at: ChunkLocation,
    ) -> Result<Option<VerifiedChunk>, ServerError> {
        if let Some(chunk) = self.whole_copy(id, at) {
            return Ok(Some(chunk));
        }
        Ok(self
            .catalog
            .chunk_copies(&id)?
            .into_iter()
            .filter(|copy| *copy != at)
            .find_map(|copy| self.whole_copy(id, copy)))
    }
}
