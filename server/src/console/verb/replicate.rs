//! REPLICATE NODE: runs now, optionally waited for.

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::ReplicateNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, print_rows};

/// Runs `replicate` for `noun`; `secret` is the password read before connecting.
pub(in crate::console) async fn run(
    console: &Console,
    noun: ReplicateNoun,
    _secret: Option<String>,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        ReplicateNoun::Node { names, wait } => {
            let req = console.request(pb::ReplicateNodeRequest { nodes: names, wait });
            let r = console.answer(console.client().replicate_node(req)).await?;
            let failed = r.runs.iter().any(|run| run.state() == pb::RunState::Failed);
            print_rows(&r.runs, format);
            if failed {
                return Err(AdminError::Failed(
                    "replication failed; see the message above and `query actlog`".into(),
                ));
            }
        }
    }
    Ok(())
}
