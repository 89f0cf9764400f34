//! The engine's [`Source`] over a local repository: one node's versions,
//! their chunks and their full records, read without any gRPC.

use std::sync::Arc;

use tandem_proto::{ChunkId, ObjectId, StoredChunk};
use tandem_replication::{InventoryEntry, Source};

use crate::error::ServerError;
use crate::model::StoredVersion;
use crate::repository::Repository;

/// Node `node_id` of `repo`, as the engine's source.
#[derive(Debug, Clone)]
pub struct LocalSource {
    repo: Arc<Repository>,
    node_id: i64,
}

impl LocalSource {
    /// The source of node `node_id` (a row id of `repo`'s catalog).
    #[must_use]
    pub fn new(repo: Arc<Repository>, node_id: i64) -> Self {
        LocalSource { repo, node_id }
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Repository, i64) -> Result<R, ServerError> + Send + 'static,
    ) -> Result<R, ServerError> {
        let node_id = self.node_id;
        self.repo.blocking(move |repo| f(repo, node_id)).await
    }
}

impl Source for LocalSource {
    type Object = StoredVersion;
    type Error = ServerError;

    async fn inventory(&self) -> Result<Vec<InventoryEntry>, ServerError> {
        let versions = self
            .blocking(|repo, node| Ok(repo.catalog.node_versions(node)?))
            .await?;
        Ok(versions
            .into_iter()
            .map(|v| InventoryEntry {
                object_id: v.object_id,
                active: v.active,
                deactivated_ns: v.deactivated_ns,
                chunks: v.chunks,
            })
            .collect())
    }

    /// Not checked against the node here: the engine asks only for chunks
    /// of this node's own versions (its plan), and keeps of a target's
    /// answer only the ids it asked about.
    async fn read_chunks(&self, ids: &[ChunkId]) -> Result<Vec<StoredChunk>, ServerError> {
        let ids = ids.to_vec();
        self.blocking(move |repo, _| repo.read_chunks(&ids)).await
    }

    async fn objects(&self, ids: &[ObjectId]) -> Result<Vec<StoredVersion>, ServerError> {
        let ids = ids.to_vec();
        self.blocking(move |repo, node| Ok(repo.catalog.versions_by_id(node, &ids)?))
            .await
    }
}
