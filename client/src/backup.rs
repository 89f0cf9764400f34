//! `incremental` and `selective`: scan (blocking thread) -> uploader (async).
//!
//! The uploader gathers chunks until about [`FLUSH_BYTES`] are pending and
//! hands the batch to an upload task: it asks the server which chunks it
//! lacks (`FindMissingChunks`) and compresses those on a blocking thread while
//! streaming them to the server. A commit task then commits the batch's
//! objects. Up to [`MAX_IN_FLIGHT`] batches hold their data at once, so on
//! two cores the scanner, the client's compression and the server's
//! verification all keep busy; a batch whose data is all handed to the
//! transport no longer counts, while the server still verifies, writes and
//! fsyncs it (most of an upload's time, and none of the client's memory).
//!
//! A batch commits only its own objects, only after its own upload returned;
//! any chunk it did not upload, the server reported stored and pinned. So a
//! commit is the server's acknowledgement whatever order flushes finish in:
//! once it returns, those objects survive a crash of the server; objects not
//! yet committed are simply absent.
//!
//! The parts before the uploader: [`inventory`] (what the server holds,
//! fetched first, so the scanner reads no unchanged file), and on the
//! scanner's thread [`walk`] (the tree by directory descriptors), [`meta`]
//! (attributes, extended attributes, ACLs, hard links) and [`scan`] (which
//! objects to send, read and chunked by [`chunker`]); [`compress`] is the
//! uploader's zstd step.

pub mod chunker;
pub mod compress;
pub mod inventory;
pub mod meta;
mod mirror;
pub mod preview;
pub mod rules;
pub mod scan;
pub mod walk;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use indicatif::ProgressBar;
use prost::Message as _;
use serde::Serialize;
use tandem_proto::pb;
use tandem_proto::{ChunkId, StoredChunk, UploadPacker};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::backup::compress::compress_chunk;
use crate::backup::inventory::Inventory;
use crate::backup::mirror::{Mirror, MirrorOutlet};
use crate::error::{ClientError, ExitStatus};
use crate::logon::nrtable::NodeReplicationTable;
use crate::logon::session::Session;
use crate::options::ClientOptions;
use crate::output::console::Console;
use crate::output::messages::Msg;
use crate::paths;
use scan::{Item, ScanPlan};

/// Pending uncompressed chunk bytes that trigger a flush. Each flush costs a
/// `FindMissingChunks` call, an upload stream and a commit, so larger ones
/// spend less on those; see [`MAX_IN_FLIGHT`] for the measurements.
const FLUSH_BYTES: usize = 16 * 1024 * 1024;
/// Batches holding their data at once, from the `FindMissingChunks` call
/// until the last compressed message is handed to the transport. Each holds
/// up to [`FLUSH_BYTES`] of raw chunks, so the two bound the client's memory.
/// Full backups of the 1.7 GB benchmark set, alternating (wall, peak RSS):
/// 8 MiB batches: 2 -> 5.44-5.46 s, 82-97 MiB; 3 -> 4.76-5.43 s, 95-104 MiB;
/// 4 -> 5.19-5.51 s, 104-113 MiB; 5 -> 5.23-5.98 s, 117-122 MiB.
/// 12 MiB: 2 -> 4.96-5.05 s, 95-100 MiB. 16 MiB: 2 -> 4.84-4.99 s, 106-110
/// MiB; 3 -> 4.77-5.01 s, 124-131 MiB. (When a batch still counted until the
/// server's reply, five 8 MiB batches took 5.9-6.5 s.)
const MAX_IN_FLIGHT: usize = 2;
/// Uploads open at once, counting those whose data is all sent and which
/// wait for the server to verify, write and fsync it: most of an upload's
/// time, during which it holds at most its stream's few queued messages.
const MAX_UPLOADS_OPEN: usize = 10;
/// Commits waiting at once. A commit waits for its own upload and every
/// earlier one, so it usually trails the uploads by one or two; it holds
/// only object metadata.
const MAX_COMMITS_WAITING: usize = MAX_UPLOADS_OPEN + 2;
/// Pending objects that trigger a flush (many small files).
const FLUSH_OBJECTS: usize = 5000;
/// Ids per `FindMissingChunks` call.
const FIND_BATCH: usize = 8192;
/// Objects per commit.
const COMMIT_BATCH: usize = 5000;
/// Encoded bytes of objects per commit, at most (one object may exceed it).
const COMMIT_BYTES: usize = 16 * 1024 * 1024;

