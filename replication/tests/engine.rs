//! The engine against an in-memory source and target: the order it keeps
//! (every chunk stored before any object that uses it, deletions last), what
//! it skips, and that a run cut short resumes without sending again what the
//! target committed. The fakes check what the real target checks: an object
//! whose chunks are not all stored is refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use tandem_replication::{
    ChunkId, InventoryEntry, ObjectId, ObjectState, ReplicationError, ReplicationRule, Source,
    StoredChunk, Target, replicate,
};

/// A version as the fakes carry it: its id, chunks and state (a real
/// version carries its state the same way, so the target stores it as sent).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    id: ObjectId,
    chunks: Vec<ChunkId>,
    active: bool,
    deactivated_ns: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

/// A node's data: versions in inventory order and the chunks they use.
#[derive(Default)]
struct FakeSource {
    entries: Vec<InventoryEntry>,
    chunks: HashMap<ChunkId, Vec<u8>>,
    /// `read_chunks` fails once this many chunks have been read.
    fail_reads_after: Option<usize>,
    read: Mutex<usize>,
}

fn object_id(n: u32) -> ObjectId {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    ObjectId(bytes)
}

fn chunk_id(n: u32) -> ChunkId {
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    ChunkId(bytes)
}

impl FakeSource {
    /// `objects` active versions; version `i` uses chunks `i` and `i + 1`
    /// (so neighbours share one), each 1 KiB.
    fn with_objects(objects: u32) -> Self {
        let mut source = FakeSource::default();
        for i in 0..objects {
            let chunks = vec![chunk_id(i), chunk_id(i + 1)];
            for id in &chunks {
                source.chunks.insert(*id, vec![7; 1024]);
            }
            source.entries.push(InventoryEntry {
                object_id: object_id(i),
                active: true,
                deactivated_ns: 0,
                chunks,
            });
        }
        source
    }
}

impl Source for FakeSource {
    type Object = Version;
    type Error = Failure;

    async fn inventory(&self) -> Result<Vec<InventoryEntry>, Failure> {
        Ok(self.entries.clone())
    }

    async fn read_chunks(&self, ids: &[ChunkId]) -> Result<Vec<StoredChunk>, Failure> {
        let mut read = self.read.lock().unwrap();
        if self
            .fail_reads_after
            .is_some_and(|limit| *read + ids.len() > limit)
        {
            return Err(Failure("disk error reading a container".into()));
        }
        *read += ids.len();
        ids.iter()
            .map(|id| {
                let data = self
                    .chunks
                    .get(id)
                    .ok_or_else(|| Failure("no such chunk".into()))?;
                Ok(StoredChunk {
                    id: *id,
                    data: data.clone().into(),
                    raw_len: data.len() as u64,
                })
            })
            .collect()
    }

    async fn objects(&self, ids: &[ObjectId]) -> Result<Vec<Version>, Failure> {
        ids.iter()
            .map(|id| {
                self.entries
                    .iter()
                    .find(|e| e.object_id == *id)
                    .map(|e| Version {
                        id: e.object_id,
                        chunks: e.chunks.clone(),
                        active: e.active,
                        deactivated_ns: e.deactivated_ns,
                    })
                    .ok_or_else(|| Failure("no such object".into()))
            })
            .collect()
    }
}

/// What a call did to the target, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    PutChunks,
    UpdateStates,
    PutObjects,
    DeleteObjects,
}

#[derive(Default)]
struct Held {
    chunks: HashSet<ChunkId>,
    objects: BTreeMap<ObjectId, ObjectState>,
    calls: Vec<Call>,
    chunk_uploads: usize,
    object_batches: usize,
}

/// The receiving side, all in memory.
#[derive(Default)]
struct FakeTarget {
    held: Mutex<Held>,
    /// `put_objects` fails from this batch on (counting from 0).
    fail_object_batch: Option<usize>,
    /// Ids a lying target adds to every answer of which chunks it lacks.
    claims_to_lack: Vec<ChunkId>,
}

impl FakeTarget {
    fn objects(&self) -> Vec<ObjectId> {
        self.held.lock().unwrap().objects.keys().copied().collect()
    }
}

impl Target<Version> for FakeTarget {
    type Error = Failure;

    async fn inventory(&self) -> Result<Vec<ObjectState>, Failure> {
        Ok(self
            .held
            .lock()
            .unwrap()
            .objects
            .values()
            .copied()
            .collect())
    }

    async fn missing_chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, Failure> {
        let held = self.held.lock().unwrap();
        let mut lacking: Vec<ChunkId> = ids
            .iter()
            .filter(|id| !held.chunks.contains(id))
            .copied()
            .collect();
        lacking.extend(&self.claims_to_lack);
        Ok(lacking)
    }

