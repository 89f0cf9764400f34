//! Self-repair from the replica (issue 23 item 4, TSM REPLRECOVERDAMAGED):
//! a restore that meets a damaged chunk on the primary asks the server to
//! repair it; the primary fetches a verified copy from the secondary that
//! holds the node's replica, and the file restores exactly. Without a
//! replica the file is named as damaged, as before, with the reason.

use tandem_proto::pb;
use tandem_tests::*;

/// Flips one byte inside `victim`'s stored bytes in `server`'s containers.
fn damage(server: &TestServer, victim: &[u8]) {
    server.damage_stored_bytes(&victim[100_000..100_064]);
}

#[test]
fn a_restore_heals_a_damaged_chunk_from_the_replica() {
    let (primary, secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let victim = random_bytes(7, 300_000);
    std::fs::write(src.join("victim.bin"), &victim).unwrap();
    std::fs::write(src.join("healthy.bin"), random_bytes(8, 200_000)).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    let run = replicate(&primary, "ALICE");
    assert_eq!(run["state"], "completed", "{run}");
    damage(&primary, &victim);

    let out_dir = work.path().join("out");
    let out = client.run(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&out_dir),
    ]);
    assert_success(&out, "restore after the repair");
    assert_eq!(std::fs::read(out_dir.join("victim.bin")).unwrap(), victim);
    assert_eq!(
        std::fs::read(out_dir.join("healthy.bin")).unwrap(),
        random_bytes(8, 200_000)
    );
    let err = stderr(&out);
    assert!(
        err.contains("TDM1027I") && err.contains("SECONDARY"),
        "{err}"
    );
    assert!(!err.contains("TDM1020E"), "{err}");
    assert!(client.error_log().contains("TDM1027I"), "auditors see it");
    let actlog = primary.actlog();
    assert!(
        actlog.contains("TDM0428I") && actlog.contains("victim.bin"),
        "{actlog}"
    );

    // Repaired for good: the next restore needs no repair, and the
    // secondary was only read.
    let again = work.path().join("again");
    let out = client.run(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&again),
    ]);
    assert_success(&out, "second restore");
    assert!(!stderr(&out).contains("TDM1027I"), "{}", stderr(&out));
    assert_eq!(std::fs::read(again.join("victim.bin")).unwrap(), victim);
    assert_eq!(
        secondary.actlog().matches("TDM0603I").count(),
        1,
        "the secondary was not changed: {}",
        secondary.actlog()
    );
}

