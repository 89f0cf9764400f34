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
//! It also marks every call as in progress on its connection until the
//! response (a stream, say) has ended, so that only connections with no call
//! at all are closed as idle (`idle_timeout_seconds`).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, FutureExt};
use http_body_util::{BodyExt, Limited};
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
                let request = request.map(|body| limited(body, max));
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

#[cfg(test)]
mod tests {
    use super::*;

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
