//! Chunks in: every chunk is checked against its id, appended, fsynced, and
//! only then indexed and pinned. A chunk the catalog indexes is therefore on
//! disk, and an upload cut anywhere leaves at most unindexed container bytes,
//! which the next start cuts off.
//!
//! [`ChunkIngest`] overlaps the steps for a stream of upload messages (a
//! client's backup, a partner's replication): a couple of messages are
//! verified on blocking threads while the next arrive, and one group is
//! written while later ones are verified.
//!
//! Every stream draws the memory its received chunks hold from one
//! server-wide [`IngestBudget`], so a fleet of nodes backing up at once costs
//! the server a bounded amount of memory, not a multiple of the fleet's size.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tandem_proto::{ChunkId, StoredChunk};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::Repository;
use crate::error::ServerError;
use crate::storage::{self, VerifiedChunk};

/// Verified chunks are written and fsynced in groups of about this size, so an
/// upload costs one fsync per group rather than one per chunk.
const STORE_GROUP_BYTES: usize = 8 * 1024 * 1024;
/// Upload messages being verified at once per stream.
const VERIFY_AHEAD: usize = 2;

impl Repository {
    /// Stores verified chunks that node `node` sent in `session`: skips those
    /// already stored, appends and fsyncs the rest, then indexes them, makes
    /// the node an owner of all of them and pins them, under the pin lock (so
    /// the sweep cannot slip in between). Returns chunks newly stored and
    /// their bytes.
    ///
    /// # Errors
    /// Container and catalog errors; nothing is indexed for a group whose
    /// append or fsync failed.
    pub(crate) fn store_chunks(
        &self,
        session: u64,
        node: i64,
        group: Vec<VerifiedChunk>,
    ) -> Result<(u64, u64), ServerError> {
        let ids: Vec<ChunkId> = group.iter().map(|c| c.id).collect();
        let pool = self.catalog.node_pool(node)?;
        // Chunks stored already (often for another node) are pinned at once,
        // under the lock the sweep takes: else the sweep could drop one before
        // this node is made its owner below.
        let missing: HashSet<ChunkId> = {
            let mut pins = self.pins.lock();
            let missing: HashSet<ChunkId> = self
                .catalog
                .missing_chunks(pool, &ids)?
                .into_iter()
                .collect();
            pins.pin(
                session,
                ids.iter().filter(|id| !missing.contains(id)).copied(),
            );
            missing
        };
        let fresh: Vec<VerifiedChunk> = group
            .into_iter()
            .filter(|c| missing.contains(&c.id))
            .collect();
        let bytes: u64 = fresh.iter().map(|c| c.data.len() as u64).sum();
        let locations = self.pools.get(pool)?.append(&fresh)?;
        let mut pins = self.pins.lock();
        let stored = self.catalog.insert_chunks(node, &locations, &ids)?;
        pins.pin(session, ids);
        Ok((stored, bytes))
    }
}

/// Chunk data one upload message may carry: a packed message
/// ([`tandem_proto::UPLOAD_MESSAGE_BYTES`]) or one chunk alone, whose stored
/// form is at most a little over its raw bound. A larger one is refused.
pub const MAX_UPLOAD_MESSAGE_BYTES: usize =
    tandem_proto::UPLOAD_MESSAGE_BYTES + tandem_proto::MAX_RAW_CHUNK_BYTES + 64 * 1024;
/// What a received chunk costs besides its bytes (its id, the decoded
/// message's and the verified chunk's bookkeeping), so a message of many
/// tiny chunks is not counted as nearly free.
const CHUNK_OVERHEAD_BYTES: usize = 128;

/// Memory (MiB) that received chunks may hold at once over all upload streams
/// when the configuration does not say (`ingest_memory_mib`).
pub const DEFAULT_INGEST_MEMORY_MIB: u32 = 256;

