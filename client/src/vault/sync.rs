//! Synchronisation between the vault and the server, in either direction,
//! by the replication engine (`tandem-replication`): its plan says which
//! versions and chunks one side lacks, and only those move.
//!
//! Both sides are node sessions speaking the `Backup` API (the vault's is
//! in memory), so the engine's [`Source`] and [`Target`] are implemented
//! once here over a [`Session`]. Where the target is the vault, opened in
//! this process, its chunk lookups and version stores go straight to its
//! store ([`crate::vault::VaultStore`]) instead: no message encoding, one
//! transaction per batch.
//!
//! The two directions:
//! - **push** (vault → server): the versions this client stored in the
//!   vault while no server took backups, under their original ids and backup
//!   times, and its deactivations there meanwhile; nothing else the vault
//!   holds, unless a pull from another server brought it ([`Vouched`]). A
//!   push never deletes on the server and never makes a version active
//!   there again; versions the server dropped (expiration, `delete backup`)
//!   are not sent back, because they came from it.
//! - **pull** (server → vault): the vault becomes a copy of the node's
//!   versions on the server, deletions included (active versions the server
//!   lacks are kept). A pull runs only when the vault holds nothing of its
//!   own the server lacks (it took no writes alone, or a push sent them),
//!   so it never deletes a version the server has not received yet.
//!
//! Archive copies are not synchronised: they stay where they were made.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use tandem_proto::pb;
use tandem_proto::{ChunkId, ObjectId, ServerGuid, StoredChunk, UploadPacker};
use tandem_replication::{
    InventoryEntry, ObjectState, ReplicationError, ReplicationRule, RunReport, Source, Target,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ClientError;
use crate::logon::session::Session;

/// What a failed call to `session` becomes: a failure of the local vault
/// (whose in-memory service reports errors as a server does) is named as
/// the vault's, with its directory; a server's as the server's.
fn refused(session: &Session, what: &'static str) -> impl FnOnce(tonic::Status) -> ClientError {
    let vault_dir = session
        .is_vault()
        .then(|| std::path::PathBuf::from(&session.info.address));
    move |status| match vault_dir {
        Some(dir) => {
            let message = status.message();
            let cause = message
                .strip_prefix("internal server error: ")
                .unwrap_or(message);
            ClientError::Vault {
                dir,
                cause: format!("{what}: {cause}"),
            }
        }
        None => ClientError::server(what, status),
    }
}

/// Every version of the node a session holds (active and inactive, with
/// chunk ids), by object id.
///
/// # Errors
/// Session failures.
pub async fn list_versions(
    session: &Session,
) -> Result<HashMap<ObjectId, pb::ObjectVersion>, ClientError> {
    Ok(list_versions_with_token(session).await?.1)
}

/// The session's change token for the node ([`crate::vault::matched`]; 0
/// when unknown), read before the listing, and [`list_versions`].
///
/// # Errors
/// Session failures.
pub async fn list_versions_with_token(
    session: &Session,
) -> Result<(i64, HashMap<ObjectId, pb::ObjectVersion>), ClientError> {
    let (token, filespaces) = change_token_and_filespaces(session).await?;
    let what = "listing the node's versions";
    let mut client = session.client();
    let mut out = HashMap::new();
    for fs in filespaces {
        let mut stream = client
            .query_objects(session.request(pb::QueryObjectsRequest {
                filespace: fs.name.clone(),
                path_prefix: fs.name.clone(),
                include_inactive: true,
                with_chunks: true,
                ..Default::default()
            }))
            .await
            .map_err(refused(session, what))?
            .into_inner();
        while let Some(batch) = stream.next().await {
            for v in batch.map_err(refused(session, what))?.versions {
                let id = object_id(&v.object_id)?;
                out.insert(id, v);
            }
        }
    }
    Ok((token, out))
}

/// The session's change token for the node (0: unknown) and its
/// filespaces, in one call: the server reads the token first.
///
/// # Errors
/// Session failures.
pub async fn change_token_and_filespaces(
    session: &Session,
) -> Result<(i64, Vec<pb::Filespace>), ClientError> {
    let reply = session
        .client()
        .query_filespaces(session.request(pb::QueryFilespacesRequest {}))
        .await
        .map_err(refused(session, "listing the node's filespaces"))?
        .into_inner();
    Ok((reply.change_token, reply.filespaces))
}

fn object_id(raw: &[u8]) -> Result<ObjectId, ClientError> {
    ObjectId::from_slice(raw).map_err(|e| ClientError::Server {
        operation: "listing the node's versions",
        message: format!("malformed object id: {e}"),
    })
}

fn chunk_id(raw: &[u8], operation: &'static str) -> Result<ChunkId, ClientError> {
    ChunkId::from_slice(raw).map_err(|e| ClientError::Server {
        operation,
        message: format!("malformed chunk id: {e}"),
    })
}

fn entry_of(id: ObjectId, v: &pb::ObjectVersion) -> Result<InventoryEntry, ClientError> {
    Ok(InventoryEntry {
        object_id: id,
        active: v.active,
        deactivated_ns: v.deactivated_ns,
        chunks: v
            .chunk_ids
            .iter()
            .map(|c| chunk_id(c, "listing the node's versions"))
            .collect::<Result<_, _>>()?,
    })
}

fn state_of(id: ObjectId, v: &pb::ObjectVersion) -> ObjectState {
    ObjectState {
        object_id: id,
        active: v.active,
        deactivated_ns: v.deactivated_ns,
    }
}

/// The side data comes from: a listed set of versions on a session.
struct Listed<'a> {
    session: &'a Session,
    entries: Vec<InventoryEntry>,
    records: HashMap<ObjectId, pb::ObjectVersion>,
}

