//! A chunk as servers store and move it: the compressed bytes and the
//! uncompressed length, under its id. Backup uploads, replication and the
//! restore path all carry this shape; only the protobuf message differs.

use prost::bytes::Bytes;

use crate::ChunkId;

/// One stored chunk: `data` is a zstd frame that decompresses to `raw_len`
/// bytes whose BLAKE3 hash is `id`. Nothing here proves that; the server
/// checks it (`verify_chunk`) before it writes a chunk anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    /// Its id (the hash of the uncompressed bytes).
    pub id: ChunkId,
    /// The compressed bytes.
    pub data: Bytes,
    /// The uncompressed length.
    pub raw_len: u64,
}