/// The memory all upload streams together may hold in received chunks: from
/// just before a message is read until its group is written and indexed. A
/// stream that finds the budget spent first writes out what it holds and
/// then waits, so no stream waits for the budget while holding a share; one
/// whose sender is slow to send gives its shares back too (the services'
/// `next_upload_message_held`). Counted in KiB of compressed chunk data plus
/// a per-chunk overhead. Outside it: what HTTP/2 buffers before a message is
/// read (a stream's flow-control window), and a message larger than the
/// share reserved for it while it waits for the rest.
#[derive(Debug, Clone)]
pub struct IngestBudget {
    permits: Arc<Semaphore>,
    total_kib: u32,
    /// Messages being verified at once over all streams
    /// ([`storage::verify_parallelism`]).
    verify_slots: Arc<Semaphore>,
    /// Group stores under way and finished over all streams.
    stores: Arc<StoreProgress>,
}

/// Stores of uploaded groups under way and finished, over every stream:
/// how a watch tells a store that stopped answering (one under way, none
/// finishing) from a disk that is merely slow or busy with other streams'
/// groups (they keep finishing). The local vault's guard uses it.
#[derive(Debug, Default)]
pub struct StoreProgress {
    under_way: AtomicU64,
    finished: AtomicU64,
}

impl StoreProgress {
    /// Stores under way now, and stores finished so far.
    pub fn sample(&self) -> (u64, u64) {
        (
            self.under_way.load(Ordering::SeqCst),
            self.finished.load(Ordering::SeqCst),
        )
    }

    /// Counts a store as under way until the guard is dropped (it then
    /// counts as finished, failed or not: the disk answered).
    pub(crate) fn begin(&self) -> StoreUnderWay<'_> {
        self.under_way.fetch_add(1, Ordering::SeqCst);
        StoreUnderWay(self)
    }
}

/// One store under way ([`StoreProgress::begin`]).
pub(crate) struct StoreUnderWay<'a>(&'a StoreProgress);

impl Drop for StoreUnderWay<'_> {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::SeqCst);
        self.0.under_way.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for IngestBudget {
    fn default() -> Self {
        IngestBudget::new(DEFAULT_INGEST_MEMORY_MIB)
    }
}

impl IngestBudget {
    /// A budget of `mib` MiB (at least 1).
    #[must_use]
    pub fn new(mib: u32) -> Self {
        let total_kib = mib.clamp(1, u32::MAX / 1024) * 1024;
        IngestBudget {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            verify_slots: Arc::new(Semaphore::new(storage::verify_parallelism())),
            stores: Arc::default(),
        }
    }

    /// The progress of every stream's group stores.
    #[must_use]
    pub fn store_progress(&self) -> Arc<StoreProgress> {
        Arc::clone(&self.stores)
    }

    /// The share a message of `bytes` takes: its size in KiB, but never more
    /// than the whole budget (a message larger than it still goes through,
    /// alone).
    fn share(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib)
    }

    fn try_take(&self, kib: u32) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_many_owned(kib).ok()
    }

    async fn take(&self, kib: u32) -> Result<OwnedSemaphorePermit, ServerError> {
        self.permits
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|_| {
                ServerError::ResourceExhausted("the upload memory budget was closed".into())
            })
    }

    async fn verify_slot(&self) -> Result<OwnedSemaphorePermit, ServerError> {
        self.verify_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| {
                ServerError::ResourceExhausted("the verification slots were closed".into())
            })
    }

    /// A share for the first message of a stream that holds nothing yet
    /// (its ingest is made once the message says what it is for).
    ///
    /// # Errors
    /// None in practice (the budget is never closed).
    pub async fn reserve_first(&self) -> Result<MessageShare, ServerError> {
        let kib = self.share(tandem_proto::UPLOAD_MESSAGE_BYTES);
        Ok(MessageShare(self.take(kib).await?))
    }

    /// KiB free now (for tests and logs).
    #[must_use]
    pub fn available_kib(&self) -> usize {
        self.permits.available_permits()
    }
}

/// Refuses an upload message carrying more than [`MAX_UPLOAD_MESSAGE_BYTES`]
/// of chunk data.
///
/// # Errors
/// [`ServerError::InvalidArgument`] saying how much it carried and may carry.
pub fn check_message_data(data: usize) -> Result<(), ServerError> {
    if data > MAX_UPLOAD_MESSAGE_BYTES {
        return Err(ServerError::InvalidArgument(format!(
            "an upload message of {data} bytes of chunk data is larger than the {MAX_UPLOAD_MESSAGE_BYTES} one may carry; send at most {} bytes per message, or one chunk alone",
            tandem_proto::UPLOAD_MESSAGE_BYTES
        )));
    }
    Ok(())
}

