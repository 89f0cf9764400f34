//! AUDIT NODE (TSM AUDIT CONTAINER, restic `check --read-data`): every
//! chunk a node's versions and archive copies use is read and checked
//! against its hash, so damage is found before a restore needs the data;
//! with `fix`, what is damaged or missing is repaired from the server that
//! shares the node (the self-repair restores use). AUDIT POOL and AUDIT
//! CONTAINER read by container instead ([`pool`]); both may read a subset
//! ([`subset`]) and both record what they find in the catalog's damaged-chunk
//! list with the files that use each chunk ([`damage`]).

mod damage;
mod pool;
pub mod schedule;
mod subset;

pub use pool::{AuditScope, PoolAuditReport, audit_pool};
pub use subset::ReadSubset;

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
pub(crate) const CHECK_BATCH: usize = 1024;

/// What an audit of one node found and did.
#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    /// The node.
    pub node: String,
    /// Distinct chunks its versions and archive copies use that were read
    /// (all of them, or the subset asked for).
    pub chunks_checked: u64,
    /// Which of them were read: `all`, `10%`, `1/7`.
    pub subset: String,
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
    /// Some files that use damaged or missing chunks, as `NODE:path`.
    pub files: Vec<String>,
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
    subset: ReadSubset,
) -> Result<AuditReport, ServerError> {
    let started = Instant::now();
    let node_id = node.id;
    let ids = state
        .repo
        .blocking(move |r| {
            let mut ids = r.catalog.node_chunk_ids(node_id)?;
            ids.retain(|id| subset.keeps(id));
            Ok(ids)
        })
        .await?;
    let mut report = AuditReport {
        node: node.name.clone(),
        chunks_checked: ids.len() as u64,
        subset: subset.describe(),
        ..AuditReport::default()
    };
    if subset == ReadSubset::All {
        // What is missing for the node is recorded afresh below.
        state
            .repo
            .blocking(move |r| Ok(r.catalog.clear_missing_for_node(node_id)?))
            .await?;
    }
    let mut found: Vec<damage::Finding> = Vec::new();
    for batch in ids.chunks(CHECK_BATCH) {
        let batch = batch.to_vec();
        let check = state
            .repo
            .blocking(move |r| {
                let check = r.check_chunks(node_id, &batch)?;
                r.catalog.clear_damaged(&check.intact, false)?;
                Ok(check)
            })
            .await?;
        report.damaged += check.damaged.len() as u64;
        report.missing += check.absent.len() as u64;
        let containers = check.damaged_containers;
        found.extend(check.damaged.into_iter().map(|(id, why)| damage::Finding {
            id,
            container: containers.get(&id).copied(),
            missing: false,
            why,
        }));
        found.extend(check.absent.into_iter().map(|id| damage::Finding {
            id,
            container: None,
            missing: true,
            why: format!("not stored for node {}", node.name),
        }));
    }
    let named = damage::record(state, &found, Some(node_id)).await?;
    let bad: Vec<ChunkId> = found.iter().map(|f| f.id).collect();
    let mut still: std::collections::HashSet<ChunkId> = bad.iter().copied().collect();
    if fix {
        for batch in bad.chunks(tandem_proto::MAX_REPAIR_CHUNK_IDS) {
            let repair = repair_chunks(state, node, batch.to_vec()).await?;
            report.repaired += repair.repaired.len() as u64;
            report.unrepaired += repair.unrepaired.len() as u64;
            report.partner = report.partner.or(repair.partner);
            report.reason = report.reason.or(repair.reason);
            for whole in repair.repaired.iter().chain(&repair.intact) {
                still.remove(whole);
            }
        }
    } else {
        report.unrepaired = bad.len() as u64;
        if !bad.is_empty() {
            report.reason = Some(format!(
                "not repaired: run `audit node {} --fix` to replace them from another storage pool or the replication partner",
                node.name
            ));
        }
    }
    damage::list_damaged(&named, |id| still.contains(id), &mut report.files);
    report.elapsed_secs = started.elapsed().as_secs_f64();
    let (msg, text) = if report.unrepaired == 0 {
        (
            ServerMsg::AuditClean,
            format!(
                "audit of node {}: {} chunk(s) read and verified ({}) in {:.1} s, {} damaged and {} missing, {} repaired; all whole",
                node.name,
                report.chunks_checked,
                report.subset,
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
                "audit of node {}: {} chunk(s) read ({}) in {:.1} s, {} damaged and {} missing, {} repaired, {} still damaged or missing: {}; files: {}",
                node.name,
                report.chunks_checked,
                report.subset,
                report.elapsed_secs,
                report.damaged,
                report.missing,
                report.repaired,
                report.unrepaired,
                report.reason.as_deref().unwrap_or("no copy"),
                damage::list_files(&report.files)
            ),
        )
    };
    actlog::record(&state.repo.catalog, msg, &node.name, "", text).await;
    Ok(report)
}