impl<'a> Listed<'a> {
    /// The versions `entries` of `session`, whose records are `records`,
    /// put in the order a catalog lists them: filespace, directory (through
    /// the last `/`), name, backup time. The plan sends versions in its
    /// source's order, and a hash map's order put consecutive versions in
    /// unrelated directories, so the receiving catalog looked each one's
    /// directory up again and wrote its indexes at scattered places. The
    /// keys borrow from `records`: nothing is copied. Entries without a
    /// record (in a pull, active versions the vault keeps though the server
    /// lacks them, listed only so that they are neither sent nor deleted)
    /// come first.
    fn new(
        session: &'a Session,
        mut entries: Vec<InventoryEntry>,
        records: HashMap<ObjectId, pb::ObjectVersion>,
    ) -> Self {
        entries.sort_by_cached_key(|e| {
            records.get(&e.object_id).map(|v| {
                let path = v.attrs.as_ref().map_or("", |a| a.path.as_str());
                let (dir, name) = tandem_proto::names::split_path(path);
                (v.filespace.as_str(), dir, name, v.backup_time_ns)
            })
        });
        Listed {
            session,
            entries,
            records,
        }
    }
}

impl Source for Listed<'_> {
    type Object = pb::ObjectVersion;
    type Error = ClientError;

    async fn inventory(&self) -> Result<Vec<InventoryEntry>, ClientError> {
        Ok(self.entries.clone())
    }

    async fn read_chunks(&self, ids: &[ChunkId]) -> Result<Vec<StoredChunk>, ClientError> {
        let what = "reading chunks to synchronise";
        let mut stream = self
            .session
            .client()
            .read_chunks(self.session.request(pb::ReadChunksRequest {
                chunk_ids: ids.iter().map(|c| c.as_slice().to_vec()).collect(),
            }))
            .await
            .map_err(refused(self.session, what))?
            .into_inner();
        // Exactly one answer per id asked for, in order: whatever else the
        // server sends is not read, so an answer that never ends cannot
        // fill the client's memory.
        let mut out = Vec::with_capacity(ids.len());
        for expected in ids {
            let chunk = match stream.next().await {
                Some(item) => item.map_err(refused(self.session, what))?.chunk,
                None => None,
            };
            let Some(chunk) = chunk else {
                return Err(ClientError::Server {
                    operation: what,
                    message: format!(
                        "asked for {} chunks, got {} before chunk {expected} was missing",
                        ids.len(),
                        out.len()
                    ),
                });
            };
            let id = chunk_id(&chunk.id, what)?;
            if id != *expected {
                return Err(ClientError::Server {
                    operation: what,
                    message: format!("sent chunk {id} where {expected} was asked for"),
                });
            }
            out.push(StoredChunk {
                id,
                data: chunk.data,
                raw_len: chunk.raw_len,
            });
        }
        Ok(out)
    }

    async fn objects(&self, ids: &[ObjectId]) -> Result<Vec<pb::ObjectVersion>, ClientError> {
        ids.iter()
            .map(|id| {
                self.records.get(id).cloned().ok_or_else(|| {
                    ClientError::Internal(format!("version {id} was planned but not listed"))
                })
            })
            .collect()
    }
}

