//! Planned role switch (issue 23 item 1): `switch replication` on a node's
//! primary makes its replication server the primary. Clients follow by
//! themselves: through the old primary's redirect, or, when the old primary
//! is down, through failover to the new one, which tells them it is their
//! primary now. A switch waits for running sessions and refuses new ones;
//! killed at any step (either server, SIGKILL), running the command again
//! finishes it, and --cancel undoes one the new primary has not taken.

use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tandem_tests::*;

/// Two paired servers, nodes ALICE and BOB on the primary with replication
/// enabled, each backed up (a tree of its own) and replicated, and each
/// client has logged on since, so it holds the pushed replication server.
struct World {
    primary: TestServer,
    secondary: TestServer,
    alice: TestClient,
    bob: TestClient,
    work: tempfile::TempDir,
}

impl World {
    fn src(&self, node: &str) -> std::path::PathBuf {
        self.work.path().join(node)
    }
}

fn world(primary_env: &[(&str, &str)], secondary_env: &[(&str, &str)]) -> World {
    let primary = TestServer::start_with("PRIMARY", primary_env);
    let secondary = TestServer::start_with("SECONDARY", secondary_env);
    pair(&primary, &secondary, "shared-secret-1");
    let work = tempfile::tempdir().unwrap();
    let mut clients = Vec::new();
    for node in ["alice", "bob"] {
        primary.register(node, &format!("{node}-password"));
        assert_success(
            &primary.admin(&["update", "node", node, "--replstate", "enabled"]),
            "enable replication",
        );
        let client = TestClient::new(&primary, node, &format!("{node}-password"));
        let src = work.path().join(node);
        make_tree(&src);
        client.json(&["incremental", &path_str(&src)]);
        let run = replicate(&primary, node);
        assert_eq!(run["state"], "completed", "{run}");
        // This logon saves the pushed replication server.
        client.json(&["query", "filespace"]);
        clients.push(client);
    }
    let bob = clients.pop().unwrap();
    let alice = clients.pop().unwrap();
    assert!(
        std::fs::read_to_string(&alice.options)
            .unwrap()
            .contains("my_replication_server = \"SECONDARY\""),
        "the pushed block is there before the switch"
    );
    World {
        primary,
        secondary,
        alice,
        bob,
        work,
    }
}

/// The node's replication mode on `server`.
fn mode(server: &TestServer, node: &str) -> String {
    let rows = server.admin_json(&["query", "node", node]);
    rows[0]["replmode"].as_str().unwrap_or_default().to_string()
}

/// Runs `switch replication ARGS --json` and returns its rows (the command
/// may fail; its rows say how).
fn switch(server: &TestServer, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json", "switch", "replication"];
    all.extend_from_slice(args);
    let out = server.admin(&all);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "switch replication {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        )
    })
}

