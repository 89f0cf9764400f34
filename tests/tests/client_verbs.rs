//! The client verbs a TSM user reaches for in the first week (issue 20):
//! short aliases, `restore --latest`, `--fromdate`/`--todate`, and
//! `delete backup`, against real processes.

use tandem_tests::*;

/// Node `bea` on a fresh server, her client, and a work directory.
fn setup() -> (TestServer, TestClient, tempfile::TempDir) {
    let server = TestServer::start("PRIMARY");
    server.register("bea", "bea-password");
    let client = TestClient::new(&server, "bea", "bea-password");
    (server, client, tempfile::tempdir().unwrap())
}

/// `(state, backup_time)` of each stored version of `path`, oldest first.
fn versions(client: &TestClient, path: &std::path::Path, extra: &[&str]) -> Vec<(String, String)> {
    let mut args = vec!["--json", "query", "backup"];
    let shown = path_str(path);
    args.push(&shown);
    args.push("--inactive");
    args.extend_from_slice(extra);
    let out = client.run(&args);
    assert!(matches!(code(&out), 0 | 4), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["state"].as_str().unwrap().to_string(),
                r["backup_time"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn tsm_short_verbs_work() {
    let (_server, client, work) = setup();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "a\n").unwrap();
    let backed = client.json(&["i", &path_str(&src)]);
    assert_eq!(backed["backed_up"], 2, "{backed}");
    client.json(&["sel", &path_str(&src.join("a.txt"))]);
    let listed = client.json(&["q", "b", &path_str(&src.join("a.txt"))]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(client.json(&["q", "fi"]).as_array().unwrap().len(), 1);
    assert_eq!(client.json(&["q", "se"])["node"], "BEA");
    let out = work.path().join("out");
    let restored = client.json(&["rest", &path_str(&src.join("a.txt")), &path_str(&out)]);
    assert_eq!(restored["restored"], 1, "{restored}");
    assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "a\n");
}

#[test]
fn restore_latest_brings_back_a_file_deleted_since() {
    let (_server, client, work) = setup();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("gone.txt"), "last words\n").unwrap();
    client.json(&["incremental", &path_str(&src)]);
    std::fs::remove_file(src.join("gone.txt")).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    let file = path_str(&src.join("gone.txt"));
    let out = work.path().join("out");
    // Only inactive versions remain: a plain restore finds nothing.
    let plain = client.run(&["restore", &file, &path_str(&out)]);
    assert_eq!(code(&plain), 4, "{}", stderr(&plain));
    let latest = client.json(&["restore", &file, &path_str(&out), "--latest"]);
    assert_eq!(latest["restored"], 1, "{latest}");
    assert_eq!(
        std::fs::read_to_string(out.join("gone.txt")).unwrap(),
        "last words\n"
    );
    let both = client.run(&["restore", &file, "--latest", "--pitdate", "2026-01-01"]);
    assert_eq!(code(&both), 12, "--latest and --pitdate exclude each other");
}

#[test]
fn fromdate_and_todate_pick_versions_by_backup_time() {
    let (_server, client, work) = setup();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let file = src.join("f.txt");
    std::fs::write(&file, "one\n").unwrap();
    client.json(&["incremental", &path_str(&src)]);
    std::fs::write(&file, "two, longer\n").unwrap();
    client.json(&["incremental", &path_str(&src)]);
    let all = versions(&client, &file, &[]);
    assert_eq!(all.len(), 2, "{all:?}");
    let (first, second) = (&all[0].1, &all[1].1);
    assert_ne!(first, second, "two backups in one millisecond");

    // Times as query backup shows them in JSON (to the millisecond).
    assert_eq!(
        versions(&client, &file, &["--todate", first]),
        [all[0].clone()]
    );
    assert_eq!(
        versions(&client, &file, &["--fromdate", second]),
        [all[1].clone()]
    );
    assert_eq!(
        versions(&client, &file, &["--fromdate", first, "--todate", second]),
        all
    );

    // A restore up to the first backup gets the first content back,
    // although it is inactive now.
    let out = work.path().join("out");
    let r = client.json(&[
        "restore",
        &path_str(&file),
        &path_str(&out),
        "--todate",
        first,
    ]);
    assert_eq!(r["restored"], 1, "{r}");
    assert_eq!(std::fs::read_to_string(out.join("f.txt")).unwrap(), "one\n");

    let backward = client.run(&[
        "query",
        "backup",
        &path_str(&file),
        "--fromdate",
        second,
        "--todate",
        first,
    ]);
    assert_eq!(code(&backward), 12);
    assert!(
        stderr(&backward).contains("is before --fromdate"),
        "{}",
        stderr(&backward)
    );
}

#[test]
fn delete_backup_removes_what_deltype_names_and_asks_first() {
    let (server, client, work) = setup();
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let file = src.join("sub").join("f.txt");
    std::fs::write(&file, "one\n").unwrap();
    std::fs::write(src.join("keep.txt"), "keep\n").unwrap();
    client.json(&["incremental", &path_str(&src)]);
    std::fs::write(&file, "two, longer\n").unwrap();
    client.json(&["incremental", &path_str(&src)]);
    assert_eq!(versions(&client, &file, &[]).len(), 2);
    let pattern = format!("{}/*", path_str(&src.join("sub")));

    // Without --yes and without a terminal to ask on, nothing happens.
    let unasked = client.run(&["delete", "backup", &pattern, "--deltype", "all"]);
    assert_eq!(code(&unasked), 12, "{}", stderr(&unasked));
    assert!(stderr(&unasked).contains("--yes"), "{}", stderr(&unasked));
    assert_eq!(versions(&client, &file, &[]).len(), 2);

    let inactive = client.json(&[
        "delete",
        "backup",
        &pattern,
        "--deltype",
        "inactive",
        "--yes",
    ]);
    assert_eq!(inactive["deleted"], 1, "{inactive}");
    let left = versions(&client, &file, &[]);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0, "active");

    let active = client.json(&["del", "ba", &pattern, "--yes"]);
    assert_eq!(active["deactivated"], 1, "{active}");
    assert_eq!(versions(&client, &file, &[])[0].0, "inactive");

    let all = client.json(&[
        "delete",
        "backup",
        &format!("{}/*", path_str(&src)),
        "--subdir",
        "--deltype",
        "all",
        "--yes",
    ]);
    assert!(all["deleted"].as_u64().unwrap() >= 3, "{all}");
    assert!(versions(&client, &file, &[]).is_empty());
    assert!(versions(&client, &src.join("keep.txt"), &[]).is_empty());
    let log = server.actlog();
    assert!(log.contains("TDM0422I"), "{log}");

    // Nothing left to match: a warning, not an error.
    let nothing = client.run(&["delete", "backup", &pattern, "--yes"]);
    assert_eq!(code(&nothing), 4, "{}", stderr(&nothing));
}

