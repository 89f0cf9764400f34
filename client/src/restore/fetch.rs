//! Fetching a restore's data: chunk ids go to the server in batches
//! (`ReadChunks`), and every chunk that comes back is decompressed and checked
//! against its id. Large chunks are decoded on blocking threads, several at
//! once, so decoding uses both cores; small ones on the fetching task, where
//! decoding costs less than a hand-off. The writers still get everything in
//! file order, in parcels of many messages: one wake-up of a writer thread per
//! message (three per small file) made ~25,000 context switches a second.
//! Each batch's call is made while the batch before it is taken, so a server
//! reading from an object store fetches the next batch's data meanwhile
//! instead of after it (with the S3 pool's 256 MiB read cache, a restore of
//! the 1.7 GB benchmark set took 6.3-7.1 s, against 8.1-8.4 s one call at a
//! time with a 64 MiB cache).

use std::cell::RefCell;
use std::collections::VecDeque;

use futures_util::FutureExt;
use tandem_proto::ChunkId;
use tandem_proto::pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use crate::logon::session::Session;

/// Bytes of file data per `ReadChunks` call.
const FETCH_BATCH_BYTES: u64 = 16 * 1024 * 1024;
/// Files per `ReadChunks` call.
const FETCH_BATCH_FILES: usize = 512;
/// Chunks being decoded at once.
const DECODE_AHEAD: usize = 4;
/// Chunks of up to this many raw bytes are decoded on the fetching task
/// itself. For them the hand-off to a blocking thread and back cost more than
/// the decoding: in a restore of 20,000 small files, wake-ups and context
/// switches took ~6% of the samples (26-42k switches a second).
const DECODE_INLINE_BYTES: u64 = 64 * 1024;
/// Messages that close a parcel.
const PARCEL_MESSAGES: usize = 128;
/// Bytes of file data that close a parcel.
const PARCEL_BYTES: usize = 1024 * 1024;

