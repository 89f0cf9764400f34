//! The engine's [`Target`] as a gRPC client of the partner server's
//! `Replication` service: the connection (mutual TLS against the pinned
//! fingerprint), the handshake (both sides prove the shared password, the
//! protocol versions must match), and each engine call as an RPC, with the
//! conversion to protobuf at this edge. The partner's service hands each
//! call to its own [`super::LocalTarget`].

use std::sync::Arc;
use std::time::Duration;

use tandem_proto::pb::{self, replication_client::ReplicationClient};
use tandem_proto::{
    ChunkId, MAX_MESSAGE_BYTES, ObjectId, SESSION_HEADER, ServerGuid, StoredChunk, UploadPacker,
};
use tandem_replication::{ObjectState, Target};
use tokio_stream::StreamExt;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::ServerState;
use crate::catalog::{FilespaceTimes, VersionState};
use crate::convert;
use crate::error::ServerError;
use crate::model::{Node, PartnerServer, StoredVersion};

/// Metadata key naming the calling server.
pub const SERVER_HEADER: &str = "x-tandem-server";

/// The partner server, over its `Replication` service, for one node.
pub struct RemoteTarget {
    client: ReplicationClient<Channel>,
    auth: MetadataValue<Ascii>,
    server: MetadataValue<Ascii>,
    session: MetadataValue<Ascii>,
    node: String,
    /// The partner's name, for errors.
    partner: String,
    /// This server's data: how many versions of the node it holds bounds
    /// how many the partner may say it holds ([`Self::held_versions`]).
    repo: Arc<crate::repository::Repository>,
}

/// Versions a partner may list for a node without this server counting its
/// own: a replica holds what was sent, plus what was deleted here since.
const HELD_VERSIONS_FREE: usize = 1_000_000;
/// The average filespace name bytes a partner's list may carry per entry.
const HELD_NAME_BYTES: usize = 256;
/// The longest a partner may take to list what it holds.
const HELD_VERSIONS_DEADLINE: Duration = Duration::from_secs(3600);

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

