//! `incremental` and `selective`: scan (blocking thread) -> uploader (async).
//!
//! The uploader gathers chunks until about [`FLUSH_BYTES`] are pending and
//! hands the batch to a flush task: it asks the server which chunks it lacks
//! (`FindMissingChunks`), compresses those on a blocking thread while streaming
//! them to the server, and then commits the batch's objects. Up to
//! [`MAX_IN_FLIGHT`] flushes run at once, so on two cores the scanner, the
//! client's compression and the server's verification all keep busy.
//!
//! A batch commits only its own objects, only after its own upload returned;
//! any chunk it did not upload, the server reported stored and pinned. So a
//! commit is the server's acknowledgement whatever order flushes finish in:
//! once it returns, those objects survive a crash of the server; objects not
//! yet committed are simply absent.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

use globset::GlobSet;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tandem_proto::pb;
use tandem_proto::{ChunkId, UploadPacker};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::compress::compress_chunk;
use crate::console::Console;
use crate::error::{ClientError, ExitStatus};
use crate::inventory::Inventory;
use crate::messages::Msg;
use crate::nrtable::NodeReplicationTable;
use crate::options::ClientOptions;
use crate::paths;
use crate::scan::{self, Item, ScanPlan};
use crate::session::Session;

/// Pending uncompressed chunk bytes that trigger a flush.
const FLUSH_BYTES: usize = 8 * 1024 * 1024;
/// Flushes running at once. Each holds its batch (raw and compressed) in
/// memory, so this and [`FLUSH_BYTES`] bound the client's memory. More
/// flushes hide more of the server's fsync waits in trees of small files
/// (1.7 GB benchmark set, three runs each: 4 -> 9.2-9.7 s, 5 -> 8.7-9.0 s,
/// 6 -> 8.1-8.8 s) but raise peak memory (106-111, 109-119, 112-131 MiB);
/// five keeps the client under restic's peak.
const MAX_IN_FLIGHT: usize = 5;
/// Pending objects that trigger a flush (many small files).
const FLUSH_OBJECTS: usize = 5000;
/// Ids per `FindMissingChunks` call.
const FIND_BATCH: usize = 8192;
/// Objects per commit.
const COMMIT_BATCH: usize = 5000;

/// Which objects a backup sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// New and changed objects; objects gone locally become inactive.
    Incremental,
    /// Everything named, changed or not; nothing is deactivated.
    Selective,
}

/// Figures of a backup, printed as the summary table or JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupStats {
    /// Objects looked at.
    pub inspected: u64,
    /// Objects sent (new or changed).
    pub backed_up: u64,
    /// Objects identical to the server's active version.
    pub unchanged: u64,
    /// Server versions made inactive (gone locally).
    pub deactivated: u64,
    /// Objects that could not be backed up.
    pub failed: u64,
    /// File bytes read.
    pub bytes_scanned: u64,
    /// Compressed bytes uploaded.
    pub bytes_sent: u64,
    /// Bytes not sent because the server already had them.
    pub bytes_deduplicated: u64,
    /// Wall time in seconds.
    pub elapsed_secs: f64,
}

struct Uploader<'a> {
    session: &'a Session,
    filespace: String,
    stats: &'a mut BackupStats,
    pending: Vec<(ChunkId, Vec<u8>)>,
    pending_ids: HashSet<ChunkId>,
    /// Ids handed to the flushes in flight, one set per flush, oldest first.
    /// A chunk in one of them is not sent again: the batch that references
    /// it commits only after every earlier batch's upload has finished.
    sent_ids: VecDeque<HashSet<ChunkId>>,
    /// Fires when the newest flush's upload and all earlier ones are done.
    uploads_done: Option<oneshot::Receiver<()>>,
    pending_bytes: usize,
    ready: Vec<pb::NewObject>,
    progress: &'a ProgressBar,
    started: Instant,
    /// Flushes in progress, oldest first.
    in_flight: VecDeque<tokio::task::JoinHandle<Result<FlushStats, ClientError>>>,
}

/// What one flush did.
#[derive(Debug, Default)]
struct FlushStats {
    bytes_sent: u64,
    bytes_deduplicated: u64,
    backed_up: u64,
    deactivated: u64,
}

