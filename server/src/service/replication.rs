//! The `Replication` service: what a source server calls on this server when
//! this server is its replication target. Every call must name a defined
//! server and present the credential shared with it.

use std::pin::Pin;
use std::sync::Arc;

use tandem_proto::pb::{self, replication_server::Replication};
use tandem_proto::{ObjectId, SESSION_HEADER};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::{client_fingerprint, peer_of};
use crate::ServerState;
use crate::actlog::{self, ServerMsg};
use crate::auth::Token;
use crate::catalog::VersionState;
use crate::error::ServerError;
use crate::model::{PartnerServer, normalize_node_name, now_ns};
use crate::repl::{SERVER_HEADER, filespace_times};

/// How far a source's clock may run ahead of ours.
const MAX_CLOCK_SKEW_NS: i64 = 5 * 60 * 1_000_000_000;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Implements `tandem.v1.Replication` over the server state.
#[derive(Debug, Clone)]
pub struct ReplicationService {
    state: Arc<ServerState>,
}

impl ReplicationService {
    /// A service over `state`.
    pub fn new(state: Arc<ServerState>) -> Self {
        ReplicationService { state }
    }

    /// Checks the calling server's name and credential; returns its name.
    async fn authorize<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let md = request.metadata();
        let name = md
            .get(SERVER_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_uppercase();
        let presented = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        let lookup = name.clone();
        let partner = super::blocking(&self.state, move |s| Ok(s.catalog.server(&lookup)?)).await?;
        let refusal = match partner {
            None => Some(format!(
                "server {name:?} is not defined here; run `define server` on both servers"
            )),
            Some(p) => match self.certificate_refusal(request, &p) {
                Some(why) => Some(why),
                None => match self.state.partner_password(&p) {
                    Err(unreadable) => Some(unreadable.to_string()),
                    Ok(password) if Token::new(&password).matches(&presented) => None,
                    Ok(_) => Some(format!(
                        "the server password of {name} is wrong; define the server on both sides with the same password"
                    )),
                },
            },
        };
        let Some(why) = refusal else {
            return Ok(name);
        };
        let peer = peer_of(request);
        actlog::record(
            &self.state.catalog,
            ServerMsg::ReplicationAuthFailed,
            "",
            &peer,
            format!("replication call from server {name:?} refused: {why}"),
        )
        .await;
        Err(Status::unauthenticated(format!(
            "replication refused: {why}"
        )))
    }

    /// Mutual TLS: the caller must have proven it holds the certificate
    /// pinned for `partner`. Only a development server serving plaintext
    /// skips this (there is no certificate to check).
    fn certificate_refusal<T>(
        &self,
        request: &Request<T>,
        partner: &PartnerServer,
    ) -> Option<String> {
        if self.state.config.insecure_plaintext {
            return None;
        }
        let Ok(pinned) = partner.fingerprint.parse::<tandem_tls::Fingerprint>() else {
            return Some(format!(
                "server {} is defined here without a certificate fingerprint; define it again with --fingerprint",
                partner.name
            ));
        };
        match client_fingerprint(request) {
            Some(presented) if presented == pinned => None,
            Some(presented) => Some(format!(
                "the caller presented certificate fingerprint {presented}, but {pinned} is pinned for server {}",
                partner.name
            )),
            None => Some(format!(
                "the caller presented no client certificate; server {} must call with its own (mutual TLS)",
                partner.name
            )),
        }
    }

    /// Authorizes and checks the replication session; returns its number.
    async fn session<T>(&self, request: &Request<T>) -> Result<(u64, String), Status> {
        let source = self.authorize(request).await?;
        let token = request
            .metadata()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("no replication session; call Hello first"))?;
        let id = self.state.sessions.touch_replication(token, &source)?.id;
        Ok((id, source))
    }

    /// The replica node's row id; it must be in receive mode and belong to
    /// `source`, the server that created it (SPEC 2.5).
    async fn replica_id(&self, node: &str, source: &str) -> Result<i64, Status> {
        let name = normalize_node_name(node)
            .ok_or_else(|| Status::invalid_argument(format!("bad node name {node:?}")))?;
        let node = super::blocking(&self.state, move |s| Ok(s.catalog.node(&name)?)).await?;
        match node {
            Some(n) if n.is_replica() && n.repl_server == source => Ok(n.id),
            Some(n) if n.is_replica() => Err(Status::permission_denied(format!(
                "node {} is the replica of server {}; server {source} may not change it (to move it, remove the node here first: `remove replnode`, `delete filespace`, `remove node`)",
                n.name, n.repl_server
            ))),
            Some(n) => Err(Status::failed_precondition(format!(
                "node {} is not a replica on this server",
                n.name
            ))),
            None => Err(Status::not_found(format!(
                "node {node:?} has not been prepared"
            ))),
        }
    }
}

