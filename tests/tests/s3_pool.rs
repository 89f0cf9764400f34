//! Storage pools on an S3-compatible object store: a real `s3s-fs` server
//! on loopback, a real `tandem-server` whose sealed containers move there,
//! real clients backing up and restoring, SIGKILL at the step between an
//! upload and its marker, and the object store going down mid-backup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_tests::s3::S3Server;
use tandem_tests::{
    TestClient, TestServer, assert_success, code, make_tree, pair, path_str, random_bytes,
    replicate, stderr, wait_until,
};

/// Containers seal at 1 MiB here, so a few MiB of data makes several.
const CONTAINER_MIB: u32 = 1;

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A server on an S3 pool in `s3`, with node `node` and its client.
fn s3_server(s3: &S3Server, node: &str, extra: &[(&str, &str)]) -> (TestServer, TestClient) {
    let env = s3.server_env(CONTAINER_MIB);
    let mut all = env_refs(&env);
    all.extend_from_slice(extra);
    server_for(&all, "S3SRV", node)
}

/// A server named `name` with `env` as its settings, node `node`
/// registered, and the node's client.
fn server_for(env: &[(&str, &str)], name: &str, node: &str) -> (TestServer, TestClient) {
    let server = TestServer::start_with(name, env);
    server.register(node, "node-password");
    let client = TestClient::new(&server, node, "node-password");
    (server, client)
}

/// A tree with the usual test files and ~6 MiB of incompressible data.
fn source_tree(root: &Path) {
    make_tree(root);
    for i in 0..6u64 {
        std::fs::write(
            root.join(format!("big-{i}.bin")),
            random_bytes(1000 + i, 1 << 20),
        )
        .unwrap();
    }
}

/// Files in the server's `containers` directory with extension `ext`.
fn local(server: &TestServer, ext: &str) -> Vec<PathBuf> {
    server
        .containers()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect()
}

/// Waits (bounded) until every sealed container is in the bucket: one
/// local container file is left, the open one.
fn wait_until_offloaded(server: &TestServer, s3: &S3Server) {
    let done = wait_until(Duration::from_secs(120), || {
        local(server, "tdc").len() == 1 && !local(server, "remote").is_empty()
    });
    assert!(
        done,
        "sealed containers did not reach the bucket: local {:?}, bucket {:?}\n{}",
        server.containers(),
        s3.container_objects(),
        server.log()
    );
    assert_eq!(
        local(server, "remote").len(),
        s3.container_objects().len(),
        "one object per marker"
    );
}

/// Regular files anywhere under `dir` (0 when it does not exist).
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let path = e.path();
            if path.is_dir() { files_under(&path) } else { 1 }
        })
        .sum()
}