#[test]
fn expire_makes_files_inactive_and_leaves_them_on_disk() {
    let (_server, client, work) = setup();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let file = src.join("old.log");
    std::fs::write(&file, "old\n").unwrap();
    client.json(&["incremental", &path_str(&src)]);
    let unasked = client.run(&["expire", &path_str(&file)]);
    assert_eq!(code(&unasked), 12, "{}", stderr(&unasked));
    assert!(
        stderr(&unasked).contains("expire asks for confirmation"),
        "{}",
        stderr(&unasked)
    );
    let expired = client.json(&["expire", &path_str(&file), "--yes"]);
    assert_eq!(expired["deactivated"], 1, "{expired}");
    assert_eq!(versions(&client, &file, &[])[0].0, "inactive");
    assert!(file.exists(), "the local file stays");
}

#[test]
fn include_exclude_and_exclude_dir_decide_what_is_backed_up() {
    let (_server, client, work) = setup();
    let src = work.path().join("src");
    for p in [
        "data/keep/a.txt",
        "data/drop/b.txt",
        "data/c.txt",
        "home/.cache/x",
        "home/notes.txt",
        "home/.cache.txt",
    ] {
        let p = src.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, p.to_string_lossy().as_bytes()).unwrap();
    }
    let root = path_str(&src);
    client.add_options(&format!(
        "exclude = [\"{root}/data/**\"]\ninclude = [\"{root}/data/keep\", \"{root}/data/keep/**\"]\nexclude_dir = [\"**/.cache\"]\n"
    ));

    // The list, and what it decides, before anything is sent.
    let listed = client.json(&[
        "query",
        "inclexcl",
        "--test",
        &format!("{root}/data/keep/a.txt"),
        "--test",
        &format!("{root}/data/c.txt"),
        "--test",
        &format!("{root}/home/.cache"),
        "--test",
        &format!("{root}/home/.cache/x"),
        "--test",
        &format!("{root}/data/drop/b.txt"),
    ]);
    let kinds: Vec<_> = listed["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["exclude_dir", "include", "include", "exclude"],
        "{listed}"
    );
    let tests = listed["tests"].as_array().unwrap();
    assert_eq!(tests[0]["backed_up"], true, "{listed}");
    assert_eq!(tests[0]["rule"]["kind"], "include");
    assert_eq!(tests[1]["backed_up"], false);
    assert_eq!(tests[1]["rule"]["kind"], "exclude");
    assert_eq!(tests[2]["backed_up"], false);
    assert_eq!(tests[2]["rule"]["kind"], "exclude_dir");
    // Below an excluded directory: left out with it, by its rule.
    assert_eq!(tests[3]["backed_up"], false, "{listed}");
    assert_eq!(tests[3]["rule"]["kind"], "exclude_dir");
    assert_eq!(tests[4]["backed_up"], false, "{listed}");
    assert_eq!(tests[4]["rule"]["pattern"], format!("{root}/data/**"));

    // The preview sends nothing and names what a backup would send.
    let preview = client.json(&["incremental", &root, "--preview"]);
    let planned: Vec<String> = preview["would_send"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["path"]
                .as_str()
                .unwrap()
                .strip_prefix(&root)
                .unwrap()
                .to_string()
        })
        .collect();
    let expected = [
        "",
        "/data",
        "/data/keep",
        "/data/keep/a.txt",
        "/home",
        "/home/.cache.txt",
        "/home/notes.txt",
    ];
    assert_eq!(planned, expected, "{preview}");
    assert!(preview["would_send"][0]["new"].as_bool().unwrap());
    assert_eq!(
        client.json(&["query", "filespace"]),
        serde_json::json!([]),
        "nothing stored"
    );

    let backed = client.json(&["incremental", &root]);
    assert_eq!(backed["backed_up"], expected.len(), "{backed}");
    let stored = client.json(&["query", "backup", &format!("{root}/*"), "--subdir"]);
    let mut stored: Vec<String> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["path"]
                .as_str()
                .unwrap()
                .strip_prefix(&root)
                .unwrap()
                .to_string()
        })
        .collect();
    stored.sort();
    assert_eq!(stored, expected[1..], "the same as the preview said");

    // A change and a deletion: the preview says changed and deactivate.
    std::fs::write(src.join("home/notes.txt"), "longer notes now\n").unwrap();
    std::fs::remove_file(src.join("home/.cache.txt")).unwrap();
    let preview = client.json(&["i", &root, "--preview"]);
    let changed: Vec<_> = preview["would_send"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "file")
        .collect();
    assert_eq!(changed.len(), 1, "{preview}");
    assert_eq!(changed[0]["new"], false);
    assert_eq!(
        preview["would_deactivate"],
        serde_json::json!([format!("{root}/home/.cache.txt")])
    );
    let after = client.json(&["query", "backup", &format!("{root}/home/*")]);
    assert_eq!(
        after.as_array().unwrap().len(),
        2,
        "the preview changed nothing: {after}"
    );

    // A root inside an excluded directory: said, and nothing sent.
    let inside = client.run(&["--json", "incremental", &format!("{root}/home/.cache")]);
    assert_eq!(code(&inside), 8, "{}", stderr(&inside));
    assert!(stderr(&inside).contains("TDM1018W"), "{}", stderr(&inside));
    assert_eq!(
        client
            .json(&["query", "filespace"])
            .as_array()
            .unwrap()
            .len(),
        1,
        "no filespace for the excluded root"
    );

    // A directory newly excluded: its stored versions become inactive.
    let options = std::fs::read_to_string(&client.options).unwrap();
    std::fs::write(
        &client.options,
        options.replace(
            "exclude_dir = [\"**/.cache\"]",
            "exclude_dir = [\"**/.cache\", \"**/home\"]",
        ),
    )
    .unwrap();
    let backed = client.json(&["incremental", &root]);
    assert!(backed["deactivated"].as_u64().unwrap() >= 2, "{backed}");
    let active = client.run(&["--json", "query", "backup", &format!("{root}/home/*")]);
    assert_eq!(code(&active), 4, "nothing matches: {}", stderr(&active));
    assert!(
        stderr(&active).contains("TDM1024W"),
        "nothing under home is active: {}",
        stderr(&active)
    );
}

