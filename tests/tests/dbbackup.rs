//! Catalog backup and restore (TSM BACKUP DB / RESTORE DB; issue 23) on a
//! real server: a copy taken while the server runs, then put back after
//! the data moved on. Chunks a compaction moved since are found again,
//! chunks freed since are named with the files that lose them, and the
//! server starts on the result and restores what it still holds exactly.

use std::os::unix::fs::PermissionsExt;
use tandem_tests::*;

#[test]
fn a_restored_catalog_finds_moved_chunks_and_names_what_was_freed() {
    let mut server = TestServer::start("PRIMARY");
    server.register("dora", "dora-password");
    let client = TestClient::new(&server, "dora", "dora-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("keep.bin"), random_bytes(1, 1_000_000)).unwrap();
    std::fs::write(src.join("drop.bin"), random_bytes(2, 3_000_000)).unwrap();
    client.json(&["incremental", &path_str(&src)]);

    // The copy, taken while the server runs; a relative or missing
    // directory is refused.
    let copies = tempfile::tempdir().unwrap();
    let taken = server.admin_json(&["backup", "db", "--to", &path_str(copies.path())]);
    let copy = taken["path"].as_str().unwrap().to_string();
    assert!(copy.contains("tandem-db-PRIMARY-"), "{taken}");
    assert!(taken["bytes"].as_u64().unwrap() > 0, "{taken}");
    assert!(server.actlog().contains("TDM0425I"), "{}", server.actlog());
    let refused = server.admin(&["backup", "db", "--to", "relative/dir"]);
    assert_eq!(code(&refused), 12);
    assert!(
        stderr(&refused).contains("absolute"),
        "{}",
        stderr(&refused)
    );
    // So is one others may write in, sticky or not: they could put copies
    // of their own there, or newer-named files the retention would keep in
    // place of the real copies.
    let open = tempfile::tempdir().unwrap();
    for mode in [0o777, 0o1777] {
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        let refused = server.admin(&["backup", "db", "--to", &path_str(open.path())]);
        assert_eq!(code(&refused), 12);
        assert!(
            stderr(&refused).contains(&format!("run `chmod go-w {}`", open.path().display())),
            "{mode:o}: {}",
            stderr(&refused)
        );
        assert_eq!(std::fs::read_dir(open.path()).unwrap().count(), 0);
    }

    // Then the data moves on: drop.bin's versions are deleted and expired,
    // the container falls under half live and is compacted (keep.bin's
    // chunks move to a new container), and a new file is backed up.
    client.json(&[
        "delete",
        "backup",
        &path_str(&src.join("drop.bin")),
        "--deltype",
        "all",
        "--yes",
    ]);
    let expired = server.admin_json(&["expire", "inventory"]);
    assert!(
        expired["containers_compacted"].as_u64().unwrap() >= 1,
        "{expired}"
    );
    // A copy taken while another node's backup is writing is whole too.
    server.register("eve", "eve-password");
    let busy_client = TestClient::new(&server, "eve", "eve-password");
    let busy_src = work.path().join("busy");
    std::fs::create_dir_all(&busy_src).unwrap();
    for i in 0..60u64 {
        std::fs::write(
            busy_src.join(format!("f{i}.bin")),
            random_bytes(100 + i, 400_000),
        )
        .unwrap();
    }
    let mut running = busy_client
        .command(&["incremental", &path_str(&busy_src)])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let during = server.admin_json(&["backup", "db", "--to", &path_str(copies.path())]);
    assert!(running.wait().unwrap().success(), "eve's backup");
    let during = rusqlite::Connection::open(during["path"].as_str().unwrap()).unwrap();
    let verdict: String = during
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(verdict, "ok");

    // (drop.bin goes locally too, or the incremental would send it again.)
    std::fs::remove_file(src.join("drop.bin")).unwrap();
    std::fs::write(src.join("new.bin"), random_bytes(3, 500_000)).unwrap();
    client.json(&["incremental", &path_str(&src)]);

    // Not while the server runs.
    let busy = server.restore_db(&copy);
    assert_eq!(code(&busy), 12, "{}", stderr(&busy));
    assert!(stderr(&busy).contains("in use"), "{}", stderr(&busy));
    server.stop();
    // Not from something that is not a catalog; nothing changes then.
    let bogus = work.path().join("bogus.sqlite");
    std::fs::write(&bogus, "not a database").unwrap();
    let out = server.restore_db(&path_str(&bogus));
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );

    let out = server.restore_db(&copy);
    assert_success(&out, "restore-db");
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        report.contains("Chunks re-pointed (moved since the copy): "),
        "{report}"
    );
    let number = |label: &str| -> u64 {
        report
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|v| v.trim().split(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {label} in {report}"))
    };
    assert!(
        number("Chunks re-pointed (moved since the copy): ") >= 1,
        "{report}"
    );
    assert!(
        number("Chunks missing (freed since the copy): ") >= 1,
        "{report}"
    );
    assert_eq!(number("Damaged: "), 1, "{report}");
    assert!(
        report.contains("damaged: ") && report.contains("drop.bin"),
        "{report}"
    );
    assert!(
        number("Chunks not in the copy (written after it; reclaimed): ") >= 1,
        "new.bin and eve's chunks came after the copy: {report}"
    );
    assert!(report.contains("Replaced catalog kept as "), "{report}");

    // The server starts on the restored catalog: keep.bin restores exactly,
    // drop.bin is named as damaged, new.bin (after the copy) is unknown.
    server.restart();
    let out_dir = work.path().join("out");
    let restored = client.run(&[
        "--json",
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&out_dir),
    ]);
    assert_eq!(
        code(&restored),
        12,
        "drop.bin is damaged: {}",
        stderr(&restored)
    );
    assert_eq!(
        std::fs::read(out_dir.join("keep.bin")).unwrap(),
        random_bytes(1, 1_000_000)
    );
    assert!(!out_dir.join("drop.bin").exists(), "no half-written file");
    assert!(
        stderr(&restored).contains("drop.bin"),
        "{}",
        stderr(&restored)
    );
    let new = client.run(&["query", "backup", &path_str(&src.join("new.bin"))]);
    assert_eq!(code(&new), 4, "{}", stderr(&new));
    assert!(server.actlog().contains("TDM0426W"), "{}", server.actlog());
}

