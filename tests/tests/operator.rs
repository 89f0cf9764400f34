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

/// Runs the console with `args` and returns its standard output.
fn admin_stdout(server: &TestServer, args: &[&str]) -> String {
    let out = server.admin(args);
    assert_success(&out, &args.join(" "));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn listings_come_as_a_list_csv_tsv_and_json() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    server.register("bob", "bob-password");

    let list = admin_stdout(&server, &["--format", "list", "query", "node", "alice"]);
    assert!(list.contains("Node: ALICE"), "{list}");
    assert!(list.contains("Repl Rule: all_data"), "{list}");
    assert!(!list.contains('│'), "no table borders in a list: {list}");

    let csv = admin_stdout(&server, &["--format", "csv", "query", "node"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "a header and one line per node: {csv}");
    assert!(
        lines[0].starts_with("Node,Locked,Registered,Last Logon,"),
        "{csv}"
    );
    assert!(lines[1].starts_with("ALICE,no,"), "{csv}");
    assert_eq!(
        lines[0].split(',').count(),
        lines[2].split(',').count(),
        "{csv}"
    );

    let tsv = admin_stdout(&server, &["--format", "tsv", "query", "node", "bob"]);
    let lines: Vec<&str> = tsv.lines().collect();
    assert_eq!(lines.len(), 2, "{tsv}");
    assert!(lines[1].starts_with("BOB\tno\t"), "{tsv}");

    // Piped, the default is the table however wide.
    let table = admin_stdout(&server, &["query", "node"]);
    assert!(table.contains("Repl Rule"), "{table}");
    assert!(table.contains('│'), "{table}");

    let json: serde_json::Value = serde_json::from_str(&admin_stdout(
        &server,
        &["--format", "json", "query", "node"],
    ))
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2, "{json}");
    let clash = server.admin(&["--json", "--format", "csv", "query", "node"]);
    assert_eq!(code(&clash), 12, "{}", stderr(&clash));

    // Confirmations are sentences for people: CSV and TSV stay empty of them.
    for format in ["csv", "tsv"] {
        let quiet = admin_stdout(
            &server,
            &["--format", format, "set", "actlogretention", "40"],
        );
        assert!(quiet.is_empty(), "{format}: {quiet}");
        let quiet = admin_stdout(&server, &["--format", format, "lock", "node", "bob"]);
        assert!(!quiet.contains("TDM0500I"), "{format}: {quiet}");
    }
}

/// Whether `text` is RFC 3339 with a zone offset or Z, as every JSON time is.
fn is_rfc3339_with_zone(text: &str) -> bool {
    let Some((date, time)) = text.split_once('T') else {
        return false;
    };
    let zoned = time.ends_with('Z') || time.rfind(['+', '-']).is_some_and(|i| i >= 8);
    date.len() == 10 && date.as_bytes()[4] == b'-' && zoned
}

#[test]
fn json_times_carry_their_zone_and_never_is_null() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let nodes: serde_json::Value = serde_json::from_str(&admin_stdout(
        &server,
        &["--json", "query", "node", "alice"],
    ))
    .unwrap();
    let registered = nodes[0]["registered"].as_str().unwrap();
    assert!(is_rfc3339_with_zone(registered), "{registered}");
    assert!(nodes[0]["last_logon"].is_null(), "never logged on: {nodes}");

    let client = TestClient::new(&server, "alice", "alice-password");
    let work = tempfile::tempdir().unwrap();
    make_tree(&work.path().join("src"));
    client.json(&["incremental", &path_str(&work.path().join("src"))]);
    let nodes: serde_json::Value = serde_json::from_str(&admin_stdout(
        &server,
        &["--json", "query", "node", "alice"],
    ))
    .unwrap();
    assert!(
        is_rfc3339_with_zone(nodes[0]["last_logon"].as_str().unwrap()),
        "{nodes}"
    );
    let log: serde_json::Value =
        serde_json::from_str(&admin_stdout(&server, &["--json", "query", "actlog"])).unwrap();
    for record in log.as_array().unwrap() {
        assert!(
            is_rfc3339_with_zone(record["time"].as_str().unwrap()),
            "{record}"
        );
    }
    // The client's own JSON follows the same rule.
    let spaces = client.json(&["query", "filespace"]);
    assert!(spaces[0]["last_replication"].is_null(), "{spaces}");
    assert!(
        is_rfc3339_with_zone(spaces[0]["last_backup_end"].as_str().unwrap()),
        "{spaces}"
    );
}

