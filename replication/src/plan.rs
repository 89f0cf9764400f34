//! Pure planning: source inventory + target inventory -> what to send and
//! what to delete. No I/O, so every rule is a unit test.

use std::collections::HashSet;

use tandem_proto::{ChunkId, ObjectId};

/// Which versions of a node are replicated (TSM replication rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicationRule {
    /// Active and inactive versions (TSM ALL_DATA).
    #[default]
    AllData,
    /// Active versions only (TSM ACTIVE_DATA).
    ActiveData,
    /// Nothing (TSM NONE): the node is not replicated.
    None,
}

/// One stored version on the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryEntry {
    /// Stable id, the same on both servers.
    pub object_id: ObjectId,
    /// Whether it is the active version of its path.
    pub active: bool,
    /// Its content chunks.
    pub chunks: Vec<ChunkId>,
}

/// What one run does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationPlan {
    /// Objects to send, in source order.
    pub send: Vec<ObjectId>,
    /// Distinct chunks the objects to send use, in first-use order.
    pub chunks: Vec<ChunkId>,
    /// Objects to delete on the target.
    pub delete: Vec<ObjectId>,
}

/// Plans a run: send what the rule selects and the target lacks; delete what
/// the target holds that the rule no longer selects.
pub fn plan(
    source: &[InventoryEntry],
    target: &[ObjectId],
    rule: ReplicationRule,
) -> ReplicationPlan {
    let selected: Vec<&InventoryEntry> = source
        .iter()
        .filter(|e| match rule {
            ReplicationRule::AllData => true,
            ReplicationRule::ActiveData => e.active,
            ReplicationRule::None => false,
        })
        .collect();
    if rule == ReplicationRule::None {
        return ReplicationPlan::default();
    }
    let on_target: HashSet<ObjectId> = target.iter().copied().collect();
    let wanted: HashSet<ObjectId> = selected.iter().map(|e| e.object_id).collect();
    let mut seen_chunks = HashSet::new();
    let mut out = ReplicationPlan::default();
    for entry in selected
        .iter()
        .filter(|e| !on_target.contains(&e.object_id))
    {
        out.send.push(entry.object_id);
        for chunk in &entry.chunks {
            if seen_chunks.insert(*chunk) {
                out.chunks.push(*chunk);
            }
        }
    }
    out.delete = target
        .iter()
        .filter(|id| !wanted.contains(id))
        .copied()
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, active: bool, chunks: &[u8]) -> InventoryEntry {
        InventoryEntry {
            object_id: ObjectId([n; 16]),
            active,
            chunks: chunks.iter().map(|c| ChunkId([*c; 32])).collect(),
        }
    }

    #[test]
    fn first_run_sends_everything_with_shared_chunks_once() {
        let source = [entry(1, true, &[1, 2]), entry(2, false, &[2, 3])];
        let p = plan(&source, &[], ReplicationRule::AllData);
        assert_eq!(p.send, vec![ObjectId([1; 16]), ObjectId([2; 16])]);
        assert_eq!(
            p.chunks,
            vec![ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([3; 32])]
        );
        assert!(p.delete.is_empty());
    }

    #[test]
    fn a_second_run_sends_only_what_is_new_and_deletes_what_is_gone() {
        let source = [entry(1, true, &[1]), entry(3, true, &[4])];
        let target = [ObjectId([1; 16]), ObjectId([2; 16])];
        let p = plan(&source, &target, ReplicationRule::AllData);
        assert_eq!(p.send, vec![ObjectId([3; 16])]);
        assert_eq!(p.delete, vec![ObjectId([2; 16])]);
    }

    #[test]
    fn active_data_leaves_inactive_versions_out_and_removes_replicated_ones() {
        let source = [entry(1, true, &[1]), entry(2, false, &[2])];
        let target = [ObjectId([2; 16])];
        let p = plan(&source, &target, ReplicationRule::ActiveData);
        assert_eq!(p.send, vec![ObjectId([1; 16])]);
        assert_eq!(p.delete, vec![ObjectId([2; 16])]);
    }

    #[test]
    fn rule_none_does_nothing() {
        let source = [entry(1, true, &[1])];
        let p = plan(&source, &[ObjectId([9; 16])], ReplicationRule::None);
        assert_eq!(p, ReplicationPlan::default());
    }
}
