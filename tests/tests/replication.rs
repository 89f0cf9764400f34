//! Node replication between two real servers, and the failover details pushed
//! into the client's options file.

use std::time::Duration;

use tandem_tests::*;

struct Pair {
    primary: TestServer,
    secondary: TestServer,
    client: TestClient,
    work: tempfile::TempDir,
}

/// Primary and secondary paired, node ALICE registered and enabled, a tree backed up.
fn setup() -> Pair {
    let (primary, secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    make_tree(&work.path().join("src"));
    client.json(&["incremental", &path_str(&work.path().join("src"))]);
    Pair {
        primary,
        secondary,
        client,
        work,
    }
}

fn guid_of(server: &TestServer) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&server.admin(&["--json", "query", "status"]).stdout).unwrap();
    v["server_guid"].as_str().unwrap().to_string()
}

#[test]
fn a_replicated_tree_restores_byte_identical_from_the_secondary() {
    let p = setup();
    let run = replicate(&p.primary, "alice");
    assert_eq!(run["state"], "completed", "{run}");
    assert!(run["objects_sent"].as_u64().unwrap() > 40, "{run}");
    assert!(run["bytes_sent"].as_u64().unwrap() > 3 << 20, "{run}");

    let on_secondary = TestClient::new(&p.secondary, "alice", "alice-password");
    let out = p.work.path().join("from-secondary");
    let src = p.work.path().join("src");
    let r = on_secondary.json(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&out),
        "--subdir",
    ]);
    assert_eq!(r["failed"], 0, "{r}");
    assert_same_tree(&src, &out);

    // The replica is read-only for the node.
    let refused = on_secondary.run(&["incremental", &path_str(&src)]);
    assert_eq!(code(&refused), 12);
    assert!(stderr(&refused).contains("replica"), "{}", stderr(&refused));
    let node: serde_json::Value = serde_json::from_slice(
        &p.secondary
            .admin(&["--json", "query", "node", "alice"])
            .stdout,
    )
    .unwrap();
    assert_eq!(node[0]["replmode"], "receive");

    // Both ends recorded it.
    let runs: serde_json::Value = serde_json::from_slice(
        &p.primary
            .admin(&["--json", "query", "replication", "alice"])
            .stdout,
    )
    .unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1);
    let log = String::from_utf8_lossy(
        &p.primary
            .admin(&["query", "actlog", "--search", "replication"])
            .stdout,
    )
    .into_owned();
    assert!(log.contains("TDM0600I"), "{log}");
    let cmp: serde_json::Value = serde_json::from_slice(
        &p.primary
            .admin(&["--json", "query", "replnode", "alice"])
            .stdout,
    )
    .unwrap();
    for fs in cmp["filespaces"].as_array().unwrap() {
        assert_eq!(fs["source_objects"], fs["target_objects"], "{cmp}");
        assert_eq!(fs["source_bytes"], fs["target_bytes"], "{cmp}");
    }

    // remove replnode lets the node write on the former target.
    assert_success(
        &p.secondary.admin(&["remove", "replnode", "alice"]),
        "remove replnode",
    );
    assert_success(
        &on_secondary.run(&["incremental", &path_str(&src)]),
        "backup after remove replnode",
    );
}

#[test]
fn reruns_send_nothing_and_changes_and_deletions_propagate() {
    let p = setup();
    replicate(&p.primary, "alice");
    let again = replicate(&p.primary, "alice");
    assert_eq!(again["objects_sent"], 0, "{again}");
    assert_eq!(again["bytes_sent"], 0, "{again}");

    let src = p.work.path().join("src");
    std::fs::write(
        src.join("docs/sub 0/file-0.txt"),
        "changed on the primary\n",
    )
    .unwrap();
    std::fs::remove_file(src.join("dup/b.bin")).unwrap();
    p.client.json(&["incremental", &path_str(&src)]);
    let run = replicate(&p.primary, "alice");
    assert_eq!(run["state"], "completed", "{run}");
    assert!(
        run["states_updated"].as_u64().unwrap() >= 2,
        "old versions turned inactive: {run}"
    );

    let on_secondary = TestClient::new(&p.secondary, "alice", "alice-password");
    let out = p.work.path().join("after-change");
    on_secondary.json(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&out),
        "--subdir",
    ]);
    assert_same_tree(&src, &out);

    // Expired on the primary -> deleted on the secondary.
    assert_success(
        &p.primary.admin(&[
            "update",
            "node",
            "alice",
            "--verdeleted",
            "0",
            "--retextra",
            "0",
        ]),
        "policy",
    );
    assert_success(&p.primary.admin(&["expire", "inventory"]), "expire");
    let run = replicate(&p.primary, "alice");
    assert!(run["objects_deleted"].as_u64().unwrap() >= 2, "{run}");
    let gone = on_secondary.run(&[
        "--json",
        "query",
        "backup",
        &path_str(&src.join("dup/b.bin")),
        "--inactive",
    ]);
    assert_eq!(
        code(&gone),
        4,
        "the deleted file's versions are gone from the replica: {}",
        String::from_utf8_lossy(&gone.stdout)
    );
}

