//! Self-repair during a restore: the chunks of files that failed for their
//! data go to the server (`RepairChunks`), which checks its copies and
//! replaces damaged or missing ones from its replication partner; the files
//! are then fetched again. The server verifies everything it stores, so the
//! client only asks.

use std::collections::{BTreeSet, HashSet};

use tandem_proto::{ChunkId, pb};

use super::writer::DataFailure;
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
    /// The partner the copies came from, if any did.
    pub partner: String,
    /// The server's storage pools copies came from, if any did.
    pub pools: BTreeSet<String>,
    /// Why some could not be repaired.
    pub reason: String,
    /// The chunks whole on the server now: files failed only on these are
    /// worth fetching again.
    pub usable: HashSet<ChunkId>,
}

/// Of the files that failed (`failures`, sorted by job), those to fetch
/// again: every chunk they failed on is `usable` now. The others are
/// returned as they are, to be reported.
pub(super) fn split_retries(
    failures: Vec<DataFailure>,
    usable: &HashSet<ChunkId>,
) -> (Vec<usize>, Vec<DataFailure>) {
    let mut hopeless_jobs = HashSet::new();
    for failure in &failures {
        if !failure.chunk.is_some_and(|c| usable.contains(&c)) {
            hopeless_jobs.insert(failure.job);
        }
    }
    let mut retry = Vec::new();
    let mut hopeless = Vec::new();
    for failure in failures {
        if hopeless_jobs.contains(&failure.job) {
            hopeless.push(failure);
        } else if retry.last() != Some(&failure.job) {
            retry.push(failure.job);
        }
    }
    (retry, hopeless)
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
        summary.intact = summary.intact.saturating_add(reply.intact);
        summary.usable.extend(
            reply
                .usable
                .iter()
                .filter_map(|b| ChunkId::from_slice(b).ok()),
        );
        summary.repaired = summary.repaired.saturating_add(reply.repaired);
        summary.unrepaired = summary.unrepaired.saturating_add(reply.unrepaired);
        if summary.partner.is_empty() {
            summary.partner = reply.partner;
        }
        summary.pools.extend(reply.pools);
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

impl RepairSummary {
    /// Where the copies came from, for the restore's message: the server's
    /// other storage pools, its partner, or both.
    pub(super) fn sources(&self) -> String {
        let pools = (!self.pools.is_empty()).then(|| {
            let names: Vec<&str> = self.pools.iter().map(String::as_str).collect();
            format!("its storage pool(s) {}", names.join(", "))
        });
        let partner = (!self.partner.is_empty()).then(|| format!("server {}", self.partner));
        match (pools, partner) {
            (Some(pools), Some(partner)) => format!("{pools} and {partner}"),
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => "another copy".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(job: usize, chunk: Option<u8>) -> DataFailure {
        DataFailure {
            job,
            cause: "bad".into(),
            chunk: chunk.map(|n| ChunkId::of(&[n])),
            damaged: true,
        }
    }

    #[test]
    fn only_files_whose_failed_chunks_are_all_usable_are_fetched_again() {
        let usable: HashSet<ChunkId> = [ChunkId::of(&[1]), ChunkId::of(&[2])].into();
        let failures = vec![
            failure(0, Some(1)),
            failure(0, Some(2)),
            failure(3, Some(1)),
            failure(3, Some(9)),
            failure(5, None),
            failure(7, Some(2)),
        ];
        let (retry, hopeless) = split_retries(failures, &usable);
        assert_eq!(retry, vec![0, 7]);
        let jobs: Vec<usize> = hopeless.iter().map(|f| f.job).collect();
        assert_eq!(jobs, vec![3, 3, 5]);
    }
}
