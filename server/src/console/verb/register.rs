//! REGISTER NODE|ADMIN: create a node or a named administrator.

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::RegisterNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, print_rows};

/// Runs `register` for `noun`; `secret` is the password read before connecting.
pub(in crate::console) async fn run(
    console: &Console,
    noun: RegisterNoun,
    secret: Option<String>,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        RegisterNoun::Node { name, pool, .. } => {
            let req = console.request(pb::RegisterNodeRequest {
                name,
                password: secret.unwrap_or_default(),
                pool: pool.unwrap_or_default(),
            });
            let node = console.answer(console.client().register_node(req)).await?;
            if format.for_people() {
                tandem_client::outln!("TDM0500I node {} registered", node.name);
            }
            print_rows(&[node], format);
        }
        RegisterNoun::Admin { name, .. } => {
            let req = console.request(pb::RegisterAdminRequest {
                name,
                password: secret.unwrap_or_default(),
            });
            let admin = console.answer(console.client().register_admin(req)).await?;
            if format.for_people() {
                tandem_client::outln!("TDM0500I administrator {} registered", admin.name);
            }
            print_rows(&[admin], format);
        }
    }
    Ok(())
}
