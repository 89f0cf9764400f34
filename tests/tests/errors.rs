//! Bad input and refusals: each gets a clear message, a TDM id and exit 12.

use tandem_tests::*;

#[test]
fn an_unreachable_server_is_named_with_its_address() {
    // A port that was free a moment ago: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let options = dir.path().join("tandem.toml");
    std::fs::write(
        &options,
        format!("node_name = \"x\"\nserver_address = \"http://127.0.0.1:{port}\"\npassword = \"password1\"\nstate_dir = \"{}\"\n", path_str(dir.path())),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(bin("tandem"))
        .args(["--options", &path_str(&options), "query", "session"])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(code(&out), 12);
    let err = stderr(&out);
    assert!(
        err.contains("TDM1002E") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("3 attempt(s)"), "{err}");
    eprintln!("refused connection reported after {elapsed:?}");
}

#[test]
fn wrong_password_and_locked_node_are_refused_and_logged() {
    let server = TestServer::start("PRIMARY");
    server.register("erin", "erin-password");
    let bad = TestClient::new(&server, "erin", "not-the-password");
    let out = bad.run(&["query", "session"]);
    assert_eq!(code(&out), 12);
    assert!(
        stderr(&out).contains("TDM1003E") && stderr(&out).contains("wrong password"),
        "{}",
        stderr(&out)
    );
    let nodes: serde_json::Value =
        serde_json::from_slice(&server.admin(&["--json", "query", "node", "erin"]).stdout).unwrap();
    assert_eq!(nodes[0]["failed_logons"], 1);
    let log = String::from_utf8_lossy(
        &server
            .admin(&["query", "actlog", "--search", "wrong password"])
            .stdout,
    )
    .into_owned();
    assert!(log.contains("TDM0402W"), "{log}");

    assert_success(&server.admin(&["update", "node", "erin", "--lock"]), "lock");
    let good = TestClient::new(&server, "erin", "erin-password");
    let out = good.run(&["query", "session"]);
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("locked"), "{}", stderr(&out));
    assert_success(
        &server.admin(&["update", "node", "erin", "--unlock"]),
        "unlock",
    );
    assert_success(&good.run(&["query", "session"]), "logon after unlock");
}

#[test]
fn options_file_errors_name_the_key_or_file() {
    let server = TestServer::start("PRIMARY");
    let client = TestClient::new(&server, "x", "password1");
    client.add_options("nodename = \"typo\"\n");
    let out = client.run(&["query", "session"]);
    assert_eq!(code(&out), 12);
    assert!(
        stderr(&out).contains("TDM1001E") && stderr(&out).contains("nodename"),
        "{}",
        stderr(&out)
    );

    std::fs::write(&client.options, "node_name = \"unterminated\n").unwrap();
    let out = client.run(&["query", "session"]);
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("tandem.toml"), "{}", stderr(&out));

    std::fs::write(
        &client.options,
        "server_address = \"http://127.0.0.1:1\"\npassword = \"p\"\n",
    )
    .unwrap();
    let out = client.run(&["query", "session"]);
    assert!(stderr(&out).contains("node_name"), "{}", stderr(&out));

    let out = std::process::Command::new(bin("tandem"))
        .args(["--options", "/nonexistent/tandem.toml", "query", "session"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 12);
    assert!(
        stderr(&out).contains("/nonexistent/tandem.toml") && stderr(&out).contains("not found")
    );
}

#[test]
fn bad_patterns_and_arguments_are_refused_before_logon() {
    let server = TestServer::start("PRIMARY");
    server.register("fay", "fay-password");
    let client = TestClient::new(&server, "fay", "fay-password");
    for (args, needle) in [
        (vec!["restore", "/da*ta/x"], "last component"),
        (vec!["restore", "/data/[z"], "invalid"),
        (vec!["query", "backup", "/tmp/[a"], "invalid"),
        (
            vec!["restore", "/data/x", "--pitdate", "last tuesday"],
            "last tuesday",
        ),
        (
            vec!["set", "password", "fay-password", "short"],
            "too short",
        ),
    ] {
        let out = client.run(&args);
        assert_eq!(code(&out), 12, "{args:?}");
        assert!(
            stderr(&out).contains("TDM1006E") && stderr(&out).contains(needle),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = client.run(&["restore", "/data/x", "--replace", "sometimes"]);
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("sometimes"));
}

#[test]
fn set_password_changes_the_logon_password() {
    let server = TestServer::start("PRIMARY");
    server.register("gus", "gus-password");
    let dir = tempfile::tempdir().unwrap();
    let client = TestClient::new(&server, "gus", "unused");
    std::fs::write(dir.path().join("pw"), "gus-password\n").unwrap();
    let text = std::fs::read_to_string(&client.options).unwrap().replace(
        "password = \"unused\"",
        &format!("password_file = \"{}\"", path_str(&dir.path().join("pw"))),
    );
    std::fs::write(&client.options, text).unwrap();
    assert_success(
        &client.run(&["set", "password", "gus-password", "new-gus-password"]),
        "set password",
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("pw"))
            .unwrap()
            .trim(),
        "new-gus-password"
    );
    assert_success(
        &client.run(&["query", "session"]),
        "logon with the new password",
    );
    let out = client.run(&["set", "password", "wrong-old-pw", "another-password"]);
    assert_eq!(code(&out), 12);
}

