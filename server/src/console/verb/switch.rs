//! SWITCH REPLICATION: a planned role switch of nodes with their
//! replication server, behind a progress line; one row per node.

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::SwitchNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, print_rows};

/// Runs `switch` for `noun`.
pub(in crate::console) async fn run(
    console: &Console,
    noun: SwitchNoun,
    format: Format,
) -> Result<(), AdminError> {
    let SwitchNoun::Replication {
        names,
        all,
        wait,
        cancel,
        force,
    } = noun;
    let req = console.request(pb::SwitchNodesRequest {
        nodes: names.clone(),
        all,
        wait_secs: wait.unwrap_or(0),
        cancel,
        force,
    });
    let mut client = console.client();
    let call = console.answer(client.switch_nodes(req));
    let r = if format.for_people() {
        let bar = tandem_client::output::console::spinner();
        let which = if all {
            "every replicated node".to_string()
        } else {
            names.join(", ").to_ascii_uppercase()
        };
        bar.set_message(if cancel {
            format!("cancelling the switch of {which}")
        } else {
            format!("switching {which} to the replication server (waiting for sessions, final replication, hand-over)")
        });
        let answer = call.await;
        bar.finish_and_clear();
        answer?
    } else {
        call.await?
    };
    let failed = r.nodes.iter().any(|n| n.state == "failed");
    print_rows(&r.nodes, format);
    if failed {
        return Err(AdminError::Failed(
            "a switch failed; see the message above and `query actlog --msgno TDM0610`; run the command again to finish it, or with --cancel to undo it".into(),
        ));
    }
    Ok(())
}
