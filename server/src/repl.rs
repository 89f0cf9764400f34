//! Node replication on the source server: the engine's [`Source`] over the
//! catalog and store, its [`Target`] as a gRPC client of the partner, one run
//! per node at a time, run records, and the schedule.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tandem_proto::pb::{self, replication_client::ReplicationClient};
use tandem_proto::{ChunkId, MAX_MESSAGE_BYTES, ObjectId, SESSION_HEADER, UploadPacker};
use tandem_replication::{
    InventoryEntry, ObjectState, ReplicationRule, Source, StoredChunk, Target,
};
use tokio_stream::StreamExt;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::ServerState;
use crate::actlog::{self, ServerMsg};
use crate::catalog::FilespaceTimes;
use crate::error::ServerError;
use crate::model::{Node, PartnerServer, ReplRun, ReplState, RunState, now_ns};
use crate::service::convert;

/// Metadata key naming the calling server.
pub const SERVER_HEADER: &str = "x-tandem-server";

/// Nodes with a run in progress.
#[derive(Debug, Default)]
pub struct RunningRuns(Mutex<HashSet<String>>);

/// A node's claim on [`RunningRuns`], given back when dropped. It owns the
/// server state so that a started run can move to its own task.
struct RunClaim {
    state: Arc<ServerState>,
    node: String,
}

impl Drop for RunClaim {
    fn drop(&mut self) {
        self.state
            .running
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.node);
    }
}

impl RunningRuns {
    /// Claims `node`; `None` while another run of it holds the claim.
    fn claim(state: &Arc<ServerState>, node: &str) -> Option<RunClaim> {
        let mut set = state.running.0.lock().unwrap_or_else(|e| e.into_inner());
        set.insert(node.to_string()).then(|| RunClaim {
            state: state.clone(),
            node: node.to_string(),
        })
    }
}

/// A node's replication rule, as the engine takes it.
pub fn rule_of(node: &Node) -> ReplicationRule {
    node.replrule.into()
}

/// The local catalog and store as the engine's source.
struct LocalSource {
    state: Arc<ServerState>,
    node_id: i64,
}

impl LocalSource {
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&ServerState) -> Result<R, ServerError> + Send + 'static,
    ) -> Result<R, ServerError> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || f(&state)).await?
    }
}

impl Source for LocalSource {
    type Object = pb::ObjectVersion;
    type Error = ServerError;

    async fn inventory(&self) -> Result<Vec<InventoryEntry>, ServerError> {
        let node_id = self.node_id;
        let versions = self
            .blocking(move |s| Ok(s.catalog.node_versions(node_id)?))
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

    async fn read_chunks(&self, ids: &[ChunkId]) -> Result<Vec<StoredChunk>, ServerError> {
        let ids = ids.to_vec();
        self.blocking(move |s| {
            let locations = s.catalog.chunk_locations(&ids)?;
            ids.iter()
                .zip(locations)
                .map(|(id, loc)| {
                    let loc = loc.ok_or_else(|| {
                        ServerError::FailedPrecondition(format!(
                            "chunk {id} vanished from the source"
                        ))
                    })?;
                    Ok(StoredChunk {
                        id: *id,
                        data: s.store.read(loc)?,
                        raw_len: u64::from(loc.raw_len),
                    })
                })
                .collect()
        })
        .await
    }

    async fn objects(&self, ids: &[ObjectId]) -> Result<Vec<pb::ObjectVersion>, ServerError> {
        let (ids, node_id) = (ids.to_vec(), self.node_id);
        let versions = self
            .blocking(move |s| Ok(s.catalog.versions_by_id(node_id, &ids)?))
            .await?;
        Ok(versions.into_iter().map(convert::version_to_pb).collect())
    }
}

/// The partner server, over its `Replication` service.
struct RemoteTarget {
    client: ReplicationClient<Channel>,
    auth: MetadataValue<Ascii>,
    server: MetadataValue<Ascii>,
    session: MetadataValue<Ascii>,
    node: String,
}

impl RemoteTarget {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        let md = r.metadata_mut();
        md.insert("authorization", self.auth.clone());
        md.insert(SERVER_HEADER, self.server.clone());
        md.insert(SESSION_HEADER, self.session.clone());
        r
    }
}

