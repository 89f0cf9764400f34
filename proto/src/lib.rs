//! Tandem's wire protocol and the identifiers both sides share.
//!
//! - [`pb`]: code generated from `tandem/v1/*.proto` (services `Backup` and `Admin`).
//! - [`ids`]: [`ChunkId`], [`ObjectId`] and [`ServerGuid`], the ids that travel between
//!   clients and servers and between servers, with their parsing and display rules.
//! - [`SESSION_HEADER`]: the metadata key that carries a client session token.

pub mod ids;

pub use ids::{ChunkId, IdError, ObjectId, ServerGuid};

/// Generated protobuf messages and tonic clients/servers for package `tandem.v1`.
#[allow(missing_docs, unreachable_pub, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("tandem.v1");
}

/// Metadata key of the session token returned by `Logon`.
pub const SESSION_HEADER: &str = "x-tandem-session";

/// Largest gRPC message either side accepts. Chunks are at most 4 MiB before
/// compression, and upload messages group a few of them.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
