//! The local vault tier: the server's store, opened inside the client.
//! The `tandem` binary (crate `vault/`) and the demo install it into the
//! client library, which never links the server itself.
//!
//! A vault directory is a Tandem server data directory holding one node:
//! the same catalog, containers, durability order and chunk verification
//! as a server, because it *is* the server's repository and `Backup`
//! service, opened by [`tandem_server::ServerState::open`]. The service is
//! served over an in-memory duplex channel instead of a socket, so nothing
//! listens on the network and the client reaches it with the same gRPC calls
//! it sends a server, except for bulk work on its own process's data, which
//! goes straight to the store ([`VaultStore`]: a backup's chunks, a pull's
//! versions and chunk lookups, repairs, reclaim). The client library decides
//! when the vault is used (`tandem_client::vault`); this crate only opens it.
//!
//! On first use the directory is created (mode 0700), the store is made, and
//! the node is registered with a random password kept in `vault.key` (0600)
//! beside the catalog: whoever can read that file can read the vault's data
//! anyway. The server's exclusive lock on the data directory keeps a second
//! process out while one uses the vault.

mod stall;

use std::collections::HashSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ServerState;
use crate::config::ServerConfig;
use crate::model::DEFAULT_POOL;
use crate::service::backup::BackupService;
use crate::storage::{self, VerifiedChunk};
use hyper_util::rt::TokioIo;
use tandem_client::vault::{OpenFuture, OpenedVault, Repaired, VaultOpener, VaultStore, waiting};
use tandem_proto::pb::backup_server::BackupServer;
use tandem_proto::{ChunkId, StoredChunk, pb};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Endpoint, Server, Uri};

/// The file holding the node's password in the vault.
pub const KEY_FILE: &str = "vault.key";

/// The name the vault's store carries (its "server name").
const STORE_NAME: &str = "VAULT";

/// How an open that met the vault's lock starts its message.
const IN_USE: &str = "in use by another tandem command";

/// Tries, and the wait between them, for a vault another command holds.
const LOCK_TRIES: u32 = 50;
/// Tries for a command that asked a sync to stop (30 s).
const LOCK_TRIES_INTERRUPTING: u32 = 300;
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Versions and days the vault's policy keeps: all of them.
const KEEP_ALL: u32 = 1_000_000;

/// Buffer of each in-memory connection, per direction.
const DUPLEX_BYTES: usize = 4 << 20;

/// Opens vaults as local server stores; installed by the `tandem` binary.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalVault;

impl VaultOpener for LocalVault {
    fn open(
        &self,
        dir: PathBuf,
        node: String,
        interrupt_sync: bool,
        timeout: std::time::Duration,
    ) -> OpenFuture {
        Box::pin(open(dir, node, interrupt_sync, timeout))
    }
}

/// Keeps the vault's store and its in-memory service alive; dropping the
/// last clone stops the service and releases the directory lock.
struct VaultGuard {
    state: Arc<ServerState>,
    /// The vault's one node.
    node_id: i64,
    /// Held shared by every direct store of chunks (append, fsync, index)
    /// and exclusively by [`VaultStore::reclaim`]: a compaction never sees
    /// bytes appended but not indexed yet, whatever tasks are still running.
    writes: std::sync::RwLock<()>,
    service: tokio::task::JoinHandle<()>,
}

/// The pin-table entry direct stores use ([`Repository::store_chunks`]
/// always pins). Session numbers start at 1, so it is nobody's and the
/// sweep ignores it; what keeps the chunks safe is [`VaultGuard::writes`]
/// and the order of a sync, whose reclaim runs only after the versions that
/// use them are pulled. Chunks no pulled version uses are freed then, which
/// only costs a copy the next pull makes again. A pull's direct chunk
/// lookups pin nothing either, for the same reason: no sweep runs before
/// the pull has stored the versions that use them.
const OWN_CHUNKS_SESSION: u64 = 0;

impl std::fmt::Debug for VaultGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultGuard")
            .field("guid", &self.state.guid)
            .finish_non_exhaustive()
    }
}

impl VaultStore for VaultGuard {
    fn reclaim(&self) -> Result<tandem_client::vault::Reclaimed, String> {
        let _no_writes = self.writes.write().unwrap_or_else(|e| e.into_inner());
        let report = self.state.reclaim().map_err(|e| e.to_string())?;
        Ok(tandem_client::vault::Reclaimed {
            chunks: report.chunks_freed,
            containers: report.containers_compacted,
            bytes: report.bytes_reclaimed,
        })
    }

