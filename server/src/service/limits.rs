//! What a caller may send before the server knows who it is.
//!
//! A gRPC handler sees its request only once the whole message is decoded,
//! so a check inside `Logon` comes after the server has taken in up to
//! [`tandem_proto::MAX_MESSAGE_BYTES`] from anybody. This layer sits in
//! front of the services and looks at the HTTP/2 request first:
//! - calls that authenticate (`Logon`, `Identify`, the replication `Hello`,
//!   health checks) and unknown paths may send at most
//!   [`tandem_proto::MAX_UNAUTHENTICATED_BYTES`];
//! - every other `Backup` and `Replication` call must carry the token of an
//!   open session, or it is refused before its body is read (the handler
//!   then checks the session's kind and owner as before);
//! - admin calls, authorised by token in their handler, may send at most
//!   [`tandem_proto::MAX_ADMIN_MESSAGE_BYTES`].
//!
//! The bodies of the calls with a byte limit (nobody proved who they are
//! yet: an admin call's credentials are checked in its handler) must also
//! arrive within [`UNPROVEN_BODY_WAIT`], and all of them together may hold at
//! most [`UNPROVEN_BODY_BUDGET`] bytes: without those, a caller could send
//! almost a full admin body on every stream of every connection it may open
//! and then stop, and the server would hold it all for as long as the
//! caller answered pings.
//!
//! It also marks every call as in progress on its connection until the
//! response (a stream, say) has ended, so that only connections with no call
//! at all are closed as idle (`idle_timeout_seconds`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::body::Body;

use crate::ServerState;
use crate::error::ServerError;

/// The gRPC method a request calls (`RegisterNode`), for the activity log:
/// tonic hands handlers the request's extensions but not its path.
#[derive(Debug, Clone)]
pub struct CalledMethod(pub String);

/// What a request may do before its handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Read at most this many body bytes.
    Limit(usize),
    /// Only with an open session's token; then no limit beyond the codec's.
    Session,
}

/// The gate of a gRPC path (`/package.Service/Method`).
fn gate_of(path: &str) -> Gate {
    let unauthenticated = Gate::Limit(tandem_proto::MAX_UNAUTHENTICATED_BYTES);
    match path
        .strip_prefix("/tandem.v1.")
        .and_then(|p| p.split_once('/'))
    {
        Some(("Backup", "Logon" | "Identify")) | Some(("Replication", "Hello")) => unauthenticated,
        Some(("Backup" | "Replication", _)) => Gate::Session,
        Some(("Admin", _)) => Gate::Limit(tandem_proto::MAX_ADMIN_MESSAGE_BYTES),
        _ => unauthenticated,
    }
}

/// A tower layer applying [`gate_of`] to every request.
#[derive(Debug, Clone)]
pub struct PreAuthLayer {
    state: Arc<ServerState>,
}

impl PreAuthLayer {
    /// Gates requests against the server's open sessions.
    pub fn new(state: Arc<ServerState>) -> Self {
        PreAuthLayer { state }
    }
}

impl<S> tower::Layer<S> for PreAuthLayer {
    type Service = PreAuth<S>;