/// Which objects a backup sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// New and changed objects; objects gone locally become inactive.
    Incremental,
    /// Everything named, changed or not; nothing is deactivated.
    Selective,
}

/// Where the objects of a scan are committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// As backup versions (`incremental`, `selective`).
    Backup,
    /// As archive copies with this description (`archive`).
    Archive {
        /// The description every copy of the command gets.
        description: String,
    },
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
    /// Objects that were not backed up, all reasons together.
    pub failed: u64,
    /// Objects not backed up, by reason ("unreadable", "not found",
    /// "socket", "kept changing"): nothing is left out without a count.
    pub not_backed_up: std::collections::BTreeMap<&'static str, u64>,
    /// Objects stored with a warning (changed while read, extended
    /// attributes unreadable) and warnings about the whole backup.
    pub warnings: u64,
    /// File bytes read.
    pub bytes_scanned: u64,
    /// Compressed bytes uploaded.
    pub bytes_sent: u64,
    /// Bytes not sent because the server already had them.
    pub bytes_deduplicated: u64,
    /// Wall time in seconds.
    pub elapsed_secs: f64,
    /// When the archive copies expire (archives only; the server's time).
    #[serde(skip)]
    pub archive_expires_ns: Option<i64>,
}

impl BackupStats {
    /// Counts an object that was not backed up.
    fn count_skip(&mut self, reason: &'static str) {
        self.failed += 1;
        *self.not_backed_up.entry(reason).or_default() += 1;
    }
}

/// Why the object a scanner message is about was not backed up; `None` for
/// messages about objects that were stored (with a warning) or about the
/// whole backup.
pub(crate) fn skip_reason(id: &str) -> Option<&'static str> {
    match id {
        "TDM1010W" => Some("unreadable"),
        "TDM1011W" => Some("not found"),
        "TDM1015W" => Some("socket"),
        "TDM1017W" => Some("kept changing"),
        _ => None,
    }
}

/// Bound on `changing_retries`: each retry reads the whole file again.
const MAX_CHANGING_RETRIES: u32 = 100;

pub(crate) struct Uploader<'a> {
    session: &'a Session,
    filespace: String,
    target: &'a Target,
    stats: &'a mut BackupStats,
    pending: Vec<(ChunkId, Vec<u8>)>,
    pending_ids: HashSet<ChunkId>,
    /// Ids handed to the uploads in flight, one set per upload, oldest
    /// first. A chunk in one of them is not sent again: the batch that
    /// references it commits only after every earlier upload has finished.
    sent_ids: VecDeque<HashSet<ChunkId>>,
    /// Fires when the newest batch's upload and all earlier ones are done.
    uploads_done: Option<oneshot::Receiver<()>>,
    pending_bytes: usize,
    ready: Vec<pb::NewObject>,
    progress: &'a ProgressBar,
    started: Instant,
    /// Permits for batches holding their data ([`MAX_IN_FLIGHT`]); an
    /// upload gives its permit back once its data is handed to the transport.
    data_slots: Arc<Semaphore>,
    /// Uploads in progress, oldest first.
    uploading: VecDeque<JoinHandle<Result<UploadStats, ClientError>>>,
    /// Commits waiting for their uploads or in progress, oldest first. They
    /// hold only object metadata, so a batch whose data is sent frees its
    /// upload slot while its commit waits for earlier uploads.
    committing: VecDeque<JoinHandle<Result<CommitStats, ClientError>>>,
    /// A failed copy to the session's chunk mirror was logged already.
    mirror_warned: bool,
}

/// What one batch's upload did.
#[derive(Debug, Default)]
struct UploadStats {
    bytes_sent: u64,
    bytes_deduplicated: u64,
    /// Why the mirror (the local vault) did not take this batch's chunks.
    mirror_failure: Option<String>,
}

