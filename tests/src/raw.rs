//! A gRPC caller with no client program in between, as a hostile caller
//! would use the `Backup` service.

use crate::TestServer;

/// A gRPC `Backup` client of `server` with no client program in between, as a
/// hostile caller would use; it pins the server's certificate.
pub async fn raw_backup_client(
    server: &TestServer,
) -> tandem_proto::pb::backup_client::BackupClient<tonic::transport::Channel> {
    let pin = tandem_tls::Trust::Pinned(server.fingerprint().parse().expect("fingerprint"));
    let tls = tandem_tls::ClientTls::new(&pin, None).expect("client TLS");
    let endpoint = tonic::transport::Endpoint::from_shared(server.url()).expect("url");
    let channel = tandem_tls::connect(endpoint, Some(&tls))
        .await
        .expect("connect");
    tandem_proto::pb::backup_client::BackupClient::new(channel)
}

/// `raw` as an honest upload: its BLAKE3 id and one zstd frame.
pub fn wire_chunk(raw: &[u8]) -> tandem_proto::pb::Chunk {
    tandem_proto::pb::Chunk {
        id: tandem_proto::ChunkId::of(raw).as_slice().to_vec(),
        data: zstd::bulk::compress(raw, 1).expect("zstd").into(),
        raw_len: raw.len() as u64,
    }
}

/// A raw client logged on as `node`, and its session token.
pub async fn raw_backup_session(
    server: &TestServer,
    node: &str,
    password: &str,
) -> (
    tandem_proto::pb::backup_client::BackupClient<tonic::transport::Channel>,
    String,
) {
    let mut client = raw_backup_client(server).await;
    let token = client
        .logon(tandem_proto::pb::LogonRequest {
            node: node.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .expect("logon")
        .into_inner()
        .session_token;
    (client, token)
}

/// The server's answer to session `token`'s request to repair chunk `id`
/// (`RepairChunks`), which must succeed.
pub async fn repair_answer(
    client: &mut tandem_proto::pb::backup_client::BackupClient<tonic::transport::Channel>,
    token: &str,
    id: tandem_proto::ChunkId,
) -> tandem_proto::pb::RepairChunksResponse {
    client
        .repair_chunks(with_session(
            token,
            tandem_proto::pb::RepairChunksRequest {
                chunk_ids: vec![id.as_slice().to_vec()],
            },
        ))
        .await
        .expect("RepairChunks")
        .into_inner()
}

/// `message` as a request of the session `token`.
pub fn with_session<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        tandem_proto::SESSION_HEADER,
        token.parse().expect("ascii token"),
    );
    request
}
