//! A storage pool per node (TSM's destination): real `tandem-server`
//! processes with a second pool (a local directory, or an S3 bucket on a
//! real `s3s-fs`), real clients whose nodes send their data to different
//! pools, `update node --pool`, expiration, audits and restarts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_proto::pb;
use tandem_tests::s3::S3Server;
use tandem_tests::{
    TestClient, TestServer, assert_success, container_files, damage_bytes_in, make_tree, path_str,
    random_bytes, raw_backup_session, repair_answer, stderr, wait_until, with_session,
};

/// A pool named TAPE in DATA_DIR/pools/TAPE, containers sealed at 1 MiB.
const TAPE: &[(&str, &str)] = &[
    ("TANDEM_SERVER_POOLS__TAPE__KIND", "local"),
    ("TANDEM_SERVER_POOLS__TAPE__CONTAINER_MIB", "1"),
];

/// Whether any container under `dir` holds `needle` (random data is
/// stored verbatim, in zstd's raw blocks).
fn holds(dir: &Path, needle: &[u8]) -> bool {
    container_files(dir).iter().any(|f| {
        std::fs::read(f)
            .unwrap_or_default()
            .windows(needle.len())
            .any(|w| w == needle)
    })
}

fn tape_dir(server: &TestServer) -> PathBuf {
    server.data_dir().join("pools").join("TAPE")
}

fn default_dir(server: &TestServer) -> PathBuf {
    server.data_dir().join("containers")
}

/// Registers `node` into `pool` (DEFAULT when `None`) and returns its client.
fn node_in(server: &TestServer, node: &str, pool: Option<&str>) -> TestClient {
    let pw = server.data_dir().join(format!("{node}.pw"));
    std::fs::write(&pw, "node-password\n").unwrap();
    let mut args = vec!["register", "node", node, "--password-file"];
    let pw = path_str(&pw);
    args.push(&pw);
    if let Some(pool) = pool {
        args.extend(["--pool", pool]);
    }
    assert_success(&server.admin(&args), "register node");
    TestClient::new(server, node, "node-password")
}

/// A tree with the usual test files and one incompressible file whose
/// first 4 KiB are returned, to find where its chunks went.
fn tree_with_marker(root: &Path, seed: u64) -> Vec<u8> {
    make_tree(root);
    let data = random_bytes(seed, 3 << 20);
    std::fs::write(root.join("marker.bin"), &data).unwrap();
    data[..4096].to_vec()
}

/// `move nodedata alice --from-pool default --to-pool TO`'s row (JSON).
fn move_alice(server: &TestServer, to: &str) -> serde_json::Value {
    let args = [
        "move",
        "nodedata",
        "alice",
        "--from-pool",
        "default",
        "--to-pool",
        to,
    ];
    server.admin_json(&args)[0].clone()
}

