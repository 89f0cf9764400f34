//! The `Admin` service that `tandem-admin` calls. Every call must carry a
//! named administrator's credentials or the server's bootstrap admin token,
//! and is recorded in the activity log with who made it.

use std::sync::Arc;

use tandem_proto::pb::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use super::peer_of;
use crate::ServerState;
use crate::actlog::{self, ServerMsg};
use crate::auth;
use crate::catalog::{ActlogFilter, ServerDeletion, Setting};
use crate::convert::{self, node_to_pb, occupancy_to_pb, preview_to_pb, run_to_pb};
use crate::error::ServerError;
use crate::expire::{self, ExpireReport};
use crate::model::{PolicyUpdate, ReplMode, ReplRule, ReplState, normalize_node_name, now_ns};

/// The most activity-log records one answer carries (a record is at most
/// about 2 KiB, so this stays under the 64 MiB message cap).
const MAX_ACTLOG_RECORDS: u32 = 20_000;

/// Versions an expiration preview lists when the caller names no limit.
const DEFAULT_PREVIEW_LIST: usize = 1000;
/// The most versions a preview lists (the names' total size is bounded too).
const MAX_PREVIEW_LIST: u32 = 10_000;

/// Implements `tandem.v1.Admin` over the server state.
#[derive(Debug, Clone)]
pub struct AdminService {
    state: Arc<ServerState>,
}

/// A node, server or administrator name (they follow one rule), upper-cased.
fn checked_name(raw: &str, what: &str) -> Result<String, Status> {
    normalize_node_name(raw).ok_or_else(|| {
        Status::from(ServerError::InvalidArgument(format!(
            "{what} {raw:?} is not valid: use 1-64 letters, digits, '_', '-' or '.'"
        )))
    })
}

fn server_name(raw: &str) -> Result<String, Status> {
    checked_name(raw, "server name")
}

/// An address servers or clients connect to: `https://HOST:PORT`, or
/// `http://` to a loopback address when this server itself serves
/// plaintext (development only). Returns whether it is https.
fn check_url(state: &ServerState, address: &str) -> Result<bool, Status> {
    let https = tandem_tls::parse_url_scheme(address)
        .ok()
        .filter(|_| tonic::transport::Endpoint::from_shared(address.to_string()).is_ok())
        .ok_or_else(|| {
            Status::from(ServerError::InvalidArgument(format!(
                "address {address:?} must be a URL such as https://10.0.0.2:1500"
            )))
        })?;
    let development_plaintext =
        state.config.insecure_plaintext && tandem_tls::is_loopback_url(address);
    if !(https || development_plaintext) {
        return Err(Status::from(ServerError::InvalidArgument(format!(
            "address {address:?}: plaintext http:// is allowed only to a loopback IP address between development servers started with --insecure-plaintext; use https://"
        ))));
    }
    Ok(https)
}

/// The pinned fingerprint of a partner: required for an https address.
fn partner_fingerprint(address: &str, https: bool, given: &str) -> Result<String, Status> {
    if !https && !given.trim().is_empty() {
        return Err(Status::from(ServerError::InvalidArgument(format!(
            "address {address} is plaintext http://, which cannot check --fingerprint; use https://"
        ))));
    }
    if given.trim().is_empty() {
        return if https {
            Err(Status::from(ServerError::InvalidArgument(format!(
                "server at {address} needs --fingerprint: the SHA-256 fingerprint its `tandem-admin query status` prints (or its DATA_DIR/fingerprint)"
            ))))
        } else {
            Ok(String::new())
        };
    }
    given
        .parse::<tandem_tls::Fingerprint>()
        .map(|fp| fp.to_string())
        .map_err(|e| Status::from(ServerError::InvalidArgument(e.to_string())))
}

fn admin_name(raw: &str) -> Result<String, Status> {
    checked_name(raw, "administrator name")
}

fn admin_to_pb(a: crate::catalog::Admin) -> pb::AdminInfo {
    pb::AdminInfo {
        name: a.name,
        locked: a.locked,
        registered_ns: a.registered_ns,
        last_logon_ns: a.last_logon_ns,
        failed_logons: a.failed_logons,
    }
}

fn session_to_pb(s: crate::auth::Session) -> pb::SessionInfo {
    pb::SessionInfo {
        id: s.id,
        node: s.node,
        peer: s.peer,
        started_ns: s.started_ns,
        last_call_ns: s.last_call_ns,
        bytes_received: s.bytes_received,
        bytes_sent: s.bytes_sent,
    }
}

/// A fingerprint for the activity log, "none" when there is none.
fn or_none(fingerprint: &str) -> &str {
    if fingerprint.is_empty() {
        "none"
    } else {
        fingerprint
    }
}

fn node_name(raw: &str) -> Result<String, Status> {
    checked_name(raw, "node name")
}

/// Damaged-chunk records one `query damaged` lists, the oldest first.
const DAMAGED_LISTED: u32 = 1000;

/// ` --read-data-subset S` for the activity log, or nothing for all.
fn subset_flag(subset: crate::audit::ReadSubset) -> String {
    match subset {
        crate::audit::ReadSubset::All => String::new(),
        other => format!(" --read-data-subset {}", other.describe()),
    }
}

/// A node name a query may leave empty (then: every node).
fn optional_node_name(raw: String) -> Result<String, Status> {
    if raw.is_empty() {
        Ok(raw)
    } else {
        node_name(&raw)
    }
}

/// Who made an admin call, from where.
#[derive(Debug, Clone)]
struct Caller {
    /// The caller's address.
    peer: String,
    /// "administrator NAME" or "the admin token", for the activity log.
    who: String,
}

/// `NAME:PASSWORD` from the base64 of HTTP Basic credentials.
fn basic_credentials(encoded: &str) -> Option<(String, String)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_string(), password.to_string()))
}