impl Uploader<'_> {
    fn add_chunk(&mut self, id: ChunkId, data: Vec<u8>) {
        if !self.sent_ids.iter().any(|ids| ids.contains(&id)) && self.pending_ids.insert(id) {
            self.pending_bytes += data.len();
            self.pending.push((id, data));
        } else {
            self.stats.bytes_deduplicated += data.len() as u64;
        }
    }

    fn needs_flush(&self) -> bool {
        self.pending_bytes >= FLUSH_BYTES || self.ready.len() >= FLUSH_OBJECTS
    }

    fn show_progress(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        self.progress.set_message(format!(
            "{} objects, {} read, {} sent, {}/s",
            self.stats.inspected,
            human_bytes(self.stats.bytes_scanned),
            human_bytes(self.stats.bytes_sent),
            human_bytes((self.stats.bytes_scanned as f64 / secs) as u64),
        ));
    }

    /// Waits for the oldest flush in progress and adds up what it did.
    async fn settle_oldest(&mut self) -> Result<(), ClientError> {
        if let Some(handle) = self.in_flight.pop_front() {
            let done = handle
                .await
                .map_err(|e| ClientError::Usage(format!("upload task failed: {e}")))??;
            self.stats.bytes_sent += done.bytes_sent;
            self.stats.bytes_deduplicated += done.bytes_deduplicated;
            self.stats.backed_up += done.backed_up;
            self.stats.deactivated += done.deactivated;
            self.show_progress();
        }
        Ok(())
    }

    /// Hands the gathered batch to a new flush, first waiting for the oldest
    /// one if [`MAX_IN_FLIGHT`] are running.
    async fn flush(&mut self, deactivate: Vec<String>) -> Result<(), ClientError> {
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            self.settle_oldest().await?;
            self.sent_ids.pop_front();
        }
        let pending = std::mem::take(&mut self.pending);
        self.sent_ids
            .push_back(std::mem::take(&mut self.pending_ids));
        self.pending_bytes = 0;
        let ready = std::mem::take(&mut self.ready);
        let (uploaded, uploads_done) = oneshot::channel();
        let order = UploadOrder {
            earlier: self.uploads_done.replace(uploads_done),
            uploaded,
        };
        let batch = flush_batch(
            self.session.clone(),
            self.filespace.clone(),
            pending,
            ready,
            deactivate,
            order,
        );
        self.in_flight.push_back(tokio::spawn(batch));
        Ok(())
    }

    /// Flushes what is left and waits for every flush to finish.
    async fn finish(&mut self, deactivate: Vec<String>) -> Result<(), ClientError> {
        self.flush(deactivate).await?;
        while !self.in_flight.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }
}

/// Orders a flush after the earlier ones: an object may reference chunks an
/// earlier batch uploads (a file cut across two batches, or a chunk seen in
/// both), so a batch commits only once every earlier upload has finished.
#[derive(Debug)]
struct UploadOrder {
    /// Fires when all earlier uploads are done; `None` for the first flush.
    earlier: Option<oneshot::Receiver<()>>,
    /// Fired by this flush once its own upload and all earlier ones are done.
    uploaded: oneshot::Sender<()>,
}

