//! EXPIRE INVENTORY: expiration and space reclamation now.

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::ExpireNoun;
use crate::console::connect::Console;
use crate::console::input::parse_time;
use crate::console::render::print_expiration;

/// Runs `expire` for `noun`; `secret` is the password read before connecting.
pub(in crate::console) async fn run(
    console: &Console,
    noun: ExpireNoun,
    _secret: Option<String>,
    as_json: bool,
) -> Result<(), AdminError> {
    match noun {
        ExpireNoun::Inventory { now } => {
            // Expiration deletes for good: it takes the span's earliest
            // reading, so a date means its midnight, not its last second.
            let now_ns = now
                .as_deref()
                .map(parse_time)
                .transpose()?
                .map_or(0, |t| t.first_ns);
            let req = console.request(pb::ExpireInventoryRequest { now_ns });
            let r = console
                .answer(console.client().expire_inventory(req))
                .await?;
            print_expiration(&r, as_json);
        }
    }
    Ok(())
}