#[test]
fn without_a_replica_the_damaged_file_is_named_with_the_reason() {
    let server = TestServer::start("PRIMARY");
    server.register("dave", "dave-password");
    let client = TestClient::new(&server, "dave", "dave-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let victim = random_bytes(9, 300_000);
    std::fs::write(src.join("victim.bin"), &victim).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    damage(&server, &victim);

    let out_dir = work.path().join("out");
    let err = client.restore_failing(&src, &out_dir);
    assert!(
        err.contains("TDM1028W") && err.contains("never been replicated"),
        "{err}"
    );
    assert!(
        err.contains("TDM1020E") && err.contains("victim.bin"),
        "{err}"
    );
    assert!(!out_dir.join("victim.bin").exists());
    let actlog = server.actlog();
    assert!(
        actlog.contains("TDM0429E") && actlog.contains("victim.bin"),
        "{actlog}"
    );
}

/// A restore asks for its next batch of chunks while it takes the current
/// one. Files whose data the client finds damaged fail alone within the
/// stream; a chunk the server cannot read ends the stream, and the fetch
/// asks again from the next file: the batch it had asked for early is used
/// when the new one starts where it does (after file 511 here) and dropped
/// otherwise (after 900). Either way every other file restores exactly and
/// nothing is called damaged that is not.
#[test]
fn failures_across_fetch_batches_fail_only_their_files() {
    let mut server = TestServer::start("PRIMARY");
    server.register("erin", "erin-password");
    let client = TestClient::new(&server, "erin", "erin-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 1,300 files of 16 KiB, one chunk each: batches of up to 512 files.
    // Random bytes are stored as they are, so the damage can find them.
    const FILES: u64 = 1_300;
    let body = |i: u64| random_bytes(1_000 + i, 16 * 1024);
    for i in 0..FILES {
        std::fs::write(src.join(format!("f{i:04}.bin")), body(i)).unwrap();
    }
    client.json(&["incremental", &path_str(&src)]);
    // Bytes changed on disk: the client's check fails the file.
    let damaged: [u64; 4] = [100, 510, 512, 513];
    for &i in &damaged {
        server.damage_stored_bytes(&body(i)[8_000..8_064]);
    }
    // Locations past the container's end: the server's read fails and ends
    // the call. File 511 ends the first batch; 900 is inside a later one.
    let unreadable: [u64; 3] = [511, 900, FILES - 1];
    server.kill();
    let catalog = rusqlite::Connection::open(server.data_dir().join("catalog.db")).unwrap();
    for &i in &unreadable {
        let id = tandem_proto::ChunkId::of(&body(i));
        let moved = catalog
            .execute(
                "UPDATE chunks SET offset = offset + 1000000000 WHERE id = ?1",
                [id.as_slice()],
            )
            .unwrap();
        assert_eq!(moved, 1, "chunk of f{i:04}");
    }
    drop(catalog);
    server.restart();

    let out_dir = work.path().join("out");
    let err = client.restore_failing(&src, &out_dir);
    let failed: Vec<u64> = damaged.iter().chain(&unreadable).copied().collect();
    for i in 0..FILES {
        let name = format!("f{i:04}.bin");
        let restored = out_dir.join(&name);
        if failed.contains(&i) {
            assert!(err.contains(&name), "{name} is not named: {err}");
            assert!(!restored.exists(), "{name} was restored");
        } else {
            assert!(!err.contains(&name), "{name} is named: {err}");
            assert_eq!(std::fs::read(&restored).unwrap(), body(i), "{name}");
        }
    }
    assert_eq!(err.matches("TDM1020E").count(), failed.len(), "{err}");
    // Only the failed files' chunks were taken for damage: none that a
    // misplaced call would have mismatched.
    assert!(
        err.contains(&format!("could not repair {} damaged", failed.len())),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn repair_calls_are_bounded_and_reveal_nothing_of_other_nodes() {
    let server = TestServer::start("PRIMARY");
    server.register("bob", "bob-password");
    server.register("eve", "eve-password");
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("pin"), b"4711").unwrap();
    let bob = TestClient::new(&server, "bob", "bob-password");
    bob.json(&["incremental", &path_str(work.path())]);
    let secret = tandem_proto::ChunkId::of(b"4711");
    let unknown = tandem_proto::ChunkId::of(b"nobody stored this");

    let (mut as_eve, token) = raw_backup_session(&server, "eve", "eve-password").await;
    let too_many = vec![secret.as_slice().to_vec(); tandem_proto::MAX_REPAIR_CHUNK_IDS + 1];
    let refused = as_eve
        .repair_chunks(with_session(
            &token,
            pb::RepairChunksRequest {
                chunk_ids: too_many,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let bad = as_eve
        .repair_chunks(with_session(
            &token,
            pb::RepairChunksRequest {
                chunk_ids: vec![vec![1, 2, 3]],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    // Bob's chunk and a chunk nobody stored get the same answer.
    let mut answers = Vec::new();
    for id in [secret, unknown] {
        let reply = repair_answer(&mut as_eve, &token, id).await;
        answers.push((reply.intact, reply.repaired, reply.unrepaired, reply.reason));
    }
    assert_eq!(answers[0], answers[1], "{answers:?}");
    assert_eq!(answers[0].2, 1, "{answers:?}");

    // Without a session nothing is checked.
    let mut anonymous = raw_backup_client(&server).await;
    let denied = anonymous
        .repair_chunks(pb::RepairChunksRequest {
            chunk_ids: vec![secret.as_slice().to_vec()],
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated, "{denied:?}");
}

#[test]
fn an_audit_finds_damage_before_a_restore_and_fix_repairs_it() {
    let (primary, _secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let victim = random_bytes(17, 300_000);
    std::fs::write(src.join("victim.bin"), &victim).unwrap();
    std::fs::write(src.join("healthy.bin"), random_bytes(18, 200_000)).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    assert_eq!(replicate(&primary, "ALICE")["state"], "completed");

    // Whole: every chunk is read and verified, exit 0.
    let clean = primary.admin_json(&["audit", "node", "alice"]);
    assert!(clean[0]["chunks_checked"].as_u64().unwrap() >= 2, "{clean}");
    assert_eq!(clean[0]["damaged"], 0, "{clean}");
    assert!(
        primary.actlog().contains("TDM0430I"),
        "{}",
        primary.actlog()
    );

    // Damaged: found and named, exit 8 (TDM0517W), nothing changed.
    damage(&primary, &victim);
    let found = primary.admin(&["--json", "audit", "node", "alice"]);
    assert_eq!(code(&found), 8, "{}", stderr(&found));
    assert!(stderr(&found).contains("TDM0517W"), "{}", stderr(&found));
    let rows: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(rows[0]["damaged"], 1, "{rows}");
    assert_eq!(rows[0]["unrepaired"], 1, "{rows}");
    assert!(
        primary.actlog().contains("TDM0431W"),
        "{}",
        primary.actlog()
    );

    // --fix repairs it from the secondary; the next audit and a restore
    // find everything whole, with no repair on the way.
    let fixed = primary.admin_json(&["audit", "node", "alice", "--fix"]);
    assert_eq!(fixed[0]["repaired"], 1, "{fixed}");
    assert_eq!(fixed[0]["unrepaired"], 0, "{fixed}");
    assert_eq!(fixed[0]["partner"], "SECONDARY", "{fixed}");
    let after = primary.admin_json(&["audit", "node", "alice"]);
    assert_eq!(after[0]["damaged"], 0, "{after}");
    let out_dir = work.path().join("out");
    let out = client.run(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&out_dir),
    ]);
    assert_success(&out, "restore after the audit");
    assert!(!stderr(&out).contains("TDM1027I"), "{}", stderr(&out));
    assert_eq!(std::fs::read(out_dir.join("victim.bin")).unwrap(), victim);

    let unknown = primary.admin(&["audit", "node", "nosuch"]);
    assert_eq!(code(&unknown), 12, "{}", stderr(&unknown));
}

#[test]
fn a_pool_audit_names_the_damaged_files_records_them_and_fix_repairs_them() {
    let (primary, _secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let victim = random_bytes(27, 300_000);
    std::fs::write(src.join("victim.bin"), &victim).unwrap();
    std::fs::write(src.join("healthy.bin"), random_bytes(28, 200_000)).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    assert_eq!(replicate(&primary, "ALICE")["state"], "completed");

    let clean = primary.admin_json(&["audit", "pool"])[0].clone();
    assert_eq!(clean["damaged"], 0, "{clean}");
    assert_eq!(clean["subset"], "all", "{clean}");
    assert!(clean["chunks_checked"].as_u64().unwrap() >= 2, "{clean}");
    assert!(clean["bytes_read"].as_u64().unwrap() >= 500_000, "{clean}");

    damage(&primary, &victim);
    let found = primary.admin(&["--json", "audit", "pool"]);
    assert_eq!(code(&found), 8, "{}", stderr(&found));
    assert!(stderr(&found).contains("victim.bin"), "{}", stderr(&found));
    let report: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    let report = &report[0];
    assert_eq!(report["damaged"], 1, "{report}");
    assert_eq!(report["unrepaired"], 1, "{report}");
    let victim_path = format!("ALICE:{}", path_str(&src.join("victim.bin")));
    assert_eq!(report["files"][0], victim_path.as_str(), "{report}");
    let log = primary.actlog();
    assert!(
        log.contains("TDM0431W")
            && log.contains("audit of the pool")
            && log.contains("0 freed by expiration while the audit ran"),
        "{log}"
    );

    // Recorded until repaired: an operator lists it with the file it hurts.
    let listed = primary.admin_json(&["query", "damaged"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["files"][0], victim_path.as_str(), "{listed}");
    assert!(listed[0]["container"].as_u64().unwrap() >= 1, "{listed}");
    let table = primary.admin(&["query", "damaged"]);
    assert_success(&table, "query damaged as a table");
    let shown = String::from_utf8_lossy(&table.stdout);
    assert!(shown.contains("victim.bin"), "{shown}");

    // --fix repairs it for the node using it, from that node's replica.
    let fixed = primary.admin_json(&["audit", "pool", "--fix"])[0].clone();
    assert_eq!(fixed["repaired"], 1, "{fixed}");
    assert_eq!(fixed["unrepaired"], 0, "{fixed}");
    let listed = primary.admin_json(&["query", "damaged"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    let after = primary.admin_json(&["audit", "pool", "--read-data-subset", "100%"])[0].clone();
    assert_eq!(after["damaged"], 0, "{after}");
    // A share too small for this pool's few containers still reads one.
    let sample = primary.admin_json(&["audit", "pool", "--read-data-subset", "0.01%"])[0].clone();
    assert_eq!(sample["subset"], "0.01%", "{sample}");
    assert!(sample["chunks_checked"].as_u64().unwrap() > 0, "{sample}");
    assert_eq!(sample["containers"], 1, "{sample}");
    let out_dir = work.path().join("out");
    let out = client.run(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&out_dir),
    ]);
    assert_success(&out, "restore after the pool audit");
    assert!(!stderr(&out).contains("TDM1027I"), "{}", stderr(&out));
    assert_eq!(std::fs::read(out_dir.join("victim.bin")).unwrap(), victim);

    for bad in ["0%", "3/2", "often"] {
        let out = primary.admin(&["audit", "pool", "--read-data-subset", bad]);
        assert_eq!(code(&out), 12, "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains(bad), "{}", stderr(&out));
    }
}

#[test]
fn one_pool_audit_runs_at_a_time_and_a_stop_cuts_a_long_one_off() {
    let mut server = TestServer::start_with(
        "PRIMARY",
        &[
            ("TANDEM_FAULT_PAUSE", "audit-pool-started"),
            ("TANDEM_SERVER_SHUTDOWN_GRACE_SECONDS", "2"),
        ],
    );
    server.register("alice", "alice-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    // The first audit holds the pool (it is paused, as a long one would be).
    let mut first = server
        .admin_command(&["audit", "pool"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    server.wait_for_log("paused at fault point audit-pool-started");
    let second = server.admin(&["audit", "container", "1"]);
    assert!(!second.status.success());
    let err = stderr(&second);
    assert!(err.contains("another audit of the pool"), "{err}");
    // A stop does not wait for it past the grace period.
    let status = server.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(server.log().contains("TDM0003W"), "{}", server.log());
    let first = first.wait().unwrap();
    assert!(!first.success(), "the cut-off audit reported success");
    // Started again, the pool audits as usual.
    server.restart_with(&[]);
    let audit = server.admin_json(&["audit", "pool"]);
    assert_eq!(audit[0]["damaged"].as_u64(), Some(0), "{audit}");
    assert!(audit[0]["chunks_checked"].as_u64().unwrap() >= 1, "{audit}");
}

/// Compaction copies a container's live chunks elsewhere and removes it.
/// A live chunk it cannot copy (its data damaged, or its record's header,
/// so the container no longer says where it is) must not go with the
/// container: the container stays, and the chunk is named as damaged.
#[test]
fn compaction_keeps_a_container_whose_live_chunks_it_cannot_copy_and_names_them() {
    let server = TestServer::start("PRIMARY");
    server.register("nia", "nia-password");
    let client = TestClient::new(&server, "nia", "nia-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Each under the chunker's minimum: one chunk, named by its hash.
    let bad_data = random_bytes(11, 200_000);
    let bad_header = random_bytes(12, 200_000);
    std::fs::write(src.join("bad-data.bin"), &bad_data).unwrap();
    std::fs::write(src.join("bad-header.bin"), &bad_header).unwrap();
    std::fs::write(src.join("drop.bin"), random_bytes(13, 3_000_000)).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    let containers = server.containers();

    server.damage_stored_bytes(&bad_data[100_000..100_064]);
    server.damage_stored_bytes(tandem_proto::ChunkId::of(&bad_header).as_slice());
    client.json(&[
        "delete",
        "backup",
        &path_str(&src.join("drop.bin")),
        "--deltype",
        "all",
        "--yes",
    ]);
    let expired = server.admin_json(&["expire", "inventory"]);
    assert_eq!(expired["containers_compacted"], 0, "{expired}");
    // (The seal before compaction opens a new container beside them.)
    let now = server.containers();
    assert!(containers.iter().all(|c| now.contains(c)), "{now:?}");
    let damaged = server.admin_json(&["query", "damaged"]);
    let text = damaged.to_string();
    assert_eq!(damaged.as_array().map(Vec::len), Some(2), "{text}");
    assert!(text.contains("header is damaged"), "{text}");
    assert!(
        text.contains("does not match") || text.contains("malformed") || text.contains("mismatch"),
        "{text}"
    );
}
