//! AUDIT NODE: read and verify every stored chunk of nodes, and repair;
//! one row per node, exit 8 (TDM0517W) when damage remains.

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::AuditNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, print_rows};

/// Runs `audit` for `noun`.
pub(in crate::console) async fn run(
    console: &Console,
    noun: AuditNoun,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        AuditNoun::Node { name, fix } => {
            let req = console.request(pb::AuditNodesRequest {
                node: name.clone().unwrap_or_default(),
                fix,
            });
            let mut client = console.client();
            let call = console.answer(client.audit_nodes(req));
            let r = if format.for_people() {
                let bar = tandem_client::output::console::spinner();
                bar.set_message(format!(
                    "reading and verifying every stored chunk of {}",
                    name.as_deref()
                        .map_or("every node".to_string(), str::to_ascii_uppercase)
                ));
                let answer = call.await;
                bar.finish_and_clear();
                answer?
            } else {
                call.await?
            };
            print_rows(&r.nodes, format);
            let damaged: Vec<String> = r
                .nodes
                .iter()
                .filter(|n| n.unrepaired > 0)
                .map(|n| format!("{} ({} chunk(s))", n.node, n.unrepaired))
                .collect();
            if !damaged.is_empty() {
                return Err(AdminError::Damage(format!(
                    "stored data is damaged or missing for {}; {}",
                    damaged.join(", "),
                    if fix {
                        "see the reason above and `query actlog --msgno TDM0429`; restores of the files named there fail"
                    } else {
                        "run `audit node --fix` to repair it from the replication partner"
                    }
                )));
            }
        }
    }
    Ok(())
}