fn pool_rows(server: &TestServer) -> Vec<(String, u64)> {
    server
        .admin_json(&["query", "stgpool"])
        .as_array()
        .expect("rows")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["nodes"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn each_node_s_data_goes_to_its_own_pool_and_a_pool_change_moves_only_new_data() {
    let mut server = TestServer::start_with("POOLS", TAPE);
    let alice = node_in(&server, "alice", None);
    let bob = node_in(&server, "bob", Some("tape"));
    let work = tempfile::tempdir().unwrap();
    // The same data for both: each pool deduplicates only within itself.
    let (src_a, src_b) = (work.path().join("a"), work.path().join("b"));
    let marker = tree_with_marker(&src_a, 7);
    tree_with_marker(&src_b, 7);
    assert_success(&alice.run(&["incremental", &path_str(&src_a)]), "alice");
    assert_success(&bob.run(&["incremental", &path_str(&src_b)]), "bob");
    assert!(holds(&default_dir(&server), &marker), "alice's copy");
    assert!(holds(&tape_dir(&server), &marker), "bob's own copy in TAPE");
    assert_eq!(
        pool_rows(&server),
        [("DEFAULT".to_string(), 1), ("TAPE".to_string(), 1)]
    );
    let bob_row = &server.admin_json(&["query", "node", "bob"])[0];
    assert_eq!(bob_row["pool"], "TAPE", "{bob_row}");
    let tape = &server.admin_json(&["query", "stgpool", "Tape"])[0];
    assert_eq!(tape["kind"], "local");
    assert!(tape["local_bytes"].as_u64().unwrap() > 3 << 20, "{tape}");

    // Alice moves to TAPE: her new data goes there, her old stays.
    assert_success(
        &server.admin(&["update", "node", "alice", "--pool", "TAPE"]),
        "update node --pool",
    );
    let later = random_bytes(99, 2 << 20);
    std::fs::write(src_a.join("later.bin"), &later).unwrap();
    assert_success(
        &alice.run(&["incremental", &path_str(&src_a)]),
        "alice again",
    );
    assert!(holds(&tape_dir(&server), &later[..4096]));
    assert!(!holds(&default_dir(&server), &later[..4096]));
    let occupancy = &server.admin_json(&["query", "occupancy", "alice"])[0];
    assert_eq!(
        occupancy["pools"],
        serde_json::json!(["DEFAULT", "TAPE"]),
        "{occupancy}"
    );
    alice.restore_same(&src_a, &work.path().join("ra"));
    bob.restore_same(&src_b, &work.path().join("rb"));

    // A pool the configuration does not have is refused, naming those it has.
    let out = server.admin(&["update", "node", "alice", "--pool", "nosuch"]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("NOSUCH") && text.contains("DEFAULT, TAPE"),
        "{text}"
    );

    // Bob's data goes; expiration and compaction of both pools keep
    // Alice's, wherever it is.
    let filespace = bob.json(&["query", "filespace"])[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_success(
        &server.admin(&["delete", "filespace", "bob", &filespace, "--yes"]),
        "delete filespace",
    );
    assert_success(&server.admin(&["expire", "inventory"]), "expire");
    alice.restore_same(&src_a, &work.path().join("ra2"));
    let audit = &server.admin_json(&["audit", "pool"])[0];
    assert_eq!(audit["damaged"], 0, "{audit}");

    // A start without the pool that holds data is refused, and names it;
    // so is a catalog restore without it, which changes nothing.
    let copies = tempfile::tempdir().unwrap();
    let taken = server.admin_json(&["backup", "db", "--to", &path_str(copies.path())]);
    let copy = taken["path"].as_str().unwrap().to_string();
    server.stop();
    let out = server.restore_db_with(&copy, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("indexes data in storage pool TAPE")
            && stderr(&out).contains("Nothing was changed"),
        "{}",
        stderr(&out)
    );
    let refused = TestServer::try_start_in(server.data_dir(), "POOLS", &[]);
    assert!(
        refused.contains("TAPE") && refused.contains("[pools.TAPE]"),
        "{refused}"
    );
    server.restart();
    alice.restore_same(&src_a, &work.path().join("ra3"));
}

#[test]
fn a_node_in_an_s3_pool_has_its_containers_in_the_bucket_beside_a_local_default_pool() {
    let s3 = S3Server::start();
    let env: Vec<(String, String)> = s3
        .server_env(1)
        .into_iter()
        .map(|(k, v)| {
            (
                k.replace("TANDEM_SERVER_POOL__", "TANDEM_SERVER_POOLS__CLOUD__"),
                v,
            )
        })
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = TestServer::start_with("MIXED", &env);
    let alice = node_in(&server, "alice", None);
    let carol = node_in(&server, "carol", Some("cloud"));
    let work = tempfile::tempdir().unwrap();
    let (src_a, src_c) = (work.path().join("a"), work.path().join("c"));
    let marker_a = tree_with_marker(&src_a, 1);
    let marker_c = tree_with_marker(&src_c, 2);
    std::fs::write(src_c.join("more.bin"), random_bytes(3, 2 << 20)).unwrap();
    assert_success(&alice.run(&["incremental", &path_str(&src_a)]), "alice");
    assert_success(&carol.run(&["incremental", &path_str(&src_c)]), "carol");
    let staging = server.data_dir().join("pools").join("CLOUD");
    let offloaded = wait_until(Duration::from_secs(120), || {
        !s3.container_objects().is_empty() && container_files(&staging).len() == 1
    });
    assert!(
        offloaded,
        "CLOUD's sealed containers reach the bucket\n{}",
        server.log()
    );
    assert!(holds(&default_dir(&server), &marker_a));
    assert!(
        !holds(&default_dir(&server), &marker_c),
        "carol's data is not local"
    );
    let rows = server.admin_json(&["query", "stgpool"]);
    let cloud = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "CLOUD")
        .expect("CLOUD row");
    assert_eq!(cloud["kind"], "s3");
    assert!(cloud["remote_containers"].as_u64().unwrap() >= 2, "{cloud}");
    carol.restore_same(&src_c, &work.path().join("rc"));
    alice.restore_same(&src_a, &work.path().join("ra"));

    // Alice's data moves to the bucket: off the local disk once
    // expiration compacts DEFAULT, and restored from CLOUD.
    let uploaded_before = s3.container_objects().len();
    let moved = &move_alice(&server, "cloud");
    assert_eq!(moved["damaged"], 0, "{moved}");
    assert!(moved["removed"].as_u64().unwrap() > 0, "{moved}");
    assert_success(&server.admin(&["expire", "inventory"]), "expire");
    assert!(!holds(&default_dir(&server), &marker_a));
    let more = wait_until(Duration::from_secs(120), || {
        s3.container_objects().len() > uploaded_before
    });
    assert!(more, "Alice's copies reach the bucket\n{}", server.log());
    alice.restore_same(&src_a, &work.path().join("ra-cloud"));
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["DEFAULT", "CLOUD"]);
}

#[test]
fn a_pool_directory_is_never_shared_by_two_pools_or_two_servers() {
    let outside = tempfile::tempdir().unwrap();
    let tape = outside.path().join("tape");
    let dir = path_str(&tape);
    let env = [("TANDEM_SERVER_POOLS__TAPE__DIRECTORY", dir.as_str())];
    let server = TestServer::start_with("FIRST", &env);
    let alice = node_in(&server, "alice", Some("tape"));
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let marker = tree_with_marker(&src, 11);
    assert_success(&alice.run(&["incremental", &path_str(&src)]), "backup");
    assert!(
        holds(&tape, &marker),
        "alice's data is in the TAPE directory"
    );
    let mode = std::fs::metadata(&tape).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "made for the server's user alone");
    let sizes = |dir: &Path| -> Vec<(PathBuf, u64)> {
        container_files(dir)
            .into_iter()
            .map(|f| {
                let len = std::fs::metadata(&f).unwrap().len();
                (f, len)
            })
            .collect()
    };
    let before = sizes(&tape);

    // Another server given the same directory refuses to start, and cuts
    // nothing of what the first one stored there.
    let refused = TestServer::try_start_with("SECOND", &env);
    assert!(
        refused.contains("belongs to pool TAPE of the server with GUID"),
        "{refused}"
    );
    assert_eq!(sizes(&tape), before);
    alice.restore_same(&src, &work.path().join("out"));
    // Nor may a pool of another server take the first one's own containers.
    let theirs = path_str(&server.data_dir().join("containers"));
    let refused = TestServer::try_start_with(
        "FOURTH",
        &[("TANDEM_SERVER_POOLS__STOLEN__DIRECTORY", theirs.as_str())],
    );
    assert!(
        refused.contains("belongs to pool DEFAULT of the server with GUID"),
        "{refused}"
    );
    alice.restore_same(&src, &work.path().join("out-again"));

    // Two pools of one server on one directory, even by another path (a
    // symbolic link), are refused before either writes anything there.
    let twice = outside.path().join("twice");
    private_dir(&twice);
    let alias = outside.path().join("alias");
    std::os::unix::fs::symlink(&twice, &alias).unwrap();
    let (one, other) = (path_str(&twice), path_str(&alias));
    let refused = TestServer::try_start_with(
        "THIRD",
        &[
            ("TANDEM_SERVER_POOLS__ONE__DIRECTORY", one.as_str()),
            ("TANDEM_SERVER_POOLS__TWO__DIRECTORY", other.as_str()),
        ],
    );
    assert!(refused.contains("is pool ONE's too"), "{refused}");
    assert!(!twice.join("tandem-pool.json").exists());

    // A claim file that is not ours, and an unclaimed directory that
    // already holds containers, are refused and left as they were.
    let forged = outside.path().join("forged");
    private_dir(&forged);
    std::fs::write(forged.join("tandem-pool.json"), "{\"server_guid\": 7}").unwrap();
    let used = outside.path().join("used");
    private_dir(&used);
    std::fs::write(used.join("00000001.tdc"), b"someone else's records").unwrap();
    for (dir, wanted) in [
        (&forged, "is not a pool claim Tandem wrote"),
        (
            &used,
            "holds containers this server's catalog does not index",
        ),
    ] {
        let dir_text = path_str(dir);
        let refused = TestServer::try_start_with(
            "FIFTH",
            &[("TANDEM_SERVER_POOLS__X__DIRECTORY", dir_text.as_str())],
        );
        assert!(refused.contains(wanted), "{refused}");
    }
    assert_eq!(
        std::fs::read(used.join("00000001.tdc")).unwrap(),
        b"someone else's records"
    );
    assert_eq!(
        std::fs::read_to_string(forged.join("tandem-pool.json")).unwrap(),
        "{\"server_guid\": 7}"
    );
    // A pool directory others may enter, or one whose parent others may
    // write (they could put a directory of theirs in its place), is
    // refused before anything is written there.
    let refused_for = |dir: &Path| {
        let dir_text = path_str(dir);
        let refused = TestServer::try_start_with(
            "SIXTH",
            &[("TANDEM_SERVER_POOLS__X__DIRECTORY", dir_text.as_str())],
        );
        assert!(!dir.join("tandem-pool.json").exists(), "{refused}");
        refused
    };
    let open = outside.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o775)).unwrap();
    let refused = refused_for(&open);
    assert!(
        refused.contains(&format!("run `chmod go-w {}`", open.display())),
        "{refused}"
    );
    let below_open = open.join("pool");
    private_dir(&below_open);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = refused_for(&below_open);
    assert!(
        refused.contains(&format!("run `chmod go-w {}`", open.display())),
        "{refused}"
    );
    // A directory this server claimed that others may read but not write
    // (as earlier versions made them) is closed to them at the next start,
    // and used; an unclaimed one like it is refused.
    let readable = outside.path().join("readable");
    private_dir(&readable);
    let readable_text = path_str(&readable);
    let env = [("TANDEM_SERVER_POOLS__X__DIRECTORY", readable_text.as_str())];
    let mut claimed = TestServer::start_with("SEVENTH", &env);
    claimed.stop();
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o755)).unwrap();
    claimed.restart_with(&env);
    let mode = std::fs::metadata(&readable).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    drop(claimed);
    let unclaimed = outside.path().join("unclaimed");
    std::fs::create_dir(&unclaimed).unwrap();
    std::fs::set_permissions(&unclaimed, std::fs::Permissions::from_mode(0o755)).unwrap();
    let refused = refused_for(&unclaimed);
    assert!(
        refused.contains("is open to other users (mode 755)"),
        "{refused}"
    );
    // An unknown pool name in a query is refused with the pools there are.
    let out = server.admin(&["query", "stgpool", "nosuch"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("DEFAULT, TAPE"), "{}", stderr(&out));
}

