//! A replication partner that proves its pinned certificate and the shared
//! password, and then lies, played by this test against a real primary:
//! it claims to lack a chunk of another node that it was never asked about
//! (a guess at that node's data), names more chunks than it was asked
//! about, and lists versions it holds without end. The primary must send
//! it nothing but the node's own chunks, each once, and end the run with a
//! reason rather than read out other data or fill its memory.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tandem_proto::ChunkId;
use tandem_proto::pb::{
    self,
    replication_server::{Replication, ReplicationServer},
};
use tandem_tests::*;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// How the fake partner lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lie {
    /// Its answer to "which of these do you lack" swaps the first id asked
    /// for another node's chunk (no longer than the question).
    SwapsInAnotherNodesChunk,
    /// Its answer names every chunk asked about, and another node's too.
    NamesMoreThanAsked,
    /// Its list of held versions goes on without end (up to a bound here).
    EndlessInventory,
    /// None: it answers as a real partner would.
    None,
}

/// Entries the endless inventory streams at most (the primary must stop
/// reading long before: it allows a million plus twice its own versions).
const ENDLESS_ENTRIES: usize = 3_000_000;

struct FakePartner {
    password: String,
    guid: [u8; 16],
    lie: Arc<Mutex<Lie>>,
    /// Another node's chunk, the one this partner fishes for.
    bait: ChunkId,
    /// Every chunk id the primary uploaded, in order.
    received: Arc<Mutex<Vec<ChunkId>>>,
    /// Inventory entries streamed to the primary.
    streamed: Arc<Mutex<usize>>,
}

fn guid_text(guid: &[u8; 16]) -> String {
    guid.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(".")
}

