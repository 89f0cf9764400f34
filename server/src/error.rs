//! Errors of the server's layers, and the one place they become gRPC statuses.

use std::path::PathBuf;

use tandem_proto::ChunkId;

/// Errors of the SQLite catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// SQLite failed.
    #[error("catalog: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row holds a value the code does not understand (corruption or a newer server).
    #[error("catalog row is malformed: {0}")]
    Malformed(String),
    /// The write is refused as things stand (a node whose planned role
    /// switch has stopped its writes); the caller may retry later.
    #[error("{0}")]
    Refused(String),
}

/// Errors of the chunk container store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file operation on a container failed.
    #[error("container {path}: {source}")]
    Io {
        /// The container file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A container's record headers do not add up (a record runs past the end).
    #[error("container {path} is damaged at offset {offset}: {reason}")]
    Damaged {
        /// The container file.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The S3 pool could not be set up, or holds less than it should (an
    /// object missing or shorter than its marker says).
    #[error("storage pool {pool}{}: {reason}", container.map(|n| format!(", container {n}")).unwrap_or_default())]
    Pool {
        /// Bucket, prefix and endpoint.
        pool: String,
        /// The container concerned, if one is.
        container: Option<u32>,
        /// What failed.
        reason: String,
    },
    /// The bucket refused this server's requests (credentials, the bucket
    /// policy, a header it does not support): a setting to fix, not an
    /// outage to wait out.
    #[error("storage pool {pool} refused this server: {reason}")]
    PoolRefused {
        /// Bucket, prefix and endpoint.
        pool: String,
        /// What was refused, and what the server needs.
        reason: String,
    },
    /// The pool's prefix belongs to another server, or holds an owner
    /// object no Tandem server wrote: writing there would overwrite
    /// containers this server does not own.
    #[error("storage pool {pool} is not this server's: {reason}")]
    PoolOwned {
        /// Bucket, prefix and endpoint.
        pool: String,
        /// Whose it is, and what to do.
        reason: String,
    },
    /// The S3 pool did not answer, or refused the request: nothing is
    /// known about the data, which is not damage.
    #[error(
        "storage pool {pool} is unavailable (container {container}): {reason}; check the endpoint, credentials and bucket, then try again"
    )]
    PoolUnavailable {
        /// Bucket, prefix and endpoint.
        pool: String,
        /// The container being read.
        container: u32,
        /// What failed.
        reason: String,
    },
    /// A chunk sent by a client does not hash to its id.
    #[error("chunk {chunk} does not match its hash")]
    ChunkMismatch {
        /// The claimed id.
        chunk: ChunkId,
    },
    /// A chunk sent by a client could not be decompressed or is too large.
    #[error("chunk {chunk} is malformed: {reason}")]
    ChunkMalformed {
        /// The claimed id.
        chunk: ChunkId,
        /// Why.
        reason: String,
    },
}

