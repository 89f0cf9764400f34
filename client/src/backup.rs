//! `incremental` and `selective`: scan (blocking thread) -> uploader (async).
//!
//! The uploader gathers chunks until about [`FLUSH_BYTES`] are pending, asks
//! the server which it lacks (`FindMissingChunks`), compresses and uploads only
//! those, and then commits the objects whose chunks are all on the server. The
//! commit is the server's acknowledgement: once it returns, those objects
//! survive a crash of the server; objects not yet committed are simply absent.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use globset::GlobSet;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tandem_proto::ChunkId;
use tandem_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::console::Console;
use crate::error::{ClientError, ExitStatus};
use crate::messages::Msg;
use crate::nrtable::NodeReplicationTable;
use crate::options::ClientOptions;
use crate::paths;
use crate::scan::{self, Item, ScanPlan};
use crate::session::Session;

/// Pending uncompressed chunk bytes that trigger a flush.
const FLUSH_BYTES: usize = 16 * 1024 * 1024;
/// Pending objects that trigger a flush (many small files).
const FLUSH_OBJECTS: usize = 2000;
/// Largest upload message (compressed bytes).
const UPLOAD_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Ids per `FindMissingChunks` call.
const FIND_BATCH: usize = 8192;
/// Objects per commit.
const COMMIT_BATCH: usize = 2000;
/// zstd level: level 1 compresses about as well as 3 on backup data at ~3x the speed.
const ZSTD_LEVEL: i32 = 1;

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
    pending_bytes: usize,
    ready: Vec<pb::NewObject>,
    progress: &'a ProgressBar,
    started: Instant,
    /// The flush in progress. Flushes run one at a time, in order, while the
    /// next batch is gathered: scanning overlaps compressing and sending, and
    /// a batch's objects are still committed only after every earlier batch's
    /// chunks are on the server.
    in_flight: Option<tokio::task::JoinHandle<Result<FlushStats, ClientError>>>,
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
        if self.pending_ids.insert(id) {
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

    /// Waits for the flush in progress and adds up what it did.
    async fn settle(&mut self) -> Result<(), ClientError> {
        if let Some(handle) = self.in_flight.take() {
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

    /// Hands the gathered batch to a new flush once the previous one is done.
    async fn flush(&mut self, deactivate: Vec<String>) -> Result<(), ClientError> {
        self.settle().await?;
        let pending = std::mem::take(&mut self.pending);
        self.pending_ids.clear();
        self.pending_bytes = 0;
        let ready = std::mem::take(&mut self.ready);
        let batch = flush_batch(
            self.session.clone(),
            self.filespace.clone(),
            pending,
            ready,
            deactivate,
        );
        self.in_flight = Some(tokio::spawn(batch));
        Ok(())
    }

    /// Flushes what is left and waits for every flush to finish.
    async fn finish(&mut self, deactivate: Vec<String>) -> Result<(), ClientError> {
        self.flush(deactivate).await?;
        self.settle().await
    }
}

/// Uploads what the server lacks of `pending`, then commits `ready` and the
/// deactivations.
async fn flush_batch(
    session: Session,
    filespace: String,
    pending: Vec<(ChunkId, Vec<u8>)>,
    mut ready: Vec<pb::NewObject>,
    mut deactivate: Vec<String>,
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
        let messages = tokio::task::spawn_blocking(move || compress_into_messages(to_send))
            .await
            .map_err(|e| ClientError::Usage(format!("compression task failed: {e}")))??;
        out.bytes_sent = messages
            .iter()
            .flat_map(|m| &m.chunks)
            .map(|c| c.data.len() as u64)
            .sum();
        client
            .upload_chunks(session.request(tokio_stream::iter(messages)))
            .await
            .map_err(|s| ClientError::server("uploading data", s))?;
    }
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

fn compress_into_messages(
    chunks: Vec<(ChunkId, Vec<u8>)>,
) -> Result<Vec<pb::UploadChunksRequest>, ClientError> {
    let mut messages = Vec::new();
    let mut current = pb::UploadChunksRequest::default();
    let mut size = 0usize;
    for (id, raw) in chunks {
        let data = zstd::bulk::compress(&raw, ZSTD_LEVEL).map_err(|e| ClientError::Io {
            path: PathBuf::from("<compression>"),
            source: e,
        })?;
        if size + data.len() > UPLOAD_MESSAGE_BYTES && !current.chunks.is_empty() {
            messages.push(std::mem::take(&mut current));
            size = 0;
        }
        size += data.len();
        current.chunks.push(pb::Chunk {
            id: id.as_slice().to_vec(),
            data,
            raw_len: raw.len() as u64,
        });
    }
    if !current.chunks.is_empty() {
        messages.push(current);
    }
    Ok(messages)
}

/// Active versions of the server below `root` (in `filespace`), by path.
async fn fetch_inventory(
    session: &Session,
    filespace: &str,
    root: &str,
) -> Result<HashMap<String, pb::ObjectAttrs>, ClientError> {
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
    let mut inventory = HashMap::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|s| ClientError::server("reading the server inventory", s))?;
        for v in batch.versions {
            if let Some(attrs) = v.attrs {
                inventory.insert(attrs.path.clone(), attrs);
            }
        }
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
        let (tx, mut rx) = mpsc::channel::<Item>(16);
        let scanner = tokio::task::spawn_blocking(move || scan::scan(plan, &tx));
        let mut uploader = Uploader {
            session,
            filespace: filespace.clone(),
            stats: &mut stats,
            pending: Vec::new(),
            pending_ids: HashSet::new(),
            pending_bytes: 0,
            ready: Vec::new(),
            progress: &progress,
            started,
            in_flight: None,
        };
        while let Some(item) = rx.recv().await {
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
                Item::Unchanged => {
                    uploader.stats.inspected += 1;
                    uploader.stats.unchanged += 1;
                }
                Item::Problem(msg) => {
                    progress.suspend(|| console.report(&msg, ExitStatus::Skipped));
                    if msg.id != "TDM1013W" {
                        uploader.stats.inspected += 1;
                        uploader.stats.failed += 1;
                    }
                }
            }
            if uploader.needs_flush() {
                uploader.flush(Vec::new()).await?;
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
