//! ROTATE ADMINTOKEN: a new bootstrap token.

use serde_json::json;
use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::RotateNoun;
use crate::console::connect::Console;
use crate::console::render::Format;

/// Runs `rotate` for `noun`; `secret` is the password read before connecting.
pub(in crate::console) async fn run(
    console: &Console,
    noun: RotateNoun,
    _secret: Option<String>,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        RotateNoun::Admintoken => {
            let req = console.request(pb::RotateAdminTokenRequest {});
            let reply = console
                .answer(console.client().rotate_admin_token(req))
                .await?;
            if format.is_json() {
                tandem_client::outln!("{}", json!({ "token_file": reply.path }));
            } else if format.for_people() {
                tandem_client::outln!(
                    "TDM0500I a new admin token is in {} on the server; the old one no longer works",
                    reply.path
                );
            }
        }
    }
    Ok(())
}