fn states_to_pb(states: &[ObjectState]) -> Vec<pb::VersionState> {
    states
        .iter()
        .map(|s| pb::VersionState {
            object_id: s.object_id.0.to_vec(),
            active: s.active,
            deactivated_ns: s.deactivated_ns,
            ..Default::default()
        })
        .collect()
}

impl Target<pb::ObjectVersion> for RemoteTarget {
    type Error = tonic::Status;

    async fn inventory(&self) -> Result<Vec<ObjectState>, tonic::Status> {
        let mut client = self.client.clone();
        let mut stream = client
            .target_inventory(self.request(pb::TargetInventoryRequest {
                node: self.node.clone(),
            }))
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.next().await {
            for v in batch?.versions {
                let object_id = ObjectId::from_slice(&v.object_id)
                    .map_err(|e| tonic::Status::data_loss(e.to_string()))?;
                out.push(ObjectState {
                    object_id,
                    active: v.active,
                    deactivated_ns: v.deactivated_ns,
                });
            }
        }
        Ok(out)
    }

    async fn missing_chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, tonic::Status> {
        let reply = self
            .client
            .clone()
            .find_missing_chunks(self.request(pb::ReplicaChunkIdsRequest {
                node: self.node.clone(),
                chunk_ids: ids.iter().map(|c| c.as_slice().to_vec()).collect(),
            }))
            .await?
            .into_inner();
        reply
            .missing
            .iter()
            .map(|b| ChunkId::from_slice(b).map_err(|e| tonic::Status::data_loss(e.to_string())))
            .collect()
    }

    async fn put_chunks(&self, chunks: Vec<StoredChunk>) -> Result<(), tonic::Status> {
        let messages = upload_messages(&self.node, chunks);
        self.client
            .clone()
            .upload_chunks(self.request(tokio_stream::iter(messages)))
            .await?;
        Ok(())
    }

    async fn update_states(&self, states: &[ObjectState]) -> Result<u64, tonic::Status> {
        let reply = self
            .client
            .clone()
            .update_states(self.request(pb::UpdateStatesRequest {
                node: self.node.clone(),
                states: states_to_pb(states),
            }))
            .await?;
        Ok(reply.into_inner().updated)
    }

    async fn put_objects(&self, objects: Vec<pb::ObjectVersion>) -> Result<u64, tonic::Status> {
        let reply = self
            .client
            .clone()
            .put_objects(
                self.request(pb::PutObjectsRequest {
                    node: self.node.clone(),
                    objects: objects
                        .into_iter()
                        .map(|v| pb::ReplicatedObject { version: Some(v) })
                        .collect(),
                }),
            )
            .await?;
        Ok(reply.into_inner().stored)
    }

    async fn delete_objects(&self, ids: &[ObjectId]) -> Result<u64, tonic::Status> {
        let reply = self
            .client
            .clone()
            .delete_objects(self.request(pb::DeleteObjectsRequest {
                node: self.node.clone(),
                object_ids: ids.iter().map(|i| i.0.to_vec()).collect(),
            }))
            .await?;
        Ok(reply.into_inner().deleted)
    }
}

/// Splits a group of chunks into upload messages, keeping their order.
fn upload_messages(node: &str, chunks: Vec<StoredChunk>) -> Vec<pb::ReplicaChunksRequest> {
    let mut packer = UploadPacker::default();
    let mut messages: Vec<_> = chunks
        .into_iter()
        .filter_map(|c| {
            packer.push(pb::Chunk {
                id: c.id.as_slice().to_vec(),
                data: c.data.into(),
                raw_len: c.raw_len,
            })
        })
        .collect();
    messages.extend(packer.finish());
    messages
        .into_iter()
        .map(|m| pb::ReplicaChunksRequest {
            node: node.to_string(),
            chunks: m.chunks,
        })
        .collect()
}

fn ascii(text: &str, what: &str) -> Result<MetadataValue<Ascii>, ServerError> {
    text.parse().map_err(|_| {
        ServerError::InvalidArgument(format!(
            "{what} contains characters not allowed in a header"
        ))
    })
}

