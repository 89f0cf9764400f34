//! gRPC services. Handlers are thin: they authenticate, convert protobuf
//! messages to domain types ([`convert`]), call the catalog or store on a
//! blocking thread, and map errors to statuses through `From<ServerError>`.

pub mod admin;
pub mod backup;
pub mod convert;
pub mod replication;

use std::sync::Arc;

use tandem_proto::ChunkId;
use tonic::Status;

use crate::ServerState;
use crate::error::ServerError;
use crate::storage::VerifiedChunk;

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

/// Of `ids`, those not stored; the others are pinned for `session` under the
/// same lock, so what is reported present stays present until it ends.
fn missing_and_pin(
    state: &ServerState,
    session: u64,
    ids: &[ChunkId],
) -> Result<Vec<ChunkId>, ServerError> {
    let mut pins = state.pins.lock();
    let missing = state.catalog.missing_chunks(ids)?;
    let absent: std::collections::HashSet<&ChunkId> = missing.iter().collect();
    pins.entry(session)
        .or_default()
        .extend(ids.iter().filter(|id| !absent.contains(id)));
    Ok(missing)
}

/// Stores verified chunks for `session`: skips those already stored, appends
/// and fsyncs the rest, then indexes and pins them under the pin lock (so the
/// sweep cannot slip in between). Returns chunks newly stored and their bytes.
fn store_chunks(
    state: &ServerState,
    session: u64,
    group: Vec<VerifiedChunk>,
) -> Result<(u64, u64), ServerError> {
    let ids: Vec<ChunkId> = group.iter().map(|c| c.id).collect();
    let missing: std::collections::HashSet<ChunkId> =
        state.catalog.missing_chunks(&ids)?.into_iter().collect();
    let fresh: Vec<VerifiedChunk> = group
        .into_iter()
        .filter(|c| missing.contains(&c.id))
        .collect();
    let bytes: u64 = fresh.iter().map(|c| c.data.len() as u64).sum();
    let locations = state.store.append(&fresh)?;
    let mut pins = state.pins.lock();
    let stored = state.catalog.insert_chunks(&locations)?;
    pins.entry(session).or_default().extend(ids);
    Ok((stored, bytes))
}

/// Address of the caller for logs, or `-` when unknown.
fn peer_of<T>(request: &tonic::Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "-".to_string(), |a| a.to_string())
}