/// What one batch's commit did.
#[derive(Debug, Default)]
struct CommitStats {
    backed_up: u64,
    deactivated: u64,
    /// The expiry the server gave archive copies.
    expires_ns: Option<i64>,
}

impl<'a> Uploader<'a> {
    /// An uploader committing to `filespace` as `target`, adding its
    /// figures to `stats`.
    pub(crate) fn new(
        session: &'a Session,
        filespace: String,
        target: &'a Target,
        stats: &'a mut BackupStats,
        progress: &'a ProgressBar,
        started: Instant,
    ) -> Self {
        Uploader {
            session,
            filespace,
            target,
            stats,
            pending: Vec::new(),
            pending_ids: HashSet::new(),
            sent_ids: VecDeque::new(),
            uploads_done: None,
            pending_bytes: 0,
            ready: Vec::new(),
            progress,
            started,
            data_slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            uploading: VecDeque::new(),
            committing: VecDeque::new(),
            mirror_warned: false,
        }
    }

    /// Takes one batch of a producer's items (a scan, or a database
    /// agent's stream), flushing whenever enough is gathered. Problems are
    /// reported on `console` and counted.
    pub(crate) async fn take(
        &mut self,
        batch: Vec<Item>,
        console: &Console,
    ) -> Result<(), ClientError> {
        for item in batch {
            match item {
                Item::Chunk { id, data } => self.add_chunk(id, data),
                Item::Scanned(n) => self.stats.bytes_scanned += n,
                Item::Object { attrs, chunks } => {
                    self.stats.inspected += 1;
                    self.ready.push(pb::NewObject {
                        attrs: Some(attrs),
                        chunk_ids: chunks.iter().map(|c| c.as_slice().to_vec()).collect(),
                    });
                }
                Item::Unchanged(n) => {
                    self.stats.inspected += n;
                    self.stats.unchanged += n;
                }
                // Sent only to a preview's scan.
                Item::Planned { .. } => {}
                Item::Problem(msg) => {
                    let reason = skip_reason(msg.id);
                    let status = if reason.is_some() {
                        ExitStatus::Skipped
                    } else {
                        ExitStatus::Warnings
                    };
                    console.report(&msg, status);
                    match reason {
                        Some(reason) => {
                            self.stats.inspected += 1;
                            self.stats.count_skip(reason);
                        }
                        // Stored with a warning, or about the whole backup.
                        None => self.stats.warnings += 1,
                    }
                }
            }
            if self.needs_flush() {
                self.flush(Vec::new()).await?;
            }
        }
        Ok(())
    }
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

    /// Waits for the oldest upload in progress and adds up what it did.
    async fn settle_oldest_upload(&mut self) -> Result<(), ClientError> {
        if let Some(handle) = self.uploading.pop_front() {
            let done = joined(handle, "upload").await?;
            self.sent_ids.pop_front();
            // The vault's sync after the backup brings what the mirror
            // missed, and reports there if the vault cannot take it.
            if let Some(cause) = done.mirror_failure
                && !self.mirror_warned
            {
                self.mirror_warned = true;
                tracing::warn!(
                    "the local vault did not take this backup's data as it went: {cause}"
                );
            }
            self.stats.bytes_sent += done.bytes_sent;
            self.stats.bytes_deduplicated += done.bytes_deduplicated;
            self.show_progress();
        }
        Ok(())
    }

    /// Waits for the oldest commit in progress and adds up what it did.
    async fn settle_oldest_commit(&mut self) -> Result<(), ClientError> {
        if let Some(handle) = self.committing.pop_front() {
            let done = match joined(handle, "commit").await {
                Ok(done) => done,
                Err(e) => {
                    // A commit stopped by a failed upload: report the upload.
                    while !self.uploading.is_empty() {
                        self.settle_oldest_upload().await?;
                    }
                    return Err(e);
                }
            };
            self.stats.backed_up += done.backed_up;
            self.stats.deactivated += done.deactivated;
            if done.expires_ns.is_some() {
                self.stats.archive_expires_ns = done.expires_ns;
            }
        }
        Ok(())
    }