#[test]
fn admin_console_checks_its_token_and_input() {
    let server = TestServer::start("PRIMARY");
    let out = std::process::Command::new(bin("tandem-admin"))
        .args([
            "--server",
            &server.url(),
            "--token-file",
            "/nonexistent/admin.token",
            "query",
            "node",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("admin token"), "{}", stderr(&out));

    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "0000\n").unwrap();
    let out = server.admin_with_token(&wrong, &["query", "node"]);
    assert_eq!(code(&out), 12);
    assert!(
        stderr(&out).contains("admin token wrong"),
        "{}",
        stderr(&out)
    );
    let log = String::from_utf8_lossy(&server.admin(&["query", "actlog"]).stdout).into_owned();
    assert!(log.contains("TDM0501W"), "{log}");

    server.register("hal", "hal-password");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "another-pw\n").unwrap();
    let dup = server.admin(&["register", "node", "HAL", "--password-file", &path_str(&pw)]);
    assert_eq!(code(&dup), 12);
    assert!(stderr(&dup).contains("already registered"));
    let bad_name = server.admin(&[
        "register",
        "node",
        "bad name",
        "--password-file",
        &path_str(&pw),
    ]);
    assert!(
        stderr(&bad_name).contains("not valid"),
        "{}",
        stderr(&bad_name)
    );
    std::fs::write(&pw, "short\n").unwrap();
    let short = server.admin(&["register", "node", "ivy", "--password-file", &path_str(&pw)]);
    assert!(stderr(&short).contains("too short"), "{}", stderr(&short));

    let upd = server.admin(&[
        "--json",
        "update",
        "node",
        "hal",
        "--verexists",
        "5",
        "--retonly",
        "90",
    ]);
    assert_success(&upd, "update node");
    let node: serde_json::Value = serde_json::from_slice(&upd.stdout).unwrap();
    assert_eq!(node[0]["verexists"], 5);
    assert_eq!(node[0]["retonly"], 90);
    assert_eq!(
        code(&server.admin(&["update", "node", "hal"])),
        12,
        "an update with nothing to change is refused"
    );
    assert_eq!(
        code(&server.admin(&["update", "node", "nobody", "--lock"])),
        12
    );
    assert_success(&server.admin(&["remove", "node", "hal"]), "remove node");
    let remaining = String::from_utf8_lossy(&server.admin(&["query", "node"]).stdout).into_owned();
    assert!(!remaining.contains("HAL"), "{remaining}");
}

#[test]
fn a_node_with_data_cannot_be_removed() {
    let server = TestServer::start("PRIMARY");
    server.register("jon", "jon-password");
    let client = TestClient::new(&server, "jon", "jon-password");
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("f"), "x").unwrap();
    client.json(&["incremental", &path_str(work.path())]);
    let out = server.admin(&["remove", "node", "jon"]);
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("filespace"), "{}", stderr(&out));
}

#[test]
fn query_session_on_the_admin_console_lists_open_sessions() {
    let server = TestServer::start("PRIMARY");
    let out = server.admin(&["--json", "query", "session"]);
    assert_success(&out, "query session");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.as_array().unwrap().is_empty());
}

#[test]
fn a_changed_inline_password_is_written_back_to_the_options_file() {
    let server = TestServer::start("PRIMARY");
    server.register("hal", "hal-password");
    let client = TestClient::new(&server, "hal", "hal-password");
    let out = client.run(&["set", "password", "hal-password", "new-hal-password"]);
    assert_success(&out, "set password");
    assert!(stderr(&out).contains("TDM1030I"), "{}", stderr(&out));
    let text = std::fs::read_to_string(&client.options).unwrap();
    assert!(text.contains("password = \"new-hal-password\""), "{text}");
    assert!(
        text.starts_with("# test client"),
        "the rest is kept: {text}"
    );
    assert_success(
        &client.run(&["query", "session"]),
        "the next command logs on with the new password",
    );
}
