//! `incremental --preview` and `selective --preview`: what a backup would
//! send and make inactive, found by the same scan and the same
//! include-exclude list, without reading any file's content or changing
//! anything on the server.

use std::path::PathBuf;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::backup::rules::Rules;
use crate::backup::scan::{self, Item, ScanPlan};
use crate::backup::{Mode, inventory_for, local_root, skip_reason};
use crate::error::{ClientError, ExitStatus};
use crate::logon::session::Session;
use crate::options::ClientOptions;
use crate::output::console::Console;
use crate::paths;

/// One object a backup would send.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    /// Its path (encoded as stored).
    pub path: String,
    /// file, dir, link, fifo, chr, blk.
    pub kind: &'static str,
    /// Bytes a file would be read for (0 for others).
    pub size: u64,
    /// No version is stored yet (else it changed).
    pub new: bool,
}

/// What a backup would do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Preview {
    /// Objects it would send, in walk order (kept for `--json` only; the
    /// text form prints each as it is found, so a preview of millions of
    /// files holds none of them).
    pub would_send: Vec<Planned>,
    /// How many objects it would send.
    pub objects_to_send: u64,
    /// Stored paths it would make inactive (gone locally or now excluded).
    pub would_deactivate: Vec<String>,
    /// Objects identical to their stored versions.
    pub unchanged: u64,
    /// Objects it would skip (each reported).
    pub skipped: u64,
    /// Sizes of the files it would read (holes, and the other names of a
    /// hard-linked file, counted too: an upper bound).
    pub bytes_to_read: u64,
}

/// Scans `paths` as a backup in `mode` would, and says what it would do.
///
/// # Errors
/// Server and connection failures (the inventory of an incremental).
pub async fn run(
    session: &Session,
    options: &ClientOptions,
    paths: &[PathBuf],
    mode: Mode,
    rules: &Rules,
    console: &Console,
) -> Result<Preview, ClientError> {
    let mut preview = Preview::default();
    for path in paths {
        let Some((root, root_text)) = local_root(path, console)? else {
            preview.skipped += 1;
            continue;
        };
        let filespace = paths::filespace_of(&root);
        let inventory = inventory_for(session, mode, &filespace, &root_text).await?;
        let plan = ScanPlan {
            root,
            rules: rules.clone(),
            inventory,
            changing_retries: 0,
            serialization: options.serialization,
            preview: true,
        };
        let (tx, mut rx) = mpsc::channel::<Vec<Item>>(2);
        let scanner = tokio::task::spawn_blocking(move || scan::scan(plan, &tx));
        while let Some(batch) = rx.recv().await {
            for item in batch {
                match item {
                    Item::Planned { attrs, new } => {
                        preview.bytes_to_read += attrs.size;
                        preview.objects_to_send += 1;
                        let planned = Planned {
                            kind: crate::query::kind_name(attrs.kind),
                            size: attrs.size,
                            path: attrs.path,
                            new,
                        };
                        if console.json {
                            preview.would_send.push(planned);
                        } else {
                            print_planned(&planned);
                        }
                    }
                    Item::Unchanged(n) => preview.unchanged += n,
                    Item::Problem(msg) => {
                        let status = if skip_reason(msg.id).is_some() {
                            preview.skipped += 1;
                            ExitStatus::Skipped
                        } else {
                            ExitStatus::Warnings
                        };
                        console.report(&msg, status);
                    }
                    // A preview reads no content.
                    Item::Chunk { .. } | Item::Object { .. } | Item::Scanned(_) => {}
                }
            }
        }
        let deactivate = scanner
            .await
            .map_err(|e| ClientError::task_failed("scanner", e))?;
        preview.would_deactivate.extend(deactivate);
    }
    Ok(preview)
}

/// One line of the text form: action, kind, size, path.
fn print_planned(p: &Planned) {
    let action = if p.new { "new" } else { "changed" };
    crate::outln!(
        "{action:<10} {:<4} {:>14} {}",
        p.kind,
        p.size,
        crate::names::display(&p.path)
    );
}

/// Prints the rest of a preview (the objects to send were printed as they
/// were found): what would be made inactive, then the totals; or the whole
/// preview as JSON with `--json`.
pub fn print(preview: &Preview, console: &Console) {
    if console.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(preview).unwrap_or_default()
        );
        return;
    }
    for path in &preview.would_deactivate {
        crate::outln!(
            "{:<10} {:<4} {:>14} {}",
            "deactivate",
            "",
            "",
            crate::names::display(path)
        );
    }
    if !console.quiet {
        crate::outln!(
            "Preview only, nothing was sent: {} object(s) would be sent ({} of files to read), {} made inactive, {} unchanged, {} skipped",
            preview.objects_to_send,
            crate::backup::human_bytes(preview.bytes_to_read),
            preview.would_deactivate.len(),
            preview.unchanged,
            preview.skipped
        );
    }
}