    fn layer(&self, inner: S) -> PreAuth<S> {
        PreAuth {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service [`PreAuthLayer`] makes.
#[derive(Debug, Clone)]
pub struct PreAuth<S> {
    inner: S,
    state: Arc<ServerState>,
}

impl<S> tower::Service<http::Request<Body>> for PreAuth<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        request.extensions_mut().insert(CalledMethod(method));
        let call = request
            .extensions()
            .get::<tandem_tls::PeerInfo>()
            .and_then(|peer| peer.activity.as_ref())
            .map(tandem_tls::CallActivity::begin);
        match gate_of(request.uri().path()) {
            Gate::Limit(max) => {
                let budget = Arc::clone(&self.state.unproven_bodies);
                let address = request
                    .extensions()
                    .get::<tandem_tls::PeerInfo>()
                    .and_then(|peer| peer.remote)
                    .map(|a| tandem_tls::limit_key(a.ip(), self.state.config.ipv6_limit_prefix));
                let request = request.map(|body| {
                    let check = Unproven::new(budget, address, UNPROVEN_BODY_WAIT);
                    Checked::body(limited(body, max), check)
                });
                held_until_response_ends(self.inner.call(request), call)
            }
            Gate::Session => {
                let token = request
                    .headers()
                    .get(tandem_proto::SESSION_HEADER)
                    .and_then(|v| v.to_str().ok());
                let checked = match token {
                    Some(token) => self.state.sessions.check_open(token),
                    None => Err(ServerError::Unauthenticated(
                        "no open session: log on first (Logon, or Hello for a partner server)"
                            .into(),
                    )),
                };
                match checked {
                    Ok(()) if is_upload(request.uri().path()) => {
                        let request = request.map(|body| {
                            Checked::body(body, MessageCap::new(MAX_UPLOAD_WIRE_BYTES))
                        });
                        held_until_response_ends(self.inner.call(request), call)
                    }
                    Ok(()) => held_until_response_ends(self.inner.call(request), call),
                    Err(refusal) => {
                        futures_util::future::ready(Ok(Status::from(refusal).into_http())).boxed()
                    }
                }
            }
        }
    }
}

/// The response of `call`, keeping `guard` (the call's mark on its
/// connection) until the response body has been sent or dropped.
fn held_until_response_ends<F, E>(
    call: F,
    guard: Option<tandem_tls::CallGuard>,
) -> BoxFuture<'static, Result<http::Response<Body>, E>>
where
    F: std::future::Future<Output = Result<http::Response<Body>, E>> + Send + 'static,
{
    async move {
        let response = call.await?;
        Ok(response.map(|body| {
            Body::new(body.map_frame(move |frame| {
                let _in_progress = &guard;
                frame
            }))
        }))
    }
    .boxed()
}

/// `body`, failing with a clear status once it exceeds `max` bytes.
fn limited(body: Body, max: usize) -> Body {
    let why = if max == tandem_proto::MAX_ADMIN_MESSAGE_BYTES {
        "for an admin call"
    } else {
        "before authentication"
    };
    Body::new(Limited::new(body, max).map_err(move |e| {
        if e.is::<http_body_util::LengthLimitError>() {
            Status::from(ServerError::ResourceExhausted(format!(
                "a request of more than {max} bytes {why} is refused"
            )))
        } else {
            Status::from_error(e)
        }
    }))
}

/// Whether `path` is a chunk upload (a node's or a partner's).
fn is_upload(path: &str) -> bool {
    matches!(
        path,
        "/tandem.v1.Backup/UploadChunks" | "/tandem.v1.Replication/UploadChunks"
    )
}

/// The largest upload message, as sent (its gRPC length prefix). A sender
/// packs about 1 MiB of chunk data per message, or one chunk of up to 8 MiB
/// alone, and a message of the smallest chunks costs a few times its data in
/// ids and framing; the handler refuses more than about 9 MiB of data. Checked
/// here, from the prefix, so tonic does not take in up to the 64 MiB every
/// other call of the service may send before the handler sees it.
pub const MAX_UPLOAD_WIRE_BYTES: usize = 16 * 1024 * 1024;

/// The check of a request body of gRPC messages: it fails as soon as one
/// message's length prefix says it is longer than `max`, before its bytes
/// are taken in.
struct MessageCap {
    max: usize,
    /// The prefix read so far (flag byte, then the length, big-endian).
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    left: usize,
}

impl MessageCap {
    fn new(max: usize) -> Self {
        MessageCap {
            max,
            prefix: [0; 5],
            prefix_len: 0,
            left: 0,
        }
    }

    /// Follows the framing through `data`; the length of a message over
    /// the cap when one begins in it.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), usize> {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len());
                self.left -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if len > self.max {
                    return Err(len);
                }
                self.left = len;
            }
        }
        Ok(())
    }
}

impl FrameCheck for MessageCap {
    fn frame(&mut self, data: &[u8]) -> Result<(), Status> {
        self.scan(data).map_err(|len| {
            Status::from(ServerError::InvalidArgument(format!(
                "an upload message of {len} bytes is larger than the {} one may have; send at most {} bytes of chunk data per message, or one chunk alone",
                self.max,
                tandem_proto::UPLOAD_MESSAGE_BYTES
            )))
        })
    }
}

/// How long the body of a call from a caller not yet proven may take to
/// arrive: a logon (64 KiB) or an admin call (1 MiB) on any usable link.
pub const UNPROVEN_BODY_WAIT: Duration = Duration::from_secs(30);

/// Bytes the bodies of such calls may hold at once, server-wide.
pub const UNPROVEN_BODY_BUDGET: usize = 128 * 1024 * 1024;

/// Bytes of that budget the calls from one address may hold: a caller on
/// one address cannot take it all and lock every logon and admin out.
pub const UNPROVEN_BODY_PER_ADDRESS: usize = 8 * 1024 * 1024;

/// The budget of bytes for bodies of callers not yet proven: server-wide
/// and per address.
#[derive(Debug)]
pub struct UnprovenBudget {
    total: Semaphore,
    by_address: std::sync::Mutex<std::collections::HashMap<Option<std::net::IpAddr>, usize>>,
    per_address: usize,
}

impl UnprovenBudget {
    /// A budget of `total` bytes, `per_address` of them for one address.
    pub fn new(total: usize, per_address: usize) -> Self {
        UnprovenBudget {
            total: Semaphore::new(total),
            by_address: std::sync::Mutex::default(),
            per_address,
        }
    }

