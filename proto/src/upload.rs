//! Grouping chunks into upload messages, the same way for a client's backup
//! and a server's replication to its partner.

use crate::pb;

/// Compressed bytes per upload message, about. The receiver verifies each
/// message on its own blocking thread and stores one group while it verifies
/// the next, so several messages of this size keep both its cores busy where
/// one large message would be verified by one thread before anything is
/// written; and a sender can stream each message as soon as it is full.
/// Messages the receiver has not yet taken wait in the sender's memory, a
/// few per stream, so they are kept small: with five batches in flight and
/// 4 MiB messages the client's peak memory on the benchmark set was
/// 126-140 MiB, with 1 MiB messages 116-128 MiB.
pub const UPLOAD_MESSAGE_BYTES: usize = 1024 * 1024;

/// Packs chunks, in order, into messages of about [`UPLOAD_MESSAGE_BYTES`]. A
/// chunk larger than that travels alone.
#[derive(Debug, Default)]
pub struct UploadPacker {
    current: pb::UploadChunksRequest,
    bytes: usize,
}

impl UploadPacker {
    /// Adds `chunk`. Returns the message it closed, if it did not fit there.
    pub fn push(&mut self, chunk: pb::Chunk) -> Option<pb::UploadChunksRequest> {
        let full =
            (self.bytes > 0 && self.bytes + chunk.data.len() > UPLOAD_MESSAGE_BYTES).then(|| {
                self.bytes = 0;
                std::mem::take(&mut self.current)
            });
        self.bytes += chunk.data.len();
        self.current.chunks.push(chunk);
        full
    }

    /// The last message, unless it is empty.
    pub fn finish(self) -> Option<pb::UploadChunksRequest> {
        (!self.current.chunks.is_empty()).then_some(self.current)
    }
}