/// The budget reserved for one upload message before it is read.
#[derive(Debug)]
pub struct MessageShare(OwnedSemaphorePermit);

/// Checks one upload message's chunks against their ids.
fn verify_message(chunks: Vec<StoredChunk>) -> Result<Vec<VerifiedChunk>, ServerError> {
    chunks
        .into_iter()
        .map(|c| Ok(storage::verify_chunk(c.id, c.data, c.raw_len)?))
        .collect()
}

/// A message's verification on a blocking thread; its share of the budget
/// travels with it and comes back with the verified chunks, so a stream
/// dropped mid-upload frees the share only when the thread lets go of the
/// chunks.
type Verifying = JoinHandle<(
    Result<Vec<VerifiedChunk>, ServerError>,
    OwnedSemaphorePermit,
)>;
/// A group's store on a blocking thread (which holds the group's share until
/// it is done): chunks newly stored and their bytes.
type Storing = JoinHandle<Result<(u64, u64), ServerError>>;

async fn joined<R>(handle: JoinHandle<Result<R, ServerError>>) -> Result<R, ServerError> {
    handle.await?
}

/// What an ingested upload stream stored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    /// Chunks received.
    pub received: u64,
    /// Chunks newly stored (the others were already there).
    pub stored: u64,
    /// Compressed bytes newly written.
    pub bytes_written: u64,
}

/// Verifies and stores the chunks of one upload stream, overlapping the
/// steps: up to [`VERIFY_AHEAD`] messages are verified on blocking threads
/// while the next ones arrive, and one group is written, fsynced and indexed
/// while later ones are verified. A chunk is indexed only after its group's
/// fsync (see [`Repository::store_chunks`]); [`ChunkIngest::finish`] returns
/// only after every group.
#[derive(Debug)]
pub struct ChunkIngest {
    repo: Arc<Repository>,
    session: u64,
    /// The node the chunks are stored for (it becomes their owner).
    node: i64,
    /// Messages being verified.
    verifying: VecDeque<Verifying>,
    group: Vec<VerifiedChunk>,
    group_bytes: usize,
    /// The budget the gathered group holds.
    group_share: Option<OwnedSemaphorePermit>,
    /// The group being stored.
    storing: Option<Storing>,
    done: Ingested,
}

impl ChunkIngest {
    /// An ingest of chunks node `node` sends in `session` (whose pins keep
    /// them from the sweep until it commits or ends).
    #[must_use]
    pub fn new(repo: Arc<Repository>, session: u64, node: i64) -> Self {
        ChunkIngest {
            repo,
            session,
            node,
            verifying: VecDeque::new(),
            group: Vec::new(),
            group_bytes: 0,
            group_share: None,
            storing: None,
            done: Ingested::default(),
        }
    }

    /// Takes one received message (for a caller that holds its chunks
    /// already; a stream reserves before it reads, [`ChunkIngest::reserve`]).
    ///
    /// # Errors
    /// A chunk that does not match its id; a failed store of an earlier group.
    pub async fn push(&mut self, chunks: Vec<StoredChunk>) -> Result<(), ServerError> {
        self.push_reserved(chunks, None).await
    }

    /// A share of the budget for the next message of a stream, taken before
    /// the message is read, so a stream that has to wait leaves the sender's
    /// bytes in its flow-control window instead of in a decoded message.
    ///
    /// # Errors
    /// A failed verification or store of what this stream holds.
    pub async fn reserve(&mut self) -> Result<MessageShare, ServerError> {
        let kib = self
            .repo
            .ingest_budget
            .share(tandem_proto::UPLOAD_MESSAGE_BYTES);
        Ok(MessageShare(self.take_share(kib).await?))
    }

