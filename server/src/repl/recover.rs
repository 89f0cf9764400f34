//! Rebuilding a server's nodes from their replica (`recover node`), on both
//! sides, over the same engine and the same mutual-TLS connection as
//! replication, with the roles of the run turned round.
//!
//! On the server being rebuilt (empty, or with a restored older catalog),
//! each node is first held for recovery: in receive mode as the replica
//! server's replica, so no client backup and no replication from here can
//! change it, and above all no replication run can delete on the replica
//! the versions this server lost. Then it asks the replica server to send
//! the node back (`ReplicateBack`): that server runs a replication of its
//! replica to here, which sends only what is missing and so resumes where a
//! cut run stopped, and never deletes here: what only this server holds
//! (backups the replica never received) stays. When the run completes, the
//! node is this server's own again, replicating to that server as before.
//! Until then every step can be run again. A node this server holds and has
//! not lost (present, not held) is never recovered: that would roll its
//! versions' states back to the replica's.

use std::sync::Arc;
use std::time::Instant;

use tandem_replication::{ReplicationRule, RunReport};

use super::remote::connect;
use super::runs::{Deletions, RunClaim, replicate_to, replication_server};
use crate::ServerState;
use crate::actlog::{self, ServerMsg};
use crate::error::ServerError;
use crate::model::{PartnerServer, normalize_node_name, now_ns};

/// How a node's recovery ended.
#[derive(Debug, Clone)]
pub enum Recovered {
    /// The replica server sent the node back; it is this server's own again.
    Back(RunReport),
    /// The replica server holds no replica of the node (it was never
    /// replicated there): the hold was released, nothing was sent.
    NoReplica,
}

/// One node's recovery, as the rebuilt server saw it.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The node.
    pub node: String,
    /// The server its data came from.
    pub from: String,
    /// What happened, or why the recovery failed.
    pub outcome: Result<Recovered, String>,
    /// Wall time.
    pub elapsed_secs: f64,
}

/// Which nodes to recover, from where: each named node from `from`, or from
/// the server it is held for, or from the replication server; with `all`,
/// every node held here and every replica `from` (or the replication
/// server) holds for this server.
///
/// # Errors
/// A bad name, an undefined server, the partner unreachable when listing.
pub async fn plan(
    state: &Arc<ServerState>,
    nodes: &[String],
    all: bool,
    from: Option<&str>,
) -> Result<Vec<(String, String)>, ServerError> {
    let catalog = state.repo.catalog.clone();
    let held = tokio::task::spawn_blocking(move || catalog.recoveries()).await??;
    let default_from = |state: &ServerState| -> Result<String, ServerError> {
        match from {
            Some(name) => Ok(name.to_ascii_uppercase()),
            None => Ok(replication_server(state)?.name),
        }
    };
    let mut out: Vec<(String, String)> = Vec::new();
    if all {
        out.extend(held.iter().cloned());
        let source = default_from(state)?;
        let partner = defined(state, &source).await?;
        let remote = connect(state, &partner, "").await?;
        let listed = remote.held_replicas().await;
        remote.bye().await;
        let catalog = state.repo.catalog.clone();
        let lost = tokio::task::spawn_blocking(move || {
            listed?
                .into_iter()
                .filter_map(|node| match catalog.node(&node) {
                    // Present here and not held: not lost, left alone.
                    Ok(Some(_)) => None,
                    Ok(None) => Some(Ok(node)),
                    Err(e) => Some(Err(ServerError::from(e))),
                })
                .collect::<Result<Vec<String>, ServerError>>()
        })
        .await??;
        for node in lost {
            if !out.iter().any(|(n, _)| *n == node) {
                out.push((node, source.clone()));
            }
        }
        out.sort();
        return Ok(out);
    }
    for asked in nodes {
        let node = normalize_node_name(asked)
            .ok_or_else(|| ServerError::InvalidArgument(format!("bad node name {asked:?}")))?;
        let source = match (from, held.iter().find(|(n, _)| *n == node)) {
            (Some(name), _) => name.to_ascii_uppercase(),
            (None, Some((_, source))) => source.clone(),
            (None, None) => default_from(state)?,
        };
        out.push((node, source));
    }
    Ok(out)
}

/// The partner `name` as defined here.
async fn defined(state: &Arc<ServerState>, name: &str) -> Result<PartnerServer, ServerError> {
    let (catalog, lookup) = (state.repo.catalog.clone(), name.to_string());
    tokio::task::spawn_blocking(move || catalog.server(&lookup))
        .await??
        .ok_or_else(|| ServerError::ServerNotDefined {
            server: name.to_string(),
        })
}