/// Starts `switch replication ARGS` without waiting for it.
fn switch_in_background(server: &TestServer, args: &[&str]) -> Child {
    let mut all = vec!["--json", "switch", "replication"];
    all.extend_from_slice(args);
    server
        .admin_command(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Asserts that ALICE has switched: the secondary holds it as its own, the
/// primary as the secondary's replica, and a backup through the old
/// primary's redirect lands on the secondary.
fn assert_switched(w: &World) {
    assert_eq!(mode(&w.secondary, "alice"), "send");
    assert_eq!(mode(&w.primary, "alice"), "receive");
    let src = w.src("alice");
    std::fs::write(src.join("after-switch.txt"), "written after the switch\n").unwrap();
    let backup = w.alice.json(&["incremental", &path_str(&src)]);
    assert!(backup["backed_up"].as_u64().unwrap_or(0) >= 1, "{backup}");
    let options = std::fs::read_to_string(&w.alice.options).unwrap();
    assert!(
        options.contains(&format!("server_address = \"{}\"", w.secondary.url())),
        "{options}"
    );
}

#[test]
fn a_switch_moves_the_primary_and_clients_follow_by_themselves() {
    let mut w = world(&[], &[]);
    // A comment of the user's, between keys, survives the rewrite.
    w.alice
        .add_options("# the backup server of building B, ask Ops before changing\n");
    let rows = switch(&w.primary, &["--all"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in rows {
        assert_eq!(row["state"], "switched", "{row}");
        assert_eq!(row["to"], "SECONDARY", "{row}");
    }
    for node in ["alice", "bob"] {
        assert_eq!(
            mode(&w.primary, node),
            "receive",
            "{node} on the old primary"
        );
        assert_eq!(
            mode(&w.secondary, node),
            "send",
            "{node} on the new primary"
        );
    }
    // Running it again changes nothing.
    let again = switch(&w.primary, &["alice"]);
    assert_eq!(again[0]["state"], "already switched", "{again}");

    // Alice logs on to her old primary, is sent on, and backs up on the new
    // one; her options file is rewritten, her comments kept.
    let src = w.src("alice");
    std::fs::write(src.join("after-switch.txt"), "written after the switch\n").unwrap();
    let backup = w.alice.json(&["incremental", &path_str(&src)]);
    assert!(backup["backed_up"].as_u64().unwrap_or(0) >= 1, "{backup}");
    let options = std::fs::read_to_string(&w.alice.options).unwrap();
    assert!(options.starts_with("# test client\n"), "{options}");
    assert!(
        options.contains("\n# the backup server of building B, ask Ops before changing\n"),
        "{options}"
    );
    assert!(options.contains("server_name = \"SECONDARY\""), "{options}");
    assert!(
        options.contains(&format!("server_address = \"{}\"", w.secondary.url())),
        "{options}"
    );
    assert!(
        options.contains(&format!(
            "server_fingerprint = \"{}\"",
            w.secondary.fingerprint()
        )),
        "{options}"
    );
    // The new primary pushed its own replication server: the old primary.
    assert!(
        options.contains("my_replication_server = \"PRIMARY\""),
        "{options}"
    );
    assert!(
        !options.contains("[replication_servers.SECONDARY]"),
        "{options}"
    );
    let log = w.alice.error_log();
    assert!(log.contains("TDM2115I"), "{log}");
    assert!(log.contains("old primary server PRIMARY sent"), "{log}");
    let actlog = w.primary.actlog();
    assert!(actlog.contains("TDM0611I"), "{actlog}");
    assert!(actlog.contains("TDM0609I"), "{actlog}");
    assert!(w.secondary.actlog().contains("TDM0609I"));
    // The next command goes straight to the new primary: no second move.
    w.alice.json(&["query", "filespace"]);
    assert_eq!(w.alice.error_log().matches("TDM2115I").count(), 1);

    // Bob was offline during the switch, and the old primary is down when
    // he comes back: he fails over to the new primary, which tells him it
    // is his primary now, and his backup (a write) succeeds there.
    w.primary.kill();
    let bob_src = w.src("bob");
    std::fs::write(bob_src.join("bob-after.txt"), "bob after the switch\n").unwrap();
    let backup = w.bob.json(&["incremental", &path_str(&bob_src)]);
    assert!(backup["backed_up"].as_u64().unwrap_or(0) >= 1, "{backup}");
    let log = w.bob.error_log();
    assert!(log.contains("TDM2115I"), "{log}");
    assert!(log.contains("said so at a failover logon"), "{log}");
    let options = std::fs::read_to_string(&w.bob.options).unwrap();
    assert!(options.contains("server_name = \"SECONDARY\""), "{options}");

    // Replication now runs the other way: the new primary sends both
    // nodes' new backups to the old one, which restores them in failover.
    w.primary.restart();
    for node in ["alice", "bob"] {
        let run = replicate(&w.secondary, node);
        assert_eq!(run["state"], "completed", "{run}");
        assert!(run["objects_sent"].as_u64().unwrap_or(0) >= 1, "{run}");
    }
    // Alice's next logon saves the pushed block with a replication time.
    w.alice.json(&["query", "filespace"]);
    w.secondary.kill();
    let dest = w.work.path().join("restored");
    let restored = w.alice.run(&[
        "restore",
        &format!("{}/", path_str(&src)),
        &path_str(&dest),
        "--subdir",
    ]);
    assert_success(&restored, "restore in failover from the old primary");
    assert_same_tree(&src, &dest);
    assert!(w.alice.error_log().contains("TDM2108I"));
}

#[test]
fn a_switch_waits_for_running_sessions_and_refuses_new_ones() {
    let w = world(&[], &[]);
    // A backup of a large file, stopped midway with SIGSTOP, is a session
    // that does not end by itself.
    let src = w.src("alice");
    std::fs::write(
        src.join("large-new.bin"),
        random_bytes(99, 48 * 1024 * 1024),
    )
    .unwrap();
    let backup = w
        .alice
        .command(&["--json", "incremental", &path_str(&src)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut session = 0u64;
    let seen = wait_until(Duration::from_secs(60), || {
        let rows = w.primary.admin_json(&["query", "session"]);
        session = rows
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["node"] == "ALICE")
            .and_then(|r| r["id"].as_u64())
            .unwrap_or(0);
        session != 0
    });
    assert!(seen, "alice's session never showed");
    let client = Pid::from_raw(backup.id() as i32);
    kill(client, Signal::SIGSTOP).unwrap();

    // A short wait gives up and undoes the switch: nothing changed.
    let rows = switch(&w.primary, &["alice", "--wait", "2"]);
    assert_eq!(rows[0]["state"], "failed", "{rows}");
    let message = rows[0]["message"].as_str().unwrap();
    assert!(message.contains(&format!("session {session}")), "{message}");
    assert!(message.contains("switch was undone"), "{message}");
    assert_eq!(mode(&w.primary, "alice"), "send");
    assert_eq!(mode(&w.secondary, "alice"), "receive");

    // A longer one waits; meanwhile a new session of the node is refused
    // with "retry later", and another node is not affected.
    let switching = switch_in_background(&w.primary, &["alice", "--wait", "120"]);
    let waiting = wait_until(Duration::from_secs(60), || {
        w.primary.actlog().contains("waiting up to 120 s")
    });
    assert!(waiting, "{}", w.primary.actlog());
    let other_alice = TestClient::new(&w.primary, "alice", "alice-password");
    let refused = other_alice.run(&["query", "filespace"]);
    assert_ne!(code(&refused), 0);
    assert!(
        stderr(&refused).contains("retry in a few minutes"),
        "{}",
        stderr(&refused)
    );
    w.bob.json(&["query", "filespace"]);

    // The stopped backup goes on, ends well, and the switch follows it.
    kill(client, Signal::SIGCONT).unwrap();
    let out = backup.wait_with_output().unwrap();
    assert_success(&out, "the backup the switch waited for");
    let out = switching.wait_with_output().unwrap();
    assert_success(&out, "switch replication alice --wait 120");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["state"], "switched", "{rows}");
    assert!(
        rows[0]["waited_for"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(session)),
        "{rows}"
    );
    // The final replication took the waited-for backup along: it restores
    // from the new primary, byte for byte.
    let dest = w.work.path().join("restored");
    let restored = w.alice.run(&[
        "restore",
        &path_str(&src.join("large-new.bin")),
        &format!("{}/", path_str(&dest)),
    ]);
    assert_success(&restored, "restore from the new primary");
    assert_eq!(
        std::fs::read(dest.join("large-new.bin")).unwrap(),
        std::fs::read(src.join("large-new.bin")).unwrap()
    );
    assert!(w.alice.error_log().contains("TDM2115I"));
}

/// Kills `server`'s process once it has paused at `point` (it was started
/// with TANDEM_FAULT_PAUSE=point), then waits for the switch command.
fn kill_at(server: &mut TestServer, point: &str, command: Child) -> serde_json::Value {
    server.wait_for_log(&format!("paused at fault point {point}"));
    server.kill();
    let out = command.wait_with_output().unwrap();
    assert_ne!(
        code(&out),
        0,
        "the switch cannot succeed with a server killed"
    );
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// While a switch is unfinished, the old primary takes no session of the
/// node (and, being in the middle of a switch, no write), so whatever the
/// new one holds, the node never has two primaries.
fn assert_paused(w: &World) {
    let refused = w.alice.run(&["query", "filespace"]);
    assert_ne!(code(&refused), 0);
    assert!(
        stderr(&refused).contains("retry in a few minutes"),
        "{}",
        stderr(&refused)
    );
    assert!(w.alice.error_log().matches("TDM2115I").count() == 0);
}

#[test]
fn the_old_primary_killed_before_the_hand_over_is_finished_by_a_re_run() {
    for point in ["switch-draining", "switch-frozen", "switch-handing-over"] {
        let pause = [("TANDEM_FAULT_PAUSE", point)];
        let mut w = world(&pause, &[]);
        let command = switch_in_background(&w.primary, &["alice"]);
        kill_at(&mut w.primary, point, command);
        w.primary.restart_with(&[]);
        assert_paused(&w);
        assert_eq!(mode(&w.secondary, "alice"), "receive", "{point}");
        let rows = switch(&w.primary, &["alice"]);
        assert_eq!(rows[0]["state"], "switched", "{point}: {rows}");
        assert_switched(&w);
    }
}

#[test]
fn the_old_primary_killed_after_the_hand_over_is_finished_by_a_re_run() {
    let pause = [("TANDEM_FAULT_PAUSE", "switch-taken")];
    let mut w = world(&pause, &[]);
    let command = switch_in_background(&w.primary, &["alice"]);
    kill_at(&mut w.primary, "switch-taken", command);
    w.primary.restart_with(&[]);
    // The new primary has the node; the old one, still mid-switch, takes
    // no session of it.
    assert_eq!(mode(&w.secondary, "alice"), "send");
    assert_paused(&w);
    let rows = switch(&w.primary, &["alice"]);
    assert_eq!(rows[0]["state"], "switched", "{rows}");
    assert_switched(&w);
}

#[test]
fn the_new_primary_killed_in_the_take_over_is_finished_or_undone() {
    // Killed before its transaction, the new primary never took the node:
    // a re-run hands it over again, a cancel undoes the switch. Killed
    // after it, the node is the new primary's: a re-run and a cancel both
    // finish the switch.
    let cases = [
        ("takeover-begin", &["alice"][..], "switched"),
        ("takeover-begin", &["alice", "--cancel"][..], "cancelled"),
        ("takeover-committed", &["alice"][..], "switched"),
        ("takeover-committed", &["alice", "--cancel"][..], "switched"),
    ];
    for (point, finish, expected) in cases {
        let pause = [("TANDEM_FAULT_PAUSE", point)];
        let mut w = world(&[], &pause);
        let command = switch_in_background(&w.primary, &["alice"]);
        let rows = kill_at(&mut w.secondary, point, command);
        assert_eq!(rows[0]["state"], "failed", "{point}: {rows}");
        assert!(
            rows[0]["message"]
                .as_str()
                .unwrap()
                .contains("did not confirm"),
            "{point}: {rows}"
        );
        assert_paused(&w);
        w.secondary.restart_with(&[]);
        let rows = switch(&w.primary, finish);
        assert_eq!(rows[0]["state"], expected, "{point} {finish:?}: {rows}");
        if expected == "switched" {
            assert_switched(&w);
        } else {
            assert_eq!(mode(&w.primary, "alice"), "send");
            assert_eq!(mode(&w.secondary, "alice"), "receive");
            w.alice.json(&["query", "filespace"]);
        }
    }
}

#[test]
fn cancel_undoes_a_switch_the_new_primary_never_took() {
    let pause = [("TANDEM_FAULT_PAUSE", "switch-handing-over")];
    let mut w = world(&pause, &[]);
    let command = switch_in_background(&w.primary, &["alice"]);
    kill_at(&mut w.primary, "switch-handing-over", command);
    w.primary.restart_with(&[]);
    assert_paused(&w);
    // With the secondary down nobody can say whether it took the node
    // over: a cancel is refused, unless the operator says it is gone.
    w.secondary.kill();
    let rows = switch(&w.primary, &["alice", "--cancel"]);
    assert_eq!(rows[0]["state"], "failed", "{rows}");
    assert!(
        rows[0]["message"].as_str().unwrap().contains("--force"),
        "{rows}"
    );
    assert_paused(&w);
    w.secondary.restart();
    let rows = switch(&w.primary, &["alice", "--cancel"]);
    assert_eq!(rows[0]["state"], "cancelled", "{rows}");
    // The old primary is the primary again, writable; the secondary still
    // holds the replica and replication goes on as before.
    assert_eq!(mode(&w.primary, "alice"), "send");
    assert_eq!(mode(&w.secondary, "alice"), "receive");
    let src = w.src("alice");
    std::fs::write(src.join("after-cancel.txt"), "after the cancel\n").unwrap();
    let backup = w.alice.json(&["incremental", &path_str(&src)]);
    assert!(backup["backed_up"].as_u64().unwrap_or(0) >= 1, "{backup}");
    let run = replicate(&w.primary, "alice");
    assert_eq!(run["state"], "completed", "{run}");
    // Nothing to cancel any more; a new switch works.
    let again = w
        .primary
        .admin(&["switch", "replication", "alice", "--cancel"]);
    assert_ne!(code(&again), 0);
    let rows = switch(&w.primary, &["alice"]);
    assert_eq!(rows[0]["state"], "switched", "{rows}");
    assert_switched(&w);
}

#[test]
fn switch_refusals_are_clear() {
    let w = world(&[], &[]);
    // On the replica's server: the node is switched on its primary.
    let rows = switch(&w.secondary, &["alice"]);
    assert_eq!(rows[0]["state"], "failed", "{rows}");
    let message = rows[0]["message"].as_str().unwrap();
    assert!(message.contains("replica of server PRIMARY"), "{message}");
    // An unknown node, and no nodes at all.
    let rows = switch(&w.primary, &["nobody"]);
    assert_eq!(rows[0]["state"], "failed", "{rows}");
    // A name given twice is one switch.
    let rows = switch(&w.primary, &["nobody", "NOBODY"]);
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    let none = w.primary.admin(&["switch", "replication"]);
    assert_ne!(code(&none), 0);
    // A node whose replication is disabled has no current replica.
    assert_success(
        &w.primary
            .admin(&["update", "node", "bob", "--replstate", "disabled"]),
        "disable",
    );
    let rows = switch(&w.primary, &["bob"]);
    assert_eq!(rows[0]["state"], "failed", "{rows}");
    assert!(
        rows[0]["message"].as_str().unwrap().contains("disabled"),
        "{rows}"
    );
    assert_eq!(mode(&w.primary, "bob"), "send");
    // --force goes only with --cancel; a cancel needs a switch.
    let forced = w
        .primary
        .admin(&["switch", "replication", "alice", "--force"]);
    assert_ne!(code(&forced), 0);
    let rows = switch(&w.primary, &["alice", "--cancel"]);
    assert_eq!(rows[0]["state"], "failed", "{rows}");
    assert!(
        rows[0]["message"].as_str().unwrap().contains("no switch"),
        "{rows}"
    );
}
