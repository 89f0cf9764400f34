//! A gRPC caller with no client program in between, as a hostile caller
//! would use the `Backup` service.

use crate::TestServer;

/// A connection to `server` that pins its certificate, for requests made by
/// hand, frame by frame.
pub async fn raw_channel(server: &TestServer) -> tonic::transport::Channel {
    let pin = tandem_tls::Trust::Pinned(server.fingerprint().parse().expect("fingerprint"));
    let tls = tandem_tls::ClientTls::new(&pin, None).expect("client TLS");
    let endpoint = tonic::transport::Endpoint::from_shared(server.url()).expect("url");
    tandem_tls::connect(endpoint, Some(&tls))
        .await
        .expect("connect")
}

/// A gRPC `Backup` client of `server` with no client program in between, as a
/// hostile caller would use; it pins the server's certificate.
pub async fn raw_backup_client(
    server: &TestServer,
) -> tandem_proto::pb::backup_client::BackupClient<tonic::transport::Channel> {
    tandem_proto::pb::backup_client::BackupClient::new(raw_channel(server).await)
}

/// A request body that sends `first` and then nothing more, never ending:
/// a caller that stalls in the middle of its message.
#[derive(Debug)]
pub struct StalledBody {
    first: Option<tonic::codegen::Bytes>,
}

impl StalledBody {
    /// A body that sends `first`, then stalls.
    pub fn after(first: Vec<u8>) -> Self {
        StalledBody {
            first: Some(first.into()),
        }
    }
}

impl http_body::Body for StalledBody {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.first.take() {
            Some(first) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(first)))),
            None => std::task::Poll::Pending,
        }
    }
}

/// The gRPC status of `response`: from its headers (an answer with no
/// message), else from the trailers at the end of its body.
pub async fn grpc_status(
    response: tonic::codegen::http::Response<tonic::body::Body>,
) -> tonic::Status {
    use http_body::Body;
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(status) = tonic::Status::from_header_map(trailers)
                {
                    return status;
                }
            }
            Some(Err(status)) => return status,
            None => return tonic::Status::unknown("the answer ended without a gRPC status"),
        }
    }
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