    /// Hands the gathered batch to a new upload and a commit that follows it,
    /// first waiting for a data slot (and for the oldest upload or commit
    /// when [`MAX_UPLOADS_OPEN`] or [`MAX_COMMITS_WAITING`] are open).
    async fn flush(&mut self, deactivate: Vec<String>) -> Result<(), ClientError> {
        while self.uploading.len() >= MAX_UPLOADS_OPEN {
            self.settle_oldest_upload().await?;
        }
        while self.committing.len() >= MAX_COMMITS_WAITING {
            self.settle_oldest_commit().await?;
        }
        // An upload that fails gives its permit back too, so this wait ends;
        // the failure is reported when that upload is settled.
        let data_slot = self
            .data_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Usage("the upload slots were closed".into()))?;
        let pending = std::mem::take(&mut self.pending);
        self.sent_ids
            .push_back(std::mem::take(&mut self.pending_ids));
        self.pending_bytes = 0;
        let (own_done, own_upload) = oneshot::channel();
        self.uploading.push_back(tokio::spawn(upload_batch(
            self.session.clone(),
            pending,
            data_slot,
            own_done,
        )));
        let (uploaded, uploads_done) = oneshot::channel();
        let order = UploadOrder {
            own: own_upload,
            earlier: self.uploads_done.replace(uploads_done),
            uploaded,
        };
        let commit = commit_batch(
            self.session.clone(),
            self.filespace.clone(),
            self.target.clone(),
            std::mem::take(&mut self.ready),
            deactivate,
            order,
        );
        self.committing.push_back(tokio::spawn(commit));
        Ok(())
    }

    /// Flushes what is left and waits for every upload, then every commit.
    /// Uploads are settled first so that a failed upload is reported as
    /// itself, not as the commit it stopped.
    pub(crate) async fn finish(&mut self, deactivate: Vec<String>) -> Result<(), ClientError> {
        self.flush(deactivate).await?;
        while !self.uploading.is_empty() {
            self.settle_oldest_upload().await?;
        }
        while !self.committing.is_empty() {
            self.settle_oldest_commit().await?;
        }
        Ok(())
    }
}

/// The result of a finished upload or commit task.
async fn joined<T>(
    handle: JoinHandle<Result<T, ClientError>>,
    what: &str,
) -> Result<T, ClientError> {
    handle
        .await
        .map_err(|e| ClientError::task_failed(&format!("{what} task"), e))?
}

/// Orders a commit after the uploads: an object may reference chunks an
/// earlier batch uploads (a file cut across two batches, or a chunk seen in
/// both), so a batch commits only once its own upload and every earlier one
/// are done.
#[derive(Debug)]
struct UploadOrder {
    /// Fires when this batch's own upload is done; dropped if it failed.
    own: oneshot::Receiver<()>,
    /// Fires when all earlier uploads are done; `None` for the first batch.
    earlier: Option<oneshot::Receiver<()>>,
    /// Fired by this commit once its own upload and all earlier ones are done.
    uploaded: oneshot::Sender<()>,
}