    /// Takes `len` bytes for `address`; `false` when it has no room.
    fn take(&self, address: Option<std::net::IpAddr>, len: usize) -> bool {
        let mut held = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.get(&address).copied().unwrap_or(0);
        if mine.saturating_add(len) > self.per_address {
            return false;
        }
        let Some(permit) = u32::try_from(len)
            .ok()
            .and_then(|n| self.total.try_acquire_many(n).ok())
        else {
            return false;
        };
        permit.forget();
        held.insert(address, mine + len);
        true
    }

    /// Gives back `len` bytes `address` took.
    fn give_back(&self, address: Option<std::net::IpAddr>, len: usize) {
        if len == 0 {
            return;
        }
        let mut held = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mine) = held.get_mut(&address) {
            *mine = mine.saturating_sub(len);
            if *mine == 0 {
                held.remove(&address);
            }
        }
        self.total.add_permits(len);
    }
}

/// The server's budget: [`UNPROVEN_BODY_BUDGET`], [`UNPROVEN_BODY_PER_ADDRESS`].
pub fn unproven_body_budget() -> Arc<UnprovenBudget> {
    Arc::new(UnprovenBudget::new(
        UNPROVEN_BODY_BUDGET,
        UNPROVEN_BODY_PER_ADDRESS,
    ))
}

/// What a [`Checked`] body looks at before tonic does: each data frame as it
/// arrives, and the wait for the next one.
trait FrameCheck: Unpin {
    /// Lets `data` through, or ends the body with a status.
    fn frame(&mut self, data: &[u8]) -> Result<(), Status>;

    /// Called while the next frame has not arrived (with the task's context,
    /// to be woken); an error ends the body.
    fn waiting(&mut self, _cx: &mut Context<'_>) -> Result<(), Status> {
        Ok(())
    }
}

/// A request body whose frames `check` sees first.
struct Checked<C> {
    inner: Body,
    check: C,
}

impl<C: FrameCheck + Send + 'static> Checked<C> {
    fn body(inner: Body, check: C) -> Body {
        Body::new(Checked { inner, check })
    }
}

impl<C: FrameCheck> http_body::Body for Checked<C> {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref().map(|d| this.check.frame(d)) {
                Some(Err(refused)) => Poll::Ready(Some(Err(refused))),
                _ => Poll::Ready(Some(Ok(frame))),
            },
            Poll::Pending => match this.check.waiting(cx) {
                Err(ended) => Poll::Ready(Some(Err(ended))),
                Ok(()) => Poll::Pending,
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The check of a request body from a caller not yet proven: it fails once
/// it has taken longer than its wait ([`UNPROVEN_BODY_WAIT`]) or when the
/// budget has no room for its next frame. What it took from the budget is
/// given back when it is dropped, which tonic does once it has decoded the
/// message.
struct Unproven {
    deadline: Pin<Box<tokio::time::Sleep>>,
    wait: Duration,
    budget: Arc<UnprovenBudget>,
    address: Option<std::net::IpAddr>,
    held: usize,
}

impl Unproven {
    fn new(budget: Arc<UnprovenBudget>, address: Option<std::net::IpAddr>, wait: Duration) -> Self {
        Unproven {
            deadline: Box::pin(tokio::time::sleep(wait)),
            wait,
            budget,
            address,
            held: 0,
        }
    }
}

impl FrameCheck for Unproven {
    fn frame(&mut self, data: &[u8]) -> Result<(), Status> {
        if data.is_empty() {
            return Ok(());
        }
        if !self.budget.take(self.address, data.len()) {
            return Err(super::busy(
                "the server holds too many requests from callers not yet logged on; try again in a moment",
                "1000",
            ));
        }
        self.held += data.len();
        Ok(())
    }

    fn waiting(&mut self, cx: &mut Context<'_>) -> Result<(), Status> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(Status::from(ServerError::DeadlineExceeded(format!(
                "the request did not arrive within {} ms; it was abandoned",
                self.wait.as_millis()
            )))),
            Poll::Pending => Ok(()),
        }
    }
}

