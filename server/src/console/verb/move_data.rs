//! MOVE NODEDATA: a node's stored data from one storage pool to another.

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::MoveNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, print_rows};

use super::audit::with_spinner;

/// Runs `move` for `noun`.
pub(in crate::console) async fn run(
    console: &Console,
    noun: MoveNoun,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        MoveNoun::Nodedata {
            name,
            from_pool,
            to_pool,
        } => {
            let req = console.request(pb::MoveNodeDataRequest {
                node: name.clone(),
                from_pool: from_pool.clone(),
                to_pool: to_pool.unwrap_or_default(),
            });
            let mut client = console.client();
            let what = format!(
                "moving the data of node {} out of storage pool {}",
                name.to_ascii_uppercase(),
                from_pool.to_ascii_uppercase()
            );
            let r = with_spinner(format, what, console.answer(client.move_node_data(req))).await?;
            print_rows(std::slice::from_ref(&r), format);
            if format.for_people() && !r.note.is_empty() {
                eprintln!("{}", r.note);
            }
            if r.damaged > 0 {
                return Err(AdminError::Damage(format!(
                    "{} chunk(s) of node {} have no whole copy and stayed in {}; run `audit node {} --fix`, then move nodedata again",
                    r.damaged, r.node, r.from_pool, r.node
                )));
            }
        }
    }
    Ok(())
}
