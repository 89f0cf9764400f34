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
            e @ ServerError::NodeNotFound { .. } => Status::not_found(e.to_string()),
            e @ ServerError::ReplicaNotPrepared { .. } => Status::not_found(e.to_string()),
            e @ ServerError::NodeExists { .. } => Status::already_exists(e.to_string()),
            ServerError::InvalidArgument(msg) => Status::invalid_argument(msg),
            ServerError::FailedPrecondition(msg) => Status::failed_precondition(msg),
            ServerError::PermissionDenied(msg) => Status::permission_denied(msg),
            e @ ServerError::MissingChunks { .. } => Status::failed_precondition(e.to_string()),
            ServerError::Storage(
                e @ (StorageError::ChunkMismatch { .. } | StorageError::ChunkMalformed { .. }),
            ) => Status::invalid_argument(e.to_string()),
            other => {
                tracing::error!(cause = %other, "internal error");
                Status::internal(format!("internal server error: {other}"))
            }
        }
    }
}
