//! Archive and retrieve (TSM ARCHIVE, QUERY ARCHIVE, RETRIEVE, DELETE
//! ARCHIVE; issue 20) against a real server: a described copy is kept for
//! the node's RETVER days whatever happens to the files and their backups,
//! comes back exactly, expires on time, and is its node's alone.

use tandem_proto::pb;
use tandem_tests::raw::{raw_backup_session, wire_chunk, with_session};
use tandem_tests::*;

/// Node `arc` on a fresh server, its client, and a work directory.
fn setup() -> (TestServer, TestClient, tempfile::TempDir) {
    let server = TestServer::start("PRIMARY");
    server.register("arc", "arc-password");
    let client = TestClient::new(&server, "arc", "arc-password");
    (server, client, tempfile::tempdir().unwrap())
}

fn date(offset: &str) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", offset, "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `cp -a`: a copy of `from` with modes, times and links as they are.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "cp -a: {out:?}");
}

/// The copies `query archive` lists for `pattern` (with `extra`), or none
/// when it finds nothing (exit 4).
fn copies(client: &TestClient, pattern: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["--json", "query", "archive", pattern];
    args.extend_from_slice(extra);
    let out = client.run(&args);
    assert!(matches!(code(&out), 0 | 4), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().clone()
}

#[test]
fn an_archive_outlives_its_files_and_their_backups_and_comes_back_exactly() {
    let (server, client, work) = setup();
    let src = work.path().join("src");
    make_tree(&src);
    let first = work.path().join("first");
    copy_tree(&src, &first);
    let stats = client.json(&["archive", &path_str(&src), "--description", "Q3 close"]);
    assert_eq!(stats["failed"], 0, "{stats}");
    let archived = stats["archived"].as_u64().unwrap();
    assert!(archived >= 40, "{stats}");
    assert!(stats["expires"].is_string(), "{stats}");

    // A second archive of changed files is a second copy, not a new version.
    let changed = src.join("docs/sub 0/file-0.txt");
    std::fs::write(&changed, "changed after Q3\n").unwrap();
    client.json(&["ar", &path_str(&src), "--description", "Q4 close"]);
    let listed = copies(&client, &path_str(&src), &["--subdir"]);
    assert_eq!(listed.len() as u64, 2 * archived, "{listed:?}");
    let q3 = copies(
        &client,
        &path_str(&src),
        &["--subdir", "--description", "Q3 close"],
    );
    assert_eq!(q3.len() as u64, archived);
    // RETVER defaults to 365 days.
    let expires = q3[0]["expires"].as_str().unwrap();
    assert!(
        expires.starts_with(&date("+365 days")[..10])
            || expires.starts_with(&date("+364 days")[..10]),
        "{expires}"
    );
    // An archive is no backup: nothing was backed up.
    let backups = client.run(&["query", "backup", &path_str(&src)]);
    assert_eq!(code(&backups), 4, "{}", stderr(&backups));

    // The files go, their backups are deleted and expiration runs: the
    // archive copies stay and keep their data.
    client.json(&["incremental", &path_str(&src)]);
    std::fs::remove_dir_all(&src).unwrap();
    client.json(&["incremental", &path_str(work.path())]);
    client.json(&[
        "delete",
        "backup",
        &format!("{}/*", path_str(&src)),
        "--subdir",
        "--deltype",
        "all",
        "--yes",
    ]);
    let expired = server.admin_json(&["expire", "inventory"]);
    assert_eq!(expired["archives_expired"], 0, "{expired}");

    let out = work.path().join("out-q3");
    let retrieved = client.json(&[
        "retrieve",
        &format!("{}/*", path_str(&src)),
        &path_str(&out),
        "--subdir",
        "--description",
        "Q3 close",
    ]);
    assert_eq!(retrieved["failed"], 0, "{retrieved}");
    assert_same_tree(&first, &out);

    // Without a description the newest copy of each file comes back.
    let newest = work.path().join("out-newest");
    client.json(&["ret", &path_str(&changed), &path_str(&newest)]);
    assert_eq!(
        std::fs::read_to_string(newest.join("file-0.txt")).unwrap(),
        "changed after Q3\n"
    );
    assert!(server.actlog().contains("TDM0411I"), "{}", server.actlog());
}

#[test]
fn archive_copies_expire_after_retver_and_delete_archive_removes_them() {
    let (server, client, work) = setup();
    let node = server.admin_json(&["update", "node", "arc", "--retver", "10"]);
    assert_eq!(node[0]["retver"], 10, "{node}");
    let file = work.path().join("ledger.csv");
    std::fs::write(&file, random_bytes(7, 200_000)).unwrap();
    client.json(&["archive", &path_str(&file), "--description", "ten days"]);

    let occupancy = server.admin_json(&["query", "occupancy", "arc"]);
    assert_eq!(occupancy[0]["archives"], 1, "{occupancy}");
    assert_eq!(occupancy[0]["archive_bytes"], 200_000, "{occupancy}");
    assert!(occupancy[0]["stored_bytes"].as_u64().unwrap() > 0);

    let early = server.admin_json(&["expire", "inventory", "--now", &date("+9 days")]);
    assert_eq!(early["archives_expired"], 0, "{early}");
    let preview = server.admin_json(&[
        "expire",
        "inventory",
        "--preview",
        "--now",
        &date("+11 days"),
    ]);
    assert_eq!(preview["archives"], 1, "{preview}");
    assert!(preview["stored_bytes"].as_u64().unwrap() > 0, "{preview}");
    let due = server.admin_json(&["expire", "inventory", "--now", &date("+11 days")]);
    assert_eq!(due["archives_expired"], 1, "{due}");
    assert!(due["chunks_freed"].as_u64().unwrap() > 0, "{due}");
    assert!(copies(&client, &path_str(&file), &[]).is_empty());

    // DELETE ARCHIVE takes what --description selects, and only that.
    client.json(&["archive", &path_str(&file), "--description", "keep"]);
    client.json(&["archive", &path_str(&file), "--description", "drop"]);
    let refused = client.run(&["delete", "archive", &path_str(&file)]);
    assert_eq!(code(&refused), 12, "no terminal and no --yes");
    let deleted = client.json(&[
        "delete",
        "archive",
        &path_str(&file),
        "--description",
        "drop",
        "--yes",
    ]);
    assert_eq!(deleted["deleted"], 1, "{deleted}");
    let left = copies(&client, &path_str(&file), &[]);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["description"], "keep");
    assert!(server.actlog().contains("TDM0423I"), "{}", server.actlog());
    // The kept copy still retrieves after the deleted one's chunks could go.
    server.admin_json(&["expire", "inventory"]);
    let out = work.path().join("out");
    client.json(&["retrieve", &path_str(&file), &path_str(&out)]);
    assert_eq!(
        std::fs::read(out.join("ledger.csv")).unwrap(),
        random_bytes(7, 200_000)
    );
}