/// Which way a sync runs: what the target may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Into the server: no deletions.
    Push,
    /// Into the vault: an exact copy, deletions included.
    Pull,
}

/// The side data goes to: a node session, with what it held at the start.
struct NodeTarget<'a> {
    session: &'a Session,
    held: Vec<ObjectState>,
    direction: Direction,
    /// The vault directory whose waiting writers stop this sync.
    yield_to: Option<&'a Path>,
    /// A pull into a vault holding no active version the server lacks:
    /// versions take the server's states as they are.
    exact_copy: bool,
}

impl NodeTarget<'_> {
    /// A failure of the vault's store, reached directly (not a server's).
    fn vault_failed(&self, cause: String) -> ClientError {
        ClientError::Vault {
            dir: std::path::PathBuf::from(&self.session.info.address),
            cause,
        }
    }

    /// Before each batch: stops when a command waits to write to the vault.
    fn go_on(&self) -> Result<(), ClientError> {
        match self.yield_to {
            Some(dir) if super::waiting::asked(dir) => {
                Err(ClientError::SyncInterrupted(dir.to_path_buf()))
            }
            _ => Ok(()),
        }
    }
}

impl Target<pb::ObjectVersion> for NodeTarget<'_> {
    type Error = ClientError;

    async fn inventory(&self) -> Result<Vec<ObjectState>, ClientError> {
        Ok(self.held.clone())
    }

    fn object_batch(&self) -> usize {
        match self.direction {
            // The vault serves only this process: one transaction of
            // the most a call may carry (stored directly, see `put_objects`).
            Direction::Pull => tandem_proto::MAX_OBJECTS_PER_CALL,
            Direction::Push => tandem_replication::DEFAULT_OBJECT_BATCH,
        }
    }

    async fn missing_chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, ClientError> {
        let what = "checking stored chunks";
        if let Some(store) = self.session.vault_store() {
            // The vault in this process: asked directly, in the plan's order.
            let asked = ids.to_vec();
            let missing = store
                .bounded("looking up chunks for a sync", move |store| {
                    store
                        .missing_chunks(&asked)
                        .map(|set| asked.into_iter().filter(|c| set.contains(c)).collect())
                })
                .await;
            return missing.map_err(|cause| self.vault_failed(cause));
        }
        let reply = self
            .session
            .client()
            .find_missing_chunks(self.session.request(pb::FindMissingChunksRequest {
                chunk_ids: ids.iter().map(|c| c.as_slice().to_vec()).collect(),
            }))
            .await
            .map_err(refused(self.session, what))?
            .into_inner();
        reply.missing.iter().map(|c| chunk_id(c, what)).collect()
    }

    async fn put_chunks(&self, chunks: Vec<StoredChunk>) -> Result<(), ClientError> {
        self.go_on()?;
        let (tx, rx) = mpsc::channel(4);
        let feed = tokio::spawn(async move {
            let mut packer = UploadPacker::default();
            for c in chunks {
                let chunk = pb::Chunk {
                    id: c.id.as_slice().to_vec(),
                    data: c.data,
                    raw_len: c.raw_len,
                };
                if let Some(full) = packer.push(chunk)
                    && tx.send(full).await.is_err()
                {
                    return;
                }
            }
            if let Some(last) = packer.finish() {
                let _ = tx.send(last).await;
            }
        });
        let sent = self
            .session
            .client()
            .upload_chunks(self.session.request(ReceiverStream::new(rx)))
            .await;
        feed.await
            .map_err(|e| ClientError::task_failed("sync upload task", e))?;
        sent.map_err(refused(self.session, "storing synchronised chunks"))?;
        Ok(())
    }

    async fn update_states(&self, states: &[ObjectState]) -> Result<u64, ClientError> {
        self.go_on()?;
        // Only deactivations: a version made active again would have to
        // deactivate a newer one, which no sync may decide.
        let deactivations: Vec<_> = states
            .iter()
            .filter(|s| !s.active && s.deactivated_ns > 0)
            .map(|s| pb::VaultDeactivation {
                object_id: s.object_id.0.to_vec(),
                deactivated_ns: s.deactivated_ns,
            })
            .collect();
        let mut changed = 0;
        for batch in deactivations.chunks(tandem_proto::MAX_OBJECTS_PER_CALL) {
            changed += self
                .session
                .client()
                .deactivate_vault_versions(self.session.request(
                    pb::DeactivateVaultVersionsRequest {
                        deactivations: batch.to_vec(),
                    },
                ))
                .await
                .map_err(refused(self.session, "synchronising version states"))?
                .into_inner()
                .deactivated;
        }
        Ok(changed)
    }

    async fn put_objects(&self, objects: Vec<pb::ObjectVersion>) -> Result<u64, ClientError> {
        self.go_on()?;
        if let Some(store) = self.session.vault_store() {
            // The vault in this process: no message encoding, one commit.
            let exact = self.exact_copy;
            let stored = store
                .bounded("storing synchronised versions", move |store| {
                    store.store_pulled_versions(objects, exact)
                })
                .await;
            return stored.map_err(|cause| self.vault_failed(cause));
        }
        let mut stored = 0;
        for batch in put_batches(objects) {
            stored += self
                .session
                .client()
                .put_vault_versions(
                    self.session
                        .request(pb::PutVaultVersionsRequest { versions: batch }),
                )
                .await
                .map_err(refused(self.session, "storing synchronised versions"))?
                .into_inner()
                .stored;
        }
        Ok(stored)
    }

    async fn delete_objects(&self, ids: &[ObjectId]) -> Result<u64, ClientError> {
        self.go_on()?;
        if self.direction == Direction::Push {
            // The server keeps what the vault lacks (see the module doc).
            return Ok(0);
        }
        let mut deleted = 0;
        for batch in ids.chunks(tandem_proto::MAX_OBJECTS_PER_CALL) {
            deleted += self
                .session
                .client()
                .delete_versions(self.session.request(pb::DeleteVersionsRequest {
                    object_ids: batch.iter().map(|id| id.0.to_vec()).collect(),
                }))
                .await
                .map_err(refused(
                    self.session,
                    "removing versions the server no longer has",
                ))?
                .into_inner()
                .deleted;
        }
        Ok(deleted)
    }
}

