//! The sending side of a streamed answer (`ReadChunks`, `QueryObjects`,
//! `QueryArchives`).
//!
//! The handler's task queues messages for the client; a client that stops
//! reading leaves the task waiting with what it holds (and its read slot).
//! [`Answer::send`] therefore looks at the client's session while it waits,
//! and ends the answer once the session has been cancelled or has expired.
//! An answer ended early always says so: its stream's last item is the
//! error, after whatever was queued, so a cut-short listing is never taken
//! for a whole one (gRPC would otherwise report a plain end, "OK").

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::ServerState;

/// How often a send that waits for the client to take what is queued looks
/// whether the client's session is still open.
pub const SESSION_CHECK: Duration = Duration::from_secs(15);

/// A streamed answer as tonic returns it.
pub type AnswerStream<T> =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

/// The sending side of one streamed answer for session `token`.
pub struct Answer<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    /// Why the answer was cut short, given to the client after what was
    /// queued.
    cut: Arc<Mutex<Option<Status>>>,
    state: Arc<ServerState>,
    token: String,
}

/// An answer queueing at most `depth` messages, and the stream tonic sends.
pub fn answer<T: Send + 'static>(
    state: &Arc<ServerState>,
    token: &str,
    depth: usize,
) -> (Answer<T>, AnswerStream<T>) {
    let (tx, rx) = mpsc::channel(depth);
    let cut: Arc<Mutex<Option<Status>>> = Arc::default();
    let last_word = cut.clone();
    let stream = ReceiverStream::new(rx).chain(
        futures_util::stream::once(async move {
            last_word.lock().unwrap_or_else(|e| e.into_inner()).take()
        })
        .filter_map(|cut| async move { cut.map(Err) }),
    );
    let answer = Answer {
        tx,
        cut,
        state: state.clone(),
        token: token.to_string(),
    };
    (answer, Box::pin(stream))
}

impl<T> std::fmt::Debug for Answer<T> {
    // The session token stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("closed", &self.tx.is_closed())
            .finish_non_exhaustive()
    }
}

impl<T> Answer<T> {
    /// Queues `item`, waiting while the client has not taken what is
    /// queued. `false` when the answer should end: the client dropped it,
    /// or its session was closed while the send waited (the answer is then
    /// cut short with the reason).
    pub async fn send(&self, item: Result<T, Status>) -> bool {
        // Room in the queue (the usual case): no timer.
        let item = match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(item);
                return true;
            }
            Err(mpsc::error::TrySendError::Closed(())) => return false,
            Err(mpsc::error::TrySendError::Full(())) => item,
        };
        loop {
            match tokio::time::timeout(SESSION_CHECK, self.tx.reserve()).await {
                Ok(Ok(permit)) => {
                    permit.send(item);
                    return true;
                }
                Ok(Err(_)) => return false,
                Err(_) => {
                    if let Err(closed) = self.state.sessions.check_open(&self.token) {
                        self.cut_short(Status::from(closed));
                        return false;
                    }
                }
            }
        }
    }

    /// Ends the answer with `status` after what is queued, without waiting
    /// for room (the client may not be reading).
    pub fn cut_short(&self, status: Status) {
        *self.cut.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }

    /// Whether the client dropped the answer.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
