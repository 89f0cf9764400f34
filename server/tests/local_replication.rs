//! Replication between two data directories in one process, with no gRPC:
//! the engine over a [`LocalSource`] and a [`LocalTarget`], each on a real
//! repository (SQLite catalog, fsynced containers) in its own temp dir.
//! This is the path a local vault copy or a recovery takes; the
//! `Replication` service drives the same target for a partner server.

use std::sync::Arc;

use prost::bytes::Bytes;
use tandem_proto::{ChunkId, StoredChunk};
use tandem_replication::{ReplicationRule, replicate};
use tandem_server::error::ServerError;
use tandem_server::model::{NewVersion, ObjectAttrs, ObjectKind, Policy, StoredVersion, now_ns};
use tandem_server::repl::{LocalSource, LocalTarget, ReplicaOf};
use tandem_server::repository::Repository;
use tandem_server::repository::ingest::ChunkIngest;
use tandem_server::storage::verify_chunk;

const SOURCE: &str = "SRC";
const NODE: &str = "ALPHA";
/// The session number the tests write under (pins are per session).
const SESSION: u64 = 7;

fn open(dir: &tempfile::TempDir) -> Arc<Repository> {
    Arc::new(
        Repository::open(
            dir.path(),
            Policy::default(),
            tandem_server::repository::PoolSetup {
                default: &Default::default(),
                more: &Default::default(),
            },
            "LOCAL",
            |_| Ok(()),
        )
        .expect("repository opens"),
    )
}

/// A chunk of `len` bytes derived from `seed`, compressed as clients send it.
fn chunk(seed: u32, len: usize) -> StoredChunk {
    let raw: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(seed | 1).to_le_bytes()[1])
        .collect();
    StoredChunk {
        id: ChunkId::of(&raw),
        data: Bytes::from(zstd::bulk::compress(&raw, 3).expect("compresses")),
        raw_len: len as u64,
    }
}

fn file(path: &str, chunks: &[StoredChunk]) -> NewVersion {
    NewVersion {
        attrs: ObjectAttrs {
            path: path.to_string(),
            kind: ObjectKind::File,
            size: chunks.iter().map(|c| c.raw_len).sum(),
            mode: 0o644,
            mtime_ns: 1,
            uid: 1000,
            gid: 1000,
            link_target: String::new(),
            extra: Vec::new(),
        },
        chunks: chunks.iter().map(|c| c.id).collect(),
    }
}

/// Backs up `files` for node `node_id` of `repo` as the `Backup` service
/// would: chunks through the ingest (verified, fsynced, indexed), then one
/// commit.
async fn back_up(repo: &Arc<Repository>, node_id: i64, files: &[(&str, Vec<StoredChunk>)]) {
    let mut ingest = ChunkIngest::new(repo.clone(), SESSION, node_id);
    for (_, chunks) in files {
        ingest.push(chunks.clone()).await.expect("chunks stored");
    }
    ingest.finish().await.expect("upload finishes");
    let versions: Vec<NewVersion> = files.iter().map(|(p, c)| file(p, c)).collect();
    repo.catalog
        .commit_objects(node_id, "/data", &versions, &[], now_ns())
        .expect("commit");
}

/// A repository in `dir` with node [`NODE`] registered.
fn source_with_node(dir: &tempfile::TempDir) -> (Arc<Repository>, tandem_server::model::Node) {
    let repo = open(dir);
    let node = repo
        .catalog
        .register_node(NODE, "hash", now_ns())
        .unwrap()
        .expect("registered");
    (repo, node)
}

async fn target_of(repo: &Arc<Repository>) -> LocalTarget {
    LocalTarget::prepare(
        repo,
        ReplicaOf {
            node: NODE.into(),
            password_hash: "hash".into(),
            locked: false,
            source: SOURCE.into(),
        },
    )
    .await
    .expect("replica prepared");
    LocalTarget::open(repo, NODE, SOURCE, SESSION)
        .await
        .expect("replica opens")
}