#[test]
fn console_errors_have_their_own_ids_and_come_as_json_when_asked() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let error_of = |args: &[&str]| -> serde_json::Value {
        let out = server.admin(args);
        assert_eq!(code(&out), 12, "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
        serde_json::from_str(stderr(&out).trim())
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stderr(&out)))
    };
    let missing = error_of(&["--json", "query", "node", "nosuch"]);
    assert_eq!(missing["error"]["id"], "TDM0513E", "{missing}");
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nosuch"),
        "{missing}"
    );

    let typo = error_of(&["--json", "query", "actlog", "--begin", "yesterday"]);
    assert_eq!(typo["error"]["id"], "TDM0510E", "{typo}");
    assert!(
        typo["error"]["message"]
            .as_str()
            .unwrap()
            .contains("yesterday"),
        "{typo}"
    );

    let refused = error_of(&[
        "--json",
        "register",
        "node",
        "alice",
        "--password-file",
        "/dev/null",
    ]);
    assert_eq!(
        refused["error"]["id"], "TDM0510E",
        "an empty password is local: {refused}"
    );

    // A refusal by the server, without --json: the id first, no gRPC code names.
    let out = server.admin(&["remove", "admin", "admin"]);
    assert_eq!(code(&out), 12);
    let text = stderr(&out);
    assert!(text.starts_with("TDM0514E "), "{text}");
    for name in ["FailedPrecondition", "InvalidArgument", "status:"] {
        assert!(!text.contains(name), "{text}");
    }

    // A server that is not there: the same console, another port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let command = server.admin_command(&["--json", "query", "status"]);
    let args: Vec<std::ffi::OsString> = command
        .get_args()
        .map(|a| {
            if a == server.url().as_str() {
                address.clone().into()
            } else {
                a.to_owned()
            }
        })
        .collect();
    let mut elsewhere = Command::new(command.get_program());
    let out = elsewhere.args(args).output().unwrap();
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    let down: serde_json::Value = serde_json::from_str(stderr(&out).trim()).unwrap();
    assert_eq!(down["error"]["id"], "TDM0511E", "{down}");
}

#[test]
fn lock_and_unlock_node_are_verbs_of_their_own() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    let locked = admin_stdout(&server, &["lock", "node", "alice"]);
    assert!(locked.contains("TDM0500I node ALICE locked"), "{locked}");
    let out = client.run(&["query", "session"]);
    assert_eq!(
        code(&out),
        12,
        "a locked node cannot log on: {}",
        stderr(&out)
    );
    admin_stdout(&server, &["unlock", "node", "alice"]);
    client.json(&["query", "session"]);
    let log = server.actlog();
    assert!(log.contains("update node ALICE lock ("), "{log}");
    assert!(log.contains("update node ALICE unlock ("), "{log}");
}

#[test]
fn query_occupancy_counts_files_and_bytes_per_filespace() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    server.register("bob", "bob-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("one.bin"), random_bytes(3, 100_000)).unwrap();
    std::fs::write(src.join("two.txt"), "two\n").unwrap();
    client.json(&["incremental", &path_str(&src)]);
    std::fs::write(src.join("two.txt"), "two, changed\n").unwrap();
    client.json(&["incremental", &path_str(&src)]);

    let rows: serde_json::Value =
        serde_json::from_str(&admin_stdout(&server, &["--json", "query", "occupancy"])).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "bob has no filespace: {rows:?}");
    let alice = &rows[0];
    assert_eq!(alice["node"], "ALICE");
    assert_eq!(alice["files"], 3, "the directory and two files: {alice}");
    assert_eq!(alice["versions"], 4, "and two.txt's older version: {alice}");
    let logical = alice["logical_bytes"].as_u64().unwrap();
    assert!(logical >= 100_000 + 4 + 13, "{alice}");
    let stored = alice["stored_bytes"].as_u64().unwrap();
    assert!(stored >= 90_000 && stored <= logical + 4096, "{alice}");

    let bob: serde_json::Value = serde_json::from_str(&admin_stdout(
        &server,
        &["--json", "query", "occupancy", "bob"],
    ))
    .unwrap();
    assert_eq!(bob, serde_json::json!([]));
    let out = server.admin(&["query", "occupancy", "nosuch"]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
}

