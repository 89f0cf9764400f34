//! AUDIT NODE (TSM AUDIT CONTAINER, restic `check --read-data`): every
//! chunk a node's versions and archive copies use is read and checked
//! against its hash, so damage is found before a restore needs the data;
//! with `fix`, what is damaged or missing is repaired from the server that
//! shares the node (the self-repair restores use).

use std::sync::Arc;
use std::time::Instant;

use tandem_proto::ChunkId;

use crate::ServerState;
use crate::actlog::{self, ServerMsg};
use crate::error::ServerError;
use crate::model::Node;
use crate::repl::repair::repair_chunks;

/// Chunks read and verified per blocking step: a step holds no lock for
/// long, and the audit's progress is never far from done.
const CHECK_BATCH: usize = 1024;

/// What an audit of one node found and did.
#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    /// The node.
    pub node: String,
    /// Distinct chunks its versions and archive copies use, all read.
    pub chunks_checked: u64,
    /// Stored but unreadable or not matching their hash.
    pub damaged: u64,
    /// Not stored for the node.
    pub missing: u64,
    /// Replaced with verified copies (with `fix`).
    pub repaired: u64,
    /// Damaged or missing after the audit.
    pub unrepaired: u64,
    /// The server copies came from, when one was asked.
    pub partner: Option<String>,
    /// Why some could not be repaired.
    pub reason: Option<String>,
    /// Wall time in seconds.
    pub elapsed_secs: f64,
}

/// Audits `node`, repairing with `fix`; records the outcome in the activity
/// log (TDM0430I when all is whole, TDM0431W when damage remains; each
/// repair as TDM0428I/TDM0429E).
///
/// # Errors
/// Catalog errors (a damaged chunk is a finding, not an error).
pub async fn audit_node(
    state: &Arc<ServerState>,
    node: &Node,
    fix: bool,
) -> Result<AuditReport, ServerError> {
    let started = Instant::now();
    let node_id = node.id;
    let ids = state
        .repo
        .blocking(move |r| Ok(r.catalog.node_chunk_ids(node_id)?))
        .await?;
    let mut report = AuditReport {
        node: node.name.clone(),
        chunks_checked: ids.len() as u64,
        ..AuditReport::default()
    };
    let mut bad: Vec<ChunkId> = Vec::new();
    for batch in ids.chunks(CHECK_BATCH) {
        let batch = batch.to_vec();
        let check = state
            .repo
            .blocking(move |r| r.check_chunks(node_id, &batch))
            .await?;
        report.damaged += check.damaged.len() as u64;
        report.missing += check.absent.len() as u64;
        bad.extend(check.damaged.into_iter().map(|(id, _)| id));
        bad.extend(check.absent);
    }
    if fix {
        for batch in bad.chunks(tandem_proto::MAX_REPAIR_CHUNK_IDS) {
            let repair = repair_chunks(state, node, batch.to_vec()).await?;
            report.repaired += repair.repaired.len() as u64;
            report.unrepaired += repair.unrepaired.len() as u64;
            report.partner = report.partner.or(repair.partner);
            report.reason = report.reason.or(repair.reason);
        }
    } else {
        report.unrepaired = bad.len() as u64;
        if !bad.is_empty() {
            report.reason = Some(format!(
                "not repaired: run `audit node {} --fix` to replace them from the replication partner",
                node.name
            ));
        }
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    let (msg, text) = if report.unrepaired == 0 {
        (
            ServerMsg::AuditClean,
            format!(
                "audit of node {}: {} chunk(s) read and verified in {:.1} s, {} damaged and {} missing, {} repaired; all whole",
                node.name,
                report.chunks_checked,
                report.elapsed_secs,
                report.damaged,
                report.missing,
                report.repaired
            ),
        )
    } else {
        (
            ServerMsg::AuditDamage,
            format!(
                "audit of node {}: {} chunk(s) read in {:.1} s, {} damaged and {} missing, {} repaired, {} still damaged or missing: {}",
                node.name,
                report.chunks_checked,
                report.elapsed_secs,
                report.damaged,
                report.missing,
                report.repaired,
                report.unrepaired,
                report.reason.as_deref().unwrap_or("no copy")
            ),
        )
    };
    actlog::record(&state.repo.catalog, msg, &node.name, "", text).await;
    Ok(report)
}