type Answer<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for FakePartner {
    async fn hello(
        &self,
        request: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        // The proof a real partner gives: it knows the shared password.
        let key = blake3::hash(self.password.as_bytes());
        let mut proof = blake3::Hasher::new_keyed(key.as_bytes());
        proof.update(&request.get_ref().nonce);
        proof.update(guid_text(&self.guid).as_bytes());
        Ok(Response::new(pb::HelloResponse {
            target_name: "FAKE".into(),
            target_guid: guid_text(&self.guid),
            failover_address: String::new(),
            session_token: "fake-session".into(),
            proof: proof.finalize().as_bytes().to_vec(),
            protocol_version: tandem_proto::REPLICATION_PROTOCOL,
        }))
    }

    async fn prepare_node(
        &self,
        _: Request<pb::PrepareNodeRequest>,
    ) -> Result<Response<pb::PrepareNodeResponse>, Status> {
        Ok(Response::new(pb::PrepareNodeResponse {}))
    }

    type TargetInventoryStream = Answer<pb::TargetInventoryResponse>;

    async fn target_inventory(
        &self,
        _: Request<pb::TargetInventoryRequest>,
    ) -> Result<Response<Self::TargetInventoryStream>, Status> {
        let endless = *self.lie.lock().unwrap() == Lie::EndlessInventory;
        let streamed = self.streamed.clone();
        let batches = if endless { ENDLESS_ENTRIES / 10_000 } else { 0 };
        let stream = tokio_stream::iter((0..batches).map(move |batch| {
            let versions = (0..10_000u32)
                .map(|i| {
                    let mut id = [0u8; 16];
                    id[..8].copy_from_slice(&(batch as u64).to_be_bytes());
                    id[8..12].copy_from_slice(&i.to_be_bytes());
                    pb::VersionState {
                        object_id: id.to_vec(),
                        active: true,
                        deactivated_ns: 0,
                        filespace: "/".into(),
                        size: 1,
                    }
                })
                .collect::<Vec<_>>();
            *streamed.lock().unwrap() += versions.len();
            Ok(pb::TargetInventoryResponse { versions })
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn find_missing_chunks(
        &self,
        request: Request<pb::ReplicaChunkIdsRequest>,
    ) -> Result<Response<pb::FindMissingChunksResponse>, Status> {
        let mut missing = request.into_inner().chunk_ids;
        let bait = self.bait.as_slice().to_vec();
        match *self.lie.lock().unwrap() {
            Lie::SwapsInAnotherNodesChunk => {
                if !missing.is_empty() {
                    missing[0] = bait;
                }
            }
            Lie::NamesMoreThanAsked => missing.push(bait),
            Lie::EndlessInventory | Lie::None => {}
        }
        Ok(Response::new(pb::FindMissingChunksResponse { missing }))
    }

    async fn upload_chunks(
        &self,
        request: Request<Streaming<pb::ReplicaChunksRequest>>,
    ) -> Result<Response<pb::UploadChunksResponse>, Status> {
        let mut stream = request.into_inner();
        while let Some(message) = stream.message().await? {
            let mut received = self.received.lock().unwrap();
            for chunk in message.chunks {
                received.push(ChunkId::from_slice(&chunk.id).expect("a chunk id"));
            }
        }
        Ok(Response::new(pb::UploadChunksResponse::default()))
    }

    async fn update_states(
        &self,
        request: Request<pb::UpdateStatesRequest>,
    ) -> Result<Response<pb::UpdateStatesResponse>, Status> {
        let updated = request.get_ref().states.len() as u64;
        Ok(Response::new(pb::UpdateStatesResponse { updated }))
    }

    async fn put_objects(
        &self,
        request: Request<pb::PutObjectsRequest>,
    ) -> Result<Response<pb::PutObjectsResponse>, Status> {
        let stored = request.get_ref().objects.len() as u64;
        Ok(Response::new(pb::PutObjectsResponse { stored }))
    }

    async fn delete_objects(
        &self,
        _: Request<pb::DeleteObjectsRequest>,
    ) -> Result<Response<pb::DeleteObjectsResponse>, Status> {
        Ok(Response::new(pb::DeleteObjectsResponse { deleted: 0 }))
    }

    async fn finish_run(
        &self,
        _: Request<pb::FinishRunRequest>,
    ) -> Result<Response<pb::FinishRunResponse>, Status> {
        Ok(Response::new(pb::FinishRunResponse {}))
    }

    async fn bye(&self, _: Request<pb::ByeRequest>) -> Result<Response<pb::ByeResponse>, Status> {
        Ok(Response::new(pb::ByeResponse {}))
    }

    type ReadSharedChunksStream = Answer<pb::ReadChunksResponse>;

    async fn read_shared_chunks(
        &self,
        _: Request<pb::ReplicaChunkIdsRequest>,
    ) -> Result<Response<Self::ReadSharedChunksStream>, Status> {
        Err(Status::unimplemented("not played by this fake"))
    }

    async fn held_replicas(
        &self,
        _: Request<pb::HeldReplicasRequest>,
    ) -> Result<Response<pb::HeldReplicasResponse>, Status> {
        Err(Status::unimplemented("not played by this fake"))
    }

    async fn replicate_back(
        &self,
        _: Request<pb::ReplicateBackRequest>,
    ) -> Result<Response<pb::ReplicateBackResponse>, Status> {
        Err(Status::unimplemented("not played by this fake"))
    }

    async fn take_over(
        &self,
        _: Request<pb::TakeOverRequest>,
    ) -> Result<Response<pb::TakeOverResponse>, Status> {
        Err(Status::unimplemented("not played by this fake"))
    }

    async fn abandon_take_over(
        &self,
        _: Request<pb::TakeOverRequest>,
    ) -> Result<Response<pb::AbandonTakeOverResponse>, Status> {
        Err(Status::unimplemented("not played by this fake"))
    }
}

/// `replicate node alice --wait` on a blocking thread (the fake partner
/// answers on this runtime meanwhile): the run's row.
async fn replicate_alice(primary: &Arc<TestServer>) -> serde_json::Value {
    let primary = primary.clone();
    tokio::task::spawn_blocking(move || replicate(&primary, "alice"))
        .await
        .unwrap()
}

/// Asserts that the replication run `run` failed with `words` in its message.
fn assert_failed_saying(run: &serde_json::Value, words: &str) {
    assert_eq!(run["state"], "failed", "{run}");
    let message = run["message"].as_str().unwrap_or_default();
    assert!(message.contains(words), "{run}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lying_partner_gets_only_the_nodes_own_chunks_and_cannot_fill_the_primarys_memory() {
    let primary = TestServer::start("PRIMARY");
    primary.register("alice", "alice-password");
    primary.register("bob", "bob-password");
    let work = tempfile::tempdir().unwrap();
    // Bob's data: one small file, one chunk, whose id the partner guesses.
    let bobs = work.path().join("bob");
    std::fs::create_dir(&bobs).unwrap();
    let secret = b"bob's payroll figures, never alice's to replicate\n";
    std::fs::write(bobs.join("payroll.txt"), secret).unwrap();
    let bait = ChunkId::of(secret);
    let bob = TestClient::new(&primary, "bob", "bob-password");
    let alices = work.path().join("alice");
    make_tree(&alices);
    let alice = TestClient::new(&primary, "alice", "alice-password");
    let (bob_dir, alice_dir) = (path_str(&bobs), path_str(&alices));
    tokio::task::spawn_blocking(move || {
        bob.json(&["incremental", &bob_dir]);
        alice.json(&["incremental", &alice_dir]);
    })
    .await
    .unwrap();

    // The partner: its own certificate, pinned by the primary, and the
    // shared password; it serves on a port of 127.0.0.1.
    let keys = tempfile::tempdir().unwrap();
    let identity =
        tandem_tls::ServerIdentity::load_or_create(keys.path(), &["fake".into()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let incoming =
        tandem_tls::incoming(listener, &identity, tandem_tls::ConnectionLimits::default()).unwrap();
    let lie = Arc::new(Mutex::new(Lie::SwapsInAnotherNodesChunk));
    let received = Arc::new(Mutex::new(Vec::new()));
    let streamed = Arc::new(Mutex::new(0usize));
    let partner = FakePartner {
        password: "shared-secret-1".into(),
        guid: rand::random(),
        lie: lie.clone(),
        bait,
        received: received.clone(),
        streamed: streamed.clone(),
    };
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ReplicationServer::new(partner))
            .serve_with_incoming(incoming),
    );
    let pw = work.path().join("fake.pw");
    std::fs::write(&pw, "shared-secret-1\n").unwrap();
    assert_success(
        &primary.define_server(
            "FAKE",
            &format!("https://{address}"),
            &identity.fingerprint().to_string(),
            &pw,
        ),
        "define FAKE",
    );
    assert_success(
        &primary.admin(&["set", "replserver", "FAKE"]),
        "set replserver",
    );
    assert_success(
        &primary.admin(&["update", "node", "alice", "--replstate", "enabled"]),
        "enable replication",
    );
    let primary = Arc::new(primary);

    // 1. Bob's chunk swapped into an answer: never read out, never sent;
    //    the run stops, saying how many ids were wrong.
    let run = replicate_alice(&primary).await;
    assert_failed_saying(&run, "names 1 chunk(s) it was not asked about");
    let sent = received.lock().unwrap().clone();
    assert!(!sent.contains(&bait), "bob's chunk reached the partner");
    assert!(sent.is_empty(), "nothing of that batch was sent: {run}");

    // An honest answer: alice's chunks go, each once.
    *lie.lock().unwrap() = Lie::None;
    let run = replicate_alice(&primary).await;
    assert_eq!(run["state"], "completed", "{run}");
    let sent = received.lock().unwrap().clone();
    assert!(!sent.is_empty(), "alice's chunks were sent: {run}");
    assert!(!sent.contains(&bait), "bob's chunk reached the partner");
    let distinct: HashSet<_> = sent.iter().collect();
    assert_eq!(distinct.len(), sent.len(), "a chunk was sent twice");

    // 2. An answer naming more chunks than were asked: the run ends with
    //    the reason, and nothing more is sent.
    *lie.lock().unwrap() = Lie::NamesMoreThanAsked;
    received.lock().unwrap().clear();
    let run = replicate_alice(&primary).await;
    assert_failed_saying(&run, "chunks of the");
    assert!(received.lock().unwrap().is_empty(), "{run}");

    // 3. A list of held versions without end: refused once past the bound,
    //    long before the partner runs out.
    *lie.lock().unwrap() = Lie::EndlessInventory;
    let run = replicate_alice(&primary).await;
    assert_failed_saying(&run, "which this server never sent it");
    let streamed = *streamed.lock().unwrap();
    assert!(
        (1_000_000..ENDLESS_ENTRIES).contains(&streamed),
        "{streamed} streamed: {run}"
    );

    // The primary is whole and serves on.
    let out = primary.admin(&["query", "status"]);
    assert_success(&out, "query status");
    serving.abort();
}
