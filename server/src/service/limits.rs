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
                let request = request.map(|body| {
                    Body::new(Unproven::new(
                        limited(body, max),
                        budget,
                        UNPROVEN_BODY_WAIT,
                    ))
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

/// How long the body of a call from a caller not yet proven may take to
/// arrive: a logon (64 KiB) or an admin call (1 MiB) on any usable link.
pub const UNPROVEN_BODY_WAIT: Duration = Duration::from_secs(30);

/// Bytes the bodies of such calls may hold at once, server-wide.
pub const UNPROVEN_BODY_BUDGET: usize = 128 * 1024 * 1024;

/// The budget [`UNPROVEN_BODY_BUDGET`] as a semaphore of bytes.
pub fn unproven_body_budget() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(UNPROVEN_BODY_BUDGET))
}

/// A request body from a caller not yet proven: it fails once it has taken
/// longer than [`UNPROVEN_BODY_WAIT`] or when the server-wide budget has no
/// room for its next frame. What it took from the budget is given back when
/// the body is dropped, which tonic does once it has decoded the message.
struct Unproven {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    wait: Duration,
    budget: Arc<Semaphore>,
    held: usize,
}

impl Unproven {
    fn new(inner: Body, budget: Arc<Semaphore>, wait: Duration) -> Self {
        Unproven {
            inner,
            deadline: Box::pin(tokio::time::sleep(wait)),
            wait,
            budget,
            held: 0,
        }
    }
}

impl http_body::Body for Unproven {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, tonic::codegen::Bytes::len);
                if len > 0 {
                    let taken = u32::try_from(len)
                        .ok()
                        .and_then(|n| this.budget.try_acquire_many(n).ok());
                    let Some(permit) = taken else {
                        let mut busy = Status::from(ServerError::ResourceExhausted(
                            "the server holds too many requests from callers not yet logged on; try again in a moment".into(),
                        ));
                        busy.metadata_mut().insert(
                            tandem_proto::RETRY_PUSHBACK_HEADER,
                            tonic::metadata::MetadataValue::from_static("1000"),
                        );
                        return Poll::Ready(Some(Err(busy)));
                    };
                    permit.forget();
                    this.held += len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Status::from(
                    ServerError::DeadlineExceeded(format!(
                        "the request did not arrive within {} ms; it was abandoned",
                        this.wait.as_millis()
                    )),
                )))),
                Poll::Pending => Poll::Pending,
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

impl Drop for Unproven {
    fn drop(&mut self) {
        self.budget.add_permits(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body whose frames the test sends, and the sender.
    fn fed_body(
        budget: &Arc<Semaphore>,
        wait: Duration,
    ) -> (
        Unproven,
        tokio::sync::mpsc::Sender<Result<Frame<tonic::codegen::Bytes>, Status>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stream =
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        (
            Unproven::new(Body::new(stream), Arc::clone(budget), wait),
            tx,
        )
    }

    fn frame(len: usize) -> Result<Frame<tonic::codegen::Bytes>, Status> {
        Ok(Frame::data(tonic::codegen::Bytes::from(vec![7u8; len])))
    }

    #[tokio::test]
    async fn unproven_bodies_share_one_budget_and_give_it_back_when_dropped() {
        let budget = Arc::new(Semaphore::new(100));
        let wait = Duration::from_secs(60);
        let (mut first, tx1) = fed_body(&budget, wait);
        tx1.send(frame(60)).await.unwrap();
        assert!(first.frame().await.unwrap().is_ok());
        assert_eq!(budget.available_permits(), 40);
        // A second caller's frame does not fit beside the first one's.
        let (mut second, tx2) = fed_body(&budget, wait);
        tx2.send(frame(60)).await.unwrap();
        let refused = second.frame().await.unwrap().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused
                .metadata()
                .contains_key(tandem_proto::RETRY_PUSHBACK_HEADER),
            "says busy, so a client tries again"
        );
        drop((first, second));
        assert_eq!(budget.available_permits(), 100, "all given back");
        let (mut third, tx3) = fed_body(&budget, wait);
        tx3.send(frame(60)).await.unwrap();
        assert!(third.frame().await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn an_unproven_body_that_stops_arriving_fails_after_its_wait() {
        let budget = Arc::new(Semaphore::new(100));
        let (mut stalled, tx) = fed_body(&budget, Duration::from_millis(50));
        tx.send(frame(10)).await.unwrap();
        assert!(stalled.frame().await.unwrap().is_ok());
        // Nothing more is sent, and the sender stays open.
        let ended = stalled.frame().await.unwrap().unwrap_err();
        assert_eq!(ended.code(), tonic::Code::DeadlineExceeded);
        assert!(ended.message().contains("did not arrive"), "{ended:?}");
        drop(tx);
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
