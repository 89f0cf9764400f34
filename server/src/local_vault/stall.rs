//! The vault's guard on each call to its service.
//!
//! A vault on a network share that stops answering blocks whichever thread
//! touches it, in the kernel, perhaps for ever. The client reaches most of
//! the vault through its in-process `Backup` service (a restore's reads, a
//! sync's listings and chunk copies, a push to the server), so this layer
//! bounds every call there by the command's `vault_timeout_seconds`:
//! - the handler must answer within the limit (for a unary call that is its
//!   whole work; for a stream, its start);
//! - a streamed answer may wait at most the limit for each next message.
//!   Only the time the service keeps the client waiting counts: while the
//!   client is not asking for more (its disk is slow), no clock runs.
//!
//! An overrun gives the vault up for the rest of the command (the shared
//! [`Stall`], which the client's direct calls use too): the call ends with
//! UNAVAILABLE naming what the vault was doing, and every later call is
//! refused at once. A stream cut short this way ends with that status in
//! its trailers, as any gRPC error does, so the client sees a refusal, not
//! a broken connection.
//!
//! `UploadChunks` is the exception: its handler waits on the client's own
//! stream, and time the client spends compressing is not the vault's. It is
//! refused once the vault is given up, but not timed.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use http_body::Frame;
use tandem_client::vault::calls::Stall;
use tonic::Status;
use tonic::body::Body;

/// Puts [`StallGuard`] in front of the vault's service.
#[derive(Debug, Clone)]
pub(super) struct StallGuardLayer {
    limit: Duration,
    stall: Stall,
}

impl StallGuardLayer {
    /// Every call given `limit`; an overrun recorded in `stall`.
    pub(super) fn new(limit: Duration, stall: Stall) -> Self {
        StallGuardLayer { limit, stall }
    }
}

impl<S> tower::Layer<S> for StallGuardLayer {
    type Service = StallGuard<S>;

    fn layer(&self, inner: S) -> StallGuard<S> {
        StallGuard {
            inner,
            limit: self.limit,
            stall: self.stall.clone(),
        }
    }
}

/// The service [`StallGuardLayer`] makes.
#[derive(Debug, Clone)]
pub(super) struct StallGuard<S> {
    inner: S,
    limit: Duration,
    stall: Stall,
}

impl<S> tower::Service<http::Request<Body>> for StallGuard<S>
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

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if let Some(why) = self.stall.why() {
            let refused = Status::unavailable(why.to_string()).into_http();
            return futures_util::future::ready(Ok(refused)).boxed();
        }
        let method = request.uri().path().rsplit('/').next().unwrap_or_default();
        let doing = doing_of(method);
        let waits_on_caller = method == "UploadChunks";
        let answer = self.inner.call(request);
        if waits_on_caller {
            return answer.boxed();
        }
        let (limit, stall) = (self.limit, self.stall.clone());
        async move {
            match tokio::time::timeout(limit, answer).await {
                Ok(Ok(response)) => Ok(response.map(|body| {
                    Body::new(Guarded {
                        inner: body,
                        limit,
                        stall,
                        doing,
                        waiting: None,
                        ended: false,
                    })
                })),
                Ok(Err(e)) => Err(e),
                Err(_) => Ok(Status::unavailable(stall.give_up(limit, &doing)).into_http()),
            }
        }
        .boxed()
    }
}

/// What the vault was doing in a call to `method`, as the client's
/// message says it.
fn doing_of(method: &str) -> String {
    match method {
        "ReadChunks" => "reading stored data",
        "FindMissingChunks" => "looking up which chunks it holds",
        "QueryObjects" | "QueryArchives" => "listing versions",
        "QueryFilespaces" => "listing file spaces",
        "CommitObjects" | "CommitArchive" | "MarkBackup" => "committing a backup",
        "DeleteVersions" | "DeleteArchives" | "DeactivateVaultVersions" => "deleting versions",
        "PutVaultVersions" => "storing versions",
        "Logon" => "logging on",
        "Logoff" => "logging off",
        other => return format!("answering {other}"),
    }
    .to_string()
}

/// A streamed answer that may keep its reader waiting at most `limit` for
/// each message.
struct Guarded {
    inner: Body,
    limit: Duration,
    stall: Stall,
    doing: String,
    /// Runs from the first poll that found nothing ready since the last
    /// message: the time the reader has been kept waiting.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Cut short: the status went out in the trailers.
    ended: bool,
}