/// Encoded bytes of versions per `PutVaultVersions` call: an eighth of
/// the message limit, whatever the extended attributes weigh.
const PUT_BATCH_BYTES: usize = tandem_proto::MAX_MESSAGE_BYTES / 8;

/// Splits `objects` into `PutVaultVersions` calls of at most
/// [`PUT_BATCH_BYTES`] and [`tandem_proto::MAX_OBJECTS_PER_CALL`] versions, so a batch of
/// versions with large extended attributes stays inside the message limit.
fn put_batches(objects: Vec<pb::ObjectVersion>) -> Vec<Vec<pb::ObjectVersion>> {
    use prost::Message;
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for object in objects {
        let size = object.encoded_len();
        if !batch.is_empty()
            && (bytes + size > PUT_BATCH_BYTES || batch.len() == tandem_proto::MAX_OBJECTS_PER_CALL)
        {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(object);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// What one direction of a sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    /// Versions stored on the receiving side.
    pub versions: u64,
    /// Versions made inactive there.
    pub deactivated: u64,
    /// Versions removed there (pull only).
    pub deleted: u64,
    /// Chunks sent, and their stored bytes.
    pub chunks: u64,
    /// Stored bytes sent.
    pub bytes: u64,
    /// Versions the vault holds and the server lacks that this client
    /// cannot vouch for (see [`Vouched`]): not sent (push), kept (pull).
    pub unvouched: u64,
}

impl From<RunReport> for SyncReport {
    fn from(r: RunReport) -> Self {
        SyncReport {
            versions: r.objects_sent,
            deactivated: r.states_updated,
            deleted: r.objects_deleted,
            chunks: r.chunks_sent,
            bytes: r.bytes_sent,
            unvouched: 0,
        }
    }
}

/// The vault's versions this client can vouch for (see [`super::own`]):
/// those it wrote there itself, and those the last pull brought, each as
/// it was then.
#[derive(Debug, Clone, Default)]
pub struct Vouched {
    /// What this client wrote to the vault since the last complete pull.
    pub own: super::own::Ledger,
    /// The last complete pull, when one is recorded.
    pub pulled: Option<super::pulled::Record>,
}

impl Vouched {
    /// Whether a push to `server` may have anything to send.
    #[must_use]
    pub fn may_push(&self, server: ServerGuid) -> bool {
        !self.own.is_empty() || self.pulled.as_ref().is_none_or(|p| p.server != server)
    }

    /// What these records vouch for in one listing of the vault.
    #[must_use]
    pub fn judge(&self, on_vault: &HashMap<ObjectId, pb::ObjectVersion>) -> Judged<'_> {
        Judged {
            vouched: self,
            ours: super::own::stored_by_us(&self.own, on_vault),
        }
    }
}

/// [`Vouched`] applied to one listing of the vault.
#[derive(Debug)]
pub struct Judged<'a> {
    vouched: &'a Vouched,
    /// The versions this client stored ([`super::own::stored_by_us`]).
    ours: HashSet<ObjectId>,
}