impl Drop for Unproven {
    fn drop(&mut self) {
        self.budget.give_back(self.address, self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body whose frames the test sends, and the sender.
    fn fed_body(
        budget: &Arc<UnprovenBudget>,
        address: &str,
        wait: Duration,
    ) -> (
        Checked<Unproven>,
        tokio::sync::mpsc::Sender<Result<Frame<tonic::codegen::Bytes>, Status>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stream =
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let address = Some(address.parse().unwrap());
        (
            Checked {
                inner: Body::new(stream),
                check: Unproven::new(Arc::clone(budget), address, wait),
            },
            tx,
        )
    }

    fn frame(len: usize) -> Result<Frame<tonic::codegen::Bytes>, Status> {
        Ok(Frame::data(tonic::codegen::Bytes::from(vec![7u8; len])))
    }

    #[tokio::test]
    async fn unproven_bodies_share_one_budget_and_give_it_back_when_dropped() {
        let budget = Arc::new(UnprovenBudget::new(100, 70));
        let wait = Duration::from_secs(60);
        let (mut first, tx1) = fed_body(&budget, "10.0.0.1", wait);
        tx1.send(frame(60)).await.unwrap();
        assert!(first.frame().await.unwrap().is_ok());
        assert_eq!(budget.total.available_permits(), 40);
        // The same address is over its share; another one fits.
        let (mut second, tx2) = fed_body(&budget, "10.0.0.1", wait);
        tx2.send(frame(20)).await.unwrap();
        let refused = second.frame().await.unwrap().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused
                .metadata()
                .contains_key(tandem_proto::RETRY_PUSHBACK_HEADER),
            "says busy, so a client tries again"
        );
        let (mut other, tx3) = fed_body(&budget, "10.0.0.2", wait);
        tx3.send(frame(30)).await.unwrap();
        assert!(other.frame().await.unwrap().is_ok());
        // The whole budget is full now for anybody.
        let (mut third, tx4) = fed_body(&budget, "10.0.0.3", wait);
        tx4.send(frame(20)).await.unwrap();
        assert!(third.frame().await.unwrap().is_err());
        drop((first, second, other, third));
        assert_eq!(budget.total.available_permits(), 100, "all given back");
        assert!(budget.by_address.lock().unwrap().is_empty());
        let (mut again, tx5) = fed_body(&budget, "10.0.0.1", wait);
        tx5.send(frame(60)).await.unwrap();
        assert!(again.frame().await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn an_unproven_body_that_stops_arriving_fails_after_its_wait() {
        let budget = Arc::new(UnprovenBudget::new(100, 100));
        let (mut stalled, tx) = fed_body(&budget, "::1", Duration::from_millis(50));
        tx.send(frame(10)).await.unwrap();
        assert!(stalled.frame().await.unwrap().is_ok());
        // Nothing more is sent, and the sender stays open.
        let ended = stalled.frame().await.unwrap().unwrap_err();
        assert_eq!(ended.code(), tonic::Code::DeadlineExceeded);
        assert!(ended.message().contains("did not arrive"), "{ended:?}");
        drop(tx);
    }

    /// A gRPC message's framing: flag byte and length, then `len` bytes.
    fn message(len: usize) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.resize(5 + len, 9);
        out
    }

    #[test]
    fn upload_messages_are_measured_by_their_prefix_across_any_frame_split() {
        let mut stream = message(10);
        stream.extend(message(0));
        stream.extend(message(100));
        stream.extend(message(101));
        // Every split of the stream into two frames, and byte by byte.
        for cut in 0..stream.len() {
            let mut cap = MessageCap::new(100);
            let first = cap.scan(&stream[..cut]);
            let second = first.and_then(|()| cap.scan(&stream[cut..]));
            assert_eq!(first.and(second), Err(101), "split at {cut}");
        }
        let mut cap = MessageCap::new(101);
        for byte in &stream {
            assert_eq!(cap.scan(std::slice::from_ref(byte)), Ok(()));
        }
        assert!(is_upload("/tandem.v1.Backup/UploadChunks"));
        assert!(is_upload("/tandem.v1.Replication/UploadChunks"));
        assert!(!is_upload("/tandem.v1.Backup/CommitObjects"));
    }

    #[test]
    fn only_calls_that_authenticate_go_without_a_session() {
        let small = Gate::Limit(tandem_proto::MAX_UNAUTHENTICATED_BYTES);
        assert_eq!(gate_of("/tandem.v1.Backup/Logon"), small);
        assert_eq!(gate_of("/tandem.v1.Backup/Identify"), small);
        assert_eq!(gate_of("/tandem.v1.Replication/Hello"), small);
        assert_eq!(gate_of("/grpc.health.v1.Health/Check"), small);
        assert_eq!(gate_of("/nothing"), small);
        assert_eq!(gate_of("/tandem.v1.Backup/UploadChunks"), Gate::Session);
        assert_eq!(gate_of("/tandem.v1.Backup/Bogus"), Gate::Session);
        assert_eq!(gate_of("/tandem.v1.Replication/PutObjects"), Gate::Session);
        assert_eq!(
            gate_of("/tandem.v1.Admin/RegisterNode"),
            Gate::Limit(tandem_proto::MAX_ADMIN_MESSAGE_BYTES)
        );
    }
}
