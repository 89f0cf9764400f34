//! PING SERVER: check a pairing before the first replication needs it.

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::PingNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, print_items};

/// Runs `ping` for `noun`.
pub(in crate::console) async fn run(
    console: &Console,
    noun: PingNoun,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        PingNoun::Server { name } => {
            let req = console.request(pb::PingServerRequest { name });
            let r = console.answer(console.client().ping_server(req)).await?;
            print_items(
                vec![
                    ("Server", r.name.clone()),
                    ("Address", r.address.clone()),
                    ("GUID", r.guid.clone()),
                    (
                        "Checked",
                        "reached, certificate pin, shared password both ways, protocol".into(),
                    ),
                    ("Time", format!("{} ms", r.milliseconds)),
                ],
                &serde_json::json!({
                    "name": r.name, "address": r.address, "guid": r.guid,
                    "verified": true, "milliseconds": r.milliseconds,
                }),
                format,
            );
        }
    }
    Ok(())
}