#[test]
fn a_second_node_with_the_same_data_is_sent_but_stored_once() {
    let p = setup();
    replicate(&p.primary, "alice");
    let stored = p.secondary.container_bytes();
    p.primary.register("bob", "bob-password");
    assert_success(
        &p.primary
            .admin(&["update", "node", "bob", "--replstate", "enabled"]),
        "enable",
    );
    let bob = TestClient::new(&p.primary, "bob", "bob-password");
    bob.json(&["incremental", &path_str(&p.work.path().join("src"))]);
    let run = replicate(&p.primary, "bob");
    assert_eq!(run["state"], "completed", "{run}");
    assert!(run["objects_sent"].as_u64().unwrap() > 40);
    // Alice's chunks on the target are not Bob's (a chunk id proves no
    // possession): the primary sends them for Bob's replica, and the
    // target, which has them, writes nothing.
    assert!(run["bytes_sent"].as_u64().unwrap() > 3 << 20, "{run}");
    assert_eq!(p.secondary.container_bytes(), stored);
}

#[test]
fn the_active_data_rule_leaves_inactive_versions_behind() {
    let p = setup();
    assert_success(
        &p.primary
            .admin(&["update", "node", "alice", "--replrule", "active_data"]),
        "rule",
    );
    let src = p.work.path().join("src");
    std::fs::write(src.join("empty"), "now with content\n").unwrap();
    p.client.json(&["incremental", &path_str(&src)]);
    replicate(&p.primary, "alice");
    let on_secondary = TestClient::new(&p.secondary, "alice", "alice-password");
    let versions = on_secondary.json(&[
        "query",
        "backup",
        &path_str(&src.join("empty")),
        "--inactive",
    ]);
    assert_eq!(versions.as_array().unwrap().len(), 1, "{versions}");
    assert_eq!(versions[0]["state"], "active");
}

#[test]
fn a_wrong_server_password_is_refused_and_logged() {
    let primary = TestServer::start("PRIMARY");
    let secondary = TestServer::start("SECONDARY");
    pair(&primary, &secondary, "shared-secret-1");
    let wrong = secondary.data.path().join("wrong.pw");
    std::fs::write(&wrong, "another-secret\n").unwrap();
    assert_success(
        &secondary.define_server("PRIMARY", &primary.url(), &primary.fingerprint(), &wrong),
        "redefine",
    );
    primary.register("carl", "carl-password");
    assert_success(
        &primary.admin(&["update", "node", "carl", "--replstate", "enabled"]),
        "enable",
    );
    let client = TestClient::new(&primary, "carl", "carl-password");
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("f"), "x").unwrap();
    client.json(&["incremental", &path_str(work.path())]);
    let out = primary.admin(&["replicate", "node", "carl", "--wait"]);
    assert_eq!(code(&out), 12);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(text.contains("password"), "{text}");
    let log = String::from_utf8_lossy(&secondary.admin(&["query", "actlog"]).stdout).into_owned();
    assert!(log.contains("TDM0602W"), "{log}");
}