#[test]
fn restore_db_finds_chunks_whose_only_copy_is_in_a_pool_made_after_the_catalog_copy() {
    let mut server = TestServer::start("LATER");
    let alice = node_in(&server, "alice", None);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let marker = tree_with_marker(&src, 31);
    assert_success(&alice.run(&["incremental", &path_str(&src)]), "backup");
    let copies = tempfile::tempdir().unwrap();
    let taken = server.admin_json(&["backup", "db", "--to", &path_str(copies.path())]);
    let copy = taken["path"].as_str().unwrap().to_string();

    // TAPE is added after the copy and Alice's data is stored there too
    // (the same files under another name); then DEFAULT's disk is lost.
    server.restart_with(TAPE);
    assert_success(
        &server.admin(&["update", "node", "alice", "--pool", "TAPE"]),
        "update node --pool",
    );
    let again = work.path().join("again");
    copy_tree(&src, &again);
    assert_success(&alice.run(&["incremental", &path_str(&again)]), "again");
    assert!(holds(&tape_dir(&server), &marker));
    server.stop();
    for lost in container_files(&default_dir(&server)) {
        std::fs::remove_file(lost).unwrap();
    }

    // A pool on a directory another server claimed is refused before any
    // directory is read, and nothing changes.
    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(
        foreign.path().join("tandem-pool.json"),
        r#"{"server_guid": "another server", "pool": "THEIRS"}"#,
    )
    .unwrap();
    let foreign_dir = path_str(foreign.path());
    let stray = [
        TAPE[0],
        TAPE[1],
        (
            "TANDEM_SERVER_POOLS__STRAY__DIRECTORY",
            foreign_dir.as_str(),
        ),
    ];
    let out = server.restore_db_with(&copy, &stray);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("belongs to pool THEIRS")
            && stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );

    // The copy indexes Alice's first backup in DEFAULT; every chunk of it
    // is found in TAPE and nothing is missing.
    let out = server.restore_db(&copy);
    assert_success(&out, "restore-db");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Chunks missing (freed since the copy): 0"),
        "{said}"
    );
    server.restart();
    alice.restore_same(&src, &work.path().join("out"));
}