/// Connects to `partner` and opens a replication session.
async fn connect(
    state: &ServerState,
    partner: &PartnerServer,
    node: &str,
) -> Result<RemoteTarget, ServerError> {
    let unreachable = |cause: String| {
        ServerError::FailedPrecondition(format!(
            "replication server {} at {} is unreachable: {cause}",
            partner.name, partner.address
        ))
    };
    let endpoint = Endpoint::from_shared(partner.address.clone())
        .map_err(|e| {
            ServerError::InvalidArgument(format!(
                "address {:?} of server {}: {e}",
                partner.address, partner.name
            ))
        })?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(tandem_proto::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(tandem_proto::CONNECTION_WINDOW_BYTES)
        .max_frame_size(tandem_proto::MAX_FRAME_BYTES);
    // Mutual TLS: the partner is checked against its pinned fingerprint before
    // the first request, so the shared password and the node data never
    // reach anyone else; it checks ours the same way.
    let tls = match partner.fingerprint.parse::<tandem_tls::Fingerprint>() {
        Ok(pin) => Some(
            tandem_tls::ClientTls::new(&tandem_tls::Trust::Pinned(pin), Some(&state.identity))
                .map_err(|e| ServerError::FailedPrecondition(e.to_string()))?,
        ),
        Err(_) => None,
    };
    let channel = tandem_tls::connect(endpoint, tls.as_ref())
        .await
        .map_err(|e| match e {
            tandem_tls::ConnectError::Unreachable { cause, .. } => unreachable(cause),
            other => ServerError::FailedPrecondition(format!(
                "replication server {}: {other}",
                partner.name
            )),
        })?;
    let client = ReplicationClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let password = state.partner_password(partner)?;
    let mut target = RemoteTarget {
        client,
        auth: ascii(&format!("Bearer {password}"), "the server password")?,
        server: ascii(&state.config.name, "the server name")?,
        session: ascii("none", "session")?,
        node: node.to_string(),
    };
    let nonce: [u8; 32] = rand::random();
    let hello = target
        .client
        .clone()
        .hello(target.request(pb::HelloRequest {
            source_name: state.config.name.clone(),
            source_guid: state.guid.to_string(),
            nonce: nonce.to_vec(),
            protocol_version: tandem_proto::REPLICATION_PROTOCOL,
        }))
        .await
        .map_err(|s| match s.code() {
            tonic::Code::Unavailable => unreachable(s.message().to_string()),
            _ => ServerError::FailedPrecondition(format!(
                "replication server {} refused: {}",
                partner.name,
                s.message()
            )),
        })?
        .into_inner();
    // The target must prove it knows the shared password as well.
    let expected = crate::auth::server_proof(&password, &nonce, &hello.target_guid);
    if hello.proof.as_slice() != expected.as_slice() {
        return Err(ServerError::FailedPrecondition(format!(
            "replication server {} at {} could not prove it knows the shared server password; refusing to send data",
            partner.name, partner.address
        )));
    }
    if hello.protocol_version != tandem_proto::REPLICATION_PROTOCOL {
        return Err(ServerError::FailedPrecondition(format!(
            "replication server {} speaks replication protocol {} and this server speaks {}: \
             run the same Tandem release on both servers",
            partner.name,
            hello.protocol_version,
            tandem_proto::REPLICATION_PROTOCOL
        )));
    }
    target.session = ascii(&hello.session_token, "session token")?;
    let failover = checked_failover_address(state, partner, hello.failover_address);
    let (name, guid) = (partner.name.clone(), hello.target_guid);
    let catalog = state.catalog.clone();
    tokio::task::spawn_blocking(move || catalog.set_server_identity(&name, &guid, &failover))
        .await??;
    Ok(target)
}

/// The address a partner asks its clients to use in failover, as this
/// server will push it: an `https://` URL (a plaintext loopback one only
/// between development servers). Anything else is dropped with a warning and
/// the partner's own address is pushed instead, since the pushed address is
/// where clients send their passwords.
fn checked_failover_address(
    state: &ServerState,
    partner: &PartnerServer,
    offered: String,
) -> String {
    const MAX_URL_BYTES: usize = 2048;
    if offered.is_empty() {
        return offered;
    }
    let acceptable = offered.len() <= MAX_URL_BYTES
        && Endpoint::from_shared(offered.clone()).is_ok()
        && match tandem_tls::parse_url_scheme(&offered) {
            Ok(true) => true,
            Ok(false) => state.config.insecure_plaintext && tandem_tls::is_loopback_url(&offered),
            Err(_) => false,
        };
    if acceptable {
        offered
    } else {
        tracing::warn!(
            partner = %partner.name,
            "ignoring the failover address the partner offered: it must be an https:// URL"
        );
        String::new()
    }
}

/// Checks that `node` can be replicated now and returns it with the target.
fn preflight(state: &ServerState, node: &str) -> Result<(Node, PartnerServer), ServerError> {
    let target_name = state
        .catalog
        .setting("replserver")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ServerError::FailedPrecondition(
                "no replication server is set; use `set replserver NAME`".into(),
            )
        })?;
    let partner = state.catalog.server(&target_name)?.ok_or_else(|| {
        ServerError::FailedPrecondition(format!(
            "replication server {target_name} is not defined; use `define server`"
        ))
    })?;
    let node_rec = state.catalog.node(node)?.ok_or(ServerError::NodeNotFound {
        node: node.to_string(),
    })?;
    if node_rec.is_replica() {
        return Err(ServerError::FailedPrecondition(format!(
            "node {node} is a replica on this server (receive mode); replicate it from its source server"
        )));
    }
    if node_rec.replstate != ReplState::Enabled {
        return Err(ServerError::FailedPrecondition(format!(
            "replication is disabled for node {node}; use `update node {node} --replstate enabled`"
        )));
    }
    Ok((node_rec, partner))
}

