//! DELETE FILESPACE (confirmed before the call) and DELETE SERVER.

use serde_json::json;
use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::DeleteNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, print_expiration, print_json};

/// Runs `delete` for `noun`; `secret` is the password read before connecting.
pub(in crate::console) async fn run(
    console: &Console,
    noun: DeleteNoun,
    _secret: Option<String>,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        DeleteNoun::Schedule { name } => super::schedule::delete(console, name, format).await?,
        DeleteNoun::Association { schedule, nodes } => {
            super::schedule::associate(console, schedule, nodes, true, format).await?;
        }
        DeleteNoun::Server { name } => {
            let req = console.request(pb::DeleteServerRequest { name: name.clone() });
            console.answer(console.client().delete_server(req)).await?;
            let name = name.to_ascii_uppercase();
            if format.is_json() {
                print_json(&json!({ "server": name, "deleted": true }));
            } else if format.for_people() {
                tandem_client::outln!("TDM0500I server {name} deleted");
            }
        }
        DeleteNoun::Filespace { node, name, .. } => {
            let req = console.request(pb::DeleteFilespaceRequest {
                node,
                filespace: name.clone(),
            });
            let r = console
                .answer(console.client().delete_filespace(req))
                .await?;
            if format.is_json() {
                let reclaimed = r.reclaimed.unwrap_or_default();
                print_json(&json!({
                    "filespace": name, "versions_deleted": r.versions_deleted,
                    "archives_deleted": r.archives_deleted,
                    "chunks_freed": reclaimed.chunks_freed, "bytes_reclaimed": reclaimed.bytes_reclaimed,
                }));
            } else {
                if format.for_people() {
                    tandem_client::outln!(
                        "TDM0421I filespace {name} deleted: {} version(s), {} archive copy(ies)",
                        r.versions_deleted,
                        r.archives_deleted
                    );
                }
                print_expiration(&r.reclaimed.unwrap_or_default(), format);
            }
        }
    }
    Ok(())
}
