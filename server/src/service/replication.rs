//! The `Replication` service: what a source server calls on this server when
//! this server is its replication target. Every call must name a defined
//! server and present the credential shared with it; this layer checks that,
//! the session and the limits of each message, converts from protobuf, and
//! hands the call to the [`LocalTarget`] of the named replica node, which
//! writes it into this server's repository.

use std::pin::Pin;
use std::sync::Arc;

use tandem_proto::pb::{self, replication_server::Replication};
use tandem_proto::{ObjectId, SESSION_HEADER};
use tandem_replication::Target;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{client_fingerprint, peer_of};
use crate::ServerState;
use crate::actlog::{self, ServerMsg};
use crate::auth::Token;
use crate::catalog::Setting;
use crate::convert;
use crate::error::ServerError;
use crate::model::{PartnerServer, now_ns};
use crate::repl::{LocalTarget, ReplicaOf, SERVER_HEADER};

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
        let partner =
            super::blocking(&self.state, move |s| Ok(s.repo.catalog.server(&lookup)?)).await?;
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
        actlog::record_refusal(
            &self.state.repo.catalog,
            &self.state.refusals,
            ServerMsg::ReplicationAuthFailed,
            "",
            &peer,
            format!("replication call from server {name:?} refused: {why}"),
        )
        .await;
        Err(Status::from(ServerError::Unauthenticated(format!(
            "replication refused: {why}"
        ))))
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

    /// Authorizes and checks the replication session; returns its number
    /// and the partner's name.
    async fn session<T>(&self, request: &Request<T>) -> Result<(u64, String), Status> {
        let source = self.authorize(request).await?;
        let token = request_token(request).ok_or_else(|| {
            Status::from(ServerError::Unauthenticated(
                "no replication session; call Hello first".into(),
            ))
        })?;
        let id = self.state.sessions.touch_replication(&token, &source)?.id;
        Ok((id, source))
    }

    /// The local target for replica `node`, which must be `source`'s
    /// (SPEC 2.5), writing under `session`'s pins.
    async fn target(&self, node: &str, source: &str, session: u64) -> Result<LocalTarget, Status> {
        Ok(LocalTarget::open(&self.state.repo, node, source, session).await?)
    }
}