    /// Takes one message read with the `share` reserved for it; the share
    /// is fitted to the message's size.
    ///
    /// # Errors
    /// As for [`ChunkIngest::push`].
    pub async fn push_reserved(
        &mut self,
        chunks: Vec<StoredChunk>,
        share: Option<MessageShare>,
    ) -> Result<(), ServerError> {
        if chunks.is_empty() {
            // Nothing to hold: an empty message must not keep a share.
            return Ok(());
        }
        self.done.received += chunks.len() as u64;
        let data: usize = chunks.iter().map(|c| c.data.len()).sum();
        check_message_data(data)?;
        let bytes = data + chunks.len() * CHUNK_OVERHEAD_BYTES;
        let share = self.fit(share.map(|s| s.0), bytes).await?;
        // A slot is held only while a message is hashed, which always ends,
        // so waiting for one while holding budget cannot deadlock.
        let slot = self.repo.ingest_budget.verify_slot().await?;
        self.verifying
            .push_back(tokio::task::spawn_blocking(move || {
                let _slot = slot;
                (verify_message(chunks), share)
            }));
        while self.verifying.len() > VERIFY_AHEAD {
            self.collect_oldest().await?;
        }
        Ok(())
    }

    /// `share` made the size of a message of `bytes`: the excess given back,
    /// or the rest taken (all of it anew when the stream has to wait, so it
    /// waits holding nothing).
    async fn fit(
        &mut self,
        share: Option<OwnedSemaphorePermit>,
        bytes: usize,
    ) -> Result<OwnedSemaphorePermit, ServerError> {
        let budget = self.repo.ingest_budget.clone();
        let need = budget.share(bytes);
        let Some(mut share) = share else {
            return self.take_share(need).await;
        };
        let have = u32::try_from(share.num_permits()).unwrap_or(u32::MAX);
        if need <= have {
            drop(share.split((have - need) as usize));
            return Ok(share);
        }
        if let Some(more) = budget.try_take(need - have) {
            share.merge(more);
            return Ok(share);
        }
        drop(share);
        self.take_share(need).await
    }

    /// `kib` of the budget. When the budget is spent, the stream first
    /// verifies and stores everything it holds (giving its shares back), then
    /// waits: a stream never waits for the budget while holding a share of
    /// it. (The services also release what a stream holds when its next
    /// message is slow to come: [`ChunkIngest::release_held`].)
    async fn take_share(&mut self, kib: u32) -> Result<OwnedSemaphorePermit, ServerError> {
        let budget = self.repo.ingest_budget.clone();
        if let Some(share) = budget.try_take(kib) {
            return Ok(share);
        }
        self.release_held().await?;
        tracing::debug!(
            session = self.session,
            kib,
            "upload waits for the server's upload memory budget (ingest_memory_mib)"
        );
        budget.take(kib).await
    }

    /// Verifies and stores everything received so far, giving back every
    /// share this stream holds: for a stream about to wait, on the budget or
    /// on a sender that is slow to send.
    ///
    /// # Errors
    /// A chunk that does not match its id; a failed store.
    pub async fn release_held(&mut self) -> Result<(), ServerError> {
        while !self.verifying.is_empty() {
            self.collect_oldest().await?;
        }
        if self.group.is_empty() {
            self.group_share = None;
        } else {
            self.store_group().await?;
        }
        self.settle_store().await
    }

    async fn collect_oldest(&mut self) -> Result<(), ServerError> {
        let Some(handle) = self.verifying.pop_front() else {
            return Ok(());
        };
        let (verified, share) = handle.await?;
        for chunk in verified? {
            self.group_bytes += chunk.data.len();
            self.group.push(chunk);
        }
        match &mut self.group_share {
            Some(held) => held.merge(share),
            None => self.group_share = Some(share),
        }
        if self.group_bytes >= STORE_GROUP_BYTES {
            self.store_group().await?;
        }
        Ok(())
    }

    /// Starts storing the gathered group once the previous store is done.
    async fn store_group(&mut self) -> Result<(), ServerError> {
        self.settle_store().await?;
        let group = std::mem::take(&mut self.group);
        self.group_bytes = 0;
        let repo = self.repo.clone();
        let (session, node) = (self.session, self.node);
        let share = self.group_share.take();
        let progress = self.repo.ingest_budget.store_progress();
        self.storing = Some(tokio::task::spawn_blocking(move || {
            let _share = share;
            let _under_way = progress.begin();
            // Stands in for a disk or share that stops answering while an
            // upload is stored (the vault's tests).
            crate::faults::pause_point_blocking("store-upload");
            repo.store_chunks(session, node, group)
        }));
        Ok(())
    }