    async fn put_chunks(&self, chunks: Vec<StoredChunk>) -> Result<(), Failure> {
        let mut held = self.held.lock().unwrap();
        held.calls.push(Call::PutChunks);
        held.chunk_uploads += chunks.len();
        held.chunks.extend(chunks.iter().map(|c| c.id));
        Ok(())
    }

    async fn update_states(&self, states: &[ObjectState]) -> Result<u64, Failure> {
        let mut held = self.held.lock().unwrap();
        held.calls.push(Call::UpdateStates);
        for state in states {
            held.objects.insert(state.object_id, *state);
        }
        Ok(states.len() as u64)
    }

    async fn put_objects(&self, objects: Vec<Version>) -> Result<u64, Failure> {
        let mut held = self.held.lock().unwrap();
        held.calls.push(Call::PutObjects);
        let batch = held.object_batches;
        held.object_batches += 1;
        if self.fail_object_batch.is_some_and(|from| batch >= from) {
            return Err(Failure("connection cut".into()));
        }
        // As the real target: a version whose data is not all here is refused,
        // and a batch is one transaction.
        if let Some(lacking) = objects
            .iter()
            .find(|o| o.chunks.iter().any(|c| !held.chunks.contains(c)))
        {
            return Err(Failure(format!(
                "object {} has chunks not stored",
                lacking.id
            )));
        }
        for object in &objects {
            held.objects.insert(
                object.id,
                ObjectState {
                    object_id: object.id,
                    active: object.active,
                    deactivated_ns: object.deactivated_ns,
                },
            );
        }
        Ok(objects.len() as u64)
    }

    async fn delete_objects(&self, ids: &[ObjectId]) -> Result<u64, Failure> {
        let mut held = self.held.lock().unwrap();
        held.calls.push(Call::DeleteObjects);
        Ok(ids
            .iter()
            .filter(|id| held.objects.remove(id).is_some())
            .count() as u64)
    }
}

#[tokio::test]
async fn a_first_run_sends_every_chunk_once_and_before_any_object() {
    let source = FakeSource::with_objects(1200);
    let target = FakeTarget::default();
    let report = replicate(&source, &target, ReplicationRule::AllData)
        .await
        .expect("run");
    assert_eq!(report.objects_sent, 1200);
    assert_eq!(report.chunks_sent, 1201, "shared chunks are sent once");
    assert_eq!(report.chunks_skipped, 0);
    assert_eq!(report.bytes_sent, 1201 * 1024);
    let held = target.held.lock().unwrap();
    assert_eq!(held.objects.len(), 1200);
    assert_eq!(held.chunk_uploads, 1201);
    let first_object = held
        .calls
        .iter()
        .position(|c| *c == Call::PutObjects)
        .unwrap();
    let last_chunks = held
        .calls
        .iter()
        .rposition(|c| *c == Call::PutChunks)
        .unwrap();
    assert!(last_chunks < first_object, "{:?}", held.calls);
    assert_eq!(held.object_batches, 3, "1200 objects in batches of 500");
}

#[tokio::test]
async fn chunks_the_target_holds_are_not_sent_and_a_second_run_sends_nothing() {
    let source = FakeSource::with_objects(10);
    let target = FakeTarget::default();
    // Another node's data on the target already has chunks 0-4.
    target
        .held
        .lock()
        .unwrap()
        .chunks
        .extend((0..5).map(chunk_id));
    let first = replicate(&source, &target, ReplicationRule::AllData)
        .await
        .expect("run");
    assert_eq!((first.chunks_skipped, first.chunks_sent), (5, 6));
    let again = replicate(&source, &target, ReplicationRule::AllData)
        .await
        .expect("rerun");
    assert_eq!(again, Default::default(), "nothing to do");
}

#[tokio::test]
async fn a_run_cut_during_the_objects_resumes_without_resending() {
    let source = FakeSource::with_objects(1200);
    let cut = FakeTarget {
        fail_object_batch: Some(1),
        ..Default::default()
    };
    let failed = replicate(&source, &cut, ReplicationRule::AllData)
        .await
        .expect_err("the second batch fails");
    assert!(matches!(failed, ReplicationError::Target(_)), "{failed}");
    assert!(failed.to_string().contains("connection cut"), "{failed}");
    // The first batch committed; the target holds whole objects only.
    let committed = cut.objects();
    assert_eq!(committed.len(), 500);

    // The connection is back: the next run sends only what is missing.
    let target = FakeTarget::default();
    {
        let mut from = cut.held.lock().unwrap();
        let mut into = target.held.lock().unwrap();
        into.chunks = std::mem::take(&mut from.chunks);
        into.objects = std::mem::take(&mut from.objects);
    }
    let resumed = replicate(&source, &target, ReplicationRule::AllData)
        .await
        .expect("resumed run");
    assert_eq!(resumed.objects_sent, 700);
    assert_eq!(resumed.chunks_sent, 0, "every chunk arrived in the cut run");
    assert_eq!(target.objects().len(), 1200);
    assert!(committed.iter().all(|id| target.objects().contains(id)));
}

