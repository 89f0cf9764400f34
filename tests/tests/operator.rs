//! What an operator meets on day one (issue 20), against real processes.

use std::process::{Command, Stdio};

use tandem_tests::*;

/// Runs `command` with its standard output a pipe whose reader has already
/// gone (`... | head -1` once head has its line).
fn with_closed_stdout(mut command: Command) -> (std::process::ExitStatus, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_output_pipe_ends_the_programs_quietly() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    let work = tempfile::tempdir().unwrap();
    make_tree(&work.path().join("src"));
    client.json(&["incremental", &path_str(&work.path().join("src"))]);
    let pattern = format!("{}/*", path_str(&work.path().join("src")));
    for (what, command) in [
        (
            "tandem-admin query actlog",
            server.admin_command(&["query", "actlog"]),
        ),
        (
            "tandem query backup",
            client.command(&["query", "backup", &pattern, "--subdir"]),
        ),
    ] {
        let (status, stderr) = with_closed_stdout(command);
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        // Its reader took what it wanted: not an error (as with ripgrep).
        assert!(status.success(), "{what}: {status:?} {stderr}");
        assert!(stderr.is_empty(), "{what}: {stderr}");
    }
}

#[test]
fn query_node_for_a_node_that_is_not_there_is_an_error() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let out = server.admin(&["query", "node", "nosuch"]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(stderr(&out).contains("no node matches"), "{}", stderr(&out));
    assert_success(
        &server.admin(&["query", "node", "alice"]),
        "query node alice",
    );
    assert_success(&server.admin(&["query", "node"]), "query node");
}

#[test]
fn the_server_log_file_holds_no_colour_codes() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let log = server.log();
    assert!(!log.is_empty(), "the server logged nothing");
    assert!(!log.contains('\u{1b}'), "escape codes in the log: {log:?}");
}

#[test]
fn query_options_shows_the_failover_switches() {
    let server = TestServer::start("PRIMARY");
    let client = TestClient::new(&server, "alice", "alice-password");
    let shown = client.json(&["query", "options", "--force-failover"]);
    let find = |key: &str| {
        shown["options"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["key"] == key).cloned())
            .unwrap_or_else(|| panic!("{key} missing: {shown}"))
    };
    assert_eq!(find("use_replication_failover")["value"], "true");
    assert_eq!(find("force_failover")["value"], "true");
    assert_eq!(find("force_failover")["source"], "flag --force-failover");
}

#[test]
fn a_forced_failover_without_a_secondary_says_so_and_blames_no_server() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    let out = client.run(&["--force-failover", "query", "session"]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("failover is forced"), "{text}");
    assert!(text.contains("no replication server is stored"), "{text}");
    assert!(!text.contains("cannot reach"), "{text}");
}

#[test]
fn restoring_into_a_file_names_it_and_says_what_to_give() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    client.json(&["incremental", &path_str(&src)]);
    let file = work.path().join("a-file");
    std::fs::write(&file, "not a directory\n").unwrap();
    let out = client.run(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&file),
        "--subdir",
    ]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains(&path_str(&file)), "{text}");
    assert!(text.contains("is not a directory"), "{text}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory\n");
}

#[test]
fn set_commands_answer_in_json_when_asked() {
    let primary = TestServer::start("PRIMARY");
    let secondary = TestServer::start("SECONDARY");
    pair(&primary, &secondary, "shared-secret-1");
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = primary.admin(&all);
        assert_success(&out, &args.join(" "));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    assert_eq!(
        json(&["set", "replserver", "secondary"])["replserver"],
        "SECONDARY"
    );
    let address = secondary.url();
    assert_eq!(
        json(&["set", "failoveraddress", &address])["failover_address"],
        address.as_str()
    );
    assert_eq!(
        json(&["set", "actlogretention", "45"])["actlog_retention_days"],
        45
    );
}
