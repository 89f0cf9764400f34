//! DELETE BACKUP: remove stored versions the user names, as TSM's
//! `dsmc delete backup ... -deltype=active|inactive|all` does.
//!
//! The versions are found with the same listing as `query backup`, so what
//! is deleted is exactly what `query backup --inactive` shows for the same
//! SOURCE. `active` makes the active versions of files inactive (they then
//! expire under the node's policy; directories stay); `inactive` deletes
//! the inactive versions and `all` every version, directories included.
//! Deleted versions' chunks are freed by the server's next expiration.

use std::collections::BTreeMap;

use serde::Serialize;
use tandem_proto::pb;
use tokio_stream::StreamExt;

use crate::error::{ClientError, ExitStatus};
use crate::logon::session::Session;
use crate::output::console::Console;
use crate::output::messages::Msg;
use crate::selection::Selection;

/// Which versions `delete backup` removes (TSM DELTYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DelType {
    /// Make the active versions of files inactive; keep every version.
    #[default]
    Active,
    /// Delete the inactive versions; the active ones stay.
    Inactive,
    /// Delete every version, active and inactive, directories too.
    All,
}

/// A checked `delete backup` command.
#[derive(Debug)]
pub struct DeleteRequest {
    /// Which paths.
    pub selection: Selection,
    /// Which of their versions.
    pub deltype: DelType,
}

/// What a `delete backup` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeleteStats {
    /// Active versions made inactive (`active`).
    pub deactivated: u64,
    /// Versions deleted (`inactive`, `all`).
    pub deleted: u64,
}

/// Runs `delete backup` on an established session.
///
/// # Errors
/// Server failures.
pub async fn run(
    session: &Session,
    req: &DeleteRequest,
    console: &Console,
) -> Result<DeleteStats, ClientError> {
    let versions = matching_versions(session, &req.selection).await?;
    if versions.is_empty() {
        console.report(&Msg::no_match(&req.selection.prefix), ExitStatus::Skipped);
        return Ok(DeleteStats::default());
    }
    let mut stats = DeleteStats::default();
    match req.deltype {
        DelType::Active => {
            let mut by_filespace: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for v in versions.iter().filter(|v| v.active) {
                let Some(attrs) = &v.attrs else { continue };
                if attrs.kind == pb::ObjectKind::Directory as i32 {
                    continue;
                }
                by_filespace
                    .entry(v.filespace.clone())
                    .or_default()
                    .push(attrs.path.clone());
            }
            for (filespace, paths) in by_filespace {
                for batch in paths.chunks(tandem_proto::MAX_OBJECTS_PER_CALL) {
                    let reply = session
                        .commit_objects(
                            pb::CommitObjectsRequest {
                                filespace: filespace.clone(),
                                objects: Vec::new(),
                                deactivate: batch.to_vec(),
                            },
                            "making versions inactive",
                        )
                        .await?;
                    stats.deactivated = stats.deactivated.saturating_add(reply.deactivated);
                }
            }
        }
        DelType::Inactive | DelType::All => {
            let ids: Vec<Vec<u8>> = versions
                .into_iter()
                .filter(|v| req.deltype == DelType::All || !v.active)
                .map(|v| v.object_id)
                .collect();
            for batch in ids.chunks(tandem_proto::MAX_OBJECTS_PER_CALL) {
                let reply = session
                    .client()
                    .delete_versions(session.request(pb::DeleteVersionsRequest {
                        object_ids: batch.to_vec(),
                    }))
                    .await
                    .map_err(|s| ClientError::server("deleting versions", s))?;
                stats.deleted = stats.deleted.saturating_add(reply.into_inner().deleted);
            }
        }
    }
    Ok(stats)
}

/// Every stored version, active and inactive, that SOURCE selects.
async fn matching_versions(
    session: &Session,
    selection: &Selection,
) -> Result<Vec<pb::ObjectVersion>, ClientError> {
    let mut stream = session
        .client()
        .query_objects(session.request(pb::QueryObjectsRequest {
            path_prefix: selection.prefix.clone(),
            include_inactive: true,
            ..Default::default()
        }))
        .await
        .map_err(|s| ClientError::server("listing stored objects", s))?
        .into_inner();
    let mut found = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|s| ClientError::server("listing stored objects", s))?;
        found.extend(
            batch
                .versions
                .into_iter()
                .filter(|v| v.attrs.as_ref().is_some_and(|a| selection.matches(&a.path))),
        );
    }
    Ok(found)
}

/// Asks on the terminal before deleting; refused when stdin is not one
/// (a script says `--yes`).
///
/// # Errors
/// [`ClientError::Usage`] when not confirmed.
pub fn confirm(verb: &str, question: &str) -> Result<(), ClientError> {
    use std::io::{IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::Usage(format!(
            "{verb} asks for confirmation, but stdin is not a terminal; add --yes"
        )));
    }
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| ClientError::Usage(format!("cannot read the answer: {e}")))?;
    if answer.trim().eq_ignore_ascii_case("yes") {
        Ok(())
    } else {
        Err(ClientError::Usage(format!(
            "not confirmed; {verb} changed nothing"
        )))
    }
}
