//! A backup's copy of its data to the local vault beside the server.
//!
//! The vault is opened in this process, so its chunks go straight to its
//! store ([`VaultStore::store_own_chunks`]) instead of through the in-memory
//! gRPC service a vault session uses: no message encoding, no framing, no
//! second decompress-and-hash of data this process just compressed. The
//! copy is best effort: what the vault does not take now, its sync after
//! the backup brings (and reports, if the vault cannot take it then either).

use std::collections::HashSet;

use tandem_proto::{ChunkId, StoredChunk};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::logon::session::Session;
use crate::vault::calls::VaultCalls;

/// Chunks handed to the vault's store at once: one append and fsync per
/// group, as the server's own ingest groups them.
const GROUP_BYTES: usize = 8 << 20;

/// Groups queued for the vault's writer; bounds the memory the copy holds
/// when the vault's disk is slower than the server.
const GROUPS_QUEUED: usize = 1;

/// The vault's store beside a backup's server.
#[derive(Debug, Clone)]
pub(crate) struct Mirror {
    store: VaultCalls,
}

impl Mirror {
    /// The mirror of `session`: its vault beside it, if it has one and it
    /// has not stopped answering in this command.
    pub(crate) fn of(session: &Session) -> Option<Mirror> {
        let store = session.vault_beside()?.vault_store()?.clone();
        store.stalled().is_none().then_some(Mirror { store })
    }

    /// Of `ids`, those the vault lacks.
    pub(crate) async fn missing(&self, ids: Vec<ChunkId>) -> Result<HashSet<ChunkId>, String> {
        self.store
            .bounded("looking up this backup's chunks", move |store| {
                store.missing_chunks(&ids)
            })
            .await
    }

    /// Starts a writer that stores what the returned outlet is given, one
    /// group at a time. The handle ends with the number of chunks newly
    /// stored, or the first failure (after which the outlet stops taking).
    pub(crate) fn writer(&self) -> (MirrorOutlet, JoinHandle<Result<u64, String>>) {
        let (tx, mut rx) = mpsc::channel::<Vec<StoredChunk>>(GROUPS_QUEUED);
        let store = self.store.clone();
        let writer = tokio::spawn(async move {
            let mut stored = 0;
            // A group the vault does not take in time ends the writer, and
            // with it the outlet: the compressing thread is never held up
            // by a vault that stopped answering.
            while let Some(group) = rx.recv().await {
                stored += store
                    .bounded("storing a copy of this backup's data", move |store| {
                        store.store_own_chunks(group)
                    })
                    .await?;
            }
            Ok(stored)
        });
        let outlet = MirrorOutlet {
            tx: Some(tx),
            group: Vec::new(),
            group_bytes: 0,
        };
        (outlet, writer)
    }
}

/// The compressing thread's side of a [`Mirror::writer`]: gathers chunks
/// into groups and queues them, blocking while the writer is behind.
#[derive(Debug)]
pub(crate) struct MirrorOutlet {
    /// `None` once the writer has stopped (it failed): later chunks are
    /// dropped, and the writer's handle says why.
    tx: Option<mpsc::Sender<Vec<StoredChunk>>>,
    group: Vec<StoredChunk>,
    group_bytes: usize,
}

impl MirrorOutlet {
    /// Takes one chunk. Call from a blocking thread only.
    pub(crate) fn push(&mut self, chunk: StoredChunk) {
        if self.tx.is_none() {
            return;
        }
        self.group_bytes += chunk.data.len();
        self.group.push(chunk);
        if self.group_bytes >= GROUP_BYTES {
            self.send_group();
        }
    }

    /// Queues what is gathered and closes the outlet, so the writer ends
    /// once it has stored everything. Call from a blocking thread only.
    pub(crate) fn finish(mut self) {
        if !self.group.is_empty() {
            self.send_group();
        }
    }

    fn send_group(&mut self) {
        let group = std::mem::take(&mut self.group);
        self.group_bytes = 0;
        if let Some(tx) = &self.tx
            && tx.blocking_send(group).is_err()
        {
            self.tx = None;
        }
    }
}