/// Runs replication of one node to the replication server and records it.
/// Returns the run record (completed or failed).
///
/// # Errors
/// Refusals before a run starts (not configured, disabled, already running).
pub async fn replicate_node(state: Arc<ServerState>, node: String) -> Result<ReplRun, ServerError> {
    start_run(state, node).await?.finish().await
}

/// A replication run that has started: checked, its node claimed, and
/// recorded in the catalog as running. [`StartedRun::finish`] does the work.
pub struct StartedRun {
    claim: RunClaim,
    node_rec: Node,
    partner: PartnerServer,
    run: ReplRun,
}

impl std::fmt::Debug for StartedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartedRun")
            .field("run", &self.run)
            .finish()
    }
}

/// Starts a run of `node`: the checks, the claim and the catalog record,
/// so that a caller who does not wait can report the run at once.
///
/// # Errors
/// Refusals (not configured, disabled, already running) and catalog errors.
pub async fn start_run(state: Arc<ServerState>, node: String) -> Result<StartedRun, ServerError> {
    let check_state = state.clone();
    let check_node = node.clone();
    let (node_rec, partner) =
        tokio::task::spawn_blocking(move || preflight(&check_state, &check_node)).await??;
    let Some(claim) = RunningRuns::claim(&state, &node) else {
        return Err(ServerError::FailedPrecondition(format!(
            "replication of node {node} is already running; see `query replication {node}`"
        )));
    };
    let started = now_ns();
    let (catalog, n, t) = (state.catalog.clone(), node.clone(), partner.name.clone());
    let run_id = tokio::task::spawn_blocking(move || catalog.start_run(&n, &t, started)).await??;
    let run = ReplRun {
        id: run_id,
        node,
        target: partner.name.clone(),
        started_ns: started,
        state: RunState::Running,
        ..ReplRun::default()
    };
    Ok(StartedRun {
        claim,
        node_rec,
        partner,
        run,
    })
}

impl StartedRun {
    /// The run as recorded when it started (state "running").
    #[must_use]
    pub fn record(&self) -> &ReplRun {
        &self.run
    }