    fn missing_chunks(&self, ids: &[ChunkId]) -> Result<HashSet<ChunkId>, String> {
        let unowned = self
            .state
            .repo
            .catalog
            .unowned_chunks(self.node_id, DEFAULT_POOL, ids)
            .map_err(|e| format!("reading the vault's chunk index: {e}"))?;
        Ok(unowned.into_iter().collect())
    }

    fn store_own_chunks(&self, chunks: Vec<StoredChunk>) -> Result<u64, String> {
        // The one check that costs nothing: a length no chunker makes
        // would make the chunk unreadable later.
        let group = chunks
            .into_iter()
            .map(|c| {
                let raw_len = u32::try_from(c.raw_len)
                    .ok()
                    .filter(|n| *n as usize <= tandem_proto::MAX_RAW_CHUNK_BYTES)
                    .ok_or_else(|| {
                        format!(
                            "chunk {} claims {} raw bytes, more than a chunk may hold ({})",
                            c.id,
                            c.raw_len,
                            tandem_proto::MAX_RAW_CHUNK_BYTES
                        )
                    })?;
                Ok(VerifiedChunk {
                    id: c.id,
                    data: c.data,
                    raw_len,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let repo = &self.state.repo;
        let _writing = self.writes.read().unwrap_or_else(|e| e.into_inner());
        // A test's stand-in for a share that stops answering mid-backup,
        // holding what a store holds.
        crate::faults::pause_point_blocking("vault-store");
        let stored = repo.store_chunks(OWN_CHUNKS_SESSION, self.node_id, group);
        repo.pins.release(OWN_CHUNKS_SESSION);
        stored
            .map(|(count, _bytes)| count)
            .map_err(|e| format!("storing data in the vault: {e}"))
    }

    fn repair_chunks(&self, chunks: Vec<StoredChunk>) -> Result<Repaired, String> {
        let repo = &self.state.repo;
        let ids: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
        // Only copies that are damaged or gone are replaced: a chunk named
        // by a restore that failed for another reason stays as it is.
        let check = repo
            .check_chunks(self.node_id, &ids)
            .map_err(|e| format!("checking the vault's copies: {e}"))?;
        let wanted: HashSet<ChunkId> = check
            .damaged
            .iter()
            .map(|(id, _)| *id)
            .chain(check.absent.iter().copied())
            .collect();
        let mut out = Repaired {
            intact: check.intact.len() as u64,
            ..Repaired::default()
        };
        let mut verified = Vec::new();
        for c in chunks.into_iter().filter(|c| wanted.contains(&c.id)) {
            // Copies from the network are checked like any upload; one bad
            // copy does not hold back the others.
            match storage::verify_chunk(c.id, c.data, c.raw_len) {
                Ok(v) => verified.push(v),
                Err(_) => out.refused += 1,
            }
        }
        let _writing = self.writes.read().unwrap_or_else(|e| e.into_inner());
        let placed = repo
            .replace_chunks(self.node_id, &verified)
            .map_err(|e| format!("replacing damaged chunks in the vault: {e}"))?;
        out.replaced = placed.len() as u64;
        Ok(out)
    }

    fn store_pulled_versions(
        &self,
        versions: Vec<pb::ObjectVersion>,
        exact: bool,
    ) -> Result<u64, String> {
        let latest = crate::service::backup::vault_time_limit(&self.state);
        let versions = versions
            .into_iter()
            .map(|v| crate::convert::vault_version_from_pb(v, latest))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        // Shared with chunk stores, exclusive of reclaim, like every write.
        let _writing = self.writes.read().unwrap_or_else(|e| e.into_inner());
        // A test's stand-in for a share that stops answering mid-sync.
        crate::faults::pause_point_blocking("vault-pull-store");
        let catalog = &self.state.repo.catalog;
        let stored = if exact {
            // What a replica does: no per-version search for newer ones.
            catalog.put_replicated(self.node_id, &versions)
        } else {
            catalog.put_vault_versions(self.node_id, &versions)
        };
        stored.map_err(|e| format!("storing synchronised versions: {e}"))
    }
}

impl Drop for VaultGuard {
    fn drop(&mut self) {
        self.service.abort();
    }
}

async fn open(
    dir: PathBuf,
    node: String,
    interrupt_sync: bool,
    timeout: std::time::Duration,
) -> Result<OpenedVault, String> {
    // Another command may hold the vault for a moment (or, in one process,
    // the last session's service is still winding down): wait a little,
    // asking a sync that holds it to stop between its batches.
    let mut tries = 0;
    // A sync stops at its next batch; on a slow disk that can take a while.
    let lock_tries = if interrupt_sync {
        LOCK_TRIES_INTERRUPTING
    } else {
        LOCK_TRIES
    };
    let opened = loop {
        let (opening, for_node) = (dir.clone(), node.clone());
        // A share that stopped answering blocks the thread in the kernel:
        // it is left to finish (or to end with the process) and the
        // command goes on without the vault.
        let attempt = tokio::task::spawn_blocking(move || open_store(&opening, &for_node));
        let Ok(opened) = tokio::time::timeout(timeout, attempt).await else {
            if tries > 0 && interrupt_sync {
                // Take back the request to a sync, without waiting on the
                // directory that did not answer.
                let dir = dir.clone();
                drop(tokio::task::spawn_blocking(move || waiting::withdraw(&dir)));
            }
            return Err(tandem_client::vault::DID_NOT_ANSWER.to_string());
        };
        let opened = opened.map_err(|e| format!("opening the vault stopped: {e}"))?;
        match opened {
            Err(e) if e.starts_with(IN_USE) && tries < lock_tries => {
                if interrupt_sync {
                    waiting::ask(&dir);
                }
                tries += 1;
                tokio::time::sleep(LOCK_WAIT).await;
            }
            other => break other,
        }
    };
    // Whoever holds the vault now clears the request: its own, or one a
    // waiter that died left behind (a live waiter asks again on its next
    // try). A waiter that gives up takes its request back.
    if opened.is_ok() || (tries > 0 && interrupt_sync) {
        waiting::withdraw(&dir);
    }
    let (state, password, node_id) = opened?;
    let guid = state.guid;
    let backup = BackupServer::new(BackupService::new(state.clone()))
        .max_decoding_message_size(tandem_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(tandem_proto::MAX_MESSAGE_BYTES);
    let (connections, incoming) = mpsc::unbounded_channel();
    // Every call to the service is bounded like the open: a share that
    // stops answering gives the vault up instead of holding the command.
    let stall = tandem_client::vault::calls::Stall::default();
    let guard = stall::StallGuardLayer::new(
        timeout,
        stall.clone(),
        state.repo.ingest_budget.store_progress(),
    );
    let service = tokio::spawn(async move {
        let served = Server::builder()
            .layer(guard)
            .add_service(backup)
            .serve_with_incoming(UnboundedReceiverStream::new(incoming))
            .await;
        if let Err(e) = served {
            tracing::warn!("the vault's in-memory service stopped: {e}");
        }
    });
    // Each connection the channel makes is a fresh duplex pair whose other
    // end goes to the service.
    let channel = Endpoint::from_static("http://vault.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connections = connections.clone();
            async move {
                let (ours, theirs) = tokio::io::duplex(DUPLEX_BYTES);
                connections
                    .send(Ok::<_, std::io::Error>(theirs))
                    .map_err(|_| std::io::Error::other("the vault's service has stopped"))?;
                Ok::<_, std::io::Error>(TokioIo::new(ours))
            }
        }))
        .await
        .map_err(|e| format!("cannot reach the vault's service: {e}"))?;
    Ok(OpenedVault {
        channel,
        password,
        guid,
        guard: Arc::new(VaultGuard {
            state,
            node_id,
            writes: std::sync::RwLock::new(()),
            service,
        }),
        stall,
    })
}

/// Creates or opens the store in `dir` and makes sure `node` is registered
/// in it; returns the store, the node's password there and its row id.
fn open_store(dir: &Path, node: &str) -> Result<(Arc<ServerState>, String, i64), String> {
    // Where a test makes the vault's file system stop answering.
    crate::faults::pause_point_blocking("vault-open");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the directory: {e}"))?;
    let config: ServerConfig = serde_json::from_value(serde_json::json!({
        "data_dir": dir,
        // Never bound: the vault's service is reached in memory only.
        "listen": "127.0.0.1:1",
        "name": STORE_NAME,
        // The vault never expires anything on its own: it keeps what the
        // server keeps, and its sync mirrors the server's expiration.
        "policy": {
            "verexists": KEEP_ALL,
            "verdeleted": KEEP_ALL,
            "retextra": KEEP_ALL,
            "retonly": KEEP_ALL,
            "retver": KEEP_ALL,
        },
        // The server's clock is the authority on what a pull copies.
        "vault_clock_skew_seconds": u64::from(u32::MAX),
    }))
    .map_err(|e| format!("vault settings: {e}"))?;
    let state = ServerState::open_vault(config).map_err(|e| {
        let text = e.to_string();
        if text.contains("in use by another") {
            format!("{IN_USE} ({text})")
        } else {
            text
        }
    })?;
    let key = dir.join(KEY_FILE);
    let catalog = &state.repo.catalog;
    // One node per vault: its password file is the vault's.
    let others: Vec<String> = catalog
        .list_nodes("")
        .map_err(|e| format!("reading the vault's catalog: {e}"))?
        .into_iter()
        .map(|(n, _)| n.name)
        .filter(|name| name != node)
        .collect();
    if let Some(other) = others.first() {
        return Err(format!(
            "it holds the vault of node {other}; a vault holds one node: give node {node} a vault_dir of its own"
        ));
    }
    let registered = catalog
        .node(node)
        .map_err(|e| format!("reading the vault's catalog: {e}"))?;
    let (password, node_id) = match registered {
        Some(known) => {
            // A 64-character key; never read through a link or at length.
            let password = tandem_os::atomic_file::read_small_text(&key, 4096)
                .map(|text| text.trim().to_string())
                .map_err(|e| {
                    format!(
                        "{} cannot be read ({e}); it holds the node's password in this vault",
                        key.display()
                    )
                })?;
            // Best effort: a vault whose hash cannot be rewritten now (a
            // full disk) still opens, and is re-hashed at a later open.
            if let Err(e) = rehash_old_key(catalog, &known, &password) {
                tracing::warn!("the vault's key hash stays as it was: {e}");
            }
            (password, known.id)
        }
        None => {
            let password = hex::encode(rand::random::<[u8; 32]>());
            let hash = crate::auth::hash_random_key(&password).map_err(|e| e.to_string())?;
            write_key(&key, &password)?;
            let made = catalog
                .register_node(node, &hash, crate::model::now_ns())
                .map_err(|e| format!("registering node {node} in the vault: {e}"))?
                .ok_or_else(|| {
                    format!("node {node} appeared in the vault while it was being registered")
                })?;
            (password, made.id)
        }
    };
    Ok((state, password, node_id))
}

/// Re-hashes the key of a vault made before keys were hashed at the
/// cheapest cost (~25 ms off every later command), once the key file is
/// shown to match the stored hash: a key file that does not match is left
/// to fail the logon as before, never written over the catalog's hash.
fn rehash_old_key(
    catalog: &crate::catalog::Catalog,
    known: &crate::model::Node,
    password: &str,
) -> Result<(), String> {
    if crate::auth::is_random_key_cost(&known.password_hash)
        || !crate::auth::verify_password(password, &known.password_hash)
    {
        return Ok(());
    }
    let hash = crate::auth::hash_random_key(password).map_err(|e| e.to_string())?;
    catalog
        .update_node(
            &known.name,
            None,
            crate::model::PolicyUpdate::default(),
            Some(&hash),
        )
        .map_err(|e| format!("re-hashing the vault's key: {e}"))?;
    tracing::info!("the vault's key hash was made cheaper to check");
    Ok(())
}

/// Writes the node's vault password, readable by its owner only, and makes
/// it durable before the node is registered with it.
fn write_key(path: &Path, password: &str) -> Result<(), String> {
    tandem_os::atomic_file::replace(path, password.as_bytes(), Some(0o600))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored hash of the vault's node.
    fn stored_hash(dir: &Path) -> String {
        let (state, _, _) = open_store(dir, "ANN").unwrap();
        let node = state.repo.catalog.node("ANN").unwrap().unwrap();
        node.password_hash
    }

    /// Puts a hash at argon2's default cost in place, as vaults made before
    /// the cheap key hash have it.
    fn age_the_hash(dir: &Path, of: &str) {
        let (state, _, _) = open_store(dir, "ANN").unwrap();
        let old = crate::auth::hash_password(of).unwrap();
        let policy = crate::model::PolicyUpdate::default();
        state
            .repo
            .catalog
            .update_node("ANN", None, policy, Some(&old))
            .unwrap();
    }

    #[test]
    fn an_old_vaults_key_is_rehashed_cheaply_only_when_the_key_file_matches() {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path().join("vault");
        assert!(crate::auth::is_random_key_cost(&stored_hash(&vault)));
        let key = std::fs::read_to_string(vault.join(KEY_FILE)).unwrap();

        age_the_hash(&vault, key.trim());
        let rehashed = stored_hash(&vault);
        assert!(crate::auth::is_random_key_cost(&rehashed), "{rehashed}");
        assert!(crate::auth::verify_password(key.trim(), &rehashed));

        // A key file that does not match the catalog is never hashed into it.
        age_the_hash(&vault, "some other key");
        let kept = stored_hash(&vault);
        assert!(!crate::auth::is_random_key_cost(&kept), "{kept}");
        assert!(crate::auth::verify_password("some other key", &kept));
    }
}