#[test]
fn replication_refuses_clearly_when_not_configured() {
    let primary = TestServer::start("PRIMARY");
    primary.register("dora", "dora-password");
    let out = primary.admin(&["replicate", "node", "dora", "--wait"]);
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("set replserver"), "{}", stderr(&out));
    let secondary = TestServer::start("SECONDARY");
    pair(&primary, &secondary, "shared-secret-1");
    let out = primary.admin(&["replicate", "node", "dora", "--wait"]);
    assert!(
        stderr(&out).contains("--replstate enabled"),
        "{}",
        stderr(&out)
    );
    let out = primary.admin(&["set", "replserver", "NOBODY"]);
    assert!(stderr(&out).contains("not defined"), "{}", stderr(&out));
}

/// How a run is interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    KillTarget,
    KillSource,
    Network,
}

/// Starts `replicate node --wait` in the background, interrupts it once the
/// target holds 40 MiB more, then checks that the next run resumes.
fn interrupt(p: &mut Pair, how: Cut) {
    let proxy = (how == Cut::Network).then(|| {
        let proxy = CutProxy::start(p.secondary.addr);
        let url = format!("https://{}", proxy.addr);
        let pw = p.primary.data.path().join("SECONDARY.serverpw");
        assert_success(
            &p.primary
                .define_server("SECONDARY", &url, &p.secondary.fingerprint(), &pw),
            "route through the proxy",
        );
        proxy
    });
    let src = p.work.path().join("large");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..16u64 {
        std::fs::write(
            src.join(format!("part-{i:02}.bin")),
            random_bytes(500 + i, 8 << 20),
        )
        .unwrap();
    }
    p.client.json(&["incremental", &path_str(&src)]);
    let before = p.secondary.container_bytes();
    let admin = std::process::Command::new(bin("tandem-admin"))
        .args(["--server", &p.primary.url(), "--token-file"])
        .arg(p.primary.data.path().join("admin.token"))
        .args(["--json", "replicate", "node", "alice", "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let reached = wait_until(Duration::from_secs(120), || {
        p.secondary.container_bytes() > before + (40 << 20)
    });
    assert!(reached, "replication never got going");
    if how == Cut::KillTarget {
        // One run per node at a time: a second request is refused, clearly.
        let second = p.primary.admin(&["replicate", "node", "alice"]);
        assert_eq!(code(&second), 12);
        assert!(
            stderr(&second).contains("already running"),
            "{}",
            stderr(&second)
        );
    }
    match how {
        Cut::KillSource => p.primary.kill(),
        Cut::KillTarget => p.secondary.kill(),
        Cut::Network => proxy.as_ref().unwrap().cut(),
    }
    let out = admin.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0), "the run cannot have completed");
    match how {
        Cut::KillSource => p.primary.restart(),
        Cut::KillTarget => p.secondary.restart(),
        Cut::Network => proxy.as_ref().unwrap().heal(),
    }
    let runs: serde_json::Value =
        serde_json::from_slice(&p.primary.admin(&["--json", "query", "replication"]).stdout)
            .unwrap();
    let last = runs.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["state"], "failed", "{runs}");
    let resumed = replicate(&p.primary, "alice");
    assert_eq!(resumed["state"], "completed", "{resumed}");
    assert!(
        resumed["chunks_skipped"].as_u64().unwrap() > 0,
        "what the target committed is not sent again: {resumed}"
    );
    assert!(resumed["bytes_sent"].as_u64().unwrap() < 128 << 20);
    let on_secondary = TestClient::new(&p.secondary, "alice", "alice-password");
    let out = p.work.path().join(format!("resumed-{how:?}"));
    on_secondary.json(&["restore", &format!("{}/*", path_str(&src)), &path_str(&out)]);
    assert_same_tree(&src, &out);
}

#[test]
fn a_run_interrupted_by_killing_the_target_resumes() {
    let mut p = setup();
    interrupt(&mut p, Cut::KillTarget);
}

#[test]
fn a_run_interrupted_by_killing_the_source_resumes() {
    let mut p = setup();
    interrupt(&mut p, Cut::KillSource);
}

#[test]
fn a_run_interrupted_by_a_cut_connection_resumes() {
    let mut p = setup();
    interrupt(&mut p, Cut::Network);
}