/// The session token a request carries, if any.
fn request_token<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
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
                &self.state.repo.catalog,
                ServerMsg::ReplicationAuthFailed,
                "",
                &peer_of(&request),
                format!("replication call from server {source:?} refused: {why}"),
            )
            .await;
            return Err(Status::from(ServerError::FailedPrecondition(why)));
        }
        let peer = peer_of(&request);
        let nonce = request.get_ref().nonce.clone();
        let lookup = source.clone();
        let partner = super::blocking(&self.state, move |s| Ok(s.repo.catalog.server(&lookup)?))
            .await?
            .ok_or_else(|| Status::from(ServerError::Unauthenticated("unknown server".into())))?;
        let password = self.state.partner_password(&partner)?;
        let proof = crate::auth::server_proof(&password, &nonce, self.state.guid).to_vec();
        let (token, _) = self.state.sessions.open_replication(&source, &peer);
        let failover = self
            .state
            .repo
            .catalog
            .setting(Setting::FailoverAddress)
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
        let replica = ReplicaOf {
            node: req.node,
            password_hash: req.password_hash,
            locked: req.locked,
            source,
        };
        LocalTarget::prepare(&self.state.repo, replica).await?;
        Ok(Response::new(pb::PrepareNodeResponse {}))
    }

    type TargetInventoryStream = ResponseStream<pb::TargetInventoryResponse>;

    async fn target_inventory(
        &self,
        request: Request<pb::TargetInventoryRequest>,
    ) -> Result<Response<Self::TargetInventoryStream>, Status> {
        let (session, source) = self.session(&request).await?;
        let target = self
            .target(&request.into_inner().node, &source, session)
            .await?;
        let states = target.held_versions().await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut states = states.into_iter().peekable();
            while states.peek().is_some() {
                let versions = states
                    .by_ref()
                    .take(4096)
                    .map(|(fs, v)| convert::version_state_to_pb(fs, v))
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
        let target = self.target(&req.node, &source, session).await?;
        let ids = convert::asked_chunk_ids(&req.chunk_ids)?;
        let missing = target.missing_chunks(&ids).await?;
        Ok(Response::new(pb::FindMissingChunksResponse {
            missing: missing.iter().map(|c| c.as_slice().to_vec()).collect(),
        }))
    }

    async fn upload_chunks(
        &self,
        request: Request<Streaming<pb::ReplicaChunksRequest>>,
    ) -> Result<Response<pb::UploadChunksResponse>, Status> {
        let (session, source) = self.session(&request).await?;
        let token = request
            .metadata()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        // As for a node's uploads: a bounded number per partner.
        let _slot = self
            .state
            .upload_slots
            .acquire(super::read_slots::Reader::Partner(source.clone()))
            .await?;
        let mut stream = request.into_inner();
        // The first message names the replica node; every later one must name it too.
        let mut ingest: Option<(String, crate::repository::ingest::ChunkIngest)> = None;
        loop {
            // The upload memory budget is taken before each message is read
            // (as for a client's backup).
            let mut share = Some(match &mut ingest {
                Some((_, ingest)) => ingest.reserve().await?,
                None => self.state.repo.ingest_budget.reserve_first().await?,
            });
            let held = ingest.as_mut().map(|(_, ingest)| ingest);
            let Some(message) =
                super::next_upload_message_held(&self.state, &mut stream, held, &mut share).await?
            else {
                break;
            };
            // A cancelled session stops between messages.
            self.state.sessions.check_open(&token)?;
            let (node, ingest) = match &mut ingest {
                Some(open) => open,
                None => {
                    let target = self.target(&message.node, &source, session).await?;
                    ingest.insert((message.node.clone(), target.chunk_ingest()))
                }
            };
            if message.node != *node {
                return Err(Status::from(ServerError::InvalidArgument(format!(
                    "an upload stream for node {node:?} also names node {:?}; send one stream per node",
                    message.node
                ))));
            }
            ingest
                .push_reserved(convert::upload_chunks_from_pb(message.chunks)?, share)
                .await?;
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
        let (session, source) = self.session(&request).await?;
        let req = request.into_inner();
        convert::at_most(
            req.states.len(),
            tandem_proto::MAX_OBJECTS_PER_CALL,
            "state changes",
        )?;
        let target = self.target(&req.node, &source, session).await?;
        let states = req
            .states
            .iter()
            .map(convert::object_state_from_pb)
            .collect::<Result<Vec<_>, _>>()?;
        let updated = target.update_states(&states).await?;
        Ok(Response::new(pb::UpdateStatesResponse { updated }))
    }

    async fn put_objects(
        &self,
        request: Request<pb::PutObjectsRequest>,
    ) -> Result<Response<pb::PutObjectsResponse>, Status> {
        let (session, source) = self.session(&request).await?;
        let req = request.into_inner();
        convert::at_most(
            req.objects.len(),
            tandem_proto::MAX_OBJECTS_PER_CALL,
            "objects",
        )?;
        let target = self.target(&req.node, &source, session).await?;
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
        let stored = target.put_objects(versions).await?;
        Ok(Response::new(pb::PutObjectsResponse { stored }))
    }

    async fn delete_objects(
        &self,
        request: Request<pb::DeleteObjectsRequest>,
    ) -> Result<Response<pb::DeleteObjectsResponse>, Status> {
        let (session, source) = self.session(&request).await?;
        let req = request.into_inner();
        convert::at_most(
            req.object_ids.len(),
            tandem_proto::MAX_OBJECTS_PER_CALL,
            "deletions",
        )?;
        let target = self.target(&req.node, &source, session).await?;
        let ids = req
            .object_ids
            .iter()
            .map(|b| {
                ObjectId::from_slice(b)
                    .map_err(|e| Status::from(ServerError::InvalidArgument(e.to_string())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let deleted = target.delete_objects(&ids).await?;
        Ok(Response::new(pb::DeleteObjectsResponse { deleted }))
    }

    async fn finish_run(
        &self,
        request: Request<pb::FinishRunRequest>,
    ) -> Result<Response<pb::FinishRunResponse>, Status> {
        let (session, source) = self.session(&request).await?;
        let peer = peer_of(&request);
        let req = request.into_inner();
        let target = self.target(&req.node, &source, session).await?;
        let times = req
            .filespaces
            .into_iter()
            .map(convert::filespace_times_from_pb)
            .collect::<Result<Vec<_>, _>>()?;
        // A replication time in the future would make failover clients
        // believe a stale replica is current.
        let replicated = req.replicated_ns;
        let latest = now_ns().saturating_add(MAX_CLOCK_SKEW_NS);
        if replicated <= 0 || replicated > latest {
            return Err(Status::from(ServerError::InvalidArgument(format!(
                "replication time {replicated} ns is not between the epoch and this server's clock (plus 5 minutes of skew)"
            ))));
        }
        target.finish(times, replicated).await?;
        actlog::record(
            &self.state.repo.catalog,
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
        if let Some(token) = token {
            self.state.end_session(token);
        }
        Ok(Response::new(pb::ByeResponse {}))
    }

    type ReadSharedChunksStream = ResponseStream<pb::ReadChunksResponse>;

    async fn read_shared_chunks(
        &self,
        request: Request<pb::ReplicaChunkIdsRequest>,
    ) -> Result<Response<Self::ReadSharedChunksStream>, Status> {
        let (_, caller) = self.session(&request).await?;
        // Checked by `session`; the answer looks at it while it waits.
        let token = request_token(&request).unwrap_or_default();
        let req = request.into_inner();
        convert::at_most(
            req.chunk_ids.len(),
            tandem_proto::MAX_REPAIR_CHUNK_IDS,
            "chunk ids",
        )?;
        let ids = convert::chunk_ids(&req.chunk_ids)?;
        let name = crate::model::normalize_node_name(&req.node).ok_or_else(|| {
            Status::from(ServerError::InvalidArgument(format!(
                "bad node name {:?}",
                req.node
            )))
        })?;
        let lookup = name.clone();
        let node = super::blocking(&self.state, move |s| Ok(s.repo.catalog.node(&lookup)?))
            .await?
            .ok_or_else(|| Status::from(ServerError::NodeNotFound { node: name.clone() }))?;
        // Only a node this server shares with the caller now: the caller's
        // replica here, or a node of this server's own whose replica the
        // caller holds and that is still replicated there.
        let shared = node.repl_server == caller
            && match node.replmode {
                crate::model::ReplMode::Receive => true,
                crate::model::ReplMode::Send => node.replstate == crate::model::ReplState::Enabled,
                crate::model::ReplMode::None => false,
            };
        if !shared {
            return Err(Status::from(ServerError::PermissionDenied(format!(
                "node {} is not replicated between this server and server {caller}",
                node.name
            ))));
        }
        let node_id = node.id;
        // Held until the stream ends; a call beyond the partner's slots waits.
        let slot = self
            .state
            .read_slots
            .acquire(super::read_slots::Reader::Partner(caller))
            .await?;
        let locations = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.owned_chunk_locations(node_id, &ids)?)
        })
        .await?;
        let wanted: Vec<_> = req
            .chunk_ids
            .iter()
            .zip(locations)
            .filter_map(|(raw, at)| Some((tandem_proto::ChunkId::from_slice(raw).ok()?, at?)))
            .collect();
        let (out, stream) = super::answer::answer(&self.state, &token, 2);
        let state = self.state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            for (id, at) in wanted {
                let repo = state.repo.clone();
                // A copy damaged here too is left out: the caller is told
                // nothing it would have to refuse.
                let copy = tokio::task::spawn_blocking(move || {
                    let data = repo.read_from_any_pool(id, at).ok()?.data;
                    crate::storage::verify_chunk(id, data, u64::from(at.raw_len)).ok()
                })
                .await
                .ok()
                .flatten();
                let Some(copy) = copy else { continue };
                let message = pb::ReadChunksResponse {
                    chunk: Some(pb::Chunk {
                        id: id.as_slice().to_vec(),
                        data: copy.data,
                        raw_len: u64::from(copy.raw_len),
                    }),
                };
                if !out.send(Ok(message)).await {
                    break;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn held_replicas(
        &self,
        request: Request<pb::HeldReplicasRequest>,
    ) -> Result<Response<pb::HeldReplicasResponse>, Status> {
        let (_, caller) = self.session(&request).await?;
        let nodes = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.replicas_of(&caller)?)
        })
        .await?;
        Ok(Response::new(pb::HeldReplicasResponse { nodes }))
    }

    async fn replicate_back(
        &self,
        request: Request<pb::ReplicateBackRequest>,
    ) -> Result<Response<pb::ReplicateBackResponse>, Status> {
        let (_, caller) = self.session(&request).await?;
        let node = request.into_inner().node;
        let report = crate::repl::recover::send_back(&self.state, &node, &caller).await?;
        Ok(Response::new(pb::ReplicateBackResponse {
            objects_sent: report.objects_sent,
            chunks_sent: report.chunks_sent,
            bytes_sent: report.bytes_sent,
            chunks_skipped: report.chunks_skipped,
            states_updated: report.states_updated,
        }))
    }

    async fn take_over(
        &self,
        request: Request<pb::TakeOverRequest>,
    ) -> Result<Response<pb::TakeOverResponse>, Status> {
        let (_, caller) = self.session(&request).await?;
        let req = request.into_inner();
        let already = crate::repl::switch::take_over(
            &self.state,
            &req.node,
            &caller,
            &req.switch_id,
            req.versions,
            (&req.source_guid, &req.failover_address),
        )
        .await?;
        Ok(Response::new(pb::TakeOverResponse { already }))
    }

    async fn abandon_take_over(
        &self,
        request: Request<pb::TakeOverRequest>,
    ) -> Result<Response<pb::AbandonTakeOverResponse>, Status> {
        let (_, caller) = self.session(&request).await?;
        let req = request.into_inner();
        crate::repl::switch::abandon(&self.state, &req.node, &caller, &req.switch_id).await?;
        Ok(Response::new(pb::AbandonTakeOverResponse {}))
    }
}
