//! Self-repair (TSM REPLRECOVERDAMAGED, and a copy pool's repair of a
//! primary pool): when a restore could not use chunks of a node, this
//! server checks its own copies, puts another storage pool's whole copy in
//! place of a damaged one where it has one, asks the server that shares
//! the node (the one holding its replica, or for a replica here the source)
//! for the rest and for missing ones, verifies every copy it gets as an upload is verified, and puts it
//! in place. The activity log names each chunk, the files that use it and
//! the outcome.

use std::collections::HashSet;
use std::sync::Arc;

use tandem_proto::ChunkId;

use super::remote::connect;
use crate::ServerState;
use crate::actlog::{self, ServerMsg};
use crate::error::ServerError;
use crate::model::Node;
use crate::repository::repair::ChunkCheck;
use crate::storage::{self, VerifiedChunk};

/// Paths named per chunk in the activity log.
const PATHS_NAMED: usize = 5;
/// Chunks given a record of their own per call; the rest are counted in one
/// more, so no caller can flood the activity log.
const CHUNKS_NAMED: usize = 10;

/// What a repair found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// Chunks whose copy here was whole.
    pub intact: Vec<ChunkId>,
    /// Chunks replaced with a verified copy, from another storage pool here
    /// or from the partner.
    pub repaired: Vec<ChunkId>,
    /// The repaired chunks whose copy came from another storage pool of
    /// this server, with that pool's name.
    pub from_pools: std::collections::HashMap<ChunkId, String>,
    /// Damaged or missing chunks that could not be repaired.
    pub unrepaired: Vec<ChunkId>,
    /// The partner asked, if one was.
    pub partner: Option<String>,
    /// Why some could not be repaired.
    pub reason: Option<String>,
}

/// Checks `ids` of `node` here and repairs what is damaged: from a whole
/// copy in another of this server's storage pools where there is one, else
/// (and for what is missing) from the partner that shares the node. A
/// chunk not stored for the node here (lost, or only another node's) is
/// asked for too: only the node's own replica can supply it, which proves
/// the node held it.
///
/// # Errors
/// Catalog errors; a partner that cannot help is a [`RepairReport::reason`].
pub async fn repair_chunks(
    state: &Arc<ServerState>,
    node: &Node,
    ids: Vec<ChunkId>,
) -> Result<RepairReport, ServerError> {
    let node_id = node.id;
    let turn = {
        let mut locks = state.repairing.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(node_id).or_default().clone()
    };
    let _turn = turn.lock().await;
    let check: ChunkCheck = state
        .repo
        .blocking(move |r| r.check_chunks(node_id, &ids))
        .await?;
    let mut report = RepairReport {
        intact: check.intact,
        ..RepairReport::default()
    };
    let damaged: HashSet<ChunkId> = check.damaged.iter().map(|(id, _)| *id).collect();
    let mut wanted: Vec<(ChunkId, String)> = check.damaged;
    wanted.extend(
        check
            .absent
            .into_iter()
            .map(|id| (id, "not stored here".to_string())),
    );
    if wanted.is_empty() {
        return Ok(report);
    }
    // Only chunks the node's own stored files use are worth a partner's
    // copy and a record: made-up ids, and other nodes' chunks alike, are
    // answered as not repaired without a partner call or a log line.
    let ids: HashSet<ChunkId> = wanted.iter().map(|(id, _)| *id).collect();
    let catalog = state.repo.catalog.clone();
    let users =
        tokio::task::spawn_blocking(move || catalog.node_paths_using(node_id, &ids, PATHS_NAMED))
            .await??;
    let (wanted, unused): (Vec<_>, Vec<_>) = wanted
        .into_iter()
        .partition(|(id, _)| users.contains_key(id));
    report
        .unrepaired
        .extend(unused.into_iter().map(|(id, _)| id));
    if wanted.is_empty() {
        report.reason = Some(format!(
            "no stored file of node {} uses the chunk(s) asked for",
            node.name
        ));
        return Ok(report);
    }
    // A damaged copy may have a whole twin in another pool here: no
    // network, no partner needed.
    let twins: Vec<ChunkId> = wanted
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| damaged.contains(id))
        .collect();
    if !twins.is_empty() {
        // A pool that cannot take the copy (a full disk) leaves these to
        // the partner: the repair goes on.
        match state
            .repo
            .blocking(move |r| r.repair_from_other_pools(node_id, &twins))
            .await
        {
            Ok(repaired) => report.from_pools = repaired.into_iter().collect(),
            Err(e) => tracing::warn!(
                node = %node.name,
                cause = %e,
                "repair from this server's other storage pools failed; asking the partner"
            ),
        }
    }
    let asked: Vec<ChunkId> = wanted
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !report.from_pools.contains_key(id))
        .collect();
    let fetched = if asked.is_empty() {
        Ok(None)
    } else {
        fetch_from_partner(state, node, &asked).await.map(Some)
    };
    let (stored, reason) = match fetched {
        Ok(None) => (HashSet::new(), None),
        Ok(Some((partner, copies))) => {
            report.partner = Some(partner.clone());
            let stored = store_verified(state, node_id, copies).await?;
            let lacking = asked.len() - stored.len();
            let reason = (lacking > 0).then(|| {
                format!("server {partner} has no whole copy of {lacking} of them for this node")
            });
            (stored, reason)
        }
        Err(why) => (HashSet::new(), Some(why)),
    };
    for (id, _) in &wanted {
        if stored.contains(id) || report.from_pools.contains_key(id) {
            report.repaired.push(*id);
        } else {
            report.unrepaired.push(*id);
        }
    }
    report.reason = reason;
    log_outcome(state, node, &wanted, &users, &report).await;
    Ok(report)
}