/// Copies the files of the tree at `from` to `to` (directories and regular
/// files only, as `make_tree` makes them).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_damaged_copy_is_repaired_from_another_pool_s_whole_copy_without_a_partner() {
    let server = TestServer::start_with("TWINS", TAPE);
    let alice = node_in(&server, "alice", None);
    let bob = node_in(&server, "bob", Some("tape"));
    let work = tempfile::tempdir().unwrap();
    let (src_a, src_b) = (work.path().join("a"), work.path().join("b"));
    tree_with_marker(&src_a, 5);
    tree_with_marker(&src_b, 5);
    let victim = random_bytes(21, 300_000);
    std::fs::write(src_a.join("victim.bin"), &victim).unwrap();
    std::fs::write(src_b.join("victim.bin"), &victim).unwrap();
    assert_success(&alice.run(&["incremental", &path_str(&src_a)]), "alice");
    assert_success(&bob.run(&["incremental", &path_str(&src_b)]), "bob");
    let needle = &victim[100_000..100_064];

    // DEFAULT's copy is damaged: Alice's restore has it repaired from
    // TAPE's, with no replication partner defined at all.
    damage_bytes_in(&default_dir(&server), needle);
    let out = alice.run(&[
        "restore",
        &format!("{}/*", path_str(&src_a)),
        &path_str(&work.path().join("ra")),
    ]);
    assert_success(&out, "restore repaired from TAPE");
    let err = stderr(&out);
    assert!(
        err.contains("TDM1027I") && err.contains("storage pool(s) TAPE"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(work.path().join("ra/victim.bin")).unwrap(),
        victim
    );
    let actlog = server.actlog();
    assert!(
        actlog.contains("TDM0428I")
            && actlog.contains("storage pool TAPE of this server")
            && actlog.contains("victim.bin"),
        "{actlog}"
    );
    alice.restore_same(&src_a, &work.path().join("ra2"));

    // TAPE's copy is damaged: the pool audit finds it and --fix puts
    // DEFAULT's (repaired) copy in its place, in TAPE.
    damage_bytes_in(&tape_dir(&server), needle);
    let elsewhere = &server.admin_json(&["audit", "pool", "default"])[0];
    assert_eq!(elsewhere["scope"], "pool DEFAULT", "{elsewhere}");
    assert_eq!(elsewhere["damaged"], 0, "TAPE is not read: {elsewhere}");
    let found = server.admin(&["--json", "audit", "pool", "tape"]);
    assert_eq!(found.status.code(), Some(8), "{}", stderr(&found));
    let blank = server.admin(&["audit", "pool", " "]);
    assert!(!blank.status.success(), "a blank name is not every pool");
    let unknown = server.admin(&["audit", "pool", "nosuch"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("DEFAULT, TAPE"),
        "{}",
        stderr(&unknown)
    );
    let fixed = &server.admin_json(&["audit", "pool", "tape", "--fix"])[0];
    assert_eq!(fixed["repaired"], 1, "{fixed}");
    assert_eq!(fixed["unrepaired"], 0, "{fixed}");
    assert_eq!(
        fixed["files"],
        serde_json::json!([]),
        "no file is named as damaged once repaired: {fixed}"
    );
    let whole = &server.admin_json(&["audit", "pool"])[0];
    assert_eq!(whole["damaged"], 0, "{whole}");
    assert!(
        server
            .actlog()
            .contains("storage pool DEFAULT of this server"),
        "{}",
        server.actlog()
    );
    let out = bob.run(&[
        "restore",
        &format!("{}/*", path_str(&src_b)),
        &path_str(&work.path().join("rb")),
    ]);
    assert_success(&out, "bob's restore after the audit");
    assert!(!stderr(&out).contains("TDM1027I"), "{}", stderr(&out));
    bob.restore_same(&src_b, &work.path().join("rb2"));

    // Both copies damaged: nothing whole here and no partner, so the
    // restore names the file and says why.
    damage_bytes_in(&default_dir(&server), needle);
    damage_bytes_in(&tape_dir(&server), needle);
    let out = alice.run(&[
        "restore",
        &format!("{}/*", path_str(&src_a)),
        &path_str(&work.path().join("ra3")),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("TDM1028W")
            && err.contains("never been replicated")
            && err.contains("victim.bin"),
        "{err}"
    );
}

#[test]
fn move_nodedata_moves_a_node_s_own_data_and_leaves_what_another_node_shares() {
    let env = [TAPE[0], TAPE[1], ("TANDEM_SERVER_POOL__CONTAINER_MIB", "1")];
    let server = TestServer::start_with("MOVER", &env);
    let alice = node_in(&server, "alice", None);
    let bob = node_in(&server, "bob", None);
    let carol = node_in(&server, "carol", Some("tape"));
    let work = tempfile::tempdir().unwrap();
    let (src_a, src_b, src_c) = (
        work.path().join("a"),
        work.path().join("b"),
        work.path().join("c"),
    );
    let shared = tree_with_marker(&src_a, 41);
    tree_with_marker(&src_b, 41);
    let own = random_bytes(42, 3 << 20);
    std::fs::write(src_a.join("own.bin"), &own).unwrap();
    std::fs::create_dir_all(&src_c).unwrap();
    std::fs::write(src_c.join("same.bin"), &own).unwrap();
    assert_success(&alice.run(&["incremental", &path_str(&src_a)]), "alice");
    assert_success(&bob.run(&["incremental", &path_str(&src_b)]), "bob");
    assert_success(&carol.run(&["incremental", &path_str(&src_c)]), "carol");
    // TAPE's copy (Carol's) of a chunk Alice's data uses is damaged: the
    // move must not trust it, and writes a whole one in its place.
    let needle = &own[(1 << 20) + 100_000..(1 << 20) + 100_064];
    damage_bytes_in(&tape_dir(&server), needle);

    // Bad requests are refused, naming what was wrong; nothing moves.
    for (args, wanted) in [
        (
            vec!["--from-pool", "default", "--to-pool", "Default"],
            "both DEFAULT",
        ),
        (
            vec!["--from-pool", "default", "--to-pool", "nosuch"],
            "DEFAULT, TAPE",
        ),
        (vec!["--from-pool", "nosuch"], "DEFAULT, TAPE"),
        (
            vec!["--from-pool", "default", "--to-pool", " "],
            "an empty value names nothing",
        ),
        (
            vec!["--from-pool", "ta\u{1b}pe"],
            "is not a storage pool name",
        ),
    ] {
        let mut all = vec!["move", "nodedata", "alice"];
        all.extend(args);
        let out = server.admin(&all);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(wanted), "{}", stderr(&out));
    }
    let out = server.admin(&["move", "nodedata", "nobody", "--from-pool", "default"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("NOBODY"), "{}", stderr(&out));
    let out = server.admin(&["move", "nodedata", "alice", "--from-pool", "default"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("own pool is DEFAULT") && stderr(&out).contains("--to-pool"),
        "{}",
        stderr(&out)
    );

    let moved = &move_alice(&server, "tape");
    assert_eq!(moved["to_pool"], "TAPE", "{moved}");
    assert_eq!(moved["damaged"], 0, "{moved}");
    assert!(moved["copied"].as_u64().unwrap() > 0, "{moved}");
    assert!(moved["removed"].as_u64().unwrap() > 0, "{moved}");
    assert!(
        moved["shared"].as_u64().unwrap() > 0,
        "bob's chunks stay: {moved}"
    );
    assert!(
        moved["note"]
            .as_str()
            .unwrap()
            .contains("still sends new data to DEFAULT"),
        "{moved}"
    );
    assert!(
        holds(&tape_dir(&server), needle),
        "a whole copy was written"
    );
    assert!(holds(&tape_dir(&server), &shared));
    assert!(server.actlog().contains("TDM0434I"), "{}", server.actlog());
    carol.restore_same(&src_c, &work.path().join("rc"));

    // Expiration reclaims Alice's own data from DEFAULT; Bob's stays.
    assert_success(&server.admin(&["expire", "inventory"]), "expire");
    assert!(!holds(&default_dir(&server), &own[..4096]));
    assert!(holds(&default_dir(&server), &shared));
    alice.restore_same(&src_a, &work.path().join("ra"));
    bob.restore_same(&src_b, &work.path().join("rb"));
    let audit = &server.admin_json(&["audit", "pool"])[0];
    assert_eq!(audit["damaged"], 0, "{audit}");

    // A second run, to her own pool now, has nothing left to copy.
    assert_success(
        &server.admin(&["update", "node", "alice", "--pool", "tape"]),
        "update node --pool",
    );
    let again = &server.admin_json(&["move", "nodedata", "alice", "--from-pool", "default"])[0];
    assert_eq!(again["to_pool"], "TAPE", "{again}");
    assert_eq!(again["note"], "", "{again}");
    assert_eq!(again["copied"], 0, "{again}");
    assert_eq!(again["already"], again["chunks"], "{again}");
    assert_eq!(again["removed"], 0, "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repair_call_gives_no_node_a_chunk_it_never_held_in_any_pool() {
    let server = TestServer::start_with("GUARD", TAPE);
    let bob = node_in(&server, "bob", None);
    let carol = node_in(&server, "carol", Some("tape"));
    node_in(&server, "eve", Some("tape"));
    let work = tempfile::tempdir().unwrap();
    for (client, dir) in [(&bob, "b"), (&carol, "c")] {
        let src = work.path().join(dir);
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("pin"), b"4711").unwrap();
        assert_success(&client.run(&["incremental", &path_str(&src)]), dir);
    }
    // Both pools hold the chunk whole, for Bob and Carol. Eve, in TAPE
    // beside Carol's copy, asks for it as for a chunk nobody stored.
    let secret = tandem_proto::ChunkId::of(b"4711");
    let unknown = tandem_proto::ChunkId::of(b"nobody stored this");
    let (mut as_eve, token) = raw_backup_session(&server, "eve", "node-password").await;
    let mut answers = Vec::new();
    for id in [secret, unknown] {
        let reply = repair_answer(&mut as_eve, &token, id).await;
        assert!(reply.pools.is_empty(), "{reply:?}");
        assert!(reply.usable.is_empty(), "{reply:?}");
        answers.push((reply.intact, reply.repaired, reply.unrepaired, reply.reason));
    }
    assert_eq!(answers[0], answers[1], "{answers:?}");
    assert_eq!(answers[0].2, 1, "{answers:?}");
    // And she still cannot read it.
    let mut stream = as_eve
        .read_chunks(with_session(
            &token,
            pb::ReadChunksRequest {
                chunk_ids: vec![secret.as_slice().to_vec()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await;
    assert!(
        matches!(&first, Err(status) if status.code() == tonic::Code::NotFound),
        "{first:?}"
    );
}

/// DEFAULT in a bucket and TAPE on the local disk: while the bucket does
/// not answer, a restore reads the chunks TAPE also holds from TAPE (and
/// says so in the activity log); a file whose only copy is in the bucket
/// fails naming the pool, and restores once the bucket is back.
#[test]
fn a_restore_reads_another_pool_s_copy_while_the_bucket_does_not_answer() {
    let mut s3 = S3Server::start();
    let mut env = s3.server_env(1);
    env.extend(TAPE.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut server = TestServer::start_with("ROUTES", &env);
    let alice = node_in(&server, "alice", None);
    let bob = node_in(&server, "bob", Some("tape"));
    let work = tempfile::tempdir().unwrap();
    let (own, shared) = (work.path().join("own"), work.path().join("shared"));
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join("only-alice.bin"), random_bytes(12, 2 << 20)).unwrap();
    let marker = tree_with_marker(&shared, 11);
    // Alice's own file first, so its containers are sealed by the next
    // backup and go to the bucket.
    assert_success(&alice.run(&["incremental", &path_str(&own)]), "alice own");
    assert_success(&alice.run(&["incremental", &path_str(&shared)]), "alice");
    assert_success(&bob.run(&["incremental", &path_str(&shared)]), "bob");
    assert!(holds(&tape_dir(&server), &marker), "TAPE has its own copy");
    let offloaded = wait_until(Duration::from_secs(120), || {
        container_files(&default_dir(&server)).len() == 1
    });
    assert!(
        offloaded,
        "DEFAULT's sealed containers reach the bucket\n{}",
        server.log()
    );
    assert!(!holds(&default_dir(&server), &marker), "in the bucket only");

    // The bucket goes away; a restarted server has nothing cached.
    s3.kill();
    server.restart();
    alice.restore_same(&shared, &work.path().join("during"));
    let actlog = server.actlog();
    assert!(
        actlog.contains("TDM0436W")
            && actlog.contains("storage pool DEFAULT did not answer")
            && actlog.contains("from TAPE"),
        "{actlog}"
    );
    let failed = work.path().join("failed");
    let out = alice.run(&[
        "restore",
        &format!("{}/*", path_str(&own)),
        &path_str(&failed),
    ]);
    assert!(!out.status.success(), "a copy only the bucket holds");
    // Said as unread, not damaged, and no repair is asked for.
    let err = stderr(&out);
    assert!(
        err.contains("TDM1029E") && err.contains("is unavailable"),
        "{err}"
    );
    assert!(
        !err.contains("TDM1020E") && !err.contains("TDM1028W"),
        "{err}"
    );
    assert!(
        !failed.join("only-alice.bin").exists(),
        "no partial file is left"
    );
    assert!(
        server
            .log()
            .contains("not read: no other pool holds a whole copy"),
        "the server names what it could not read\n{}",
        server.log()
    );

    // Back: once a read asks the bucket again (one in a while does, at
    // most every 5 s while it is on hold), the file whose only copy is in
    // the bucket restores again.
    s3.restart();
    alice.restore_once_answered(&format!("{}/*", path_str(&own)), &work.path().join("probe"));
    alice.restore_same(&own, &work.path().join("after"));
}

/// A directory for this user alone, as an administrator prepares one for a
/// pool.
fn private_dir(dir: &Path) {
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}
