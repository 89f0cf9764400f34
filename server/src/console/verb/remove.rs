//! REMOVE NODE|ADMIN|REPLNODE.

use serde_json::json;
use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::RemoveNoun;
use crate::console::connect::Console;
use crate::console::render::Format;

/// Runs `remove` for `noun`; `secret` is the password read before connecting.
pub(in crate::console) async fn run(
    console: &Console,
    noun: RemoveNoun,
    _secret: Option<String>,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        RemoveNoun::Admin { name } => {
            let req = console.request(pb::RemoveAdminRequest { name: name.clone() });
            console.answer(console.client().remove_admin(req)).await?;
            if format.is_json() {
                tandem_client::outln!("{}", json!({ "removed": name.to_ascii_uppercase() }));
            } else if format.for_people() {
                tandem_client::outln!(
                    "TDM0500I administrator {} removed",
                    name.to_ascii_uppercase()
                );
            }
        }
        RemoveNoun::Node { name } => {
            let req = console.request(pb::RemoveNodeRequest { name: name.clone() });
            console.answer(console.client().remove_node(req)).await?;
            if format.is_json() {
                tandem_client::outln!("{}", json!({ "removed": name.to_ascii_uppercase() }));
            } else if format.for_people() {
                tandem_client::outln!("TDM0500I node {} removed", name.to_ascii_uppercase());
            }
        }
        RemoveNoun::Replnode { name } => {
            let req = console.request(pb::RemoveReplNodeRequest { node: name.clone() });
            console
                .answer(console.client().remove_repl_node(req))
                .await?;
            if format.is_json() {
                let removed = json!({ "replication_removed": name.to_ascii_uppercase() });
                tandem_client::outln!("{removed}");
            } else if format.for_people() {
                tandem_client::outln!(
                    "TDM0500I replication removed for node {}",
                    name.to_ascii_uppercase()
                );
            }
        }
    }
    Ok(())
}
