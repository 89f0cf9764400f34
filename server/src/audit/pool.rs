//! AUDIT POOL and AUDIT CONTAINER (TSM AUDIT CONTAINER; restic `check
//! --read-data`; PBS verify jobs): every chunk the index points into the
//! pool (or into one container) is read at its place, container by
//! container and in offset order, so a bucket is read in long ranges, and
//! verified against its hash. Damage is recorded with the files it hurts;
//! with `fix` each damaged chunk is repaired for a node that uses it, from
//! another pool's whole copy here or that node's replication partner.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tandem_proto::ChunkId;

use super::{CHECK_BATCH, ReadSubset, damage};
use crate::ServerState;
use crate::actlog::{self, ServerMsg};
use crate::error::ServerError;
use crate::model::ChunkLocation;
use crate::repl::repair::repair_chunks;

/// Index rows held at once while a pool is audited: containers are taken
/// in groups expected to hold about this many chunks.
const GROUP_CHUNKS: u64 = 1_000_000;

/// What a pool audit reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditScope {
    /// Every container of one storage pool (by id), or of every pool.
    Pool(Option<u32>),
    /// One container.
    Container(u32),
}

/// What an audit of the pool or a container found and did.
#[derive(Debug, Clone, Default)]
pub struct PoolAuditReport {
    /// `pool` or `container 00000007`.
    pub scope: String,
    /// Which chunks were read: `all`, `10%`, `1/7`.
    pub subset: String,
    /// Containers holding chunks read.
    pub containers: u64,
    /// Chunks read and verified.
    pub chunks_checked: u64,
    /// Their stored (compressed) bytes.
    pub bytes_read: u64,
    /// Unreadable or not matching their hash.
    pub damaged: u64,
    /// Replaced with verified copies (with `fix`).
    pub repaired: u64,
    /// Damaged after the audit.
    pub unrepaired: u64,
    /// Some files that use damaged chunks, as `NODE:path`.
    pub files: Vec<String>,
    /// Why some were not repaired.
    pub reason: Option<String>,
    /// Chunks expiration freed between listing and reading: not read,
    /// not damage, counted in the activity-log record.
    pub freed_meanwhile: u64,
    /// Wall time in seconds.
    pub elapsed_secs: f64,
}

