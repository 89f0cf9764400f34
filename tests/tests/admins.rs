//! Named administrators (issue 18, finding 9): their own credentials, every
//! call in the activity log under the caller's name, lockout as for nodes,
//! and the bootstrap token rotated without a restart.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use tandem_tests::*;

fn password_file(dir: &Path, name: &str, password: &str) -> PathBuf {
    let file = dir.join(format!("{name}.adminpw"));
    std::fs::write(&file, format!("{password}\n")).unwrap();
    file
}

/// `tandem-admin --admin NAME --admin-password-file FILE args...`.
fn as_admin(server: &TestServer, name: &str, file: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec![
        "--admin",
        name,
        "--admin-password-file",
        file.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    server.admin(&all)
}

#[test]
fn administrators_act_under_their_own_names() {
    let server = TestServer::start("PRIMARY");
    // The first administrator was made at the first start.
    let first = server.data.path().join("admin.password");
    let mode = std::fs::metadata(&first).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_success(
        &as_admin(&server, "admin", &first, &["query", "status"]),
        "the first administrator",
    );

    let work = tempfile::tempdir().unwrap();
    let ops_pw = password_file(work.path(), "ops", "ops-password-1");
    assert_success(
        &as_admin(
            &server,
            "admin",
            &first,
            &[
                "register",
                "admin",
                "ops",
                "--password-file",
                ops_pw.to_str().unwrap(),
            ],
        ),
        "register admin",
    );
    let node_pw = password_file(work.path(), "alice", "alice-password");
    assert_success(
        &as_admin(
            &server,
            "ops",
            &ops_pw,
            &[
                "register",
                "node",
                "alice",
                "--password-file",
                node_pw.to_str().unwrap(),
            ],
        ),
        "OPS registers a node",
    );
    let log = server.actlog();
    assert!(
        log.contains("register node ALICE (administrator OPS)"),
        "{log}"
    );
    assert!(
        log.contains("administrator ADMIN called RegisterAdmin"),
        "{log}"
    );
    assert!(
        log.contains("administrator OPS called RegisterNode"),
        "{log}"
    );
    assert!(log.contains("the admin token called QueryActlog"), "{log}");

    let admins: serde_json::Value = serde_json::from_slice(
        &as_admin(&server, "ops", &ops_pw, &["--json", "query", "admin"]).stdout,
    )
    .unwrap();
    let names: Vec<&str> = admins
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ADMIN", "OPS"]);

    // Neither yourself nor the last one.
    let refused = as_admin(&server, "ops", &ops_pw, &["remove", "admin", "ops"]);
    assert_ne!(code(&refused), 0);
    assert!(
        stderr(&refused).contains("cannot remove itself"),
        "{}",
        stderr(&refused)
    );
    assert_success(
        &as_admin(&server, "ops", &ops_pw, &["remove", "admin", "admin"]),
        "OPS removes ADMIN",
    );
    let refused = server.admin(&["remove", "admin", "ops"]);
    assert!(
        stderr(&refused).contains("the last one"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn wrong_passwords_lock_an_administrator_and_read_like_unknown_names() {
    let server = TestServer::start("PRIMARY");
    let work = tempfile::tempdir().unwrap();
    let ops_pw = password_file(work.path(), "ops", "ops-password-1");
    assert_success(
        &server.admin(&[
            "register",
            "admin",
            "ops",
            "--password-file",
            ops_pw.to_str().unwrap(),
        ]),
        "register admin with the token",
    );
    let wrong = password_file(work.path(), "wrong", "not-the-password");
    let unknown = as_admin(&server, "nobody", &wrong, &["query", "status"]);
    let bad = as_admin(&server, "ops", &wrong, &["query", "status"]);
    assert_eq!(code(&unknown), 12);
    assert_eq!(stderr(&unknown), stderr(&bad), "the same refusal");
    for _ in 1..10 {
        assert_eq!(
            code(&as_admin(&server, "ops", &wrong, &["query", "status"])),
            12
        );
    }
    // Locked: the right password is refused exactly as a wrong one.
    let locked = as_admin(&server, "ops", &ops_pw, &["query", "status"]);
    assert_eq!(code(&locked), 12);
    assert_eq!(stderr(&locked), stderr(&bad));
    assert!(server.actlog().contains("TDM0503W"));
    assert_success(
        &server.admin(&["update", "admin", "ops", "--unlock"]),
        "unlock",
    );
    assert_success(
        &as_admin(&server, "ops", &ops_pw, &["query", "status"]),
        "unlocked",
    );
    // No password at all is a usage error, before any connection.
    let out = server.admin(&["--admin", "ops", "query", "status"]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("TANDEM_ADMIN_PASSWORD"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_bootstrap_token_rotates_without_a_restart() {
    let server = TestServer::start("PRIMARY");
    let token_file = server.data.path().join("admin.token");
    let old = std::fs::read_to_string(&token_file).unwrap();
    let out = server.admin(&["rotate", "admintoken"]);
    assert_success(&out, "rotate admintoken");
    let new = std::fs::read_to_string(&token_file).unwrap();
    assert_ne!(old, new);
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_success(&server.admin(&["query", "status"]), "the new token works");
    let stale = server.data.path().join("old.token");
    std::fs::write(&stale, &old).unwrap();
    let out = Command::new(bin("tandem-admin"))
        .args(["--server", &server.url(), "--token-file"])
        .arg(&stale)
        .args(["--fingerprint", &server.fingerprint(), "query", "status"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 12);
    assert!(
        stderr(&out).contains("admin token wrong"),
        "{}",
        stderr(&out)
    );
    assert!(server.actlog().contains("rotate admintoken"));
}

#[test]
fn concurrent_rotations_leave_the_file_and_the_server_agreeing() {
    let server = TestServer::start("PRIMARY");
    let password = server.data.path().join("admin.password");
    // Named administrators rotate at once, so none depends on the token
    // file the others are replacing.
    let outs: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| as_admin(&server, "ADMIN", &password, &["rotate", "admintoken"]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for out in &outs {
        assert_success(out, "rotate admintoken");
    }
    // Whichever rotation came last, the file holds the token in force.
    assert_success(
        &server.admin(&["query", "status"]),
        "the file's token works",
    );
    assert_eq!(
        server.actlog().matches("rotate admintoken").count(),
        4,
        "{}",
        server.actlog()
    );
}
