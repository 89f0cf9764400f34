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
use crate::vault::Repaired;

/// Chunks one restore repairs at most. A vault with more damage than this
/// needs its disk checked, not a restore's side job; the rest are repaired
/// by later restores that meet them.
const MAX_REPAIRED: usize = 1024;

/// Chunks read from the server and handed to the vault at once: bounds the
/// memory a repair holds (chunks are at most a few MiB each).
const REPAIR_GROUP: usize = 16;

/// Replaces the vault's copies of `damaged` with the server's, a group at a
/// time; a group the server cannot supply is skipped and the rest go on.
/// Reports the outcome (TDM2134I, and TDM2135W with why for what was not
/// replaced); restores keep taking unrepaired files from the server.
pub(super) async fn repair(
    server: &Session,
    vault: &Session,
    damaged: BTreeSet<ChunkId>,
    console: &Console,
) {
    let Some(store) = vault
        .vault_store()
        .filter(|c| c.stalled().is_none())
        .map(|c| c.store().clone())
    else {
        return;
    };
    let later = damaged.len().saturating_sub(MAX_REPAIRED);
    let wanted: Vec<ChunkId> = damaged.into_iter().take(MAX_REPAIRED).collect();
    let mut done = Repaired::default();
    let mut failed = 0usize;
    let mut first_cause = None;
    for group in wanted.chunks(REPAIR_GROUP) {
        let store = store.clone();
        let repaired = async {
            let copies = read_from(server, group).await?;
            tokio::task::spawn_blocking(move || store.repair_chunks(copies))
                .await
                .map_err(|e| format!("the repair stopped: {e}"))?
        }
        .await;
        match repaired {
            Ok(r) => {
                done.replaced += r.replaced;
                done.intact += r.intact;
                done.refused += r.refused;
            }
            Err(cause) => {
                failed += group.len();
                first_cause.get_or_insert(cause);
            }
        }
    }
    let dir = &vault.info.address;
    if done.replaced > 0 {
        console.audit(&Msg::vault_repaired(
            dir,
            done.replaced,
            &server.info.name,
            later,
        ));
    }
    if done.refused > 0 {
        first_cause.get_or_insert_with(|| {
            format!(
                "{} cop(ies) from the server failed their check",
                done.refused
            )
        });
    }
    if let Some(cause) = first_cause {
        let left = failed as u64 + done.refused;
        console.report(
            &Msg::vault_repair_failed(dir, &format!("{left} chunk(s): {cause}")),
            ExitStatus::Warnings,
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repair_message_says_how_many_chunks_are_left_for_later_restores() {
        let none_left = Msg::vault_repaired("/v", 3, "PRIMARY", 0);
        assert_eq!(none_left.id, "TDM2134I");
        assert!(
            !none_left.text.contains("left for later"),
            "{}",
            none_left.text
        );
        let some_left = Msg::vault_repaired("/v", MAX_REPAIRED as u64, "PRIMARY", 17);
        assert!(
            some_left
                .text
                .contains("17 more damaged chunk(s) are left for later restores"),
            "{}",
            some_left.text
        );
    }
}
