//! Resource limits (issue 18, finding 4), probed with a raw gRPC client
//! against a real server: what an unauthenticated caller may send, how long
//! lists may be, how long a stalled upload may stay open, how many sessions
//! one node keeps, how many read streams it may hold open.

use std::time::{Duration, Instant};

use tandem_proto::pb;
use tandem_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthenticated_caller_sends_little_and_big_lists_are_refused() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let mut raw = raw_backup_client(&server).await;

    // A 1 MiB logon is refused before it is read, with what the limit is.
    let refused = raw
        .logon(pb::LogonRequest {
            node: "alice".into(),
            password: "p".repeat(1 << 20),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains("65536 bytes before authentication"),
        "{refused:?}"
    );

    // A 32 MiB upload without a session is turned away unread.
    let chunk = pb::Chunk {
        id: vec![0; 32],
        data: vec![0xAB; 32 << 20].into(),
        raw_len: 32 << 20,
    };
    let refused = raw
        .upload_chunks(tonic::codegen::tokio_stream::iter([
            pb::UploadChunksRequest {
                chunks: vec![chunk],
            },
        ]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("log on first"), "{refused:?}");

    // Lists longer than one call may carry.
    let (mut alice, token) = raw_backup_session(&server, "alice", "alice-password").await;
    let ids: Vec<Vec<u8>> = (0..=tandem_proto::MAX_CHUNK_IDS_PER_CALL)
        .map(|n| {
            tandem_proto::ChunkId::of(&n.to_le_bytes())
                .as_slice()
                .to_vec()
        })
        .collect();
    let refused = alice
        .find_missing_chunks(with_session(
            &token,
            pb::FindMissingChunksRequest {
                chunk_ids: ids.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_refused(
        &refused,
        tonic::Code::InvalidArgument,
        "16385 chunk ids in one call; at most 16384",
    );
    let refused = match alice
        .read_chunks(with_session(
            &token,
            pb::ReadChunksRequest { chunk_ids: ids },
        ))
        .await
    {
        Ok(stream) => stream.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let objects = (0..=tandem_proto::MAX_OBJECTS_PER_CALL)
        .map(|n| pb::NewObject {
            attrs: Some(pb::ObjectAttrs {
                path: format!("/f{n}"),
                kind: pb::ObjectKind::Directory as i32,
                mode: 0o755,
                ..Default::default()
            }),
            chunk_ids: Vec::new(),
        })
        .collect();
    let refused = alice
        .commit_objects(with_session(
            &token,
            pb::CommitObjectsRequest {
                filespace: "/".into(),
                objects,
                deactivate: Vec::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("10001 objects"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upload_is_ended_after_the_comm_timeout() {
    let server = TestServer::start_with("PRIMARY", &[("TANDEM_SERVER_COMM_TIMEOUT_SECONDS", "2")]);
    server.register("alice", "alice-password");
    let (mut alice, token) = raw_backup_session(&server, "alice", "alice-password").await;
    // One message, then nothing: the sender stays open and silent.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::UploadChunksRequest {
        chunks: vec![wire_chunk(b"one chunk")],
    })
    .await
    .unwrap();
    let started = Instant::now();
    let ended = tokio::time::timeout(
        Duration::from_secs(30),
        alice.upload_chunks(with_session(
            &token,
            tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx),
        )),
    )
    .await
    .expect("the server ended the stalled upload")
    .unwrap_err();
    drop(tx);
    assert_eq!(ended.code(), tonic::Code::DeadlineExceeded, "{ended:?}");
    assert!(
        ended.message().contains("comm_timeout_seconds"),
        "{ended:?}"
    );
    eprintln!("stalled upload ended after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_node_keeps_a_bounded_number_of_sessions() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let (_, first) = raw_backup_session(&server, "alice", "alice-password").await;
    for _ in 0..40 {
        raw_backup_session(&server, "alice", "alice-password").await;
    }
    let sessions: serde_json::Value =
        serde_json::from_slice(&server.admin(&["--json", "query", "session"]).stdout).unwrap();
    assert_eq!(sessions.as_array().unwrap().len(), 32, "{sessions}");
    // The least recently used one went.
    let (mut client, _) = raw_backup_session(&server, "alice", "alice-password").await;
    let refused = client
        .query_filespaces(with_session(&first, pb::QueryFilespacesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
}

/// Sockets the process `pid` holds open (its listener among them).
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

/// [`open_sockets`] once two counts 100 ms apart agree (at most 3 s).
fn settled_sockets(pid: u32) -> usize {
    let mut last = open_sockets(pid);
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        let now = open_sockets(pid);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_is_closed_but_a_long_call_is_not() {
    let server = TestServer::start_with(
        "PRIMARY",
        &[
            ("TANDEM_SERVER_IDLE_TIMEOUT_SECONDS", "2"),
            ("TANDEM_SERVER_COMM_TIMEOUT_SECONDS", "5"),
        ],
    );
    server.register("alice", "alice-password");
    let pid = server.pid().expect("running");
    // The registration's connection ends as `tandem-admin` exits, but the
    // server closes its side a moment later: count once that is done.
    let before = settled_sockets(pid);
    let (mut alice, token) = raw_backup_session(&server, "alice", "alice-password").await;
    assert!(
        open_sockets(pid) > before,
        "the client's connection is open"
    );

    // An upload that sends one chunk a second for five seconds: the
    // connection is never idle while the call runs, so it is not cut.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let sender = tokio::spawn(async move {
        for i in 0..5u8 {
            let chunk = wire_chunk(&[i; 1000]);
            tx.send(pb::UploadChunksRequest {
                chunks: vec![chunk],
            })
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let started = Instant::now();
    let reply = alice
        .upload_chunks(with_session(
            &token,
            tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .expect("a slow upload longer than the idle timeout completes")
        .into_inner();
    sender.await.unwrap();
    assert_eq!(reply.stored, 5, "{reply:?}");
    assert!(started.elapsed() > Duration::from_secs(4));

    // Then nothing: the server closes the connection once idle.
    assert!(
        wait_until(Duration::from_secs(15), || open_sockets(pid) <= before),
        "the idle connection is closed ({} sockets, {before} before)",
        open_sockets(pid)
    );
    // The session lives on; the client's next call opens a new connection.
    // A call that races the close can meet the dead connection first
    // (a transport error, nothing from the server); the channel then
    // reconnects, as the client program's retry does.
    let mut missing = None;
    for _ in 0..3 {
        match alice
            .find_missing_chunks(with_session(
                &token,
                pb::FindMissingChunksRequest {
                    chunk_ids: vec![tandem_proto::ChunkId::of(&[0u8; 1000]).as_slice().to_vec()],
                },
            ))
            .await
        {
            Ok(reply) => {
                missing = Some(reply.into_inner());
                break;
            }
            // Met as "transport error", or as a call cancelled with
            // "connection closed" when the close lands mid-request.
            Err(status)
                if status.message().contains("transport error")
                    || matches!(
                        status.code(),
                        tonic::Code::Cancelled | tonic::Code::Unavailable
                    ) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("the session was refused after reconnecting: {status:?}"),
        }
    }
    let missing = missing.expect("the next call reconnects within three tries");
    assert!(missing.missing.is_empty(), "{missing:?}");
}

/// Nodes backing up at once through the smallest upload memory budget
/// (16 MiB, far less than they send together): streams wait for their
/// shares, after writing out what they hold, and every backup completes and
/// restores byte for byte.
#[test]
fn nodes_backing_up_at_once_through_a_small_upload_budget_all_finish() {
    let server = TestServer::start_with(
        "PRIMARY",
        &[
            ("TANDEM_SERVER_INGEST_MEMORY_MIB", "16"),
            ("RUST_LOG", "tandem_server=debug"),
        ],
    );
    let work = private_tempdir();
    let nodes: Vec<(TestClient, std::path::PathBuf)> = (0..4u64)
        .map(|n| {
            let node = format!("node{n}");
            server.register(&node, "node-password");
            let src = work.path().join(&node);
            std::fs::create_dir_all(&src).unwrap();
            // Incompressible, so what travels is what the budget counts.
            for f in 0..6u64 {
                let bytes = random_bytes(n * 100 + f, 4 << 20);
                std::fs::write(src.join(format!("f{f}.bin")), bytes).unwrap();
            }
            (TestClient::new(&server, &node, "node-password"), src)
        })
        .collect();
    std::thread::scope(|scope| {
        for (client, src) in &nodes {
            scope.spawn(move || {
                let stats = client.json(&["incremental", &path_str(src)]);
                assert_eq!(stats["failed"], 0, "{stats}");
                assert_eq!(stats["backed_up"].as_u64(), Some(7), "{stats}");
            });
        }
    });
    assert!(
        server
            .log()
            .contains("upload waits for the server's upload memory budget"),
        "96 MiB sent at once through 16 MiB: some stream must have waited"
    );
    for (client, src) in &nodes {
        let out = work.path().join("restored").join(src.file_name().unwrap());
        let restored = client.json(&[
            "restore",
            &format!("{}/*", path_str(src)),
            &path_str(&out),
            "--subdir",
        ]);
        assert_eq!(restored["failed"], 0, "{restored}");
        assert_same_tree(src, &out);
    }
}

/// Streams that hold the upload budget without moving cannot lock others
/// out: one sends 20,000 empty messages (each would have kept a share), and
/// five others send 11 MiB each and then stall, silent but open (together
/// they would hold more than the budget); a backup through the same 16 MiB
/// budget still finishes while they hang.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_and_empty_upload_streams_do_not_hold_the_budget() {
    let server = TestServer::start_with("PRIMARY", &[("TANDEM_SERVER_INGEST_MEMORY_MIB", "16")]);
    server.register("mallory", "mallory-password");
    server.register("alice", "alice-password");
    let (mallory, token) = raw_backup_session(&server, "mallory", "mallory-password").await;
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for stream in 0..6u64 {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut client = mallory.clone();
        let token = token.clone();
        calls.push(tokio::spawn(async move {
            client
                .upload_chunks(with_session(
                    &token,
                    tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx),
                ))
                .await
        }));
        let tx_moved = tx.clone();
        senders.push(tx);
        tokio::spawn(async move {
            if stream == 0 {
                for _ in 0..20_000 {
                    let empty = pb::UploadChunksRequest { chunks: Vec::new() };
                    if tx_moved.send(empty).await.is_err() {
                        return;
                    }
                }
            } else {
                for part in 0..11u64 {
                    let raw = random_bytes(stream * 1000 + part, 1 << 20);
                    let message = pb::UploadChunksRequest {
                        chunks: vec![wire_chunk(&raw)],
                    };
                    if tx_moved.send(message).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    // Let the hoarding streams get going, then back up beside them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let work = private_tempdir();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for f in 0..4u64 {
        std::fs::write(src.join(format!("f{f}")), random_bytes(50 + f, 4 << 20)).unwrap();
    }
    let alice = TestClient::new(&server, "alice", "alice-password");
    let backup = {
        let alice_options = alice.options.clone();
        let src = src.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin("tandem"))
                .arg("--options")
                .arg(alice_options)
                .args(["--json", "incremental"])
                .arg(&src)
                .output()
                .expect("run tandem")
        })
    };
    let out = tokio::time::timeout(Duration::from_secs(60), backup)
        .await
        .expect("a backup beside stalled streams must not wait for them")
        .unwrap();
    assert_success(&out, "backup beside stalled upload streams");
    drop(senders);
    for call in calls {
        let _ = call.await;
    }
}

/// Reads `server`'s metrics until `series` shows `want` (bounded: 60 s).
async fn metric_reaches(server: &TestServer, series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let from = Instant::now();
    while Instant::now() < deadline {
        last = metrics_text(server);
        if sample(&last, series) == Some(want) {
            eprintln!("{series} = {want} after {:?}", from.elapsed());
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{series} never reached {want}:\n{last}");
}

/// One `ReadChunks` call of session `token` on a connection of its own,
/// asking for `id` `times` times; its answer stream, unread.
async fn read_call(
    server: &TestServer,
    token: &str,
    id: tandem_proto::ChunkId,
    times: usize,
) -> tonic::Streaming<pb::ReadChunksResponse> {
    let mut client = raw_backup_client(server).await;
    let call = client.read_chunks(with_session(
        token,
        pb::ReadChunksRequest {
            chunk_ids: vec![id.as_slice().to_vec(); times],
        },
    ));
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("a call within the node's slots is answered at once")
        .expect("ReadChunks")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_holding_its_read_streams_unread_makes_its_next_call_wait_not_others() {
    let server = TestServer::start_with(
        "PRIMARY",
        &[("TANDEM_SERVER_METRICS_LISTEN", "127.0.0.1:0")],
    );
    let work = private_tempdir();
    let mut chunks = Vec::new();
    for node in ["alice", "bob"] {
        let password = format!("{node}-password");
        server.register(node, &password);
        let dir = work.path().join(node);
        std::fs::create_dir(&dir).unwrap();
        // Under the chunker's minimum: one chunk, whose id is its hash.
        let data = random_bytes(node.len() as u64, 100 << 10);
        std::fs::write(dir.join("blob"), &data).unwrap();
        let client = TestClient::new(&server, node, &password);
        let out = client.json(&["incremental", &path_str(&dir)]);
        assert_eq!(out["failed"], 0, "{out}");
        chunks.push(tandem_proto::ChunkId::of(&data));
    }
    let (alice_chunk, bob_chunk) = (chunks[0], chunks[1]);

    // Alice opens her node's streams, each asking for 100 KiB 2,000 times,
    // on connections of their own, and reads none of them.
    let (_, alice) = raw_backup_session(&server, "alice", "alice-password").await;
    let sessions = server.admin_json(&["query", "session"]);
    let alice_session = sessions[0]["id"].to_string();
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions}");
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(read_call(&server, &alice, alice_chunk, 2_000).await);
    }
    metric_reaches(&server, "tandem_read_streams_open{kind=\"data\"}", 4.0).await;

    // Her next call (another session of hers) waits instead of failing.
    let (_, alice_again) = raw_backup_session(&server, "alice", "alice-password").await;
    let next = {
        let token = alice_again.clone();
        let mut client = raw_backup_client(&server).await;
        tokio::spawn(async move {
            client
                .read_chunks(with_session(
                    &token,
                    pb::ReadChunksRequest {
                        chunk_ids: vec![alice_chunk.as_slice().to_vec(); 3],
                    },
                ))
                .await
        })
    };
    metric_reaches(&server, "tandem_read_streams_waiting{kind=\"data\"}", 1.0).await;
    assert!(!next.is_finished(), "the fifth call waits for a slot");

    // Bob is not held up by Alice's streams.
    let (_, bob) = raw_backup_session(&server, "bob", "bob-password").await;
    let mut bobs = read_call(&server, &bob, bob_chunk, 3).await;
    let mut read = 0;
    while let Some(answer) = tokio::time::timeout(Duration::from_secs(30), bobs.message())
        .await
        .expect("bob's stream is served")
        .expect("bob reads")
    {
        assert_eq!(answer.chunk.unwrap().id, bob_chunk.as_slice());
        read += 1;
    }
    assert_eq!(read, 3);

    // One of Alice's streams ends: her waiting call is served in full.
    stalled.pop();
    let mut answer = tokio::time::timeout(Duration::from_secs(30), next)
        .await
        .expect("the waiting call gets the freed slot")
        .unwrap()
        .expect("ReadChunks")
        .into_inner();
    let mut read = 0;
    while let Some(message) = answer.message().await.expect("alice reads") {
        assert_eq!(message.chunk.unwrap().id, alice_chunk.as_slice());
        read += 1;
    }
    assert_eq!(read, 3);

    // An administrator cancels the session that holds the other three,
    // unread and still open on the client's side: the server ends them.
    let out = server.admin(&["cancel", "session", &alice_session]);
    assert_success(&out, "cancel session");
    metric_reaches(&server, "tandem_read_streams_open{kind=\"data\"}", 0.0).await;
    metric_reaches(&server, "tandem_read_streams_waiting{kind=\"data\"}", 0.0).await;
    // Read now, such a stream gives what was queued and then says it was
    // cut short: never a plain end that would pass for a whole answer.
    let mut cut = stalled.pop().unwrap();
    let mut queued = 0;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(30), cut.message())
            .await
            .expect("the cut-short stream ends")
        {
            Ok(Some(_)) if queued < 2_000 => queued += 1,
            other => break other,
        }
    };
    let status = end.expect_err("the stream ends with the reason");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("cancelled"), "{status:?}");
    assert!(queued < 2_000, "only what was queued came: {queued}");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_message_over_its_limit_is_refused_whole() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let (mut alice, token) = raw_backup_session(&server, "alice", "alice-password").await;
    // Two well-formed 5 MiB chunks: each may travel alone, not together.
    let chunks: Vec<pb::Chunk> = [0x11u8, 0x22]
        .iter()
        .map(|&fill| {
            let raw = vec![fill; 5 << 20];
            pb::Chunk {
                id: tandem_proto::ChunkId::of(&raw).as_slice().to_vec(),
                data: zstd::bulk::compress(&raw, 1).unwrap().into(),
                raw_len: raw.len() as u64,
            }
        })
        .collect();
    let mut padded = chunks.clone();
    // Stored data is compressed, so make the message big in what it carries.
    for c in &mut padded {
        let mut data = c.data.to_vec();
        data.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        data.extend_from_slice(&(5u32 << 20).to_le_bytes());
        data.extend_from_slice(&vec![0; 5 << 20]);
        c.data = data.into();
    }
    let ids: Vec<Vec<u8>> = chunks.iter().map(|c| c.id.clone()).collect();
    let refused = alice
        .upload_chunks(with_session(
            &token,
            tonic::codegen::tokio_stream::iter([pb::UploadChunksRequest {
                chunks: padded.clone(),
            }]),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("larger than") && refused.message().contains("one may carry"),
        "{refused:?}"
    );
    // Over 16 MiB as sent: refused from its length prefix, before the
    // server takes it in.
    let oversized: Vec<pb::Chunk> = padded.iter().chain(&padded).cloned().collect();
    let refused = alice
        .upload_chunks(with_session(
            &token,
            tonic::codegen::tokio_stream::iter([pb::UploadChunksRequest { chunks: oversized }]),
        ))
        .await
        .unwrap_err();
    assert_refused(
        &refused,
        tonic::Code::InvalidArgument,
        &format!("is larger than the {}", 16 << 20),
    );
    // Neither chunk was stored.
    assert_eq!(
        missing_count(&mut alice, &token, &ids).await,
        2,
        "a chunk of the refused message was stored"
    );
    // The same chunks in messages of their own are taken.
    for chunk in chunks {
        alice
            .upload_chunks(with_session(
                &token,
                tonic::codegen::tokio_stream::iter([pb::UploadChunksRequest {
                    chunks: vec![chunk],
                }]),
            ))
            .await
            .unwrap();
    }
    assert_eq!(missing_count(&mut alice, &token, &ids).await, 0);
}

/// How many of `ids` the server says it lacks.
async fn missing_count(
    client: &mut pb::backup_client::BackupClient<tonic::transport::Channel>,
    token: &str,
    ids: &[Vec<u8>],
) -> usize {
    let request = pb::FindMissingChunksRequest {
        chunk_ids: ids.to_vec(),
    };
    let reply = client.find_missing_chunks(with_session(token, request));
    reply.await.unwrap().into_inner().missing.len()
}

/// `refused` has `code` and says `text`.
fn assert_refused(refused: &tonic::Status, code: tonic::Code, text: &str) {
    assert_eq!(refused.code(), code, "{refused:?}");
    assert!(refused.message().contains(text), "{refused:?}");
}

/// A logon whose message stops arriving half way is abandoned once the
/// server's wait for a caller not yet logged on is over (30 s), rather than
/// held for as long as the caller keeps the connection; other logons go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_logon_that_stalls_half_way_is_abandoned_after_the_wait() {
    use tonic::codegen::Service;
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let mut channel = raw_channel(&server).await;
    // The gRPC frame announces a 100-byte message; 10 bytes of it arrive.
    let mut first = vec![0u8];
    first.extend_from_slice(&100u32.to_be_bytes());
    first.extend_from_slice(&[0x0a; 10]);
    let request = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri("/tandem.v1.Backup/Logon")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(StalledBody::after(first)))
        .unwrap();
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(120), channel.call(request))
        .await
        .expect("the server answered a stalled logon within 2 minutes")
        .expect("an answer");
    let status = grpc_status(answer).await;
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("did not arrive within 30000 ms"),
        "{status:?}"
    );

    let mut raw = raw_backup_client(&server).await;
    raw.logon(pb::LogonRequest {
        node: "alice".into(),
        password: "alice-password".into(),
        ..Default::default()
    })
    .await
    .expect("a whole logon goes on as before");
}