fn state_from_pb(s: &pb::VersionState) -> Result<VersionState, Status> {
    Ok(VersionState {
        object_id: ObjectId::from_slice(&s.object_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?,
        active: s.active,
        deactivated_ns: s.deactivated_ns,
        size: s.size,
    })
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn hello(
        &self,
        request: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let source = self.authorize(&request).await?;
        let spoken = request.get_ref().protocol_version;
        if spoken != tandem_proto::REPLICATION_PROTOCOL {
            let why = format!(
                "server {source} speaks replication protocol {spoken} and this server ({}) speaks {}: \
                 run the same Tandem release on both servers",
                self.state.config.name,
                tandem_proto::REPLICATION_PROTOCOL
            );
            actlog::record(
                &self.state.catalog,
                ServerMsg::ReplicationAuthFailed,
                "",
                &peer_of(&request),
                format!("replication call from server {source:?} refused: {why}"),
            )
            .await;
            return Err(Status::failed_precondition(why));
        }
        let peer = peer_of(&request);
        let nonce = request.get_ref().nonce.clone();
        let lookup = source.clone();
        let partner = super::blocking(&self.state, move |s| Ok(s.catalog.server(&lookup)?))
            .await?
            .ok_or_else(|| Status::unauthenticated("unknown server"))?;
        let password = self.state.partner_password(&partner)?;
        let proof =
            crate::auth::server_proof(&password, &nonce, &self.state.guid.to_string()).to_vec();
        let (token, _) = self.state.sessions.open_replication(&source, &peer);
        let failover = self
            .state
            .catalog
            .setting("failover_address")
            .map_err(ServerError::from)?
            .unwrap_or_default();
        Ok(Response::new(pb::HelloResponse {
            target_name: self.state.config.name.clone(),
            target_guid: self.state.guid.to_string(),
            failover_address: failover,
            session_token: token.expose().to_string(),
            proof,
            protocol_version: tandem_proto::REPLICATION_PROTOCOL,
        }))
    }

    async fn prepare_node(
        &self,
        request: Request<pb::PrepareNodeRequest>,
    ) -> Result<Response<pb::PrepareNodeResponse>, Status> {
        let (_, source) = self.session(&request).await?;
        let req = request.into_inner();
        let name = normalize_node_name(&req.node)
            .ok_or_else(|| Status::invalid_argument("bad node name"))?;
        super::blocking(&self.state, move |s| {
            s.catalog
                .prepare_replica(&name, &req.password_hash, req.locked, &source, now_ns())
        })
        .await?;
        Ok(Response::new(pb::PrepareNodeResponse {}))
    }

    type TargetInventoryStream = ResponseStream<pb::TargetInventoryResponse>;

    async fn target_inventory(
        &self,
        request: Request<pb::TargetInventoryRequest>,
    ) -> Result<Response<Self::TargetInventoryStream>, Status> {
        let (_, source) = self.session(&request).await?;
        let node_id = self.replica_id(&request.into_inner().node, &source).await?;
        let states = super::blocking(&self.state, move |s| {
            Ok(s.catalog.version_states(node_id)?)
        })
        .await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut states = states.into_iter().peekable();
            while states.peek().is_some() {
                let versions = states
                    .by_ref()
                    .take(4096)
                    .map(|(fs, v)| pb::VersionState {
                        object_id: v.object_id.0.to_vec(),
                        active: v.active,
                        deactivated_ns: v.deactivated_ns,
                        filespace: fs,
                        size: v.size,
                    })
                    .collect();
                if tx
                    .send(Ok(pb::TargetInventoryResponse { versions }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn find_missing_chunks(
        &self,
        request: Request<pb::ReplicaChunkIdsRequest>,
    ) -> Result<Response<pb::FindMissingChunksResponse>, Status> {
        let (session, source) = self.session(&request).await?;
        let req = request.into_inner();
        let node_id = self.replica_id(&req.node, &source).await?;
        let ids = convert::asked_chunk_ids(&req.chunk_ids)?;
        let missing = super::blocking(&self.state, move |s| {
            super::missing_and_pin(s, session, node_id, &ids)
        })
        .await?;
        Ok(Response::new(pb::FindMissingChunksResponse {
            missing: missing.iter().map(|c| c.as_slice().to_vec()).collect(),
        }))
    }

    async fn upload_chunks(
        &self,
        request: Request<Streaming<pb::ReplicaChunksRequest>>,
    ) -> Result<Response<pb::UploadChunksResponse>, Status> {
        let (session, source) = self.session(&request).await?;
        let mut stream = request.into_inner();
        // The first message names the replica node; every later one must name it too.
        let mut ingest: Option<(String, super::ChunkIngest)> = None;
        while let Some(message) = super::next_upload_message(&self.state, &mut stream).await? {
            let (node, ingest) = match &mut ingest {
                Some(open) => open,
                None => {
                    let node_id = self.replica_id(&message.node, &source).await?;
                    let open = super::ChunkIngest::new(self.state.clone(), session, node_id);
                    ingest.insert((message.node.clone(), open))
                }
            };
            if message.node != *node {
                return Err(Status::invalid_argument(format!(
                    "an upload stream for node {node:?} also names node {:?}; send one stream per node",
                    message.node
                )));
            }
            ingest.push(message.chunks).await?;
        }
        let Some((_, ingest)) = ingest else {
            return Ok(Response::new(pb::UploadChunksResponse::default()));
        };
        let done = ingest.finish().await?;
        let reply = pb::UploadChunksResponse {
            stored: done.stored,
            bytes_written: done.bytes_written,
            already_present: done.received.saturating_sub(done.stored),
        };
        Ok(Response::new(reply))
    }

    async fn update_states(
        &self,
        request: Request<pb::UpdateStatesRequest>,
    ) -> Result<Response<pb::UpdateStatesResponse>, Status> {
        let (_, source) = self.session(&request).await?;
        let req = request.into_inner();
        convert::at_most(
            req.states.len(),
            tandem_proto::MAX_OBJECTS_PER_CALL,
            "state changes",
        )?;
        let node_id = self.replica_id(&req.node, &source).await?;
        let states = req
            .states
            .iter()
            .map(state_from_pb)
            .collect::<Result<Vec<_>, _>>()?;
        let updated = super::blocking(&self.state, move |s| {
            Ok(s.catalog.apply_states(node_id, &states)?)
        })
        .await?;
        Ok(Response::new(pb::UpdateStatesResponse { updated }))
    }

    async fn put_objects(
        &self,
        request: Request<pb::PutObjectsRequest>,
    ) -> Result<Response<pb::PutObjectsResponse>, Status> {
        let (_, source) = self.session(&request).await?;
        let req = request.into_inner();
        convert::at_most(
            req.objects.len(),
            tandem_proto::MAX_OBJECTS_PER_CALL,
            "objects",
        )?;
        let node_id = self.replica_id(&req.node, &source).await?;
        let versions = req
            .objects
            .into_iter()
            .map(|o| {
                let v = o
                    .version
                    .ok_or_else(|| ServerError::InvalidArgument("object without version".into()))?;
                convert::stored_version_from_pb(v)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stored = super::blocking(&self.state, move |s| {
            s.catalog.put_replicated(node_id, &versions)
        })
        .await?;
        Ok(Response::new(pb::PutObjectsResponse { stored }))
    }

    async fn delete_objects(
        &self,
        request: Request<pb::DeleteObjectsRequest>,
    ) -> Result<Response<pb::DeleteObjectsResponse>, Status> {
        let (_, source) = self.session(&request).await?;
        let req = request.into_inner();
        convert::at_most(
            req.object_ids.len(),
            tandem_proto::MAX_OBJECTS_PER_CALL,
            "deletions",
        )?;
        let node_id = self.replica_id(&req.node, &source).await?;
        let ids = req
            .object_ids
            .iter()
            .map(|b| ObjectId::from_slice(b).map_err(|e| Status::invalid_argument(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let deleted = super::blocking(&self.state, move |s| {
            Ok(s.catalog.delete_replicated(node_id, &ids)?)
        })
        .await?;
        Ok(Response::new(pb::DeleteObjectsResponse { deleted }))
    }

    async fn finish_run(
        &self,
        request: Request<pb::FinishRunRequest>,
    ) -> Result<Response<pb::FinishRunResponse>, Status> {
        let (_, source) = self.session(&request).await?;
        let peer = peer_of(&request);
        let req = request.into_inner();
        let node_id = self.replica_id(&req.node, &source).await?;
        for fs in &req.filespaces {
            convert::check_path(&fs.name)?;
        }
        let times: Vec<_> = req.filespaces.into_iter().map(filespace_times).collect();
        // A replication time in the future would make failover clients
        // believe a stale replica is current.
        let replicated = req.replicated_ns;
        let latest = now_ns().saturating_add(MAX_CLOCK_SKEW_NS);
        if replicated <= 0 || replicated > latest {
            return Err(Status::invalid_argument(format!(
                "replication time {replicated} ns is not between the epoch and this server's clock (plus 5 minutes of skew)"
            )));
        }
        super::blocking(&self.state, move |s| {
            Ok(s.catalog.finish_replica(node_id, &times, replicated)?)
        })
        .await?;
        actlog::record(
            &self.state.catalog,
            ServerMsg::ReplicaUpdated,
            &req.node,
            &peer,
            format!("replica of node {} received from server {source}", req.node),
        )
        .await;
        Ok(Response::new(pb::FinishRunResponse {}))
    }

    async fn bye(
        &self,
        request: Request<pb::ByeRequest>,
    ) -> Result<Response<pb::ByeResponse>, Status> {
        self.authorize(&request).await?;
        let token = request
            .metadata()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok());
        if let Some(s) = token.and_then(|t| self.state.sessions.close(t)) {
            self.state.pins.release(s.id);
        }
        Ok(Response::new(pb::ByeResponse {}))
    }
}
