//! Where a restore's file data comes from when a local vault stands beside
//! the server: the server decides *what* is restored (its versions are the
//! record), and each file's chunks come from the vault when it holds every
//! one of them, from the server otherwise. Chunks are content-addressed and
//! every one is checked against its id on arrival, so a file from the vault
//! is byte for byte the server's; a vault chunk that fails that check is
//! named and the file is fetched from the server instead.

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;
use tandem_proto::ChunkId;

use super::FileJob;
use super::fetch::FetchJob;
use crate::logon::session::Session;

/// How much of a restore came from where.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct DataSources {
    /// Files whose data came from the local vault.
    pub vault_files: u64,
    /// Their bytes.
    pub vault_bytes: u64,
    /// Files whose data came from the server.
    pub server_files: u64,
    /// Their bytes.
    pub server_bytes: u64,
}

/// A restore's files, split by the tier that serves their data.
#[derive(Debug, Default)]
pub(super) struct Split {
    /// Files the vault holds every chunk of.
    pub vault: Vec<FetchJob>,
    /// The others.
    pub server: Vec<FetchJob>,
}

/// Splits `files` between `vault` and the server: a file goes to the vault
/// when the vault holds all its chunks. A vault that cannot answer serves
/// nothing (the reason is returned for a warning).
pub(super) async fn split(vault: Option<&Session>, files: &[FileJob]) -> (Split, Option<String>) {
    let jobs: Vec<FetchJob> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (i, f.chunks.clone(), f.size))
        .collect();
    let Some(vault) = vault else {
        return (Split::all_from_server(jobs), None);
    };
    let wanted: Vec<ChunkId> = files
        .iter()
        .flat_map(|f| f.chunks.iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    match crate::backup::missing_chunks(vault, &wanted).await {
        Ok(missing) => (Split::by_holdings(jobs, &missing), None),
        Err(e) => (Split::all_from_server(jobs), Some(e.to_string())),
    }
}

impl Split {
    fn all_from_server(jobs: Vec<FetchJob>) -> Self {
        Split {
            vault: Vec::new(),
            server: jobs,
        }
    }

    /// A file none of whose chunks is `missing` in the vault is the
    /// vault's (a file without data too: there is nothing to fetch).
    fn by_holdings(jobs: Vec<FetchJob>, missing: &HashSet<ChunkId>) -> Self {
        let mut out = Split::default();
        for job in jobs {
            if job.1.iter().any(|c| missing.contains(c)) {
                out.server.push(job);
            } else {
                out.vault.push(job);
            }
        }
        out
    }
}

impl DataSources {
    /// Counts a restored file of `size` bytes, from the vault or not.
    pub(super) fn add(&mut self, from_vault: bool, size: u64) {
        if from_vault {
            self.vault_files += 1;
            self.vault_bytes += size;
        } else {
            self.server_files += 1;
            self.server_bytes += size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId::of(&[n])
    }

    #[test]
    fn a_file_goes_to_the_vault_only_when_it_holds_every_chunk() {
        let jobs = vec![
            (0, vec![id(1), id(2)], 10),
            (1, vec![id(2), id(3)], 20),
            (2, vec![], 0),
        ];
        let missing: HashSet<ChunkId> = [id(3)].into();
        let out = Split::by_holdings(jobs, &missing);
        assert_eq!(out.vault.iter().map(|j| j.0).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(out.server.iter().map(|j| j.0).collect::<Vec<_>>(), [1]);
        let mut sources = DataSources::default();
        for (_, _, size) in &out.vault {
            sources.add(true, *size);
        }
        for (_, _, size) in &out.server {
            sources.add(false, *size);
        }
        assert_eq!(
            sources,
            DataSources {
                vault_files: 2,
                vault_bytes: 10,
                server_files: 1,
                server_bytes: 20
            }
        );
    }
}
