//! Crash safety and corruption detection, with real processes and SIGKILL.

use std::time::Duration;

use tandem_tests::*;

#[test]
fn acknowledged_backups_survive_a_server_killed_mid_backup() {
    let mut server = TestServer::start("PRIMARY");
    server.register("bob", "bob-password");
    let client = TestClient::new(&server, "bob", "bob-password");
    let work = tempfile::tempdir().unwrap();

    // An acknowledged backup first.
    let early = work.path().join("early");
    make_tree(&early);
    client.json(&["incremental", &path_str(&early)]);

    // A large backup that the server is killed in the middle of: 24 files of
    // 12 MiB of incompressible data, committed in several transactions.
    let large = work.path().join("large");
    std::fs::create_dir_all(&large).unwrap();
    for i in 0..24u64 {
        std::fs::write(
            large.join(format!("part-{i:02}.bin")),
            random_bytes(1000 + i, 12 << 20),
        )
        .unwrap();
    }
    let before = server.container_bytes();
    let child = std::process::Command::new(bin("tandem"))
        .args([
            "--options",
            &path_str(&client.options),
            "--quiet",
            "incremental",
            &path_str(&large),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill once a good part of the data has reached the containers.
    let reached = wait_until(Duration::from_secs(120), || {
        server.container_bytes() > before + (80 << 20)
    });
    assert!(reached, "the backup never got going:\n{}", server.log());
    server.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(12),
        "the client must fail when its server dies"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TDM100"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    server.restart();
    // Everything acknowledged before the crash restores byte for byte.
    let restored_early = work.path().join("restored-early");
    let r = client.json(&[
        "restore",
        &format!("{}/*", path_str(&early)),
        &path_str(&restored_early),
        "--subdir",
    ]);
    assert_eq!(r["failed"], 0);
    assert_same_tree(&early, &restored_early);

    // Whatever of the interrupted backup is visible is complete, never half.
    let partial = work.path().join("partial");
    let out = client.run(&[
        "--json",
        "restore",
        &format!("{}/*", path_str(&large)),
        &path_str(&partial),
    ]);
    assert!(matches!(code(&out), 0 | 4), "{}", stderr(&out));
    let mut visible = 0;
    if partial.exists() {
        for e in std::fs::read_dir(&partial).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let i: u64 = name[5..7].parse().unwrap();
            assert!(
                std::fs::read(&p).unwrap() == random_bytes(1000 + i, 12 << 20),
                "{name} is not complete"
            );
            visible += 1;
        }
    }
    assert!(visible < 24, "the kill came too late to test anything");

    // Re-running completes and reuses the chunks that reached the server.
    let rerun = client.json(&["incremental", &path_str(&large)]);
    assert_eq!(rerun["failed"], 0);
    assert!(
        rerun["bytes_deduplicated"].as_u64().unwrap() > 0,
        "orphaned chunks are reused: {rerun}"
    );
    let full = work.path().join("full");
    client.json(&[
        "restore",
        &format!("{}/*", path_str(&large)),
        &path_str(&full),
    ]);
    assert_same_tree(&large, &full);
}

#[test]
fn a_corrupted_chunk_fails_its_file_by_name_and_the_rest_restores() {
    let server = TestServer::start("PRIMARY");
    server.register("carol", "carol-password");
    let client = TestClient::new(&server, "carol", "carol-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let victim = random_bytes(42, 200_000);
    std::fs::write(src.join("victim.bin"), &victim).unwrap();
    std::fs::write(src.join("healthy.bin"), random_bytes(43, 200_000)).unwrap();
    client.json(&["incremental", &path_str(&src)]);

    server.damage_stored_bytes(&victim[100_000..100_064]);

    let out_dir = work.path().join("out");
    let err = client.restore_failing(&src, &out_dir);
    assert!(
        err.contains("TDM1020E") && err.contains("victim.bin"),
        "{err}"
    );
    assert!(
        !out_dir.join("victim.bin").exists(),
        "a damaged file is never written"
    );
    assert_eq!(
        std::fs::read(out_dir.join("healthy.bin")).unwrap(),
        random_bytes(43, 200_000)
    );
    assert!(client.error_log().contains("victim.bin"));
}

#[test]
fn sigterm_stops_the_server_cleanly_and_data_stays() {
    let mut server = TestServer::start("PRIMARY");
    server.register("dave", "dave-password");
    let client = TestClient::new(&server, "dave", "dave-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    client.json(&["incremental", &path_str(&src)]);
    let status = server.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let wal = server.data.path().join("catalog.db-wal");
    assert!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0,
        "the catalog is checkpointed on shutdown"
    );
    server.restart();
    let out = work.path().join("out");
    client.json(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&out),
        "--subdir",
    ]);
    assert_same_tree(&src, &out);
}
