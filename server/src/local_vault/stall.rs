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
//!   Only time the service has nothing ready, while flow control lets it
//!   send, counts: a client slow to take what it was sent (its disk is
//!   slow) runs no clock.
//!
//! An overrun gives the vault up for the rest of the command (the shared
//! [`Stall`], which the client's direct calls use too): the call ends with
//! UNAVAILABLE naming what the vault was doing, and every later call is
//! refused at once. A stream cut short this way ends with that status in
//! its trailers, as any gRPC error does, so the client sees a refusal, not
//! a broken connection.
//!
//! `UploadChunks` is timed differently: its handler waits on the client's
//! own stream, and time the client spends compressing is not the vault's;
//! a backup also keeps several upload streams open, whose stores of 8 MiB
//! groups take turns at the disk. The disk work of an upload is those
//! stores, so an upload is given up when a store has been under way and
//! none has finished, over all streams, for the limit: a share that stopped
//! answering, not one that is slow (its stores keep finishing). It also
//! ends within a second once another call gave the vault up, so no upload
//! waits behind a blocked store.
//!
//! Other calls count waits inside the service as the vault's too (a call
//! waiting for one of the node's read slots, say): a command has at most a
//! couple of such calls open at once, so those waits stay short.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use http_body::Frame;
use tandem_client::vault::calls::Stall;
use tonic::Status;
use tonic::body::Body;

use crate::repository::ingest::StoreProgress;

/// Puts [`StallGuard`] in front of the vault's service.
#[derive(Debug, Clone)]
pub(super) struct StallGuardLayer {
    limit: Duration,
    stall: Stall,
    stores: Arc<StoreProgress>,
}

impl StallGuardLayer {
    /// Every call given `limit`; an overrun recorded in `stall`; uploads
    /// timed by the progress of the store's group `stores`.
    pub(super) fn new(limit: Duration, stall: Stall, stores: Arc<StoreProgress>) -> Self {
        StallGuardLayer {
            limit,
            stall,
            stores,
        }
    }
}

impl<S> tower::Layer<S> for StallGuardLayer {
    type Service = StallGuard<S>;

    fn layer(&self, inner: S) -> StallGuard<S> {
        StallGuard {
            inner,
            limit: self.limit,
            stall: self.stall.clone(),
            stores: Arc::clone(&self.stores),
        }
    }
}

/// The service [`StallGuardLayer`] makes.
#[derive(Debug, Clone)]
pub(super) struct StallGuard<S> {
    inner: S,
    limit: Duration,
    stall: Stall,
    stores: Arc<StoreProgress>,
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
        let (limit, stall) = (self.limit, self.stall.clone());
        let guarded = {
            let (stall, doing) = (stall.clone(), doing.clone());
            move |response: http::Response<Body>| {
                response.map(|body| {
                    Body::new(Guarded {
                        inner: body,
                        limit,
                        stall,
                        doing,
                        waiting: None,
                        ended: false,
                    })
                })
            }
        };
        if method == "UploadChunks" {
            let answer = self.inner.call(request);
            let stores = Arc::clone(&self.stores);
            return async move {
                tokio::pin!(answer);
                let every = (limit / 4).clamp(MIN_CHECK_EVERY, MAX_CHECK_EVERY);
                let mut check = tokio::time::interval(every);
                let mut watch = StoreWatch::new(&stores);
                loop {
                    tokio::select! {
                        done = &mut answer => return done.map(guarded),
                        _ = check.tick() => {
                            if let Some(why) = stall.why() {
                                return Ok(Status::unavailable(why.to_string()).into_http());
                            }
                            if watch.stuck_longer_than(&stores, limit) {
                                let why = stall.give_up(limit, &doing);
                                return Ok(Status::unavailable(why).into_http());
                            }
                        }
                    }
                }
            }
            .boxed();
        }
        let answer = self.inner.call(request);
        async move {
            match tokio::time::timeout(limit, answer).await {
                Ok(done) => done.map(guarded),
                Err(_) => Ok(Status::unavailable(stall.give_up(limit, &doing)).into_http()),
            }
        }
        .boxed()
    }
}

/// How often an upload's watch looks at its handler and at the stall: a
/// quarter of the limit, within these bounds (an upload ends within a
/// second of another call giving the vault up).
const MIN_CHECK_EVERY: Duration = Duration::from_millis(10);
const MAX_CHECK_EVERY: Duration = Duration::from_secs(1);

/// An upload's view of the vault's group stores: since when one has been
/// under way with none finishing.
struct StoreWatch {
    finished: u64,
    since: std::time::Instant,
}

impl StoreWatch {
    fn new(stores: &StoreProgress) -> Self {
        StoreWatch {
            finished: stores.sample().1,
            since: std::time::Instant::now(),
        }
    }