impl AdminService {
    /// `define association` / `delete association`.
    async fn associate(
        &self,
        request: Request<pb::AssociationRequest>,
        remove: bool,
    ) -> Result<Response<pb::AssociationResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let req = request.into_inner();
        if req.nodes.is_empty() {
            return Err(Status::from(ServerError::InvalidArgument(
                "name at least one node".into(),
            )));
        }
        let nodes = req
            .nodes
            .iter()
            .map(|n| {
                normalize_node_name(n).ok_or_else(|| {
                    Status::from(ServerError::InvalidArgument(format!("bad node name {n:?}")))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let schedule = req.schedule.to_ascii_uppercase();
        let (sched, list) = (schedule.clone(), nodes.clone());
        let changed = super::blocking(&self.state, move |s| {
            s.repo.catalog.associate(&sched, &list, remove)
        })
        .await?;
        let verb = if remove { "delete" } else { "define" };
        self.audit(
            &caller,
            "",
            format!("{verb} association {schedule} {}", nodes.join(" ")),
        )
        .await;
        Ok(Response::new(pb::AssociationResponse { changed }))
    }

    /// A service over `state`.
    pub fn new(state: Arc<ServerState>) -> Self {
        AdminService { state }
    }

    /// Checks the caller's credentials, records the call with the caller's
    /// identity, and returns who called from where. Accepted: a named
    /// administrator (`authorization: Basic base64(NAME:PASSWORD)`), or the
    /// bootstrap token (`authorization: Bearer TOKEN`).
    async fn authorize<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let peer = peer_of(request);
        let method = request
            .extensions()
            .get::<super::limits::CalledMethod>()
            .map_or_else(|| "?".to_string(), |m| m.0.clone());
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let who = if let Some(token) = presented.strip_prefix("Bearer ") {
            let good = self
                .state
                .admin_token
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .matches(token);
            if !good {
                return Err(self
                    .refuse_unproven(
                        &peer,
                        "admin call refused: wrong admin token".into(),
                        "admin token wrong: use the token in the server's DATA_DIR/admin.token, or --admin NAME with its password",
                    )
                    .await);
            }
            "the admin token".to_string()
        } else if let Some(encoded) = presented.strip_prefix("Basic ") {
            let (name, password) = basic_credentials(encoded).ok_or_else(|| {
                Status::from(ServerError::Unauthenticated(
                    "malformed administrator credentials".into(),
                ))
            })?;
            format!(
                "administrator {}",
                self.check_admin(&peer, &name, &password).await?
            )
        } else {
            return Err(self
                .refuse_unproven(
                    &peer,
                    "admin call refused: no credentials".into(),
                    "no administrator credentials: give --admin NAME with its password, or the admin token",
                )
                .await);
        };
        actlog::record(
            &self.state.repo.catalog,
            ServerMsg::AdminCall,
            "",
            &peer,
            format!("{who} called {method}"),
        )
        .await;
        Ok(Caller { peer, who })
    }

    /// Records a refused admin call and returns the status to answer.
    async fn refuse(&self, peer: &str, admin: &str, logged: String, answer: &str) -> Status {
        actlog::record(
            &self.state.repo.catalog,
            ServerMsg::AdminAuthFailed,
            admin,
            peer,
            logged,
        )
        .await;
        Status::from(ServerError::Unauthenticated(answer.to_string()))
    }

    /// As [`Self::refuse`], for a call that presented no credentials or a
    /// wrong token: those cost the caller nothing, so they are recorded at a
    /// bounded rate ([`actlog::RefusalThrottle`]). A named administrator's
    /// wrong password costs an argon2 check in one of four slots, and its
    /// count towards a lock is news to the auditor: recorded each time.
    async fn refuse_unproven(&self, peer: &str, logged: String, answer: &str) -> Status {
        actlog::record_refusal(
            &self.state.repo.catalog,
            &self.state.refusals,
            ServerMsg::AdminAuthFailed,
            "",
            peer,
            logged,
        )
        .await;
        Status::from(ServerError::Unauthenticated(answer.to_string()))
    }

    /// Checks a named administrator's password as a node logon is checked:
    /// bounded argon2 work, a decoy hash for unknown names, the same answer
    /// for both, failures counted and the administrator locked at
    /// `invalid_password_limit`. Returns the upper-case name.
    async fn check_admin(
        &self,
        peer: &str,
        raw_name: &str,
        password: &str,
    ) -> Result<String, Status> {
        let refused = || {
            Status::from(ServerError::Unauthenticated("administrator credentials refused: unknown administrator, wrong password or locked administrator".into()))
        };
        let Some(name) = normalize_node_name(raw_name) else {
            return Err(refused());
        };
        let lookup = name.clone();
        let admin =
            super::blocking(&self.state, move |s| Ok(s.repo.catalog.admin(&lookup)?)).await?;
        let stored = admin.as_ref().map(|a| a.password_hash.clone());
        let good = super::check_password(&self.state, stored, password.to_string()).await?;
        let Some(admin) = admin else {
            self.refuse(
                peer,
                &name,
                format!("admin call refused: administrator {name} is not registered"),
                "",
            )
            .await;
            return Err(refused());
        };
        if !good {
            let limit = self.state.config.invalid_password_limit;
            let counted = name.clone();
            let failures = super::blocking(&self.state, move |s| {
                Ok(s.repo.catalog.record_admin_failure(&counted, limit)?)
            })
            .await?;
            self.refuse(
                peer,
                &name,
                format!("admin call refused: wrong password for administrator {name} ({failures} in a row)"),
                "",
            )
            .await;
            if limit > 0 && failures >= limit && !admin.locked {
                actlog::record(
                    &self.state.repo.catalog,
                    ServerMsg::AdminLocked,
                    &name,
                    peer,
                    format!("administrator {name} locked after {failures} wrong passwords in a row (invalid_password_limit {limit}); unlock with `update admin {name} --unlock`"),
                )
                .await;
            }
            return Err(refused());
        }
        // Refused as a wrong password is, so the answer tells a guesser
        // nothing; the log says it.
        if admin.locked {
            self.refuse(
                peer,
                &name,
                format!(
                    "admin call refused: administrator {name} is locked (the password given was right)"
                ),
                "",
            )
            .await;
            return Err(refused());
        }
        let accepted = name.clone();
        super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.record_admin_success(&accepted, now_ns())?)
        })
        .await?;
        Ok(name)
    }

    /// Records a change an administrator made, naming who made it.
    async fn audit(&self, caller: &Caller, node: &str, text: String) {
        actlog::record(
            &self.state.repo.catalog,
            ServerMsg::AdminCommand,
            node,
            &caller.peer,
            format!("{} ({})", text, caller.who),
        )
        .await;
    }

    async fn admin_info(&self, name: &str) -> Result<pb::AdminInfo, Status> {
        let lookup = name.to_string();
        super::blocking(&self.state, move |s| Ok(s.repo.catalog.admin(&lookup)?))
            .await?
            .map(admin_to_pb)
            .ok_or_else(|| {
                Status::from(ServerError::NotFound(format!(
                    "administrator {name} is not registered"
                )))
            })
    }

    async fn node_info(&self, name: String) -> Result<pb::NodeInfo, Status> {
        let lookup = name.clone();
        let mut rows = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.list_nodes(&lookup)?)
        })
        .await?;
        let (node, usage) = rows
            .pop()
            .ok_or_else(|| Status::from(ServerError::NodeNotFound { node: name }))?;
        let pool = pool_name(&self.state, node.pool_id);
        Ok(node_to_pb(node, usage, pool))
    }
}

/// The name of pool `id`, as the configuration gives it (a pool the
/// configuration no longer has shows by number).
fn pool_name(state: &ServerState, id: u32) -> String {
    state.repo.pools.name_of(id)
}

/// The id of the configured pool `name` (case-insensitive).
///
/// # Errors
/// [`ServerError::InvalidArgument`] naming the configured pools.
fn configured_pool(state: &ServerState, name: &str) -> Result<u32, ServerError> {
    let upper = name.trim().to_ascii_uppercase();
    let known = || -> String {
        let names: Vec<String> = state
            .repo
            .pools
            .iter()
            .map(|(_, e)| e.name.clone())
            .collect();
        names.join(", ")
    };
    if !crate::config::is_pool_name(&upper) {
        return Err(ServerError::InvalidArgument(format!(
            "{name:?} is not a storage pool name (1-{} letters, digits, '_' or '-'); the pools are {}",
            crate::config::MAX_POOL_NAME,
            known()
        )));
    }
    state.repo.pools.id_of(&upper).ok_or_else(|| {
        ServerError::InvalidArgument(format!(
            "storage pool {upper} is not configured (the pools are {}); add [pools.{upper}] to the server configuration and restart",
            known()
        ))
    })
}

/// The activity-log record of a MOVE NODEDATA of `node`.
fn describe_move(
    node: &str,
    from: &str,
    to: &str,
    report: &crate::repository::move_data::MoveReport,
) -> (ServerMsg, String) {
    let text = format!(
        "move nodedata {node} from {from} to {to}: {} chunk(s) in {from}, {} copied ({} bytes), {} already in {to}, {} removed from {from}, {} kept there (nodes whose pool it is, or open sessions, use them), {} with no whole copy left in place, in {:.1} s; expiration's compaction reclaims the space",
        report.chunks,
        report.copied,
        report.copied_bytes,
        report.already,
        report.removed,
        report.shared,
        report.damaged.len(),
        report.elapsed_secs
    );
    let msg = if report.damaged.is_empty() {
        ServerMsg::NodeDataMoved
    } else {
        ServerMsg::NodeDataMoveDamaged
    };
    (msg, text)
}

