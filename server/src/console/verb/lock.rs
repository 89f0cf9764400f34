//! LOCK / UNLOCK NODE|ADMIN: TSM's own verbs for what `update ... --lock`
//! and `--unlock` do.

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::LockNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, print_rows};

/// Locks (`locked`) or unlocks what `noun` names.
pub(in crate::console) async fn run(
    console: &Console,
    noun: LockNoun,
    locked: bool,
    format: Format,
) -> Result<(), AdminError> {
    let verb = if locked { "locked" } else { "unlocked" };
    match noun {
        LockNoun::Node { name } => {
            let req = console.request(pb::UpdateNodeRequest {
                name,
                locked: Some(locked),
                ..pb::UpdateNodeRequest::default()
            });
            let node = console.answer(console.client().update_node(req)).await?;
            if format.for_people() {
                tandem_client::outln!("TDM0500I node {} {verb}", node.name);
            }
            print_rows(&[node], format);
        }
        LockNoun::Admin { name } => {
            let req = console.request(pb::UpdateAdminRequest {
                name,
                password: String::new(),
                lock: locked,
                unlock: !locked,
            });
            let admin = console.answer(console.client().update_admin(req)).await?;
            if format.for_people() {
                tandem_client::outln!("TDM0500I administrator {} {verb}", admin.name);
            }
            print_rows(&[admin], format);
        }
    }
    Ok(())
}
