//! The client-facing `Backup` service; its archive calls are in [`archive`].

mod archive;

use std::pin::Pin;
use std::sync::Arc;

use tandem_proto::pb::{self, backup_server::Backup};
use tandem_proto::{ChunkId, SESSION_HEADER};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::answer::answer;
use super::peer_of;
use crate::ServerState;
use crate::actlog::{self, ServerMsg};
use crate::auth::{self, Session};
use crate::catalog::{PageKey, VersionPage};
use crate::convert;
use crate::error::ServerError;
use crate::model::{PolicyUpdate, SwitchStep, VersionQuery, normalize_node_name, now_ns};
use crate::repository::fallback::{Reroutes, describe_reroutes};
use crate::repository::ingest::ChunkIngest;

/// Chunks read from the containers per trip to a blocking thread.
const READ_GROUP_CHUNKS: usize = 64;
/// Stored bytes read per trip to a blocking thread.
const READ_GROUP_BYTES: u64 = 8 * 1024 * 1024;

type Wanted = (ChunkId, Option<crate::model::ChunkLocation>);

/// Splits a read into groups of at most [`READ_GROUP_CHUNKS`] chunks and
/// about [`READ_GROUP_BYTES`], in order: restoring many small files is many
/// small chunks, and one blocking hop per chunk cost more than the reads.
fn read_groups(wanted: Vec<Wanted>) -> Vec<Vec<Wanted>> {
    let mut groups = Vec::new();
    let mut group = Vec::new();
    let mut bytes = 0u64;
    for item in wanted {
        bytes += item.1.map_or(0, |l| u64::from(l.stored_len));
        group.push(item);
        if group.len() >= READ_GROUP_CHUNKS || bytes >= READ_GROUP_BYTES {
            groups.push(std::mem::take(&mut group));
            bytes = 0;
        }
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

/// Reads `group` from the store in order, for node `node`; stops after the
/// first chunk that cannot be read (the stream ends there). Chunks whose
/// pool did not answer are counted in `reroutes`, with the pool whose copy
/// served them, if one did.
fn read_group(
    state: &ServerState,
    node: &str,
    group: Vec<Wanted>,
    reroutes: &mut Reroutes,
) -> Vec<Result<pb::ReadChunksResponse, Status>> {
    let mut items = Vec::with_capacity(group.len());
    for (id, loc) in group {
        let item = match loc {
            None => Err(Status::from(ServerError::NotFound(format!(
                "chunk {id} is not stored for node {node}"
            )))),
            Some(loc) => state
                .repo
                .read_from_any_pool(id, loc)
                .map(|copy| {
                    if let Some((down, used)) = copy.rerouted {
                        *reroutes.entry((down, Some(used))).or_default() += 1;
                    }
                    pb::ReadChunksResponse {
                        chunk: Some(pb::Chunk {
                            id: id.as_slice().to_vec(),
                            data: copy.data,
                            raw_len: u64::from(loc.raw_len),
                        }),
                    }
                })
                .map_err(|e| match e {
                    // Not damage: the bucket did not answer (and no other
                    // pool holds a whole copy). UNAVAILABLE tells the client
                    // to try again later, not to ask for a repair.
                    e @ ServerError::Storage(crate::error::StorageError::PoolUnavailable {
                        ..
                    }) => {
                        *reroutes.entry((loc.pool, None)).or_default() += 1;
                        Status::unavailable(e.to_string())
                    }
                    e => Status::from(ServerError::DataLoss(format!("chunk {id}: {e}"))),
                }),
        };
        let failed = item.is_err();
        items.push(item);
        if failed {
            break;
        }
    }
    items
}

/// Logs (TDM0436W) that reads of `node`'s data met pools that did not
/// answer, and what served them instead: in the activity log at most once
/// a minute per pool, in the server's log every time.
async fn report_reroutes(state: &ServerState, node: &str, reroutes: &Reroutes) {
    if reroutes.is_empty() {
        return;
    }
    let whose = format!("of node {node}");
    let (due, rest) = state
        .repo
        .reroute_notices
        .due(reroutes, std::time::Instant::now());
    for text in describe_reroutes(&state.repo.pools, &whose, &rest) {
        tracing::warn!("{} {text}", ServerMsg::ReadFromOtherPool.id());
    }
    for text in describe_reroutes(&state.repo.pools, &whose, &due) {
        actlog::record(
            &state.repo.catalog,
            ServerMsg::ReadFromOtherPool,
            node,
            "",
            text,
        )
        .await;
    }
}

/// Versions per streamed query message, and per catalog page behind it.
const QUERY_BATCH: usize = 512;

/// Reads the page of `query` after `after` from the catalog.
async fn next_page(
    state: &Arc<ServerState>,
    node_id: i64,
    query: &VersionQuery,
    after: Option<PageKey>,
) -> Result<VersionPage, Status> {
    let query = query.clone();
    super::blocking(state, move |s| {
        Ok(s.repo
            .catalog
            .query_versions(node_id, &query, after.as_ref(), QUERY_BATCH)?)
    })
    .await
}

/// The failover block of a logon reply: given once the node has completed a
/// backup here and been replicated at least once (DOMAIN 1.4), naming the
/// last target it was replicated to.
fn failover_block(
    state: &ServerState,
    node: &crate::model::Node,
) -> Result<Option<pb::ReplicationServerInfo>, ServerError> {
    if node.is_replica() || node.last_repl_ns == 0 || !state.repo.catalog.has_backed_up(node.id)? {
        return Ok(None);
    }
    let Some(partner) = state.repo.catalog.server(&node.repl_server)? else {
        return Ok(None);
    };
    let Some(guid) = partner.guid else {
        return Ok(None);
    };
    let address = if partner.failover_address.is_empty() {
        partner.address
    } else {
        partner.failover_address
    };
    Ok(Some(pb::ReplicationServerInfo {
        name: partner.name,
        address,
        guid: guid.to_string(),
        last_replication_ns: node.last_repl_ns,
        fingerprint: partner.fingerprint,
    }))
}

/// The latest backup or deactivation time a vault's version may carry on
/// `state`: now plus `vault_clock_skew_seconds`, since a client's clock
/// made it and clocks drift.
pub(crate) fn vault_time_limit(state: &ServerState) -> i64 {
    let skew = i64::try_from(state.config.vault_clock_skew_seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000_000);
    now_ns().saturating_add(skew)
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Implements `tandem.v1.Backup` over the server state.
#[derive(Debug, Clone)]
pub struct BackupService {
    state: Arc<ServerState>,
}

impl BackupService {
    /// A service over `state`.
    pub fn new(state: Arc<ServerState>) -> Self {
        BackupService { state }
    }

    /// The latest time a vault sync may carry: a client's clock made it,
    /// and clocks drift (`vault_clock_skew_seconds`).
    fn vault_time_limit(&self) -> i64 {
        vault_time_limit(&self.state)
    }

    fn session<T>(&self, request: &Request<T>) -> Result<(Session, String), Status> {
        let token = request
            .metadata()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::from(ServerError::Unauthenticated(
                    "no session token; log on first".into(),
                ))
            })?
            .to_string();
        let session = self.state.sessions.touch_node(&token)?;
        Ok((session, token))
    }

    /// What a planned role switch of the node means for an authenticated
    /// logon: refused while the switch runs here ("retry later"); sent to
    /// the new primary once this server handed the node over; told "this
    /// server is your primary now" on a failover logon to the server that
    /// took it over from the client's primary. `None`: an ordinary session.
    async fn switch_answer(
        &self,
        node: &crate::model::Node,
        req: &pb::LogonRequest,
        peer: &str,
    ) -> Result<Option<pb::LogonResponse>, Status> {
        let lookup = node.name.clone();
        let Some(switch) = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.switch_of(&lookup)?)
        })
        .await?
        else {
            return Ok(None);
        };
        let name = &node.name;
        let no_session = pb::LogonResponse {
            server_name: self.state.config.name.clone(),
            server_guid: self.state.guid.to_string(),
            node: name.clone(),
            ..pb::LogonResponse::default()
        };
        if switch.step.is_unfinished() && !req.failover {
            return Err(Status::from(ServerError::FailedPrecondition(format!(
                "node {name} is being switched to server {} (planned role switch, step {}): it takes no sessions on server {} meanwhile; retry in a few minutes",
                switch.partner, switch.step, self.state.config.name
            ))));
        }
        if switch.step == SwitchStep::HandedOver
            && !req.failover
            && node.is_replica()
            && node.repl_server == switch.partner
        {
            let partner_name = switch.partner.clone();
            let partner = super::blocking(&self.state, move |s| {
                Ok(s.repo.catalog.server(&partner_name)?)
            })
            .await?;
            let Some((partner, guid)) = partner.and_then(|p| p.guid.map(|g| (p, g))) else {
                return Ok(None);
            };
            let address = if partner.failover_address.is_empty() {
                partner.address.clone()
            } else {
                partner.failover_address.clone()
            };
            actlog::record(
                &self.state.repo.catalog,
                ServerMsg::LogonRedirected,
                name,
                peer,
                format!(
                    "logon of node {name} sent to server {} at {address}, its primary since a planned role switch; no session opened here",
                    partner.name
                ),
            )
            .await;
            return Ok(Some(pb::LogonResponse {
                primary_moved: Some(pb::ReplicationServerInfo {
                    name: partner.name,
                    address,
                    guid: guid.to_string(),
                    last_replication_ns: 0,
                    fingerprint: partner.fingerprint,
                }),
                ..no_session
            }));
        }
        if switch.step == SwitchStep::Taken
            && req.failover
            && !node.is_replica()
            && req.primary_server.eq_ignore_ascii_case(&switch.partner)
        {
            actlog::record(
                &self.state.repo.catalog,
                ServerMsg::LogonRedirected,
                name,
                peer,
                format!(
                    "failover logon of node {name} from server {}: this server has been the node's primary since a planned role switch; the client is told to log on here as to its primary",
                    switch.partner
                ),
            )
            .await;
            return Ok(Some(pb::LogonResponse {
                primary_here: true,
                ..no_session
            }));
        }
        Ok(None)
    }

    /// Refuses writes by a node this server holds as a replica: its data
    /// comes only from its source server. Checked on every write against the
    /// catalog, not only at logon, so a session opened before the node
    /// became a replica cannot write either.
    async fn refuse_replica(&self, session: &Session, peer: &str) -> Result<(), Status> {
        let name = session.node.clone();
        let (replica_now, switching) = super::blocking(&self.state, move |s| {
            let replica = s.repo.catalog.node(&name)?.is_none_or(|n| n.is_replica());
            let switch = s
                .repo
                .catalog
                .switch_of(&name)?
                .filter(|w| w.step.blocks_writes());
            Ok((replica, switch))
        })
        .await?;
        // A switch's final replication has begun: nothing more may be
        // stored here, or the new primary would lack it.
        if let Some(switch) = switching {
            return Err(Status::from(ServerError::FailedPrecondition(format!(
                "node {} is being switched to server {} (planned role switch): writes are paused on server {}; retry in a few minutes",
                session.node, switch.partner, self.state.config.name
            ))));
        }
        // The catalog decides, not the session: a node held for recovery
        // when its session began may be writable again now.
        if !replica_now {
            return Ok(());
        }
        actlog::record(
            &self.state.repo.catalog,
            ServerMsg::ReplicaWriteRefused,
            &session.node,
            peer,
            format!(
                "write by node {} refused: it is a replica on this server",
                session.node
            ),
        )
        .await;
        let name = session.node.clone();
        let recovering = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.recovery_of(&name)?)
        })
        .await?;
        if let Some(source) = recovering {
            return Err(Status::from(ServerError::FailedPrecondition(format!(
                "node {} is being recovered on server {} from its replica on server {source} and is read-only until that ends; retry later (the administrator runs `tandem-admin recover node {}`)",
                session.node, self.state.config.name, session.node
            ))));
        }
        Err(Status::from(ServerError::FailedPrecondition(format!(
            "node {} is a replica on server {} (receive mode) and is read-only there; back up to its primary server, or run `remove replnode {}` on this server to make it writable",
            session.node, self.state.config.name, session.node
        ))))
    }
}

