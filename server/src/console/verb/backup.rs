//! BACKUP DB: a consistent copy of the catalog while the server runs.

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::BackupNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, print_items};

/// Runs `backup` for `noun`.
pub(in crate::console) async fn run(
    console: &Console,
    noun: BackupNoun,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        BackupNoun::Db { to } => {
            let req = console.request(pb::BackupDbRequest { to_dir: to });
            let r = console.answer(console.client().backup_db(req)).await?;
            print_items(
                vec![
                    ("Catalog copy", r.path.clone()),
                    ("Bytes", r.bytes.to_string()),
                    ("Elapsed", format!("{:.2} s", r.elapsed_secs)),
                ],
                &serde_json::json!({
                    "path": r.path, "bytes": r.bytes, "elapsed_secs": r.elapsed_secs,
                }),
                format,
            );
        }
    }
    Ok(())
}
