//! One replication run: plan, missing chunks, state changes, objects, deletions.

use crate::plan::{ReplicationRule, plan};
use crate::{Source, Target};

/// Chunk ids per "which are missing" question.
const FIND_BATCH: usize = 4096;
/// Chunks read from the source at a time (at most 4 MiB each).
const READ_BATCH: usize = 16;
/// Compressed bytes gathered before one upload to the target: one fsync and
/// one index transaction there per this many bytes, not per chunk.
const SEND_BYTES: usize = 16 * 1024 * 1024;
/// Versions per metadata transaction on the target.
const OBJECT_BATCH: usize = 500;

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Versions stored on the target.
    pub objects_sent: u64,
    /// Compressed chunk bytes sent.
    pub bytes_sent: u64,
    /// Chunks sent.
    pub chunks_sent: u64,
    /// Chunks the target already had (any node's data).
    pub chunks_skipped: u64,
    /// State changes applied.
    pub states_updated: u64,
    /// Versions deleted on the target.
    pub objects_deleted: u64,
}

/// A failed run, with which side failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Reading the source failed.
    #[error("source: {0}")]
    Source(Box<dyn std::error::Error + Send + Sync>),
    /// The target failed or could not be reached.
    #[error("target: {0}")]
    Target(Box<dyn std::error::Error + Send + Sync>),
}

fn src<E: std::error::Error + Send + Sync + 'static>(e: E) -> ReplicationError {
    ReplicationError::Source(Box::new(e))
}

fn dst<E: std::error::Error + Send + Sync + 'static>(e: E) -> ReplicationError {
    ReplicationError::Target(Box::new(e))
}

/// Replicates one node from `source` to `target` under `rule`.
///
/// # Errors
/// The first failure of either side; what the target committed stays.
pub async fn replicate<S, T>(
    source: &S,
    target: &T,
    rule: ReplicationRule,
) -> Result<RunReport, ReplicationError>
where
    S: Source,
    T: Target<S::Object>,
{
    let mut report = RunReport::default();
    let inventory = source.inventory().await.map_err(src)?;
    let held = target.inventory().await.map_err(dst)?;
    let plan = plan(&inventory, &held, rule);
    drop(inventory);

    for batch in plan.chunks.chunks(FIND_BATCH) {
        let missing = target.missing_chunks(batch).await.map_err(dst)?;
        report.chunks_skipped += (batch.len() - missing.len()) as u64;
        let mut pending = Vec::new();
        let mut pending_bytes = 0usize;
        for group in missing.chunks(READ_BATCH) {
            for chunk in source.read_chunks(group).await.map_err(src)? {
                pending_bytes += chunk.data.len();
                pending.push(chunk);
            }
            if pending_bytes >= SEND_BYTES {
                report.bytes_sent += pending_bytes as u64;
                report.chunks_sent += pending.len() as u64;
                target
                    .put_chunks(std::mem::take(&mut pending))
                    .await
                    .map_err(dst)?;
                pending_bytes = 0;
            }
        }
        if !pending.is_empty() {
            report.bytes_sent += pending_bytes as u64;
            report.chunks_sent += pending.len() as u64;
            target.put_chunks(pending).await.map_err(dst)?;
        }
    }
    if !plan.update.is_empty() {
        report.states_updated = target.update_states(&plan.update).await.map_err(dst)?;
    }
    for batch in plan.send.chunks(OBJECT_BATCH) {
        let objects = source.objects(batch).await.map_err(src)?;
        report.objects_sent += target.put_objects(objects).await.map_err(dst)?;
    }
    if !plan.delete.is_empty() {
        report.objects_deleted = target.delete_objects(&plan.delete).await.map_err(dst)?;
    }
    Ok(report)
}
