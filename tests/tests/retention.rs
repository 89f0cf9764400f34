//! Versions, retention policy, expiration, reclamation and point-in-time restore.

use std::time::Duration;

use tandem_tests::*;

/// `date` output for an offset like "+31 days", as RFC 3339 UTC.
fn date(offset: &str) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", offset, "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn versions(client: &TestClient, path: &std::path::Path) -> Vec<String> {
    let out = client.run(&["--json", "query", "backup", &path_str(path), "--inactive"]);
    assert!(matches!(code(&out), 0 | 4), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap().to_string())
        .collect()
}

fn setup(node: &str) -> (TestServer, TestClient, tempfile::TempDir) {
    let server = TestServer::start("PRIMARY");
    server.register(node, "node-password");
    let client = TestClient::new(&server, node, "node-password");
    (server, client, tempfile::tempdir().unwrap())
}

#[test]
fn point_in_time_restore_across_three_versions() {
    let (server, client, work) = setup("pit");
    // The default VEREXISTS (2) would retire the first of three versions.
    assert_success(
        &server.admin(&["update", "node", "pit", "--verexists", "3"]),
        "policy",
    );
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let mut marks = Vec::new();
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        std::fs::write(src.join("f.txt"), format!("version {text}\n")).unwrap();
        if i == 1 {
            std::fs::write(src.join("sub/only-in-two.txt"), "2\n").unwrap();
        }
        if i == 2 {
            std::fs::remove_file(src.join("sub/only-in-two.txt")).unwrap();
        }
        client.json(&["incremental", &path_str(&src)]);
        std::thread::sleep(Duration::from_millis(1100));
        marks.push(date("now"));
        std::thread::sleep(Duration::from_millis(1100));
    }
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        let out = work.path().join(format!("at-{i}"));
        client.json(&[
            "restore",
            &format!("{}/*", path_str(&src)),
            &path_str(&out),
            "--subdir",
            "--pitdate",
            &marks[i],
        ]);
        assert_eq!(
            std::fs::read_to_string(out.join("f.txt")).unwrap(),
            format!("version {text}\n")
        );
        assert_eq!(
            out.join("sub/only-in-two.txt").exists(),
            i == 1,
            "tree as it was at mark {i}"
        );
    }
    // Before the first backup nothing existed.
    let out = client.run(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&work.path().join("before")),
        "--pitdate",
        "2000-01-01",
    ]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("TDM1024W"));
}

#[test]
fn version_limits_apply_when_versions_arrive() {
    let (server, client, work) = setup("ver");
    assert_success(
        &server.admin(&[
            "update",
            "node",
            "ver",
            "--verexists",
            "3",
            "--verdeleted",
            "1",
        ]),
        "policy",
    );
    let file = work.path().join("f.txt");
    for i in 0..5 {
        std::fs::write(&file, format!("v{i}\n")).unwrap();
        client.json(&["selective", &path_str(&file)]);
    }
    assert_eq!(
        versions(&client, &file),
        ["inactive", "inactive", "active"],
        "VEREXISTS 3 keeps three versions"
    );
    let listed = client.json(&["query", "backup", &path_str(&file), "--inactive"]);
    assert_eq!(listed.as_array().unwrap().last().unwrap()["size"], 3);

    // Deleting the file leaves VERDELETED (1) inactive version: the newest.
    std::fs::remove_file(&file).unwrap();
    client.json(&["incremental", &path_str(work.path())]);
    assert_eq!(versions(&client, &file), ["inactive"]);
    let out = work.path().join("out");
    client.json(&["restore", &path_str(&file), &path_str(&out), "--inactive"]);
    assert_eq!(std::fs::read_to_string(out.join("f.txt")).unwrap(), "v4\n");
}

