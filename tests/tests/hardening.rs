//! Hardening against local users and hostile callers: one data dir, one
//! server; files only their owner can read; chunks that carry exactly what
//! their id says.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tandem_tests::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn start_on(data: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let addr = data.join("listen.addr");
    let _ = std::fs::remove_file(&addr);
    let mut child = std::process::Command::new(bin("tandem-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A server that starts keeps running: stop it once it is up.
    let started = wait_until(Duration::from_secs(20), || {
        addr.exists() || matches!(child.try_wait(), Ok(Some(_)))
    });
    assert!(started, "tandem-server neither started nor exited");
    if matches!(child.try_wait(), Ok(None)) {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_second_server_on_a_live_data_dir_is_refused() {
    let server = TestServer::start("PRIMARY");
    let out = start_on(server.data.path(), &["--name", "PRIMARY"]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("in use by another tandem-server")
            && err.contains(&server.pid().unwrap().to_string()),
        "{err}"
    );
    // The first one never noticed.
    assert_success(
        &server.admin(&["query", "status"]),
        "the first server answers",
    );
}

#[test]
fn a_data_dir_keeps_its_server_name_unless_renamed_on_purpose() {
    let mut server = TestServer::start("PRIMARY");
    server.stop();
    let out = start_on(server.data.path(), &["--name", "OTHER"]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("belongs to server PRIMARY") && err.contains("--rename"),
        "{err}"
    );
    let out = start_on(server.data.path(), &["--name", "OTHER", "--rename"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("server ready"),
        "{}",
        stderr(&out)
    );
    let out = start_on(server.data.path(), &["--name", "PRIMARY"]);
    assert!(
        stderr(&out).contains("belongs to server OTHER"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn server_and_client_files_are_private() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("f"), "private").unwrap();
    std::fs::write(work.path().join("g"), "also private").unwrap();
    client.json(&["incremental", &path_str(work.path())]);
    client.run(&[
        "restore",
        &format!("{}/nothing-here", path_str(work.path())),
    ]);
    let data = server.data.path();
    assert_eq!(mode(data), 0o700);
    for file in [
        "catalog.db",
        "admin.token",
        "tls/key.pem",
        "tls/cert.pem",
        "lock",
    ] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    for container in server.containers() {
        assert_eq!(mode(&container), 0o600, "{}", container.display());
    }
    let state = client.dir.path().join("state");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("nrtable.db")), 0o600);
    assert_eq!(mode(&state.join("dsierror.log")), 0o600);

    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = start_on(open.path(), &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("chmod 700"), "{}", stderr(&out));

    // Private, but below a directory others may write: they could rename
    // it away and put a directory of theirs in its place.
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let below = parent.path().join("data");
    std::fs::create_dir(&below).unwrap();
    std::fs::set_permissions(&below, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = start_on(&below, &[]);
    assert_ne!(out.status.code(), Some(0));
    let said = stderr(&out);
    assert!(
        said.contains(&format!("run `chmod go-w {}`", parent.path().display())),
        "{said}"
    );
    assert!(!below.join("catalog.db").exists());

    // A data dir reached through a link of our own is fine (SQLite is told
    // to refuse links, so the server resolves the directory first).
    let real = tempfile::tempdir().unwrap();
    std::fs::set_permissions(real.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let links = tempfile::tempdir().unwrap();
    let link = links.path().join("data");
    std::os::unix::fs::symlink(real.path(), &link).unwrap();
    let out = start_on(&link, &[]);
    assert!(
        real.path().join("catalog.db").exists() && !stderr(&out).contains("ERROR"),
        "{}",
        stderr(&out)
    );

    // Private, but another user's: that user could plant links in it.
    if nix::unistd::geteuid().is_root() {
        let theirs = tempfile::tempdir().unwrap();
        std::fs::set_permissions(theirs.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(theirs.path(), Some(65534), Some(65534)).unwrap();
        let out = start_on(theirs.path(), &[]);
        assert_ne!(out.status.code(), Some(0));
        assert!(
            stderr(&out).contains("belongs to uid 65534"),
            "{}",
            stderr(&out)
        );
        assert!(!theirs.path().join("catalog.db").exists());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_padded_with_extra_frames_is_refused() {
    use tandem_proto::pb::{self, backup_client::BackupClient};
    let server = TestServer::start("PRIMARY");
    server.register("mallory", "mallory-password");
    let pin = tandem_tls::Trust::Pinned(server.fingerprint().parse().unwrap());
    let tls = tandem_tls::ClientTls::new(&pin, None).unwrap();
    let endpoint = tonic::transport::Endpoint::from_shared(server.url()).unwrap();
    let mut backup = BackupClient::new(tandem_tls::connect(endpoint, Some(&tls)).await.unwrap());
    let token = backup
        .logon(pb::LogonRequest {
            node: "mallory".into(),
            password: "mallory-password".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_token;
    // The all-zero 4 MiB chunk every sparse file shares, with 1 MiB of
    // skippable-frame padding after its frame.
    let raw = vec![0u8; 4 << 20];
    let mut data = zstd::bulk::compress(&raw, 1).unwrap();
    data.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    data.extend_from_slice(&(1u32 << 20).to_le_bytes());
    data.extend_from_slice(&vec![0xAA; 1 << 20]);
    let chunk = pb::Chunk {
        id: tandem_proto::ChunkId::of(&raw).as_slice().to_vec(),
        data: data.into(),
        raw_len: raw.len() as u64,
    };
    let mut request = tonic::Request::new(tokio_stream_once(pb::UploadChunksRequest {
        chunks: vec![chunk],
    }));
    request
        .metadata_mut()
        .insert(tandem_proto::SESSION_HEADER, token.parse().unwrap());
    let refused = backup.upload_chunks(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("follow the zstd frame"),
        "{refused:?}"
    );
    assert!(
        server.container_bytes() < 1 << 20,
        "nothing of the padding was stored"
    );
}

/// A stream of one message.
fn tokio_stream_once<T: Send + 'static>(
    item: T,
) -> impl tonic::codegen::tokio_stream::Stream<Item = T> {
    tonic::codegen::tokio_stream::iter([item])
}

#[test]
fn guessing_locks_the_node_and_refusals_do_not_tell_names_apart() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let guess = |node: &str, password: &str| {
        TestClient::new(&server, node, password).run(&["query", "session"])
    };
    let unknown = guess("nobody", "some-password");
    let wrong = guess("alice", "wrong-password");
    let text = |out: &std::process::Output, node: &str| {
        stderr(out)
            .replace(&node.to_ascii_uppercase(), "N")
            .replace(node, "N")
    };
    assert_eq!(code(&unknown), 12);
    assert_eq!(
        text(&unknown, "nobody"),
        text(&wrong, "alice"),
        "an unknown node and a wrong password read the same"
    );
    // Ten failures in a row (the default invalid_password_limit) lock ALICE.
    for _ in 1..10 {
        assert_eq!(code(&guess("alice", "wrong-password")), 12);
    }
    let right = guess("alice", "alice-password");
    assert_eq!(code(&right), 12);
    assert!(stderr(&right).contains("locked"), "{}", stderr(&right));
    assert!(server.actlog().contains("locked after 10 failed logons"));
    // While locked, the right password reads exactly like a wrong one: a
    // guesser learns nothing by going on. The activity log tells the admin.
    let still_wrong = guess("alice", "wrong-password");
    assert_eq!(text(&still_wrong, "alice"), text(&right, "alice"));
    assert!(server.actlog().contains("the password given was right"));
    assert_success(
        &server.admin(&["update", "node", "alice", "--unlock"]),
        "unlock",
    );
    assert_success(&guess("alice", "alice-password"), "logon after the unlock");
}

#[test]
fn a_flood_of_wrong_passwords_does_not_grow_the_server() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let pid = server.pid().unwrap();
    let before = peak_rss_kib(pid).unwrap();
    let attackers: Vec<_> = (0..24)
        .map(|i| {
            let client = TestClient::new(&server, &format!("node{i}"), "wrong-password");
            std::thread::spawn(move || {
                for _ in 0..3 {
                    client.run(&["query", "session"]);
                }
            })
        })
        .collect();
    for attacker in attackers {
        attacker.join().unwrap();
    }
    let after = peak_rss_kib(pid).unwrap();
    // Four argon2 checks at most at once, 19 MiB each; unbounded, 24 at
    // once took more than 450 MiB.
    assert!(
        after < before + 200 * 1024,
        "server peak RSS grew from {before} KiB to {after} KiB"
    );
    assert_success(
        &TestClient::new(&server, "alice", "alice-password").run(&["query", "session"]),
        "a real logon still works",
    );
}

#[test]
fn a_password_others_may_read_is_warned_about() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    let quiet = client.run(&["query", "session"]);
    assert_success(&quiet, "query session");
    assert!(!stderr(&quiet).contains("TDM1044W"), "{}", stderr(&quiet));

    std::fs::set_permissions(&client.options, std::fs::Permissions::from_mode(0o644)).unwrap();
    let warned = client.run(&["query", "session"]);
    assert_success(&warned, "the command still works");
    assert!(
        stderr(&warned).contains("TDM1044W") && stderr(&warned).contains("chmod 600"),
        "{}",
        stderr(&warned)
    );
    assert!(client.error_log().contains("TDM1044W"));

    // A password file next to it is what counts then.
    let secret = client.dir.path().join("alice.password");
    std::fs::write(&secret, "alice-password\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    let text = std::fs::read_to_string(&client.options).unwrap().replace(
        "password = \"alice-password\"",
        "password_file = \"alice.password\"",
    );
    std::fs::write(&client.options, text).unwrap();
    let warned = client.run(&["query", "session"]);
    assert!(
        stderr(&warned).contains("alice.password") && stderr(&warned).contains("0640"),
        "{}",
        stderr(&warned)
    );
}