    async fn settle_store(&mut self) -> Result<(), ServerError> {
        if let Some(handle) = self.storing.take() {
            let (stored, bytes) = joined(handle).await?;
            self.done.stored += stored;
            self.done.bytes_written += bytes;
        }
        Ok(())
    }

    /// Verifies and stores what is left; returns when all of it is durable
    /// and indexed.
    ///
    /// # Errors
    /// As for [`ChunkIngest::push`].
    pub async fn finish(mut self) -> Result<Ingested, ServerError> {
        while !self.verifying.is_empty() {
            self.collect_oldest().await?;
        }
        self.store_group().await?;
        self.settle_store().await?;
        Ok(self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::bytes::Bytes;

    /// A valid chunk of `len` bytes that do not compress (seeded xorshift).
    fn chunk(seed: u64, len: usize) -> StoredChunk {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let raw: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        StoredChunk {
            id: ChunkId::of(&raw),
            data: Bytes::from(zstd::bulk::compress(&raw, 1).unwrap()),
            raw_len: len as u64,
        }
    }

    fn repository(dir: &std::path::Path, budget_mib: u32) -> Arc<Repository> {
        let mut repo = crate::repository::open_for_test(dir);
        repo.ingest_budget = IngestBudget::new(budget_mib);
        Arc::new(repo)
    }

    /// Streams that together send far more than the budget all finish (a
    /// stream that would wait first writes out what it holds, so none waits
    /// on another's share), store everything, and give the budget back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_past_the_budget_all_finish_and_give_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path(), 1);
        let total = repo.ingest_budget.available_kib();
        assert_eq!(total, 1024);
        let streams: Vec<_> = (0..4u64)
            .map(|stream| {
                let repo = repo.clone();
                tokio::spawn(async move {
                    let mut ingest = ChunkIngest::new(repo, stream + 1, 1);
                    for message in 0..12u64 {
                        let seed = stream * 1000 + message;
                        // Streams 0 and 1 reserve before each message, as
                        // the services do, with messages smaller and larger
                        // than the reservation; 2 and 3 push what they hold.
                        if stream < 2 {
                            let len = if message % 3 == 0 { 1536 } else { 200 } * 1024;
                            let share = ingest.reserve().await?;
                            ingest
                                .push_reserved(vec![chunk(seed, len)], Some(share))
                                .await?;
                        } else {
                            ingest.push(vec![chunk(seed, 300 * 1024)]).await?;
                        }
                    }
                    ingest.finish().await
                })
            })
            .collect();
        let all = tokio::time::timeout(std::time::Duration::from_secs(120), async {
            let mut done = Vec::new();
            for stream in streams {
                done.push(stream.await.unwrap().unwrap());
            }
            done
        })
        .await
        .expect("streams sharing a spent budget must not wait on each other forever");
        for done in all {
            assert_eq!((done.received, done.stored), (12, 12));
        }
        assert_eq!(repo.ingest_budget.available_kib(), total);
    }

    /// Empty messages keep no share (else a stream of them would hoard the
    /// budget), and a message past the size one may carry is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn empty_messages_hold_nothing_and_oversized_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path(), 16);
        let total = repo.ingest_budget.available_kib();
        let mut ingest = ChunkIngest::new(repo.clone(), 1, 1);
        for _ in 0..100 {
            let share = ingest.reserve().await.unwrap();
            ingest.push_reserved(Vec::new(), Some(share)).await.unwrap();
        }
        assert_eq!(repo.ingest_budget.available_kib(), total);
        let big = StoredChunk {
            id: ChunkId::of(b"x"),
            data: Bytes::from(vec![0u8; MAX_UPLOAD_MESSAGE_BYTES + 1]),
            raw_len: 1,
        };
        let err = ingest.push(vec![big]).await.unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        ingest.finish().await.unwrap();
        assert_eq!(repo.ingest_budget.available_kib(), total);
    }

    /// A message larger than the whole budget still goes through, alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_larger_than_the_budget_goes_through() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path(), 1);
        let mut ingest = ChunkIngest::new(repo.clone(), 1, 1);
        ingest
            .push(vec![chunk(1, 1536 * 1024), chunk(2, 512 * 1024)])
            .await
            .unwrap();
        let done = ingest.finish().await.unwrap();
        assert_eq!(done.stored, 2);
        assert_eq!(repo.ingest_budget.available_kib(), 1024);
    }
}
