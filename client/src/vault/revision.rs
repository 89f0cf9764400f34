//! Second-installation detection: the vault carries a revision number,
//! raised before every write to it, and this client keeps the last revision
//! it wrote in `state_dir/vault-revision.json`. When the two disagree,
//! someone else wrote to the vault since (another machine backing up with
//! the same node name and vault) or this client's state is older than the
//! vault (a restored `state_dir`): the client stops and writes nothing until
//! the operator, having checked, accepts the vault's state
//! (`tandem set vault --accept`).
//!
//! A raise records the new number here first and in the vault second. A
//! crash between the two leaves this record one ahead of the vault, which is
//! recognised as this client's own interrupted raise. The record keeps one
//! number per vault (by the vault store's GUID), so one `state_dir` serves
//! several nodes, each with its own vault.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tandem_proto::ServerGuid;

use super::status::SyncStatus;

/// The record's file name in `state_dir`.
pub const FILE: &str = "vault-revision.json";
/// Far more than a record of a few numbers needs.
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// The last revision this client wrote to each vault, by vault GUID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// Vault store GUID → revision.
    pub vaults: std::collections::BTreeMap<String, u64>,
}

impl Recorded {
    /// The revision recorded for the vault `guid`.
    #[must_use]
    pub fn of(&self, guid: ServerGuid) -> Option<u64> {
        self.vaults.get(&guid.to_string()).copied()
    }
}

/// How this client's record and the vault's revision compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// They agree (or the vault is new): this client may write.
    Agrees,
    /// They disagree: stop and name both.
    Differs {
        /// The vault's revision.
        vault: u64,
        /// This client's, or `None` when it has no record of this vault.
        recorded: Option<u64>,
    },
}

/// Compares the vault's revision with this client's record of it (`mine`).
#[must_use]
pub fn judge(vault_revision: u64, mine: Option<u64>) -> Verdict {
    let agrees = match mine {
        None => vault_revision == 0,
        Some(r) => vault_revision == r || vault_revision.checked_add(1) == Some(r),
    };
    if agrees {
        Verdict::Agrees
    } else {
        Verdict::Differs {
            vault: vault_revision,
            recorded: mine,
        }
    }
}

/// This client's record (empty when there is none).
///
/// # Errors
/// A record that exists but cannot be read or parsed.
pub fn load(state_dir: &Path) -> Result<Recorded, String> {
    let path = state_dir.join(FILE);
    match tandem_os::atomic_file::read_small(&path, MAX_RECORD_BYTES) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{} is damaged ({e}); check the vault with `tandem query vault`, then `tandem set vault --accept`",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Recorded::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Sets the revision recorded for vault `guid`, keeping the others.
fn record(state_dir: &Path, guid: ServerGuid, revision: u64) -> Result<(), String> {
    let mut all = load(state_dir)?;
    all.vaults.insert(guid.to_string(), revision);
    save(state_dir, &all)
}

/// Stores this client's record durably and atomically.
///
/// # Errors
/// I/O failures, naming the file.
pub fn save(state_dir: &Path, record: &Recorded) -> Result<(), String> {
    crate::state_dir::ensure(state_dir).map_err(|e| e.to_string())?;
    let path = state_dir.join(FILE);
    let text = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    tandem_os::atomic_file::replace(&path, &text, None)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Raises the revision before a write to the vault: here first, then in
/// the vault's record. Returns the new revision.
///
/// # Errors
/// Either record cannot be read or written.
pub fn raise(vault_dir: &Path, state_dir: &Path, guid: ServerGuid) -> Result<u64, String> {
    let mut status = SyncStatus::load(vault_dir)?;
    // The vault's record is read from a directory others may reach; a
    // revision at the very top is not one this client could have written.
    let next = status.revision.checked_add(1).ok_or_else(|| {
        format!(
            "the vault's revision ({}) is at its limit, which no client writes; check the vault, then `tandem set vault --accept`, or give it a new vault_dir",
            status.revision
        )
    })?;
    record(state_dir, guid, next)?;
    status.revision = next;
    status.save(vault_dir)?;
    Ok(next)
}

/// Accepts the vault's current state as this client's (after the operator
/// checked it): records its revision here.
///
/// # Errors
/// Either record cannot be read or written.
pub fn accept(vault_dir: &Path, state_dir: &Path, guid: ServerGuid) -> Result<u64, String> {
    let status = SyncStatus::load(vault_dir)?;
    record(state_dir, guid, status.revision)?;
    Ok(status.revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUID: ServerGuid = ServerGuid([7; 16]);

    #[test]
    fn a_new_vault_agrees_with_a_client_that_never_used_it() {
        assert_eq!(judge(0, None), Verdict::Agrees);
    }

    #[test]
    fn a_used_vault_the_client_has_no_record_of_differs() {
        assert_eq!(
            judge(3, None),
            Verdict::Differs {
                vault: 3,
                recorded: None
            }
        );
    }

    #[test]
    fn equal_revisions_agree_and_an_interrupted_raise_is_the_clients_own() {
        assert_eq!(judge(4, Some(4)), Verdict::Agrees);
        assert_eq!(judge(4, Some(5)), Verdict::Agrees);
    }

    #[test]
    fn a_vault_written_by_someone_else_or_an_older_record_differs() {
        assert!(matches!(judge(6, Some(4)), Verdict::Differs { .. }));
        assert!(matches!(judge(2, Some(4)), Verdict::Differs { .. }));
    }

    #[test]
    fn a_raise_reaches_both_records_and_accept_takes_the_vaults() {
        let vault = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        raise(vault.path(), state.path(), GUID).unwrap();
        raise(vault.path(), state.path(), GUID).unwrap();
        assert_eq!(SyncStatus::load(vault.path()).unwrap().revision, 2);
        assert_eq!(load(state.path()).unwrap().of(GUID), Some(2));
        let other_state = tempfile::tempdir().unwrap();
        assert_eq!(accept(vault.path(), other_state.path(), GUID).unwrap(), 2);
        assert_eq!(load(other_state.path()).unwrap().of(GUID), Some(2));
    }

    #[test]
    fn one_state_dir_keeps_a_revision_per_vault() {
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let state = tempfile::tempdir().unwrap();
        let other = ServerGuid([9; 16]);
        raise(first.path(), state.path(), GUID).unwrap();
        raise(second.path(), state.path(), other).unwrap();
        raise(second.path(), state.path(), other).unwrap();
        let all = load(state.path()).unwrap();
        assert_eq!(all.of(GUID), Some(1));
        assert_eq!(all.of(other), Some(2));
        assert_eq!(judge(1, all.of(GUID)), Verdict::Agrees);
    }
}
