//! The engine's [`Target`] over a local repository: a replica node's
//! versions and chunks written straight into this data directory's catalog
//! and containers.
//!
//! The `Replication` service hands every call a partner makes to one of
//! these, after checking who is calling; a local vault or a recovery that
//! replicates between two data directories on one host uses it directly.
//! It keeps the target's rules whoever drives it: a replica belongs to the
//! server that created it, chunks are stored (fsynced, then indexed) before
//! any version that needs them is accepted, and chunks reported present stay
//! pinned for the session until it ends.

use std::sync::Arc;

use tandem_proto::{ChunkId, ObjectId, StoredChunk};
use tandem_replication::{ObjectState, Target};

use crate::catalog::{FilespaceTimes, VersionState};
use crate::error::ServerError;
use crate::model::{Node, StoredVersion, normalize_node_name, now_ns};
use crate::repository::Repository;
use crate::repository::ingest::ChunkIngest;

/// One replica node of a repository, written for one source server.
#[derive(Debug, Clone)]
pub struct LocalTarget {
    repo: Arc<Repository>,
    node_id: i64,
    /// The session whose pins keep reported chunks alive until commit.
    session: u64,
}

/// What a source says about the node it replicates when a run begins.
#[derive(Debug, Clone)]
pub struct ReplicaOf {
    /// The node's name.
    pub node: String,
    /// Its password hash (the replica accepts the same password at failover).
    pub password_hash: String,
    /// Whether it is locked on the source.
    pub locked: bool,
    /// The source server's name.
    pub source: String,
}

impl LocalTarget {
    /// Creates or updates the replica of `replica.node` in `repo` (a run's
    /// first step), refusing a node of this server's own and another
    /// server's replica.
    ///
    /// # Errors
    /// A bad node name, the refusals above, catalog errors.
    pub async fn prepare(repo: &Arc<Repository>, replica: ReplicaOf) -> Result<(), ServerError> {
        let name = checked_name(&replica.node)?;
        // Stored, such a hash would make every logon of the replica a
        // refusal; said now, the source's operator sees why.
        if let Some(why) = crate::auth::hash_cost_refused(&replica.password_hash) {
            return Err(ServerError::InvalidArgument(format!(
                "node {}: {why}; its password cannot be replicated (set a new one on the source server)",
                replica.node
            )));
        }
        repo.blocking(move |r| {
            r.catalog.prepare_replica(
                &name,
                &replica.password_hash,
                replica.locked,
                &replica.source,
                now_ns(),
            )
        })
        .await
    }

    /// The target for replica `node` of server `source`, writing under
    /// `session`'s pins. The node must be a replica here, and `source`'s.
    ///
    /// # Errors
    /// [`ServerError::ReplicaNotPrepared`], [`ServerError::PermissionDenied`]
    /// (another server's replica), [`ServerError::FailedPrecondition`] (a node
    /// of this server's own), catalog errors.
    pub async fn open(
        repo: &Arc<Repository>,
        node: &str,
        source: &str,
        session: u64,
    ) -> Result<Self, ServerError> {
        let name = checked_name(node)?;
        let found = repo.blocking(move |r| Ok(r.catalog.node(&name)?)).await?;
        let node_id = replica_id(found, node, source)?;
        Ok(LocalTarget {
            repo: repo.clone(),
            node_id,
            session,
        })
    }

    /// Every version the replica holds, with its filespace and size.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn held_versions(&self) -> Result<Vec<(String, VersionState)>, ServerError> {
        let node = self.node_id;
        self.repo
            .blocking(move |r| Ok(r.catalog.version_states(node)?))
            .await
    }

    /// An ingest for a stream of chunks sent for the replica (the service
    /// feeds it message by message instead of gathering a whole upload).
    #[must_use]
    pub fn chunk_ingest(&self) -> ChunkIngest {
        ChunkIngest::new(self.repo.clone(), self.session, self.node_id)
    }

    /// Records the end of a run: the source's filespace backup times and the
    /// replication time failover clients judge currency by.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn finish(
        &self,
        filespaces: Vec<FilespaceTimes>,
        replicated_ns: i64,
    ) -> Result<(), ServerError> {
        let node = self.node_id;
        self.repo
            .blocking(move |r| Ok(r.catalog.finish_replica(node, &filespaces, replicated_ns)?))
            .await
    }
}

fn checked_name(node: &str) -> Result<String, ServerError> {
    normalize_node_name(node)
        .ok_or_else(|| ServerError::InvalidArgument(format!("bad node name {node:?}")))
}

/// The replica's row id: it must be in receive mode and belong to `source`,
/// the server that created it (SPEC 2.5).
fn replica_id(found: Option<Node>, asked: &str, source: &str) -> Result<i64, ServerError> {
    match found {
        Some(n) if n.is_replica() && n.repl_server == source => Ok(n.id),
        Some(n) if n.is_replica() => Err(ServerError::PermissionDenied(format!(
            "node {} is the replica of server {}; server {source} may not change it (to move it, remove the node here first: `remove replnode`, `delete filespace`, `remove node`)",
            n.name, n.repl_server
        ))),
        Some(n) => Err(ServerError::FailedPrecondition(format!(
            "node {} is not a replica on this server",
            n.name
        ))),
        None => Err(ServerError::ReplicaNotPrepared {
            node: asked.to_string(),
        }),
    }
}

impl Target<StoredVersion> for LocalTarget {
    type Error = ServerError;

    async fn inventory(&self) -> Result<Vec<ObjectState>, ServerError> {
        Ok(self
            .held_versions()
            .await?
            .into_iter()
            .map(|(_, v)| v.into())
            .collect())
    }

    async fn missing_chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, ServerError> {
        let (ids, session, node) = (ids.to_vec(), self.session, self.node_id);
        self.repo
            .blocking(move |r| r.missing_and_pin(session, node, &ids))
            .await
    }

    async fn put_chunks(&self, chunks: Vec<StoredChunk>) -> Result<(), ServerError> {
        let mut ingest = self.chunk_ingest();
        ingest.push(chunks).await?;
        ingest.finish().await?;
        Ok(())
    }

    async fn update_states(&self, states: &[ObjectState]) -> Result<u64, ServerError> {
        let (states, node) = (states.to_vec(), self.node_id);
        self.repo
            .blocking(move |r| Ok(r.catalog.apply_states(node, &states)?))
            .await
    }

    async fn put_objects(&self, objects: Vec<StoredVersion>) -> Result<u64, ServerError> {
        let node = self.node_id;
        self.repo
            .blocking(move |r| {
                let _pinned = r.pin_for_commit(objects.iter().flat_map(|v| &v.chunks));
                r.catalog.put_replicated(node, &objects)
            })
            .await
    }

    async fn delete_objects(&self, ids: &[ObjectId]) -> Result<u64, ServerError> {
        let (ids, node) = (ids.to_vec(), self.node_id);
        self.repo
            .blocking(move |r| Ok(r.catalog.delete_replicated(node, &ids)?))
            .await
    }
}
