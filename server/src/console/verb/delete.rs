//! DELETE FILESPACE (confirmed before the call).

use serde_json::json;
use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::DeleteNoun;
use crate::console::connect::Console;
use crate::console::render::{print_expiration, print_json};

/// Runs `delete` for `noun`; `secret` is the password read before connecting.
pub(in crate::console) async fn run(
    console: &Console,
    noun: DeleteNoun,
    _secret: Option<String>,
    as_json: bool,
) -> Result<(), AdminError> {
    match noun {
        DeleteNoun::Filespace { node, name, .. } => {
            let req = console.request(pb::DeleteFilespaceRequest {
                node,
                filespace: name.clone(),
            });
            let r = console
                .answer(console.client().delete_filespace(req))
                .await?;
            if as_json {
                let reclaimed = r.reclaimed.unwrap_or_default();
                print_json(&json!({
                    "filespace": name, "versions_deleted": r.versions_deleted,
                    "chunks_freed": reclaimed.chunks_freed, "bytes_reclaimed": reclaimed.bytes_reclaimed,
                }));
            } else {
                tandem_client::outln!(
                    "TDM0421I filespace {name} deleted: {} version(s)",
                    r.versions_deleted
                );
                print_expiration(&r.reclaimed.unwrap_or_default(), false);
            }
        }
    }
    Ok(())
}