/// The outcome of the last audit of one kind, kept in the catalog so the
/// metrics endpoint can say how long ago the data was last proven whole,
/// across restarts.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditOutcome {
    /// When it ended (Unix nanoseconds).
    pub ended_ns: i64,
    /// `pool`, `container 00000007`, `node ALICE`.
    pub scope: String,
    /// `all`, `10%`, `1/7`.
    pub subset: String,
    /// Chunks read.
    pub chunks_checked: u64,
    /// Found damaged or missing.
    pub damaged: u64,
    /// Still damaged or missing at the end.
    pub unrepaired: u64,
    /// The slice read (`n` of `t`), when one was; 0 and 0 otherwise. The
    /// schedule takes the next one after it.
    #[serde(default)]
    pub slice_n: u32,
    /// How many slices.
    #[serde(default)]
    pub slice_t: u32,
}

impl AuditOutcome {
    /// The outcome of an audit of `scope` that read `subset`, ending now.
    pub fn now(
        scope: String,
        subset: ReadSubset,
        chunks_checked: u64,
        damaged: u64,
        unrepaired: u64,
    ) -> Self {
        let (slice_n, slice_t) = match subset {
            ReadSubset::Slice { n, t } => (n, t),
            _ => (0, 0),
        };
        AuditOutcome {
            ended_ns: crate::model::now_ns(),
            scope,
            subset: subset.describe(),
            chunks_checked,
            damaged,
            unrepaired,
            slice_n,
            slice_t,
        }
    }

    /// The catalog setting an audit of `scope`'s kind is kept under.
    fn setting(scope: &str) -> crate::catalog::Setting {
        use crate::catalog::Setting;
        if scope.starts_with("node") {
            Setting::LastNodeAudit
        } else if scope.starts_with("container") {
            Setting::LastContainerAudit
        } else {
            Setting::LastPoolAudit
        }
    }

    /// Keeps this outcome as the last of its kind; a failure to write it
    /// is logged, never fails the audit.
    pub(crate) async fn remember(self, state: &Arc<ServerState>) {
        let setting = Self::setting(&self.scope);
        let text = match serde_json::to_string(&self) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(cause = %e, "cannot encode the audit outcome");
                return;
            }
        };
        let catalog = state.repo.catalog.clone();
        match tokio::task::spawn_blocking(move || catalog.set_setting(setting, &text)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(cause = %e, "cannot keep the audit outcome"),
            Err(e) => tracing::warn!(cause = %e, "cannot keep the audit outcome"),
        }
    }

    /// The last outcome kept under `setting`, if any (an unreadable one is
    /// treated as none).
    ///
    /// # Errors
    /// Catalog errors.
    pub fn last(
        catalog: &crate::catalog::Catalog,
        setting: crate::catalog::Setting,
    ) -> Result<Option<Self>, ServerError> {
        Ok(catalog
            .setting(setting)?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }
}
