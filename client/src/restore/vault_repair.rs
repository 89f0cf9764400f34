//! Repair of the local vault during a restore: chunks the vault could not
//! serve (TDM2131W) are read from the server and put in place of the
//! vault's copies, so the next restore takes those files from the vault
//! again instead of warning about the same chunk every time. The vault's
//! store checks every copy against its id before it replaces anything.

use std::collections::BTreeSet;

use tandem_proto::{ChunkId, StoredChunk, pb};
use tokio_stream::StreamExt;

use crate::error::ExitStatus;
use crate::logon::session::Session;
use crate::output::console::Console;
use crate::output::messages::Msg;

/// Chunks one restore repairs at most. A vault with more damage than this
/// needs its disk checked, not a restore's side job; the rest are repaired
/// by later restores that meet them.
const MAX_REPAIRED: usize = 1024;

/// Replaces the vault's copies of `damaged` with the server's. Reports the
/// outcome (TDM2134I, or TDM2135W with why); a failure leaves the vault as
/// it was, and restores keep taking those files from the server.
pub(super) async fn repair(
    server: &Session,
    vault: &Session,
    damaged: BTreeSet<ChunkId>,
    console: &Console,
) {
    let Some(store) = vault.vault_store().cloned() else {
        return;
    };
    let wanted: Vec<ChunkId> = damaged.into_iter().take(MAX_REPAIRED).collect();
    if wanted.is_empty() {
        return;
    }
    let repaired = async {
        let copies = read_from(server, &wanted).await?;
        tokio::task::spawn_blocking(move || store.repair_chunks(copies))
            .await
            .map_err(|e| format!("the repair stopped: {e}"))?
    }
    .await;
    let dir = &vault.info.address;
    match repaired {
        Ok(count) => console.audit(&Msg::vault_repaired(dir, count, &server.info.name)),
        Err(cause) => console.report(&Msg::vault_repair_failed(dir, &cause), ExitStatus::Warnings),
    }
}

/// The server's stored copies of `ids` (compressed, as uploaded), checked
/// only for being the chunks asked for: the vault verifies their data.
async fn read_from(server: &Session, ids: &[ChunkId]) -> Result<Vec<StoredChunk>, String> {
    let mut out = Vec::with_capacity(ids.len());
    let mut client = server.client();
    for batch in ids.chunks(tandem_proto::MAX_CHUNK_IDS_PER_CALL) {
        let chunk_ids = batch.iter().map(|id| id.as_slice().to_vec()).collect();
        let mut stream = client
            .read_chunks(server.request(pb::ReadChunksRequest { chunk_ids }))
            .await
            .map_err(|s| format!("reading the chunks from the server: {}", s.message()))?
            .into_inner();
        for expected in batch {
            let chunk = match stream.next().await {
                Some(Ok(pb::ReadChunksResponse { chunk: Some(chunk) })) => chunk,
                Some(Err(s)) => {
                    return Err(format!(
                        "reading the chunks from the server: {}",
                        s.message()
                    ));
                }
                _ => return Err(format!("the server did not send chunk {expected}")),
            };
            if chunk.id != expected.as_slice() {
                return Err(format!(
                    "the server sent another chunk where {expected} was expected"
                ));
            }
            out.push(StoredChunk {
                id: *expected,
                data: chunk.data,
                raw_len: chunk.raw_len,
            });
        }
    }
    Ok(out)
}
