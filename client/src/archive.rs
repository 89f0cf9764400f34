//! Archive copies (TSM ARCHIVE, QUERY ARCHIVE, RETRIEVE, DELETE ARCHIVE):
//! finding the copies a command names, listing and deleting them. Storing
//! them is [`crate::backup::archive`]; retrieving them is a restore over
//! copies instead of backup versions ([`crate::restore`]).
//!
//! A copy is chosen by its path (SOURCE, as for `query backup`), its
//! description (exactly, when `--description` is given) and its archive
//! date (`--fromdate`/`--todate`).

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;
use serde_json::json;
use tandem_proto::pb;
use tokio_stream::StreamExt;

use crate::backup::human_bytes;
use crate::error::{ClientError, ExitStatus};
use crate::logon::session::Session;
use crate::output::console::Console;
use crate::output::messages::Msg;
use crate::output::timefmt;
use crate::query::kind_name;
use crate::selection::{BackupDates, Selection};

/// Which archive copies a command means.
#[derive(Debug, Clone)]
pub struct ArchiveFilter {
    /// Which paths.
    pub selection: Selection,
    /// Only copies with exactly this description.
    pub description: Option<String>,
    /// Only copies archived in this range.
    pub dates: Option<BackupDates>,
}

/// The longest description the server takes, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 255;

/// Checks a description before the logon: the server's limits, said here.
///
/// # Errors
/// [`ClientError::Usage`] naming what is wrong.
pub fn check_description(description: &str) -> Result<(), ClientError> {
    if description.is_empty() {
        return Err(ClientError::Usage(
            "--description is empty; give the text, or leave --description out".into(),
        ));
    }
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(ClientError::Usage(format!(
            "--description is {} bytes long; at most {MAX_DESCRIPTION_BYTES} are kept, shorten it",
            description.len()
        )));
    }
    if description.chars().any(char::is_control) {
        return Err(ClientError::Usage(format!(
            "--description {description:?} contains a control character; use printable text"
        )));
    }
    Ok(())
}

/// TSM's default description: the day the archive was made.
pub fn default_description() -> String {
    format!("Archive Date: {}", chrono::Local::now().format("%Y-%m-%d"))
}

/// Every archive copy `filter` selects, in path and archive time order.
///
/// # Errors
/// Server failures.
pub async fn matching_copies(
    session: &Session,
    filter: &ArchiveFilter,
    with_chunks: bool,
) -> Result<Vec<pb::ArchiveCopy>, ClientError> {
    let mut stream = session
        .client()
        .query_archives(session.request(pb::QueryArchivesRequest {
            path_prefix: filter.selection.prefix.clone(),
            description: filter.description.clone().unwrap_or_default(),
            with_chunks,
        }))
        .await
        .map_err(|s| ClientError::server("listing archive copies", s))?
        .into_inner();
    let mut found = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|s| ClientError::server("listing archive copies", s))?;
        found.extend(batch.copies.into_iter().filter(|c| selected(c, filter)));
    }
    Ok(found)
}

fn selected(copy: &pb::ArchiveCopy, filter: &ArchiveFilter) -> bool {
    let Some(v) = &copy.version else { return false };
    filter.dates.is_none_or(|d| d.contains(v.backup_time_ns))
        && v.attrs
            .as_ref()
            .is_some_and(|a| filter.selection.matches(&a.path))
}

/// The copies a retrieve writes: the newest selected copy of each path,
/// as versions a restore can place.
///
/// # Errors
/// Server failures.
pub async fn newest_copies(
    session: &Session,
    filter: &ArchiveFilter,
) -> Result<Vec<pb::ObjectVersion>, ClientError> {
    let mut newest: BTreeMap<String, pb::ObjectVersion> = BTreeMap::new();
    for copy in matching_copies(session, filter, true).await? {
        let Some(version) = copy.version else {
            continue;
        };
        let Some(path) = version.attrs.as_ref().map(|a| a.path.clone()) else {
            continue;
        };
        // Copies arrive oldest first for each path: the last one wins.
        newest.insert(path, version);
    }
    Ok(newest.into_values().collect())
}