/// Everything a server request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Catalog failure.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Storage failure.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// A named node does not exist.
    #[error("node {node} is not registered")]
    NodeNotFound {
        /// Node name.
        node: String,
    },
    /// A source named a replica node this server has not been asked to
    /// create (its run must prepare it first).
    #[error("node {node:?} has not been prepared as a replica on this server")]
    ReplicaNotPrepared {
        /// Node name as the source sent it.
        node: String,
    },
    /// A node with that name exists.
    #[error("node {node} is already registered")]
    NodeExists {
        /// Node name.
        node: String,
    },
    /// The request is malformed; the text says what and why.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request cannot be done in the current state; the text says why.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller is who it says, but may not do this (another server's replica).
    #[error("{0}")]
    PermissionDenied(String),
    /// Something the caller named does not exist (an administrator, a
    /// filespace, a chunk of its node); the text says what.
    #[error("{0}")]
    NotFound(String),
    /// Something the caller wants to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// A bound was reached (concurrent logons, request size, connections);
    /// the text names it and what to do.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller stalled past a limit (an upload stream that stopped).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Stored data cannot be read back as it was written.
    #[error("{0}")]
    DataLoss(String),
    /// A replication run or query needs a replication server and none is set.
    #[error("no replication server is set; use `set replserver NAME`")]
    NoReplicationServer,
    /// A partner server is named but not defined here.
    #[error(
        "server {server} is not defined here; define it first: `define server {server} --address URL --server-password-file FILE --fingerprint SHA256` (no --fingerprint for a plaintext loopback partner)"
    )]
    ServerNotDefined {
        /// Its name.
        server: String,
    },
    /// A run of the node is under way already.
    #[error("replication of node {node} is already running; see `query replication {node}`")]
    ReplicationRunning {
        /// The node.
        node: String,
    },
    /// The partner could not be reached, or refused or failed the handshake.
    #[error("replication server {server}: {reason}")]
    Partner {
        /// The partner's name.
        server: String,
        /// What went wrong and, where known, what to do.
        reason: String,
    },
    /// A commit references chunks the server does not hold.
    #[error(
        "{count} chunk(s) referenced by the transaction are not stored for this node (first: {first}); upload their data first"
    )]
    MissingChunks {
        /// How many.
        count: usize,
        /// The first one.
        first: ChunkId,
    },
    /// A blocking task died.
    #[error("internal task failed: {0}")]
    Task(String),
    /// Setting up the server failed.
    #[error("{context}: {source}")]
    Setup {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl From<tokio::task::JoinError> for ServerError {
    fn from(err: tokio::task::JoinError) -> Self {
        ServerError::Task(err.to_string())
    }
}

impl From<crate::secrets::SecretError> for ServerError {
    fn from(e: crate::secrets::SecretError) -> Self {
        ServerError::FailedPrecondition(e.to_string())
    }
}

impl From<rusqlite::Error> for ServerError {
    fn from(err: rusqlite::Error) -> Self {
        ServerError::Catalog(CatalogError::Sqlite(err))
    }
}

impl From<ServerError> for tonic::Status {
    fn from(err: ServerError) -> Self {
        use tonic::Status;
        match err {
            ServerError::Unauthenticated(msg) => Status::unauthenticated(msg),
            ServerError::Catalog(CatalogError::Refused(msg)) => Status::failed_precondition(msg),
            e @ ServerError::NodeNotFound { .. } => Status::not_found(e.to_string()),
            e @ ServerError::ReplicaNotPrepared { .. } => Status::not_found(e.to_string()),
            e @ ServerError::NodeExists { .. } => Status::already_exists(e.to_string()),
            ServerError::InvalidArgument(msg) => Status::invalid_argument(msg),
            ServerError::FailedPrecondition(msg) => Status::failed_precondition(msg),
            ServerError::PermissionDenied(msg) => Status::permission_denied(msg),
            ServerError::NotFound(msg) => Status::not_found(msg),
            ServerError::AlreadyExists(msg) => Status::already_exists(msg),
            ServerError::ResourceExhausted(msg) => Status::resource_exhausted(msg),
            ServerError::DeadlineExceeded(msg) => Status::deadline_exceeded(msg),
            ServerError::DataLoss(msg) => Status::data_loss(msg),
            e @ (ServerError::NoReplicationServer
            | ServerError::ServerNotDefined { .. }
            | ServerError::ReplicationRunning { .. }
            | ServerError::Partner { .. }) => Status::failed_precondition(e.to_string()),
            e @ ServerError::MissingChunks { .. } => Status::failed_precondition(e.to_string()),
            ServerError::Storage(
                e @ (StorageError::ChunkMismatch { .. } | StorageError::ChunkMalformed { .. }),
            ) => Status::invalid_argument(e.to_string()),
            ServerError::Storage(
                e @ (StorageError::PoolOwned { .. } | StorageError::PoolRefused { .. }),
            ) => Status::failed_precondition(e.to_string()),
            other => {
                tracing::error!(cause = %other, "internal error");
                Status::internal(format!("internal server error: {other}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    /// Every error a request can end with, and the status code a caller sees.
    /// A new variant must be added here, so its code is chosen on purpose.
    #[test]
    fn every_server_error_maps_to_its_status_code() {
        let chunk = ChunkId([7; 32]);
        let io = || std::io::Error::other("disk on fire");
        let table: Vec<(ServerError, Code)> = vec![
            (
                ServerError::Unauthenticated("who".into()),
                Code::Unauthenticated,
            ),
            (
                ServerError::NodeNotFound { node: "N".into() },
                Code::NotFound,
            ),
            (
                ServerError::ReplicaNotPrepared { node: "N".into() },
                Code::NotFound,
            ),
            (
                ServerError::NodeExists { node: "N".into() },
                Code::AlreadyExists,
            ),
            (
                ServerError::InvalidArgument("bad".into()),
                Code::InvalidArgument,
            ),
            (
                ServerError::FailedPrecondition("not now".into()),
                Code::FailedPrecondition,
            ),
            (
                ServerError::PermissionDenied("not yours".into()),
                Code::PermissionDenied,
            ),
            (ServerError::NotFound("gone".into()), Code::NotFound),
            (
                ServerError::AlreadyExists("there".into()),
                Code::AlreadyExists,
            ),
            (
                ServerError::ResourceExhausted("full".into()),
                Code::ResourceExhausted,
            ),
            (
                ServerError::DeadlineExceeded("slow".into()),
                Code::DeadlineExceeded,
            ),
            (ServerError::DataLoss("torn".into()), Code::DataLoss),
            (ServerError::NoReplicationServer, Code::FailedPrecondition),
            (
                ServerError::ServerNotDefined { server: "S".into() },
                Code::FailedPrecondition,
            ),
            (
                ServerError::ReplicationRunning { node: "N".into() },
                Code::FailedPrecondition,
            ),
            (
                ServerError::Partner {
                    server: "S".into(),
                    reason: "down".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                ServerError::MissingChunks {
                    count: 1,
                    first: chunk,
                },
                Code::FailedPrecondition,
            ),
            (
                ServerError::Storage(StorageError::ChunkMismatch { chunk }),
                Code::InvalidArgument,
            ),
            (
                ServerError::Storage(StorageError::ChunkMalformed {
                    chunk,
                    reason: "short".into(),
                }),
                Code::InvalidArgument,
            ),
            (
                ServerError::Storage(StorageError::Pool {
                    pool: "s3://b/ at http://127.0.0.1:9".into(),
                    container: Some(3),
                    reason: "connection refused".into(),
                }),
                // Not Unavailable: clients read that as "the server is
                // down" and fail over; here the server answers.
                Code::Internal,
            ),
            (
                ServerError::Storage(StorageError::PoolOwned {
                    pool: "s3://b/ at http://127.0.0.1:9".into(),
                    reason: "it belongs to server \"A\"".into(),
                }),
                Code::FailedPrecondition,
            ),
            (
                ServerError::Storage(StorageError::PoolRefused {
                    pool: "s3://b/ at http://127.0.0.1:9".into(),
                    reason: "access denied".into(),
                }),
                Code::FailedPrecondition,
            ),
            (
                ServerError::Storage(StorageError::PoolUnavailable {
                    pool: "s3://b/ at http://127.0.0.1:9".into(),
                    container: 3,
                    reason: "connection refused".into(),
                }),
                Code::Internal,
            ),
            (
                ServerError::Storage(StorageError::Io {
                    path: "/c/1".into(),
                    source: io(),
                }),
                Code::Internal,
            ),
            (
                ServerError::Catalog(CatalogError::Malformed("row".into())),
                Code::Internal,
            ),
            (ServerError::Task("died".into()), Code::Internal),
            (
                ServerError::Setup {
                    context: "start".into(),
                    source: io(),
                },
                Code::Internal,
            ),
        ];
        for (error, code) in table {
            let text = error.to_string();
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code, "{text}");
            assert!(status.message().contains(&text), "{text} -> {status:?}");
        }
    }
}