#[test]
fn expiration_applies_retextra_and_retonly() {
    let (server, client, work) = setup("ret");
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("kept.txt"), "old\n").unwrap();
    std::fs::write(src.join("gone.txt"), "last words\n").unwrap();
    client.json(&["incremental", &path_str(&src)]);
    std::fs::write(src.join("kept.txt"), "new, longer\n").unwrap();
    std::fs::remove_file(src.join("gone.txt")).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    assert_eq!(
        versions(&client, &src.join("kept.txt")),
        ["inactive", "active"]
    );
    assert_eq!(versions(&client, &src.join("gone.txt")), ["inactive"]);

    // Today nothing has run out (RETEXTRA 30, RETONLY 60 by default).
    let r: serde_json::Value =
        serde_json::from_slice(&server.admin(&["--json", "expire", "inventory"]).stdout).unwrap();
    assert_eq!(r["versions_expired"], 0, "{r}");
    // A preview of 31 days on lists what would go and deletes nothing.
    let preview: serde_json::Value = serde_json::from_slice(
        &server
            .admin(&[
                "--json",
                "expire",
                "inventory",
                "--now",
                &date("+31 days"),
                "--preview",
            ])
            .stdout,
    )
    .unwrap();
    assert_eq!(preview["preview"], true, "{preview}");
    assert_eq!(preview["versions"], 2, "{preview}");
    let listed: Vec<&str> = preview["listed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap())
        .collect();
    let kept = path_str(&src.join("kept.txt"));
    assert!(listed.contains(&kept.as_str()), "{listed:?}");
    assert!(preview["logical_bytes"].as_u64().unwrap() >= 4, "{preview}");
    assert!(
        preview["listed"][0]["inactive_since"].is_string(),
        "{preview}"
    );
    assert_eq!(
        versions(&client, &src.join("kept.txt")),
        ["inactive", "active"],
        "a preview deletes nothing"
    );
    let table = server.admin(&[
        "expire",
        "inventory",
        "--now",
        &date("+31 days"),
        "--preview",
    ]);
    assert_success(&table, "preview as a table");
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("Nothing was deleted"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );
    // --limit goes only with --preview, so a typo cannot turn into a deletion.
    let refused = server.admin(&["expire", "inventory", "--limit", "5"]);
    assert_eq!(code(&refused), 12, "{}", stderr(&refused));
    assert_eq!(
        versions(&client, &src.join("kept.txt")),
        ["inactive", "active"]
    );
    // In 31 days the extra version of kept.txt is gone, the deleted file's last version stays.
    let r: serde_json::Value = serde_json::from_slice(
        &server
            .admin(&["--json", "expire", "inventory", "--now", &date("+31 days")])
            .stdout,
    )
    .unwrap();
    assert_eq!(
        r["versions_expired"], 2,
        "kept.txt and the directory's old version: {r}"
    );
    assert_eq!(versions(&client, &src.join("kept.txt")), ["active"]);
    assert_eq!(versions(&client, &src.join("gone.txt")), ["inactive"]);
    // In 61 days RETONLY has run out too.
    let r: serde_json::Value = serde_json::from_slice(
        &server
            .admin(&["--json", "expire", "inventory", "--now", &date("+61 days")])
            .stdout,
    )
    .unwrap();
    assert_eq!(r["versions_expired"], 1, "{r}");
    assert!(versions(&client, &src.join("gone.txt")).is_empty());
    assert_eq!(
        versions(&client, &src.join("kept.txt")),
        ["active"],
        "active versions never expire"
    );
    let log = String::from_utf8_lossy(
        &server
            .admin(&["query", "actlog", "--search", "expiration"])
            .stdout,
    )
    .into_owned();
    assert!(log.contains("TDM0420I"), "{log}");
}

#[test]
fn expiring_a_deleted_large_file_gives_the_space_back() {
    let (server, client, work) = setup("space");
    assert_success(
        &server.admin(&["update", "node", "space", "--verdeleted", "0"]),
        "policy",
    );
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("keep.bin"), random_bytes(5, 3 << 20)).unwrap();
    std::fs::write(src.join("big.bin"), random_bytes(6, 200 << 20)).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    let before = server.container_bytes();
    assert!(before > 200 << 20);
    std::fs::remove_file(src.join("big.bin")).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    // The preview counts the deleted file's chunks as what would be freed.
    let pending = server.container_bytes();
    let preview: serde_json::Value = serde_json::from_slice(
        &server
            .admin(&["--json", "expire", "inventory", "--preview"])
            .stdout,
    )
    .unwrap();
    assert_eq!(preview["versions"], 1, "{preview}");
    assert_eq!(preview["logical_bytes"], 200u64 << 20, "{preview}");
    let stored = preview["stored_bytes"].as_u64().unwrap();
    assert!(
        stored >= 190 << 20,
        "random data stores near its size: {preview}"
    );
    assert_eq!(server.container_bytes(), pending, "a preview frees nothing");
    let r: serde_json::Value =
        serde_json::from_slice(&server.admin(&["--json", "expire", "inventory"]).stdout).unwrap();
    let after = server.container_bytes();
    eprintln!("containers: {before} bytes before, {after} after; {r}");
    assert!(
        before - after >= 150 << 20,
        "freed only {} bytes",
        before - after
    );
    assert_eq!(r["versions_expired"], 1);
    // What stays live survived the compaction.
    let out = work.path().join("out");
    client.json(&["restore", &format!("{}/*", path_str(&src)), &path_str(&out)]);
    assert_eq!(
        std::fs::read(out.join("keep.bin")).unwrap(),
        random_bytes(5, 3 << 20)
    );
}

