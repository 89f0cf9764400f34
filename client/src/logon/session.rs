//! A logged-on session. [`Session::establish`] runs the logon decision of
//! [`crate::logon::failover`]: it tries the primary with `connect_timeout_ms` and up to
//! `logon_retries` tries with exponential backoff (`backoff`), and when nobody
//! answers and a replication server is stored, checks that server's
//! certificate against the fingerprint the primary pushed (TLS handshake) and
//! its GUID (`Identify`) before logging on to it in failover mode. Every
//! connection checks the server's certificate before the first request, so
//! no password ever reaches a server that is not the pinned one. A server
//! that completed the handshake and then says it is busy, or is slow to
//! answer, is waited for up to `busy_wait_seconds` ([`crate::logon::busy`]):
//! it is up, and failing over from it would be wrong.

use std::future::Future;
use std::time::{Duration, Instant};

use backoff::ExponentialBackoff;
use tandem_proto::pb::{self, backup_client::BackupClient};
use tandem_proto::{MAX_MESSAGE_BYTES, SESSION_HEADER, ServerGuid};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::error::ClientError;
use crate::logon::busy::{BusyWait, MAX_BUSY_ROUNDS};
use crate::logon::failover::{Logon, LogonFacts, Next, Refusal, Seen, ServerRef, SessionMode};
use crate::logon::nrtable::NodeReplicationTable;
use crate::logon::options_push::PushedServer;
use crate::options::{ClientOptions, ReplServerEntry};
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
    /// The server's GUID.
    pub guid: ServerGuid,
    /// Node name as stored.
    pub node: String,
    /// Session number on the server.
    pub session_id: u64,
    /// The primary's replication server for this node, when it sent one.
    pub replication_server: Option<(PushedServer, i64)>,
    /// The server holds the node as a replica: read-only session.
    pub replica: bool,
    /// On a replica: the node's last replication time (Unix ns).
    pub replicated_ns: i64,
}

/// The node's primary server has changed (a planned role switch on the
/// servers), as a server the client had authenticated said at logon: its
/// old primary (pinned in the options), or at a failover logon the
/// replication server itself (pinned by the fingerprint the primary pushed).
/// No session was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedPrimary {
    /// The new primary's name.
    pub name: String,
    /// Its client-facing address.
    pub address: String,
    /// Its GUID.
    pub guid: ServerGuid,
    /// Its certificate fingerprint, to pin (empty when the options trust a
    /// CA file instead, which then has to vouch for it).
    pub fingerprint: String,
    /// The server that said so.
    pub told_by: String,
    /// Said by the new primary at a failover logon, rather than by the old
    /// primary.
    pub at_failover: bool,
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
    /// For a vault session: keeps the in-process store open while the
    /// session (or a clone of it) lives, and bounds the calls made to it
    /// directly.
    vault: Option<crate::vault::calls::VaultCalls>,
    /// The local vault beside this server session: every chunk uploaded
    /// in this session is also sent to it, so the vault's sync after the
    /// backup moves only version records, and a client's own deletions are
    /// applied to it too. Best effort: what it misses, the sync brings.
    vault_beside: Option<Box<Session>>,
    /// For a vault session: the client's `state_dir`, where what it writes
    /// to the vault is recorded ([`crate::vault::own`]).
    state_dir: Option<std::path::PathBuf>,
}

/// The outcome of one try.
enum Attempt {
    Unreachable(String),
    Refused(String),
    /// Not the pinned server: nothing was sent.
    Untrusted(String),
    /// The server completed the handshake, then said it is busy.
    Busy(String),
    /// The server completed the handshake, then did not answer in time or
    /// dropped the connection ([`crate::logon::busy`]).
    Unanswered(String),
}