thread_local! {
    /// One decompression context per thread: a fresh one per chunk showed in
    /// the restore profile (`ZSTD_createDCtx`, its memset and mallocs).
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// What the fetcher hands the writer, in file order.
#[derive(Debug)]
pub(super) enum Fetched {
    /// The next file (an index into the plan's files) starts.
    Begin(usize),
    /// The file's next chunk, decompressed and verified.
    Data(Vec<u8>),
    /// The file's chunks are all there.
    End,
    /// The file cannot be restored: its data is damaged or missing, or
    /// the server could not read it. Names the chunk at fault, when one is.
    Failed {
        /// What went wrong.
        cause: String,
        /// The chunk that could not be used: one the server is asked to
        /// repair.
        chunk: Option<ChunkId>,
        /// False when the server said UNAVAILABLE (its storage did not
        /// answer), which says nothing about the data: no repair is asked
        /// and the file is not called damaged.
        damaged: bool,
    },
    /// A file (an index into the plan's files) whose data was not asked
    /// for: its source was given up in this command (a vault that stopped
    /// answering). Nothing of it is written; it is retried elsewhere.
    Skipped {
        /// The file.
        job: usize,
        /// Why its source was given up.
        cause: String,
    },
}

/// Messages for the writers, in order, sent together.
pub(super) type Parcel = Vec<Fetched>;

/// A file to fetch: its index, its chunks in order, its size.
pub(super) type FetchJob = (usize, Vec<ChunkId>, u64);

/// Decompresses a chunk and checks it hashes to `expected`.
fn decode(expected: ChunkId, chunk: &pb::Chunk) -> Result<Vec<u8>, String> {
    let raw_len = usize::try_from(chunk.raw_len)
        .unwrap_or(usize::MAX)
        .min(64 << 20);
    let raw = DECOMPRESSOR
        .with(|cell| {
            let mut slot = cell.borrow_mut();
            let decompressor = match slot.as_mut() {
                Some(d) => d,
                None => slot.insert(zstd::bulk::Decompressor::new()?),
            };
            decompressor.decompress(&chunk.data, raw_len)
        })
        .map_err(|e| format!("chunk {expected} cannot be decompressed: {e}"))?;
    if ChunkId::of(&raw) == expected {
        Ok(raw)
    } else {
        Err(format!("chunk {expected} does not match its hash"))
    }
}

/// Messages for the writers, kept in order while chunks decode in parallel.
struct Ordered {
    tx: mpsc::Sender<Parcel>,
    queue: VecDeque<Slot>,
    decoding: usize,
    /// Messages ready to go, not yet sent.
    parcel: Parcel,
    parcel_bytes: usize,
}

enum Slot {
    Ready(Fetched),
    Decoding(ChunkId, JoinHandle<Result<Vec<u8>, String>>),
}

impl Ordered {
    /// Queues a message; false once the writer has gone.
    async fn push(&mut self, message: Fetched) -> bool {
        self.queue.push_back(Slot::Ready(message));
        self.send_ready().await
    }

    /// Starts decoding a chunk; false once the writer has gone.
    async fn decode(&mut self, expected: ChunkId, chunk: pb::Chunk) -> bool {
        if chunk.raw_len <= DECODE_INLINE_BYTES {
            let message = match decode(expected, &chunk) {
                Ok(raw) => Fetched::Data(raw),
                Err(cause) => Fetched::Failed {
                    cause,
                    chunk: Some(expected),
                    damaged: true,
                },
            };
            return self.push(message).await;
        }
        let handle = tokio::task::spawn_blocking(move || decode(expected, &chunk));
        self.queue.push_back(Slot::Decoding(expected, handle));
        self.decoding += 1;
        while self.decoding > DECODE_AHEAD {
            if !self.send_one().await {
                return false;
            }
        }
        self.send_ready().await
    }

    /// Sends what is at the front and already done.
    async fn send_ready(&mut self) -> bool {
        while let Some(front) = self.queue.front() {
            let done = match front {
                Slot::Ready(_) => true,
                Slot::Decoding(_, handle) => handle.is_finished(),
            };
            if !done {
                break;
            }
            if !self.send_one().await {
                return false;
            }
        }
        true
    }

    /// Sends the front message, waiting for its decoding if need be.
    async fn send_one(&mut self) -> bool {
        let message = match self.queue.pop_front() {
            None => return true,
            Some(Slot::Ready(message)) => message,
            Some(Slot::Decoding(expected, handle)) => {
                self.decoding -= 1;
                // What is gathered goes out before waiting for the decoding.
                if !handle.is_finished() && !self.send_parcel().await {
                    return false;
                }
                match handle.await {
                    Ok(Ok(raw)) => Fetched::Data(raw),
                    Ok(Err(cause)) => Fetched::Failed {
                        cause,
                        chunk: Some(expected),
                        damaged: true,
                    },
                    Err(e) => Fetched::Failed {
                        cause: format!("decoding failed: {e}"),
                        chunk: None,
                        damaged: true,
                    },
                }
            }
        };
        if let Fetched::Data(raw) = &message {
            self.parcel_bytes += raw.len();
        }
        self.parcel.push(message);
        if self.parcel.len() >= PARCEL_MESSAGES || self.parcel_bytes >= PARCEL_BYTES {
            return self.send_parcel().await;
        }
        true
    }

    /// Sends the messages gathered so far.
    async fn send_parcel(&mut self) -> bool {
        if self.parcel.is_empty() {
            return true;
        }
        self.parcel_bytes = 0;
        let parcel = std::mem::take(&mut self.parcel);
        self.tx.send(parcel).await.is_ok()
    }

    /// Sends what is ready before the fetch waits for the network, so the
    /// writers never wait for a parcel to fill.
    async fn before_waiting(&mut self) -> bool {
        self.send_ready().await && self.send_parcel().await
    }

    /// Sends everything left.
    async fn flush(&mut self) -> bool {
        while !self.queue.is_empty() {
            if !self.send_one().await {
                return false;
            }
        }
        self.send_parcel().await
    }
}

/// The chunk ids of one batch and the `ReadChunks` calls that fetch them:
/// at most [`tandem_proto::MAX_CHUNK_IDS_PER_CALL`] ids per call, so a file
/// of more chunks than that (4 GiB and up) is fetched in several calls.
struct Feed {
    ids: Vec<Vec<u8>>,
    /// Ids asked for so far.
    asked: usize,
    /// Chunks taken from the calls so far.
    taken: usize,
    /// The current call, or why it could not be made.
    stream: Option<CallResult>,
}

/// A `ReadChunks` call's stream, or why it could not be made.
type CallResult = Result<tonic::Streaming<pb::ReadChunksResponse>, tonic::Status>;

/// The call for the batch after the current one, started early. Dropped
/// unused (the fetch restarted elsewhere after a failed call, or stopped),
/// it cancels the call.
struct Ahead {
    /// The batch's files: `files[start..end]`.
    start: usize,
    end: usize,
    feed: Option<Feed>,
    call: Option<JoinHandle<CallResult>>,
}

impl Ahead {
    /// Makes the call for the batch of `files` that starts at `start`.
    fn call(session: &Session, files: &[FetchJob], start: usize) -> Ahead {
        let end = batch_end(files, start);
        let mut feed = Feed::of(&files[start..end]);
        let call = feed.call_ahead(session);
        Ahead {
            start,
            end,
            feed: Some(feed),
            call,
        }
    }

    /// Takes the batch's feed, its first window's call in place, if the
    /// batch is the one that starts at `next`.
    async fn take_if_at(mut self, next: usize) -> Option<(usize, Feed)> {
        if self.start != next {
            return None;
        }
        let mut feed = self.feed.take()?;
        if let Some(call) = self.call.take() {
            // A task that stopped says nothing about the data: no repair.
            feed.stream = Some(call.await.unwrap_or_else(|e| {
                Err(tonic::Status::unavailable(format!(
                    "the data request stopped: {e}"
                )))
            }));
        }
        Some((self.end, feed))
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.abort();
        }
    }
}

