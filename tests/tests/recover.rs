//! Rebuilding a lost primary from its replica (issue 23 item 2): the
//! primary's data dir is wiped, a new server starts in its place, the two
//! are paired again, and `recover node --all` brings the node back from the
//! secondary. Restores are then byte-identical, every version (inactive
//! ones too) is back, nothing was deleted on the secondary, and the next
//! replication has nothing to do. After `restore-db`, nodes are held until
//! `recover node` has run, so no replication can delete what the replica
//! still holds.

use tandem_tests::*;

/// Every stored version of `src` as (path, backup time, state and
/// deactivation time), sorted.
fn versions(client: &TestClient, src: &std::path::Path) -> Vec<(String, String, String)> {
    let listed = client.json(&[
        "query",
        "backup",
        &format!("{}/*", path_str(src)),
        "--subdir",
        "--inactive",
    ]);
    let mut out: Vec<(String, String, String)> = listed
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .map(|v| {
            (
                v["path"].as_str().unwrap_or_default().to_string(),
                v["backup_time"].to_string(),
                format!("{} {}", v["state"], v["deactivated"]),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_wiped_primary_is_rebuilt_from_its_replica() {
    let (mut primary, secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    client.json(&["incremental", &path_str(&src)]);
    // A second backup makes inactive versions; both runs are replicated.
    std::fs::write(src.join("docs/sub 0/file-0.txt"), "the second version").unwrap();
    client.json(&["incremental", &path_str(&src)]);
    let run = replicate(&primary, "ALICE");
    assert_eq!(run["state"], "completed", "{run}");
    eprintln!("replication before the loss: {run}");
    let before = versions(&client, &src);
    assert!(
        before.iter().any(|v| v.2.contains("inactive")),
        "{before:?}"
    );

    // The primary is lost with everything on its disk; a new one starts in
    // its place (new certificate, new GUID) and is paired again.
    primary.kill();
    for entry in std::fs::read_dir(primary.data.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    primary.restart();
    let password = primary.data.path().join("SECONDARY.serverpw");
    std::fs::write(&password, "shared-secret-1\n").unwrap();
    assert_success(
        &primary.define_server(
            "SECONDARY",
            &secondary.url(),
            &secondary.fingerprint(),
            &password,
        ),
        "define server on the new primary",
    );
    assert_success(
        &primary.admin(&["set", "replserver", "SECONDARY"]),
        "set replserver",
    );
    assert_success(
        &secondary.admin(&[
            "update",
            "server",
            "PRIMARY",
            "--fingerprint",
            &primary.fingerprint(),
        ]),
        "pin the new primary on the secondary",
    );

    let recovered = primary.admin_json(&["recover", "node", "--all"]);
    eprintln!("recovery of the wiped primary: {recovered}");
    let row = &recovered[0];
    assert_eq!(row["node"], "ALICE", "{recovered}");
    assert_eq!(row["from"], "SECONDARY", "{recovered}");
    assert_eq!(row["state"], "recovered", "{recovered}");
    assert!(
        row["objects_received"].as_u64().unwrap() as usize >= before.len(),
        "{recovered}"
    );
    assert!(
        primary.actlog().contains("TDM0605I"),
        "{}",
        primary.actlog()
    );
    assert!(
        secondary.actlog().contains("TDM0607I"),
        "{}",
        secondary.actlog()
    );

    // The node is the new primary's own again: everything restores exactly,
    // every version is back with its date and state.
    let client = TestClient::new(&primary, "alice", "alice-password");
    let out_dir = work.path().join("out");
    let restored = client.json(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&out_dir),
        "--subdir",
    ]);
    assert_eq!(restored["failed"], 0, "{restored}");
    assert_same_tree(&src, &out_dir);
    assert_eq!(versions(&client, &src), before);

    // Nothing was deleted on the secondary, and replication has nothing to
    // send or delete. A node that is the server's own and was not lost is
    // not recovered again (its states would roll back to the replica's).
    let run = replicate(&primary, "ALICE");
    assert_eq!(run["state"], "completed", "{run}");
    assert_eq!(run["objects_sent"], 0, "{run}");
    assert_eq!(run["objects_deleted"], 0, "{run}");
    let again = primary.admin(&["recover", "node", "alice"]);
    assert_eq!(code(&again), 12, "{}", stderr(&again));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        stderr(&again)
    );
    assert!(said.contains("nothing to recover"), "{said}");

    // Backups go to it again.
    std::fs::write(src.join("after.txt"), "after the recovery").unwrap();
    let backed_up = client.json(&["incremental", &path_str(&src)]);
    assert_eq!(backed_up["failed"], 0, "{backed_up}");
}

#[test]
fn after_a_catalog_restore_nothing_replicates_until_the_replica_is_back() {
    let (mut primary, secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("old.bin"), random_bytes(1, 300_000)).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    assert_eq!(replicate(&primary, "ALICE")["state"], "completed");
    let copies = tempfile::tempdir().unwrap();
    let copy = primary.admin_json(&["backup", "db", "--to", &path_str(copies.path())]);
    let copy = copy["path"].as_str().unwrap().to_string();

    // A backup after the copy reaches the secondary, then the catalog is lost.
    std::fs::write(src.join("new.bin"), random_bytes(2, 300_000)).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    assert_eq!(replicate(&primary, "ALICE")["state"], "completed");
    primary.stop();
    let out = primary.restore_db(&copy);
    assert_success(&out, "restore-db");
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        report.contains("TDM0426W node ALICE is held for recovery")
            && report.contains("recover node ALICE --from SECONDARY"),
        "{report}"
    );
    primary.restart();

    // Held: no replication run (it would delete new.bin on the secondary)
    // and no backup until the recovery.
    let refused = primary.admin(&["replicate", "node", "alice", "--wait"]);
    assert_ne!(code(&refused), 0, "{}", stderr(&refused));
    let refused = primary.admin(&["remove", "replnode", "alice"]);
    assert_eq!(code(&refused), 12, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("held for recovery"),
        "{}",
        stderr(&refused)
    );
    let out = client.run(&["incremental", &path_str(&src)]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(stderr(&out).contains("being recovered"), "{}", stderr(&out));

    let recovered = primary.admin_json(&["recover", "node", "alice"]);
    assert_eq!(recovered[0]["state"], "recovered", "{recovered}");
    assert!(recovered[0]["objects_received"].as_u64().unwrap() >= 1);
    let out_dir = work.path().join("out");
    let restored = client.json(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&out_dir),
    ]);
    assert_eq!(restored["failed"], 0, "{restored}");
    assert_eq!(
        std::fs::read(out_dir.join("new.bin")).unwrap(),
        random_bytes(2, 300_000),
        "the backup made after the catalog copy came back from the replica"
    );
    let run = replicate(&primary, "ALICE");
    assert_eq!(run["state"], "completed", "{run}");
    assert_eq!(run["objects_deleted"], 0, "{run}");
    drop(secondary);
}

#[test]
fn a_recovery_cut_short_holds_the_node_and_a_rerun_finishes_it() {
    let (mut primary, mut secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..20u64 {
        std::fs::write(src.join(format!("f{i}.bin")), random_bytes(i, 200_000)).unwrap();
    }
    client.json(&["incremental", &path_str(&src)]);
    assert_eq!(replicate(&primary, "ALICE")["state"], "completed");
    let copies = tempfile::tempdir().unwrap();
    let copy = primary.admin_json(&["backup", "db", "--to", &path_str(copies.path())]);
    let copy = copy["path"].as_str().unwrap().to_string();
    primary.stop();
    let out = primary.restore_db(&copy);
    assert_success(&out, "restore-db");
    primary.restart();

    // The secondary is down (killed): the recovery fails, the node stays
    // held and read-only, and says how to go on.
    secondary.kill();
    let failed = primary.admin(&["--json", "recover", "node", "alice"]);
    assert_eq!(code(&failed), 12, "{}", stderr(&failed));
    let rows: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(rows[0]["state"], "failed", "{rows}");
    assert!(
        primary.actlog().contains("TDM0606E"),
        "{}",
        primary.actlog()
    );
    let out = client.run(&["incremental", &path_str(&src)]);
    assert_eq!(code(&out), 12, "still held: {}", stderr(&out));

    // Back up, the same command finishes it.
    secondary.restart();
    let done = primary.admin_json(&["recover", "node", "alice"]);
    assert_eq!(done[0]["state"], "recovered", "{done}");
    let out_dir = work.path().join("out");
    let restored = client.json(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&out_dir),
    ]);
    assert_eq!(restored["failed"], 0, "{restored}");
    assert_same_tree(&src, &out_dir);
    std::fs::write(src.join("after.bin"), random_bytes(99, 1000)).unwrap();
    let backed_up = client.json(&["incremental", &path_str(&src)]);
    assert_eq!(backed_up["failed"], 0, "{backed_up}");
}