impl Judged<'_> {
    fn pulled_has(
        &self,
        id: &ObjectId,
        v: &pb::ObjectVersion,
        other_than: Option<ServerGuid>,
    ) -> bool {
        self.vouched.pulled.as_ref().is_some_and(|p| {
            other_than.is_none_or(|server| p.server != server)
                && p.has(id, &super::own::pulled_digest(v))
        })
    }

    /// Whether a push to `server`, which lacks version `id`, may send it
    /// whole: this client stored it, or a pull from another server brought
    /// it, unchanged.
    #[must_use]
    pub fn content_for(&self, id: &ObjectId, v: &pb::ObjectVersion, server: ServerGuid) -> bool {
        self.ours.contains(id) || self.pulled_has(id, v, Some(server))
    }

    /// Whether a push may give the server's version `id` (`on_server`) the
    /// vault's state (`v`): this client made it inactive, and the vault's
    /// version is the server's.
    #[must_use]
    pub fn state_for(
        &self,
        id: &ObjectId,
        v: &pb::ObjectVersion,
        on_server: &pb::ObjectVersion,
    ) -> bool {
        self.vouched.own.deactivated.contains(id)
            && super::own::digest_of(v) == super::own::digest_of(on_server)
    }

    /// Whether this client stored version `id` in the vault.
    #[must_use]
    pub fn is_ours(&self, id: &ObjectId) -> bool {
        self.ours.contains(id)
    }

    /// Whether the vault may hold version `id` as this node's: this client
    /// stored it, or a pull brought it, unchanged.
    #[must_use]
    pub fn holds(&self, id: &ObjectId, v: &pb::ObjectVersion) -> bool {
        self.ours.contains(id) || self.pulled_has(id, v, None)
    }
}

/// Sends the server what the vault holds and the server lacks, and the
/// vault's deactivations of versions both hold, where this client can vouch
/// for them (`vouched`): it stored or made them inactive itself, or a pull
/// from another server brought them. Versions the server lacks that nobody
/// vouches for are not sent: [`SyncReport::unvouched`] counts them.
///
/// # Errors
/// Failures of either session; [`ClientError::SyncInterrupted`] when a
/// command waits to write to the vault (`yield_to`). What was committed
/// stays committed and a later push does not resend it.
pub async fn push(
    vault: &Session,
    server: &Session,
    vouched: &Vouched,
    yield_to: Option<&Path>,
) -> Result<SyncReport, ClientError> {
    let on_vault = list_versions(vault).await?;
    if on_vault.is_empty() {
        // A new or wiped vault: nothing to send, and no server listing.
        return Ok(SyncReport::default());
    }
    let on_server = list_versions(server).await?;
    let held: Vec<ObjectState> = on_server.iter().map(|(id, v)| state_of(*id, v)).collect();
    let mut entries = Vec::new();
    let mut unvouched = 0;
    let guid = server.info.guid;
    let judged = vouched.judge(&on_vault);
    for (id, v) in &on_vault {
        let vouched_for = match on_server.get(id) {
            Some(there) => judged.state_for(id, v, there),
            None => judged.content_for(id, v, guid),
        };
        if vouched_for {
            entries.push(entry_of(*id, v)?);
        } else if !on_server.contains_key(id) && !judged.holds(id, v) {
            unvouched += 1;
        }
    }
    let source = Listed::new(vault, entries, on_vault);
    let target = NodeTarget {
        session: server,
        held,
        direction: Direction::Push,
        yield_to,
        exact_copy: false,
    };
    let mut report = run(&source, &target).await?;
    report.unvouched = unvouched;
    Ok(report)
}

