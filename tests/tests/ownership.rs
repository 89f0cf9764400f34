//! Per-node chunk ownership (issue 18, finding 1): a chunk id is no read
//! capability. One node cannot learn that another stored a chunk, read it,
//! or reference it in a commit, until it has uploaded the bytes itself;
//! storage stays deduplicated across nodes all the same.

use tandem_proto::ChunkId;
use tandem_proto::pb;
use tandem_tests::*;

fn ids(list: &[ChunkId]) -> Vec<Vec<u8>> {
    list.iter().map(|c| c.as_slice().to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn another_nodes_chunks_cannot_be_probed_read_or_claimed() {
    let server = TestServer::start("PRIMARY");
    server.register("bob", "bob-password");
    server.register("alice", "alice-password");
    let work = tempfile::tempdir().unwrap();
    let bob_dir = work.path().join("bob");
    std::fs::create_dir(&bob_dir).unwrap();
    std::fs::write(bob_dir.join("pin"), b"4711").unwrap();
    let bob = TestClient::new(&server, "bob", "bob-password");
    let backed_up = bob.json(&["incremental", &path_str(&bob_dir)]);
    assert_eq!(backed_up["failed"], 0, "{backed_up}");
    let stored_by_bob = server.container_bytes();
    let secret = ChunkId::of(b"4711");

    // Bob reads his own chunk: the id is the right one.
    let (mut as_bob, bob_token) = raw_backup_session(&server, "bob", "bob-password").await;
    let mut read = as_bob
        .read_chunks(with_session(
            &bob_token,
            pb::ReadChunksRequest {
                chunk_ids: ids(&[secret]),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        read.message().await.unwrap().is_some(),
        "bob reads his chunk"
    );

    // Alice guesses every 4-digit PIN: each one is "missing", Bob's too.
    let (mut as_alice, token) = raw_backup_session(&server, "alice", "alice-password").await;
    let guesses: Vec<ChunkId> = (0..10_000)
        .map(|n| ChunkId::of(format!("{n:04}").as_bytes()))
        .collect();
    let missing = as_alice
        .find_missing_chunks(with_session(
            &token,
            pb::FindMissingChunksRequest {
                chunk_ids: ids(&guesses),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert_eq!(
        missing.len(),
        10_000,
        "nothing told Alice which PIN Bob stored"
    );

    // Reading it is refused as for a chunk that does not exist.
    let refused = match as_alice
        .read_chunks(with_session(
            &token,
            pb::ReadChunksRequest {
                chunk_ids: ids(&[secret]),
            },
        ))
        .await
    {
        Ok(stream) => stream.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");

    // Referencing it in a commit without uploading it is refused.
    let object = pb::NewObject {
        attrs: Some(pb::ObjectAttrs {
            path: "/stolen-pin".into(),
            kind: pb::ObjectKind::File as i32,
            size: 4,
            mode: 0o644,
            ..Default::default()
        }),
        chunk_ids: ids(&[secret]),
    };
    let refused = as_alice
        .commit_objects(with_session(
            &token,
            pb::CommitObjectsRequest {
                filespace: "/".into(),
                objects: vec![object],
                deactivate: Vec::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("not stored for this node"),
        "{refused:?}"
    );
    // Uploading the bytes is answered from Alice's own view: "stored", never
    // "someone had it already".
    let raw = b"4711".to_vec();
    let upload = pb::UploadChunksRequest {
        chunks: vec![pb::Chunk {
            id: secret.as_slice().to_vec(),
            data: zstd::bulk::compress(&raw, 1).unwrap().into(),
            raw_len: raw.len() as u64,
        }],
    };
    let reply = as_alice
        .upload_chunks(with_session(
            &token,
            tonic::codegen::tokio_stream::iter([upload]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.stored, reply.already_present), (1, 0), "{reply:?}");
    assert_eq!(server.container_bytes(), stored_by_bob, "yet stored once");
    let alice = TestClient::new(&server, "alice", "alice-password");
    let listed = alice.run(&["query", "backup", "/stolen-pin"]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("stolen-pin"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );

    // Alice holding the same bytes backs them up for real: she uploads
    // them (proof of possession), nothing new is written, and both restore.
    let alice_dir = work.path().join("alice");
    std::fs::create_dir(&alice_dir).unwrap();
    std::fs::write(alice_dir.join("pin"), b"4711").unwrap();
    let backed_up = alice.json(&["incremental", &path_str(&alice_dir)]);
    assert_eq!(backed_up["failed"], 0, "{backed_up}");
    assert_eq!(server.container_bytes(), stored_by_bob, "stored once");
    for (client, dir) in [(&alice, &alice_dir), (&bob, &bob_dir)] {
        let out = work
            .path()
            .join(format!("restored-{}", path_str(dir).len()));
        let _ = std::fs::remove_dir_all(&out);
        let r = client.json(&[
            "restore",
            &format!("{}/pin", path_str(dir)),
            &format!("{}/", path_str(&out)),
        ]);
        assert_eq!(r["failed"], 0, "{r}");
        assert_eq!(std::fs::read(out.join("pin")).unwrap(), b"4711");
    }
}

#[test]
fn a_replica_uploads_chunks_another_node_stored_on_the_target() {
    let (primary, secondary, alice) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("shared"), random_bytes(5, 3 << 20)).unwrap();

    // CAROL, a node of the secondary itself, stored the same file there.
    secondary.register("carol", "carol-password");
    let carol = TestClient::new(&secondary, "carol", "carol-password");
    assert_eq!(carol.json(&["incremental", &path_str(&src)])["failed"], 0);
    let before = secondary.container_bytes();

    assert_eq!(alice.json(&["incremental", &path_str(&src)])["failed"], 0);
    let run = replicate(&primary, "alice");
    assert_eq!(run["state"], "completed", "{run}");
    assert!(
        run["bytes_sent"].as_u64().unwrap() > 2 << 20,
        "Carol's chunks are not Alice's: the primary sends them: {run}"
    );
    assert_eq!(
        secondary.container_bytes(),
        before,
        "but they are stored once"
    );

    let on_secondary = TestClient::new(&secondary, "alice", "alice-password");
    let out = work.path().join("out");
    let r = on_secondary.json(&[
        "restore",
        &format!("{}/shared", path_str(&src)),
        &format!("{}/", path_str(&out)),
    ]);
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(
        std::fs::read(out.join("shared")).unwrap(),
        std::fs::read(src.join("shared")).unwrap()
    );
}

/// Object ids of every version `token`'s node sees below `prefix`.
async fn object_ids(
    client: &mut tandem_proto::pb::backup_client::BackupClient<tonic::transport::Channel>,
    token: &str,
    prefix: &str,
) -> Vec<Vec<u8>> {
    full_versions(client, token, prefix)
        .await
        .into_iter()
        .map(|v| v.object_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_node_cannot_delete_another_nodes_versions() {
    let server = TestServer::start("PRIMARY");
    server.register("bob", "bob-password");
    server.register("alice", "alice-password");
    let work = tempfile::tempdir().unwrap();
    let bob_dir = work.path().join("bob");
    std::fs::create_dir(&bob_dir).unwrap();
    std::fs::write(bob_dir.join("ledger"), b"bob's").unwrap();
    TestClient::new(&server, "bob", "bob-password").json(&["incremental", &path_str(&bob_dir)]);

    let (mut as_bob, bob_token) = raw_backup_session(&server, "bob", "bob-password").await;
    let bobs = object_ids(&mut as_bob, &bob_token, &path_str(&bob_dir)).await;
    assert_eq!(bobs.len(), 2, "the directory and the file");
    // A filespace is a stored path or empty (every filespace): a megabyte
    // of name, or a relative one, is refused before any catalog lookup.
    for filespace in [
        "/f".repeat(1 << 19),
        "f".repeat(1 << 20),
        format!("/{}\0", "f".repeat(30_000)),
        "relative".into(),
        "/a/../b".into(),
    ] {
        let err = as_bob
            .query_objects(with_session(
                &bob_token,
                pb::QueryObjectsRequest {
                    filespace,
                    path_prefix: "/".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{:?}", err.code());
        assert!(err.message().len() < 400, "{}", err.message().len());
    }

    // Alice names Bob's versions: nothing is deleted, and she is not told
    // whether they exist.
    let (mut as_alice, alice_token) = raw_backup_session(&server, "alice", "alice-password").await;
    let reply = as_alice
        .delete_versions(with_session(
            &alice_token,
            pb::DeleteVersionsRequest {
                object_ids: bobs.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.deleted, 0);
    assert_eq!(
        object_ids(&mut as_bob, &bob_token, &path_str(&bob_dir)).await,
        bobs
    );

    // Malformed or too many ids are refused whole, before anything is deleted.
    let mut lying = bobs.clone();
    lying.push(vec![1, 2, 3]);
    let refused = as_bob
        .delete_versions(with_session(
            &bob_token,
            pb::DeleteVersionsRequest { object_ids: lying },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let flood = vec![vec![0u8; 16]; tandem_proto::MAX_OBJECTS_PER_CALL + 1];
    let refused = as_bob
        .delete_versions(with_session(
            &bob_token,
            pb::DeleteVersionsRequest { object_ids: flood },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        object_ids(&mut as_bob, &bob_token, &path_str(&bob_dir)).await,
        bobs
    );

    // Without a session nothing is even looked at.
    let no_session = as_bob
        .delete_versions(tonic::Request::new(pb::DeleteVersionsRequest {
            object_ids: bobs.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        no_session.code(),
        tonic::Code::Unauthenticated,
        "{no_session:?}"
    );

    // Bob deletes his own.
    let reply = as_bob
        .delete_versions(with_session(
            &bob_token,
            pb::DeleteVersionsRequest { object_ids: bobs },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.deleted, 2);
    assert!(
        object_ids(&mut as_bob, &bob_token, &path_str(&bob_dir))
            .await
            .is_empty()
    );
}

/// All of a node's versions with their chunk ids, as a vault sync reads them.
async fn full_versions(
    client: &mut tandem_proto::pb::backup_client::BackupClient<tonic::transport::Channel>,
    token: &str,
    prefix: &str,
) -> Vec<pb::ObjectVersion> {
    let mut stream = client
        .query_objects(with_session(
            token,
            pb::QueryObjectsRequest {
                path_prefix: prefix.to_string(),
                include_inactive: true,
                with_chunks: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        out.extend(batch.versions);
    }
    out
}

/// The vault-sync calls (PutVaultVersions, DeactivateVaultVersions) let a
/// node write its own versions only: another node's ids and chunks, times
/// in the future, content on a directory, and callers without a session
/// are refused, and nothing of the other node changes.
#[tokio::test(flavor = "multi_thread")]
async fn vault_sync_calls_cannot_touch_another_nodes_versions_or_lie_about_times() {
    let server = TestServer::start("PRIMARY");
    server.register("bob", "bob-password");
    server.register("alice", "alice-password");
    let work = tempfile::tempdir().unwrap();
    let bob_dir = work.path().join("bob");
    std::fs::create_dir(&bob_dir).unwrap();
    std::fs::write(bob_dir.join("ledger"), b"bob's ledger").unwrap();
    TestClient::new(&server, "bob", "bob-password").json(&["incremental", &path_str(&bob_dir)]);
    let (mut as_bob, bob_token) = raw_backup_session(&server, "bob", "bob-password").await;
    let bobs = full_versions(&mut as_bob, &bob_token, &path_str(&bob_dir)).await;
    let file = bobs
        .iter()
        .find(|v| !v.chunk_ids.is_empty())
        .expect("bob's file")
        .clone();

    let (mut as_alice, token) = raw_backup_session(&server, "alice", "alice-password").await;
    let put = |versions: Vec<pb::ObjectVersion>| {
        with_session(&token, pb::PutVaultVersionsRequest { versions })
    };
    // Bob's version under its own id: not Alice's to store.
    let err = as_alice
        .put_vault_versions(put(vec![file.clone()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("not this node's"), "{err:?}");
    // Under a fresh id, it names chunks Alice never uploaded.
    let mut fresh = file.clone();
    fresh.object_id = vec![42; 16];
    let err = as_alice
        .put_vault_versions(put(vec![fresh.clone()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("chunk"),
        "refused for the chunks: {err:?}"
    );
    // A backup time an hour ahead.
    let mut future = fresh.clone();
    future.chunk_ids.clear();
    future.backup_time_ns = now_ns() + 3_600_000_000_000;
    let err = as_alice
        .put_vault_versions(put(vec![future]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("impossible times"), "{err:?}");
    // A directory with content.
    let mut dir = bobs
        .iter()
        .find(|v| v.chunk_ids.is_empty())
        .expect("bob's directory")
        .clone();
    dir.object_id = vec![43; 16];
    dir.chunk_ids = file.chunk_ids.clone();
    let err = as_alice
        .put_vault_versions(put(vec![dir]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // Deactivating Bob's versions changes nothing.
    let deactivations = bobs
        .iter()
        .map(|v| pb::VaultDeactivation {
            object_id: v.object_id.clone(),
            deactivated_ns: now_ns(),
        })
        .collect();
    let changed = as_alice
        .deactivate_vault_versions(with_session(
            &token,
            pb::DeactivateVaultVersionsRequest { deactivations },
        ))
        .await
        .unwrap()
        .into_inner()
        .deactivated;
    assert_eq!(changed, 0);
    // No session, no call.
    let mut anonymous = raw_backup_client(&server).await;
    let err = anonymous
        .put_vault_versions(pb::PutVaultVersionsRequest { versions: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    let after = full_versions(&mut as_bob, &bob_token, &path_str(&bob_dir)).await;
    assert_eq!(after.len(), bobs.len());
    assert!(
        after.iter().all(|v| v.active),
        "bob's versions are untouched"
    );
}
