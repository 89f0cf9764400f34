//! Automated client failover and failback with real servers killed by SIGKILL,
//! and the dsierror.log audit trail.

use std::time::{Duration, Instant};

use tandem_tests::*;

struct World {
    primary: TestServer,
    secondary: TestServer,
    client: TestClient,
    work: tempfile::TempDir,
}

impl World {
    fn src(&self) -> std::path::PathBuf {
        self.work.path().join("src")
    }
}

/// Backed up, replicated, and the failover block saved by a later logon.
fn setup() -> World {
    let (primary, secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    make_tree(&work.path().join("src"));
    client.json(&["incremental", &path_str(&work.path().join("src"))]);
    let run = replicate(&primary, "alice");
    assert_eq!(run["state"], "completed", "{run}");
    client.json(&["query", "session"]);
    assert!(
        std::fs::read_to_string(&client.options)
            .unwrap()
            .contains("[replication_servers.SECONDARY]")
    );
    World {
        primary,
        secondary,
        client,
        work,
    }
}

#[test]
fn restore_fails_over_when_the_primary_is_killed_and_fails_back() {
    let mut w = setup();
    w.primary.kill();

    let out = w.work.path().join("restored");
    let r = w.client.json(&[
        "restore",
        &format!("{}/*", path_str(&w.src())),
        &path_str(&out),
        "--subdir",
    ]);
    assert_eq!(r["failed"], 0, "{r}");
    assert_same_tree(&w.src(), &out);
    assert_eq!(
        w.client.logged_ids(),
        ["TDM2106I", "TDM2107I", "TDM2108I"],
        "{}",
        w.client.error_log()
    );
    let log = w.client.error_log();
    assert!(
        log.contains("PRIMARY") && log.contains(&w.primary.addr.to_string()),
        "{log}"
    );
    assert!(
        log.contains("SECONDARY") && log.contains("node ALICE replicated 20"),
        "{log}"
    );

    let session = w.client.json(&["query", "session"]);
    assert_eq!(session["mode"], "failover");
    assert_eq!(session["server_name"], "SECONDARY");
    assert_eq!(session["replica"][0]["current"], true, "{session}");
    let filespaces = w.client.json(&["query", "filespace"]);
    assert_eq!(filespaces[0]["replica_current"], true, "{filespaces}");
    assert!(
        !filespaces[0]["last_replication"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    for args in [
        vec!["incremental".to_string(), path_str(&w.src())],
        vec!["selective".to_string(), path_str(&w.src().join("empty"))],
        vec![
            "set".into(),
            "password".into(),
            "alice-password".into(),
            "alice-password-2".into(),
        ],
        vec![
            "delete".into(),
            "backup".into(),
            format!("{}/*", path_str(&w.src())),
            "--subdir".into(),
            "--deltype".into(),
            "all".into(),
            "--yes".into(),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = w.client.run(&args);
        assert_eq!(code(&out), 12, "{args:?}");
        assert!(stderr(&out).contains("TDM2110E"), "{}", stderr(&out));
    }
    assert!(w.client.error_log().contains("TDM2110E"));
    let actlog = String::from_utf8_lossy(
        &w.secondary
            .admin(&["query", "actlog", "--search", "failover logon"])
            .stdout,
    )
    .into_owned();
    assert!(
        actlog.contains("TDM0406I") && actlog.contains("ALICE"),
        "{actlog}"
    );

    // The primary comes back: the next command fails back and says so once.
    w.primary.restart();
    w.client.json(&["query", "filespace"]);
    w.client.json(&["query", "filespace"]);
    let ids = w.client.logged_ids();
    assert_eq!(
        ids.iter().filter(|i| *i == "TDM2109I").count(),
        1,
        "{ids:?}"
    );
    assert_eq!(w.client.json(&["query", "session"])["mode"], "normal");
    let stats = w.client.json(&["incremental", &path_str(&w.src())]);
    assert_eq!(stats["failed"], 0);

    // A later outage fails over again; the backup just made is not on the
    // replica yet, so the session also warns (exit 8).
    w.primary.kill();
    let out = w.client.run(&["--json", "query", "session"]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(stderr(&out).contains("TDM2111W"));
    let session: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(session["mode"], "failover");
}

#[test]
fn forced_failover_goes_to_the_secondary_with_the_primary_up() {
    let w = setup();
    let session = w.client.json(&["--force-failover", "query", "session"]);
    assert_eq!(session["mode"], "failover");
    assert!(
        !w.client.logged_ids().contains(&"TDM2106I".to_string()),
        "the primary is not tried"
    );
    assert_eq!(w.client.json(&["query", "session"])["mode"], "normal");
    w.client.add_options("force_failover = true\n");
    assert_eq!(w.client.json(&["query", "session"])["mode"], "failover");
}

#[test]
fn a_secondary_with_another_guid_is_refused_before_any_credential_is_sent() {
    let mut w = setup();
    let text = std::fs::read_to_string(&w.client.options).unwrap();
    let guid_line = text
        .lines()
        .find(|l| l.starts_with("server_guid"))
        .unwrap()
        .to_string();
    let forged = text.replace(
        &guid_line,
        "server_guid = \"00.11.22.33.44.55.66.77.88.99.aa.bb.cc.dd.ee.ff\"",
    );
    std::fs::write(&w.client.options, forged).unwrap();
    w.primary.kill();
    let out = w.client.run(&["query", "session"]);
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("TDM2112E"), "{}", stderr(&out));
    assert!(w.client.error_log().contains("TDM2112E"));
    let actlog = String::from_utf8_lossy(
        &w.secondary
            .admin(&["query", "actlog", "--search", "failover"])
            .stdout,
    )
    .into_owned();
    assert!(
        !actlog.contains("TDM0406I"),
        "no logon reached the unexpected server: {actlog}"
    );
}

#[test]
fn with_failover_disabled_an_unreachable_primary_is_a_clear_error() {
    let mut w = setup();
    w.client.add_options("use_replication_failover = false\n");
    w.primary.kill();
    let out = w.client.run(&["query", "session"]);
    assert_eq!(code(&out), 12);
    assert!(
        stderr(&out).contains("TDM1002E") && stderr(&out).contains("use_replication_failover"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_stale_replica_is_warned_per_filespace() {
    let mut w = setup();
    std::fs::write(w.src().join("empty"), "newer than the replica\n").unwrap();
    w.client.json(&["incremental", &path_str(&w.src())]);
    w.primary.kill();
    let out = w.work.path().join("stale");
    let run = w.client.run(&[
        "restore",
        &format!("{}/*", path_str(&w.src())),
        &path_str(&out),
        "--subdir",
    ]);
    assert_eq!(code(&run), 8, "restored with a warning: {}", stderr(&run));
    assert!(stderr(&run).contains("TDM2111W"), "{}", stderr(&run));
    assert!(w.client.error_log().contains("TDM2111W"));
    // What was replicated is what comes back: the older (empty) version.
    assert_eq!(std::fs::read(out.join("empty")).unwrap(), b"");
    let out = w.client.run(&["--json", "query", "session"]);
    assert_eq!(code(&out), 8);
    let session: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(session["replica"][0]["current"], false, "{session}");
}

#[test]
fn a_wrong_password_never_fails_over() {
    let w = setup();
    let bad = TestClient::new(&w.primary, "alice", "wrong-password");
    let good_text = std::fs::read_to_string(&w.client.options).unwrap();
    let block = &good_text[good_text.find("\n# Maintained").unwrap()..];
    let mut text = std::fs::read_to_string(&bad.options).unwrap();
    text.push_str(block);
    std::fs::write(&bad.options, text).unwrap();
    let out = bad.run(&["query", "session"]);
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("TDM1003E"), "{}", stderr(&out));
    assert!(!bad.error_log().contains("TDM2106I"));
}

#[test]
fn concurrent_clients_never_interleave_error_log_lines() {
    let mut w = setup();
    w.primary.kill();
    let children: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new(bin("tandem"))
                .args([
                    "--options",
                    &path_str(&w.client.options),
                    "--quiet",
                    "query",
                    "session",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let log = w.client.error_log();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 24, "{log}");
    for line in &lines {
        let mut parts = line.splitn(3, ' ');
        let stamp = parts.next().unwrap();
        let id = parts.next().unwrap();
        assert!(
            stamp.len() == 29 && stamp.contains('T'),
            "bad timestamp in {line:?}"
        );
        assert!(
            ["TDM2106I", "TDM2107I", "TDM2108I"].contains(&id),
            "{line:?}"
        );
    }
    for id in ["TDM2106I", "TDM2107I", "TDM2108I"] {
        assert_eq!(lines.iter().filter(|l| l.contains(id)).count(), 8, "{id}");
    }
}

#[test]
fn failover_decisions_for_refused_and_silent_primaries() {
    let w = setup();
    // A primary that refuses connections: a port nobody listens on.
    let refused_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A primary that accepts TCP connections and never answers (a listener
    // that never calls accept: the kernel completes the handshake).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    for (what, url) in [
        ("refused", format!("https://127.0.0.1:{refused_port}")),
        ("silent", format!("https://{silent_addr}")),
    ] {
        let text = std::fs::read_to_string(&w.client.options).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("server_address"))
            .unwrap()
            .to_string();
        std::fs::write(
            &w.client.options,
            text.replace(&line, &format!("server_address = \"{url}\"")),
        )
        .unwrap();
        let started = Instant::now();
        let session = w.client.json(&["query", "session"]);
        let took = started.elapsed();
        assert_eq!(session["mode"], "failover", "{what}: {session}");
        eprintln!("{what} primary: failover decision and logon in {took:?}");
        assert!(
            took < Duration::from_secs(30),
            "{what} primary: the decision must be bounded"
        );
    }
    drop(silent);
}

/// `tandem --json query session` with `client`'s options, started with its
/// output captured.
fn start_session(client: &TestClient) -> std::process::Child {
    client
        .command(&["--json", "query", "session"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// `n` `tandem query session` processes started at once with `client`'s
/// options; their outputs, in order.
fn simultaneous_sessions(client: &TestClient, n: usize) -> Vec<std::process::Output> {
    let children: Vec<_> = (0..n).map(|_| start_session(client)).collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

#[test]
fn a_primary_busy_with_many_logons_at_once_is_waited_for_never_failed_over_from() {
    let w = setup();
    // Beyond what the server checks at once (4 passwords, a 2 s wait for a
    // turn) and beyond its 128 connections from one address: before the
    // server kept a line and the client told "busy" from "down", most of
    // these failed over from a primary that was up all along.
    let outs = simultaneous_sessions(&w.client, 200);
    let failed: Vec<String> = outs
        .iter()
        .filter(|o| !o.status.success())
        .map(stderr)
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    for out in &outs {
        let session: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(session["mode"], "normal", "{session}");
    }
    let log = w.client.error_log();
    for id in ["TDM2106I", "TDM2107I", "TDM2108I"] {
        assert!(!log.contains(id), "no failover was due: {log}");
    }
}

/// A TLS connection to `server` (pinned), held open by the returned channel.
fn hold_connection(rt: &tokio::runtime::Runtime, server: &TestServer) -> tonic::transport::Channel {
    let pin = tandem_tls::Trust::Pinned(server.fingerprint().parse().unwrap());
    let tls = tandem_tls::ClientTls::new(&pin, None).unwrap();
    let endpoint = tonic::transport::Endpoint::from_shared(server.url()).unwrap();
    rt.block_on(tandem_tls::connect(endpoint, Some(&tls)))
        .expect("the held connection")
}

#[test]
fn a_full_primary_is_waited_for_and_one_silent_past_busy_wait_seconds_is_failed_over_from() {
    let mut w = setup();
    w.primary
        .restart_with(&[("TANDEM_SERVER_MAX_CONNECTIONS", "1")]);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Its one connection taken: a logon completes its handshake and waits in
    // the server's line; once the place comes free it goes through.
    let held = hold_connection(&rt, &w.primary);
    let waiting = start_session(&w.client);
    std::thread::sleep(Duration::from_secs(1));
    drop(held);
    let out = waiting.wait_with_output().unwrap();
    assert_success(&out, "a logon that waited for a place");
    let session: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(session["mode"], "normal", "{session}");
    assert!(w.client.logged_ids().is_empty(), "{}", w.client.error_log());

    // Taken for longer than the client waits (busy_wait_seconds): a server
    // that proved who it is and then never answered counts as down.
    let _held = hold_connection(&rt, &w.primary);
    let out = w
        .client
        .command(&["--json", "query", "session"])
        .env("TANDEM_BUSY_WAIT_SECONDS", "2")
        .output()
        .unwrap();
    assert_success(&out, "failover from a silent primary");
    let session: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(session["mode"], "failover", "{session}");
    assert_eq!(
        w.client.logged_ids(),
        ["TDM2106I", "TDM2107I", "TDM2108I"],
        "{}",
        w.client.error_log()
    );
    assert!(
        w.client.error_log().contains("never answered the logon"),
        "{}",
        w.client.error_log()
    );
}

#[test]
fn a_busy_wait_seconds_over_an_hour_is_refused() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    let out = client
        .command(&["query", "session"])
        .env("TANDEM_BUSY_WAIT_SECONDS", "3601")
        .output()
        .unwrap();
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("busy_wait_seconds 3601"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_logon_that_outlasts_the_servers_line_tries_again_and_gets_in() {
    let server = TestServer::start_with("PRIMARY", &[("TANDEM_SERVER_MAX_CONNECTIONS", "1")]);
    server.register("alice", "alice-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The one place taken for longer than the server keeps a connection in
    // line (CONNECTION_LINE_WAIT, 20 s): the server closes the waiting
    // logon's connection, and the client, with the default 60 s to wait,
    // must take that as "not yet", neither a refusal nor an outage.
    let held = hold_connection(&rt, &server);
    let waiting = start_session(&client);
    std::thread::sleep(tandem_tls::CONNECTION_LINE_WAIT + Duration::from_secs(3));
    drop(held);
    let out = waiting.wait_with_output().unwrap();
    assert_success(&out, "a logon that outlasted the line");
    assert!(
        stderr(&out).contains("TDM1071W"),
        "it said it waited: {}",
        stderr(&out)
    );
}