/// Uploads what the server lacks of `pending`; gives `data_slot` back once
/// the data is handed to the transport and fires `done` once the server
/// stores all of it. The mirror's copy may finish later; the task ends
/// when both are done.
async fn upload_batch(
    session: Session,
    pending: Vec<(ChunkId, Vec<u8>)>,
    data_slot: OwnedSemaphorePermit,
    done: oneshot::Sender<()>,
) -> Result<UploadStats, ClientError> {
    let mut out = UploadStats::default();
    let ids: Vec<ChunkId> = pending.iter().map(|(id, _)| *id).collect();
    // The mirror (the local vault) is best effort: what it cannot take now,
    // its sync after the backup brings. Both are asked at once.
    let mirror = Mirror::of(&session);
    let mirror_check = async {
        match &mirror {
            Some(m) => Some(m.missing(ids.clone()).await),
            None => None,
        }
    };
    let (missing, mirror_missing) = tokio::join!(missing_chunks(&session, &ids), mirror_check);
    let missing = missing?;
    let mirror_missing = match mirror_missing {
        Some(Ok(set)) => set,
        Some(Err(e)) => {
            out.mirror_failure = Some(e);
            HashSet::new()
        }
        None => HashSet::new(),
    };
    let (to_send, known): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .partition(|(id, _)| missing.contains(id) || mirror_missing.contains(id));
    out.bytes_deduplicated = known
        .iter()
        .map(|(_, d)| d.len() as u64)
        .chain(
            to_send
                .iter()
                .filter(|(id, _)| !missing.contains(id))
                .map(|(_, d)| d.len() as u64),
        )
        .sum();
    drop(known);
    if to_send.is_empty() {
        drop(data_slot);
        let _ = done.send(());
    } else {
        // Compressed messages go out as they are made: the server verifies
        // one while the next is compressed. Each chunk is compressed once,
        // for the server and the mirror alike.
        let (tx, rx) = mpsc::channel(2);
        let (mirror_outlet, mirror_writer) = match mirror.as_ref().map(Mirror::writer) {
            Some((outlet, writer)) => (Some(outlet), Some(writer)),
            None => (None, None),
        };
        let compressor = tokio::task::spawn_blocking(move || {
            let outlets = Outlets {
                server: &tx,
                server_wants: &missing,
                mirror: mirror_outlet,
                mirror_wants: &mirror_missing,
            };
            let sent = compress_into_messages(to_send, outlets);
            // Every message is queued for the transport and every raw chunk
            // freed: the next batch may gather its data.
            drop(data_slot);
            sent
        });
        let uploaded = session
            .client()
            .upload_chunks(session.request(ReceiverStream::new(rx)))
            .await;
        let to_server = async {
            let compressed = compressor
                .await
                .map_err(|e| ClientError::task_failed("compression task", e))?;
            // A compression error ends the stream early; report it, not the upload.
            let sent = compressed?;
            uploaded.map_err(|s| ClientError::server("uploading data", s))?;
            Ok::<_, ClientError>(sent)
        }
        .await;
        // The server has it all: this batch's commit need not wait for the
        // vault to finish storing its copy.
        if to_server.is_ok() {
            let _ = done.send(());
        }
        // The writer is waited for on every path, so nothing writes to the
        // vault once this task is over (the sync after the backup reclaims
        // space there), but a store the vault did not answer in time: that
        // one is given up and left to finish or die with the process.
        if let Some(writer) = mirror_writer {
            let mirrored = writer
                .await
                .map_err(|e| format!("the vault's writer stopped: {e}"))
                .and_then(|stored| stored);
            if let Err(cause) = mirrored {
                out.mirror_failure.get_or_insert(cause);
            }
        }
        out.bytes_sent = to_server?;
    }
    Ok(out)
}

/// Of `ids`, those `session` does not store for the node.
pub(crate) async fn missing_chunks(
    session: &Session,
    ids: &[ChunkId],
) -> Result<HashSet<ChunkId>, ClientError> {
    let mut client = session.client();
    let mut missing = HashSet::new();
    for batch in ids.chunks(FIND_BATCH) {
        let raw = batch.iter().map(|id| id.as_slice().to_vec()).collect();
        let reply = client
            .find_missing_chunks(session.request(pb::FindMissingChunksRequest { chunk_ids: raw }))
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
    Ok(missing)
}

/// Where compressed chunks go: the server's upload stream, and the
/// mirror's store when there is one, each with the chunks it lacks.
struct Outlets<'a> {
    server: &'a mpsc::Sender<pb::UploadChunksRequest>,
    server_wants: &'a HashSet<ChunkId>,
    mirror: Option<MirrorOutlet>,
    mirror_wants: &'a HashSet<ChunkId>,
}

