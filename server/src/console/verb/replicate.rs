//! REPLICATE NODE: runs now, optionally waited for behind a progress line.

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
            let req = console.request(pb::ReplicateNodeRequest {
                nodes: names.clone(),
                wait,
            });
            let mut client = console.client();
            let call = console.answer(client.replicate_node(req));
            let r = if wait && format.for_people() {
                with_progress(&names, call).await?
            } else {
                call.await?
            };
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

/// Awaits `call` while a progress line on stderr (only on a terminal)
/// shows the nodes and the time waited. It does not ask the server how the
/// runs stand: every admin call is written to the activity log (TDM0502I),
/// and a poll would fill it; `query replication` in another console shows
/// the runs.
async fn with_progress<F>(
    names: &[String],
    call: F,
) -> Result<pb::ReplicateNodeResponse, AdminError>
where
    F: std::future::Future<Output = Result<pb::ReplicateNodeResponse, AdminError>>,
{
    let bar = tandem_client::output::console::spinner();
    bar.set_message(format!(
        "replicating {}; waiting for the run(s) to end",
        names.join(", ").to_ascii_uppercase()
    ));
    let answer = call.await;
    bar.finish_and_clear();
    answer
}