/// The partner's copies of `ids` for `node`: the server holding its replica
/// (a node of this server's own), or its source (a replica here).
async fn fetch_from_partner(
    state: &Arc<ServerState>,
    node: &Node,
    ids: &[ChunkId],
) -> Result<(String, Vec<tandem_proto::StoredChunk>), String> {
    let partner_name = if node.repl_server.is_empty() {
        return Err(format!(
            "node {} has never been replicated, so no other server holds its data",
            node.name
        ));
    } else {
        node.repl_server.clone()
    };
    let lookup = partner_name.clone();
    let catalog = state.repo.catalog.clone();
    let partner = tokio::task::spawn_blocking(move || catalog.server(&lookup))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("server {partner_name} is no longer defined here"))?;
    let remote = connect(state, &partner, &node.name)
        .await
        .map_err(|e| e.to_string())?;
    let copies = remote.read_partner_chunks(ids).await;
    remote.bye().await;
    Ok((partner_name, copies.map_err(|e| e.to_string())?))
}

/// Verifies the copies received and stores those that are whole; returns
/// their ids.
async fn store_verified(
    state: &Arc<ServerState>,
    node_id: i64,
    copies: Vec<tandem_proto::StoredChunk>,
) -> Result<HashSet<ChunkId>, ServerError> {
    state
        .repo
        .blocking(move |r| {
            let verified: Vec<VerifiedChunk> = copies
                .into_iter()
                .filter_map(|c| {
                    let id = c.id;
                    storage::verify_chunk(c.id, c.data, c.raw_len)
                        .inspect_err(|e| {
                            tracing::warn!(chunk = %id, cause = %e, "the partner's copy is damaged too");
                        })
                        .ok()
                })
                .collect();
            if verified.is_empty() {
                return Ok(HashSet::new());
            }
            Ok(r.replace_chunks(node_id, &verified)?.into_iter().collect())
        })
        .await
}

/// One activity-log record per chunk (the first [`CHUNKS_NAMED`]): what was
/// wrong, the outcome, and the files whose data uses it; one more counts
/// the rest.
async fn log_outcome(
    state: &Arc<ServerState>,
    node: &Node,
    wanted: &[(ChunkId, String)],
    users: &std::collections::HashMap<ChunkId, Vec<String>>,
    report: &RepairReport,
) {
    let (named, rest) = wanted.split_at(wanted.len().min(CHUNKS_NAMED));
    let repaired: HashSet<&ChunkId> = report.repaired.iter().collect();
    let partner = report.partner.as_deref().unwrap_or("-");
    let source = |id: &ChunkId| {
        report.from_pools.get(id).map_or_else(
            || format!("server {partner}"),
            |pool| format!("storage pool {pool} of this server"),
        )
    };
    for (id, problem) in named {
        // The storage error names the chunk too; once is enough.
        let own_name = format!("chunk {id} ");
        let problem = problem.strip_prefix(&own_name).unwrap_or(problem);
        let used_by = users.get(id).map_or_else(
            || "no stored file".to_string(),
            |paths| {
                paths
                    .iter()
                    .map(|p| tandem_proto::names::display(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        let (msg, text) = if repaired.contains(id) {
            (
                ServerMsg::ChunkRepaired,
                format!(
                    "chunk {id} of node {} was damaged ({problem}) and was replaced with a verified copy from {}; used by {used_by}",
                    node.name,
                    source(id)
                ),
            )
        } else {
            (
                ServerMsg::ChunkUnrepaired,
                format!(
                    "chunk {id} of node {} is damaged ({problem}) and could not be repaired: {}; used by {used_by}",
                    node.name,
                    report.reason.as_deref().unwrap_or("no copy")
                ),
            )
        };
        actlog::record(&state.repo.catalog, msg, &node.name, "", text).await;
    }
    if !rest.is_empty() {
        let fixed = rest.iter().filter(|(id, _)| repaired.contains(id)).count();
        let local = rest
            .iter()
            .filter(|(id, _)| report.from_pools.contains_key(id))
            .count();
        let sources = match (local, fixed - local) {
            (0, remote) => format!("{remote} from server {partner}"),
            (local, 0) => format!("{local} from this server's other storage pools"),
            (local, remote) => format!(
                "{local} from this server's other storage pools, {remote} from server {partner}"
            ),
        };
        let (msg, text) = if fixed == rest.len() {
            (
                ServerMsg::ChunkRepaired,
                format!(
                    "{} more damaged or missing chunk(s) of node {} were replaced with verified copies ({sources})",
                    rest.len(),
                    node.name
                ),
            )
        } else {
            (
                ServerMsg::ChunkUnrepaired,
                format!(
                    "{} more damaged or missing chunk(s) of node {}: {fixed} replaced ({sources}), {} could not be repaired: {}",
                    rest.len(),
                    node.name,
                    rest.len() - fixed,
                    report.reason.as_deref().unwrap_or("no copy")
                ),
            )
        };
        actlog::record(&state.repo.catalog, msg, &node.name, "", text).await;
    }
}
