//! gRPC services. Handlers are thin: they authenticate, convert protobuf
//! messages to domain types ([`convert`]), call the catalog or store on a
//! blocking thread, and map errors to statuses through `From<ServerError>`.

pub mod admin;
pub mod backup;
pub mod convert;
pub mod limits;
pub mod replication;

use std::collections::VecDeque;
use std::sync::Arc;

use tandem_proto::{ChunkId, pb};
use tokio::task::JoinHandle;
use tonic::Status;

use crate::ServerState;
use crate::error::ServerError;
use crate::storage::{self, VerifiedChunk};

/// Runs catalog/store work on a blocking thread (rusqlite and fsync block).
async fn blocking<R: Send + 'static>(
    state: &Arc<ServerState>,
    f: impl FnOnce(&ServerState) -> Result<R, ServerError> + Send + 'static,
) -> Result<R, Status> {
    let state = state.clone();
    Ok(tokio::task::spawn_blocking(move || f(&state))
        .await
        .map_err(ServerError::from)??)
}

/// Of `ids`, those node `node` does not own (see [`crate::catalog::Catalog::unowned_chunks`]);
/// the others are pinned for `session` under the same lock, so what is
/// reported present stays present until the session ends.
fn missing_and_pin(
    state: &ServerState,
    session: u64,
    node: i64,
    ids: &[ChunkId],
) -> Result<Vec<ChunkId>, ServerError> {
    let mut pins = state.pins.lock();
    let missing = state.catalog.unowned_chunks(node, ids)?;
    let absent: std::collections::HashSet<&ChunkId> = missing.iter().collect();
    pins.entry(session)
        .or_default()
        .extend(ids.iter().filter(|id| !absent.contains(id)));
    Ok(missing)
}

/// Stores verified chunks that node `node` sent in `session`: skips those
/// already stored, appends and fsyncs the rest, then indexes them, makes the
/// node an owner of all of them and pins them, under the pin lock (so the
/// sweep cannot slip in between). Returns chunks newly stored and their bytes.
fn store_chunks(
    state: &ServerState,
    session: u64,
    node: i64,
    group: Vec<VerifiedChunk>,
) -> Result<(u64, u64), ServerError> {
    let ids: Vec<ChunkId> = group.iter().map(|c| c.id).collect();
    // Chunks stored already (often for another node) are pinned at once,
    // under the lock the sweep takes: else the sweep could drop one before
    // this node is made its owner below.
    let missing: std::collections::HashSet<ChunkId> = {
        let mut pins = state.pins.lock();
        let missing: std::collections::HashSet<ChunkId> =
            state.catalog.missing_chunks(&ids)?.into_iter().collect();
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
    let locations = state.store.append(&fresh)?;
    let mut pins = state.pins.lock();
    let stored = state.catalog.insert_chunks(node, &locations, &ids)?;
    pins.entry(session).or_default().extend(ids);
    Ok((stored, bytes))
}

/// Verified chunks are written and fsynced in groups of about this size, so an
/// upload costs one fsync per group rather than one per chunk.
const STORE_GROUP_BYTES: usize = 8 * 1024 * 1024;
/// Upload messages being verified at once per stream.
const VERIFY_AHEAD: usize = 2;

/// Checks one upload message's chunks against their ids.
fn verify_message(chunks: Vec<pb::Chunk>) -> Result<Vec<VerifiedChunk>, ServerError> {
    chunks
        .into_iter()
        .map(|c| {
            let id = ChunkId::from_slice(&c.id)
                .map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
            Ok(storage::verify_chunk(id, c.data, c.raw_len)?)
        })
        .collect()
}

async fn joined<R>(handle: JoinHandle<Result<R, ServerError>>) -> Result<R, Status> {
    Ok(handle.await.map_err(ServerError::from)??)
}

/// What an ingested upload stream stored.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Ingested {
    /// Chunks received.
    pub(crate) received: u64,
    /// Chunks newly stored (the others were already there).
    pub(crate) stored: u64,
    /// Compressed bytes newly written.
    pub(crate) bytes_written: u64,
}

