//! CANCEL SESSION: end a session an administrator no longer wants running.

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::CancelNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, print_rows};

/// Runs `cancel` for `noun`.
pub(in crate::console) async fn run(
    console: &Console,
    noun: CancelNoun,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        CancelNoun::Session { id } => {
            let req = console.request(pb::CancelSessionRequest { id });
            let session = console.answer(console.client().cancel_session(req)).await?;
            if format.for_people() {
                tandem_client::outln!("TDM0500I session {} cancelled", session.id);
            }
            print_rows(&[session], format);
        }
    }
    Ok(())
}