/// Audits `scope`, reading `subset` of its chunks, repairing with `fix`;
/// records the outcome in the activity log (TDM0430I, TDM0431W).
///
/// # Errors
/// A container the index does not point into; the pool not answering
/// (the audit stops rather than call every chunk damaged); catalog errors.
pub async fn audit_pool(
    state: &Arc<ServerState>,
    scope: AuditScope,
    subset: ReadSubset,
    fix: bool,
) -> Result<PoolAuditReport, ServerError> {
    let Ok(_one_at_a_time) = state.pool_audit.try_lock() else {
        return Err(ServerError::FailedPrecondition(
            "another audit of the pool or of a container is running; try again when it has ended (its TDM0430I/TDM0431W record is in `query actlog --msgno TDM043`)".into(),
        ));
    };
    // On a blocking thread, as a long read of the bucket would be: a stop
    // must not wait for it past its grace period.
    state
        .repo
        .blocking(|_| {
            crate::faults::pause_point_blocking("audit-pool-started");
            Ok(())
        })
        .await?;
    let started = Instant::now();
    let (numbers, chunks_indexed) = state
        .repo
        .blocking(move |r| {
            let numbers: Vec<u32> = match scope {
                AuditScope::Pool(Some(pool)) => r
                    .catalog
                    .container_ends_by_pool()?
                    .into_iter()
                    .filter(|(p, _, _)| *p == pool)
                    .map(|(_, n, _)| n)
                    .collect(),
                _ => r
                    .catalog
                    .container_ends()?
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect(),
            };
            Ok((numbers, r.catalog.chunk_totals()?.0))
        })
        .await?;
    // Estimated from the whole index, before a subset thins the list.
    let per_container = chunks_indexed / (numbers.len() as u64).max(1);
    let numbers: Vec<u32> = match scope {
        AuditScope::Pool(_) => subset.containers_of(&numbers),
        AuditScope::Container(n) if numbers.contains(&n) => vec![n],
        AuditScope::Container(n) => {
            return Err(ServerError::NotFound(format!(
                "container {n} holds no chunk the index points at (it is empty, compacted away, or never existed); \
                 `query stgpool` shows how many containers the pool has"
            )));
        }
    };
    let mut report = PoolAuditReport {
        scope: match scope {
            AuditScope::Pool(None) => "pool".to_string(),
            AuditScope::Pool(Some(pool)) => format!("pool {}", state.repo.pools.name_of(pool)),
            AuditScope::Container(n) => format!("container {n:08}"),
        },
        subset: subset.describe(),
        ..PoolAuditReport::default()
    };
    // A pool audit samples whole containers (those picked above); one
    // container's, its chunks.
    let picked: std::sync::Arc<HashSet<u32>> =
        std::sync::Arc::new(numbers.iter().copied().collect());
    let keep = move |id: &ChunkId, at: &ChunkLocation| match scope {
        AuditScope::Pool(None) => picked.contains(&at.container),
        AuditScope::Pool(Some(pool)) => at.pool == pool && picked.contains(&at.container),
        AuditScope::Container(_) => subset.keeps(id),
    };
    let mut containers_read = HashSet::new();
    let mut reasons: Vec<String> = Vec::new();
    // Findings are recorded (and repaired) group by group: an audit cut
    // short keeps what it found, and damage on a huge pool is never all
    // held at once.
    for (first, end) in groups(&numbers, per_container) {
        let chunks = state
            .repo
            .blocking({
                let keep = keep.clone();
                move |r| Ok(r.catalog.chunks_in_containers(first, end, keep)?)
            })
            .await?;
        let mut found: Vec<damage::Finding> = Vec::new();
        for batch in chunks.chunks(CHECK_BATCH) {
            containers_read.extend(batch.iter().map(|(_, l)| l.container));
            let batch = batch.to_vec();
            let check = state
                .repo
                .blocking(move |r| {
                    let check = r.check_located(&batch)?;
                    let damaged: HashSet<(ChunkId, u32)> =
                        check.damaged.iter().map(|(id, c, _)| (*id, *c)).collect();
                    let whole: HashSet<&ChunkId> = check.intact.iter().collect();
                    let read_whole: Vec<(ChunkId, u32)> = batch
                        .iter()
                        .map(|(id, at)| (*id, at.container))
                        .filter(|pair| whole.contains(&pair.0) && !damaged.contains(pair))
                        .collect();
                    r.catalog.clear_damaged_copies(&read_whole)?;
                    Ok(check)
                })
                .await?;
            report.chunks_checked += (check.intact.len() + check.damaged.len()) as u64;
            report.bytes_read += check.bytes_read;
            report.freed_meanwhile += check.gone.len() as u64;
            found.extend(
                check
                    .damaged
                    .into_iter()
                    .map(|(id, container, why)| damage::Finding {
                        id,
                        container: Some(container),
                        missing: false,
                        why,
                    }),
            );
        }
        if found.is_empty() {
            continue;
        }
        report.damaged += found.len() as u64;
        let named = damage::record(state, &found, None).await?;
        let still: HashSet<ChunkId> = if fix {
            repair(state, &found, &mut report, &mut reasons).await?
        } else {
            report.unrepaired += found.len() as u64;
            found.iter().map(|f| f.id).collect()
        };
        damage::list_damaged(&named, |id| still.contains(id), &mut report.files);
    }
    report.containers = containers_read.len() as u64;
    if !reasons.is_empty() {
        report.reason = Some(reasons.join("; "));
    } else if report.unrepaired > 0 && !fix {
        report.reason = Some(format!(
            "not repaired: run `audit {} --fix` to replace them from another storage pool or the replication partner",
            match scope {
                AuditScope::Pool(None) => "pool".to_string(),
                AuditScope::Pool(Some(pool)) => format!("pool {}", state.repo.pools.name_of(pool)),
                AuditScope::Container(n) => format!("container {n}"),
            }
        ));
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    log(state, &report).await;
    // One pool's audit is not the audit of every pool that the schedule,
    // its slices and the metrics count on; its record is in the log.
    if !matches!(scope, AuditScope::Pool(Some(_))) {
        super::AuditOutcome::now(
            report.scope.clone(),
            subset,
            report.chunks_checked,
            report.damaged,
            report.unrepaired,
        )
        .remember(state)
        .await;
    }
    Ok(report)
}

/// Containers `numbers` (ascending) in ranges `first..end` expected to hold
/// at most [`GROUP_CHUNKS`] chunks each (one container at least).
fn groups(numbers: &[u32], per_container: u64) -> Vec<(u32, u32)> {
    let per_group = (GROUP_CHUNKS / per_container.max(1)).max(1) as usize;
    numbers
        .chunks(per_group)
        .map(|c| (c[0], c[c.len() - 1].saturating_add(1)))
        .collect()
}

/// Repairs each damaged chunk for a node that uses it, trying its users in
/// turn (the first owner may have no partner, or no file using it any
/// more); chunks no node uses any more are left for expiration to free.
async fn repair(
    state: &Arc<ServerState>,
    found: &[damage::Finding],
    report: &mut PoolAuditReport,
    reasons: &mut Vec<String>,
) -> Result<HashSet<ChunkId>, ServerError> {
    let ids: Vec<ChunkId> = found.iter().map(|f| f.id).collect();
    let (users, nodes) = state
        .repo
        .blocking(move |r| {
            let users = r.catalog.chunk_users(&ids)?;
            let nodes: HashMap<i64, crate::model::Node> = r
                .catalog
                .list_nodes("")?
                .into_iter()
                .map(|(n, _)| (n.id, n))
                .collect();
            Ok((users, nodes))
        })
        .await?;
    let mut note = |why: String| {
        if !reasons.contains(&why) {
            reasons.push(why);
        }
    };
    let mut left: Vec<ChunkId> = Vec::new();
    let mut still = HashSet::new();
    for finding in found {
        if users.get(&finding.id).is_some_and(|u| !u.is_empty()) {
            left.push(finding.id);
        } else {
            report.unrepaired += 1;
            still.insert(finding.id);
            note("chunk(s) no node uses any more: expiration frees them".into());
        }
    }
    // Round k asks each chunk's k-th user; what it cannot repair goes on.
    let mut round = 0usize;
    while !left.is_empty() {
        let mut by_node: HashMap<i64, Vec<ChunkId>> = HashMap::new();
        for id in left.drain(..) {
            match users.get(&id).and_then(|u| u.get(round)) {
                Some(node) => by_node.entry(*node).or_default().push(id),
                None => {
                    report.unrepaired += 1;
                    still.insert(id);
                }
            }
        }
        for (node_id, ids) in by_node {
            let Some(node) = nodes.get(&node_id) else {
                left.extend(ids);
                continue;
            };
            for batch in ids.chunks(tandem_proto::MAX_REPAIR_CHUNK_IDS) {
                let outcome = repair_chunks(state, node, batch.to_vec()).await?;
                report.repaired += outcome.repaired.len() as u64;
                // Whole at the second look (rewritten meanwhile): neither
                // repaired nor damaged any more.
                report.damaged = report.damaged.saturating_sub(outcome.intact.len() as u64);
                let intact = outcome.intact.clone();
                state
                    .repo
                    .blocking(move |r| Ok(r.catalog.clear_damaged(&intact, true)?))
                    .await?;
                left.extend(outcome.unrepaired);
                if let Some(why) = outcome.reason {
                    note(why);
                }
            }
        }
        round += 1;
    }
    Ok(still)
}

/// The activity-log record of an audit's outcome.
async fn log(state: &Arc<ServerState>, report: &PoolAuditReport) {
    let summary = format!(
        "audit of the {}: {} chunk(s) ({} bytes) in {} container(s) read and verified ({}) in {:.1} s, {} damaged, {} repaired, {} freed by expiration while the audit ran (not read)",
        report.scope,
        report.chunks_checked,
        report.bytes_read,
        report.containers,
        report.subset,
        report.elapsed_secs,
        report.damaged,
        report.repaired,
        report.freed_meanwhile
    );
    let (msg, text) = if report.unrepaired == 0 {
        (ServerMsg::AuditClean, format!("{summary}; all whole"))
    } else {
        (
            ServerMsg::AuditDamage,
            format!(
                "{summary}, {} still damaged: {}; files: {}",
                report.unrepaired,
                report.reason.as_deref().unwrap_or("no copy"),
                damage::list_files(&report.files)
            ),
        )
    };
    actlog::record(&state.repo.catalog, msg, "", "", text).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_are_grouped_to_bound_the_rows_held() {
        let numbers: Vec<u32> = (1..=10).collect();
        assert_eq!(
            groups(&numbers, 400_000),
            vec![(1, 3), (3, 5), (5, 7), (7, 9), (9, 11)]
        );
        assert_eq!(groups(&numbers, 10), vec![(1, 11)]);
        // A container larger than a group still is one.
        assert_eq!(groups(&[4, 9], 10_000_000), vec![(4, 5), (9, 10)]);
        assert!(groups(&[], 5).is_empty());
    }
}