/// What a pull did and left.
#[derive(Debug, Clone, Default)]
pub struct Pulled {
    /// What moved.
    pub report: SyncReport,
    /// The versions the vault holds afterwards that it got from the server,
    /// or kept (below), with their digests: what the record of this pull
    /// vouches for.
    pub held: Vec<(ObjectId, super::own::Digest)>,
    /// Active versions the vault holds and the server no longer does, kept
    /// rather than deleted (deleted there by an operator, or lost by a
    /// server whose catalog was restored from an older copy).
    pub kept: u64,
    /// Versions the vault holds and the server lacks that this client
    /// cannot vouch for: left as they are, neither deleted (they may be this
    /// node's backups that its records lost) nor recorded as pulled.
    pub unvouched: u64,
}

/// Makes the vault a copy of the node's versions on the server
/// (`on_server`, as [`list_versions`] gave them): what the server has, in
/// its state; versions it dropped are dropped too, except
/// active ones, which the vault keeps (see [`Pulled::kept`]): an active
/// version leaves a server only by an explicit deletion (which a client
/// applies to its vault itself) or by the server losing it, and then the
/// vault's copy may be the last one. Versions the server lacks that this
/// client cannot vouch for (`vouched`) are left alone (see
/// [`Pulled::unvouched`]). `vouched.pulled`, when present, must be the
/// record written for this very listing (as `synchronise` writes it just
/// before): its digests of `on_server` are taken as they are.
///
/// # Errors
/// Failures of either session; [`ClientError::SyncInterrupted`] when a
/// command waits to write to the vault (`yield_to`).
pub async fn pull(
    server: &Session,
    on_server: HashMap<ObjectId, pb::ObjectVersion>,
    vault: &Session,
    vouched: &Vouched,
    yield_to: Option<&Path>,
) -> Result<Pulled, ClientError> {
    let on_vault = list_versions(vault).await?;
    let mut entries = on_server
        .iter()
        .map(|(id, v)| entry_of(*id, v))
        .collect::<Result<Vec<_>, _>>()?;
    // The record written before the pull has these digests already.
    let recorded = vouched.pulled.as_ref().map(|p| &p.ids);
    let mut held: Vec<_> = on_server
        .iter()
        .map(|(id, v)| {
            let digest = recorded
                .and_then(|r| r.get(id).copied())
                .unwrap_or_else(|| super::own::pulled_digest(v));
            // The precondition above, checked in debug builds (the tests).
            debug_assert_eq!(digest, super::own::pulled_digest(v), "stale pull record");
            (*id, digest)
        })
        .collect();
    let judged = vouched.judge(&on_vault);
    let mut kept = 0;
    let mut unvouched = 0;
    let superseded = superseded_on_server(&on_vault, &on_server);
    for (id, v) in &on_vault {
        if on_server.contains_key(id) {
            continue;
        }
        // Listed as if the server had it: the plan then neither sends nor
        // deletes it.
        if !judged.holds(id, v) {
            // Nobody vouches for it, and it may be a backup of this node
            // that its records lost (a restored state_dir, a crash): it
            // stays, counted, until the operator decides.
            entries.push(entry_of(*id, v)?);
            unvouched += 1;
        } else if v.active && !superseded.contains(id) {
            entries.push(entry_of(*id, v)?);
            held.push((*id, super::own::pulled_digest(v)));
            kept += 1;
        }
    }
    let source = Listed::new(server, entries, on_server);
    let target = NodeTarget {
        session: vault,
        held: on_vault.iter().map(|(id, v)| state_of(*id, v)).collect(),
        direction: Direction::Pull,
        yield_to,
        exact_copy: kept == 0 && unvouched == 0,
    };
    Ok(Pulled {
        report: run(&source, &target).await?,
        held,
        kept,
        unvouched,
    })
}