#[test]
fn an_s3_pool_keeps_sealed_containers_in_the_bucket_restores_from_it_and_reclaims_them() {
    let s3 = S3Server::start();
    // A read cache of 8 blocks: a restore reads in waves of two blocks (or
    // one chunk), each fetched while the one before it is read.
    let (mut server, client) = s3_server(&s3, "alice", &[("TANDEM_SERVER_POOL__CACHE_MIB", "8")]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    source_tree(&src);
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    wait_until_offloaded(&server, &s3);
    assert!(
        s3.container_objects().len() >= 4,
        "6 MiB in 1 MiB containers: {:?}",
        s3.container_objects()
    );
    assert!(server.log().contains("TDM0440I"), "{}", server.log());
    let pool = &server.admin_json(&["query", "stgpool"])[0];
    assert_eq!(pool["kind"], "s3", "{pool}");
    assert_eq!(pool["local_containers"], 1, "{pool}");
    assert_eq!(pool["uploads_pending"], 0, "{pool}");
    assert_eq!(
        pool["remote_containers"].as_u64(),
        Some(s3.container_objects().len() as u64),
        "{pool}"
    );
    assert!(pool["put_requests"].as_u64().unwrap() >= 3, "{pool}");
    assert!(
        pool["location"]
            .as_str()
            .unwrap()
            .starts_with("s3://tandem/srv/ at http://127.0.0.1:")
    );

    // Restored from the bucket (ranged GETs), byte for byte, also by a
    // restarted server whose cache is empty.
    let first = work.path().join("first");
    client.restore_same(&src, &first);
    server.kill();
    server.restart();
    let second = work.path().join("second");
    client.restore_same(&src, &second);
    let pool = &server.admin_json(&["query", "stgpool"])[0];
    let gets = pool["get_requests"].as_u64().unwrap();
    assert!(gets >= 1, "{pool}");
    assert!(
        pool["bytes_downloaded"].as_u64().unwrap() >= 6 << 20,
        "{pool}"
    );

    // The audit reads every chunk back from the bucket.
    let audit = server.admin_json(&["audit", "node", "alice"]);
    assert_eq!(audit[0]["damaged"].as_u64(), Some(0), "{audit}");
    assert_eq!(audit[0]["missing"].as_u64(), Some(0), "{audit}");
    assert!(audit[0]["chunks_checked"].as_u64().unwrap() > 6, "{audit}");

    // Deleting the filespace reclaims the objects: none is left behind.
    let fs = client.json(&["query", "filespace"]);
    let name = fs[0]["name"].as_str().unwrap().to_string();
    let out = server.admin(&["--json", "delete", "filespace", "alice", &name, "--yes"]);
    assert_success(&out, "delete filespace");
    // The container the reclaim sealed may be uploading as it is removed;
    // the upload then deletes its own object.
    let emptied = wait_until(Duration::from_secs(60), || {
        s3.container_objects().is_empty()
    });
    assert!(
        emptied,
        "objects left after every chunk was deleted: {:?}",
        s3.container_objects()
    );
    assert!(
        local(&server, "remote").is_empty(),
        "{:?}",
        server.containers()
    );
}

#[test]
fn a_server_killed_between_upload_and_marker_uploads_again_and_loses_nothing() {
    let s3 = S3Server::start();
    let (mut server, client) = s3_server(&s3, "bob", &[("TANDEM_FAULT_PAUSE", "pool-uploaded")]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    source_tree(&src);
    // The backup is acknowledged with its containers staged locally.
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    server.wait_for_log("paused at fault point pool-uploaded");
    // The first upload is in the bucket, its marker not yet written.
    assert!(!s3.container_objects().is_empty());
    assert!(local(&server, "remote").is_empty());
    server.kill();

    let env = s3.server_env(CONTAINER_MIB);
    server.restart_with(&env_refs(&env));
    wait_until_offloaded(&server, &s3);
    let out = work.path().join("out");
    client.restore_same(&src, &out);
    let audit = server.admin_json(&["audit", "node", "bob"]);
    assert_eq!(audit[0]["damaged"].as_u64(), Some(0), "{audit}");
}

#[test]
fn a_server_killed_while_removing_a_container_finishes_the_removal_at_start() {
    let s3 = S3Server::start();
    let (mut server, client) = s3_server(&s3, "erin", &[("TANDEM_FAULT_PAUSE", "pool-deleting")]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    source_tree(&src);
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    wait_until_offloaded(&server, &s3);
    // Deleting the filespace reclaims its containers; the first removal
    // stops after its marker became an intent to delete.
    let fs = client.json(&["query", "filespace"]);
    let name = fs[0]["name"].as_str().unwrap().to_string();
    let mut deleting = server
        .admin_command(&["delete", "filespace", "erin", &name, "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    server.wait_for_log("paused at fault point pool-deleting");
    let intents = local(&server, "deleting");
    assert_eq!(intents.len(), 1, "{intents:?}");
    server.kill();
    let _ = deleting.wait();

    // The next start finishes it: the intent and its object are gone, and
    // every marker left names an object the bucket holds.
    let env = s3.server_env(CONTAINER_MIB);
    server.restart_with(&env_refs(&env));
    let number = |p: &PathBuf| p.file_stem().unwrap().to_str().unwrap().to_string();
    let finished = wait_until(Duration::from_secs(60), || {
        local(&server, "deleting").is_empty()
            && !s3
                .container_objects()
                .iter()
                .any(|o| number(o) == number(&intents[0]))
    });
    assert!(
        finished,
        "the removal was not finished: {:?}",
        s3.container_objects()
    );
    let objects: Vec<String> = s3.container_objects().iter().map(number).collect();
    for marker in local(&server, "remote") {
        assert!(
            objects.contains(&number(&marker)),
            "{marker:?} names a missing object"
        );
    }
    // The server works on: a new backup restores whole, the pool audits clean.
    let again = work.path().join("again");
    source_tree(&again);
    assert_success(
        &client.run(&["incremental", &path_str(&again)]),
        "backup after the restart",
    );
    client.restore_same(&again, &work.path().join("out"));
    let audit = server.admin_json(&["audit", "pool"]);
    assert_eq!(audit[0]["damaged"].as_u64(), Some(0), "{audit}");
}

#[test]
fn the_object_store_down_during_a_backup_delays_uploads_and_loses_nothing() {
    let mut s3 = S3Server::start();
    let (mut server, client) = s3_server(&s3, "carol", &[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    source_tree(&src);
    s3.kill();
    // Backups go on: sealed containers wait on the local disk.
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    server.wait_for_log("TDM0441W");
    assert!(local(&server, "remote").is_empty());
    let pool = &server.admin_json(&["query", "stgpool"])[0];
    assert!(pool["uploads_pending"].as_u64().unwrap() >= 4, "{pool}");
    assert!(pool["upload_failures"].as_u64().unwrap() >= 1, "{pool}");
    assert!(
        pool["last_upload_error"]
            .as_str()
            .unwrap()
            .contains("container"),
        "{pool}"
    );
    let during = work.path().join("during");
    client.restore_same(&src, &during);

    // Back up: the waiting containers move to the bucket.
    s3.restart();
    wait_until_offloaded(&server, &s3);
    let after = work.path().join("after");
    client.restore_same(&src, &after);

    // Down again, and the server's read cache empty (a restart): a restore
    // that needs the bucket fails and says why, and leaves no partial file.
    s3.kill();
    server.restart();
    let failed = work.path().join("failed");
    let out = client.run(&[
        "restore",
        &format!("{}/big-3.bin", path_str(&src)),
        &path_str(&failed),
    ]);
    assert!(
        !out.status.success(),
        "restore without the bucket succeeded"
    );
    let err = stderr(&out);
    assert!(err.contains("storage pool s3://tandem/srv/"), "{err}");
    assert!(
        err.contains("TDM1029E") && !err.contains("TDM1020E"),
        "{err}"
    );
    assert_eq!(files_under(&failed), 0, "a partial file was left");
    // An audit cannot tell damage from an unreachable bucket: it stops and
    // says the pool is unavailable instead of calling every chunk damaged.
    let out = server.admin(&["audit", "node", "carol"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is unavailable"), "{err}");
    assert!(!err.contains("damaged"), "{err}");
}

/// GET requests the server's first pool has made since it started.
fn get_requests(server: &TestServer) -> u64 {
    let pool = &server.admin_json(&["query", "stgpool"])[0];
    pool["get_requests"].as_u64().unwrap()
}

#[test]
fn a_restore_while_the_object_store_is_down_fails_its_files_at_once_and_works_when_it_is_back() {
    let mut s3 = S3Server::start();
    let (mut server, client) = s3_server(&s3, "dora", &[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..200u64 {
        std::fs::write(
            src.join(format!("f{i:03}")),
            random_bytes(3000 + i, 16 << 10),
        )
        .unwrap();
    }
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    wait_until_offloaded(&server, &s3);

    // The bucket goes away, and with the restart the server's read cache.
    s3.kill();
    server.restart();
    let asked_before = get_requests(&server);
    let during = work.path().join("during");
    let out = client.run(&[
        "--json",
        "restore",
        &format!("{}/", path_str(&src)),
        &path_str(&during),
        "--subdir",
    ]);
    assert!(
        !out.status.success(),
        "a restore without the bucket succeeded"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed = summary["failed"].as_u64().unwrap();
    let err = stderr(&out);
    // Most files are in sealed containers, in the bucket only.
    assert!(failed >= 100, "{summary}\n{err}");
    assert!(
        err.contains("TDM1029E") && !err.contains("TDM1020E"),
        "{err}"
    );
    assert!(
        err.contains("one read at a time asks it, at most every 5 s"),
        "{err}"
    );
    assert_eq!(files_under(&during), 200 - failed as usize, "{summary}");
    // Each failed file did not wait out the retries of its own: the bucket
    // was asked once, and again at most once per 5 s of the restore (a few
    // times at most), not once per file.
    let asked = get_requests(&server) - asked_before;
    assert!(
        asked < failed / 4,
        "{asked} GETs for {failed} failed files: the bucket was asked per file"
    );

    // Back: within a few seconds a read asks it again and the hold ends.
    s3.restart();
    client.restore_once_answered(
        &format!("{}/f000", path_str(&src)),
        &work.path().join("one"),
    );
    client.restore_same(&src, &work.path().join("after"));
}

#[test]
fn an_object_changed_behind_the_servers_back_is_found_by_the_audit_and_repaired_from_the_replica() {
    let s3 = S3Server::start();
    let (mut primary, client) = s3_server(&s3, "dave", &[]);
    let secondary = TestServer::start("SECONDARY");
    pair(&primary, &secondary, "shared-secret-1");
    assert_success(
        &primary.admin(&["update", "node", "dave", "--replstate", "enabled"]),
        "enable replication",
    );
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    source_tree(&src);
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    wait_until_offloaded(&primary, &s3);
    // Replication reads the node's data back from the bucket.
    assert_eq!(replicate(&primary, "DAVE")["state"], "completed");
    // Flip a byte of stored data in one object (random data is stored
    // verbatim, so a window of a source file is found as it is), and
    // delete another object outright, and empty a third.
    let needle = &random_bytes(1002, 1 << 20)[300_000..300_064];
    let objects = s3.container_objects();
    let flipped = objects
        .iter()
        .position(|object| {
            let mut bytes = std::fs::read(object).unwrap();
            let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) else {
                return false;
            };
            bytes[at + 10] ^= 0xFF;
            std::fs::write(object, &bytes).unwrap();
            true
        })
        .expect("the needle is in an object");
    let (deleted, emptied) = {
        let mut others = (0..objects.len()).filter(|&i| i != flipped);
        (others.next().unwrap(), others.next().unwrap())
    };
    let records = |object: &PathBuf| {
        let bytes = std::fs::read(object).unwrap();
        let mut n = 0u64;
        let mut at = 0usize;
        while at + 40 <= bytes.len() {
            let stored = u32::from_le_bytes(bytes[at + 32..at + 36].try_into().unwrap());
            at += 40 + stored as usize;
            n += 1;
        }
        n
    };
    let lost_chunks = records(&objects[deleted]) + records(&objects[emptied]);
    std::fs::remove_file(&objects[deleted]).unwrap();
    // Cut to nothing: every ranged read of it is refused (HTTP 416), which
    // is damage, not an unavailable store.
    std::fs::write(&objects[emptied], b"").unwrap();
    // A fresh process: nothing of the objects is cached.
    primary.restart();
    let out = primary.admin(&["--json", "audit", "node", "dave"]);
    assert_eq!(code(&out), 8, "damage found is a warning: {}", stderr(&out));
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad = audit[0]["damaged"].as_u64().unwrap();
    assert!(
        (3..=1 + lost_chunks).contains(&bad),
        "one flipped chunk and the chunks in use of the missing and the emptied object: {audit}"
    );
    assert!(
        audit[0]["files"].as_array().is_some_and(|f| !f.is_empty()),
        "the files using the damage are named: {audit}"
    );

    // The pool audit reads the bucket container by container and finds the
    // same damage; every finding is recorded with its container and files.
    let out = primary.admin(&["--json", "audit", "pool"]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("audit pool --fix"),
        "{}",
        stderr(&out)
    );
    let pool: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pool = &pool[0];
    assert_eq!(pool["damaged"].as_u64(), Some(bad), "{pool}");
    assert!(pool["containers"].as_u64().unwrap() >= 2, "{pool}");
    assert!(pool["bytes_read"].as_u64().unwrap() > 1 << 20, "{pool}");
    let listed = primary.admin_json(&["query", "damaged"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len() as u64, bad, "{listed:?}");
    let number = |object: &PathBuf| -> u64 {
        let stem = object.file_stem().unwrap().to_str().unwrap();
        stem.parse().unwrap()
    };
    assert!(
        listed
            .iter()
            .any(|d| d["container"].as_u64() == Some(number(&objects[deleted]))),
        "{listed:?}"
    );
    assert!(
        listed.iter().all(|d| d["files"][0]
            .as_str()
            .is_some_and(|f| f.starts_with("DAVE:"))),
        "{listed:?}"
    );
    // One container alone: the flipped chunk is its only damage.
    let one = primary.admin(&[
        "--json",
        "audit",
        "container",
        &number(&objects[flipped]).to_string(),
    ]);
    assert_eq!(code(&one), 8, "{}", stderr(&one));
    let one: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    let one = &one[0];
    assert_eq!(one["damaged"].as_u64(), Some(1), "{one}");
    assert_eq!(one["containers"].as_u64(), Some(1), "{one}");
    let none = primary.admin(&["audit", "container", "99999"]);
    assert_eq!(code(&none), 12, "{}", stderr(&none));
    assert!(
        stderr(&none).contains("container 99999"),
        "{}",
        stderr(&none)
    );
    // Two slices read every chunk once between them.
    let halves: Vec<u64> = ["1/2", "2/2"]
        .iter()
        .map(|slice| {
            let out = primary.admin(&["--json", "audit", "pool", "--read-data-subset", slice]);
            let half: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let half = &half[0];
            assert_eq!(half["subset"], *slice, "{half}");
            half["chunks_checked"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(
        halves.iter().sum::<u64>(),
        pool["chunks_checked"].as_u64().unwrap(),
        "{halves:?} {pool}"
    );
    let wrong = primary.admin(&["audit", "pool", "--read-data-subset", "150%"]);
    assert_ne!(code(&wrong), 0);
    assert!(stderr(&wrong).contains("150%"), "{}", stderr(&wrong));

    // Repaired from the replica: good copies go to the open container and
    // the damaged records are no longer used, nor listed.
    let fixed = primary.admin_json(&["audit", "node", "dave", "--fix"]);
    assert_eq!(fixed[0]["repaired"].as_u64(), Some(bad), "{fixed}");
    assert_eq!(fixed[0]["unrepaired"].as_u64(), Some(0), "{fixed}");
    let again = primary.admin_json(&["audit", "node", "dave"]);
    assert_eq!(again[0]["damaged"].as_u64(), Some(0), "{again}");
    let listed = primary.admin_json(&["query", "damaged"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    let whole = primary.admin_json(&["audit", "pool"])[0].clone();
    assert_eq!(whole["damaged"].as_u64(), Some(0), "{whole}");
    let out = work.path().join("out");
    client.restore_same(&src, &out);
}

#[test]
fn a_second_server_given_the_same_bucket_prefix_refuses_to_start_and_one_started_without_the_bucket_claims_it_later()
 {
    let mut s3 = S3Server::start();
    let (mut first, client) = s3_server(&s3, "erin", &[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    source_tree(&src);
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    wait_until_offloaded(&first, &s3);
    let owner_object = s3.root.path().join("tandem/srv/tandem-owner.toml");
    let owner = std::fs::read_to_string(&owner_object).unwrap();
    assert!(owner.contains("server = \"S3SRV\""), "{owner}");

    // Another server on the same prefix would number its containers from 1
    // too and overwrite these: it must not start.
    let env = s3.server_env(CONTAINER_MIB);
    let err = TestServer::try_start_with("INTRUDER", &env_refs(&env));
    assert!(
        err.contains("is not this server's")
            && err.contains("belongs to server \"S3SRV\"")
            && err.contains("its own `prefix`"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&owner_object).unwrap(), owner);
    // A prefix written before owner objects existed holds containers but
    // no owner: a server that knows none of them is refused too, and the
    // server whose markers name them adopts the prefix.
    std::fs::remove_file(&owner_object).unwrap();
    let err = TestServer::try_start_with("INTRUDER", &env_refs(&env));
    assert!(
        err.contains("holds containers but no tandem-owner.toml"),
        "{err}"
    );
    assert!(!owner_object.exists());
    // Nor does a start of the owner's data dir that is refused for its
    // server name claim the prefix under that name.
    first.kill();
    let err = TestServer::try_start_in(first.data_dir(), "RENAMED", &env_refs(&env));
    assert!(err.contains("belongs to server S3SRV"), "{err}");
    assert!(!owner_object.exists());
    // The owner itself starts again (its GUID is in its catalog), and its
    // data is all there.
    first.restart();
    let adopted = std::fs::read_to_string(&owner_object).unwrap();
    assert!(adopted.contains("server = \"S3SRV\""), "{adopted}");
    client.restore_same(&src, &work.path().join("after-intruder"));
    // An owner object nobody wrote is not taken over either.
    let junk_env = with_setting(&env, "TANDEM_SERVER_POOL__PREFIX", "junk/");
    std::fs::create_dir_all(s3.root.path().join("tandem/junk")).unwrap();
    std::fs::write(
        s3.root.path().join("tandem/junk/tandem-owner.toml"),
        "guid = \"someone\"\nsecret = 1\n",
    )
    .unwrap();
    let err = TestServer::try_start_with("OTHER", &env_refs(&junk_env));
    assert!(err.contains("is not an owner record"), "{err}");

    // A server started while the object store is down still starts and
    // takes backups; its first upload claims its own prefix.
    s3.kill();
    let late_env = with_setting(&env, "TANDEM_SERVER_POOL__PREFIX", "late/");
    let (late, late_client) = server_for(&env_refs(&late_env), "LATE", "frank");
    assert_success(
        &late_client.run(&["incremental", &path_str(&src)]),
        "backup",
    );
    late.wait_for_log("TDM0441W");
    s3.restart();
    let claimed = wait_until(Duration::from_secs(120), || {
        std::fs::read_to_string(s3.root.path().join("tandem/late/tandem-owner.toml"))
            .is_ok_and(|t| t.contains("server = \"LATE\""))
            && local(&late, "tdc").len() == 1
    });
    assert!(claimed, "{}", late.log());
    late_client.restore_same(&src, &work.path().join("late"));
}

/// `env` with `key` set to `value` instead.
fn with_setting(env: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env.iter().filter(|(k, _)| k != key).cloned().collect();
    env.push((key.to_string(), value.to_string()));
    env
}

#[test]
fn every_uploaded_part_carries_the_sha256_the_object_store_checks_unless_turned_off() {
    use base64::Engine;
    let s3 = S3Server::start();
    let target: std::net::SocketAddr = format!("127.0.0.1:{}", s3.port).parse().unwrap();
    let wire = tandem_tests::CutProxy::recording(target);
    let env = with_setting(
        &s3.server_env(CONTAINER_MIB),
        "TANDEM_SERVER_POOL__ENDPOINT",
        &format!("http://{}", wire.addr),
    );
    let (server, client) = server_for(&env_refs(&env), "S3SRV", "gina");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    source_tree(&src);
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    wait_until_offloaded(&server, &s3);
    // Containers are 1 MiB here, so each is one part: the checksum sent
    // with it is the SHA-256 of the whole object.
    let captured = String::from_utf8_lossy(&wire.captured()).to_lowercase();
    for object in s3.container_objects() {
        let digest = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(&object).unwrap());
        let header = format!(
            "x-amz-checksum-sha256: {}",
            base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
        )
        .to_lowercase();
        assert!(
            captured.contains(&header),
            "no {header} sent for {}",
            object.display()
        );
    }

    // Turned off (for a store that rejects the header), none is sent.
    let plain_wire = tandem_tests::CutProxy::recording(target);
    let plain_env = with_setting(
        &with_setting(&env, "TANDEM_SERVER_POOL__UPLOAD_CHECKSUM", "false"),
        "TANDEM_SERVER_POOL__ENDPOINT",
        &format!("http://{}", plain_wire.addr),
    );
    let plain_env = with_setting(&plain_env, "TANDEM_SERVER_POOL__PREFIX", "plain/");
    let (plain, plain_client) = server_for(&env_refs(&plain_env), "PLAIN", "hal");
    assert_success(
        &plain_client.run(&["incremental", &path_str(&src)]),
        "backup",
    );
    let uploaded = wait_until(Duration::from_secs(120), || {
        local(&plain, "remote").len() >= 4
    });
    assert!(uploaded, "{}", plain.log());
    let captured = String::from_utf8_lossy(&plain_wire.captured()).to_lowercase();
    assert!(
        captured.contains("partnumber="),
        "no part upload crossed the proxy"
    );
    assert!(!captured.contains("x-amz-checksum"), "a checksum was sent");
    plain_client.restore_same(&src, &work.path().join("plain"));
}

#[test]
fn a_data_dir_that_lost_its_containers_never_uploads_over_the_ones_in_the_bucket() {
    let s3 = S3Server::start();
    let (mut server, client) = s3_server(&s3, "ivan", &[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    source_tree(&src);
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    wait_until_offloaded(&server, &s3);
    let objects = bucket_snapshot(&s3);
    // The data dir loses its containers directory: new containers are
    // numbered after the highest the catalog indexes, so they go to the
    // bucket beside the old ones, never over them.
    let lose_local_containers = |server: &TestServer| {
        for file in local(server, "remote")
            .into_iter()
            .chain(local(server, "tdc"))
        {
            std::fs::remove_file(file).unwrap();
        }
    };
    server.kill();
    lose_local_containers(&server);
    server.restart();
    let more = mib_files(&work.path().join("more"), 5000);
    assert_success(&client.run(&["incremental", &path_str(&more)]), "backup");
    let uploaded = wait_until(Duration::from_secs(120), || {
        s3.container_objects().len() > objects.len()
    });
    assert!(
        uploaded,
        "new containers reach the bucket\n{}",
        server.log()
    );
    assert!(!server.log().contains("TDM0446E"), "{}", server.log());
    let unchanged = |objects: &[(PathBuf, Vec<u8>)]| {
        for (path, bytes) in objects {
            assert_eq!(
                &std::fs::read(path).unwrap(),
                bytes,
                "{} was overwritten",
                path.display()
            );
        }
    };
    unchanged(&objects);
    client.restore_same(&more, &work.path().join("more-out"));

    // Now the catalog knows none of them either (as one restored from a
    // copy older than everything in the bucket): numbering starts at 1
    // again, and the owner check refuses every upload over an object.
    server.kill();
    lose_local_containers(&server);
    let catalog = rusqlite::Connection::open(server.data_dir().join("catalog.db")).unwrap();
    catalog.execute("DELETE FROM chunks", []).unwrap();
    drop(catalog);
    let objects = bucket_snapshot(&s3);
    server.restart();
    let last = mib_files(&work.path().join("last"), 7000);
    assert_success(&client.run(&["incremental", &path_str(&last)]), "backup");
    server.wait_for_log("TDM0446E");
    assert!(
        server.log().contains("would overwrite an object of"),
        "{}",
        server.log()
    );
    unchanged(&objects);
    // What was backed up since stays on the local disk and restores.
    client.restore_same(&last, &work.path().join("last-out"));
}

/// Every container object in the bucket, with its bytes.
fn bucket_snapshot(s3: &S3Server) -> Vec<(PathBuf, Vec<u8>)> {
    s3.container_objects()
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Three files of 1 MiB of random bytes (seeds from `seed`) in a new `dir`.
fn mib_files(dir: &Path, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..3u64 {
        std::fs::write(
            dir.join(format!("new-{i}.bin")),
            random_bytes(seed + i, 1 << 20),
        )
        .unwrap();
    }
    dir.to_path_buf()
}

/// A TCP listener on 127.0.0.1 that takes connections and never answers,
/// as a hung object store does; it holds what it accepts for 300 s at most
/// (counted from here: build the binaries first).
fn hung_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(300);
        while std::time::Instant::now() < until && held.len() < 256 {
            match listener.accept() {
                Ok((conn, _)) => held.push(conn),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    endpoint
}

#[test]
fn a_bucket_that_takes_connections_and_never_answers_does_not_hold_up_the_start() {
    // The first use of a binary builds it; the listener's time starts after.
    tandem_tests::bin("tandem-server");
    let endpoint = hung_endpoint();
    let env = [
        ("TANDEM_SERVER_POOL__KIND", "s3"),
        ("TANDEM_SERVER_POOL__ENDPOINT", endpoint.as_str()),
        ("TANDEM_SERVER_POOL__BUCKET", "tandem"),
        ("TANDEM_SERVER_POOL__CONTAINER_MIB", "1"),
        ("AWS_ACCESS_KEY_ID", "hung-key"),
        ("AWS_SECRET_ACCESS_KEY", "hung-secret"),
    ];
    // The start waits a bounded time for the claim, says why it goes on,
    // and serves backups; sealed containers stay on its disk meanwhile.
    let (mut server, client) = server_for(&env, "HUNG", "gina");
    server.wait_for_log("did not answer the claim of its prefix");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    source_tree(&src);
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    // Sealed containers stay on the local disk: none is marked uploaded.
    assert!(local(&server, "tdc").len() >= 2, "{}", server.log());
    assert!(local(&server, "remote").is_empty(), "{}", server.log());
    client.restore_same(&src, &work.path().join("back"));
    // The claim still waiting on the bucket does not hold up a clean stop.
    assert!(server.stop().success(), "{}", server.log());
}