/// The versions of `node` in `repo`, as comparable tuples.
fn versions(repo: &Repository, node: &str) -> Vec<(String, bool, Vec<ChunkId>, [u8; 16])> {
    let id = repo.catalog.node(node).unwrap().expect("node exists").id;
    let mut all: Vec<_> = repo
        .catalog
        .node_versions(id)
        .unwrap()
        .into_iter()
        .map(|v: StoredVersion| (v.attrs.path, v.active, v.chunks, v.object_id.0))
        .collect();
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_replicates_between_two_data_dirs_and_a_second_run_sends_nothing() {
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (source, node) = source_with_node(&source_dir);
    let shared = chunk(99, 50_000);
    let files = vec![
        ("/data/a", vec![chunk(1, 300_000), shared.clone()]),
        ("/data/b", vec![chunk(2, 70_000)]),
        ("/data/c", vec![shared.clone()]),
        ("/data/empty", vec![]),
    ];
    back_up(&source, node.id, &files).await;

    let target = open(&target_dir);
    let replica = target_of(&target).await;
    let from = LocalSource::new(source.clone(), node.id);
    let first = replicate(&from, &replica, ReplicationRule::AllData)
        .await
        .expect("first run");
    assert_eq!(first.objects_sent, 4);
    assert_eq!(first.chunks_sent, 3, "the shared chunk travels once");
    assert_eq!(versions(&target, NODE), versions(&source, NODE));

    // Every chunk on the target is there, whole, and hashes to its id.
    let wanted: Vec<ChunkId> = [chunk(1, 300_000).id, shared.id, chunk(2, 70_000).id].into();
    for stored in target.read_chunks(&wanted).expect("chunks readable") {
        verify_chunk(stored.id, stored.data, stored.raw_len).expect("chunk verifies");
    }

    let again = replicate(&from, &replica, ReplicationRule::AllData)
        .await
        .expect("second run");
    assert_eq!(
        (again.objects_sent, again.chunks_sent, again.bytes_sent),
        (0, 0, 0)
    );

    // A changed file, a deleted one: the old version turns inactive on the
    // target, the new one arrives, and only its new chunk is sent.
    back_up(
        &source,
        node.id,
        &[("/data/a", vec![chunk(3, 10_000), shared.clone()])],
    )
    .await;
    source
        .catalog
        .commit_objects(node.id, "/data", &[], &["/data/b".into()], now_ns())
        .unwrap();
    let third = replicate(&from, &replica, ReplicationRule::AllData)
        .await
        .expect("third run");
    assert_eq!(third.objects_sent, 1);
    assert_eq!(third.chunks_sent, 1);
    assert_eq!(
        third.states_updated, 2,
        "a's old version and b turned inactive"
    );
    assert_eq!(versions(&target, NODE), versions(&source, NODE));

    // The replica survives closing and reopening its data directory.
    let expected = versions(&target, NODE);
    drop(replica);
    drop(target);
    let reopened = open(&target_dir);
    assert_eq!(versions(&reopened, NODE), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_target_keeps_a_replica_to_its_source_and_its_chunks_before_versions() {
    let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (source, node) = source_with_node(&source_dir);
    back_up(&source, node.id, &[("/data/a", vec![chunk(5, 20_000)])]).await;
    let target = open(&target_dir);
    target_of(&target).await;

    // Another source server may not write into this replica.
    let other = LocalTarget::open(&target, NODE, "INTRUDER", SESSION).await;
    assert!(
        matches!(other, Err(ServerError::PermissionDenied(_))),
        "{other:?}"
    );
    // A node never prepared is named as such.
    let unknown = LocalTarget::open(&target, "NOBODY", SOURCE, SESSION).await;
    assert!(
        matches!(unknown, Err(ServerError::ReplicaNotPrepared { .. })),
        "{unknown:?}"
    );
    // A node of the target's own cannot be made a replica.
    target
        .catalog
        .register_node("OWN", "hash", now_ns())
        .unwrap()
        .unwrap();
    let own = LocalTarget::prepare(
        &target,
        ReplicaOf {
            node: "OWN".into(),
            password_hash: "hash".into(),
            locked: false,
            source: SOURCE.into(),
        },
    )
    .await;
    assert!(
        matches!(own, Err(ServerError::FailedPrecondition(_))),
        "{own:?}"
    );

    // Versions whose chunks never arrived are refused, and nothing is stored.
    let replica = LocalTarget::open(&target, NODE, SOURCE, SESSION)
        .await
        .unwrap();
    let versions_only = source.catalog.node_versions(node.id).unwrap();
    let refused = tandem_replication::Target::put_objects(&replica, versions_only).await;
    assert!(
        matches!(refused, Err(ServerError::MissingChunks { count: 1, .. })),
        "{refused:?}"
    );
    assert!(versions(&target, NODE).is_empty());

    // A chunk whose bytes do not match its id is refused before it is written.
    let mut forged = chunk(8, 1000);
    forged.id = chunk(10, 1000).id;
    let bad = tandem_replication::Target::put_chunks(&replica, vec![forged]).await;
    assert!(matches!(bad, Err(ServerError::Storage(_))), "{bad:?}");
    assert_eq!(target.catalog.chunk_totals().unwrap().0, 0);
}
