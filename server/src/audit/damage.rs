//! What an audit does with what it found: names the files that use each
//! damaged or missing chunk and records the findings in the catalog's
//! damaged-chunk list (`query damaged`), where they stay until a repair or
//! a later audit reading the chunk whole clears them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tandem_proto::ChunkId;

use crate::ServerState;
use crate::catalog::DamagedChunk;
use crate::error::ServerError;

/// Files named per damaged chunk in its record.
const FILES_PER_CHUNK: usize = 3;
/// Files named in one audit's report (and its activity-log record).
pub(super) const FILES_LISTED: usize = 20;

/// One chunk an audit found damaged or missing.
#[derive(Debug, Clone)]
pub(super) struct Finding {
    /// The chunk.
    pub(super) id: ChunkId,
    /// The container it was read from; `None`: look it up.
    pub(super) container: Option<u32>,
    /// Not stored for the audited node at all (rather than unreadable).
    pub(super) missing: bool,
    /// What the read found.
    pub(super) why: String,
}

/// Files that use a chunk, as `NODE:path`, per chunk.
pub(super) type NamedFiles = Vec<(ChunkId, Vec<String>)>;

/// Records `found` in the damaged-chunk list, naming the files of their
/// users (and of `node`, the audited node, whose files may need a chunk it
/// does not own). Returns each chunk's files (up to a few) as `NODE:path`.
///
/// # Errors
/// Catalog errors.
pub(super) async fn record(
    state: &Arc<ServerState>,
    found: &[Finding],
    node: Option<i64>,
) -> Result<NamedFiles, ServerError> {
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let found = found.to_vec();
    state
        .repo
        .blocking(move |r| {
            let catalog = &r.catalog;
            let ids: Vec<ChunkId> = found.iter().map(|f| f.id).collect();
            let locations = catalog.chunk_locations(&ids)?;
            let mut users = catalog.chunk_users(&ids)?;
            if let Some(node) = node {
                for id in &ids {
                    let list = users.entry(*id).or_default();
                    if !list.contains(&node) {
                        list.push(node);
                    }
                }
            }
            let names: HashMap<i64, String> = catalog
                .list_nodes("")?
                .into_iter()
                .map(|(n, _)| (n.id, n.name))
                .collect();
            let mut by_node: HashMap<i64, HashSet<ChunkId>> = HashMap::new();
            for (id, list) in &users {
                for user in list {
                    by_node.entry(*user).or_default().insert(*id);
                }
            }
            let mut files: HashMap<ChunkId, Vec<String>> = HashMap::new();
            for (user, wanted) in &by_node {
                let name = names
                    .get(user)
                    .cloned()
                    .unwrap_or_else(|| format!("#{user}"));
                for (id, paths) in catalog.node_paths_using(*user, wanted, FILES_PER_CHUNK)? {
                    let named = files.entry(id).or_default();
                    for path in paths {
                        if named.len() < FILES_PER_CHUNK {
                            named.push(format!("{name}:{path}"));
                        }
                    }
                }
            }
            let mut named_files: NamedFiles = Vec::with_capacity(found.len());
            let records: Vec<DamagedChunk> = found
                .iter()
                .zip(locations)
                .map(|(finding, location)| {
                    let (container, missing_for) = if finding.missing {
                        (0, node.unwrap_or(0))
                    } else {
                        let at = finding
                            .container
                            .or(location.map(|l| l.container))
                            .unwrap_or(0);
                        (at, 0)
                    };
                    let named = files.get(&finding.id).cloned().unwrap_or_default();
                    named_files.push((finding.id, named.clone()));
                    DamagedChunk::now(
                        finding.id,
                        container,
                        missing_for,
                        finding.why.clone(),
                        &named,
                    )
                })
                .collect();
            catalog.mark_damaged(&records)?;
            Ok(named_files)
        })
        .await
}

/// Adds to `listed` (up to [`FILES_LISTED`], each once) the files of the
/// chunks in `named` that `still_damaged` keeps: a report names only the
/// files whose data is still damaged after its repairs.
pub(super) fn list_damaged(
    named: &NamedFiles,
    still_damaged: impl Fn(&ChunkId) -> bool,
    listed: &mut Vec<String>,
) {
    for (id, files) in named {
        if !still_damaged(id) {
            continue;
        }
        for file in files {
            if listed.len() < FILES_LISTED && !listed.contains(file) {
                listed.push(file.clone());
            }
        }
    }
}

/// `files` for a log line: comma-separated, or a word when none is known.
pub(super) fn list_files(files: &[String]) -> String {
    if files.is_empty() {
        "none named (no stored file uses them)".to_string()
    } else {
        files.join(", ")
    }
}