/// Commits `ready` and the deactivations once this batch's upload and every
/// earlier one are done.
async fn commit_batch(
    session: Session,
    filespace: String,
    target: Target,
    mut ready: Vec<pb::NewObject>,
    mut deactivate: Vec<String>,
    order: UploadOrder,
) -> Result<CommitStats, ClientError> {
    // A dropped sender means an upload failed; its own error is reported
    // first, as uploads are settled before commits.
    let upload_failed = |_| ClientError::Server {
        operation: "uploading data",
        message: "an upload in this backup failed".into(),
    };
    order.own.await.map_err(upload_failed)?;
    if let Some(earlier) = order.earlier {
        earlier.await.map_err(upload_failed)?;
    }
    let _ = order.uploaded.send(());
    let mut out = CommitStats::default();
    let mut client = session.client();
    while !ready.is_empty() || !deactivate.is_empty() {
        // At most COMMIT_BATCH objects and COMMIT_BYTES of them (extended
        // attributes make some objects large).
        let mut bytes = 0;
        let take = ready
            .iter()
            .take(COMMIT_BATCH)
            .take_while(|o| {
                bytes += o.encoded_len();
                bytes <= COMMIT_BYTES
            })
            .count()
            .max(1)
            .min(ready.len());
        let objects: Vec<_> = ready.drain(..take).collect();
        let mut bytes = 0;
        let take_gone = deactivate
            .iter()
            .take(COMMIT_BATCH)
            .take_while(|p| {
                bytes += p.len() + 4;
                bytes <= COMMIT_BYTES
            })
            .count()
            .max(1)
            .min(deactivate.len());
        let gone: Vec<_> = deactivate.drain(..take_gone).collect();
        if let Target::Archive { description } = &target {
            let reply = client
                .commit_archive(session.request(pb::CommitArchiveRequest {
                    filespace: filespace.clone(),
                    objects,
                    description: description.clone(),
                }))
                .await
                .map_err(|s| ClientError::server("committing the archive", s))?
                .into_inner();
            out.backed_up = out.backed_up.saturating_add(reply.stored);
            out.expires_ns = Some(reply.expires_ns);
            continue;
        }
        let reply = session
            .commit_objects(
                pb::CommitObjectsRequest {
                    filespace: filespace.clone(),
                    objects,
                    deactivate: gone,
                },
                "committing the backup",
            )
            .await?;
        out.backed_up = out.backed_up.saturating_add(reply.stored);
        out.deactivated = out.deactivated.saturating_add(reply.deactivated);
    }
    Ok(out)
}

/// Compresses `chunks` into upload messages of about
/// [`tandem_proto::UPLOAD_MESSAGE_BYTES`] for each outlet that wants them,
/// sending each message as soon as it is full; returns the compressed bytes
/// sent to the server. Stops early if the server's upload has gone; a
/// mirror that has gone is left out from then on.
fn compress_into_messages(
    chunks: Vec<(ChunkId, Vec<u8>)>,
    outlets: Outlets<'_>,
) -> Result<u64, ClientError> {
    let mut sent = 0u64;
    let mut server = UploadPacker::default();
    let mut mirror = outlets.mirror;
    for (id, raw) in chunks {
        let data: prost::bytes::Bytes = compress_chunk(&raw)
            .map_err(|e| ClientError::Io {
                path: PathBuf::from("<compression>"),
                source: e,
            })?
            .into();
        if let Some(outlet) = mirror.as_mut()
            && outlets.mirror_wants.contains(&id)
        {
            outlet.push(StoredChunk {
                id,
                data: data.clone(),
                raw_len: raw.len() as u64,
            });
        }
        if outlets.server_wants.contains(&id) {
            let size = data.len() as u64;
            let chunk = pb::Chunk {
                id: id.as_slice().to_vec(),
                data,
                raw_len: raw.len() as u64,
            };
            if server
                .push(chunk)
                .is_some_and(|message| outlets.server.blocking_send(message).is_err())
            {
                return Ok(sent);
            }
            sent += size;
        }
    }
    if let Some(last) = server.finish() {
        let _ = outlets.server.blocking_send(last);
    }
    if let Some(outlet) = mirror {
        outlet.finish();
    }
    Ok(sent)
}