impl std::fmt::Debug for RemoteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTarget")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl RemoteTarget {
    /// Maps the partner's refusal of `what` to an error naming the partner.
    fn refused(&self, what: String) -> impl FnOnce(tonic::Status) -> ServerError + '_ {
        move |s| ServerError::Partner {
            server: self.partner.clone(),
            reason: format!("{what}: {}", s.message()),
        }
    }

    /// Asks the partner to create or update the replica of `node` (a run's
    /// first step).
    ///
    /// # Errors
    /// The partner's refusal, as [`ServerError::FailedPrecondition`].
    pub async fn prepare(&self, node: &Node) -> Result<(), ServerError> {
        self.client
            .clone()
            .prepare_node(self.request(pb::PrepareNodeRequest {
                node: node.name.clone(),
                password_hash: node.password_hash.clone(),
                locked: node.locked,
            }))
            .await
            .map_err(self.refused(format!("refused node {}", node.name)))?;
        Ok(())
    }

    /// Every version the partner holds for the node, with filespace and size.
    ///
    /// The list is the partner's word: a filespace name must be one a
    /// client could send, the list may be at most twice the versions held
    /// here plus [`HELD_VERSIONS_FREE`], and it must be given within
    /// [`HELD_VERSIONS_DEADLINE`], so a partner that streams without end
    /// cannot fill this server's memory.
    ///
    /// # Errors
    /// The call fails, returns a malformed id or filespace, or goes past
    /// those bounds.
    pub async fn held_versions(&self) -> Result<Vec<(String, VersionState)>, tonic::Status> {
        tokio::time::timeout(HELD_VERSIONS_DEADLINE, self.list_held_versions())
            .await
            .map_err(|_| {
                tonic::Status::deadline_exceeded(format!(
                    "server {} took over {} s to list the versions it holds of node {}",
                    self.partner,
                    HELD_VERSIONS_DEADLINE.as_secs(),
                    self.node
                ))
            })?
    }

    async fn list_held_versions(&self) -> Result<Vec<(String, VersionState)>, tonic::Status> {
        let mut client = self.client.clone();
        let mut stream = client
            .target_inventory(self.request(pb::TargetInventoryRequest {
                node: self.node.clone(),
            }))
            .await?
            .into_inner();
        let mut out = Vec::new();
        let mut limit = HELD_VERSIONS_FREE;
        let mut counted_here = false;
        // Each entry carries its filespace's name: on average at most
        // HELD_NAME_BYTES each (a node has a few short ones).
        let mut name_bytes = 0usize;
        while let Some(batch) = stream.next().await {
            for v in batch?.versions {
                name_bytes = name_bytes.saturating_add(v.filespace.len());
                if name_bytes > limit.saturating_mul(HELD_NAME_BYTES) {
                    return Err(tonic::Status::out_of_range(format!(
                        "server {} lists versions of node {} under filespace names of {name_bytes} bytes in all; refused",
                        self.partner, self.node
                    )));
                }
                if out.len() >= limit {
                    if counted_here {
                        return Err(tonic::Status::out_of_range(format!(
                            "server {} lists more than {limit} versions of node {}, which this server never sent it; refused",
                            self.partner, self.node
                        )));
                    }
                    limit = limit.saturating_add(self.versions_here().await?.saturating_mul(2));
                    counted_here = true;
                }
                // Entries come by filespace: each name is checked once.
                if out
                    .last()
                    .is_none_or(|(last, _): &(String, _)| *last != v.filespace)
                {
                    convert::check_path(&v.filespace).map_err(|e| {
                        tonic::Status::data_loss(format!(
                            "server {} named a filespace no client could send: {e}",
                            self.partner
                        ))
                    })?;
                }
                let state = convert::version_state_from_pb(&v)
                    .map_err(|e| tonic::Status::data_loss(e.to_string()))?;
                out.push((v.filespace, state));
            }
        }
        Ok(out)
    }

    /// How many versions of the node this server holds.
    async fn versions_here(&self) -> Result<usize, tonic::Status> {
        let (repo, node) = (self.repo.clone(), self.node.clone());
        let count = repo
            .blocking(move |r| Ok(r.catalog.count_node_versions(&node)?))
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// Ends the run on the partner: the source's filespace times and the
    /// replication time.
    ///
    /// # Errors
    /// The partner's refusal, as [`ServerError::FailedPrecondition`].
    pub async fn finish(
        &self,
        filespaces: Vec<FilespaceTimes>,
        replicated_ns: i64,
    ) -> Result<(), ServerError> {
        self.client
            .clone()
            .finish_run(
                self.request(pb::FinishRunRequest {
                    node: self.node.clone(),
                    filespaces: filespaces
                        .into_iter()
                        .map(convert::filespace_times_to_pb)
                        .collect(),
                    replicated_ns,
                }),
            )
            .await
            .map_err(self.refused("ending the run".into()))?;
        Ok(())
    }

    /// The partner's stored copies of `ids` (at most
    /// [`tandem_proto::MAX_REPAIR_CHUNK_IDS`]) of the node, for self-repair:
    /// those it holds for the node, as stored, unverified (the caller
    /// verifies each).
    ///
    /// # Errors
    /// The partner's refusal; a malformed reply.
    pub async fn read_partner_chunks(
        &self,
        ids: &[ChunkId],
    ) -> Result<Vec<StoredChunk>, ServerError> {
        let mut stream = self
            .client
            .clone()
            .read_shared_chunks(self.request(pb::ReplicaChunkIdsRequest {
                node: self.node.clone(),
                chunk_ids: ids.iter().map(|c| c.as_slice().to_vec()).collect(),
            }))
            .await
            .map_err(self.refused("reading chunks for a repair".into()))?
            .into_inner();
        let asked: std::collections::HashSet<&ChunkId> = ids.iter().collect();
        let mut copies = Vec::new();
        while let Some(message) = stream.next().await {
            let message = message.map_err(self.refused("reading chunks for a repair".into()))?;
            for chunk in convert::chunks_from_pb(message.chunk.into_iter().collect())? {
                // Only what was asked, once each, and no larger than a
                // chunk can be.
                if asked.contains(&chunk.id)
                    && copies.len() < ids.len()
                    && chunk.data.len() <= tandem_proto::MAX_RAW_CHUNK_BYTES + 65_536
                {
                    copies.push(chunk);
                }
            }
        }
        Ok(copies)
    }

    /// The replica nodes the partner holds for this server.
    ///
    /// # Errors
    /// The partner's refusal.
    pub async fn held_replicas(&self) -> Result<Vec<String>, ServerError> {
        Ok(self
            .client
            .clone()
            .held_replicas(self.request(pb::HeldReplicasRequest {}))
            .await
            .map_err(self.refused("listing the replicas it holds".into()))?
            .into_inner()
            .nodes)
    }

    /// Asks the partner to replicate its replica of the node back to this
    /// server (recovery); returns when the run has ended, with what it sent,
    /// or `None` when the partner holds no replica of the node.
    ///
    /// # Errors
    /// The partner's refusal or failed run, naming the partner.
    pub async fn replicate_back(
        &self,
    ) -> Result<Option<tandem_replication::RunReport>, ServerError> {
        let reply = match self
            .client
            .clone()
            .replicate_back(self.request(pb::ReplicateBackRequest {
                node: self.node.clone(),
            }))
            .await
        {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
            Err(status) => {
                return Err(self.refused(format!("sending back node {}", self.node))(
                    status,
                ));
            }
        };
        Ok(Some(tandem_replication::RunReport {
            objects_sent: reply.objects_sent,
            bytes_sent: reply.bytes_sent,
            chunks_sent: reply.chunks_sent,
            chunks_skipped: reply.chunks_skipped,
            states_updated: reply.states_updated,
            objects_deleted: 0,
        }))
    }

    /// Hands the node over to the partner, the last step of a planned role
    /// switch (`TakeOver`).
    /// `me` is this server's GUID and failover address, for the partner to
    /// push to the node's clients.
    pub async fn take_over(
        &self,
        switch_id: &str,
        versions: u64,
        me: (ServerGuid, String),
    ) -> HandOver {
        let reply = self
            .client
            .clone()
            .take_over(self.request(pb::TakeOverRequest {
                node: self.node.clone(),
                switch_id: switch_id.to_string(),
                source_guid: me.0.to_string(),
                failover_address: me.1,
                versions,
            }))
            .await;
        match reply {
            Ok(reply) => HandOver::Taken {
                already: reply.into_inner().already,
            },
            Err(status) if is_definite_refusal(&status) => {
                HandOver::Refused(status.message().to_string())
            }
            Err(status) => HandOver::Unknown(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    /// Asks the partner never to take the node over for `switch_id` (the
    /// undoing of a switch that was handing over).
    pub async fn abandon_take_over(&self, switch_id: &str) -> Abandon {
        let reply = self
            .client
            .clone()
            .abandon_take_over(self.request(pb::TakeOverRequest {
                node: self.node.clone(),
                switch_id: switch_id.to_string(),
                ..pb::TakeOverRequest::default()
            }))
            .await;
        match reply {
            Ok(_) => Abandon::Fenced,
            Err(status) if status.code() == tonic::Code::AlreadyExists => Abandon::AlreadyTaken,
            Err(status) => Abandon::Unknown(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    /// Ends the replication session on the partner (its pins go with it).
    /// A failure is only logged: the partner ends idle sessions itself.
    pub async fn bye(&self) {
        if let Err(status) = self
            .client
            .clone()
            .bye(self.request(pb::ByeRequest {}))
            .await
        {
            tracing::debug!(node = %self.node, cause = %status.message(), "replication bye failed");
        }
    }
}

impl Target<StoredVersion> for RemoteTarget {
    type Error = tonic::Status;

    async fn inventory(&self) -> Result<Vec<ObjectState>, tonic::Status> {
        Ok(self
            .held_versions()
            .await?
            .into_iter()
            .map(|(_, v)| v.into())
            .collect())
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
                states: states.iter().map(convert::object_state_to_pb).collect(),
            }))
            .await?;
        Ok(reply.into_inner().updated)
    }

    async fn put_objects(&self, objects: Vec<StoredVersion>) -> Result<u64, tonic::Status> {
        let reply = self
            .client
            .clone()
            .put_objects(
                self.request(pb::PutObjectsRequest {
                    node: self.node.clone(),
                    objects: objects
                        .into_iter()
                        .map(|v| pb::ReplicatedObject {
                            version: Some(convert::version_to_pb(v)),
                        })
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
        .filter_map(|c| packer.push(convert::chunk_to_pb(c)))
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

/// Connects to `partner`, checks its identity and opens a replication
/// session for `node`.
///
/// # Errors
/// The partner unreachable, its certificate or proof wrong, a protocol
/// mismatch; each says which server and what to do.
pub async fn connect(
    state: &ServerState,
    partner: &PartnerServer,
    node: &str,
) -> Result<RemoteTarget, ServerError> {
    let failed = |reason: String| ServerError::Partner {
        server: partner.name.clone(),
        reason,
    };
    let unreachable =
        |cause: String| failed(format!("unreachable at {}: {cause}", partner.address));
    let endpoint =
        tandem_proto::bulk_endpoint(&partner.address, Duration::from_secs(5)).map_err(|e| {
            ServerError::InvalidArgument(format!(
                "address {:?} of server {}: {e}",
                partner.address, partner.name
            ))
        })?;
    // Mutual TLS: the partner is checked against its pinned fingerprint before
    // the first request, so the shared password and the node data never
    // reach anyone else; it checks ours the same way.
    let tls = match partner.fingerprint.parse::<tandem_tls::Fingerprint>() {
        Ok(pin) => Some(
            tandem_tls::ClientTls::new(&tandem_tls::Trust::Pinned(pin), Some(&state.identity))
                .map_err(|e| failed(e.to_string()))?,
        ),
        Err(_) => None,
    };
    let channel = tandem_tls::connect(endpoint, tls.as_ref())
        .await
        .map_err(|e| match e {
            tandem_tls::ConnectError::Unreachable { cause, .. } => unreachable(cause),
            other => failed(other.to_string()),
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
        partner: partner.name.clone(),
        repo: state.repo.clone(),
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
            _ => failed(format!("refused: {}", s.message())),
        })?
        .into_inner();
    // The target must prove it knows the shared password as well.
    let target_guid: ServerGuid = hello.target_guid.parse().map_err(|e| {
        failed(format!(
            "it presented {:?} as its GUID ({e}); refusing to send data",
            hello.target_guid
        ))
    })?;
    let expected = crate::auth::server_proof(&password, &nonce, target_guid);
    if hello.proof.as_slice() != expected.as_slice() {
        return Err(failed(format!(
            "the server at {} could not prove it knows the shared server password; refusing to send data",
            partner.address
        )));
    }
    target.session = ascii(&hello.session_token, "session token")?;
    if hello.protocol_version != tandem_proto::REPLICATION_PROTOCOL {
        // The partner is proven but speaks another protocol: end the session
        // it opened rather than leave it to its idle timeout.
        target.bye().await;
        return Err(failed(format!(
            "it speaks replication protocol {} and this server speaks {}: \
             run the same Tandem release on both servers",
            hello.protocol_version,
            tandem_proto::REPLICATION_PROTOCOL
        )));
    }
    let failover = checked_failover_address(state, partner, hello.failover_address);
    let name = partner.name.clone();
    let catalog = state.repo.catalog.clone();
    tokio::task::spawn_blocking(move || catalog.set_server_identity(&name, target_guid, &failover))
        .await??;
    Ok(target)
}

/// The address a partner asks its clients to use in failover, as this
/// server will push it: an `https://` URL (a plaintext loopback one only
/// between development servers). Anything else is dropped with a warning and
/// the partner's own address is pushed instead, since the pushed address is
/// where clients send their passwords.
pub(super) fn checked_failover_address(
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::bytes::Bytes;

    fn chunk(n: u8, len: usize) -> StoredChunk {
        StoredChunk {
            id: ChunkId::from_slice(&[n; 32]).expect("32-byte id"),
            data: Bytes::from(vec![n; len]),
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

/// What the partner said when it was handed a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandOver {
    /// The node is the partner's now (`already`: an earlier call did it).
    Taken {
        /// An earlier call with the same switch id had done it.
        already: bool,
    },
    /// The partner refused before changing anything: it does not hold the
    /// node as its own.
    Refused(String),
    /// No answer, or an answer that does not say what happened: the partner
    /// may or may not have taken the node over.
    Unknown(String),
}

/// What the partner said when asked to abandon a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abandon {
    /// It promised never to take the node over for that switch.
    Fenced,
    /// It had taken the node over already.
    AlreadyTaken,
    /// No answer, or another refusal: nothing is known.
    Unknown(String),
}

/// Whether a status is the partner's considered "no" (its handler refused
/// before changing anything), rather than a lost connection or a failure
/// whose effect is unknown.
fn is_definite_refusal(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::FailedPrecondition
            | tonic::Code::PermissionDenied
            | tonic::Code::NotFound
            | tonic::Code::InvalidArgument
            | tonic::Code::Unauthenticated
    )
}
