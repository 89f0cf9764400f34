//! Tandem's node-replication engine.
//!
//! A source server pushes one node's data to its replication server. The engine
//! sees both sides only through the [`Source`] and [`Target`] traits, so it
//! knows nothing of SQLite, containers or gRPC. The server implements
//! `Source` over its repository (catalog + containers) and `Target` twice:
//! over a local repository (what its `Replication` service delegates to, and
//! what a local vault or a recovery writes into) and as a gRPC client of a
//! partner server, whose service hands each call to its own local target.
//! The objects that cross the engine are the server's domain type; protobuf
//! stays at the gRPC edges.
//!
//! What is sent, in which order, and why an interrupted run resumes safely:
//! 1. **Plan** ([`plan::plan`], pure): compare the source inventory with the
//!    target's by stable [`ObjectId`]. Objects missing on the target are sent;
//!    objects whose state changed (turned inactive) get a state update;
//!    objects the target holds that the source no longer has (deleted,
//!    expired, or left out by the rule) are deleted.
//! 2. **Chunks**: ask the target which chunk ids of the objects to send it
//!    lacks, and send only those. The target stores them as for a backup:
//!    data fsynced, then indexed.
//! 3. **State changes, then metadata**: the target commits versions in
//!    transactions and only when all their chunks are indexed there, so it
//!    never holds an object whose data is missing.
//! 4. **Deletions**, last: until then the target still holds a full replica.
//!
//! A run cut at any point leaves the target with whole objects only. The next
//! run plans again from both inventories: committed objects are not sent
//! again, and chunks that arrived without their objects are found present.
//!
//! Layout: [`plan`] (pure planning), [`run`] (one run), the traits here.

pub mod plan;
pub mod run;

pub use run::DEFAULT_OBJECT_BATCH;

use std::future::Future;

pub use plan::{InventoryEntry, ObjectState, ReplicationPlan, ReplicationRule};
pub use run::{ReplicationError, RunReport, replicate};
pub use tandem_proto::{ChunkId, ObjectId, StoredChunk};

/// The side that holds the node's data.
pub trait Source: Sync {
    /// A full version record, passed through to the target unchanged.
    type Object: Send;
    /// Errors reading the source.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Every visible version of the node, active and inactive.
    fn inventory(&self) -> impl Future<Output = Result<Vec<InventoryEntry>, Self::Error>> + Send;

    /// The stored bytes of chunks, in the order asked.
    fn read_chunks(
        &self,
        ids: &[ChunkId],
    ) -> impl Future<Output = Result<Vec<StoredChunk>, Self::Error>> + Send;

    /// Full records of versions, by id.
    fn objects(
        &self,
        ids: &[ObjectId],
    ) -> impl Future<Output = Result<Vec<Self::Object>, Self::Error>> + Send;
}

/// The side that receives the replica.
pub trait Target<O>: Sync {
    /// Errors talking to or writing the target.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The versions the target holds for the node, with their state.
    fn inventory(&self) -> impl Future<Output = Result<Vec<ObjectState>, Self::Error>> + Send;

    /// Of `ids`, those the target does not store.
    fn missing_chunks(
        &self,
        ids: &[ChunkId],
    ) -> impl Future<Output = Result<Vec<ChunkId>, Self::Error>> + Send;

    /// Stores chunks (fsynced, then indexed).
    fn put_chunks(
        &self,
        chunks: Vec<StoredChunk>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Applies state changes.
    fn update_states(
        &self,
        states: &[ObjectState],
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// Stores versions whose chunks are all on the target.
    fn put_objects(&self, objects: Vec<O>)
    -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// Deletes versions.
    fn delete_objects(
        &self,
        ids: &[ObjectId],
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// Versions handed to [`Target::put_objects`] at once; the target
    /// commits each call in one or a few transactions. A server serves other sessions while it
    /// commits, so the default keeps its transactions short; a target
    /// nobody else uses (a local vault) may take more per call.
    fn object_batch(&self) -> usize {
        DEFAULT_OBJECT_BATCH
    }
}
