//! SET REPLSERVER|FAILOVERADDRESS|ACTLOGRETENTION.

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::SetNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, print_json};

/// Prints a setting's new value: the TDM0500I line, or `json` with --json.
fn print_set(format: Format, line: String, json: serde_json::Value) {
    if format.is_json() {
        print_json(&json);
    } else if format.for_people() {
        tandem_client::outln!("TDM0500I {line}");
    }
}

/// Runs `set` for `noun`; `secret` is the password read before connecting.
pub(in crate::console) async fn run(
    console: &Console,
    noun: SetNoun,
    _secret: Option<String>,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        SetNoun::Replserver { name } => {
            let req = console.request(pb::SetReplServerRequest { name: name.clone() });
            console
                .answer(console.client().set_repl_server(req))
                .await?;
            let name = name.to_ascii_uppercase();
            print_set(
                format,
                format!("replication server set to {name:?}"),
                serde_json::json!({ "replserver": name }),
            );
        }
        SetNoun::Failoveraddress { address } => {
            let req = console.request(pb::SetFailoverAddressRequest {
                address: address.clone(),
            });
            console
                .answer(console.client().set_failover_address(req))
                .await?;
            print_set(
                format,
                format!("failover address set to {address:?}"),
                serde_json::json!({ "failover_address": address }),
            );
        }
        SetNoun::Actlogretention { days } => {
            let req = console.request(pb::SetActlogRetentionRequest { days });
            let r = console
                .answer(console.client().set_actlog_retention(req))
                .await?;
            print_set(
                format,
                format!(
                    "activity log retention set to {days} days; {} older records removed",
                    r.removed
                ),
                serde_json::json!({ "actlog_retention_days": days, "removed": r.removed }),
            );
        }
    }
    Ok(())
}