/// Lists the copies `filter` selects (QUERY ARCHIVE).
///
/// # Errors
/// Server failures; standard output closed.
pub async fn query(
    session: &Session,
    filter: &ArchiveFilter,
    console: &Console,
) -> Result<(), ClientError> {
    let copies = matching_copies(session, filter, false).await?;
    if copies.is_empty() {
        console.report(
            &Msg::no_match(&filter.selection.prefix),
            ExitStatus::Skipped,
        );
    }
    print_copies(&copies, console.json).map_err(|source| ClientError::Io {
        path: "standard output".into(),
        source: crate::output::stdout::unless_reader_gone(source),
    })
}

fn print_copies(copies: &[pb::ArchiveCopy], json: bool) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout());
    if json {
        let rows: Vec<_> = copies
            .iter()
            .map(|c| {
                let v = c.version.clone().unwrap_or_default();
                let a = v.attrs.unwrap_or_default();
                json!({
                    "path": crate::names::display(&a.path), "kind": kind_name(a.kind),
                    "size": a.size, "archive_time": timefmt::json(v.backup_time_ns),
                    "expires": timefmt::json(c.expires_ns), "description": c.description,
                    "filespace": v.filespace,
                })
            })
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        )?;
        return out.flush();
    }
    if !copies.is_empty() {
        writeln!(
            out,
            "{:>10}  {:<19}  {:<19}  {:<4}  {:<30}  Description",
            "Size", "Archive Date", "Expires", "Type", "Path"
        )?;
        writeln!(
            out,
            "{:>10}  {:<19}  {:<19}  {:<4}  {:<30}  -----------",
            "----", "------------", "-------", "----", "----"
        )?;
    }
    for c in copies {
        let v = c.version.clone().unwrap_or_default();
        let a = v.attrs.unwrap_or_default();
        writeln!(
            out,
            "{:>10}  {:<19}  {:<19}  {:<4}  {:<30}  {}",
            human_bytes(a.size),
            timefmt::show(v.backup_time_ns),
            timefmt::show(c.expires_ns),
            kind_name(a.kind),
            crate::names::display(&a.path),
            c.description
        )?;
    }
    out.flush()
}

/// What a `delete archive` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeleteArchiveStats {
    /// Archive copies deleted.
    pub deleted: u64,
}

/// Deletes every copy `filter` selects (DELETE ARCHIVE).
///
/// # Errors
/// Server failures.
pub async fn delete(
    session: &Session,
    filter: &ArchiveFilter,
    console: &Console,
) -> Result<DeleteArchiveStats, ClientError> {
    let ids: Vec<Vec<u8>> = matching_copies(session, filter, false)
        .await?
        .into_iter()
        .filter_map(|c| c.version.map(|v| v.object_id))
        .collect();
    let mut stats = DeleteArchiveStats::default();
    if ids.is_empty() {
        console.report(
            &Msg::no_match(&filter.selection.prefix),
            ExitStatus::Skipped,
        );
        return Ok(stats);
    }
    for batch in ids.chunks(tandem_proto::MAX_OBJECTS_PER_CALL) {
        let reply = session
            .client()
            .delete_archives(session.request(pb::DeleteVersionsRequest {
                object_ids: batch.to_vec(),
            }))
            .await
            .map_err(|s| ClientError::server("deleting archive copies", s))?;
        stats.deleted += reply.into_inner().deleted;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_bounded_and_printable() {
        assert!(check_description("Q3 close, ledger").is_ok());
        assert!(check_description(&"x".repeat(MAX_DESCRIPTION_BYTES)).is_ok());
        assert!(check_description(&"x".repeat(MAX_DESCRIPTION_BYTES + 1)).is_err());
        assert!(check_description("two\nlines").is_err());
        assert!(
            check_description("").is_err(),
            "empty would match every copy"
        );
        assert!(default_description().starts_with("Archive Date: 20"));
    }
}