#[test]
fn kill_during_expiration_loses_no_live_data() {
    let (mut server, client, work) = setup("crash");
    assert_success(
        &server.admin(&["update", "node", "crash", "--verdeleted", "0"]),
        "policy",
    );
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Interleave live and dead data in the same containers, so expiration has
    // to copy live chunks (compaction) and not only drop whole files.
    for i in 0..12u64 {
        std::fs::write(
            src.join(format!("live-{i}.bin")),
            random_bytes(100 + i, 4 << 20),
        )
        .unwrap();
        std::fs::write(
            src.join(format!("dead-{i}.bin")),
            random_bytes(200 + i, 12 << 20),
        )
        .unwrap();
    }
    client.json(&["incremental", &path_str(&src)]);
    for i in 0..12u64 {
        std::fs::remove_file(src.join(format!("dead-{i}.bin"))).unwrap();
    }
    client.json(&["incremental", &path_str(&src)]);

    for delay_ms in [30u64, 120, 400] {
        let admin = std::process::Command::new(bin("tandem-admin"))
            .args(["--server", &server.url(), "--token-file"])
            .arg(server.data.path().join("admin.token"))
            .args(["expire", "inventory"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        server.kill();
        let _ = admin.wait_with_output();
        server.restart();
        let out = work.path().join(format!("after-{delay_ms}"));
        let r = client.json(&["restore", &format!("{}/*", path_str(&src)), &path_str(&out)]);
        assert_eq!(r["failed"], 0, "{r}");
        assert_same_tree(&src, &out);
    }
    // A complete run afterwards finishes the job.
    assert_success(
        &server.admin(&["expire", "inventory"]),
        "expire after crashes",
    );
    assert!(
        server.container_bytes() < 80 << 20,
        "dead data is reclaimed in the end"
    );
    let out = work.path().join("final");
    client.json(&["restore", &format!("{}/*", path_str(&src)), &path_str(&out)]);
    assert_same_tree(&src, &out);
}

#[test]
fn delete_filespace_needs_confirmation_and_removes_everything() {
    let (server, client, work) = setup("fsdel");
    let src = work.path().join("src");
    make_tree(&src);
    client.json(&["incremental", &path_str(&src)]);
    let fs = client.json(&["query", "filespace"]);
    let name = fs[0]["name"].as_str().unwrap().to_string();

    let out = server.admin(&["delete", "filespace", "fsdel", &name]);
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    let out = server.admin(&[
        "--json",
        "delete",
        "filespace",
        "fsdel",
        "/no/such/fs",
        "--yes",
    ]);
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("no filespace"), "{}", stderr(&out));

    let out = server.admin(&["--json", "delete", "filespace", "fsdel", &name, "--yes"]);
    assert_success(&out, "delete filespace");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["versions_deleted"].as_u64().unwrap() > 40, "{r}");
    assert!(
        client
            .json(&["query", "filespace"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(server.container_bytes() < 1 << 20, "the space comes back");
    assert_success(
        &server.admin(&["remove", "node", "fsdel"]),
        "a node without filespaces can be removed",
    );
}

#[test]
fn query_options_shows_values_and_sources() {
    let (_server, client, _work) = setup("opts");
    client.add_options("domain = [\"/srv/data\"]\nexclude = [\"*.tmp\"]\n");
    let out = std::process::Command::new(bin("tandem"))
        .args([
            "--options",
            &path_str(&client.options),
            "--json",
            "query",
            "options",
        ])
        .env("TANDEM_LOGON_RETRIES", "5")
        .output()
        .unwrap();
    assert_success(&out, "query options");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |k: &str| {
        v["options"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["key"] == k)
            .unwrap()
            .clone()
    };
    assert_eq!(find("domain")["value"], "/srv/data");
    assert_eq!(find("domain")["source"], "file");
    assert_eq!(find("logon_retries")["value"], "5");
    assert_eq!(find("logon_retries")["source"], "env TANDEM_LOGON_RETRIES");
    assert_eq!(find("error_log_max_mb")["source"], "default");
    assert_eq!(find("password")["value"], "***");
}