    /// Whether a store has been under way, and none finished, for longer
    /// than `limit`, looking at `stores` now.
    fn stuck_longer_than(&mut self, stores: &StoreProgress, limit: Duration) -> bool {
        let (under_way, finished) = stores.sample();
        if under_way == 0 || finished != self.finished {
            self.finished = finished;
            self.since = std::time::Instant::now();
            return false;
        }
        self.since.elapsed() > limit
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
        "UploadChunks" => "storing uploaded data",
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
        let layer = StallGuardLayer::new(Duration::from_millis(50), stall.clone(), Arc::default());
        let mut slow = layer.layer(handler(0, Duration::ZERO, Duration::from_secs(600)));
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
        let mut quick = layer.layer(handler(0, Duration::ZERO, Duration::ZERO));
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

    /// A handler that takes `messages` from its request stream, spending
    /// `work` on each, then waits `then` and answers.
    fn handler(
        messages: usize,
        work: Duration,
        then: Duration,
    ) -> impl tower::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = std::convert::Infallible,
        Future = BoxFuture<'static, Result<http::Response<Body>, std::convert::Infallible>>,
    > + Clone {
        tower::service_fn(move |request: http::Request<Body>| {
            async move {
                let mut body = request.into_body();
                for _ in 0..messages {
                    let _ = body.frame().await;
                    tokio::time::sleep(work).await;
                }
                tokio::time::sleep(then).await;
                Ok(http::Response::new(Body::empty()))
            }
            .boxed()
        })
    }

    /// An upload whose client sends a message every `every`, `count` times.
    fn upload_sent_every(every: Duration, count: usize) -> http::Request<Body> {
        let frames = futures_util::stream::iter(0..count).then(move |_| async move {
            tokio::time::sleep(every).await;
            Ok::<_, Status>(Frame::data(tonic::codegen::Bytes::from("x")))
        });
        http::Request::builder()
            .uri("http://vault.invalid/tandem.v1.Backup/UploadChunks")
            .body(Body::new(http_body_util::StreamBody::new(frames)))
            .unwrap()
    }

    /// Sends `request` to `handler` behind a guard of `limit`; the status
    /// it was answered with, if any.
    async fn through_guard<S>(
        limit: Duration,
        stall: &Stall,
        stores: Arc<StoreProgress>,
        handler: S,
        request: http::Request<Body>,
    ) -> Option<Status>
    where
        S: tower::Service<
                http::Request<Body>,
                Response = http::Response<Body>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        use tower::{Layer, Service, ServiceExt};
        let mut guarded = StallGuardLayer::new(limit, stall.clone(), stores).layer(handler);
        let response = guarded.ready().await.unwrap().call(request).await.unwrap();
        status_of(&response)
    }

    #[tokio::test]
    async fn an_upload_is_not_timed_while_it_waits_on_its_client() {
        let stall = Stall::default();
        // The client takes 100 ms per message; nothing is being stored.
        let answer = through_guard(
            Duration::from_millis(40),
            &stall,
            Arc::default(),
            handler(3, Duration::ZERO, Duration::ZERO),
            upload_sent_every(Duration::from_millis(100), 3),
        )
        .await;
        assert!(answer.is_none());
        assert_eq!(stall.why(), None);
    }

    #[tokio::test]
    async fn an_upload_whose_store_stops_answering_is_given_up() {
        let stall = Stall::default();
        let stores = Arc::new(StoreProgress::default());
        // A store begins and never ends; the handler waits for it.
        let _blocked = stores.begin();
        let status = through_guard(
            Duration::from_millis(40),
            &stall,
            stores.clone(),
            handler(1, Duration::from_secs(600), Duration::ZERO),
            upload_sent_every(Duration::ZERO, 1),
        )
        .await
        .expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().contains("while storing uploaded data"),
            "{status:?}"
        );
        assert_eq!(stall.why(), Some(status.message()));
    }

    #[tokio::test]
    async fn an_upload_behind_a_slow_disk_whose_stores_keep_finishing_goes_on() {
        let stall = Stall::default();
        let stores = Arc::new(StoreProgress::default());
        // Other streams' stores take 20 ms each, one after another, for
        // far longer than the limit: the disk answers, slowly.
        let disk = stores.clone();
        let busy = tokio::spawn(async move {
            loop {
                let _store = disk.begin();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let answer = through_guard(
            Duration::from_millis(60),
            &stall,
            stores.clone(),
            handler(1, Duration::from_millis(400), Duration::ZERO),
            upload_sent_every(Duration::ZERO, 1),
        )
        .await;
        busy.abort();
        assert!(answer.is_none());
        assert_eq!(stall.why(), None);
    }

    #[tokio::test]
    async fn an_upload_ends_once_another_call_gave_the_vault_up() {
        let stall = Stall::default();
        let given_up = stall.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            given_up.give_up(Duration::from_secs(2), "reading stored data");
        });
        // The client sends nothing more: only the other call's stall ends it.
        let status = through_guard(
            Duration::from_secs(600),
            &stall,
            Arc::default(),
            handler(1, Duration::ZERO, Duration::ZERO),
            upload_sent_every(Duration::from_secs(600), 1),
        )
        .await
        .expect("a status");
        assert!(status.message().contains("while reading stored data"));
    }

    #[test]
    fn every_call_says_what_the_vault_was_doing() {
        assert_eq!(doing_of("QueryObjects"), "listing versions");
        assert_eq!(doing_of("SetPassword"), "answering SetPassword");
    }
}
