//! A logged-on session with the server: connects with `connect_timeout_ms`,
//! retries with exponential backoff (`backoff`) up to `logon_retries` tries,
//! and tells "unreachable" (transport failure, timeout) from "refused" (the
//! server answered no), which later decides failover.

use std::time::{Duration, Instant};

use backoff::ExponentialBackoff;
use tandem_proto::pb::{self, backup_client::BackupClient};
use tandem_proto::{MAX_MESSAGE_BYTES, SESSION_HEADER};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;
use crate::options::ClientOptions;

/// Facts about the server a session is logged on to.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// Server name as the server reports it.
    pub name: String,
    /// The address used.
    pub address: String,
    /// The server's GUID (dotted hex).
    pub guid: String,
    /// Node name as stored.
    pub node: String,
    /// Session number on the server.
    pub session_id: u64,
    /// The primary's replication server for this node, when it sent one.
    pub replication_server: Option<(crate::options_push::PushedServer, i64)>,
    /// The server holds the node as a replica: read-only session.
    pub replica: bool,
    /// On a replica: the node's last replication time (Unix ns).
    pub replicated_ns: i64,
}

/// An authenticated session.
#[derive(Debug, Clone)]
pub struct Session {
    client: BackupClient<Channel>,
    token: MetadataValue<tonic::metadata::Ascii>,
    /// Who we are talking to.
    pub info: ServerInfo,
}

enum Attempt {
    Unreachable(String),
    Refused(String),
}

/// Whether a status means "nobody answered" rather than "the server said no".
fn is_transport_failure(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
}

async fn try_logon(
    options: &ClientOptions,
    timeout: Duration,
) -> Result<(BackupClient<Channel>, pb::LogonResponse), Attempt> {
    let endpoint = Endpoint::from_shared(options.server_address.clone())
        .map_err(|e| Attempt::Refused(format!("server_address is not a valid URL: {e}")))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    let channel = tokio::time::timeout(timeout, endpoint.connect())
        .await
        .map_err(|_| Attempt::Unreachable(format!("no answer within {} ms", timeout.as_millis())))?
        .map_err(|e| Attempt::Unreachable(transport_cause(&e)))?;
    let mut client = BackupClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut request = tonic::Request::new(pb::LogonRequest {
        node: options.node_name.clone(),
        password: options.password().expose().to_string(),
        client_version: env!("CARGO_PKG_VERSION").to_string(),
    });
    request.set_timeout(timeout);
    match client.logon(request).await {
        Ok(reply) => Ok((client, reply.into_inner())),
        Err(status) if is_transport_failure(&status) => {
            Err(Attempt::Unreachable(status.message().to_string()))
        }
        Err(status) => Err(Attempt::Refused(status.message().to_string())),
    }
}

/// The innermost cause of a transport error ("Connection refused", ...).
fn transport_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

impl Session {
    /// Logs on to the server named in `options`.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] when no try got an answer within the time
    /// budget; [`ClientError::LogonRefused`] when the server answered no.
    pub async fn logon(options: &ClientOptions) -> Result<Session, ClientError> {
        let started = Instant::now();
        let budget = Duration::from_millis(options.connect_timeout_ms);
        let policy = ExponentialBackoff {
            initial_interval: Duration::from_millis(50),
            max_interval: Duration::from_millis(400),
            multiplier: 2.0,
            randomization_factor: 0.2,
            max_elapsed_time: Some(budget),
            ..ExponentialBackoff::default()
        };
        let mut attempts = 0u32;
        let result = backoff::future::retry(policy, || {
            attempts += 1;
            let attempt = attempts;
            let remaining = budget
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(50));
            async move {
                match try_logon(options, remaining).await {
                    Ok(ok) => Ok(ok),
                    Err(Attempt::Unreachable(cause)) if attempt < options.logon_retries => {
                        tracing::debug!(attempt, %cause, "server unreachable, retrying");
                        Err(backoff::Error::transient(Attempt::Unreachable(cause)))
                    }
                    Err(other) => Err(backoff::Error::permanent(other)),
                }
            }
        })
        .await;
        match result {
            Ok((client, reply)) => Ok(Session {
                client,
                token: reply
                    .session_token
                    .parse()
                    .map_err(|_| ClientError::Server {
                        operation: "logon",
                        message: "server sent a malformed session token".into(),
                    })?,
                info: ServerInfo {
                    name: reply.server_name,
                    address: options.server_address.clone(),
                    guid: reply.server_guid,
                    node: reply.node,
                    session_id: reply.session_id,
                    replication_server: reply.replication_server.map(|r| {
                        (
                            crate::options_push::PushedServer {
                                name: r.name,
                                address: r.address,
                                guid: r.guid,
                            },
                            r.last_replication_ns,
                        )
                    }),
                    replica: reply.replica,
                    replicated_ns: reply.replicated_ns,
                },
            }),
            Err(Attempt::Unreachable(cause)) => Err(ClientError::Unreachable {
                server: options.server_name.clone(),
                address: options.server_address.clone(),
                cause,
                attempts,
                elapsed_ms: started.elapsed().as_millis(),
            }),
            Err(Attempt::Refused(message)) => Err(ClientError::LogonRefused {
                server: options.server_name.clone(),
                message,
            }),
        }
    }

    /// A request carrying the session token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert(SESSION_HEADER, self.token.clone());
        request
    }

    /// The gRPC client (cheap to clone; shares the connection).
    pub fn client(&self) -> BackupClient<Channel> {
        self.client.clone()
    }

    /// Ends the session; the server logs its totals. Failures are ignored:
    /// the server forgets idle sessions anyway.
    pub async fn logoff(self) {
        let mut client = self.client.clone();
        let _ = client.logoff(self.request(pb::LogoffRequest {})).await;
    }
}
