//! Tandem's wire protocol and the identifiers both sides share.
//!
//! - [`pb`]: code generated from `tandem/v1/*.proto` (services `Backup` and `Admin`).
//! - [`ids`]: [`ChunkId`], [`ObjectId`] and [`ServerGuid`], the ids that travel between
//!   clients and servers and between servers, with their parsing and display rules.
//! - [`chunk`]: [`StoredChunk`], a chunk's compressed bytes as servers move them.
//! - [`names`]: any file name's bytes as a UTF-8 string, exactly both ways.
//! - [`upload`]: how chunks are grouped into upload messages.
//! - [`SESSION_HEADER`]: the metadata key that carries a client session token.

pub mod chunk;
pub mod ids;
pub mod names;
pub mod upload;

pub use chunk::StoredChunk;
pub use ids::{ChunkId, IdError, ObjectId, ServerGuid};
pub use upload::{UPLOAD_MESSAGE_BYTES, UploadPacker};

/// Generated protobuf messages and tonic clients/servers for package `tandem.v1`.
#[allow(missing_docs, unreachable_pub, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("tandem.v1");
}

/// The replication protocol this release speaks, exchanged in `Hello`.
/// Raise it whenever a replication message changes meaning; partners must
/// then run releases with the same number.
pub const REPLICATION_PROTOCOL: u32 = 1;

/// Metadata key of the session token returned by `Logon`.
pub const SESSION_HEADER: &str = "x-tandem-session";

/// gRPC's metadata key for "try again after this many milliseconds". A
/// server that turns a call away only because it is busy at that moment
/// (`ResourceExhausted` with this key) is up: clients wait and try again
/// rather than fail over. A `ResourceExhausted` without it (a request over
/// a size limit, say) is final.
pub const RETRY_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// Largest gRPC message either side accepts. Chunks are at most 4 MiB before
/// compression, and upload messages group a few of them.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Most chunk ids one call may name (`FindMissingChunks`, `ReadChunks`): a
/// call's cost on the server is bounded, and one node's call cannot hold the
/// catalog for long. Callers split longer lists.
pub const MAX_CHUNK_IDS_PER_CALL: usize = 16_384;

/// Most chunk ids one self-repair call may name (`RepairChunks`,
/// `ReadReplicaChunks`): the server decompresses and hashes each, so a call
/// costs far more than a read; a restore has few damaged chunks.
pub const MAX_REPAIR_CHUNK_IDS: usize = 256;

/// Largest uncompressed chunk a server accepts. Clients' chunkers cut
/// smaller ones (the Tandem client at most 4 MiB); the server refuses a
/// larger raw length before it decompresses anything.
pub const MAX_RAW_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Most objects, deactivations, state changes or deletions one call may carry
/// (`CommitObjects`, and each list of the replication calls); callers split
/// longer lists, so one transaction stays short for every other node.
pub const MAX_OBJECTS_PER_CALL: usize = 10_000;

/// Largest message a caller may send before it has authenticated (`Logon`,
/// `Identify`, the replication `Hello`, health checks).
pub const MAX_UNAUTHENTICATED_BYTES: usize = 64 * 1024;

/// Largest message of the admin service, whose calls are small.
pub const MAX_ADMIN_MESSAGE_BYTES: usize = 1024 * 1024;

/// HTTP/2 flow-control window per stream. The protocol's default (64 KiB) makes
/// a sender stop for a window update every 64 KiB; chunk uploads and restores
/// move megabytes per message, so both ends allow a few messages in flight.
pub const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// HTTP/2 flow-control window per connection (several streams at once).
pub const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;
/// Largest HTTP/2 frame either end sends (the default is 16 KiB).
pub const MAX_FRAME_BYTES: u32 = 1024 * 1024;

/// An endpoint to `url` tuned for moving chunks (the flow-control windows and
/// frame size above, no Nagle delay), with `connect_timeout`: the one place
/// the backup client and a replicating server set up their channels.
///
/// # Errors
/// `url` is not a valid URI.
pub fn bulk_endpoint(
    url: &str,
    connect_timeout: std::time::Duration,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES))
}

/// Largest encoded `ObjectExtra` (extended attributes, ACLs, device number,
/// hard-link group) of one object. ext4 keeps all of an inode's extended
/// attributes in one 4 KiB block and Linux bounds the list of their names at
/// 64 KiB; at this size a query page of 512 versions stays well inside
/// [`MAX_MESSAGE_BYTES`]. A client leaves the attributes of a larger set out,
/// with a warning.
pub const MAX_EXTRA_BYTES: usize = 64 * 1024;

/// Longest stored path, in bytes of its encoded form. Linux refuses whole
/// paths past 4 KiB, but a tree can be deeper than that (the client walks it
/// by descriptors); past this bound a path is not backed up, with a warning,
/// so a query page of 512 versions stays inside [`MAX_MESSAGE_BYTES`].
pub const MAX_PATH_BYTES: usize = 32 * 1024;

/// Longest name of one path component once decoded (Linux's `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;