#[test]
fn scheduled_catalog_backups_start_when_due_and_keep_the_newest() {
    // Three old copies: the newest is far older than the interval, so one
    // is due as soon as the server starts; then only two are kept.
    let copies = tempfile::tempdir().unwrap();
    for stamp in [
        "20250101T000000.000Z",
        "20250201T000000.000Z",
        "20250301T000000.000Z",
    ] {
        std::fs::write(
            copies
                .path()
                .join(format!("tandem-db-PRIMARY-{stamp}.sqlite")),
            "an old copy",
        )
        .unwrap();
    }
    std::fs::write(copies.path().join("README.txt"), "not a copy").unwrap();
    let dir = path_str(copies.path());
    let server = TestServer::start_with(
        "PRIMARY",
        &[
            ("TANDEM_SERVER_DB_BACKUP_DIR", &dir),
            ("TANDEM_SERVER_DB_BACKUP_KEEP", "2"),
        ],
    );
    let names = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(copies.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let taken = wait_until(std::time::Duration::from_secs(30), || {
        server.actlog().contains("(scheduled;")
    });
    assert!(taken, "no scheduled copy: {}", server.actlog());
    let left = names();
    assert_eq!(left.len(), 3, "{left:?}");
    assert_eq!(left[0], "README.txt");
    assert_eq!(left[1], "tandem-db-PRIMARY-20250301T000000.000Z.sqlite");
    let new = copies.path().join(&left[2]);
    let conn = rusqlite::Connection::open(&new).unwrap();
    let guid: String = conn
        .query_row(
            "SELECT value FROM server_info WHERE key = 'guid'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let actlog = server.actlog();
    assert!(
        !guid.is_empty() && actlog.contains(&format!("(guid {guid})")),
        "the copy is of this server's catalog: {guid} vs {actlog}"
    );
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(verdict, "ok");

    // A relative directory is refused at start, with the key and value.
    let out = std::process::Command::new(bin("tandem-server"))
        .env("TANDEM_SERVER_DB_BACKUP_DIR", "backups")
        .args(["--data-dir", &dir, "restore-db", "--from", "/nonexistent"])
        .output()
        .unwrap();
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("db_backup_dir backups is not an absolute path"),
        "{}",
        stderr(&out)
    );
}
