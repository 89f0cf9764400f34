//! EXPIRE INVENTORY: expiration and space reclamation now, or a preview of it.

use serde_json::json;
use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::ExpireNoun;
use crate::console::connect::Console;
use crate::console::input::parse_time;
use crate::console::render::{Format, Row, print_expiration, print_json, print_rows};

/// Runs `expire` for `noun`; `secret` is the password read before connecting.
pub(in crate::console) async fn run(
    console: &Console,
    noun: ExpireNoun,
    _secret: Option<String>,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        ExpireNoun::Inventory {
            now,
            preview,
            limit,
        } => {
            // Expiration deletes for good: it takes the span's earliest
            // reading, so a date means its midnight, not its last second.
            let now_ns = now
                .as_deref()
                .map(parse_time)
                .transpose()?
                .map_or(0, |t| t.first_ns);
            let req = console.request(pb::ExpireInventoryRequest {
                now_ns,
                list_limit: limit,
            });
            if preview {
                let r = console
                    .answer(console.client().preview_expiration(req))
                    .await?;
                print_preview(&r, format);
            } else {
                let r = console
                    .answer(console.client().expire_inventory(req))
                    .await?;
                print_expiration(&r, format);
            }
        }
    }
    Ok(())
}

/// The versions a preview lists, then what deleting all of them would free.
fn print_preview(r: &pb::ExpirationPreview, format: Format) {
    if format.is_json() {
        let listed: Vec<_> = r.listed.iter().map(Row::json).collect();
        print_json(&json!({
            "preview": true, "versions": r.versions, "archives": r.archives,
            "logical_bytes": r.logical_bytes,
            "chunks": r.chunks, "stored_bytes": r.stored_bytes, "listed": listed,
        }));
        return;
    }
    // CSV and TSV get the rows alone (with their header, even when there
    // are none); the totals are a sentence for people and in --json.
    if !r.listed.is_empty() || !format.for_people() {
        print_rows(&r.listed, format);
    }
    if format.for_people() {
        let shown = if r.versions > r.listed.len() as u64 {
            format!(" ({} listed; --limit lists more)", r.listed.len())
        } else {
            String::new()
        };
        tandem_client::outln!(
            "Preview: {} version(s){shown} and {} archive copy(ies) would expire, {} bytes \
             of files; {} chunk(s) ({} stored bytes) would no longer be referenced. Nothing \
             was deleted.",
            r.versions,
            r.archives,
            r.logical_bytes,
            r.chunks,
            r.stored_bytes
        );
    }
}
