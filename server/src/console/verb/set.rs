//! SET REPLSERVER|FAILOVERADDRESS|ACTLOGRETENTION.

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::SetNoun;
use crate::console::connect::Console;

/// Runs `set` for `noun`; `secret` is the password read before connecting.
pub(in crate::console) async fn run(
    console: &Console,
    noun: SetNoun,
    _secret: Option<String>,
    _as_json: bool,
) -> Result<(), AdminError> {
    match noun {
        SetNoun::Replserver { name } => {
            let req = console.request(pb::SetReplServerRequest { name: name.clone() });
            console
                .answer(console.client().set_repl_server(req))
                .await?;
            println!(
                "TDM0500I replication server set to {:?}",
                name.to_ascii_uppercase()
            );
        }
        SetNoun::Failoveraddress { address } => {
            let req = console.request(pb::SetFailoverAddressRequest {
                address: address.clone(),
            });
            console
                .answer(console.client().set_failover_address(req))
                .await?;
            println!("TDM0500I failover address set to {address:?}");
        }
        SetNoun::Actlogretention { days } => {
            let req = console.request(pb::SetActlogRetentionRequest { days });
            let r = console
                .answer(console.client().set_actlog_retention(req))
                .await?;
            println!(
                "TDM0500I activity log retention set to {days} days; {} older records removed",
                r.removed
            );
        }
    }
    Ok(())
}