/// The end (exclusive) of the batch of `files` that starts at `next`: up to
/// [`FETCH_BATCH_BYTES`] of data, [`FETCH_BATCH_FILES`] files and one call's
/// worth of chunk ids, and at least one file.
fn batch_end(files: &[FetchJob], next: usize) -> usize {
    let mut end = next;
    let mut bytes = 0u64;
    let mut count = 0usize;
    while end < files.len()
        && (end == next
            || (bytes < FETCH_BATCH_BYTES
                && end - next < FETCH_BATCH_FILES
                && count + files[end].1.len() <= tandem_proto::MAX_CHUNK_IDS_PER_CALL))
    {
        bytes += files[end].2;
        count += files[end].1.len();
        end += 1;
    }
    end
}

impl Feed {
    fn new(ids: Vec<Vec<u8>>) -> Self {
        Feed {
            ids,
            asked: 0,
            taken: 0,
            stream: None,
        }
    }

    /// The ids of `files`' chunks, in order.
    fn of(files: &[FetchJob]) -> Self {
        Feed::new(
            files
                .iter()
                .flat_map(|(_, c, _)| c.iter().map(|id| id.as_slice().to_vec()))
                .collect(),
        )
    }

    /// Starts the call for the first window of ids in the background, so
    /// the server reads it from storage while the batch before it is still
    /// being taken. `None` when there is nothing to ask for.
    fn call_ahead(&mut self, session: &Session) -> Option<JoinHandle<CallResult>> {
        if self.ids.is_empty() {
            return None;
        }
        let chunk_ids = self.window();
        let session = session.clone();
        Some(tokio::spawn(
            async move { read_call(&session, chunk_ids).await },
        ))
    }

    /// The next window of ids to ask for, counted as asked.
    fn window(&mut self) -> Vec<Vec<u8>> {
        let end = self
            .ids
            .len()
            .min(self.asked + tandem_proto::MAX_CHUNK_IDS_PER_CALL);
        let chunk_ids = self.ids[self.asked..end].to_vec();
        self.asked = end;
        chunk_ids
    }

    /// Whether every chunk asked for so far was taken: the next one needs a
    /// new call.
    fn window_done(&self) -> bool {
        self.taken == self.asked
    }

    /// Whether every id of the batch has been asked for.
    fn all_asked(&self) -> bool {
        self.asked == self.ids.len()
    }

    /// Asks for the next window of ids. The spent call is let go first.
    async fn open_next(&mut self, session: &Session) {
        let chunk_ids = self.window();
        self.stream = None;
        self.stream = Some(read_call(session, chunk_ids).await);
    }
}

/// One `ReadChunks` call for `chunk_ids`: its stream, or why it failed.
async fn read_call(session: &Session, chunk_ids: Vec<Vec<u8>>) -> CallResult {
    session
        .client()
        .read_chunks(session.request(pb::ReadChunksRequest { chunk_ids }))
        .await
        .map(tonic::Response::into_inner)
}