impl http_body::Body for Guarded {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let limit = this.limit;
                let waiting = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if waiting.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.ended = true;
                let status = Status::unavailable(this.stall.give_up(limit, &this.doing));
                let mut trailers = http::HeaderMap::new();
                match status.add_header(&mut trailers) {
                    Ok(()) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Err(unsendable) => Poll::Ready(Some(Err(unsendable))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::BodyExt;

    /// A body that yields `ready` frames, then never another.
    fn stuck_after(ready: usize) -> Body {
        let frames = futures_util::stream::iter(
            (0..ready).map(|_| Ok::<_, Status>(Frame::data(tonic::codegen::Bytes::from("x")))),
        )
        .chain(futures_util::stream::pending());
        Body::new(http_body_util::StreamBody::new(frames))
    }

    fn guarded(inner: Body, stall: &Stall) -> Guarded {
        Guarded {
            inner,
            limit: Duration::from_millis(50),
            stall: stall.clone(),
            doing: doing_of("ReadChunks"),
            waiting: None,
            ended: false,
        }
    }

    #[tokio::test]
    async fn a_stream_that_stops_mid_way_ends_with_the_reason_and_stalls_the_vault() {
        let stall = Stall::default();
        let mut body = guarded(stuck_after(2), &stall);
        for _ in 0..2 {
            let frame = body.frame().await.unwrap().unwrap();
            assert!(frame.is_data());
        }
        let last = body.frame().await.unwrap().unwrap();
        let trailers = last
            .into_trailers()
            .expect("the status goes out in trailers");
        let status = Status::from_header_map(&trailers).unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().contains("while reading stored data"),
            "{}",
            status.message()
        );
        assert_eq!(stall.why(), Some(status.message()));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_reader_that_pauses_between_messages_is_not_counted_against_the_vault() {
        let stall = Stall::default();
        let mut body = guarded(stuck_after(3), &stall);
        assert!(body.frame().await.unwrap().unwrap().is_data());
        // The client takes its time (longer than the limit) before asking
        // for the next message, which is ready at once.
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(body.frame().await.unwrap().unwrap().is_data());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(body.frame().await.unwrap().unwrap().is_data());
        assert_eq!(stall.why(), None);
    }

    /// A service whose every answer takes `delay`.
    fn answering_after(
        delay: Duration,
    ) -> impl tower::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = std::convert::Infallible,
        Future = BoxFuture<'static, Result<http::Response<Body>, std::convert::Infallible>>,
    > + Clone {
        tower::service_fn(move |_: http::Request<Body>| {
            async move {
                tokio::time::sleep(delay).await;
                Ok(http::Response::new(Body::empty()))
            }
            .boxed()
        })
    }

    fn call_to(method: &str) -> http::Request<Body> {
        http::Request::builder()
            .uri(format!("http://vault.invalid/tandem.v1.Backup/{method}"))
            .body(Body::empty())
            .unwrap()
    }

    fn status_of(response: &http::Response<Body>) -> Option<Status> {
        Status::from_header_map(response.headers())
    }

    #[tokio::test]
    async fn a_call_that_overruns_is_answered_unavailable_and_later_calls_are_refused() {
        use tower::{Layer, Service, ServiceExt};
        let stall = Stall::default();
        let layer = StallGuardLayer::new(Duration::from_millis(50), stall.clone());
        let mut slow = layer.layer(answering_after(Duration::from_secs(600)));
        let response = slow
            .ready()
            .await
            .unwrap()
            .call(call_to("CommitObjects"))
            .await;
        let status = status_of(&response.unwrap()).expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("while committing a backup"));
        // Even a call that would answer at once is refused now.
        let mut quick = layer.layer(answering_after(Duration::ZERO));
        let refused = quick
            .ready()
            .await
            .unwrap()
            .call(call_to("QueryFilespaces"))
            .await;
        assert_eq!(
            status_of(&refused.unwrap()).map(|s| s.message().to_string()),
            Some(status.message().to_string())
        );
    }

    #[tokio::test]
    async fn an_upload_waits_on_its_caller_and_is_not_timed() {
        use tower::{Layer, Service, ServiceExt};
        let stall = Stall::default();
        let layer = StallGuardLayer::new(Duration::from_millis(20), stall.clone());
        let mut upload = layer.layer(answering_after(Duration::from_millis(100)));
        let response = upload
            .ready()
            .await
            .unwrap()
            .call(call_to("UploadChunks"))
            .await;
        assert!(status_of(&response.unwrap()).is_none());
        assert_eq!(stall.why(), None);
    }

    #[test]
    fn every_call_says_what_the_vault_was_doing() {
        assert_eq!(doing_of("QueryObjects"), "listing versions");
        assert_eq!(doing_of("SetPassword"), "answering SetPassword");
    }
}