/// Recovers `node` from server `from` (see the module documentation) and
/// records the outcome in the activity log (TDM0605I, TDM0606E). A failed
/// recovery is an `Err` outcome; the node stays held, and running it again
/// goes on from there.
///
/// # Errors
/// A recovery of the node already running here.
pub async fn recover_node(
    state: &Arc<ServerState>,
    node: &str,
    from: &str,
) -> Result<Recovery, ServerError> {
    let Some(claim) = RunClaim::take(state, node) else {
        return Err(ServerError::ReplicationRunning {
            node: node.to_string(),
        });
    };
    let started = Instant::now();
    let outcome = pull_back(state, node, from).await;
    let catalog = state.repo.catalog.clone();
    let name = node.to_string();
    let finished = match &outcome {
        Ok(Some(_)) => {
            let source = from.to_string();
            tokio::task::spawn_blocking(move || catalog.end_recovery(&name, &source, now_ns()))
                .await
                .map_err(ServerError::from)
                .and_then(|r| Ok(r?))
                .map(|_| ())
        }
        Ok(None) => {
            let source = from.to_string();
            tokio::task::spawn_blocking(move || catalog.release_unreplicated(&name, &source))
                .await
                .map_err(ServerError::from)
                .and_then(|r| Ok(r?))
                .map(|_| ())
        }
        Err(_) => {
            // A node that never arrived leaves no recovery behind.
            tokio::task::spawn_blocking(move || catalog.forget_recovery_of_absent(&name))
                .await
                .map_err(ServerError::from)
                .and_then(|r| Ok(r?))
                .map(|_| ())
        }
    };
    let outcome = match (outcome, finished) {
        (Ok(Some(report)), Ok(())) => Ok(Recovered::Back(report)),
        (Ok(None), Ok(())) => Ok(Recovered::NoReplica),
        (Err(e), _) | (Ok(_), Err(e)) => Err(e.to_string()),
    };
    let recovery = Recovery {
        node: node.to_string(),
        from: from.to_string(),
        outcome,
        elapsed_secs: started.elapsed().as_secs_f64(),
    };
    let (msg, text) = match &recovery.outcome {
        Ok(Recovered::NoReplica) => (
            ServerMsg::NodeRecovered,
            format!(
                "node {node}: server {from} holds no replica of it, so nothing was lost there; the hold is released and the node is this server's own again, not replicated"
            ),
        ),
        Ok(Recovered::Back(r)) => (
            ServerMsg::NodeRecovered,
            format!(
                "node {node} recovered from server {from} in {:.1} s: {} version(s), {} chunk(s) ({} bytes) received, {} chunk(s) already here, {} state change(s); nothing here was deleted; it is this server's own again, replicating to {from}",
                recovery.elapsed_secs,
                r.objects_sent,
                r.chunks_sent,
                r.bytes_sent,
                r.chunks_skipped,
                r.states_updated
            ),
        ),
        Err(e) => (
            ServerMsg::NodeRecoveryFailed,
            format!(
                "recovery of node {node} from server {from} failed: {e}; it stays held (read-only, not replicated) until `recover node {node}` is run again and completes"
            ),
        ),
    };
    actlog::record(&state.repo.catalog, msg, node, "", text).await;
    drop(claim);
    Ok(recovery)
}

/// Holds the node, then has `from` send it back (`None`: `from` holds no
/// replica of it).
async fn pull_back(
    state: &Arc<ServerState>,
    node: &str,
    from: &str,
) -> Result<Option<RunReport>, ServerError> {
    let partner = defined(state, from).await?;
    let (catalog, name, source) = (
        state.repo.catalog.clone(),
        node.to_string(),
        from.to_string(),
    );
    tokio::task::spawn_blocking(move || catalog.begin_recovery(&name, &source, now_ns())).await??;
    let remote = connect(state, &partner, node).await?;
    let report = remote.replicate_back().await;
    remote.bye().await;
    report
}

/// The replica server's side: replicates this server's replica of `node`
/// back to `caller`, its source, for the caller's recovery. The node must
/// be `caller`'s replica here; the run is an ordinary replication of all
/// its data (whatever the node's rule), recorded here as TDM0607I.
///
/// # Errors
/// The node not `caller`'s replica here, a run of it already going, the
/// caller not defined here or unreachable, a failed run.
pub async fn send_back(
    state: &Arc<ServerState>,
    node: &str,
    caller: &str,
) -> Result<RunReport, ServerError> {
    let name = normalize_node_name(node)
        .ok_or_else(|| ServerError::InvalidArgument(format!("bad node name {node:?}")))?;
    let lookup = name.clone();
    let found = state
        .repo
        .blocking(move |r| Ok(r.catalog.node(&lookup)?))
        .await?;
    let node_rec = match found {
        Some(n) if n.is_replica() && n.repl_server == caller => n,
        Some(_) => {
            return Err(ServerError::PermissionDenied(format!(
                "node {name} is not a replica of server {caller} here; nothing to send back"
            )));
        }
        None => return Err(ServerError::NodeNotFound { node: name }),
    };
    let Some(claim) = RunClaim::take(state, &name) else {
        return Err(ServerError::ReplicationRunning { node: name });
    };
    let partner = defined(state, caller).await?;
    let target = connect(state, &partner, &name).await?;
    let outcome = replicate_to(
        state,
        &node_rec,
        &target,
        ReplicationRule::AllData,
        Deletions::Keep,
    )
    .await;
    target.bye().await;
    let text = match &outcome {
        Ok(r) => format!(
            "replica of node {name} sent back to server {caller} for its recovery: {} version(s), {} chunk(s) ({} bytes) sent, {} chunk(s) already there, {} state change(s)",
            r.objects_sent, r.chunks_sent, r.bytes_sent, r.chunks_skipped, r.states_updated
        ),
        Err(e) => format!("sending the replica of node {name} back to server {caller} failed: {e}"),
    };
    let msg = if outcome.is_ok() {
        ServerMsg::ReplicaSentBack
    } else {
        ServerMsg::ReplicationFailed
    };
    actlog::record(&state.repo.catalog, msg, &name, &partner.address, text).await;
    drop(claim);
    outcome
}