fn report_to_pb(r: ExpireReport) -> pb::ExpireInventoryResponse {
    pb::ExpireInventoryResponse {
        versions_expired: r.versions_expired,
        archives_expired: r.archives_expired,
        chunks_freed: r.chunks_freed,
        containers_compacted: r.containers_compacted,
        bytes_reclaimed: r.bytes_reclaimed,
        elapsed_secs: r.elapsed_secs,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn define_server(
        &self,
        request: Request<pb::DefineServerRequest>,
    ) -> Result<Response<pb::ServerInfo>, Status> {
        let caller = self.authorize(&request).await?;
        let req = request.into_inner();
        let name = server_name(&req.name)?;
        let https = check_url(&self.state, &req.address)?;
        let fingerprint = partner_fingerprint(&req.address, https, &req.fingerprint)?;
        if req.password.chars().count() < 8 {
            return Err(Status::from(ServerError::InvalidArgument(
                "the server password must have at least 8 characters".into(),
            )));
        }
        let (n, a, f) = (name.clone(), req.address.clone(), fingerprint.clone());
        let sealed = self.state.seal_partner_password(&name, &req.password);
        super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.define_server(&n, &a, &sealed, &f)?)
        })
        .await?;
        self.audit(
            &caller,
            "",
            format!(
                "define server {name} address {} fingerprint {}",
                req.address,
                if fingerprint.is_empty() {
                    "none (plaintext)"
                } else {
                    &fingerprint
                }
            ),
        )
        .await;
        Ok(Response::new(pb::ServerInfo {
            name,
            address: req.address,
            fingerprint,
            ..Default::default()
        }))
    }

    async fn ping_server(
        &self,
        request: Request<pb::PingServerRequest>,
    ) -> Result<Response<pb::PingServerResponse>, Status> {
        self.authorize(&request).await?;
        let name = server_name(&request.into_inner().name)?;
        let lookup = name.clone();
        let partner = super::blocking(&self.state, move |s| {
            s.repo.catalog.server(&lookup)?.ok_or_else(|| {
                ServerError::NotFound(format!(
                    "server {lookup} is not defined here; `query server` lists those that are"
                ))
            })
        })
        .await?;
        let started = std::time::Instant::now();
        // The whole handshake a replication run begins with, for no node;
        // the session it opens is ended at once.
        let target = crate::repl::remote::connect(&self.state, &partner, "").await?;
        let milliseconds = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        target.bye().await;
        let lookup = name.clone();
        let guid = super::blocking(&self.state, move |s| Ok(s.repo.catalog.server(&lookup)?))
            .await?
            .and_then(|p| p.guid)
            .map(|g| g.to_string())
            .unwrap_or_default();
        Ok(Response::new(pb::PingServerResponse {
            name,
            address: partner.address,
            guid,
            milliseconds,
        }))
    }

    async fn update_server(
        &self,
        request: Request<pb::UpdateServerRequest>,
    ) -> Result<Response<pb::ServerInfo>, Status> {
        let caller = self.authorize(&request).await?;
        let req = request.into_inner();
        let name = server_name(&req.name)?;
        let lookup = name.clone();
        let old = super::blocking(&self.state, move |s| Ok(s.repo.catalog.server(&lookup)?))
            .await?
            .ok_or_else(|| {
                Status::from(ServerError::NotFound(format!(
                    "server {name} is not defined here; `query server` lists those that are"
                )))
            })?;
        if req.address.is_empty() && req.password.is_empty() && req.fingerprint.is_empty() {
            return Err(Status::from(ServerError::InvalidArgument(format!(
                "nothing to change for server {name}: give --address, --server-password-file or --fingerprint"
            ))));
        }
        let address = if req.address.is_empty() {
            old.address.clone()
        } else {
            req.address.clone()
        };
        let https = check_url(&self.state, &address)?;
        // A new address may keep the pinned certificate; plaintext keeps none.
        let given = if req.fingerprint.is_empty() && https {
            old.fingerprint.clone()
        } else {
            req.fingerprint.clone()
        };
        let fingerprint = partner_fingerprint(&address, https, &given)?;
        let sealed = if req.password.is_empty() {
            None
        } else if req.password.chars().count() < 8 {
            return Err(Status::from(ServerError::InvalidArgument(
                "the server password must have at least 8 characters".into(),
            )));
        } else {
            Some(self.state.seal_partner_password(&name, &req.password))
        };
        let (n, a, f) = (name.clone(), address.clone(), fingerprint.clone());
        super::blocking(&self.state, move |s| {
            Ok(s.repo
                .catalog
                .update_server(&n, Some(&a), sealed.as_deref(), Some(&f))?)
        })
        .await?;
        let mut changes = Vec::new();
        if address != old.address {
            changes.push(format!("address {} -> {address}", old.address));
        }
        if fingerprint != old.fingerprint {
            changes.push(format!(
                "fingerprint {} -> {}",
                or_none(&old.fingerprint),
                or_none(&fingerprint)
            ));
        }
        if !req.password.is_empty() {
            changes.push("new shared password".into());
        }
        if changes.is_empty() {
            changes.push("nothing changed".into());
        }
        self.audit(
            &caller,
            "",
            format!("update server {name}: {}", changes.join(", ")),
        )
        .await;
        let lookup = name.clone();
        let is_replserver = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.setting(Setting::ReplServer)?.as_deref() == Some(lookup.as_str()))
        })
        .await?;
        Ok(Response::new(pb::ServerInfo {
            name,
            address,
            is_replserver,
            guid: old.guid.map(|g| g.to_string()).unwrap_or_default(),
            fingerprint,
        }))
    }

    async fn delete_server(
        &self,
        request: Request<pb::DeleteServerRequest>,
    ) -> Result<Response<pb::DeleteServerResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let name = server_name(&request.into_inner().name)?;
        let n = name.clone();
        let deletion = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.delete_server(&n)?)
        })
        .await?;
        match deletion {
            ServerDeletion::Deleted => {}
            ServerDeletion::NotDefined => {
                return Err(Status::from(ServerError::NotFound(format!(
                    "server {name} is not defined here; `query server` lists those that are"
                ))));
            }
            ServerDeletion::IsReplServer => {
                return Err(Status::from(ServerError::FailedPrecondition(format!(
                    "server {name} is this server's replication server; `set replserver \"\"` (or another server) first"
                ))));
            }
            ServerDeletion::SourceOf(replicas) => {
                return Err(Status::from(ServerError::FailedPrecondition(format!(
                    "server {name} is the source of the replicas of node(s) {} held here; `remove replnode` each first, or they could never be updated again",
                    replicas.join(", ")
                ))));
            }
        }
        // Whatever it had open here ends with its definition.
        self.state.end_partner_sessions(&name);
        self.audit(&caller, "", format!("delete server {name}"))
            .await;
        Ok(Response::new(pb::DeleteServerResponse {}))
    }

    async fn cancel_session(
        &self,
        request: Request<pb::CancelSessionRequest>,
    ) -> Result<Response<pb::SessionInfo>, Status> {
        let caller = self.authorize(&request).await?;
        let id = request.into_inner().id;
        let session = self.state.cancel_session(id).ok_or_else(|| {
            Status::from(ServerError::NotFound(format!(
                "no session {id} is open; `query session` lists those that are"
            )))
        })?;
        let node = match &session.kind {
            crate::auth::SessionKind::Node => session.node.clone(),
            crate::auth::SessionKind::Replication(_) => String::new(),
        };
        self.audit(
            &caller,
            &node,
            format!(
                "cancel session {id} of {} (client {})",
                session.node, session.peer
            ),
        )
        .await;
        Ok(Response::new(session_to_pb(session)))
    }

    async fn audit_nodes(
        &self,
        request: Request<pb::AuditNodesRequest>,
    ) -> Result<Response<pb::AuditNodesResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let req = request.into_inner();
        let name = optional_node_name(req.node)?;
        let subset = crate::audit::ReadSubset::parse(&req.read_data_subset)
            .map_err(ServerError::InvalidArgument)?;
        let lookup = name.clone();
        let nodes = super::blocking(&self.state, move |s| {
            let nodes = s.repo.catalog.list_nodes(&lookup)?;
            if !lookup.is_empty() && nodes.is_empty() {
                return Err(ServerError::NodeNotFound { node: lookup });
            }
            Ok(nodes.into_iter().map(|(n, _)| n).collect::<Vec<_>>())
        })
        .await?;
        self.audit(
            &caller,
            &name,
            format!(
                "audit node {}{}{}",
                if name.is_empty() { "(all)" } else { &name },
                if req.fix { " --fix" } else { "" },
                subset_flag(subset)
            ),
        )
        .await;
        let mut rows = Vec::with_capacity(nodes.len());
        for node in nodes {
            // Each audit runs in a task of its own, so it ends and is
            // recorded even when the caller leaves.
            let state = self.state.clone();
            let fix = req.fix;
            let report =
                tokio::spawn(
                    async move { crate::audit::audit_node(&state, &node, fix, subset).await },
                )
                .await
                .map_err(ServerError::from)??;
            rows.push(pb::AuditedNode {
                node: report.node,
                chunks_checked: report.chunks_checked,
                damaged: report.damaged,
                missing: report.missing,
                repaired: report.repaired,
                unrepaired: report.unrepaired,
                partner: report.partner.unwrap_or_default(),
                reason: report.reason.unwrap_or_default(),
                elapsed_secs: report.elapsed_secs,
                subset: report.subset,
                files: report.files,
            });
        }
        // One outcome for the whole call, so damage on one node is not
        // hidden by a clean audit of the next.
        crate::audit::AuditOutcome::now(
            format!("node {}", if name.is_empty() { "(all)" } else { &name }),
            subset,
            rows.iter().map(|r| r.chunks_checked).sum(),
            rows.iter().map(|r| r.damaged + r.missing).sum(),
            rows.iter().map(|r| r.unrepaired).sum(),
        )
        .remember(&self.state)
        .await;
        Ok(Response::new(pb::AuditNodesResponse { nodes: rows }))
    }

    async fn audit_pool(
        &self,
        request: Request<pb::AuditPoolRequest>,
    ) -> Result<Response<pb::AuditPoolResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let req = request.into_inner();
        let subset = crate::audit::ReadSubset::parse(&req.read_data_subset)
            .map_err(ServerError::InvalidArgument)?;
        // Only an empty name means every pool: a blank one is refused.
        let pool = if req.pool.is_empty() {
            None
        } else {
            Some(configured_pool(&self.state, &req.pool)?)
        };
        let scope = match (req.container, pool) {
            (Some(_), Some(_)) => {
                return Err(ServerError::InvalidArgument(
                    "name a container or a pool to audit, not both".into(),
                )
                .into());
            }
            (Some(n), None) => crate::audit::AuditScope::Container(n),
            (None, pool) => crate::audit::AuditScope::Pool(pool),
        };
        self.audit(
            &caller,
            "",
            format!(
                "audit {}{}{}",
                match scope {
                    crate::audit::AuditScope::Container(n) => format!("container {n}"),
                    crate::audit::AuditScope::Pool(None) => "pool".to_string(),
                    crate::audit::AuditScope::Pool(Some(id)) =>
                        format!("pool {}", pool_name(&self.state, id)),
                },
                if req.fix { " --fix" } else { "" },
                subset_flag(subset)
            ),
        )
        .await;
        // In a task of its own, so it ends and is recorded even when the
        // caller leaves.
        let state = self.state.clone();
        let fix = req.fix;
        let report =
            tokio::spawn(async move { crate::audit::audit_pool(&state, scope, subset, fix).await })
                .await
                .map_err(ServerError::from)??;
        Ok(Response::new(pb::AuditPoolResponse {
            scope: report.scope,
            subset: report.subset,
            containers: report.containers,
            chunks_checked: report.chunks_checked,
            bytes_read: report.bytes_read,
            damaged: report.damaged,
            repaired: report.repaired,
            unrepaired: report.unrepaired,
            files: report.files,
            reason: report.reason.unwrap_or_default(),
            elapsed_secs: report.elapsed_secs,
        }))
    }

    async fn query_damaged(
        &self,
        request: Request<pb::QueryDamagedRequest>,
    ) -> Result<Response<pb::QueryDamagedResponse>, Status> {
        self.authorize(&request).await?;
        let (list, total) = super::blocking(&self.state, |s| {
            Ok(s.repo.catalog.damaged_chunks(DAMAGED_LISTED)?)
        })
        .await?;
        Ok(Response::new(pb::QueryDamagedResponse {
            chunks: list
                .into_iter()
                .map(|d| pb::DamagedChunk {
                    chunk: d.id.to_string(),
                    container: d.container,
                    reason: d.reason,
                    files: d
                        .files
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect(),
                    found_ns: d.found_ns,
                })
                .collect(),
            total,
        }))
    }

    async fn recover_nodes(
        &self,
        request: Request<pb::RecoverNodesRequest>,
    ) -> Result<Response<pb::RecoverNodesResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let req = request.into_inner();
        if req.nodes.is_empty() != req.all {
            return Err(Status::from(ServerError::InvalidArgument(
                "name the nodes to recover, or give --all (not both)".into(),
            )));
        }
        let from = (!req.from.is_empty()).then_some(req.from.as_str());
        let plan = crate::repl::recover::plan(&self.state, &req.nodes, req.all, from).await?;
        self.audit(
            &caller,
            "",
            format!(
                "recover node {}",
                plan.iter()
                    .map(|(n, f)| format!("{n} (from {f})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .await;
        let mut nodes = Vec::with_capacity(plan.len());
        for (node, from) in plan {
            // Each recovery runs in a task of its own, so it ends and is
            // recorded even when the caller leaves.
            let state = self.state.clone();
            let recovery = tokio::spawn(async move {
                crate::repl::recover::recover_node(&state, &node, &from).await
            })
            .await
            .map_err(ServerError::from)??;
            let (state, report, message) = match recovery.outcome {
                Ok(crate::repl::recover::Recovered::Back(report)) => {
                    ("recovered", report, String::new())
                }
                Ok(crate::repl::recover::Recovered::NoReplica) => (
                    "released",
                    tandem_replication::RunReport::default(),
                    format!(
                        "server {} holds no replica of it; the hold is released",
                        recovery.from
                    ),
                ),
                Err(why) => ("failed", tandem_replication::RunReport::default(), why),
            };
            nodes.push(pb::RecoveredNode {
                node: recovery.node,
                from: recovery.from,
                state: state.into(),
                objects_received: report.objects_sent,
                chunks_received: report.chunks_sent,
                bytes_received: report.bytes_sent,
                chunks_present: report.chunks_skipped,
                states_updated: report.states_updated,
                elapsed_secs: recovery.elapsed_secs,
                message,
            });
        }
        Ok(Response::new(pb::RecoverNodesResponse { nodes }))
    }

    async fn switch_nodes(
        &self,
        request: Request<pb::SwitchNodesRequest>,
    ) -> Result<Response<pb::SwitchNodesResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let req = request.into_inner();
        if req.nodes.is_empty() != req.all {
            return Err(Status::from(ServerError::InvalidArgument(
                "name the nodes to switch, or give --all (not both)".into(),
            )));
        }
        if req.force && !req.cancel {
            return Err(Status::from(ServerError::InvalidArgument(
                "--force goes only with --cancel".into(),
            )));
        }
        if req.wait_secs > 86_400 {
            return Err(Status::from(ServerError::InvalidArgument(format!(
                "--wait {} is more than a day (86400 s); give a shorter wait",
                req.wait_secs
            ))));
        }
        let wait = if req.wait_secs == 0 {
            crate::repl::switch::DEFAULT_WAIT
        } else {
            std::time::Duration::from_secs(req.wait_secs)
        };
        let plan = crate::repl::switch::plan(&self.state, &req.nodes, req.all, req.cancel).await?;
        self.audit(
            &caller,
            "",
            format!(
                "switch replication {}{}",
                plan.join(", "),
                if req.cancel { " --cancel" } else { "" }
            ),
        )
        .await;
        // All nodes at once, each in a task of its own: their sessions are
        // waited for together, and each switch ends and is recorded even
        // when the caller leaves.
        let tasks: Vec<_> = plan
            .into_iter()
            .map(|node| {
                let state = self.state.clone();
                let (cancel, force) = (req.cancel, req.force);
                tokio::spawn(async move {
                    if cancel {
                        crate::repl::switch::cancel_switch(&state, &node, force).await
                    } else {
                        crate::repl::switch::switch_node(&state, &node, wait).await
                    }
                })
            })
            .collect();
        let mut reports = Vec::with_capacity(tasks.len());
        for task in tasks {
            reports.push(task.await.map_err(ServerError::from)?);
        }
        let nodes = reports
            .into_iter()
            .map(|r| {
                let (state, message) = match r.outcome {
                    Ok(crate::repl::switch::Switched::Done) => ("switched", String::new()),
                    Ok(crate::repl::switch::Switched::Already) => {
                        ("already switched", String::new())
                    }
                    Ok(crate::repl::switch::Switched::Cancelled) => ("cancelled", String::new()),
                    Err(why) => ("failed", why),
                };
                pb::SwitchedNode {
                    node: r.node,
                    to: r.to,
                    state: state.into(),
                    waited_for: r.waited_for,
                    objects_sent: r.objects_sent,
                    elapsed_secs: r.elapsed_secs,
                    message,
                }
            })
            .collect();
        Ok(Response::new(pb::SwitchNodesResponse { nodes }))
    }

    async fn backup_db(
        &self,
        request: Request<pb::BackupDbRequest>,
    ) -> Result<Response<pb::BackupDbResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let dir = std::path::PathBuf::from(request.into_inner().to_dir);
        let started = std::time::Instant::now();
        let taken = super::blocking(&self.state, move |s| {
            crate::dbbackup::take(&s.repo.catalog, &s.config.name, &dir)
        })
        .await?;
        actlog::record(
            &self.state.repo.catalog,
            ServerMsg::CatalogBackedUp,
            "",
            &caller.peer,
            format!(
                "catalog backed up to {} ({} bytes) ({})",
                taken.path.display(),
                taken.bytes,
                caller.who
            ),
        )
        .await;
        Ok(Response::new(pb::BackupDbResponse {
            path: taken.path.display().to_string(),
            bytes: taken.bytes,
            elapsed_secs: started.elapsed().as_secs_f64(),
        }))
    }

    async fn query_coverage(
        &self,
        request: Request<pb::QueryCoverageRequest>,
    ) -> Result<Response<pb::QueryCoverageResponse>, Status> {
        self.authorize(&request).await?;
        let node = optional_node_name(request.into_inner().node)?;
        let rows = super::blocking(&self.state, move |s| {
            let catalog = &s.repo.catalog;
            let replserver = catalog
                .setting(crate::catalog::Setting::ReplServer)?
                .unwrap_or_default();
            crate::coverage::report(catalog, &node, &replserver)
        })
        .await?;
        let now = now_ns();
        Ok(Response::new(pb::QueryCoverageResponse {
            rows: rows
                .into_iter()
                .map(|r| crate::convert::coverage_to_pb(r, now))
                .collect(),
            now_ns: now,
        }))
    }

    async fn query_node_filespaces(
        &self,
        request: Request<pb::QueryNodeFilespacesRequest>,
    ) -> Result<Response<pb::QueryNodeFilespacesResponse>, Status> {
        self.authorize(&request).await?;
        let node = optional_node_name(request.into_inner().node)?;
        let filespaces = super::blocking(&self.state, move |s| {
            let catalog = &s.repo.catalog;
            let nodes = catalog.list_nodes(&node)?;
            if !node.is_empty() && nodes.is_empty() {
                return Err(ServerError::NodeNotFound { node });
            }
            let mut out = Vec::new();
            for (n, _) in nodes {
                for f in catalog.list_filespaces(n.id)? {
                    out.push(pb::NodeFilespace {
                        node: n.name.clone(),
                        filespace: f.name,
                        active_objects: f.active_objects,
                        active_bytes: f.active_bytes,
                        last_backup_start_ns: f.last_backup_start_ns,
                        last_backup_end_ns: f.last_backup_end_ns,
                        last_replication_ns: f.last_repl_ns,
                    });
                }
            }
            Ok(out)
        })
        .await?;
        Ok(Response::new(pb::QueryNodeFilespacesResponse {
            filespaces,
        }))
    }

    async fn query_servers(
        &self,
        request: Request<pb::QueryServersRequest>,
    ) -> Result<Response<pb::QueryServersResponse>, Status> {
        self.authorize(&request).await?;
        let (servers, repl) = super::blocking(&self.state, |s| {
            Ok((
                s.repo.catalog.servers()?,
                s.repo
                    .catalog
                    .setting(Setting::ReplServer)?
                    .unwrap_or_default(),
            ))
        })
        .await?;
        Ok(Response::new(pb::QueryServersResponse {
            servers: servers
                .into_iter()
                .map(|p| pb::ServerInfo {
                    is_replserver: p.name == repl,
                    name: p.name,
                    address: p.address,
                    guid: p.guid.map(|g| g.to_string()).unwrap_or_default(),
                    fingerprint: p.fingerprint,
                })
                .collect(),
        }))
    }

    async fn set_repl_server(
        &self,
        request: Request<pb::SetReplServerRequest>,
    ) -> Result<Response<pb::SetReplServerResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let raw = request.into_inner().name;
        let name = if raw.is_empty() {
            raw
        } else {
            server_name(&raw)?
        };
        let n = name.clone();
        super::blocking(&self.state, move |s| {
            if !n.is_empty() && s.repo.catalog.server(&n)?.is_none() {
                return Err(ServerError::ServerNotDefined { server: n });
            }
            Ok(s.repo.catalog.set_setting(Setting::ReplServer, &n)?)
        })
        .await?;
        self.audit(&caller, "", format!("set replserver {name}"))
            .await;
        Ok(Response::new(pb::SetReplServerResponse {}))
    }

    async fn set_failover_address(
        &self,
        request: Request<pb::SetFailoverAddressRequest>,
    ) -> Result<Response<pb::SetFailoverAddressResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let address = request.into_inner().address;
        if !address.is_empty() {
            check_url(&self.state, &address)?;
        }
        let a = address.clone();
        super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.set_setting(Setting::FailoverAddress, &a)?)
        })
        .await?;
        self.audit(&caller, "", format!("set failoveraddress {address}"))
            .await;
        Ok(Response::new(pb::SetFailoverAddressResponse {}))
    }

    async fn register_admin(
        &self,
        request: Request<pb::RegisterAdminRequest>,
    ) -> Result<Response<pb::AdminInfo>, Status> {
        let caller = self.authorize(&request).await?;
        let req = request.into_inner();
        let name = admin_name(&req.name)?;
        auth::check_password_rules(&req.password)?;
        let insert = name.clone();
        let added = super::blocking(&self.state, move |s| {
            let hash = auth::hash_password(&req.password)?;
            Ok(s.repo.catalog.register_admin(&insert, &hash, now_ns())?)
        })
        .await?;
        if !added {
            return Err(Status::from(ServerError::AlreadyExists(format!(
                "administrator {name} is registered already; use `update admin {name}`"
            ))));
        }
        self.audit(&caller, "", format!("register admin {name}"))
            .await;
        Ok(Response::new(self.admin_info(&name).await?))
    }

    async fn update_admin(
        &self,
        request: Request<pb::UpdateAdminRequest>,
    ) -> Result<Response<pb::AdminInfo>, Status> {
        let caller = self.authorize(&request).await?;
        let req = request.into_inner();
        let name = admin_name(&req.name)?;
        if req.lock && req.unlock {
            return Err(Status::from(ServerError::InvalidArgument(
                "give --lock or --unlock, not both".into(),
            )));
        }
        let locked = (req.lock || req.unlock).then_some(req.lock);
        if locked.is_none() && req.password.is_empty() {
            return Err(Status::from(ServerError::InvalidArgument(
                "nothing to change: give --password-file, --lock or --unlock".into(),
            )));
        }
        if !req.password.is_empty() {
            auth::check_password_rules(&req.password)?;
        }
        let (target, password) = (name.clone(), req.password);
        let found = super::blocking(&self.state, move |s| {
            let hash = if password.is_empty() {
                None
            } else {
                Some(auth::hash_password(&password)?)
            };
            Ok(s.repo
                .catalog
                .update_admin(&target, hash.as_deref(), locked)?)
        })
        .await?;
        if !found {
            return Err(Status::from(ServerError::NotFound(format!(
                "administrator {name} is not registered"
            ))));
        }
        let what = match locked {
            Some(true) => "locked",
            Some(false) => "unlocked",
            None => "password changed",
        };
        self.audit(&caller, "", format!("update admin {name}: {what}"))
            .await;
        Ok(Response::new(self.admin_info(&name).await?))
    }

    async fn remove_admin(
        &self,
        request: Request<pb::RemoveAdminRequest>,
    ) -> Result<Response<pb::RemoveAdminResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let name = admin_name(&request.into_inner().name)?;
        if caller.who == format!("administrator {name}") {
            return Err(Status::from(ServerError::FailedPrecondition(format!(
                "administrator {name} cannot remove itself; another administrator can"
            ))));
        }
        let target = name.clone();
        match super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.remove_admin(&target)?)
        })
        .await?
        {
            None => Err(Status::from(ServerError::NotFound(format!(
                "administrator {name} is not registered"
            )))),
            Some(false) => Err(Status::from(ServerError::FailedPrecondition(format!(
                "administrator {name} is the last one; register another first"
            )))),
            Some(true) => {
                self.audit(&caller, "", format!("remove admin {name}"))
                    .await;
                Ok(Response::new(pb::RemoveAdminResponse {}))
            }
        }
    }

    async fn query_admins(
        &self,
        request: Request<pb::QueryAdminsRequest>,
    ) -> Result<Response<pb::QueryAdminsResponse>, Status> {
        self.authorize(&request).await?;
        let admins = super::blocking(&self.state, |s| Ok(s.repo.catalog.list_admins()?)).await?;
        Ok(Response::new(pb::QueryAdminsResponse {
            admins: admins.into_iter().map(admin_to_pb).collect(),
        }))
    }

    async fn rotate_admin_token(
        &self,
        request: Request<pb::RotateAdminTokenRequest>,
    ) -> Result<Response<pb::RotateAdminTokenResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let path = super::blocking(&self.state, |s| s.rotate_admin_token()).await?;
        self.audit(
            &caller,
            "",
            format!(
                "rotate admintoken: a new token is in {}; the old one no longer works",
                path.display()
            ),
        )
        .await;
        Ok(Response::new(pb::RotateAdminTokenResponse {
            path: path.display().to_string(),
        }))
    }

    async fn define_schedule(
        &self,
        request: Request<pb::ScheduleInfo>,
    ) -> Result<Response<pb::ScheduleInfo>, Status> {
        let caller = self.authorize(&request).await?;
        let info = request.into_inner();
        let schedule = crate::schedule::Schedule {
            name: info.name.to_ascii_uppercase(),
            action: info
                .action
                .parse()
                .map_err(|e: crate::model::UnknownWord| {
                    Status::from(ServerError::InvalidArgument(e.to_string()))
                })?,
            objects: info.objects,
            start_ns: info.start_ns,
            period_secs: info.period_secs,
            duration_secs: info.duration_secs,
            pre_command: info.pre_command,
            post_command: info.post_command,
        };
        schedule
            .check()
            .map_err(|why| Status::from(ServerError::InvalidArgument(why)))?;
        let stored = schedule.clone();
        super::blocking(&self.state, move |s| {
            s.repo.catalog.define_schedule(&stored, now_ns())
        })
        .await?;
        self.audit(
            &caller,
            "",
            format!(
                "define schedule {} action {} every {} s, window {} s",
                schedule.name, schedule.action, schedule.period_secs, schedule.duration_secs
            ),
        )
        .await;
        Ok(Response::new(convert::schedule_to_pb(
            &schedule,
            Vec::new(),
        )))
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let name = request.into_inner().name.to_ascii_uppercase();
        let lookup = name.clone();
        let removed = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.delete_schedule(&lookup)?)
        })
        .await?
        .ok_or_else(|| {
            Status::from(ServerError::NotFound(format!(
                "schedule {name} is not defined; `query schedule` lists the schedules"
            )))
        })?;
        self.audit(&caller, "", format!("delete schedule {name}"))
            .await;
        Ok(Response::new(pb::DeleteScheduleResponse {
            associations: removed,
        }))
    }

    async fn query_schedules(
        &self,
        request: Request<pb::QuerySchedulesRequest>,
    ) -> Result<Response<pb::QuerySchedulesResponse>, Status> {
        self.authorize(&request).await?;
        let name = request.into_inner().name.to_ascii_uppercase();
        let rows = super::blocking(&self.state, move |s| {
            Ok(s.repo
                .catalog
                .schedules((!name.is_empty()).then_some(name.as_str()))?)
        })
        .await?;
        Ok(Response::new(pb::QuerySchedulesResponse {
            schedules: rows
                .into_iter()
                .map(|(s, nodes)| convert::schedule_to_pb(&s, nodes))
                .collect(),
            now_ns: now_ns(),
        }))
    }

    async fn define_association(
        &self,
        request: Request<pb::AssociationRequest>,
    ) -> Result<Response<pb::AssociationResponse>, Status> {
        self.associate(request, false).await
    }

    async fn delete_association(
        &self,
        request: Request<pb::AssociationRequest>,
    ) -> Result<Response<pb::AssociationResponse>, Status> {
        self.associate(request, true).await
    }

    async fn query_events(
        &self,
        request: Request<pb::QueryEventsRequest>,
    ) -> Result<Response<pb::QueryEventsResponse>, Status> {
        self.authorize(&request).await?;
        let req = request.into_inner();
        let node = if req.node.is_empty() {
            None
        } else {
            Some(normalize_node_name(&req.node).ok_or_else(|| {
                Status::from(ServerError::InvalidArgument(format!(
                    "bad node name {:?}",
                    req.node
                )))
            })?)
        };
        let now = now_ns();
        let (runs, truncated) = super::blocking(&self.state, move |s| {
            Ok(s.repo
                .catalog
                .expected_runs(req.begin_ns, req.end_ns, node.as_deref(), now)?)
        })
        .await?;
        Ok(Response::new(pb::QueryEventsResponse {
            events: runs.iter().map(convert::event_to_pb).collect(),
            now_ns: now,
            truncated,
        }))
    }

    async fn set_actlog_retention(
        &self,
        request: Request<pb::SetActlogRetentionRequest>,
    ) -> Result<Response<pb::SetActlogRetentionResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let days = request.into_inner().days;
        if !(1..=actlog::MAX_RETENTION_DAYS).contains(&days) {
            return Err(Status::from(ServerError::InvalidArgument(format!(
                "activity log retention of {days} days is out of range; give 1 to {} days",
                actlog::MAX_RETENTION_DAYS
            ))));
        }
        let removed = super::blocking(&self.state, move |s| {
            Ok(actlog::set_retention(&s.repo.catalog, days)?)
        })
        .await?;
        self.audit(
            &caller,
            "",
            format!("set actlogretention {days} ({removed} older records removed)"),
        )
        .await;
        Ok(Response::new(pb::SetActlogRetentionResponse { removed }))
    }

    async fn replicate_node(
        &self,
        request: Request<pb::ReplicateNodeRequest>,
    ) -> Result<Response<pb::ReplicateNodeResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let req = request.into_inner();
        if req.nodes.is_empty() {
            return Err(Status::from(ServerError::InvalidArgument(
                "name at least one node".into(),
            )));
        }
        let names = req
            .nodes
            .iter()
            .map(|n| node_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        self.audit(&caller, "", format!("replicate node {}", names.join(" ")))
            .await;
        let mut runs = Vec::new();
        for name in names {
            // The run, from its checks and its record to its end, goes on
            // in a task of its own, so it ends and is recorded even when a
            // waiting caller leaves (Ctrl-C on --wait drops this call);
            // `query replication` shows how it ended. Refusals (not
            // configured, disabled, running) come back at once.
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            let state = self.state.clone();
            let running = tokio::spawn(async move {
                let started = match crate::repl::start_run(state, name).await {
                    Ok(started) => started,
                    Err(refused) => {
                        let _ = started_tx.send(Err(refused));
                        return None;
                    }
                };
                let _ = started_tx.send(Ok(started.record().clone()));
                let ended = started.finish().await;
                if let Err(e) = &ended {
                    tracing::warn!(cause = %e, "a replication run could not be recorded");
                }
                Some(ended)
            });
            let record = started_rx.await.map_err(|_| {
                ServerError::Task("the replication run stopped before it started".into())
            })??;
            if req.wait {
                match running.await.map_err(ServerError::from)? {
                    Some(ended) => runs.push(run_to_pb(ended?)),
                    None => runs.push(run_to_pb(record)),
                }
            } else {
                runs.push(run_to_pb(record));
            }
        }
        Ok(Response::new(pb::ReplicateNodeResponse { runs }))
    }

    async fn query_repl_node(
        &self,
        request: Request<pb::QueryReplNodeRequest>,
    ) -> Result<Response<pb::QueryReplNodeResponse>, Status> {
        self.authorize(&request).await?;
        let name = node_name(&request.into_inner().node)?;
        crate::repl::compare_node(self.state.clone(), name)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn query_replication(
        &self,
        request: Request<pb::QueryReplicationRequest>,
    ) -> Result<Response<pb::QueryReplicationResponse>, Status> {
        self.authorize(&request).await?;
        let name = optional_node_name(request.into_inner().node)?;
        let runs = super::blocking(&self.state, move |s| Ok(s.repo.catalog.runs(&name)?)).await?;
        Ok(Response::new(pb::QueryReplicationResponse {
            runs: runs.into_iter().map(run_to_pb).collect(),
        }))
    }

    async fn remove_repl_node(
        &self,
        request: Request<pb::RemoveReplNodeRequest>,
    ) -> Result<Response<pb::RemoveReplNodeResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let name = node_name(&request.into_inner().node)?;
        let n = name.clone();
        let held =
            super::blocking(&self.state, move |s| Ok(s.repo.catalog.recovery_of(&n)?)).await?;
        if let Some(source) = held {
            return Err(Status::from(ServerError::FailedPrecondition(format!(
                "node {name} is held for recovery from server {source}: its replica there may hold versions this server lost. Run `recover node {name}` first"
            ))));
        }
        let n = name.clone();
        let found = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.update_node_replication(
                &n,
                Some(ReplState::Disabled),
                None,
                Some(ReplMode::None),
            )?)
        })
        .await?;
        if !found {
            return Err(ServerError::NodeNotFound { node: name }.into());
        }
        self.audit(&caller, &name, format!("remove replnode {name}"))
            .await;
        Ok(Response::new(pb::RemoveReplNodeResponse {}))
    }

    async fn expire_inventory(
        &self,
        request: Request<pb::ExpireInventoryRequest>,
    ) -> Result<Response<pb::ExpireInventoryResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let now = match request.into_inner().now_ns {
            0 => now_ns(),
            t => t,
        };
        let report = super::blocking(&self.state, move |s| s.expire_inventory(now)).await?;
        self.audit(&caller, "", "expire inventory".into()).await;
        actlog::record(
            &self.state.repo.catalog,
            ServerMsg::ExpirationDone,
            "",
            &caller.peer,
            expire::describe(&report, "requested"),
        )
        .await;
        Ok(Response::new(report_to_pb(report)))
    }

    async fn preview_expiration(
        &self,
        request: Request<pb::ExpireInventoryRequest>,
    ) -> Result<Response<pb::ExpirationPreview>, Status> {
        self.authorize(&request).await?;
        let req = request.into_inner();
        let now = match req.now_ns {
            0 => now_ns(),
            t => t,
        };
        let limit = match req.list_limit {
            0 => DEFAULT_PREVIEW_LIST,
            n => n.min(MAX_PREVIEW_LIST) as usize,
        };
        let preview =
            super::blocking(&self.state, move |s| s.preview_expiration(now, limit)).await?;
        Ok(Response::new(preview_to_pb(preview)))
    }

    async fn query_occupancy(
        &self,
        request: Request<pb::QueryOccupancyRequest>,
    ) -> Result<Response<pb::QueryOccupancyResponse>, Status> {
        self.authorize(&request).await?;
        let name = optional_node_name(request.into_inner().node)?;
        let rows = super::blocking(&self.state, move |s| {
            if !name.is_empty() {
                s.repo.registered_node(&name)?;
            }
            Ok(s.repo.catalog.occupancy(&name)?)
        })
        .await?;
        Ok(Response::new(pb::QueryOccupancyResponse {
            filespaces: rows.into_iter().map(occupancy_to_pb).collect(),
        }))
    }

    async fn move_node_data(
        &self,
        request: Request<pb::MoveNodeDataRequest>,
    ) -> Result<Response<pb::MoveNodeDataResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let req = request.into_inner();
        let name = node_name(&req.node)?;
        if req.from_pool.trim().is_empty() {
            return Err(ServerError::InvalidArgument(
                "name the pool to move the data from (--from-pool)".into(),
            )
            .into());
        }
        let from = configured_pool(&self.state, &req.from_pool)?;
        let lookup = name.clone();
        let node = super::blocking(&self.state, move |s| s.repo.registered_node(&lookup)).await?;
        let node_pool = node.pool_id;
        let to = if req.to_pool.is_empty() {
            node_pool
        } else {
            configured_pool(&self.state, &req.to_pool)?
        };
        let (from_name, to_name) = (pool_name(&self.state, from), pool_name(&self.state, to));
        if from == to {
            let why = if req.to_pool.is_empty() {
                format!(
                    "node {name}'s own pool is {from_name}, the pool to move from; name the target with --to-pool, or send the node elsewhere first with update node {name} --pool POOL"
                )
            } else {
                format!("the source and target pool are both {from_name}; name two different pools")
            };
            return Err(ServerError::InvalidArgument(why).into());
        }
        self.audit(
            &caller,
            &name,
            format!("move nodedata {name} --from-pool {from_name} --to-pool {to_name}"),
        )
        .await;
        // In a task of its own, so it ends and is recorded even when the
        // caller leaves.
        let state = self.state.clone();
        let (moving, peer) = (node.clone(), caller.peer.clone());
        let (from_text, to_text) = (from_name.clone(), to_name.clone());
        let report = tokio::spawn(async move {
            let moved = super::blocking(&state, move |s| {
                Ok(s.repo.move_node_data(&moving, from, to))
            })
            .await?;
            let (msg, text) = match &moved {
                Ok(report) => describe_move(&node.name, &from_text, &to_text, report),
                Err(e) => (
                    ServerMsg::NodeDataMoveDamaged,
                    format!(
                        "move nodedata {} from {from_text} to {to_text} did not complete: {e}",
                        node.name
                    ),
                ),
            };
            actlog::record(&state.repo.catalog, msg, &node.name, &peer, text).await;
            moved.map_err(|e| Status::from(ServerError::from(e)))
        })
        .await
        .map_err(ServerError::from)??;
        let note = if node_pool == to {
            String::new()
        } else {
            let sent_to = pool_name(&self.state, node_pool);
            format!(
                "node {name} still sends new data to {sent_to}; update node {name} --pool {to_name} to send it to {to_name}"
            )
        };
        Ok(Response::new(pb::MoveNodeDataResponse {
            node: name,
            from_pool: from_name,
            to_pool: to_name,
            chunks: report.chunks,
            copied: report.copied,
            copied_bytes: report.copied_bytes,
            already: report.already,
            removed: report.removed,
            shared: report.shared,
            damaged: report.damaged.len() as u64,
            elapsed_secs: report.elapsed_secs,
            note,
        }))
    }

    async fn query_stgpool(
        &self,
        request: Request<pb::QueryStgpoolRequest>,
    ) -> Result<Response<pb::QueryStgpoolResponse>, Status> {
        self.authorize(&request).await?;
        let wanted = request.into_inner().name.trim().to_ascii_uppercase();
        if !wanted.is_empty() {
            configured_pool(&self.state, &wanted)?;
        }
        let (statuses, nodes) = super::blocking(&self.state, |s| {
            Ok((s.repo.pools.statuses()?, s.repo.catalog.nodes_per_pool()?))
        })
        .await?;
        let pools = statuses
            .into_iter()
            .filter(|(name, _)| wanted.is_empty() || *name == wanted)
            .map(|(name, p)| pb::StoragePool {
                nodes: self
                    .state
                    .repo
                    .pools
                    .id_of(&name)
                    .and_then(|id| nodes.get(&id).copied())
                    .unwrap_or(0),
                name,
                kind: p.kind.into(),
                location: p.location,
                local_containers: p.local_containers,
                local_bytes: p.local_bytes,
                remote_containers: p.remote_containers,
                remote_bytes: p.remote_bytes,
                uploads_pending: p.uploads_pending,
                put_requests: p.put_requests,
                get_requests: p.get_requests,
                head_requests: p.head_requests,
                delete_requests: p.delete_requests,
                bytes_uploaded: p.bytes_uploaded,
                bytes_downloaded: p.bytes_downloaded,
                upload_failures: p.upload_failures,
                last_upload_error: p.last_upload_error,
            })
            .collect();
        Ok(Response::new(pb::QueryStgpoolResponse { pools }))
    }

    async fn delete_filespace(
        &self,
        request: Request<pb::DeleteFilespaceRequest>,
    ) -> Result<Response<pb::DeleteFilespaceResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let req = request.into_inner();
        let name = node_name(&req.node)?;
        let filespace = req.filespace;
        let (lookup, fs) = (name.clone(), filespace.clone());
        let (deleted, archives) =
            super::blocking(&self.state, move |s| {
                let node = s.repo.registered_node(&lookup)?;
                s.repo.catalog.delete_filespace(node.id, &fs)?.ok_or_else(|| {
                ServerError::NotFound(format!(
                    "node {lookup} has no filespace {fs:?}; see query filespace on the client"
                ))
            })
            })
            .await?;
        actlog::record(
            &self.state.repo.catalog,
            ServerMsg::FilespaceDeleted,
            &name,
            &caller.peer,
            format!(
                "delete filespace {filespace} of node {name}: {deleted} version(s) and {archives} archive copy(ies) deleted ({})",
                caller.who
            ),
        )
        .await;
        let report = super::blocking(&self.state, ServerState::reclaim).await?;
        Ok(Response::new(pb::DeleteFilespaceResponse {
            versions_deleted: deleted,
            archives_deleted: archives,
            reclaimed: Some(report_to_pb(report)),
        }))
    }

    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        let caller = self.authorize(&request).await?;
        let req = request.into_inner();
        let name = node_name(&req.name)?;
        auth::check_password_rules(&req.password)?;
        let pool = if req.pool.is_empty() {
            crate::model::DEFAULT_POOL
        } else {
            configured_pool(&self.state, &req.pool)?
        };
        let insert_name = name.clone();
        super::blocking(&self.state, move |s| {
            let hash = auth::hash_password(&req.password)?;
            s.repo
                .catalog
                .register_node(&insert_name, &hash, now_ns())?
                .ok_or(ServerError::NodeExists {
                    node: insert_name.clone(),
                })?;
            s.repo.catalog.set_node_pool(&insert_name, pool)?;
            Ok(())
        })
        .await?;
        let pool_note = if pool == crate::model::DEFAULT_POOL {
            String::new()
        } else {
            format!(" pool={}", pool_name(&self.state, pool))
        };
        self.audit(&caller, &name, format!("register node {name}{pool_note}"))
            .await;
        Ok(Response::new(self.node_info(name).await?))
    }

    async fn update_node(
        &self,
        request: Request<pb::UpdateNodeRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        let caller = self.authorize(&request).await?;
        let req = request.into_inner();
        let name = node_name(&req.name)?;
        if let Some(pw) = &req.password {
            auth::check_password_rules(pw)?;
        }
        let policy = req.policy.unwrap_or_default();
        let update = PolicyUpdate {
            verexists: policy.verexists,
            verdeleted: policy.verdeleted,
            retextra: policy.retextra,
            retonly: policy.retonly,
            retver: policy.retver,
        };
        if update.verexists == Some(0) {
            return Err(Status::from(ServerError::InvalidArgument(
                "verexists must be at least 1: the active version always counts".into(),
            )));
        }
        let mut changes = Vec::new();
        if let Some(l) = req.locked {
            changes.push(if l { "lock" } else { "unlock" }.to_string());
        }
        for (key, v) in [
            ("verexists", update.verexists),
            ("verdeleted", update.verdeleted),
            ("retextra", update.retextra),
            ("retonly", update.retonly),
            ("retver", update.retver),
        ] {
            if let Some(v) = v {
                changes.push(format!("{key}={v}"));
            }
        }
        if req.password.is_some() {
            changes.push("password".into());
        }
        let replstate = req.replstate.map(ReplState::from_pb).transpose()?;
        let replrule = req.replrule.map(ReplRule::from_pb).transpose()?;
        if let Some(st) = replstate {
            changes.push(format!("replstate={st}"));
        }
        if let Some(r) = &replrule {
            changes.push(format!("replrule={r}"));
        }
        let pool = req
            .pool
            .as_deref()
            .map(|p| configured_pool(&self.state, p))
            .transpose()?;
        if let Some(id) = pool {
            changes.push(format!("pool={}", pool_name(&self.state, id)));
        }
        let update_name = name.clone();
        super::blocking(&self.state, move |s| {
            let hash = req
                .password
                .as_deref()
                .map(auth::hash_password)
                .transpose()?;
            s.repo
                .catalog
                .update_node(&update_name, req.locked, update, hash.as_deref())?
                .ok_or_else(|| ServerError::NodeNotFound {
                    node: update_name.clone(),
                })?;
            s.repo
                .catalog
                .update_node_replication(&update_name, replstate, replrule, None)?;
            if let Some(id) = pool {
                s.repo.catalog.set_node_pool(&update_name, id)?;
            }
            Ok(())
        })
        .await?;
        self.audit(
            &caller,
            &name,
            format!("update node {name} {}", changes.join(" ")),
        )
        .await;
        Ok(Response::new(self.node_info(name).await?))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let caller = self.authorize(&request).await?;
        let name = node_name(&request.into_inner().name)?;
        let lookup = name.clone();
        let filespaces = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.remove_node(&lookup)?)
        })
        .await?;
        match filespaces {
            None => Err(ServerError::NodeNotFound { node: name }.into()),
            Some(0) => {
                self.state.end_node_sessions(&name);
                self.audit(&caller, &name, format!("remove node {name}"))
                    .await;
                Ok(Response::new(pb::RemoveNodeResponse {}))
            }
            Some(n) => Err(Status::from(ServerError::FailedPrecondition(format!(
                "node {name} still owns {n} filespace(s); delete its filespaces before removing it"
            )))),
        }
    }

    async fn query_nodes(
        &self,
        request: Request<pb::QueryNodesRequest>,
    ) -> Result<Response<pb::QueryNodesResponse>, Status> {
        self.authorize(&request).await?;
        let name = optional_node_name(request.into_inner().name)?;
        let rows = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.list_nodes(&name)?)
        })
        .await?;
        Ok(Response::new(pb::QueryNodesResponse {
            nodes: rows
                .into_iter()
                .map(|(n, u)| {
                    let pool = pool_name(&self.state, n.pool_id);
                    node_to_pb(n, u, pool)
                })
                .collect(),
        }))
    }

    async fn query_actlog(
        &self,
        request: Request<pb::QueryActlogRequest>,
    ) -> Result<Response<pb::QueryActlogResponse>, Status> {
        self.authorize(&request).await?;
        let req = request.into_inner();
        let limit = match req.limit {
            0 => 1000,
            n if n > MAX_ACTLOG_RECORDS => {
                return Err(Status::from(ServerError::InvalidArgument(format!(
                    "a limit of {n} activity log records is more than one answer carries; ask for at most {MAX_ACTLOG_RECORDS} and narrow with a begin or end time"
                ))));
            }
            n => n,
        };
        let node = optional_node_name(req.node)?;
        let filter = ActlogFilter {
            begin_ns: req.begin_ns,
            end_ns: req.end_ns,
            search: req.search,
            node,
            msg_id: req.msg_id.to_ascii_uppercase(),
            limit,
        };
        let records = super::blocking(&self.state, move |s| {
            Ok(s.repo.catalog.query_activity(&filter)?)
        })
        .await?;
        Ok(Response::new(pb::QueryActlogResponse {
            records: records
                .into_iter()
                .map(|r| pb::ActlogRecord {
                    time_ns: r.time_ns,
                    msg_id: r.msg_id,
                    node: r.node,
                    peer: r.peer,
                    message: r.message,
                })
                .collect(),
        }))
    }

    async fn query_sessions(
        &self,
        request: Request<pb::QuerySessionsRequest>,
    ) -> Result<Response<pb::QuerySessionsResponse>, Status> {
        self.authorize(&request).await?;
        let sessions = self
            .state
            .sessions
            .list()
            .into_iter()
            .map(session_to_pb)
            .collect();
        Ok(Response::new(pb::QuerySessionsResponse { sessions }))
    }

    async fn query_status(
        &self,
        request: Request<pb::QueryStatusRequest>,
    ) -> Result<Response<pb::QueryStatusResponse>, Status> {
        self.authorize(&request).await?;
        let ((chunks, stored_bytes), actlog_retention_days) = super::blocking(&self.state, |s| {
            Ok((
                s.repo.catalog.chunk_totals()?,
                actlog::retention_days(&s.repo.catalog)?,
            ))
        })
        .await?;
        Ok(Response::new(pb::QueryStatusResponse {
            server_name: self.state.config.name.clone(),
            server_guid: self.state.guid.to_string(),
            data_dir: self.state.config.data_dir.display().to_string(),
            chunks,
            stored_bytes,
            version: env!("CARGO_PKG_VERSION").to_string(),
            fingerprint: self.state.identity.fingerprint().to_string(),
            tls: !self.state.config.insecure_plaintext,
            actlog_retention_days,
        }))
    }
}
