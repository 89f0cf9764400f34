//! Pure planning: source inventory + target inventory -> what to send and
//! what to delete. No I/O, so every rule is a unit test.

use std::collections::{HashMap, HashSet};

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
    /// When it became inactive (0 if active).
    pub deactivated_ns: i64,
    /// Its content chunks.
    pub chunks: Vec<ChunkId>,
}

/// The state of a version as the target holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectState {
    /// Stable id.
    pub object_id: ObjectId,
    /// Active or not.
    pub active: bool,
    /// When it became inactive (0 if active).
    pub deactivated_ns: i64,
}

/// What one run does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationPlan {
    /// Objects to send, in source order.
    pub send: Vec<ObjectId>,
    /// Distinct chunks the objects to send use, in first-use order.
    pub chunks: Vec<ChunkId>,
    /// Versions the target has whose state changed on the source.
    pub update: Vec<ObjectState>,
    /// Objects to delete on the target.
    pub delete: Vec<ObjectId>,
}

/// Plans a run: send what the rule selects and the target lacks, update the
/// state of what both hold but differs, delete what the target holds that the
/// rule no longer selects.
pub fn plan(
    source: &[InventoryEntry],
    target: &[ObjectState],
    rule: ReplicationRule,
) -> ReplicationPlan {
    if rule == ReplicationRule::None {
        return ReplicationPlan::default();
    }
    let selected: Vec<&InventoryEntry> = source
        .iter()
        .filter(|e| rule == ReplicationRule::AllData || e.active)
        .collect();
    let on_target: HashMap<ObjectId, ObjectState> =
        target.iter().map(|s| (s.object_id, *s)).collect();
    let wanted: HashSet<ObjectId> = selected.iter().map(|e| e.object_id).collect();
    let mut seen_chunks = HashSet::new();
    let mut out = ReplicationPlan::default();
    for entry in &selected {
        match on_target.get(&entry.object_id) {
            Some(there) => {
                if there.active != entry.active || there.deactivated_ns != entry.deactivated_ns {
                    out.update.push(ObjectState {
                        object_id: entry.object_id,
                        active: entry.active,
                        deactivated_ns: entry.deactivated_ns,
                    });
                }
            }
            None => {
                out.send.push(entry.object_id);
                for chunk in &entry.chunks {
                    if seen_chunks.insert(*chunk) {
                        out.chunks.push(*chunk);
                    }
                }
            }
        }
    }
    out.delete = target
        .iter()
        .map(|s| s.object_id)
        .filter(|id| !wanted.contains(id))
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
            deactivated_ns: if active { 0 } else { 100 },
            chunks: chunks.iter().map(|c| ChunkId([*c; 32])).collect(),
        }
    }

    fn state(n: u8, active: bool) -> ObjectState {
        ObjectState {
            object_id: ObjectId([n; 16]),
            active,
            deactivated_ns: if active { 0 } else { 100 },
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
        let target = [state(1, true), state(2, true)];
        let p = plan(&source, &target, ReplicationRule::AllData);
        assert_eq!(p.send, vec![ObjectId([3; 16])]);
        assert_eq!(p.delete, vec![ObjectId([2; 16])]);
        assert!(p.update.is_empty());
    }

    #[test]
    fn a_version_turned_inactive_is_sent_as_a_state_change() {
        let source = [entry(1, false, &[1]), entry(2, true, &[2])];
        let target = [state(1, true)];
        let p = plan(&source, &target, ReplicationRule::AllData);
        assert_eq!(p.update, vec![state(1, false)]);
        assert_eq!(p.send, vec![ObjectId([2; 16])]);
        assert_eq!(
            p.chunks,
            vec![ChunkId([2; 32])],
            "only the new version's chunks"
        );
    }

    #[test]
    fn active_data_leaves_inactive_versions_out_and_removes_replicated_ones() {
        let source = [entry(1, true, &[1]), entry(2, false, &[2])];
        let target = [state(2, false)];
        let p = plan(&source, &target, ReplicationRule::ActiveData);
        assert_eq!(p.send, vec![ObjectId([1; 16])]);
        assert_eq!(p.delete, vec![ObjectId([2; 16])]);
    }

    #[test]
    fn rule_none_does_nothing() {
        let source = [entry(1, true, &[1])];
        let p = plan(&source, &[state(9, true)], ReplicationRule::None);
        assert_eq!(p, ReplicationPlan::default());
    }
}