/// Fetches the chunks of `files` batch by batch, in file order. A failed
/// batch call fails its first file and the fetch goes on with the next; a
/// damaged chunk fails its file only.
pub(super) async fn fetch(session: Session, files: Vec<FetchJob>, tx: mpsc::Sender<Parcel>) {
    let mut out = Ordered {
        tx,
        queue: VecDeque::new(),
        decoding: 0,
        parcel: Vec::new(),
        parcel_bytes: 0,
    };
    let mut next = 0;
    let mut ahead: Option<Ahead> = None;
    while next < files.len() {
        let taken = match ahead.take() {
            Some(early) => {
                if !out.before_waiting().await {
                    return;
                }
                early.take_if_at(next).await
            }
            None => None,
        };
        let (end, mut feed) = match taken {
            Some(batch) => batch,
            None => {
                let end = batch_end(&files, next);
                (end, Feed::of(&files[next..end]))
            }
        };
        // This batch's call is made first, then the next batch's: the
        // server fetches the next one's data from storage (an object
        // store's GETs) while this batch is taken, instead of after it.
        // (Asking for it only once this batch's first chunk was in made
        // the S3 restore of the benchmark set 8% slower: the first chunk
        // waits for the server's first wave.)
        if feed.stream.is_none() && !feed.ids.is_empty() {
            if !out.before_waiting().await {
                return;
            }
            feed.open_next(&session).await;
        }
        // Only once this batch has asked for all its ids (a batch of one
        // huge file may need several calls): a restore never waits for a
        // call while it holds one it is not reading, so several restores
        // of one node cannot deadlock on the server's read slots.
        if end < files.len() && feed.all_asked() {
            ahead = Some(Ahead::call(&session, &files, end));
        }
        let mut restart_at = end;
        'files: for (i, (job, chunks, _)) in files.iter().enumerate().take(end).skip(next) {
            if !out.push(Fetched::Begin(*job)).await {
                return;
            }
            for expected in chunks {
                if feed.window_done() {
                    if !out.before_waiting().await {
                        return;
                    }
                    feed.open_next(&session).await;
                    if ahead.is_none() && end < files.len() && feed.all_asked() {
                        ahead = Some(Ahead::call(&session, &files, end));
                    }
                }
                feed.taken += 1;
                let item = match feed.stream.as_mut() {
                    Some(Err(status)) => Some(Err(status.clone())),
                    Some(Ok(s)) => match s.next().now_or_never() {
                        Some(item) => item,
                        None => {
                            if !out.before_waiting().await {
                                return;
                            }
                            s.next().await
                        }
                    },
                    None => None,
                };
                let sent = match item {
                    Some(Ok(pb::ReadChunksResponse { chunk: Some(c) })) => {
                        out.decode(*expected, c).await
                    }
                    other => {
                        let (cause, damaged) = match other {
                            // Only what the server says of the data is
                            // damage; a refusal, a cut-short session or a
                            // pool that did not answer asks for no repair.
                            Some(Err(status)) => (
                                status.message().to_string(),
                                matches!(
                                    status.code(),
                                    tonic::Code::DataLoss | tonic::Code::NotFound
                                ),
                            ),
                            None => ("the server ended the data stream early".into(), true),
                            Some(Ok(_)) => ("the server sent an empty chunk".into(), true),
                        };
                        // The stream is unusable after this: go on with a
                        // new call from the next file.
                        let _ = out
                            .push(Fetched::Failed {
                                cause,
                                chunk: damaged.then_some(*expected),
                                damaged,
                            })
                            .await;
                        restart_at = i + 1;
                        // A vault given up in this command answers nothing
                        // more: the rest go to the server at once, without
                        // a refused call per file.
                        if let Some(why) = session.vault_stalled() {
                            for (job, _, _) in &files[restart_at..] {
                                let skipped = Fetched::Skipped {
                                    job: *job,
                                    cause: why.to_string(),
                                };
                                if !out.push(skipped).await {
                                    return;
                                }
                            }
                            restart_at = files.len();
                        }
                        break 'files;
                    }
                };
                if !sent {
                    return;
                }
            }
            if !out.push(Fetched::End).await {
                return;
            }
        }
        next = restart_at;
    }
    out.flush().await;
}
