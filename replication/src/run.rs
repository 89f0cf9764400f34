//! One replication run: plan, missing chunks, state changes, objects, deletions.

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

use crate::plan::{ReplicationRule, plan};
use crate::{ChunkId, Source, StoredChunk, Target};

/// Chunk ids per "which are missing" question.
const FIND_BATCH: usize = 4096;
/// Chunks read from the source at a time (at most 4 MiB each).
const READ_BATCH: usize = 16;
/// Compressed bytes gathered before one upload to the target: one fsync and
/// one index transaction there per this many bytes, not per chunk.
const SEND_BYTES: usize = 16 * 1024 * 1024;
/// Uploads under way at once. With one, the target sat idle while each upload
/// was being sent and the source while the target verified and fsynced it
/// (both cores ~40% idle during a first run). First run of the 1.7 GB bench
/// node: 1 -> 7.7-9.4 s, 2 -> 5.8-6.4 s, 3 -> 4.9-6.2 s, 4 -> 5.5 s; each
/// holds up to [`SEND_BYTES`] on the source.
const UPLOADS_IN_FLIGHT: usize = 3;
/// Versions per metadata transaction on a target that does not say
/// otherwise ([`crate::Target::object_batch`]).
pub const DEFAULT_OBJECT_BATCH: usize = 500;
/// State changes or deletions per call: targets accept at most 10,000
/// (`tandem_proto::MAX_OBJECTS_PER_CALL`) so that no transaction is long.
const STATE_BATCH: usize = 5000;

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

/// Reads chunks from `source`, [`READ_BATCH`] ids at a time, until about
/// [`SEND_BYTES`] are gathered or `groups` runs out.
async fn read_up_to<S: Source>(
    source: &S,
    groups: &mut std::slice::Chunks<'_, ChunkId>,
) -> Result<Vec<StoredChunk>, ReplicationError> {
    let mut gathered = Vec::new();
    let mut bytes = 0usize;
    while bytes < SEND_BYTES {
        let Some(group) = groups.next() else { break };
        for chunk in source.read_chunks(group).await.map_err(src)? {
            bytes += chunk.data.len();
            gathered.push(chunk);
        }
    }
    Ok(gathered)
}

/// Runs `work` to its end while the uploads under way keep going; the first
/// upload that fails ends it.
async fn while_uploading<R, U, E>(
    work: impl Future<Output = R>,
    uploads: &mut FuturesOrdered<U>,
) -> Result<R, ReplicationError>
where
    U: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return Ok(done),
            Some(upload) = uploads.next(), if !uploads.is_empty() => upload.map_err(dst)?,
        }
    }
}

/// Checks a target's answer to which of `asked` it lacks: a subset of the
/// ids asked, each once. The answer is the target's word: taken as given, a
/// partner could have this side read and send it any chunk stored here (of
/// any node), or one chunk over and over. A target that names anything else
/// is not trusted further: the run stops, saying how many ids were wrong.
///
/// # Errors
/// An answer naming more chunks than were asked, or one not asked about,
/// or one twice.
fn only_asked(asked: &[ChunkId], answer: Vec<ChunkId>) -> Result<Vec<ChunkId>, ReplicationError> {
    let refused = |why: String| {
        Err(ReplicationError::Target(
            format!("{why}; refused, nothing sent for this batch").into(),
        ))
    };
    if answer.len() > asked.len() {
        return refused(format!(
            "the target says it lacks {} chunks of the {} it was asked about",
            answer.len(),
            asked.len()
        ));
    }
    let asked: std::collections::HashSet<&ChunkId> = asked.iter().collect();
    let mut seen = std::collections::HashSet::with_capacity(answer.len());
    let wrong = answer
        .iter()
        .filter(|id| !asked.contains(id) || !seen.insert(**id))
        .count();
    if wrong > 0 {
        return refused(format!(
            "the target's answer names {wrong} chunk(s) it was not asked about, or twice"
        ));
    }
    Ok(answer)
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

    // Every chunk is stored before any version that refers to it is sent.
    let mut uploads = FuturesOrdered::new();
    for batch in plan.chunks.chunks(FIND_BATCH) {
        let answer = while_uploading(target.missing_chunks(batch), &mut uploads)
            .await?
            .map_err(dst)?;
        let missing = only_asked(batch, answer)?;
        report.chunks_skipped += (batch.len() - missing.len()) as u64;
        let mut groups = missing.chunks(READ_BATCH);
        loop {
            let next = while_uploading(read_up_to(source, &mut groups), &mut uploads).await??;
            if next.is_empty() {
                break;
            }
            report.bytes_sent += next.iter().map(|c| c.data.len() as u64).sum::<u64>();
            report.chunks_sent += next.len() as u64;
            while uploads.len() >= UPLOADS_IN_FLIGHT {
                let done: Option<Result<(), T::Error>> = uploads.next().await;
                done.transpose().map_err(dst)?;
            }
            uploads.push_back(target.put_chunks(next));
        }
    }
    while let Some(done) = uploads.next().await {
        done.map_err(dst)?;
    }
    for batch in plan.update.chunks(STATE_BATCH) {
        report.states_updated += target.update_states(batch).await.map_err(dst)?;
    }
    for batch in plan.send.chunks(target.object_batch().max(1)) {
        let objects = source.objects(batch).await.map_err(src)?;
        report.objects_sent += target.put_objects(objects).await.map_err(dst)?;
    }
    for batch in plan.delete.chunks(STATE_BATCH) {
        report.objects_deleted += target.delete_objects(batch).await.map_err(dst)?;
    }
    Ok(report)
}
