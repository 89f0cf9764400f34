//! Chunks in: every chunk is checked against its id, appended, fsynced, and
//! only then indexed and pinned. A chunk the catalog indexes is therefore on
//! disk, and an upload cut anywhere leaves at most unindexed container bytes,
//! which the next start cuts off.
//!
//! [`ChunkIngest`] overlaps the steps for a stream of upload messages (a
//! client's backup, a partner's replication): a couple of messages are
//! verified on blocking threads while the next arrive, and one group is
//! written while later ones are verified.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use tandem_proto::{ChunkId, StoredChunk};
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
        // Chunks stored already (often for another node) are pinned at once,
        // under the lock the sweep takes: else the sweep could drop one before
        // this node is made its owner below.
        let missing: HashSet<ChunkId> = {
            let mut pins = self.pins.lock();
            let missing: HashSet<ChunkId> =
                self.catalog.missing_chunks(&ids)?.into_iter().collect();
            pins.entry(session)
                .or_default()
                .extend(ids.iter().filter(|id| !missing.contains(id)));
            missing
        };
        let fresh: Vec<VerifiedChunk> = group
            .into_iter()
            .filter(|c| missing.contains(&c.id))
            .collect();
        let bytes: u64 = fresh.iter().map(|c| c.data.len() as u64).sum();
        let locations = self.store.append(&fresh)?;
        let mut pins = self.pins.lock();
        let stored = self.catalog.insert_chunks(node, &locations, &ids)?;
        pins.entry(session).or_default().extend(ids);
        Ok((stored, bytes))
    }
}

/// Checks one upload message's chunks against their ids.
fn verify_message(chunks: Vec<StoredChunk>) -> Result<Vec<VerifiedChunk>, ServerError> {
    chunks
        .into_iter()
        .map(|c| Ok(storage::verify_chunk(c.id, c.data, c.raw_len)?))
        .collect()
}

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
    verifying: VecDeque<JoinHandle<Result<Vec<VerifiedChunk>, ServerError>>>,
    group: Vec<VerifiedChunk>,
    group_bytes: usize,
    storing: Option<JoinHandle<Result<(u64, u64), ServerError>>>,
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
            storing: None,
            done: Ingested::default(),
        }
    }

    /// Takes one received message.
    ///
    /// # Errors
    /// A chunk that does not match its id; a failed store of an earlier group.
    pub async fn push(&mut self, chunks: Vec<StoredChunk>) -> Result<(), ServerError> {
        self.done.received += chunks.len() as u64;
        self.verifying
            .push_back(tokio::task::spawn_blocking(move || verify_message(chunks)));
        while self.verifying.len() > VERIFY_AHEAD {
            self.collect_oldest().await?;
        }
        Ok(())
    }

    async fn collect_oldest(&mut self) -> Result<(), ServerError> {
        let Some(handle) = self.verifying.pop_front() else {
            return Ok(());
        };
        for chunk in joined(handle).await? {
            self.group_bytes += chunk.data.len();
            self.group.push(chunk);
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
        self.storing = Some(tokio::task::spawn_blocking(move || {
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