#[test]
fn query_actlog_narrows_by_node_message_and_end() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    server.register("bob", "bob-password");
    TestClient::new(&server, "alice", "alice-password").json(&["query", "session"]);
    TestClient::new(&server, "bob", "bob-password").json(&["query", "session"]);
    let records = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["--json", "query", "actlog"];
        all.extend_from_slice(args);
        let v: serde_json::Value = serde_json::from_str(&admin_stdout(&server, &all)).unwrap();
        v.as_array().unwrap().clone()
    };
    let alice = records(&["--node", "alice"]);
    assert!(!alice.is_empty());
    assert!(alice.iter().all(|r| r["node"] == "ALICE"), "{alice:?}");
    let starts = records(&["--msgno", "tdm0400"]);
    assert_eq!(starts.len(), 2, "two sessions started: {starts:?}");
    assert!(starts.iter().all(|r| r["id"] == "TDM0400I"), "{starts:?}");
    assert!(records(&["--end", "2000-01-01"]).is_empty());
    // An end date takes that whole day: today's records are all in.
    let today = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .unwrap();
    let today = String::from_utf8(today.stdout).unwrap().trim().to_string();
    let today_starts = records(&["--begin", &today, "--end", &today, "--msgno", "TDM0400"]);
    assert_eq!(today_starts.len(), 2, "{today_starts:?}");
    let out = server.admin(&[
        "query",
        "actlog",
        "--begin",
        "2026-01-02",
        "--end",
        "2026-01-01",
    ]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(stderr(&out).contains("before --begin"), "{}", stderr(&out));
}

/// The log files a server wrote under `dir`, as one text.
fn logs_under(dir: &std::path::Path) -> (Vec<String>, String) {
    let mut names = Vec::new();
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        text.push_str(&std::fs::read_to_string(&path).unwrap());
    }
    (names, text)
}

