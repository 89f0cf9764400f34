//! Self-repair during a restore: the chunks of files that failed for their
//! data go to the server (`RepairChunks`), which checks its copies and
//! replaces damaged or missing ones from its replication partner; the files
//! are then fetched again. The server verifies everything it stores, so the
//! client only asks.

use std::collections::BTreeSet;

use tandem_proto::{ChunkId, pb};

use crate::logon::session::Session;

/// Chunk ids sent for repair in one restore round at most: beyond them the
/// files are reported as damaged without a repair.
const MAX_REPAIR_IDS_PER_ROUND: usize = 16 * tandem_proto::MAX_REPAIR_CHUNK_IDS;

/// What the server did with the chunks it was asked to repair.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct RepairSummary {
    /// Whole on the server (the failure was elsewhere, or passed).
    pub intact: u64,
    /// Replaced with verified copies.
    pub repaired: u64,
    /// Still damaged or missing.
    pub unrepaired: u64,
    /// The partner the copies came from.
    pub partner: String,
    /// Why some could not be repaired.
    pub reason: String,
}

impl RepairSummary {
    /// Whether fetching the files again can succeed for some of them:
    /// something was repaired, or some chunks are whole on the server (the
    /// failure was on the way).
    pub(super) fn worth_retrying(&self) -> bool {
        self.repaired > 0 || self.intact > 0
    }
}

/// Asks the server to check and repair `chunks`, in calls of at most
/// [`tandem_proto::MAX_REPAIR_CHUNK_IDS`] ids.
///
/// # Errors
/// The server's refusal (an older server answers "unimplemented").
pub(super) async fn ask(
    session: &Session,
    chunks: &BTreeSet<ChunkId>,
) -> Result<RepairSummary, tonic::Status> {
    let ids: Vec<Vec<u8>> = chunks
        .iter()
        .take(MAX_REPAIR_IDS_PER_ROUND)
        .map(|id| id.as_slice().to_vec())
        .collect();
    let mut summary = RepairSummary::default();
    for window in ids.chunks(tandem_proto::MAX_REPAIR_CHUNK_IDS) {
        let reply = session
            .client()
            .repair_chunks(session.request(pb::RepairChunksRequest {
                chunk_ids: window.to_vec(),
            }))
            .await?
            .into_inner();
        summary.intact += reply.intact;
        summary.repaired += reply.repaired;
        summary.unrepaired += reply.unrepaired;
        if summary.partner.is_empty() {
            summary.partner = reply.partner;
        }
        if summary.reason.is_empty() {
            summary.reason = reply.reason;
        }
    }
    let left_out = chunks.len().saturating_sub(ids.len()) as u64;
    if left_out > 0 {
        summary.unrepaired += left_out;
        if summary.reason.is_empty() {
            summary.reason = format!("{left_out} chunk(s) beyond this restore's repair limit");
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_needs_a_repair_or_every_chunk_whole() {
        let whole = RepairSummary {
            intact: 2,
            ..RepairSummary::default()
        };
        assert!(whole.worth_retrying());
        let fixed = RepairSummary {
            repaired: 1,
            unrepaired: 1,
            ..RepairSummary::default()
        };
        assert!(fixed.worth_retrying());
        let hopeless = RepairSummary {
            unrepaired: 2,
            reason: "no replication server".into(),
            ..RepairSummary::default()
        };
        assert!(!hopeless.worth_retrying());
        assert!(!RepairSummary::default().worth_retrying());
    }
}