#[tonic::async_trait]
impl Backup for BackupService {
    async fn identify(
        &self,
        _request: Request<pb::IdentifyRequest>,
    ) -> Result<Response<pb::IdentifyResponse>, Status> {
        Ok(Response::new(pb::IdentifyResponse {
            server_name: self.state.config.name.clone(),
            server_guid: self.state.guid.to_string(),
        }))
    }

    async fn logon(
        &self,
        request: Request<pb::LogonRequest>,
    ) -> Result<Response<pb::LogonResponse>, Status> {
        let peer = peer_of(&request);
        let req = request.into_inner();
        let refused = || {
            Status::from(ServerError::Unauthenticated(format!(
                "logon refused for node {}: unknown node, wrong password or locked node",
                actlog::label(&tandem_proto::names::display(&req.node))
            )))
        };
        let Some(name) = normalize_node_name(&req.node) else {
            return Err(refused());
        };
        let lookup = name.clone();
        let node = super::blocking(&self.state, move |s| Ok(s.repo.catalog.node(&lookup)?)).await?;
        let stored = node.as_ref().map(|n| n.password_hash.clone());
        let good = super::check_password(&self.state, stored, req.password.clone()).await?;
        let Some(node) = node else {
            actlog::record(
                &self.state.repo.catalog,
                ServerMsg::UnknownNode,
                &name,
                &peer,
                format!("logon refused: node {name} is not registered"),
            )
            .await;
            return Err(refused());
        };
        let node_id = node.id;
        if !good {
            let failures = super::blocking(&self.state, move |s| {
                Ok(s.repo.catalog.record_logon_failure(node_id)?)
            })
            .await?;
            actlog::record(
                &self.state.repo.catalog,
                ServerMsg::WrongPassword,
                &name,
                &peer,
                format!("logon refused: wrong password for node {name} ({failures} failed logon(s) in a row)"),
            )
            .await;
            let limit = self.state.config.invalid_password_limit;
            if limit > 0 && failures >= limit && !node.locked {
                let lock = name.clone();
                super::blocking(&self.state, move |s| {
                    Ok(s.repo.catalog.update_node(
                        &lock,
                        Some(true),
                        PolicyUpdate::default(),
                        None,
                    )?)
                })
                .await?;
                actlog::record(
                    &self.state.repo.catalog,
                    ServerMsg::NodeLocked,
                    &name,
                    &peer,
                    format!(
                        "node {name} locked after {failures} failed logons in a row (invalid_password_limit {limit}); unlock with `update node {name} --unlock`"
                    ),
                )
                .await;
            }
            return Err(refused());
        }
        // A locked node is refused as a wrong password is: the answer must
        // not tell a guesser that the password was right. The log says it.
        if node.locked {
            actlog::record(
                &self.state.repo.catalog,
                ServerMsg::NodeLocked,
                &name,
                &peer,
                format!("logon refused: node {name} is locked (the password given was right)"),
            )
            .await;
            return Err(refused());
        }
        super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.record_logon_success(node_id, now_ns())?)
        })
        .await?;
        if let Some(answer) = self.switch_answer(&node, &req, &peer).await? {
            return Ok(Response::new(answer));
        }
        let replica = node.is_replica();
        let (token, session_id) = self.state.sessions.open(node_id, &name, &peer, replica);
        let block_node = node.clone();
        let replication_server =
            super::blocking(&self.state, move |s| failover_block(s, &block_node)).await?;
        let client = actlog::label(&req.client_version);
        let claimed_primary = actlog::label(&req.primary_server);
        // The failover flag and the primary's name are the client's word. A
        // failover logon is recorded as one (TDM0406I, which auditors read)
        // only where it can be true, for a node held here as a replica, and
        // names the server this one knows as its source; anything else is
        // recorded as an unconfirmed claim (TDM0407W).
        let (msg, text) = if req.failover && replica {
            (
                ServerMsg::FailoverLogon,
                format!(
                    "failover logon: session {session_id} started for node {name} (client {client}), a read-only replica of server {}, because its primary ({claimed_primary} in the client's options) is unreachable or failover is forced",
                    node.repl_server
                ),
            )
        } else if req.failover {
            (
                ServerMsg::FailoverUnconfirmed,
                format!(
                    "session {session_id} started for node {name} (client {client}), which says it failed over from its primary {claimed_primary}; not confirmed: the node is not a replica on this server"
                ),
            )
        } else if replica {
            (
                ServerMsg::SessionOpened,
                format!(
                    "session {session_id} started for node {name} (client {client}): read-only, this server holds the node as a replica of server {}",
                    node.repl_server
                ),
            )
        } else {
            (
                ServerMsg::SessionOpened,
                format!("session {session_id} started for node {name} (client {client})"),
            )
        };
        actlog::record(&self.state.repo.catalog, msg, &name, &peer, text).await;
        Ok(Response::new(pb::LogonResponse {
            session_token: token.expose().to_string(),
            server_name: self.state.config.name.clone(),
            server_guid: self.state.guid.to_string(),
            node: name,
            session_id,
            replication_server,
            replica,
            replicated_ns: if replica { node.last_repl_ns } else { 0 },
            primary_moved: None,
            primary_here: false,
        }))
    }

    async fn find_missing_chunks(
        &self,
        request: Request<pb::FindMissingChunksRequest>,
    ) -> Result<Response<pb::FindMissingChunksResponse>, Status> {
        let (session, _) = self.session(&request)?;
        let ids = convert::asked_chunk_ids(&request.into_inner().chunk_ids)?;
        let missing = super::blocking(&self.state, move |s| {
            s.repo.missing_and_pin(session.id, session.node_id, &ids)
        })
        .await?;
        Ok(Response::new(pb::FindMissingChunksResponse {
            missing: missing.iter().map(|c| c.as_slice().to_vec()).collect(),
        }))
    }

    async fn upload_chunks(
        &self,
        request: Request<Streaming<pb::UploadChunksRequest>>,
    ) -> Result<Response<pb::UploadChunksResponse>, Status> {
        let (session, token) = self.session(&request)?;
        self.refuse_replica(&session, &peer_of(&request)).await?;
        // Held until the stream ends; a call beyond the node's slots waits
        // before anything of its stream is read.
        let _slot = self
            .state
            .upload_slots
            .acquire(super::read_slots::Reader::Node(session.node_id))
            .await?;
        let mut stream = request.into_inner();
        let mut ingest = ChunkIngest::new(self.state.repo.clone(), session.id, session.node_id);
        let mut received_bytes = 0u64;
        loop {
            // The server-wide upload memory budget is taken before the
            // message is read: a fleet of nodes waits in flow control, not
            // in decoded messages.
            let mut share = Some(ingest.reserve().await?);
            let Some(message) = super::next_upload_message_held(
                &self.state,
                &mut stream,
                Some(&mut ingest),
                &mut share,
            )
            .await?
            else {
                break;
            };
            self.state.sessions.check_open(&token)?;
            let chunks = message.chunks;
            received_bytes += chunks.iter().map(|c| c.data.len() as u64).sum::<u64>();
            ingest
                .push_reserved(convert::upload_chunks_from_pb(chunks)?, share)
                .await?;
        }
        let done = ingest.finish().await?;
        self.state.sessions.count_bytes(&token, received_bytes, 0);
        // The node's own view: everything it sent is stored for it. Whether
        // another node had the same bytes already is nobody else's business
        // (it would tell a node what others back up); the server log has it.
        tracing::debug!(
            node = %session.node,
            received = done.received,
            written = done.stored,
            "upload stored"
        );
        let reply = pb::UploadChunksResponse {
            stored: done.received,
            bytes_written: received_bytes,
            already_present: 0,
        };
        Ok(Response::new(reply))
    }

    async fn commit_objects(
        &self,
        request: Request<pb::CommitObjectsRequest>,
    ) -> Result<Response<pb::CommitObjectsResponse>, Status> {
        let (session, _) = self.session(&request)?;
        self.refuse_replica(&session, &peer_of(&request)).await?;
        let req = request.into_inner();
        convert::check_path(&req.filespace)?;
        convert::at_most(
            req.objects.len(),
            tandem_proto::MAX_OBJECTS_PER_CALL,
            "objects",
        )?;
        convert::at_most(
            req.deactivate.len(),
            tandem_proto::MAX_OBJECTS_PER_CALL,
            "deactivations",
        )?;
        let versions = req
            .objects
            .into_iter()
            .map(|o| convert::new_version_from_pb(o, &req.filespace))
            .collect::<Result<Vec<_>, _>>()?;
        for path in &req.deactivate {
            convert::check_path(path)?;
        }
        let filespace = req.filespace;
        let deactivate = req.deactivate;
        let counts = super::blocking(&self.state, move |s| {
            let _pinned = s
                .repo
                .pin_for_commit(versions.iter().flat_map(|v| &v.chunks));
            s.repo.catalog.commit_objects(
                session.node_id,
                &filespace,
                &versions,
                &deactivate,
                now_ns(),
            )
        })
        .await?;
        Ok(Response::new(pb::CommitObjectsResponse {
            stored: counts.stored,
            deactivated: counts.deactivated,
            deactivated_ids: counts
                .deactivated_ids
                .iter()
                .map(|id| id.0.to_vec())
                .collect(),
        }))
    }

    type QueryObjectsStream = ResponseStream<pb::QueryObjectsResponse>;

    async fn query_objects(
        &self,
        request: Request<pb::QueryObjectsRequest>,
    ) -> Result<Response<Self::QueryObjectsStream>, Status> {
        let (session, token) = self.session(&request)?;
        let req = request.into_inner();
        convert::check_path(&req.path_prefix)?;
        // Empty means every filespace; any other is a stored path.
        if !req.filespace.is_empty() {
            convert::check_path(&req.filespace)?;
        }
        // Held until the stream ends; a call beyond the node's slots waits.
        let slot = self
            .state
            .list_slots
            .acquire(super::read_slots::Reader::Node(session.node_id))
            .await?;
        let query = VersionQuery {
            filespace: req.filespace,
            path_prefix: req.path_prefix,
            include_inactive: req.include_inactive,
            point_in_time_ns: (req.point_in_time_ns != 0).then_some(req.point_in_time_ns),
            with_chunks: req.with_chunks,
        };
        let state = self.state.clone();
        let mut page = next_page(&state, session.node_id, &query, None).await?;
        let (out, stream) = answer(&state, &token, 4);
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let versions: Vec<_> = page
                    .versions
                    .into_iter()
                    .map(convert::version_to_pb)
                    .collect();
                if !versions.is_empty()
                    && !out.send(Ok(pb::QueryObjectsResponse { versions })).await
                {
                    break; // the client went away, or its session
                }
                let Some(after) = page.next else { break };
                page = match next_page(&state, session.node_id, &query, Some(after)).await {
                    Ok(page) => page,
                    Err(status) => {
                        out.cut_short(status);
                        break;
                    }
                };
            }
        });
        Ok(Response::new(stream))
    }

    type ReadChunksStream = ResponseStream<pb::ReadChunksResponse>;

    async fn read_chunks(
        &self,
        request: Request<pb::ReadChunksRequest>,
    ) -> Result<Response<Self::ReadChunksStream>, Status> {
        let (session, token) = self.session(&request)?;
        let ids = convert::asked_chunk_ids(&request.into_inner().chunk_ids)?;
        // Held until the stream ends; a call beyond the node's slots waits.
        let slot = self
            .state
            .read_slots
            .acquire(super::read_slots::Reader::Node(session.node_id))
            .await?;
        let lookup = ids.clone();
        let locations = super::blocking(&self.state, move |s| {
            Ok(s.repo
                .catalog
                .owned_chunk_locations(session.node_id, &lookup)?)
        })
        .await?;
        let (out, stream) = answer(&self.state, &token, 8);
        let state = self.state.clone();
        let node = session.node.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            let started = std::time::Instant::now();
            let mut reading = std::time::Duration::ZERO;
            let mut waiting = std::time::Duration::ZERO;
            let count = ids.len();
            // In an S3 pool the request is read in waves: each wave's data
            // is fetched whole (several GETs in flight) while the wave before
            // it is read and sent. Only the last wave reads ahead, for the
            // next request.
            let waves = state.repo.pools.read_waves(&locations);
            let wanted: Vec<Wanted> = ids.into_iter().zip(locations).collect();
            let prefetch = |k: usize| -> Option<tokio::task::JoinHandle<()>> {
                let wave = waves.get(k)?;
                let locations: Vec<_> = wanted[wave.clone()].iter().filter_map(|w| w.1).collect();
                let read_ahead = k + 1 == waves.len();
                let warm = state.clone();
                Some(tokio::task::spawn_blocking(move || {
                    warm.repo.pools.prefetch(&locations, read_ahead);
                }))
            };
            let mut fetching = prefetch(0);
            let mut prefetched = std::time::Duration::ZERO;
            let mut reroutes = Reroutes::new();
            'serve: for (k, wave) in waves.iter().enumerate() {
                let wait_from = std::time::Instant::now();
                if let Some(fetch) = fetching.take() {
                    let _ = fetch.await;
                }
                prefetched += wait_from.elapsed();
                // A client that dropped the call (a restore that asked for
                // its next batch early and then went elsewhere) gets no
                // more of the store's reads.
                if out.is_closed() {
                    break 'serve;
                }
                fetching = prefetch(k + 1);
                for group in read_groups(wanted[wave.clone()].to_vec()) {
                    if let Err(cancelled) = state.sessions.check_open(&token) {
                        out.cut_short(Status::from(cancelled));
                        break 'serve;
                    }
                    let reader = state.clone();
                    let node = node.clone();
                    let read_from = std::time::Instant::now();
                    let (items, rerouted) = tokio::task::spawn_blocking(move || {
                        // Stands in for a disk or share that stops
                        // answering mid-read (the vault's tests).
                        crate::faults::pause_point_blocking("read-chunks");
                        let mut rerouted = Reroutes::new();
                        let items = read_group(&reader, &node, group, &mut rerouted);
                        (items, rerouted)
                    })
                    .await
                    .unwrap_or_else(|e| {
                        (
                            vec![Err(Status::from(ServerError::from(e)))],
                            Reroutes::new(),
                        )
                    });
                    for (route, n) in rerouted {
                        *reroutes.entry(route).or_default() += n;
                    }
                    reading += read_from.elapsed();
                    let send_from = std::time::Instant::now();
                    for item in items {
                        let failed = item.is_err();
                        if let Ok(r) = &item {
                            sent += r.chunk.as_ref().map_or(0, |c| c.data.len() as u64);
                        }
                        if !out.send(item).await || failed {
                            break 'serve;
                        }
                    }
                    waiting += send_from.elapsed();
                }
            }
            state.sessions.count_bytes(&token, 0, sent);
            // The client's stream ends (and the slot is free) before the
            // log is written.
            drop((out, slot));
            report_reroutes(&state, &node, &reroutes).await;
            tracing::debug!(
                chunks = count,
                bytes = sent,
                prefetch_ms = prefetched.as_millis() as u64,
                read_ms = reading.as_millis() as u64,
                send_wait_ms = waiting.as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "ReadChunks served"
            );
        });
        Ok(Response::new(stream))
    }

    async fn repair_chunks(
        &self,
        request: Request<pb::RepairChunksRequest>,
    ) -> Result<Response<pb::RepairChunksResponse>, Status> {
        let (session, _) = self.session(&request)?;
        let raw = request.into_inner().chunk_ids;
        convert::at_most(raw.len(), tandem_proto::MAX_REPAIR_CHUNK_IDS, "chunk ids")?;
        let ids = convert::chunk_ids(&raw)?;
        let name = session.node.clone();
        let node = super::blocking(&self.state, move |s| s.repo.registered_node(&name)).await?;
        let report = crate::repl::repair::repair_chunks(&self.state, &node, ids).await?;
        let usable = report
            .intact
            .iter()
            .chain(&report.repaired)
            .map(|id| id.as_slice().to_vec())
            .collect();
        Ok(Response::new(pb::RepairChunksResponse {
            intact: report.intact.len() as u64,
            usable,
            repaired: report.repaired.len() as u64,
            unrepaired: report.unrepaired.len() as u64,
            partner: report.partner.unwrap_or_default(),
            reason: report.reason.unwrap_or_default(),
            pools: report
                .from_pools
                .into_values()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        }))
    }

    async fn query_filespaces(
        &self,
        request: Request<pb::QueryFilespacesRequest>,
    ) -> Result<Response<pb::QueryFilespacesResponse>, Status> {
        let (session, _) = self.session(&request)?;
        let (change_token, filespaces) = super::blocking(&self.state, move |s| {
            // The token first: a change committed in between makes the
            // client look again next time, never miss it.
            let token = s.repo.catalog.change_token(session.node_id)?;
            Ok((token, s.repo.catalog.list_filespaces(session.node_id)?))
        })
        .await?;
        Ok(Response::new(pb::QueryFilespacesResponse {
            filespaces: filespaces
                .into_iter()
                .map(convert::filespace_to_pb)
                .collect(),
            change_token,
        }))
    }

    async fn delete_versions(
        &self,
        request: Request<pb::DeleteVersionsRequest>,
    ) -> Result<Response<pb::DeleteVersionsResponse>, Status> {
        let (session, _) = self.session(&request)?;
        let peer = peer_of(&request);
        let ids = archive::object_ids(&request.into_inner())?;
        self.refuse_replica(&session, &peer).await?;
        let node_id = session.node_id;
        let deleted = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.delete_node_versions(node_id, &ids)?)
        })
        .await?;
        if deleted > 0 {
            actlog::record(
                &self.state.repo.catalog,
                ServerMsg::VersionsDeleted,
                &session.node,
                &peer,
                format!(
                    "delete backup: {deleted} version(s) of node {} deleted by its client",
                    session.node
                ),
            )
            .await;
        }
        Ok(Response::new(pb::DeleteVersionsResponse { deleted }))
    }

    async fn put_vault_versions(
        &self,
        request: Request<pb::PutVaultVersionsRequest>,
    ) -> Result<Response<pb::PutVaultVersionsResponse>, Status> {
        let (session, _) = self.session(&request)?;
        let peer = peer_of(&request);
        self.refuse_replica(&session, &peer).await?;
        let req = request.into_inner();
        convert::at_most(
            req.versions.len(),
            tandem_proto::MAX_OBJECTS_PER_CALL,
            "versions",
        )?;
        let latest = self.vault_time_limit();
        let versions = req
            .versions
            .into_iter()
            .map(|v| convert::vault_version_from_pb(v, latest))
            .collect::<Result<Vec<_>, _>>()?;
        let node_id = session.node_id;
        let stored = super::blocking(&self.state, move |s| {
            let _pinned = s
                .repo
                .pin_for_commit(versions.iter().flat_map(|v| &v.chunks));
            s.repo.catalog.put_vault_versions(node_id, &versions)
        })
        .await?;
        if stored > 0 {
            actlog::record(
                &self.state.repo.catalog,
                ServerMsg::VaultSynced,
                &session.node,
                &peer,
                format!(
                    "{stored} version(s) of node {} synchronised from its local vault",
                    session.node
                ),
            )
            .await;
        }
        Ok(Response::new(pb::PutVaultVersionsResponse { stored }))
    }

    async fn deactivate_vault_versions(
        &self,
        request: Request<pb::DeactivateVaultVersionsRequest>,
    ) -> Result<Response<pb::DeactivateVaultVersionsResponse>, Status> {
        let (session, _) = self.session(&request)?;
        let peer = peer_of(&request);
        self.refuse_replica(&session, &peer).await?;
        let req = request.into_inner();
        convert::at_most(
            req.deactivations.len(),
            tandem_proto::MAX_OBJECTS_PER_CALL,
            "deactivations",
        )?;
        let latest = self.vault_time_limit();
        let mut changes = Vec::with_capacity(req.deactivations.len());
        for d in req.deactivations {
            let id = tandem_proto::ObjectId::from_slice(&d.object_id)
                .map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
            if d.deactivated_ns <= 0 || d.deactivated_ns > latest {
                return Err(Status::from(ServerError::InvalidArgument(format!(
                    "deactivation time {} of version {id} is not a past time",
                    d.deactivated_ns
                ))));
            }
            changes.push((id, d.deactivated_ns));
        }
        let node_id = session.node_id;
        let deactivated = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.deactivate_versions(node_id, &changes)?)
        })
        .await?;
        if deactivated > 0 {
            actlog::record(
                &self.state.repo.catalog,
                ServerMsg::VaultSynced,
                &session.node,
                &peer,
                format!(
                    "{deactivated} version(s) of node {} made inactive as in its local vault",
                    session.node
                ),
            )
            .await;
        }
        Ok(Response::new(pb::DeactivateVaultVersionsResponse {
            deactivated,
        }))
    }

    async fn mark_backup(
        &self,
        request: Request<pb::MarkBackupRequest>,
    ) -> Result<Response<pb::MarkBackupResponse>, Status> {
        let (session, _) = self.session(&request)?;
        let peer = peer_of(&request);
        let req = request.into_inner();
        convert::check_path(&req.filespace)?;
        self.refuse_replica(&session, &peer).await?;
        let (filespace, completed) = (req.filespace.clone(), req.completed);
        let now = now_ns();
        let node_id = session.node_id;
        super::blocking(&self.state, move |s| {
            Ok(s.repo
                .catalog
                .mark_backup(node_id, &filespace, completed, now)?)
        })
        .await?;
        if req.completed {
            // Fold the backup's WAL into the catalog file while the server is
            // otherwise idle, as at shutdown, so an idle server keeps one
            // self-contained database and no WAL of up to 16 MiB beside it.
            // Spaced out, and one waiting at a time: a node may end backups
            // in a loop, and each checkpoint holds the writer while it runs.
            let catalog = self.state.repo.catalog.clone();
            if let Some(wait) = catalog.schedule_checkpoint_after_backup() {
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Err(e) = catalog.checkpoint_after_backup() {
                            tracing::warn!("checkpoint after a backup failed: {e}");
                        }
                    })
                    .await;
                });
            }
            actlog::record(
                &self.state.repo.catalog,
                ServerMsg::BackupCompleted,
                &session.node,
                &peer,
                format!(
                    "backup of filespace {} for node {} completed",
                    req.filespace, session.node
                ),
            )
            .await;
        }
        Ok(Response::new(pb::MarkBackupResponse { recorded_ns: now }))
    }

    async fn set_password(
        &self,
        request: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::SetPasswordResponse>, Status> {
        let (session, _) = self.session(&request)?;
        let peer = peer_of(&request);
        self.refuse_replica(&session, &peer).await?;
        let req = request.into_inner();
        auth::check_password_rules(&req.new_password)?;
        let name = session.node.clone();
        let stored = super::blocking(&self.state, move |s| {
            Ok(s.repo.registered_node(&name)?.password_hash)
        })
        .await?;
        // Checked as a logon is: in one of the few verification slots.
        let checked_against = stored.clone();
        if !super::check_password(&self.state, Some(stored), req.old_password).await? {
            return Err(ServerError::Unauthenticated(
                "the current password is wrong; the password was not changed".into(),
            )
            .into());
        }
        let name = session.node.clone();
        super::blocking(&self.state, move |s| {
            let hash = auth::hash_password(&req.new_password)?;
            // Only over the hash just checked: an administrator's reset
            // made while the check ran is kept.
            if s.repo
                .catalog
                .replace_password_hash(&name, &checked_against, &hash)?
            {
                Ok(())
            } else {
                Err(ServerError::FailedPrecondition(format!(
                    "the password of node {name} was changed on the server while this change was checked; it was not changed again: ask the administrator, or log on with the new password and try again"
                )))
            }
        })
        .await?;
        actlog::record(
            &self.state.repo.catalog,
            ServerMsg::PasswordChanged,
            &session.node,
            &peer,
            format!("node {} changed its password", session.node),
        )
        .await;
        Ok(Response::new(pb::SetPasswordResponse {}))
    }

    async fn commit_archive(
        &self,
        request: Request<pb::CommitArchiveRequest>,
    ) -> Result<Response<pb::CommitArchiveResponse>, Status> {
        self.store_archive(request).await
    }

    type QueryArchivesStream = ResponseStream<pb::QueryArchivesResponse>;

    async fn query_archives(
        &self,
        request: Request<pb::QueryArchivesRequest>,
    ) -> Result<Response<Self::QueryArchivesStream>, Status> {
        self.list_archives(request).await
    }

    async fn delete_archives(
        &self,
        request: Request<pb::DeleteVersionsRequest>,
    ) -> Result<Response<pb::DeleteVersionsResponse>, Status> {
        self.remove_archives(request).await
    }

    async fn query_schedule(
        &self,
        request: Request<pb::QueryScheduleRequest>,
    ) -> Result<Response<pb::QueryScheduleResponse>, Status> {
        let (session, _) = self.session(&request)?;
        let node = session.node.clone();
        let schedules = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.schedules_of_node(&node)?)
        })
        .await?;
        let now = now_ns();
        let mut runs: Vec<pb::ScheduledRun> = schedules
            .iter()
            .filter_map(|s| {
                s.next_window(now)
                    .map(|w| convert::scheduled_run_to_pb(s, w))
            })
            .collect();
        runs.sort_by(|a, b| (a.start_ns, &a.schedule).cmp(&(b.start_ns, &b.schedule)));
        Ok(Response::new(pb::QueryScheduleResponse {
            runs,
            now_ns: now,
        }))
    }

    async fn report_schedule_event(
        &self,
        request: Request<pb::ReportScheduleEventRequest>,
    ) -> Result<Response<pb::ReportScheduleEventResponse>, Status> {
        let (session, _) = self.session(&request)?;
        let peer = peer_of(&request);
        let req = request.into_inner();
        if !matches!(req.state.as_str(), "started" | "completed" | "failed") {
            return Err(Status::from(ServerError::InvalidArgument(format!(
                "event state {:?} is not started, completed or failed",
                req.state.chars().take(40).collect::<String>()
            ))));
        }
        convert::at_most(req.message.len(), 1024, "message bytes")?;
        crate::schedule::check_name(&req.schedule)
            .map_err(|e| Status::from(ServerError::InvalidArgument(e)))?;
        let (node, schedule_name) = (session.node.clone(), req.schedule.to_ascii_uppercase());
        let (lookup_node, lookup_schedule) = (node.clone(), schedule_name.clone());
        let schedule = super::blocking(&self.state, move |s| {
            Ok(s.repo
                .catalog
                .schedules_of_node(&lookup_node)?
                .into_iter()
                .find(|sched| sched.name == lookup_schedule))
        })
        .await?
        .ok_or_else(|| {
            Status::from(ServerError::NotFound(format!(
                "node {node} is not associated with schedule {schedule_name} on server {}",
                self.state.config.name
            )))
        })?;
        // Only a window that exists and has opened: a client cannot fill
        // the event table with runs of its own invention.
        if !schedule.is_window_start(req.window_start_ns) || req.window_start_ns > now_ns() {
            return Err(Status::from(ServerError::InvalidArgument(format!(
                "{} is not the start of an opened window of schedule {schedule_name}",
                req.window_start_ns
            ))));
        }
        // A run starts inside its window (a few minutes' slack for the
        // client's estimate of the server's clock).
        const SLACK_NS: i64 = 300_000_000_000;
        let window_end = schedule
            .windows_between(req.window_start_ns, req.window_start_ns, 1)
            .first()
            .map_or(req.window_start_ns, |w| w.end_ns);
        if req.started_ns != 0
            && (req.started_ns < req.window_start_ns.saturating_sub(SLACK_NS)
                || req.started_ns > window_end.saturating_add(SLACK_NS))
        {
            return Err(Status::from(ServerError::InvalidArgument(format!(
                "the run's start {} is outside its window of schedule {schedule_name}",
                req.started_ns
            ))));
        }
        let reported = crate::schedule::Reported {
            state: req.state.clone(),
            exit_code: req.exit_code,
            message: req.message.clone(),
            started_ns: req.started_ns,
            ended_ns: req.ended_ns,
        };
        let (n, sname, start) = (node.clone(), schedule_name.clone(), req.window_start_ns);
        let changed = super::blocking(&self.state, move |s| {
            Ok(s.repo
                .catalog
                .record_schedule_event(&sname, &n, start, &reported, now_ns())?)
        })
        .await?;
        if !changed {
            // Reported before: the first outcome stands, logged once.
            return Ok(Response::new(pb::ReportScheduleEventResponse {}));
        }
        let window = tandem_client::output::timefmt::rfc3339(req.window_start_ns);
        match req.state.as_str() {
            "completed" => {
                actlog::record(
                    &self.state.repo.catalog,
                    ServerMsg::ScheduleCompleted,
                    &node,
                    &peer,
                    format!(
                        "scheduled run of {schedule_name} by node {node} (window {window}) completed, exit code {}",
                        req.exit_code
                    ),
                )
                .await;
            }
            "failed" => {
                actlog::record(
                    &self.state.repo.catalog,
                    ServerMsg::ScheduleFailed,
                    &node,
                    &peer,
                    format!(
                        "scheduled run of {schedule_name} by node {node} (window {window}) failed, exit code {}: {}",
                        req.exit_code,
                        actlog::label(&req.message)
                    ),
                )
                .await;
            }
            _ => {}
        }
        Ok(Response::new(pb::ReportScheduleEventResponse {}))
    }

    async fn logoff(
        &self,
        request: Request<pb::LogoffRequest>,
    ) -> Result<Response<pb::LogoffResponse>, Status> {
        let (_, token) = self.session(&request)?;
        let peer = peer_of(&request);
        if let Some(s) = self.state.end_session(&token) {
            actlog::record(
                &self.state.repo.catalog,
                ServerMsg::SessionEnded,
                &s.node,
                &peer,
                format!(
                    "session {} for node {} ended: {} bytes received, {} bytes sent",
                    s.id, s.node, s.bytes_received, s.bytes_sent
                ),
            )
            .await;
        }
        Ok(Response::new(pb::LogoffResponse {}))
    }
}