#[test]
fn the_failover_block_is_pushed_into_the_options_file() {
    let p = setup();
    // Before any replication the logon carries no block.
    p.client.json(&["query", "session"]);
    assert!(
        !std::fs::read_to_string(&p.client.options)
            .unwrap()
            .contains("my_replication_server")
    );
    assert_success(
        &p.secondary
            .admin(&["set", "failoveraddress", "https://127.0.0.2:7777"]),
        "failover address",
    );
    replicate(&p.primary, "alice");

    let session = p.client.json(&["query", "session"]);
    assert_eq!(
        session["replication_server"]["name"], "SECONDARY",
        "{session}"
    );
    let text = std::fs::read_to_string(&p.client.options).unwrap();
    assert!(
        text.starts_with("# test client\n"),
        "the user's comment stays: {text}"
    );
    assert!(text.contains("Maintained by Tandem"), "{text}");
    assert!(
        text.contains("my_replication_server = \"SECONDARY\""),
        "{text}"
    );
    assert!(text.contains("[replication_servers.SECONDARY]"), "{text}");
    assert!(
        text.contains("address = \"https://127.0.0.2:7777\""),
        "the failover address is pushed: {text}"
    );
    assert!(
        text.contains(&format!("server_guid = \"{}\"", guid_of(&p.secondary))),
        "{text}"
    );

    // Unchanged block: the file is not rewritten.
    let before = std::fs::metadata(&p.client.options)
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    p.client.json(&["query", "filespace"]);
    assert_eq!(
        std::fs::metadata(&p.client.options)
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
    assert_eq!(std::fs::read_to_string(&p.client.options).unwrap(), text);

    // A read-only options file: the command still works, the error is logged.
    assert_success(
        &p.secondary.admin(&["set", "failoveraddress", ""]),
        "clear failover address",
    );
    replicate(&p.primary, "alice");
    std::fs::set_permissions(
        &p.client.options,
        std::os::unix::fs::PermissionsExt::from_mode(0o444),
    )
    .unwrap();
    let out = p.client.run(&["query", "filespace"]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(stderr(&out).contains("TDM1040W"), "{}", stderr(&out));
    assert!(p.client.error_log().contains("TDM1040W"));
    assert_eq!(std::fs::read_to_string(&p.client.options).unwrap(), text);

    // query options names what the server pushed.
    let opts = p.client.json(&["query", "options"]);
    let pushed: Vec<_> = opts["options"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["source"] == "pushed by server")
        .collect();
    assert!(pushed.len() >= 2, "{opts}");
}

/// The `password` column of a server's catalog for partner `partner`.
fn stored_partner_password(server: &TestServer, partner: &str) -> String {
    let db = rusqlite::Connection::open(server.data.path().join("catalog.db")).unwrap();
    db.query_row(
        "SELECT password FROM servers WHERE name = ?1",
        [partner],
        |r| r.get(0),
    )
    .unwrap()
}

/// Neither the catalog nor its WAL holds the pair's password in clear, not
/// even in freed space.
fn assert_no_clear_password(server: &TestServer) {
    for file in ["catalog.db", "catalog.db-wal"] {
        let bytes = std::fs::read(server.data.path().join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(15).any(|w| w == b"shared-secret-1"),
            "{file} of {} holds the partner password in clear",
            server.name
        );
    }
}

#[test]
fn partner_passwords_are_sealed_and_a_replaced_key_is_named() {
    let mut p = setup();
    for (server, partner) in [(&p.primary, "SECONDARY"), (&p.secondary, "PRIMARY")] {
        let stored = stored_partner_password(server, partner);
        assert!(stored.starts_with("sealed1:"), "{stored}");
        assert_no_clear_password(server);
        let key = server.data.path().join("secrets.key");
        let mode = std::fs::metadata(&key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
    assert_eq!(replicate(&p.primary, "alice")["state"], "completed");

    // A catalog written by a server from before sealing holds the password in
    // clear: the next start seals it, and replication goes on.
    p.primary.stop();
    rusqlite::Connection::open(p.primary.data.path().join("catalog.db"))
        .unwrap()
        .execute("UPDATE servers SET password = 'shared-secret-1'", [])
        .unwrap();
    p.primary.restart();
    assert!(stored_partner_password(&p.primary, "SECONDARY").starts_with("sealed1:"));
    assert_no_clear_password(&p.primary);
    std::fs::write(p.work.path().join("src/new-after-sealing"), "new").unwrap();
    p.client
        .json(&["incremental", &path_str(&p.work.path().join("src"))]);
    let run = replicate(&p.primary, "alice");
    assert_eq!(run["state"], "completed", "{run}");
    assert!(run["objects_sent"].as_u64().unwrap() >= 1, "{run}");

    // Another key cannot open it: the refusal names the key file and the fix.
    p.primary.stop();
    std::fs::write(
        p.primary.data.path().join("secrets.key"),
        format!("{}\n", "ab".repeat(32)),
    )
    .unwrap();
    p.primary.restart();
    let out = p.primary.admin(&["replicate", "node", "alice", "--wait"]);
    assert_ne!(code(&out), 0);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(text.contains("secrets.key"), "{text}");
    assert!(text.contains("define it again"), "{text}");
    pair(&p.primary, &p.secondary, "shared-secret-1");
    assert_eq!(replicate(&p.primary, "alice")["state"], "completed");
}

#[test]
fn replicate_without_wait_reports_the_started_run_at_once() {
    let p = setup();
    let out = p.primary.admin(&["--json", "replicate", "node", "alice"]);
    assert_success(&out, "replicate node");
    let started: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(started[0]["state"], "running", "{started}");
    let id = started[0]["id"].clone();
    // The work goes on in the background; once it has ended, the record
    // shows how.
    let mut last = serde_json::Value::Null;
    let ended = wait_until(Duration::from_secs(60), || {
        last = run_state(&p.primary, &id);
        last["state"] == "completed"
    });
    assert!(ended, "{last}");
    assert!(last["objects_sent"].as_u64().unwrap() > 0, "{last}");
}

/// The state of run `id` of node alice on `server`, as `query replication` shows it.
fn run_state(server: &TestServer, id: &serde_json::Value) -> serde_json::Value {
    let runs: serde_json::Value = serde_json::from_slice(
        &server
            .admin(&["--json", "query", "replication", "alice"])
            .stdout,
    )
    .unwrap_or_default();
    runs.as_array()
        .and_then(|r| r.iter().find(|run| &run["id"] == id).cloned())
        .unwrap_or_default()
}

#[test]
fn a_run_whose_waiting_caller_leaves_still_ends_and_is_recorded() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let p = setup();
    // A stopped target holds the run in its handshake, so the caller is
    // certainly still waiting when it leaves.
    let target = Pid::from_raw(p.secondary.pid().unwrap() as i32);
    kill(target, Signal::SIGSTOP).unwrap();
    let mut waiting = p
        .primary
        .admin_command(&["--json", "replicate", "node", "alice", "--wait"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut id = serde_json::Value::Null;
    let started = wait_until(Duration::from_secs(30), || {
        let runs: serde_json::Value = serde_json::from_slice(
            &p.primary
                .admin(&["--json", "query", "replication", "alice"])
                .stdout,
        )
        .unwrap_or_default();
        id = runs
            .as_array()
            .and_then(|r| r.iter().find(|run| run["state"] == "running"))
            .map(|run| run["id"].clone())
            .unwrap_or_default();
        !id.is_null()
    });
    // The operator's Ctrl-C: the console goes away mid-wait.
    waiting.kill().unwrap();
    waiting.wait().unwrap();
    kill(target, Signal::SIGCONT).unwrap();
    assert!(started, "no run started: {}", p.primary.log());
    let mut last = serde_json::Value::Null;
    let ended = wait_until(Duration::from_secs(60), || {
        last = run_state(&p.primary, &id);
        last["state"] != "running"
    });
    assert!(ended, "the run was left running: {last}");
    // Normally it completes once the target resumes; on a machine slow
    // enough for the stop to outlast the partner's 5 s connect budget it
    // fails instead, and says why. Either way it ended and was recorded.
    match last["state"].as_str() {
        Some("completed") => assert!(last["objects_sent"].as_u64().unwrap() > 0, "{last}"),
        Some("failed") => assert!(!last["message"].as_str().unwrap().is_empty(), "{last}"),
        _ => panic!("{last}"),
    }
}