/// Uploads what the server lacks of `pending`, then commits `ready` and the
/// deactivations once every earlier batch's upload is done too.
async fn flush_batch(
    session: Session,
    filespace: String,
    pending: Vec<(ChunkId, Vec<u8>)>,
    mut ready: Vec<pb::NewObject>,
    mut deactivate: Vec<String>,
    order: UploadOrder,
) -> Result<FlushStats, ClientError> {
    let mut out = FlushStats::default();
    let mut client = session.client();
    let mut missing: HashSet<ChunkId> = HashSet::new();
    for batch in pending.chunks(FIND_BATCH) {
        let ids = batch.iter().map(|(id, _)| id.as_slice().to_vec()).collect();
        let reply = client
            .find_missing_chunks(session.request(pb::FindMissingChunksRequest { chunk_ids: ids }))
            .await
            .map_err(|s| ClientError::server("checking stored chunks", s))?
            .into_inner();
        for raw in reply.missing {
            missing.insert(ChunkId::from_slice(&raw).map_err(|e| ClientError::Server {
                operation: "checking stored chunks",
                message: e.to_string(),
            })?);
        }
    }
    let (to_send, known): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .partition(|(id, _)| missing.contains(id));
    out.bytes_deduplicated = known.iter().map(|(_, d)| d.len() as u64).sum();
    if !to_send.is_empty() {
        // Compressed messages go out as they are made: the server verifies
        // one while the next is compressed.
        let (tx, rx) = mpsc::channel(2);
        let compressor = tokio::task::spawn_blocking(move || compress_into_messages(to_send, &tx));
        let uploaded = client
            .upload_chunks(session.request(ReceiverStream::new(rx)))
            .await;
        let compressed = compressor
            .await
            .map_err(|e| ClientError::Usage(format!("compression task failed: {e}")))?;
        // A compression error ends the stream early; report it, not the upload.
        out.bytes_sent = compressed?;
        uploaded.map_err(|s| ClientError::server("uploading data", s))?;
    }
    if let Some(earlier) = order.earlier {
        // A dropped sender means an earlier flush failed; its own error is
        // reported first, as flushes are settled oldest first.
        earlier.await.map_err(|_| ClientError::Server {
            operation: "uploading data",
            message: "an earlier upload in this backup failed".into(),
        })?;
    }
    let _ = order.uploaded.send(());
    while !ready.is_empty() || !deactivate.is_empty() {
        let objects: Vec<_> = ready.drain(..ready.len().min(COMMIT_BATCH)).collect();
        let gone: Vec<_> = deactivate
            .drain(..deactivate.len().min(COMMIT_BATCH))
            .collect();
        let reply = client
            .commit_objects(session.request(pb::CommitObjectsRequest {
                filespace: filespace.clone(),
                objects,
                deactivate: gone,
            }))
            .await
            .map_err(|s| ClientError::server("committing the backup", s))?
            .into_inner();
        out.backed_up += reply.stored;
        out.deactivated += reply.deactivated;
    }
    Ok(out)
}

/// Compresses `chunks` into upload messages of about
/// [`tandem_proto::UPLOAD_MESSAGE_BYTES`], sending each as soon as it is full; returns the
/// compressed bytes sent. Stops early if the upload has gone.
fn compress_into_messages(
    chunks: Vec<(ChunkId, Vec<u8>)>,
    tx: &mpsc::Sender<pb::UploadChunksRequest>,
) -> Result<u64, ClientError> {
    let mut sent = 0u64;
    let mut packer = UploadPacker::default();
    for (id, raw) in chunks {
        let data = compress_chunk(&raw).map_err(|e| ClientError::Io {
            path: PathBuf::from("<compression>"),
            source: e,
        })?;
        let size = data.len() as u64;
        let full = packer.push(pb::Chunk {
            id: id.as_slice().to_vec(),
            data,
            raw_len: raw.len() as u64,
        });
        if full.is_some_and(|message| tx.blocking_send(message).is_err()) {
            return Ok(sent);
        }
        sent += size;
    }
    if let Some(last) = packer.finish() {
        let _ = tx.blocking_send(last);
    }
    Ok(sent)
}

/// Active versions of the server below `root` (in `filespace`), by path.
async fn fetch_inventory(
    session: &Session,
    filespace: &str,
    root: &str,
) -> Result<Inventory, ClientError> {
    let mut client = session.client();
    let mut stream = client
        .query_objects(session.request(pb::QueryObjectsRequest {
            filespace: filespace.to_string(),
            path_prefix: root.to_string(),
            ..Default::default()
        }))
        .await
        .map_err(|s| ClientError::server("reading the server inventory", s))?
        .into_inner();
    let local =
        |e: rusqlite::Error| ClientError::Usage(format!("keeping the server inventory: {e}"));
    let mut inventory = Inventory::new().map_err(local)?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|s| ClientError::server("reading the server inventory", s))?;
        let versions = batch.versions.into_iter().filter_map(|v| v.attrs).collect();
        inventory.add(versions).map_err(local)?;
    }
    Ok(inventory)
}

/// Records the start or the end of a backup on the server; returns the
/// server's time of the record.
async fn mark(session: &Session, filespace: &str, completed: bool) -> Result<i64, ClientError> {
    let reply = session
        .client()
        .mark_backup(session.request(pb::MarkBackupRequest {
            filespace: filespace.to_string(),
            completed,
        }))
        .await
        .map_err(|s| ClientError::server("recording the backup", s))?;
    Ok(reply.into_inner().recorded_ns)
}