#[tokio::test]
async fn a_source_failure_while_reading_chunks_leaves_no_object_on_the_target() {
    let source = FakeSource {
        fail_reads_after: Some(100),
        ..FakeSource::with_objects(300)
    };
    let target = FakeTarget::default();
    let failed = replicate(&source, &target, ReplicationRule::AllData)
        .await
        .expect_err("the read fails");
    assert!(matches!(failed, ReplicationError::Source(_)), "{failed}");
    assert!(
        target.objects().is_empty(),
        "no object before all its chunks"
    );
}

#[tokio::test]
async fn state_changes_come_before_objects_and_deletions_last() {
    let mut source = FakeSource::with_objects(4);
    let target = FakeTarget::default();
    replicate(&source, &target, ReplicationRule::AllData)
        .await
        .expect("first run");
    // On the source: version 1 turns inactive, version 3 is expired, and a
    // new version 4 arrives.
    source.entries[1].active = false;
    source.entries[1].deactivated_ns = 42;
    source.entries.remove(3);
    let newer = FakeSource::with_objects(5);
    source.entries.push(newer.entries[4].clone());
    source.chunks.extend(newer.chunks);
    target.held.lock().unwrap().calls.clear();

    let report = replicate(&source, &target, ReplicationRule::AllData)
        .await
        .expect("second run");
    assert_eq!(
        (
            report.states_updated,
            report.objects_sent,
            report.objects_deleted
        ),
        (1, 1, 1)
    );
    {
        let held = target.held.lock().unwrap();
        let order: Vec<Call> = held
            .calls
            .iter()
            .copied()
            .filter(|c| *c != Call::PutChunks)
            .collect();
        assert_eq!(
            order,
            [Call::UpdateStates, Call::PutObjects, Call::DeleteObjects]
        );
        assert_eq!(held.objects[&object_id(1)].deactivated_ns, 42);
        assert!(!held.objects.contains_key(&object_id(3)));
        assert!(held.objects.contains_key(&object_id(4)));

        // Under ACTIVE_DATA the inactive version leaves the target.
    }
    let report = replicate(&source, &target, ReplicationRule::ActiveData)
        .await
        .expect("active data");
    assert_eq!(report.objects_deleted, 1);
    assert!(!target.objects().contains(&object_id(1)));
}

#[tokio::test]
async fn an_inactive_version_arrives_inactive_and_needs_no_state_change_later() {
    let mut source = FakeSource::with_objects(3);
    source.entries[2].active = false;
    source.entries[2].deactivated_ns = 7;
    let target = FakeTarget::default();
    let first = replicate(&source, &target, ReplicationRule::AllData)
        .await
        .expect("first run");
    assert_eq!((first.objects_sent, first.states_updated), (3, 0));
    {
        let held = target.held.lock().unwrap();
        let stored = &held.objects[&object_id(2)];
        assert!(!stored.active);
        assert_eq!(stored.deactivated_ns, 7);
    }
    let again = replicate(&source, &target, ReplicationRule::AllData)
        .await
        .expect("second run");
    assert_eq!(
        (
            again.objects_sent,
            again.states_updated,
            again.objects_deleted
        ),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn a_target_that_claims_to_lack_chunks_it_was_not_asked_about_gets_none_of_them() {
    // Another node's chunk stored on the source side, never in this node's
    // versions; the target names it, and one asked chunk twice.
    let mut source = FakeSource::with_objects(3);
    let other_nodes = chunk_id(9_999);
    source
        .chunks
        .insert(other_nodes, b"another node's data".to_vec());
    // It holds two of the four chunks, so its answer (two lacking, plus
    // the two it makes up) is no longer than the question.
    let target = FakeTarget {
        held: Mutex::new(Held {
            chunks: [chunk_id(2), chunk_id(3)].into(),
            ..Held::default()
        }),
        claims_to_lack: vec![other_nodes, chunk_id(0)],
        ..FakeTarget::default()
    };
    let err = replicate(&source, &target, ReplicationRule::AllData)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ReplicationError::Target(e) if e.to_string().contains("names 2 chunk(s) it was not asked about, or twice")),
        "{err}"
    );
    assert_eq!(*source.read.lock().unwrap(), 0, "nothing was read");
    {
        let held = target.held.lock().unwrap();
        assert!(!held.chunks.contains(&other_nodes));
        assert_eq!(held.chunk_uploads, 0);
    }

    // An answer longer than the question is refused outright.
    let source = FakeSource::with_objects(1);
    let target = FakeTarget {
        claims_to_lack: vec![chunk_id(0); 5],
        ..FakeTarget::default()
    };
    let err = replicate(&source, &target, ReplicationRule::AllData)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ReplicationError::Target(e) if e.to_string().contains("lacks 7 chunks of the 2")),
        "{err}"
    );
    assert_eq!(*source.read.lock().unwrap(), 0);
}
