//! gRPC services. Handlers are thin: they authenticate, convert protobuf
//! messages to domain types ([`crate::convert`]), call the repository on a
//! blocking thread (or the local replication target, for `Replication`), and
//! map errors to statuses through `From<ServerError>`.

pub mod admin;
pub mod answer;
pub mod backup;
pub mod limits;
pub mod read_slots;
pub mod replication;

use std::sync::Arc;

use tonic::Status;

use crate::ServerState;
use crate::error::ServerError;

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

/// Upload streams one node (all its sessions together) or partner server may
/// have open at once. A client keeps at most 10 open, 2 of them sending, so
/// this leaves room for a few commands of one node at once; a caller that
/// opened streams by the thousand and stalled each mid-message held a
/// message's worth of decode buffer in every one.
pub const UPLOAD_STREAMS_PER_CALLER: usize = 32;

/// Upload calls of one caller that may wait for a stream at once; one more
/// is refused. A waiting call has read nothing of its stream.
pub const UPLOAD_STREAMS_WAITING: u64 = 64;

/// How long an upload stream keeps what it holds of the upload memory budget
/// while it waits for its sender's next message. Senders stream back to back,
/// so the next message is usually there already; one that is not may be
/// stuck behind sibling streams of the same connection whose unread data
/// fills its flow-control window while they wait for the budget, so the
/// waiting stream writes out what it holds and gives its shares back.
const HOLD_WHILE_WAITING: std::time::Duration = std::time::Duration::from_millis(500);

/// [`next_upload_message`] for a stream drawing on the upload memory budget:
/// if the message is not there within [`HOLD_WHILE_WAITING`], `share` (the
/// share reserved for it) is given back and `ingest` releases what it holds
/// before the wait goes on.
async fn next_upload_message_held<T>(
    state: &ServerState,
    stream: &mut tonic::Streaming<T>,
    ingest: Option<&mut crate::repository::ingest::ChunkIngest>,
    share: &mut Option<crate::repository::ingest::MessageShare>,
) -> Result<Option<T>, Status> {
    let next = next_upload_message(state, stream);
    tokio::pin!(next);
    if let Ok(message) = tokio::time::timeout(HOLD_WHILE_WAITING, &mut next).await {
        return message;
    }
    share.take();
    if let Some(ingest) = ingest {
        ingest.release_held().await?;
    }
    next.await
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
        Err(_) => Err(Status::from(ServerError::DeadlineExceeded(format!(
            "no complete upload message arrived within {} s (comm_timeout_seconds); the upload was abandoned, send it again (on a slow link, raise comm_timeout_seconds)",
            limit.as_secs()
        )))),
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
    // The slot is owned by the check itself, so a caller that goes away
    // while the check computes does not give it back before the thread under
    // it is done; one that goes away while waiting leaves the line.
    let Ok(Ok(slot)) = tokio::time::timeout(
        crate::auth::VERIFICATION_WAIT,
        Arc::clone(&state.verifications).acquire_owned(),
    )
    .await
    else {
        return Err(busy(
            "the server is checking too many logons at once; try again in a moment",
            "250",
        ));
    };
    let hash = stored.unwrap_or_else(|| crate::auth::decoy_hash().to_string());
    let memory = state.verify_memory.clone();
    Ok(tokio::task::spawn_blocking(move || {
        let matched = crate::auth::verify_password_in(&memory, &password, &hash);
        drop(slot);
        matched
    })
    .await
    .map_err(ServerError::from)?)
}

/// A refusal that says "busy, not down" (gRPC's retry pushback, in
/// milliseconds): a client waits and tries again instead of failing or
/// failing over.
pub(crate) fn busy(message: &str, pushback_ms: &'static str) -> Status {
    let mut busy = Status::from(ServerError::ResourceExhausted(message.to_string()));
    busy.metadata_mut().insert(
        tandem_proto::RETRY_PUSHBACK_HEADER,
        tonic::metadata::MetadataValue::from_static(pushback_ms),
    );
    busy
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