/// Active versions of the server below `root` (in `filespace`), by path.
/// A path named for backup, absolute, with its stored (encoded) form; or
/// `None`, reported (TDM1011W), when there is nothing there.
///
/// # Errors
/// The working directory cannot be read to make it absolute.
pub(crate) fn local_root(
    path: &std::path::Path,
    console: &Console,
) -> Result<Option<(PathBuf, String)>, ClientError> {
    let root = paths::absolute(path).map_err(|e| ClientError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let root_text = crate::names::encode(root.as_os_str());
    if std::fs::symlink_metadata(&root).is_err() {
        console.report(&Msg::not_found(&root_text), ExitStatus::Skipped);
        return Ok(None);
    }
    Ok(Some((root, root_text)))
}

/// The server's active versions below `root` for an incremental; none
/// for a selective backup, which sends everything.
///
/// # Errors
/// Server and connection failures.
pub(crate) async fn inventory_for(
    session: &Session,
    mode: Mode,
    filespace: &str,
    root_text: &str,
) -> Result<Option<Inventory>, ClientError> {
    Ok(match mode {
        Mode::Incremental => Some(fetch_inventory(session, filespace, root_text).await?),
        Mode::Selective => None,
    })
}

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
pub(crate) async fn mark(
    session: &Session,
    filespace: &str,
    completed: bool,
) -> Result<i64, ClientError> {
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
pub(crate) fn note_backup(
    session: &Session,
    options: &ClientOptions,
    filespace: &str,
    at_ns: i64,
    console: &Console,
) {
    let result = NodeReplicationTable::open(&options.state_dir())
        .and_then(|t| t.record(session.info.guid, &session.info.node, filespace, at_ns));
    if let Err(e) = result {
        console.report(&Msg::nrtable_failed(e), ExitStatus::Warnings);
    }
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
    rules: &rules::Rules,
    console: &Console,
) -> Result<BackupStats, ClientError> {
    send(
        session,
        options,
        paths,
        mode,
        &Target::Backup,
        rules,
        console,
    )
    .await
}

/// Archives `paths` (files or trees, everything in them, as a selective
/// backup reads them) as copies described by `description` (TSM ARCHIVE).
/// No backup version changes, and no backup is recorded.
///
/// # Errors
/// Server and connection failures; problems with single objects are reported
/// on `console` and counted in `failed` instead.
pub async fn archive(
    session: &Session,
    options: &ClientOptions,
    paths: &[PathBuf],
    description: String,
    rules: &rules::Rules,
    console: &Console,
) -> Result<BackupStats, ClientError> {
    let target = Target::Archive { description };
    send(
        session,
        options,
        paths,
        Mode::Selective,
        &target,
        rules,
        console,
    )
    .await
}

/// Scans `paths` and commits what the scan sends to `target`.
async fn send(
    session: &Session,
    options: &ClientOptions,
    paths: &[PathBuf],
    mode: Mode,
    target: &Target,
    rules: &rules::Rules,
    console: &Console,
) -> Result<BackupStats, ClientError> {
    let backup = *target == Target::Backup;
    let started = Instant::now();
    let mut stats = BackupStats::default();
    let progress = console.start_progress();
    for path in paths {
        let Some((root, root_text)) = local_root(path, console)? else {
            stats.count_skip("not found");
            continue;
        };
        let filespace = paths::filespace_of(&root);
        if backup {
            mark(session, &filespace, false).await?;
        }
        let inventory = inventory_for(session, mode, &filespace, &root_text).await?;
        let plan = ScanPlan {
            root,
            rules: rules.clone(),
            inventory,
            changing_retries: options.changing_retries.min(MAX_CHANGING_RETRIES),
            serialization: options.serialization,
            preview: false,
        };
        // Two batches only: each may hold 1 MiB of small chunks and a 4 MiB one,
        // and memory must stay at restic's level (four raised peak RSS 10 MiB).
        let (tx, mut rx) = mpsc::channel::<Vec<Item>>(2);
        let scanner = tokio::task::spawn_blocking(move || scan::scan(plan, &tx));
        let mut uploader = Uploader::new(
            session,
            filespace.clone(),
            target,
            &mut stats,
            &progress,
            started,
        );
        while let Some(batch) = rx.recv().await {
            uploader.take(batch, console).await?;
        }
        let deactivate = scanner
            .await
            .map_err(|e| ClientError::task_failed("scanner", e))?;
        uploader.finish(deactivate).await?;
        if backup {
            let acknowledged = mark(session, &filespace, true).await?;
            note_backup(session, options, &filespace, acknowledged, console);
        }
    }
    console.end_progress();
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