#[test]
fn the_server_logs_to_a_rolling_file_as_text_or_json() {
    let logs = tempfile::tempdir().unwrap();
    let text_file = logs.path().join("text").join("tandem.log");
    let json_file = logs.path().join("json").join("tandem.log");
    let text = TestServer::start_with(
        "PRIMARY",
        &[("TANDEM_SERVER_LOG_FILE", &path_str(&text_file))],
    );
    let json = TestServer::start_with(
        "OTHER",
        &[
            ("TANDEM_SERVER_LOG_FILE", &path_str(&json_file)),
            ("TANDEM_SERVER_LOG_FORMAT", "json"),
            ("TANDEM_SERVER_LOG_ROTATION", "hourly"),
        ],
    );
    text.register("alice", "alice-password");
    json.register("alice", "alice-password");

    // Daily rotation names the file by its day; the id leads each message.
    let (names, lines) = logs_under(text_file.parent().unwrap());
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("tandem.log.20"), "{names:?}");
    let registered = lines
        .lines()
        .find(|l| l.contains("TDM0500I"))
        .unwrap_or_else(|| panic!("no registration in {lines}"));
    assert!(
        registered.contains("actlog: TDM0500I register node ALICE"),
        "the id comes before the text: {registered}"
    );
    assert!(!lines.contains('\u{1b}'), "{lines:?}");

    let (names, lines) = logs_under(json_file.parent().unwrap());
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(
        names[0].len(),
        "tandem.log.YYYY-MM-DD-HH".len(),
        "{names:?}"
    );
    let mut seen = 0;
    for line in lines.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        seen += 1;
    }
    assert!(seen >= 2, "{lines}");
    assert!(lines.contains("TDM0500I"), "{lines}");

    // A log file in the data directory is refused: pruning rolled files
    // must never reach the catalog or the containers.
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("tandem-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .arg("--log-file")
        .arg(data.path().join("c"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("in the data directory"),
        "{}",
        stderr(&out)
    );

    // A log file the server cannot open stops it with a clear message.
    let blocker = logs.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("tandem-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path().join("d"))
        .arg("--log-file")
        .arg(blocker.join("tandem.log"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(stderr(&out).contains("log_file"), "{}", stderr(&out));
}

#[test]
fn the_primary_shows_when_each_filespace_was_last_replicated() {
    let (primary, _secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    make_tree(&work.path().join("src"));
    client.json(&["incremental", &path_str(&work.path().join("src"))]);
    let before = client.json(&["query", "filespace"]);
    assert!(before[0]["last_replication"].is_null(), "{before}");
    replicate(&primary, "alice");
    let after = client.json(&["query", "filespace"]);
    let when = after[0]["last_replication"]
        .as_str()
        .unwrap_or_else(|| panic!("{after}"));
    let end = after[0]["last_backup_end"].as_str().unwrap();
    assert!(
        when >= end,
        "replicated ({when}) after the backup ended ({end})"
    );
}

#[test]
fn ping_server_checks_a_pairing_without_replicating() {
    let primary = TestServer::start("PRIMARY");
    let secondary = TestServer::start("SECONDARY");
    pair(&primary, &secondary, "shared-secret-1");
    let ok: serde_json::Value = serde_json::from_str(&admin_stdout(
        &primary,
        &["--json", "ping", "server", "secondary"],
    ))
    .unwrap();
    assert_eq!(ok["verified"], true, "{ok}");
    assert_eq!(ok["name"], "SECONDARY");
    let status: serde_json::Value =
        serde_json::from_str(&admin_stdout(&secondary, &["--json", "query", "status"])).unwrap();
    assert_eq!(ok["guid"], status["server_guid"], "{ok} {status}");
    assert!(
        !secondary.actlog().contains("TDM0603I"),
        "a ping replicates nothing"
    );

    // The secondary now expects another password: the ping says so today,
    // not at the first replication.
    let other = primary.data.path().join("other.pw");
    std::fs::write(&other, "another-secret-2\n").unwrap();
    assert_success(
        &secondary.define_server("PRIMARY", &primary.url(), &primary.fingerprint(), &other),
        "redefine with another password",
    );
    let out = primary.admin(&["ping", "server", "secondary"]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("TDM0514E replication server SECONDARY"),
        "{}",
        stderr(&out)
    );

    let out = primary.admin(&["--json", "ping", "server", "nosuch"]);
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("TDM0513E"), "{}", stderr(&out));
}

#[test]
fn update_and_delete_server_change_a_pairing_and_refuse_what_would_break_one() {
    let (primary, secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    make_tree(&work.path().join("src"));
    client.json(&["incremental", &path_str(&work.path().join("src"))]);
    replicate(&primary, "alice");

    // A new shared password on both sides, through update server: the
    // pairing still works, and the change is in the activity log.
    let password = primary.data.path().join("new.pw");
    std::fs::write(&password, "renewed-secret-2\n").unwrap();
    let password = path_str(&password);
    for (here, there) in [(&primary, "secondary"), (&secondary, "primary")] {
        let row: serde_json::Value = serde_json::from_str(&admin_stdout(
            here,
            &[
                "--json",
                "update",
                "server",
                there,
                "--server-password-file",
                &password,
            ],
        ))
        .unwrap();
        assert_eq!(row[0]["name"], there.to_ascii_uppercase(), "{row}");
        // The primary replicates to the secondary; not the other way.
        assert_eq!(row[0]["replserver"], there == "secondary", "{row}");
    }
    admin_stdout(&primary, &["ping", "server", "secondary"]);
    assert!(
        primary
            .actlog()
            .contains("update server SECONDARY: new shared password"),
        "{}",
        primary.actlog()
    );

    // A wrong pin is refused as a value; nothing to change is refused too.
    let out = primary.admin(&[
        "update",
        "server",
        "secondary",
        "--fingerprint",
        "not-a-fingerprint",
    ]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    let out = primary.admin(&["update", "server", "secondary"]);
    assert!(
        stderr(&out).contains("nothing to change"),
        "{}",
        stderr(&out)
    );
    let out = primary.admin(&[
        "--json",
        "update",
        "server",
        "nosuch",
        "--address",
        "https://127.0.0.1:1",
    ]);
    assert!(stderr(&out).contains("TDM0513E"), "{}", stderr(&out));

    // A moved partner: the new address is used, the pin stays.
    let moved = primary.admin(&[
        "--json",
        "update",
        "server",
        "secondary",
        "--address",
        "https://127.0.0.1:9",
    ]);
    assert_success(&moved, "update server --address");
    let servers: serde_json::Value =
        serde_json::from_str(&admin_stdout(&primary, &["--json", "query", "server"])).unwrap();
    assert_eq!(servers[0]["address"], "https://127.0.0.1:9", "{servers}");
    assert_eq!(
        servers[0]["fingerprint"],
        secondary.fingerprint(),
        "{servers}"
    );

    // Deleting the replication server, or the source of replicas held
    // here, would break replication: refused, naming what to do first.
    let out = primary.admin(&["delete", "server", "secondary"]);
    assert!(stderr(&out).starts_with("TDM0514E"), "{}", stderr(&out));
    assert!(stderr(&out).contains("set replserver"), "{}", stderr(&out));
    let out = secondary.admin(&["delete", "server", "primary"]);
    assert!(stderr(&out).starts_with("TDM0514E"), "{}", stderr(&out));
    assert!(stderr(&out).contains("ALICE"), "{}", stderr(&out));

    admin_stdout(&primary, &["set", "replserver", ""]);
    let gone: serde_json::Value = serde_json::from_str(&admin_stdout(
        &primary,
        &["--json", "delete", "server", "secondary"],
    ))
    .unwrap();
    assert_eq!(gone["deleted"], true, "{gone}");
    let servers: serde_json::Value =
        serde_json::from_str(&admin_stdout(&primary, &["--json", "query", "server"])).unwrap();
    assert_eq!(servers, serde_json::json!([]));
    assert!(primary.actlog().contains("delete server SECONDARY"));
}

#[test]
fn cancel_session_ends_a_running_backup() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    let work = tempfile::tempdir().unwrap();
    let sessions = || -> serde_json::Value {
        serde_json::from_str(&admin_stdout(&server, &["--json", "query", "session"])).unwrap()
    };
    let signal = |which: &str, pid: &str| {
        let status = Command::new("kill").args([which, pid]).status().unwrap();
        assert!(status.success(), "kill {which} {pid}");
    };
    // A backup on a fast machine may end before the console sees its
    // session; each try then uses a new tree (so it cannot be unchanged),
    // up to three.
    let mut caught = None;
    for attempt in 0..3u64 {
        let src = work.path().join(format!("src{attempt}"));
        std::fs::create_dir_all(&src).unwrap();
        for i in 0..16 {
            let seed = attempt * 100 + i;
            std::fs::write(src.join(format!("f{i}.bin")), random_bytes(seed, 4 << 20)).unwrap();
        }
        let mut backup = client
            .command(&["incremental", &path_str(&src)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = backup.id().to_string();
        let mut id = None;
        wait_until(std::time::Duration::from_secs(30), || {
            id = sessions()
                .as_array()
                .unwrap()
                .first()
                .map(|s| s["id"].to_string());
            id.is_some() || backup.try_wait().unwrap().is_some()
        });
        let Some(id) = id else {
            backup.wait().unwrap();
            continue;
        };
        // Held still, so the cancel lands while the backup is under way.
        signal("-STOP", &pid);
        let out = server.admin(&["--json", "cancel", "session", &id]);
        signal("-CONT", &pid);
        if code(&out) != 0 {
            // It logged off between the two calls: try again.
            assert!(stderr(&out).contains("TDM0513E"), "{}", stderr(&out));
            backup.wait().unwrap();
            continue;
        }
        let cancelled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(cancelled[0]["node"], "ALICE", "{cancelled}");
        caught = Some((id, src, backup.wait_with_output().unwrap()));
        break;
    }
    let (id, src, out) = caught.expect("no try caught the backup while its session was open");
    assert_ne!(out.status.code(), Some(0), "the cancelled backup failed");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!("session {id} was cancelled by an administrator")),
        "{text}"
    );
    assert_eq!(sessions(), serde_json::json!([]));
    assert!(
        server
            .actlog()
            .contains(&format!("cancel session {id} of ALICE"))
    );

    let out = server.admin(&["--json", "cancel", "session", "999999"]);
    assert!(stderr(&out).contains("TDM0513E"), "{}", stderr(&out));
    // The node's next backup works and stores everything.
    client.json(&["incremental", &path_str(&src)]);
    let stored = client.json(&["query", "backup", &format!("{}/*", path_str(&src))]);
    assert_eq!(stored.as_array().unwrap().len(), 16, "{stored}");
}

#[test]
fn the_administrator_sees_every_nodes_filespaces() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    server.register("bob", "bob-password");
    let work = tempfile::tempdir().unwrap();
    for node in ["alice", "bob"] {
        let src = work.path().join(node);
        make_tree(&src);
        TestClient::new(&server, node, &format!("{node}-password"))
            .json(&["incremental", &path_str(&src)]);
    }
    let all: serde_json::Value =
        serde_json::from_str(&admin_stdout(&server, &["--json", "query", "filespace"])).unwrap();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["node"], "ALICE");
    assert_eq!(all[1]["node"], "BOB");
    assert!(all[0]["active_files"].as_u64().unwrap() > 1, "{all:?}");
    assert!(is_rfc3339_with_zone(
        all[0]["last_backup_end"].as_str().unwrap()
    ));
    assert!(all[0]["last_replication"].is_null());
    let bob: serde_json::Value = serde_json::from_str(&admin_stdout(
        &server,
        &["--json", "query", "filespace", "bob"],
    ))
    .unwrap();
    assert_eq!(bob.as_array().unwrap().len(), 1);
    let table = admin_stdout(&server, &["--format", "table", "query", "filespace"]);
    assert!(table.contains("Last Backup End"), "{table}");
    let out = server.admin(&["--json", "query", "filespace", "nosuch"]);
    assert!(stderr(&out).contains("TDM0513E"), "{}", stderr(&out));
}

#[test]
fn actlog_narrows_by_originator_and_parse_errors_come_as_json() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    TestClient::new(&server, "alice", "alice-password").json(&["query", "session"]);
    let records = |origin: &str| -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&admin_stdout(
            &server,
            &["--json", "query", "actlog", "--originator", origin],
        ))
        .unwrap();
        v.as_array().unwrap().clone()
    };
    let client = records("client");
    assert!(!client.is_empty());
    assert!(
        client
            .iter()
            .all(|r| r["id"].as_str().unwrap().starts_with("TDM04")),
        "{client:?}"
    );
    let admin = records("admin");
    assert!(admin.iter().any(|r| r["id"] == "TDM0500I"), "{admin:?}");
    assert!(
        admin
            .iter()
            .all(|r| r["id"].as_str().unwrap().starts_with("TDM05"))
    );

    let out = server.admin(&["--json", "query", "actlog", "--originator", "martians"]);
    assert_eq!(code(&out), 12);
    let error: serde_json::Value = serde_json::from_str(stderr(&out).trim())
        .unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert_eq!(error["error"]["id"], "TDM0510E", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("martians"),
        "{error}"
    );
}