impl Attempt {
    /// What the logon decision is told about a failed try, once the busy
    /// wait ([`through_busy`]) is over: a server that kept saying "busy" is
    /// up; one that stayed silent after its handshake is treated as down.
    fn seen(self) -> Seen {
        match self {
            Attempt::Unreachable(cause) => Seen::Unreachable(cause),
            Attempt::Refused(message) => Seen::Rejected(message),
            Attempt::Untrusted(cause) => Seen::Untrusted(cause),
            Attempt::Busy(cause) => Seen::Busy(cause),
            Attempt::Unanswered(cause) => Seen::Unreachable(format!(
                "{cause} (it completed the TLS handshake but never answered the logon)"
            )),
        }
    }
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
    let endpoint = tandem_proto::bulk_endpoint(address, timeout)
        .map_err(|e| Attempt::Refused(format!("{address} is not a valid URL: {e}")))?;
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
fn secondary_trust(entry: &ReplServerEntry) -> Result<Option<tandem_tls::Trust>, String> {
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

/// What a failed call on an established connection means. The connection
/// exists, so the server has answered (over TLS: proved who it is): "busy"
/// (`ResourceExhausted` with gRPC's retry pushback) and silence are waited
/// out ([`through_busy`]), anything else is its no.
fn status_attempt(status: tonic::Status) -> Attempt {
    let message = status.message().to_string();
    let pushback = status
        .metadata()
        .contains_key(tandem_proto::RETRY_PUSHBACK_HEADER);
    if status.code() == Code::ResourceExhausted && pushback {
        Attempt::Busy(message)
    } else if is_transport_failure(&status) || is_local_transport_error(&status) {
        Attempt::Unanswered(message)
    } else {
        Attempt::Refused(message)
    }
}

/// Whether tonic made `status` itself from a broken connection (a server
/// closing a connection that waited in its line too long, say): tonic
/// reports those as `Unknown` with the transport error as its source, where
/// a status the server sent never has a source.
fn is_local_transport_error(status: &tonic::Status) -> bool {
    status.code() == Code::Unknown && std::error::Error::source(status).is_some()
}

/// One logon try: connect (handshake) within `timeout`, then wait up to
/// `answer_timeout` for the logon's answer.
async fn try_logon(
    options: &ClientOptions,
    address: &str,
    trust: Option<&tandem_tls::Trust>,
    (timeout, answer_timeout): (Duration, Duration),
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
    request.set_timeout(answer_timeout);
    let reply = client.logon(request).await.map_err(status_attempt)?;
    Ok((client, reply.into_inner()))
}

/// One identify try, timed as [`try_logon`].
async fn try_identify(
    address: &str,
    trust: Option<&tandem_tls::Trust>,
    (timeout, answer_timeout): (Duration, Duration),
) -> Result<pb::IdentifyResponse, Attempt> {
    let mut client = connect(address, timeout, trust).await?;
    let mut request = tonic::Request::new(pb::IdentifyRequest {});
    request.set_timeout(answer_timeout);
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

/// Runs `round` (a logon with its own unreachable retries, given how long an
/// answer may take) again while `server` answers "busy" or stays silent
/// after its handshake, until `wait` is up; see [`crate::logon::busy`].
/// Returns the last result, except that a server that said "busy" in any
/// round and was then silent ends as busy (it was up), and the tries made.
async fn through_busy<T, F, Fut>(
    wait: &mut BusyWait,
    console: &Console,
    server: &ServerRef,
    mut round: F,
) -> (Result<T, Attempt>, u32)
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = (Result<T, Attempt>, u32)>,
{
    let mut tries = 0;
    let mut said_busy: Option<String> = None;
    for _ in 0..MAX_BUSY_ROUNDS {
        let (result, n) = round(wait.answer_timeout(Duration::ZERO)).await;
        tries += n;
        let cause = match result {
            Err(Attempt::Busy(cause)) => {
                said_busy = Some(cause.clone());
                cause
            }
            Err(Attempt::Unanswered(cause)) => cause,
            other => return (other, tries),
        };
        if !wait.pause(console, server, &cause).await {
            let last = match said_busy {
                Some(busy) => Attempt::Busy(busy),
                None => Attempt::Unanswered(cause),
            };
            return (Err(last), tries);
        }
    }
    (
        Err(Attempt::Busy(format!(
            "still busy after {MAX_BUSY_ROUNDS} rounds in {} s",
            wait.seconds()
        ))),
        tries,
    )
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
        let mut run = LogonRun::new(options, console);
        let mut logon = Logon::new(run.facts());
        // At most two servers are tried: the loop ends within three rounds.
        for _round in 0..3 {
            let seen = match logon.next() {
                Next::TryPrimary => run.try_primary().await,
                Next::TrySecondary(_) => run.try_secondary().await,
                Next::Done(outcome) => return run.finish(outcome).await,
            };
            for msg in logon.observe(seen) {
                console.audit(&msg);
            }
        }
        match logon.next() {
            Next::Done(outcome) => run.finish(outcome).await,
            _ => Err(ClientError::Internal(
                "the logon decision did not finish within three tries".into(),
            )),
        }
    }

    /// Logs on to a vault opened in this process. The session is in
    /// [`SessionMode::Vault`]: it reads and writes the vault's store through
    /// the same `Backup` calls a server session uses.
    ///
    /// # Errors
    /// The vault refused the logon (its node password file was changed).
    pub async fn over_vault(
        opened: crate::vault::OpenedVault,
        options: &ClientOptions,
        dir: &std::path::Path,
    ) -> Result<Session, ClientError> {
        let mut client = BackupClient::new(opened.channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let reply = client
            .logon(tonic::Request::new(pb::LogonRequest {
                node: options.node_name.clone(),
                password: opened.password,
                client_version: env!("CARGO_PKG_VERSION").to_string(),
                failover: false,
                primary_server: crate::vault::VAULT_NAME.to_string(),
            }))
            .await
            .map_err(|s| ClientError::server("logging on to the vault", s))?
            .into_inner();
        let token = MetadataValue::try_from(reply.session_token.as_str()).map_err(|_| {
            ClientError::Internal("the vault's session token is not a header value".into())
        })?;
        Ok(Session {
            client,
            token,
            info: ServerInfo {
                name: crate::vault::VAULT_NAME.to_string(),
                address: dir.display().to_string(),
                guid: opened.guid,
                node: reply.node,
                session_id: reply.session_id,
                replication_server: None,
                replica: false,
                replicated_ns: 0,
            },
            mode: SessionMode::Vault,
            primary: ServerRef {
                name: options.server_name.clone(),
                address: options.server_address.clone(),
                guid: None,
            },
            vault: Some(crate::vault::calls::VaultCalls::new(
                opened.guard,
                std::time::Duration::from_secs(options.vault_timeout_seconds),
                opened.stall,
            )),
            vault_beside: None,
            state_dir: Some(options.state_dir()),
        })
    }

    /// This session, with `vault` beside it (see the field).
    #[must_use]
    pub fn with_vault_beside(&self, vault: &Session) -> Session {
        let mut out = self.clone();
        out.vault_beside = Some(Box::new(vault.clone()));
        out
    }

    /// For a vault session: the vault's store, for its housekeeping and
    /// the calls that bypass its service.
    pub fn vault_store(&self) -> Option<&crate::vault::calls::VaultCalls> {
        self.vault.as_ref()
    }

    /// For a vault session: why the vault was given up in this command
    /// (it stopped answering), if it was.
    pub fn vault_stalled(&self) -> Option<&str> {
        self.vault.as_ref().and_then(|calls| calls.stalled())
    }

    /// The local vault beside this server session, if any.
    pub fn vault_beside(&self) -> Option<&Session> {
        self.vault_beside.as_deref()
    }

    /// Whether this session works on the local vault.
    pub fn is_vault(&self) -> bool {
        self.vault.is_some()
    }

    /// Commits a backup transaction (`what` names it in an error). On a
    /// vault session what the client writes is recorded in `state_dir`
    /// ([`crate::vault::own`]): a digest of each version before the commit,
    /// so nothing it stores is missing from the record a push trusts, and
    /// the versions the vault made inactive after it.
    ///
    /// # Errors
    /// The commit's failure; on a vault session, a record that cannot be
    /// written ([`ClientError::Vault`]), in which case nothing was committed
    /// if it failed before.
    pub async fn commit_objects(
        &self,
        request: pb::CommitObjectsRequest,
        what: &'static str,
    ) -> Result<pb::CommitObjectsResponse, ClientError> {
        use crate::vault::own;
        let record = |entries: Result<Vec<own::Entry>, String>| match &self.state_dir {
            Some(state_dir) => entries
                .and_then(|e| own::append(state_dir, self.info.guid, &e))
                .map_err(|cause| ClientError::Vault {
                    dir: std::path::PathBuf::from(&self.info.address),
                    cause: format!(
                        "{what}: recording what this client writes to the vault: {cause}"
                    ),
                }),
            None => Ok(()),
        };
        if self.state_dir.is_some() {
            record(Ok(own::before_commit(&request)))?;
        }
        let reply = self
            .client()
            .commit_objects(self.request(request))
            .await
            .map_err(|s| ClientError::server(what, s))?
            .into_inner();
        if self.state_dir.is_some() {
            record(own::after_commit(&reply))?;
        }
        Ok(reply)
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

/// The stored replication server: its name and address as the decision sees
/// them, and its options entry (fingerprint) for connecting.
struct Secondary<'a> {
    server: ServerRef,
    entry: &'a ReplServerEntry,
}

/// One logon under way. It holds what every step needs (the options, both
/// servers, the tries so far, the primary's answer), so a refusal is
/// reported about the server it came from without re-reading the options.
struct LogonRun<'a> {
    options: &'a ClientOptions,
    console: &'a Console,
    primary: ServerRef,
    secondary: Option<Secondary<'a>>,
    /// `connect_timeout_ms`: the budget of each server's tries.
    budget: Duration,
    /// `busy_wait_seconds`: one wait for the whole decision, whichever
    /// servers it spends on.
    busy: BusyWait,
    started: Instant,
    /// Tries made on the primary, for the unreachable report.
    tries: u32,
    /// The primary's logon reply, when it answered.
    answered: Option<(BackupClient<Channel>, pb::LogonResponse)>,
}

impl<'a> LogonRun<'a> {
    fn new(options: &'a ClientOptions, console: &'a Console) -> Self {
        LogonRun {
            options,
            console,
            primary: ServerRef {
                name: options.server_name.clone(),
                address: options.server_address.clone(),
                guid: None,
            },
            secondary: options.replication_server().map(|(name, entry)| Secondary {
                server: ServerRef {
                    name: name.to_string(),
                    address: entry.address.clone(),
                    guid: Some(entry.server_guid),
                },
                entry,
            }),
            budget: Duration::from_millis(options.connect_timeout_ms),
            busy: BusyWait::new(options.busy_wait_seconds),
            started: Instant::now(),
            tries: 0,
            answered: None,
        }
    }

    /// What the decision starts from.
    fn facts(&self) -> LogonFacts {
        LogonFacts {
            primary: self.primary.clone(),
            force_failover: self.options.force_failover,
            failover_enabled: self.options.use_replication_failover,
            secondary: self.secondary.as_ref().map(|s| s.server.clone()),
            last_mode: NodeReplicationTable::open(&self.options.state_dir())
                .map_or(SessionMode::Normal, |t| t.last_mode()),
        }
    }

    /// Logs on to the primary, with retries; keeps its reply when it answers.
    async fn try_primary(&mut self) -> Seen {
        let trust = self.options.primary_trust();
        let trust = trust.as_ref();
        let (options, address, budget) = (self.options, self.primary.address.as_str(), self.budget);
        let (result, n) = through_busy(&mut self.busy, self.console, &self.primary, |answer| {
            with_retries(budget, options.logon_retries, move |t| {
                try_logon(options, address, trust, (t, answer.max(t)), false)
            })
        })
        .await;
        self.tries += n;
        match result {
            Ok((client, reply)) => {
                let guid = reply.server_guid.clone();
                self.answered = Some((client, reply));
                Seen::Answered { guid }
            }
            Err(attempt) => attempt.seen(),
        }
    }

    /// Asks the secondary who it is (after its certificate passed the pin);
    /// no credential is sent yet.
    async fn try_secondary(&mut self) -> Seen {
        let Some(secondary) = &self.secondary else {
            return Seen::Untrusted("no replication server is stored".into());
        };
        let result = match secondary_trust(secondary.entry) {
            Ok(trust) => {
                let trust = trust.as_ref();
                let (address, budget) = (secondary.server.address.as_str(), self.budget);
                let retries = self.options.logon_retries;
                through_busy(&mut self.busy, self.console, &secondary.server, |answer| {
                    with_retries(budget, retries, move |t| {
                        try_identify(address, trust, (t, answer.max(t)))
                    })
                })
                .await
                .0
            }
            Err(why) => Err(Attempt::Untrusted(why)),
        };
        match result {
            Ok(id) => Seen::Answered {
                guid: id.server_guid,
            },
            Err(attempt) => attempt.seen(),
        }
    }

    /// Turns the decision's outcome into a session (logging on to the
    /// secondary when that is where it ended) or an error.
    async fn finish(
        mut self,
        outcome: Result<SessionMode, Refusal>,
    ) -> Result<Session, ClientError> {
        let (client, reply, mode) = match outcome {
            Ok(SessionMode::Normal) => {
                let (client, reply) = self.answered.take().ok_or_else(|| {
                    ClientError::Internal("the primary answered but its reply is gone".into())
                })?;
                (client, reply, SessionMode::Normal)
            }
            Ok(SessionMode::Failover) => {
                let (client, reply) = self.logon_to_secondary().await?;
                (client, reply, SessionMode::Failover)
            }
            Ok(SessionMode::Vault) => {
                return Err(ClientError::Internal(
                    "the logon decision chose the vault, which only a vault logon opens".into(),
                ));
            }
            Err(refusal) => return Err(self.refused(refusal)),
        };
        self.open(client, reply, mode)
    }

    /// Logs on to the secondary in failover mode, once its GUID matched.
    async fn logon_to_secondary(
        &mut self,
    ) -> Result<(BackupClient<Channel>, pb::LogonResponse), ClientError> {
        let Some(secondary) = &self.secondary else {
            return Err(ClientError::Internal(
                "the decision chose failover without a replication server".into(),
            ));
        };
        let trust = secondary_trust(secondary.entry)
            .map_err(|why| self.refused(Refusal::SecondaryUntrusted(why)))?;
        let (options, address, budget) = (self.options, &secondary.server.address, self.budget);
        let trust = trust.as_ref();
        // The secondary has just answered Identify: one try each round, but
        // a secondary busy with many clients failing over at once is waited
        // for like a busy primary.
        let (result, _) = through_busy(
            &mut self.busy,
            self.console,
            &secondary.server,
            |answer| async move {
                let result = try_logon(options, address, trust, (budget, answer.max(budget)), true);
                (result.await, 1)
            },
        )
        .await;
        match result {
            Ok(answer) => Ok(answer),
            // The failover is under way: a secondary that cannot take the
            // logon ends it like one that does not answer (TDM2114E).
            Err(Attempt::Busy(cause)) => Err(self.refused(Refusal::SecondaryUnreachable(format!(
                "it stayed busy for {} s: {cause}",
                self.busy.seconds()
            )))),
            Err(Attempt::Unanswered(cause)) => {
                Err(self.refused(Refusal::SecondaryUnreachable(cause)))
            }
            Err(Attempt::Refused(message)) => Err(self.refused(Refusal::Rejected {
                server: secondary.server.name.clone(),
                message,
            })),
            Err(Attempt::Unreachable(cause)) => {
                Err(self.refused(Refusal::SecondaryUnreachable(cause)))
            }
            Err(Attempt::Untrusted(cause)) => Err(self.refused(Refusal::SecondaryUntrusted(cause))),
        }
    }

    /// The command's error for a refusal, naming the server it is about.
    fn refused(&self, refusal: Refusal) -> ClientError {
        let (name, address) = self.secondary.as_ref().map_or(("?", ""), |s| {
            (s.server.name.as_str(), s.server.address.as_str())
        });
        match refusal {
            Refusal::Rejected { server, message } => ClientError::LogonRefused { server, message },
            Refusal::Busy { server, cause } => ClientError::Busy {
                server: server.name,
                address: server.address,
                cause,
                seconds: self.options.busy_wait_seconds,
            },
            Refusal::PrimaryUnreachable { cause, why } => ClientError::Unreachable {
                server: self.primary.name.clone(),
                address: self.primary.address.clone(),
                cause: format!("{cause}; no failover: {why}"),
                attempts: self.tries,
                elapsed_ms: self.started.elapsed().as_millis(),
            },
            Refusal::GuidMismatch { expected, found } => ClientError::Failover {
                id: "TDM2112E",
                text: Msg::guid_mismatch(name, address, expected, &found).text,
            },
            Refusal::PrimaryUntrusted(cause) => ClientError::Untrusted {
                server: self.primary.name.clone(),
                cause,
            },
            Refusal::SecondaryUntrusted(cause) => ClientError::Failover {
                id: "TDM2113E",
                text: Msg::secondary_untrusted(name, address, &cause).text,
            },
            Refusal::ForcedFailoverImpossible(why) => ClientError::Usage(format!(
                "failover is forced (--force-failover or force_failover in the options), but {why}; \
                 drop it to use the primary server {}",
                self.primary.name
            )),
            Refusal::SecondaryUnreachable(cause) => ClientError::Failover {
                id: "TDM2114E",
                text: Msg::secondary_failed(name, address, &cause).text,
            },
        }
    }

    /// What the reply says about a move of the node's primary, checked: a
    /// redirect counts only from a primary reached over TLS and naming a
    /// TLS address with a valid fingerprint (or with a CA file in the
    /// options to vouch for it), and "I am your primary now" only from the
    /// replication server reached through its pinned fingerprint. Anything
    /// else is refused with the reason; nothing is followed blindly.
    fn moved_primary(
        &self,
        reply: &pb::LogonResponse,
        mode: SessionMode,
    ) -> Result<Option<MovedPrimary>, ClientError> {
        let refuse = |server: &str, why: String| ClientError::LogonRefused {
            server: server.to_string(),
            message: why,
        };
        match (mode, &reply.primary_moved, reply.primary_here) {
            (SessionMode::Normal, Some(info), _) => {
                let told_by = self.primary.name.clone();
                let said = format!(
                    "it says node {}'s primary server is now {} at {}",
                    self.options.node_name, info.name, info.address
                );
                if self.options.primary_trust().is_none() {
                    return Err(refuse(
                        &told_by,
                        format!(
                            "{said}, but it is reached in plaintext, so the client cannot trust that; set server_address (and server_fingerprint) in the options file by hand"
                        ),
                    ));
                }
                if !matches!(tandem_tls::parse_url_scheme(&info.address), Ok(true)) {
                    return Err(refuse(
                        &told_by,
                        format!(
                            "{said}, which is not an https:// address; the client does not follow it"
                        ),
                    ));
                }
                let pinned = info.fingerprint.parse::<tandem_tls::Fingerprint>().is_ok();
                if !pinned && self.options.ca_file.is_none() {
                    return Err(refuse(
                        &told_by,
                        format!(
                            "{said}, without a valid certificate fingerprint for it; the client does not follow it"
                        ),
                    ));
                }
                let guid = info.guid.parse().map_err(|e| {
                    refuse(&told_by, format!("{said}, with a malformed GUID ({e})"))
                })?;
                Ok(Some(MovedPrimary {
                    name: info.name.to_ascii_uppercase(),
                    address: info.address.clone(),
                    guid,
                    fingerprint: if self.options.ca_file.is_some() {
                        String::new()
                    } else {
                        info.fingerprint.clone()
                    },
                    told_by,
                    at_failover: false,
                }))
            }
            (SessionMode::Failover, _, true) => {
                let Some(secondary) = &self.secondary else {
                    return Ok(None);
                };
                let told_by = secondary.server.name.clone();
                if secondary
                    .entry
                    .fingerprint
                    .parse::<tandem_tls::Fingerprint>()
                    .is_err()
                {
                    return Err(refuse(
                        &told_by,
                        "it says it is the node's primary server now, but it is not pinned by a certificate fingerprint, so the client cannot trust that".into(),
                    ));
                }
                Ok(Some(MovedPrimary {
                    name: told_by.to_ascii_uppercase(),
                    address: secondary.server.address.clone(),
                    guid: secondary.entry.server_guid,
                    fingerprint: secondary.entry.fingerprint.clone(),
                    told_by,
                    at_failover: true,
                }))
            }
            _ => Ok(None),
        }
    }

    /// The session from a logon reply: checks what the server sent, logs a
    /// failover (TDM2108I) and records the session in the client's state.
    fn open(
        self,
        client: BackupClient<Channel>,
        reply: pb::LogonResponse,
        mode: SessionMode,
    ) -> Result<Session, ClientError> {
        let malformed = |what: &str| ClientError::Server {
            operation: "logon",
            message: format!("server sent a malformed {what}"),
        };
        if let Some(moved) = self.moved_primary(&reply, mode)? {
            return Err(ClientError::PrimaryMoved(Box::new(moved)));
        }
        let token = reply
            .session_token
            .parse()
            .map_err(|_| malformed("session token"))?;
        let guid: ServerGuid = reply
            .server_guid
            .parse()
            .map_err(|e| malformed(&format!("GUID: {e}")))?;
        let replication_server = match reply.replication_server {
            Some(r) => Some((
                PushedServer {
                    name: r.name,
                    address: r.address,
                    guid: r
                        .guid
                        .parse()
                        .map_err(|e| malformed(&format!("replication server GUID: {e}")))?,
                    fingerprint: r.fingerprint,
                },
                r.last_replication_ns,
            )),
            None => None,
        };
        let address = match (mode, &self.secondary) {
            (SessionMode::Failover, Some(s)) => s.server.address.clone(),
            _ => self.primary.address.clone(),
        };
        let info = ServerInfo {
            name: reply.server_name,
            address,
            guid,
            node: reply.node,
            session_id: reply.session_id,
            replication_server,
            replica: reply.replica,
            replicated_ns: reply.replicated_ns,
        };
        if mode == SessionMode::Failover {
            let replicated = if info.replicated_ns == 0 {
                "never".to_string()
            } else {
                timefmt::rfc3339(info.replicated_ns)
            };
            self.console
                .audit(&Msg::failed_over(&info.name, guid, &info.node, &replicated));
        }
        // The client's memory between commands: a failed write only means the
        // next logon logs no failback and `query filespace` cannot compare.
        if let Ok(t) = NodeReplicationTable::open(&self.options.state_dir()) {
            let _ = t.record_session(mode, guid);
        }
        Ok(Session {
            client,
            token,
            info,
            mode,
            primary: self.primary,
            vault: None,
            vault_beside: None,
            state_dir: None,
        })
    }
}
