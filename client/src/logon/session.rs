//! A logged-on session. [`Session::establish`] runs the logon decision of
//! [`crate::logon::failover`]: it tries the primary with `connect_timeout_ms` and up to
//! `logon_retries` tries with exponential backoff (`backoff`), and when nobody
//! answers and a replication server is stored, checks that server's
//! certificate against the fingerprint the primary pushed (TLS handshake) and
//! its GUID (`Identify`) before logging on to it in failover mode. Every
//! connection checks the server's certificate before the first request, so
//! no password ever reaches a server that is not the pinned one.

use std::future::Future;
use std::time::{Duration, Instant};

use backoff::ExponentialBackoff;
use tandem_proto::pb::{self, backup_client::BackupClient};
use tandem_proto::{MAX_MESSAGE_BYTES, SESSION_HEADER};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;
use crate::logon::failover::{Logon, LogonFacts, Next, Refusal, Seen, ServerRef, SessionMode};
use crate::logon::nrtable::NodeReplicationTable;
use crate::options::ClientOptions;
use crate::output::console::Console;
use crate::output::messages::Msg;
use crate::output::timefmt;

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
    pub replication_server: Option<(crate::logon::options_push::PushedServer, i64)>,
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
    /// Normal (primary) or failover (replication server, read-only).
    pub mode: SessionMode,
    /// The primary, as the options name it.
    pub primary: ServerRef,
}

/// The outcome of one try.
enum Attempt {
    Unreachable(String),
    Refused(String),
    /// Not the pinned server: nothing was sent.
    Untrusted(String),
}

/// Whether a status means "nobody answered" rather than "the server said no".
/// tonic reports its own request timeout as `Cancelled` ("Timeout expired").
fn is_transport_failure(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
    )
}

