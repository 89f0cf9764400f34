//! Tandem's node-replication engine.
//!
//! A source server pushes one node's data to its replication server. The engine
//! sees both sides only through the [`Source`] and [`Target`] traits, so it
//! knows nothing of SQLite, containers or gRPC: the server implements `Source`
//! over its catalog, and `Target` as a gRPC client (on the source) or over its
//! catalog (on the target).
//!
//! What is sent, in which order, and why an interrupted run resumes safely:
//! 1. **Plan** ([`plan::plan`], pure): compare the source inventory with the
//!    target's by stable [`ObjectId`]; objects missing on the target are sent,
//!    objects on the target that the source no longer has (deleted, expired,
//!    or excluded by the rule) are deleted.
//! 2. **Chunks**: ask the target which chunk ids of the objects to send it
//!    lacks, send only those. The target stores them exactly like a backup:
//!    data fsynced, then indexed.
//! 3. **Metadata**: the object versions, committed in transactions. A version
//!    is committed only when all of its chunks are indexed on the target, so
//!    the target never holds an object whose data is missing.
//! 4. **Deletions**, last: until then the target still holds a full replica.
//!
//! A run cut at any point leaves the target with whole objects only. The next
//! run plans again from both inventories: committed objects are not sent
//! again, and chunks that arrived without their objects are reused.
//!
//! Layout: [`plan`] (pure planning), [`Source`]/[`Target`] (the traits).

pub mod plan;

use std::future::Future;

pub use plan::{InventoryEntry, ReplicationPlan, ReplicationRule};
pub use tandem_proto::{ChunkId, ObjectId};

/// The side that holds the node's data.
pub trait Source {
    /// Errors reading the source.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Every stored version of `node`, active and inactive.
    fn inventory(
        &self,
        node: &str,
    ) -> impl Future<Output = Result<Vec<InventoryEntry>, Self::Error>> + Send;
}

/// The side that receives the replica.
pub trait Target {
    /// Errors talking to or writing the target.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The object ids the target holds for `node`.
    fn inventory(
        &self,
        node: &str,
    ) -> impl Future<Output = Result<Vec<ObjectId>, Self::Error>> + Send;

    /// Of `chunks`, the ids the target does not store.
    fn missing_chunks(
        &self,
        chunks: &[ChunkId],
    ) -> impl Future<Output = Result<Vec<ChunkId>, Self::Error>> + Send;
}