/// Notes the acknowledged backup in the node replication table.
fn note_backup(
    session: &Session,
    options: &ClientOptions,
    filespace: &str,
    at_ns: i64,
    console: &Console,
) {
    let result = NodeReplicationTable::open(&options.state_dir())
        .and_then(|t| t.record(&session.info.guid, &session.info.node, filespace, at_ns));
    if let Err(e) = result {
        console.report(&Msg::nrtable_failed(e), ExitStatus::Warnings);
    }
}

fn progress_bar(console: &Console) -> ProgressBar {
    if console.quiet || console.json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Backs up `paths` (files or trees).
///
/// # Errors
/// Server and connection failures; problems with single objects are reported
/// on `console` and counted in `failed` instead.
pub async fn run(
    session: &Session,
    options: &ClientOptions,
    paths: &[PathBuf],
    mode: Mode,
    excludes: &GlobSet,
    console: &Console,
) -> Result<BackupStats, ClientError> {
    let started = Instant::now();
    let mut stats = BackupStats::default();
    let progress = progress_bar(console);
    for path in paths {
        let root = paths::absolute(path).map_err(|e| ClientError::Io {
            path: path.clone(),
            source: e,
        })?;
        let Some(root_text) = root.to_str().map(str::to_string) else {
            console.report(&Msg::not_utf8(&root.to_string_lossy()), ExitStatus::Skipped);
            stats.failed += 1;
            continue;
        };
        if std::fs::symlink_metadata(&root).is_err() {
            console.report(&Msg::not_found(&root_text), ExitStatus::Skipped);
            stats.failed += 1;
            continue;
        }
        let filespace = paths::filespace_of(&root);
        mark(session, &filespace, false).await?;
        let inventory = match mode {
            Mode::Incremental => Some(fetch_inventory(session, &filespace, &root_text).await?),
            Mode::Selective => None,
        };
        let plan = ScanPlan {
            root,
            excludes: excludes.clone(),
            inventory,
        };
        // Two batches only: each may hold 1 MiB of small chunks and a 4 MiB one,
        // and memory must stay at restic's level (four raised peak RSS 10 MiB).
        let (tx, mut rx) = mpsc::channel::<Vec<Item>>(2);
        let scanner = tokio::task::spawn_blocking(move || scan::scan(plan, &tx));
        let mut uploader = Uploader {
            session,
            filespace: filespace.clone(),
            stats: &mut stats,
            pending: Vec::new(),
            pending_ids: HashSet::new(),
            sent_ids: VecDeque::new(),
            uploads_done: None,
            pending_bytes: 0,
            ready: Vec::new(),
            progress: &progress,
            started,
            in_flight: VecDeque::new(),
        };
        while let Some(batch) = rx.recv().await {
            for item in batch {
                match item {
                    Item::Chunk { id, data } => uploader.add_chunk(id, data),
                    Item::Scanned(n) => uploader.stats.bytes_scanned += n,
                    Item::Object { attrs, chunks } => {
                        uploader.stats.inspected += 1;
                        uploader.ready.push(pb::NewObject {
                            attrs: Some(attrs),
                            chunk_ids: chunks.iter().map(|c| c.as_slice().to_vec()).collect(),
                        });
                    }
                    Item::Unchanged(n) => {
                        uploader.stats.inspected += n;
                        uploader.stats.unchanged += n;
                    }
                    Item::Problem(msg) => {
                        progress.suspend(|| console.report(&msg, ExitStatus::Skipped));
                        // Warnings about the whole backup, not one object.
                        if !matches!(msg.id, "TDM1013W" | "TDM1014W") {
                            uploader.stats.inspected += 1;
                            uploader.stats.failed += 1;
                        }
                    }
                }
                if uploader.needs_flush() {
                    uploader.flush(Vec::new()).await?;
                }
            }
        }
        let deactivate = scanner
            .await
            .map_err(|e| ClientError::Usage(format!("scanner failed: {e}")))?;
        uploader.finish(deactivate).await?;
        let acknowledged = mark(session, &filespace, true).await?;
        note_backup(session, options, &filespace, acknowledged, console);
    }
    progress.finish_and_clear();
    stats.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// `1.5 MiB`-style sizes for humans.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