/// Active versions of the vault that the server no longer holds, where the
/// server's versions of the same path are all later: backups the vault
/// missed (it was unreachable, or refused) replaced them, and the server's
/// version limit, which trims the oldest first, then removed them. They
/// follow the server. A version the server lost (a catalog restored from an
/// older copy) leaves an earlier one there, and one an operator deleted
/// leaves no later one: those the vault keeps.
fn superseded_on_server(
    on_vault: &HashMap<ObjectId, pb::ObjectVersion>,
    on_server: &HashMap<ObjectId, pb::ObjectVersion>,
) -> HashSet<ObjectId> {
    fn path_of(v: &pb::ObjectVersion) -> (&str, &str) {
        let path = v.attrs.as_ref().map_or("", |a| a.path.as_str());
        (v.filespace.as_str(), path)
    }
    // The vault's versions in question, by path: few, usually none.
    let mut missing: HashMap<(&str, &str), Vec<(ObjectId, i64)>> = HashMap::new();
    for (id, v) in on_vault {
        if v.active && !on_server.contains_key(id) {
            missing
                .entry(path_of(v))
                .or_default()
                .push((*id, v.backup_time_ns));
        }
    }
    if missing.is_empty() {
        return HashSet::new();
    }
    // Per vault version: whether the server has a later one of its path,
    // and whether it has an earlier one.
    let mut seen: HashMap<ObjectId, (bool, bool)> = HashMap::new();
    for v in on_server.values() {
        for (id, at) in missing.get(&path_of(v)).into_iter().flatten() {
            let (later, earlier) = seen.entry(*id).or_default();
            *later |= v.backup_time_ns > *at;
            *earlier |= v.backup_time_ns < *at;
        }
    }
    seen.into_iter()
        .filter(|(_, (later, earlier))| *later && !*earlier)
        .map(|(id, _)| id)
        .collect()
}

async fn run(source: &Listed<'_>, target: &NodeTarget<'_>) -> Result<SyncReport, ClientError> {
    tandem_replication::replicate(source, target, ReplicationRule::AllData)
        .await
        .map(SyncReport::from)
        .map_err(|e| {
            // The sides fail with our own errors, which already say which
            // tier failed (and a stop for a waiting write is no failure).
            let (ReplicationError::Source(inner) | ReplicationError::Target(inner)) = e;
            match inner.downcast::<ClientError>() {
                Ok(ours) => *ours,
                Err(other) => ClientError::Server {
                    operation: "synchronising the vault",
                    message: other.to_string(),
                },
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_batches_stay_under_the_count_and_byte_limits_and_keep_every_version() {
        let small = |n: u8| pb::ObjectVersion {
            filespace: format!("/f{n}"),
            ..Default::default()
        };
        let batches = put_batches((0..25_000u32).map(|n| small((n % 200) as u8)).collect());
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 25_000);
        assert!(
            batches
                .iter()
                .all(|b| b.len() <= tandem_proto::MAX_OBJECTS_PER_CALL)
        );
        assert_eq!(batches.len(), 3);

        let heavy = pb::ObjectVersion {
            filespace: "/big".into(),
            chunk_ids: vec![vec![7u8; 32]; 200_000],
            ..Default::default()
        };
        let batches = put_batches(vec![heavy.clone(), heavy.clone(), heavy]);
        assert_eq!(batches.len(), 3, "each heavy version goes alone");
        assert!(put_batches(Vec::new()).is_empty());
    }

    #[test]
    fn only_a_version_the_server_replaced_later_counts_as_superseded() {
        let version = |path: &str, at: i64, active: bool| pb::ObjectVersion {
            filespace: "/data".into(),
            attrs: Some(pb::ObjectAttrs {
                path: path.into(),
                ..Default::default()
            }),
            backup_time_ns: at,
            active,
            ..Default::default()
        };
        let id = |n: u8| ObjectId::from_slice(&[n; 16]).unwrap();
        let on_vault = HashMap::from([
            (id(1), version("/data/replaced", 10, true)),
            (id(2), version("/data/lost", 10, true)),
            (id(3), version("/data/older-there", 10, true)),
            (id(4), version("/data/kept", 10, true)),
            (id(7), version("/data/rolled-back", 10, true)),
        ]);
        let on_server = HashMap::from([
            (id(4), version("/data/kept", 10, true)),
            (id(5), version("/data/replaced", 30, true)),
            (id(6), version("/data/older-there", 5, false)),
            // The server lost the vault's version (its catalog went back to
            // an older copy) and a backup has been made since.
            (id(8), version("/data/rolled-back", 5, false)),
            (id(9), version("/data/rolled-back", 30, true)),
        ]);
        let superseded = superseded_on_server(&on_vault, &on_server);
        assert_eq!(superseded, HashSet::from([id(1)]));
    }
}
