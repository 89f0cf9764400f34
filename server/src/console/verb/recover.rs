//! RECOVER NODE: rebuild nodes from their replica on another server, behind
//! a progress line; one row per node.

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::RecoverNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, print_rows};

/// Runs `recover` for `noun`.
pub(in crate::console) async fn run(
    console: &Console,
    noun: RecoverNoun,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        RecoverNoun::Node { names, all, from } => {
            let req = console.request(pb::RecoverNodesRequest {
                nodes: names.clone(),
                all,
                from: from.unwrap_or_default(),
            });
            let mut client = console.client();
            let call = console.answer(client.recover_nodes(req));
            let r = if format.for_people() {
                let bar = tandem_client::output::console::spinner();
                bar.set_message(if all {
                    "recovering every node held here or replicated elsewhere".to_string()
                } else {
                    format!("recovering {}", names.join(", ").to_ascii_uppercase())
                });
                let answer = call.await;
                bar.finish_and_clear();
                answer?
            } else {
                call.await?
            };
            let failed = r.nodes.iter().any(|n| n.state != "recovered");
            print_rows(&r.nodes, format);
            if failed {
                return Err(AdminError::Failed(
                    "a recovery failed; see the message above and `query actlog --msgno TDM0606`; run the command again".into(),
                ));
            }
        }
    }
    Ok(())
}