async fn connect(
    address: &str,
    timeout: Duration,
    trust: Option<&tandem_tls::Trust>,
) -> Result<BackupClient<Channel>, Attempt> {
    let endpoint = Endpoint::from_shared(address.to_string())
        .map_err(|e| Attempt::Refused(format!("{address} is not a valid URL: {e}")))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(tandem_proto::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(tandem_proto::CONNECTION_WINDOW_BYTES)
        .max_frame_size(tandem_proto::MAX_FRAME_BYTES);
    let tls = trust
        .map(|t| tandem_tls::ClientTls::new(t, None))
        .transpose()
        .map_err(|e| Attempt::Untrusted(e.to_string()))?;
    let channel = tokio::time::timeout(timeout, tandem_tls::connect(endpoint, tls.as_ref()))
        .await
        .map_err(|_| Attempt::Unreachable(format!("no answer within {} ms", timeout.as_millis())))?
        .map_err(|e| match e {
            tandem_tls::ConnectError::Unreachable { cause, .. } => Attempt::Unreachable(cause),
            other => Attempt::Untrusted(other.to_string()),
        })?;
    Ok(BackupClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// How the replication server is recognised: by the fingerprint the primary
/// pushed. Without one (a block from before TLS) it cannot be trusted; only
/// a plaintext loopback address (development) needs none.
fn secondary_trust(
    entry: &crate::options::ReplServerEntry,
) -> Result<Option<tandem_tls::Trust>, String> {
    if entry.fingerprint.is_empty() {
        return if matches!(tandem_tls::parse_url_scheme(&entry.address), Ok(false)) {
            Ok(None)
        } else {
            Err("no certificate fingerprint is stored for it in the options file".into())
        };
    }
    entry
        .fingerprint
        .parse()
        .map(|fp| Some(tandem_tls::Trust::Pinned(fp)))
        .map_err(|e: tandem_tls::FingerprintError| e.to_string())
}

fn status_attempt(status: tonic::Status) -> Attempt {
    if is_transport_failure(&status) {
        Attempt::Unreachable(status.message().to_string())
    } else {
        Attempt::Refused(status.message().to_string())
    }
}

async fn try_logon(
    options: &ClientOptions,
    address: &str,
    trust: Option<&tandem_tls::Trust>,
    timeout: Duration,
    failover: bool,
) -> Result<(BackupClient<Channel>, pb::LogonResponse), Attempt> {
    let mut client = connect(address, timeout, trust).await?;
    let mut request = tonic::Request::new(pb::LogonRequest {
        node: options.node_name.clone(),
        password: options.password().expose().to_string(),
        client_version: env!("CARGO_PKG_VERSION").to_string(),
        failover,
        primary_server: options.server_name.clone(),
    });
    request.set_timeout(timeout);
    let reply = client.logon(request).await.map_err(status_attempt)?;
    Ok((client, reply.into_inner()))
}

async fn try_identify(
    address: &str,
    trust: Option<&tandem_tls::Trust>,
    timeout: Duration,
) -> Result<pb::IdentifyResponse, Attempt> {
    let mut client = connect(address, timeout, trust).await?;
    let mut request = tonic::Request::new(pb::IdentifyRequest {});
    request.set_timeout(timeout);
    Ok(client
        .identify(request)
        .await
        .map_err(status_attempt)?
        .into_inner())
}

/// Runs `attempt` until it answers, up to `retries` tries with exponential
/// backoff inside `budget`. Returns the result and the number of tries.
async fn with_retries<T, F, Fut>(
    budget: Duration,
    retries: u32,
    mut attempt: F,
) -> (Result<T, Attempt>, u32)
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, Attempt>>,
{
    let started = Instant::now();
    let policy = ExponentialBackoff {
        initial_interval: Duration::from_millis(50),
        max_interval: Duration::from_millis(400),
        multiplier: 2.0,
        randomization_factor: 0.2,
        max_elapsed_time: Some(budget),
        ..ExponentialBackoff::default()
    };
    let mut tries = 0u32;
    let result = backoff::future::retry(policy, || {
        tries += 1;
        let this_try = tries;
        let remaining = budget
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(50));
        let fut = attempt(remaining);
        async move {
            match fut.await {
                Ok(ok) => Ok(ok),
                Err(Attempt::Unreachable(cause)) if this_try < retries => {
                    Err(backoff::Error::transient(Attempt::Unreachable(cause)))
                }
                Err(other) => Err(backoff::Error::permanent(other)),
            }
        }
    })
    .await;
    (result, tries)
}

/// The client's memory between commands: the mode of the last session and the
/// primary's GUID (stored next to the node replication table).
fn last_mode(options: &ClientOptions) -> SessionMode {
    NodeReplicationTable::open(&options.state_dir())
        .ok()
        .and_then(|t| t.setting("last_mode").ok().flatten())
        .map_or(SessionMode::Normal, |m| {
            if m == "failover" {
                SessionMode::Failover
            } else {
                SessionMode::Normal
            }
        })
}

impl Session {
    /// Logs on: to the primary, or in failover mode to its replication server.
    ///
    /// # Errors
    /// Unreachable servers, refused logons, GUID mismatches, each with its TDM id.
    pub async fn establish(
        options: &ClientOptions,
        console: &Console,
    ) -> Result<Session, ClientError> {
        let primary = ServerRef {
            name: options.server_name.clone(),
            address: options.server_address.clone(),
            guid: String::new(),
        };
        let secondary = options.replication_server().map(|(name, e)| ServerRef {
            name: name.to_string(),
            address: e.address.clone(),
            guid: e.server_guid.clone(),
        });
        let mut logon = Logon::new(LogonFacts {
            primary: primary.clone(),
            force_failover: options.force_failover,
            failover_enabled: options.use_replication_failover,
            secondary,
            last_mode: last_mode(options),
        });
        let budget = Duration::from_millis(options.connect_timeout_ms);
        let started = Instant::now();
        let mut tries = 0u32;
        let mut answered: Option<(BackupClient<Channel>, pb::LogonResponse, SessionMode)> = None;
        // At most two servers are tried: the loop ends within three rounds.
        for _round in 0..3 {
            let seen = match logon.next() {
                Next::TryPrimary => {
                    let trust = options.primary_trust();
                    let (result, n) = with_retries(budget, options.logon_retries, |t| {
                        try_logon(options, &primary.address, trust.as_ref(), t, false)
                    })
                    .await;
                    tries += n;
                    match result {
                        Ok((client, reply)) => {
                            let guid = reply.server_guid.clone();
                            answered = Some((client, reply, SessionMode::Normal));
                            Seen::Answered { guid }
                        }
                        Err(Attempt::Unreachable(c)) => Seen::Unreachable(c),
                        Err(Attempt::Refused(c)) => Seen::Rejected(c),
                        Err(Attempt::Untrusted(c)) => Seen::Untrusted(c),
                    }
                }
                Next::TrySecondary(s) => {
                    let entry = options.replication_server().map(|(_, e)| e.clone());
                    let trust = entry.as_ref().map(secondary_trust);
                    let (result, _) = match trust {
                        Some(Ok(trust)) => {
                            with_retries(budget, options.logon_retries, |t| {
                                try_identify(&s.address, trust.as_ref(), t)
                            })
                            .await
                        }
                        Some(Err(why)) => (Err(Attempt::Untrusted(why)), 0),
                        None => (Err(Attempt::Untrusted("no replication server".into())), 0),
                    };
                    match result {
                        Ok(id) => Seen::Answered {
                            guid: id.server_guid,
                        },
                        Err(Attempt::Unreachable(c)) => Seen::Unreachable(c),
                        Err(Attempt::Refused(c)) => Seen::Rejected(c),
                        Err(Attempt::Untrusted(c)) => Seen::Untrusted(c),
                    }
                }
                Next::Done(outcome) => {
                    return finish(
                        outcome, answered, options, &primary, console, tries, started,
                    )
                    .await;
                }
            };
            for msg in logon.observe(seen) {
                console.audit(&msg);
            }
        }
        match logon.next() {
            Next::Done(outcome) => {
                finish(
                    outcome, answered, options, &primary, console, tries, started,
                )
                .await
            }
            _ => Err(ClientError::Usage(
                "internal: the logon decision did not finish".into(),
            )),
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

/// Turns the decision's outcome into a session (logging on to the secondary
/// when that is where it ended) or an error.
async fn finish(
    outcome: Result<SessionMode, Refusal>,
    answered: Option<(BackupClient<Channel>, pb::LogonResponse, SessionMode)>,
    options: &ClientOptions,
    primary: &ServerRef,
    console: &Console,
    tries: u32,
    started: Instant,
) -> Result<Session, ClientError> {
    let secondary = options.replication_server();
    let (client, reply, mode) = match outcome {
        Ok(SessionMode::Normal) => {
            answered.ok_or_else(|| ClientError::Usage("internal: no primary session".into()))?
        }
        Ok(SessionMode::Failover) => {
            let (name, entry) =
                secondary.ok_or_else(|| ClientError::Usage("internal: no secondary".into()))?;
            let budget = Duration::from_millis(options.connect_timeout_ms);
            let untrusted = |cause: &str| ClientError::Failover {
                id: "TDM2113E",
                text: Msg::secondary_untrusted(name, &entry.address, cause).text,
            };
            let trust = secondary_trust(entry).map_err(|why| untrusted(&why))?;
            match try_logon(options, &entry.address, trust.as_ref(), budget, true).await {
                Ok((client, reply)) => (client, reply, SessionMode::Failover),
                Err(Attempt::Refused(message)) => {
                    return Err(ClientError::LogonRefused {
                        server: name.to_string(),
                        message,
                    });
                }
                Err(Attempt::Unreachable(cause)) => {
                    return Err(ClientError::Failover {
                        id: "TDM2114E",
                        text: Msg::secondary_failed(name, &entry.address, &cause).text,
                    });
                }
                Err(Attempt::Untrusted(cause)) => return Err(untrusted(&cause)),
            }
        }
        Err(Refusal::Rejected(message)) => {
            let server = if options.force_failover {
                secondary.map_or(primary.name.clone(), |s| s.0.to_string())
            } else {
                primary.name.clone()
            };
            return Err(ClientError::LogonRefused { server, message });
        }
        Err(Refusal::PrimaryUnreachable { cause, why }) => {
            return Err(ClientError::Unreachable {
                server: primary.name.clone(),
                address: primary.address.clone(),
                cause: format!("{cause}; no failover: {why}"),
                attempts: tries,
                elapsed_ms: started.elapsed().as_millis(),
            });
        }
        Err(Refusal::GuidMismatch { expected, found }) => {
            let (name, entry) =
                secondary.map_or(("?", String::new()), |(n, e)| (n, e.address.clone()));
            return Err(ClientError::Failover {
                id: "TDM2112E",
                text: Msg::guid_mismatch(name, &entry, &expected, &found).text,
            });
        }
        Err(Refusal::PrimaryUntrusted(cause)) => {
            return Err(ClientError::Untrusted {
                server: primary.name.clone(),
                cause,
            });
        }
        Err(Refusal::SecondaryUntrusted(cause)) => {
            let (name, address) =
                secondary.map_or(("?", String::new()), |(n, e)| (n, e.address.clone()));
            return Err(ClientError::Failover {
                id: "TDM2113E",
                text: Msg::secondary_untrusted(name, &address, &cause).text,
            });
        }
        Err(Refusal::SecondaryUnreachable(cause)) => {
            let (name, address) =
                secondary.map_or(("?", String::new()), |(n, e)| (n, e.address.clone()));
            return Err(ClientError::Failover {
                id: "TDM2114E",
                text: Msg::secondary_failed(name, &address, &cause).text,
            });
        }
    };
    let token = reply
        .session_token
        .parse()
        .map_err(|_| ClientError::Server {
            operation: "logon",
            message: "server sent a malformed session token".into(),
        })?;
    let info = ServerInfo {
        name: reply.server_name,
        address: if mode == SessionMode::Failover {
            secondary.map_or_else(String::new, |(_, e)| e.address.clone())
        } else {
            options.server_address.clone()
        },
        guid: reply.server_guid,
        node: reply.node,
        session_id: reply.session_id,
        replication_server: reply.replication_server.map(|r| {
            (
                crate::logon::options_push::PushedServer {
                    name: r.name,
                    address: r.address,
                    guid: r.guid,
                    fingerprint: r.fingerprint,
                },
                r.last_replication_ns,
            )
        }),
        replica: reply.replica,
        replicated_ns: reply.replicated_ns,
    };
    let state = NodeReplicationTable::open(&options.state_dir());
    match mode {
        SessionMode::Failover => {
            let replicated = if info.replicated_ns == 0 {
                "never".to_string()
            } else {
                timefmt::rfc3339(info.replicated_ns)
            };
            console.audit(&Msg::failed_over(
                &info.name,
                &info.guid,
                &info.node,
                &replicated,
            ));
            if let Ok(t) = &state {
                let _ = t.set_setting("last_mode", "failover");
            }
        }
        SessionMode::Normal => {
            if let Ok(t) = &state {
                let _ = t.set_setting("last_mode", "normal");
                let _ = t.set_setting("primary_guid", &info.guid);
            }
        }
    }
    Ok(Session {
        client,
        token,
        info,
        mode,
        primary: primary.clone(),
    })
}