#[test]
fn with_json_the_clients_errors_are_json_too() {
    let (_server, client, _work) = setup();
    let parse = client.run(&["--json", "query", "nonsense"]);
    assert_eq!(code(&parse), 12);
    let error: serde_json::Value = serde_json::from_str(stderr(&parse).trim())
        .unwrap_or_else(|e| panic!("{e}: {}", stderr(&parse)));
    assert_eq!(error["error"]["id"], "TDM1006E", "{error}");
    let incomplete = client.run(&["--json", "delete"]);
    let error: serde_json::Value = serde_json::from_str(stderr(&incomplete).trim())
        .unwrap_or_else(|e| panic!("{e}: {}", stderr(&incomplete)));
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("subcommand is missing"),
        "{error}"
    );
    let missing = client.run(&["--json", "query", "backup", "/no/such/thing/*"]);
    assert!(!stderr(&missing).is_empty(), "a warning is printed");
    for line in stderr(&missing).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v.get("warning")
                .or(v.get("error"))
                .or(v.get("info"))
                .is_some(),
            "{v}"
        );
    }
    client.add_options("exclude = [\"a[\"]\n");
    let bad = client.run(&["--json", "query", "inclexcl"]);
    assert_eq!(code(&bad), 12);
    let error: serde_json::Value = serde_json::from_str(stderr(&bad).trim())
        .unwrap_or_else(|e| panic!("{e}: {}", stderr(&bad)));
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exclude pattern \"a[\""),
        "{error}"
    );
}