/// DELETE FILESPACE takes the filespace's archive copies with it, says so,
/// and their space comes back.
#[test]
fn delete_filespace_removes_its_archive_copies_and_says_so() {
    let (server, client, work) = setup();
    let file = work.path().join("only-archived.bin");
    std::fs::write(&file, random_bytes(11, 100_000)).unwrap();
    client.json(&["archive", &path_str(&file), "--description", "one"]);
    let filespace = copies(&client, &path_str(&file), &[])[0]["filespace"]
        .as_str()
        .unwrap()
        .to_string();
    let r = server.admin_json(&["delete", "filespace", "arc", &filespace, "--yes"]);
    assert_eq!(r["versions_deleted"], 0, "{r}");
    assert_eq!(r["archives_deleted"], 1, "{r}");
    assert!(r["chunks_freed"].as_u64().unwrap() > 0, "{r}");
    assert!(copies(&client, &path_str(&file), &[]).is_empty());
    assert!(
        server.actlog().contains("1 archive copy(ies) deleted"),
        "{}",
        server.actlog()
    );
}

/// On a server that holds the node as a replica, the archive writes are
/// refused like backups (the replica is read-only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_archive_writes() {
    let (primary, secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("f"), "x\n").unwrap();
    client.json(&["incremental", &path_str(work.path())]);
    let run = replicate(&primary, "alice");
    assert_eq!(run["state"], "completed", "{run}");
    let (mut raw, token) = raw_backup_session(&secondary, "alice", "alice-password").await;
    let refused = raw
        .commit_archive(with_session(
            &token,
            pb::CommitArchiveRequest {
                filespace: "/".into(),
                objects: Vec::new(),
                description: "on the replica".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let refused = raw
        .delete_archives(with_session(
            &token,
            pb::DeleteVersionsRequest {
                object_ids: Vec::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        secondary.actlog().contains("TDM0604W"),
        "{}",
        secondary.actlog()
    );
}

#[test]
fn bad_descriptions_are_refused_before_anything_is_sent() {
    let (_server, client, work) = setup();
    let file = work.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let long = "d".repeat(256);
    let out = client.run(&["archive", &path_str(&file), "--description", &long]);
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("256 bytes"), "{}", stderr(&out));
    let out = client.run(&["archive", &path_str(&file), "--description", "a\tb"]);
    assert_eq!(code(&out), 12);
    assert!(
        stderr(&out).contains("control character"),
        "{}",
        stderr(&out)
    );
    // An empty description would select every copy: refused too.
    let out = client.run(&[
        "delete",
        "archive",
        &path_str(&file),
        "--description",
        "",
        "--yes",
    ]);
    assert_eq!(code(&out), 12);
    assert!(
        stderr(&out).contains("--description is empty"),
        "{}",
        stderr(&out)
    );
    assert!(copies(&client, &path_str(&file), &[]).is_empty());
}

/// A hostile caller with a session of its own: another node's copies are
/// invisible and undeletable to it, a description that breaks the rules
/// and chunks it does not hold are refused, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_calls_refuse_what_is_not_the_callers() {
    let (server, client, work) = setup();
    server.register("mallory", "mallory-password");
    let file = work.path().join("secret.txt");
    std::fs::write(&file, "arc's archive\n").unwrap();
    client.json(&["archive", &path_str(&file), "--description", "private"]);
    let mine = copies(&client, &path_str(&file), &[]);
    assert_eq!(mine.len(), 1);

    let (mut raw, token) = raw_backup_session(&server, "mallory", "mallory-password").await;
    let mut listed = raw
        .query_archives(with_session(
            &token,
            pb::QueryArchivesRequest {
                path_prefix: "/".into(),
                with_chunks: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0;
    while let Some(batch) = listed.message().await.unwrap() {
        seen += batch.copies.len();
    }
    assert_eq!(seen, 0, "mallory sees no copy of arc's");

    // arc's copy ids, as arc's own session lists them; mallory names them.
    let (mut own, own_token) = raw_backup_session(&server, "arc", "arc-password").await;
    let mut stream = own
        .query_archives(with_session(
            &own_token,
            pb::QueryArchivesRequest {
                path_prefix: path_str(&file),
                with_chunks: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let copy = stream.message().await.unwrap().unwrap().copies.remove(0);
    let version = copy.version.unwrap();
    let deleted = raw
        .delete_archives(with_session(
            &token,
            pb::DeleteVersionsRequest {
                object_ids: vec![version.object_id.clone()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 0, "another node's copy is as if absent");

    // Claiming arc's chunks by their ids is refused: mallory never sent them.
    let attrs = pb::ObjectAttrs {
        path: "/stolen".into(),
        kind: pb::ObjectKind::File as i32,
        size: version.attrs.as_ref().unwrap().size,
        mode: 0o644,
        ..Default::default()
    };
    let claim = raw
        .commit_archive(with_session(
            &token,
            pb::CommitArchiveRequest {
                filespace: "/".into(),
                objects: vec![pb::NewObject {
                    attrs: Some(attrs.clone()),
                    chunk_ids: version.chunk_ids.clone(),
                }],
                description: "stolen".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(claim.code(), tonic::Code::FailedPrecondition, "{claim:?}");

    // A description with a control character, too long or empty is refused.
    for description in ["line\nbreak".to_string(), "x".repeat(256), String::new()] {
        let refused = raw
            .commit_archive(with_session(
                &token,
                pb::CommitArchiveRequest {
                    filespace: "/".into(),
                    objects: Vec::new(),
                    description: description.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    }
    // Its own data it may archive.
    let chunk = wire_chunk(b"mallory's own bytes");
    let id = chunk.id.clone();
    raw.upload_chunks(with_session(
        &token,
        tonic::codegen::tokio_stream::iter([pb::UploadChunksRequest {
            chunks: vec![chunk],
        }]),
    ))
    .await
    .unwrap();
    let stored = raw
        .commit_archive(with_session(
            &token,
            pb::CommitArchiveRequest {
                filespace: "/".into(),
                objects: vec![pb::NewObject {
                    attrs: Some(pb::ObjectAttrs { size: 19, ..attrs }),
                    chunk_ids: vec![id],
                }],
                description: "mine".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.stored, 1);
    // arc's copy is untouched.
    assert_eq!(copies(&client, &path_str(&file), &[]), mine);
}