/// A raw `Admin` client of `server` (its certificate pinned) whose calls
/// carry `authorization: Bearer TOKEN`.
async fn raw_admin(
    server: &TestServer,
) -> tandem_proto::pb::admin_client::AdminClient<tonic::transport::Channel> {
    let pin = tandem_tls::Trust::Pinned(server.fingerprint().parse().unwrap());
    let tls = tandem_tls::ClientTls::new(&pin, None).unwrap();
    let endpoint = tonic::transport::Endpoint::from_shared(server.url()).unwrap();
    let channel = tandem_tls::connect(endpoint, Some(&tls)).await.unwrap();
    tandem_proto::pb::admin_client::AdminClient::new(channel)
}

fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn the_new_admin_calls_refuse_callers_without_the_admin_credential() {
    use tandem_proto::pb;
    let primary = TestServer::start("PRIMARY");
    let secondary = TestServer::start("SECONDARY");
    pair(&primary, &secondary, "shared-secret-1");
    primary.register("alice", "alice-password");
    let (mut node, session) = raw_backup_session(&primary, "alice", "alice-password").await;
    let id = serde_json::from_str::<serde_json::Value>(&admin_stdout(
        &primary,
        &["--json", "query", "session"],
    ))
    .unwrap()[0]["id"]
        .as_u64()
        .unwrap();
    let mut admin = raw_admin(&primary).await;
    // A guessed token, and a node's own session token, are not the admin's.
    for token in ["not-the-admin-token", session.as_str()] {
        let refusals = [
            admin
                .cancel_session(bearer(token, pb::CancelSessionRequest { id }))
                .await
                .unwrap_err(),
            admin
                .delete_server(bearer(
                    token,
                    pb::DeleteServerRequest {
                        name: "SECONDARY".into(),
                    },
                ))
                .await
                .unwrap_err(),
            admin
                .update_server(bearer(
                    token,
                    pb::UpdateServerRequest {
                        name: "SECONDARY".into(),
                        address: "https://127.0.0.1:9".into(),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap_err(),
            admin
                .query_node_filespaces(bearer(token, pb::QueryNodeFilespacesRequest::default()))
                .await
                .unwrap_err(),
        ];
        for refused in refusals {
            assert!(
                matches!(
                    refused.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ),
                "{refused:?}"
            );
        }
    }
    // Nothing happened: the session works, the partner is as defined.
    node.query_filespaces(with_session(
        &session,
        pb::QueryFilespacesRequest::default(),
    ))
    .await
    .expect("the session was not cancelled");
    let servers: serde_json::Value =
        serde_json::from_str(&admin_stdout(&primary, &["--json", "query", "server"])).unwrap();
    assert_eq!(servers[0]["address"], secondary.url(), "{servers}");
}

/// QUERY COVERAGE (issue 23, seed 000's first rule): a filespace with no
/// copy on another server is named and the console exits 8 (TDM0516W); a
/// replicated one is current; one backed up since its last replication is
/// behind and named once its copy is older than --max-age; a node never
/// backed up is empty; the secondary lists its replicas as such.
#[test]
fn query_coverage_names_what_has_no_recent_copy_elsewhere() {
    let (primary, secondary, alice) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    let alice_dir = work.path().join("alice");
    std::fs::create_dir_all(&alice_dir).unwrap();
    std::fs::write(alice_dir.join("a"), "a\n").unwrap();
    alice.json(&["incremental", &path_str(&alice_dir)]);
    assert_eq!(replicate(&primary, "alice")["state"], "completed");
    primary.register("bob", "bob-password");
    primary.register("carol", "carol-password");
    let bob = TestClient::new(&primary, "bob", "bob-password");
    let bob_dir = work.path().join("bob");
    std::fs::create_dir_all(&bob_dir).unwrap();
    std::fs::write(bob_dir.join("b"), "b\n").unwrap();
    bob.json(&["incremental", &path_str(&bob_dir)]);

    let out = primary.admin(&["--json", "query", "coverage"]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let state = |node: &str| -> String {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == node)
            .map(|r| r["coverage"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no row for {node}: {rows}"))
    };
    assert_eq!(state("ALICE"), "current");
    assert_eq!(state("BOB"), "uncovered");
    assert_eq!(state("CAROL"), "empty");
    let warning: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(warning["warning"]["id"], "TDM0516W", "{warning}");
    let text = warning["warning"]["message"].as_str().unwrap();
    assert!(text.contains("BOB") && !text.contains("ALICE"), "{text}");

    // Only alice: covered, exit 0, in any format.
    let out = primary.admin(&["query", "coverage", "alice"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("current"));

    // A backup after the replication: behind; stale once older than --max-age.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    std::fs::write(alice_dir.join("a"), "changed\n").unwrap();
    alice.json(&["incremental", &path_str(&alice_dir)]);
    let out = primary.admin(&["--json", "query", "coverage", "alice"]);
    assert_eq!(code(&out), 0, "behind, but within a day: {}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["coverage"], "behind", "{rows}");
    assert!(rows[0]["copy_age_secs"].as_u64().unwrap() >= 1, "{rows}");
    let out = primary.admin(&["query", "coverage", "alice", "--max-age", "0"]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(stderr(&out).contains("TDM0516W ") && stderr(&out).contains("ALICE"));

    // The secondary holds alice as a replica; a node it does not know is an error.
    let out = secondary.admin(&["--json", "query", "coverage"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["coverage"], "replica", "{rows}");
    assert_eq!(rows[0]["partner"], "PRIMARY", "{rows}");
    let out = secondary.admin(&["query", "coverage", "nosuch"]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
}