    /// Runs it to its end and records the outcome (catalog, activity log);
    /// returns the run record, completed or failed.
    ///
    /// # Errors
    /// Catalog errors while recording; a failed run is an `Ok` record.
    pub async fn finish(self) -> Result<ReplRun, ServerError> {
        let StartedRun {
            claim,
            node_rec,
            partner,
            run,
        } = self;
        let state = claim.state.clone();
        let node = run.node.clone();
        let outcome = run_once(&state, &node_rec, &partner).await;
        let mut run = ReplRun {
            ended_ns: now_ns(),
            ..run
        };
        match &outcome {
            Ok(report) => {
                run.state = RunState::Completed;
                run.objects_sent = report.objects_sent;
                run.bytes_sent = report.bytes_sent;
                run.chunks_skipped = report.chunks_skipped;
                run.objects_deleted = report.objects_deleted;
                run.states_updated = report.states_updated;
            }
            Err(e) => {
                run.state = RunState::Failed;
                run.message = e.to_string();
            }
        }
        let (catalog, record) = (state.catalog.clone(), run.clone());
        tokio::task::spawn_blocking(move || catalog.end_run(&record)).await??;
        let (msg, text) = match &outcome {
            Ok(r) => (
                ServerMsg::ReplicationDone,
                format!(
                    "replication of node {node} to {} completed: {} version(s), {} chunk(s) ({} bytes) sent, {} chunk(s) already there, {} state change(s), {} deletion(s)",
                    partner.name,
                    r.objects_sent,
                    r.chunks_sent,
                    r.bytes_sent,
                    r.chunks_skipped,
                    r.states_updated,
                    r.objects_deleted
                ),
            ),
            Err(e) => (
                ServerMsg::ReplicationFailed,
                format!("replication of node {node} to {} failed: {e}", partner.name),
            ),
        };
        actlog::record(&state.catalog, msg, &node, &partner.address, text).await;
        drop(claim);
        Ok(run)
    }
}

async fn run_once(
    state: &Arc<ServerState>,
    node: &Node,
    partner: &PartnerServer,
) -> Result<tandem_replication::RunReport, ServerError> {
    let target = connect(state, partner, &node.name).await?;
    target
        .client
        .clone()
        .prepare_node(target.request(pb::PrepareNodeRequest {
            node: node.name.clone(),
            password_hash: node.password_hash.clone(),
            locked: node.locked,
        }))
        .await
        .map_err(|s| {
            ServerError::FailedPrecondition(format!(
                "target refused node {}: {}",
                node.name,
                s.message()
            ))
        })?;
    let source = LocalSource {
        state: state.clone(),
        node_id: node.id,
    };
    let report = tandem_replication::replicate(&source, &target, rule_of(node))
        .await
        .map_err(|e| ServerError::FailedPrecondition(e.to_string()))?;
    let node_id = node.id;
    let filespaces = source
        .blocking(move |s| Ok(s.catalog.list_filespaces(node_id)?))
        .await?;
    target
        .client
        .clone()
        .finish_run(
            target.request(pb::FinishRunRequest {
                node: node.name.clone(),
                filespaces: filespaces
                    .into_iter()
                    .map(|f| pb::FilespaceTimes {
                        name: f.name,
                        last_backup_start_ns: f.last_backup_start_ns,
                        last_backup_end_ns: f.last_backup_end_ns,
                    })
                    .collect(),
                replicated_ns: now_ns(),
            }),
        )
        .await
        .map_err(|s| ServerError::FailedPrecondition(format!("target: {}", s.message())))?;
    let _ = target
        .client
        .clone()
        .bye(target.request(pb::ByeRequest {}))
        .await;
    Ok(report)
}

/// Converts filespace times received from a source.
pub fn filespace_times(f: pb::FilespaceTimes) -> FilespaceTimes {
    FilespaceTimes {
        name: f.name,
        last_backup_start_ns: f.last_backup_start_ns,
        last_backup_end_ns: f.last_backup_end_ns,
    }
}

/// Replicates every node with replication enabled, every `minutes`, until shutdown.
pub async fn schedule(state: Arc<ServerState>, shutdown: tokio_util::sync::CancellationToken) {
    let minutes = state.config.replication_interval_minutes;
    if minutes == 0 {
        return;
    }
    let period = std::time::Duration::from_secs(minutes * 60);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let catalog = state.catalog.clone();
        let nodes = match tokio::task::spawn_blocking(move || catalog.list_nodes("")).await {
            Ok(Ok(nodes)) => nodes,
            Ok(Err(e)) => {
                tracing::warn!(cause = %e, "scheduled replication skipped: the nodes cannot be read");
                continue;
            }
            Err(e) => {
                tracing::warn!(cause = %e, "scheduled replication skipped");
                continue;
            }
        };
        for (node, _) in nodes {
            if node.replstate == ReplState::Enabled
                && !node.is_replica()
                && let Err(e) = replicate_node(state.clone(), node.name.clone()).await
            {
                tracing::warn!(node = %node.name, cause = %e, "scheduled replication not started");
            }
        }
    }
}