/// Verifies and stores the chunks of one upload stream, overlapping the
/// steps: up to [`VERIFY_AHEAD`] messages are verified on blocking threads
/// while the next ones arrive, and one group is written, fsynced and indexed
/// while later ones are verified. A chunk is indexed only after its group's
/// fsync (see [`store_chunks`]); the reply is sent only after every group.
#[derive(Debug)]
pub(crate) struct ChunkIngest {
    state: Arc<ServerState>,
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
    pub(crate) fn new(state: Arc<ServerState>, session: u64, node: i64) -> Self {
        ChunkIngest {
            state,
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
    pub(crate) async fn push(&mut self, chunks: Vec<pb::Chunk>) -> Result<(), Status> {
        self.done.received += chunks.len() as u64;
        self.verifying
            .push_back(tokio::task::spawn_blocking(move || verify_message(chunks)));
        while self.verifying.len() > VERIFY_AHEAD {
            self.collect_oldest().await?;
        }
        Ok(())
    }

    async fn collect_oldest(&mut self) -> Result<(), Status> {
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
    async fn store_group(&mut self) -> Result<(), Status> {
        self.settle_store().await?;
        let group = std::mem::take(&mut self.group);
        self.group_bytes = 0;
        let state = self.state.clone();
        let (session, node) = (self.session, self.node);
        self.storing = Some(tokio::task::spawn_blocking(move || {
            store_chunks(&state, session, node, group)
        }));
        Ok(())
    }

    async fn settle_store(&mut self) -> Result<(), Status> {
        if let Some(handle) = self.storing.take() {
            let (stored, bytes) = joined(handle).await?;
            self.done.stored += stored;
            self.done.bytes_written += bytes;
        }
        Ok(())
    }

    /// Verifies and stores what is left; returns when all of it is durable
    /// and indexed.
    pub(crate) async fn finish(mut self) -> Result<Ingested, Status> {
        while !self.verifying.is_empty() {
            self.collect_oldest().await?;
        }
        self.store_group().await?;
        self.settle_store().await?;
        Ok(self.done)
    }
}

/// The next message of an upload stream, or an error once it stalls for
/// `comm_timeout_seconds` (TSM COMMTIMEOUT). Clients and partners send an
/// upload's messages from memory, back to back; a stalled stream is ended,
/// so it holds no memory or slot.
async fn next_upload_message<T>(
    state: &ServerState,
    stream: &mut tonic::Streaming<T>,
) -> Result<Option<T>, Status> {
    let limit = std::time::Duration::from_secs(state.config.comm_timeout_seconds);
    match tokio::time::timeout(limit, stream.message()).await {
        Ok(message) => message,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no complete upload message arrived within {} s (comm_timeout_seconds); the upload was abandoned, send it again (on a slow link, raise comm_timeout_seconds)",
            limit.as_secs()
        ))),
    }
}

/// Checks `password` against `stored` (a node's or an administrator's
/// argon2 hash) as every logon is checked: at most
/// `auth::MAX_CONCURRENT_VERIFICATIONS` at once, a short wait for a slot and
/// then a refusal instead of more memory, and an unknown name (`None`)
/// checked against a decoy hash, so every refusal takes as long.
async fn check_password(
    state: &Arc<ServerState>,
    stored: Option<String>,
    password: String,
) -> Result<bool, Status> {
    let Ok(Ok(_slot)) = tokio::time::timeout(
        crate::auth::VERIFICATION_WAIT,
        state.verifications.acquire(),
    )
    .await
    else {
        return Err(Status::resource_exhausted(
            "the server is checking too many logons at once; try again in a moment",
        ));
    };
    let hash = stored.unwrap_or_else(|| crate::auth::decoy_hash().to_string());
    let memory = state.verify_memory.clone();
    Ok(tokio::task::spawn_blocking(move || {
        crate::auth::verify_password_in(&memory, &password, &hash)
    })
    .await
    .map_err(ServerError::from)?)
}

/// Address of the caller for logs, or `-` when unknown.
fn peer_of<T>(request: &tonic::Request<T>) -> String {
    request
        .extensions()
        .get::<tandem_tls::PeerInfo>()
        .and_then(|p| p.remote)
        .or_else(|| request.remote_addr())
        .map_or_else(|| "-".to_string(), |a| a.to_string())
}

/// The fingerprint of the certificate the caller proved it holds (partner
/// servers present one for mutual TLS); `None` without one or without TLS.
fn client_fingerprint<T>(request: &tonic::Request<T>) -> Option<tandem_tls::Fingerprint> {
    request
        .extensions()
        .get::<tandem_tls::PeerInfo>()
        .and_then(|p| p.client_fingerprint)
}