/// `query replnode`: per filespace, versions and bytes on this server (as the
/// rule selects them) and on the replication server.
///
/// # Errors
/// Node or replication server unknown; the target unreachable.
pub async fn compare_node(
    state: Arc<ServerState>,
    node: String,
) -> Result<pb::QueryReplNodeResponse, ServerError> {
    let check = state.clone();
    let lookup = node.clone();
    let (node_rec, partner, local) = tokio::task::spawn_blocking(move || {
        let node_rec = check
            .catalog
            .node(&lookup)?
            .ok_or(ServerError::NodeNotFound {
                node: lookup.clone(),
            })?;
        let target = check.catalog.setting("replserver")?.unwrap_or_default();
        let partner = check.catalog.server(&target)?.ok_or_else(|| {
            ServerError::FailedPrecondition(
                "no replication server is set; use `set replserver NAME`".into(),
            )
        })?;
        let local = check.catalog.version_states(node_rec.id)?;
        Ok::<_, ServerError>((node_rec, partner, local))
    })
    .await??;
    let rule = rule_of(&node_rec);
    let mut table: std::collections::BTreeMap<String, pb::ReplFilespace> = Default::default();
    for (fs, v) in local {
        if rule == ReplicationRule::None || (rule == ReplicationRule::ActiveData && !v.active) {
            continue;
        }
        let row = table
            .entry(fs.clone())
            .or_insert_with(|| pb::ReplFilespace {
                name: fs,
                ..Default::default()
            });
        row.source_objects += 1;
        row.source_bytes += v.size;
    }
    let target = connect(&state, &partner, &node).await?;
    let reply = target
        .client
        .clone()
        .target_inventory(target.request(pb::TargetInventoryRequest { node: node.clone() }))
        .await;
    if let Ok(stream) = reply {
        let mut stream = stream.into_inner();
        while let Some(batch) = stream.next().await {
            let batch = batch
                .map_err(|s| ServerError::FailedPrecondition(format!("target: {}", s.message())))?;
            for v in batch.versions {
                let row = table
                    .entry(v.filespace.clone())
                    .or_insert_with(|| pb::ReplFilespace {
                        name: v.filespace.clone(),
                        ..Default::default()
                    });
                row.target_objects += 1;
                row.target_bytes += v.size;
            }
        }
    }
    let _ = target
        .client
        .clone()
        .bye(target.request(pb::ByeRequest {}))
        .await;
    Ok(pb::QueryReplNodeResponse {
        node,
        target: partner.name,
        filespaces: table.into_values().collect(),
        last_replication_ns: node_rec.last_repl_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8, len: usize) -> StoredChunk {
        StoredChunk {
            id: ChunkId::from_slice(&[n; 32]).expect("32-byte id"),
            data: vec![n; len],
            raw_len: len as u64,
        }
    }

    #[test]
    fn upload_messages_split_by_size_and_keep_order() {
        // Two fit in a message, a third would not.
        let piece = tandem_proto::UPLOAD_MESSAGE_BYTES * 3 / 8;
        let chunks: Vec<_> = (0..10).map(|n| chunk(n, piece)).collect();
        let messages = upload_messages("N1", chunks);
        let sizes: Vec<usize> = messages.iter().map(|m| m.chunks.len()).collect();
        assert_eq!(sizes, vec![2, 2, 2, 2, 2]);
        assert!(messages.iter().all(|m| m.node == "N1"));
        let order: Vec<u8> = messages
            .iter()
            .flat_map(|m| m.chunks.iter().map(|c| c.id[0]))
            .collect();
        assert_eq!(order, (0..10).collect::<Vec<u8>>());
    }

    #[test]
    fn a_chunk_larger_than_a_message_travels_alone() {
        let quarter = tandem_proto::UPLOAD_MESSAGE_BYTES / 4;
        let messages = upload_messages(
            "N1",
            vec![chunk(1, quarter), chunk(2, 5 * quarter), chunk(3, quarter)],
        );
        let sizes: Vec<usize> = messages.iter().map(|m| m.chunks.len()).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
        assert!(upload_messages("N1", Vec::new()).is_empty());
    }
}
