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
//! recognised as this client's own interrupted raise.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tandem_proto::ServerGuid;

use super::status::SyncStatus;

/// The record's file name in `state_dir`.
pub const FILE: &str = "vault-revision.json";

/// The last revision this client wrote to a vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// The vault store's GUID, so that another vault is never compared with it.
    pub vault: String,
    /// The revision.
    pub revision: u64,
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

/// Compares the vault's revision with this client's record of it.
#[must_use]
pub fn judge(vault_revision: u64, recorded: Option<&Recorded>, guid: ServerGuid) -> Verdict {
    let mine = recorded
        .filter(|r| r.vault == guid.to_string())
        .map(|r| r.revision);
    let agrees = match mine {
        None => vault_revision == 0,
        Some(r) => vault_revision == r || vault_revision + 1 == r,
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

/// This client's record, if any.
///
/// # Errors
/// A record that exists but cannot be read or parsed.
pub fn load(state_dir: &Path) -> Result<Option<Recorded>, String> {
    let path = state_dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "{} is damaged ({e}); check the vault with `tandem query vault`, then `tandem set vault --accept`",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Stores this client's record durably (temporary file, fsync, rename).
///
/// # Errors
/// I/O failures, naming the file.
pub fn save(state_dir: &Path, record: &Recorded) -> Result<(), String> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    let path = state_dir.join(FILE);
    let temp = state_dir.join(format!(".{FILE}.tmp"));
    let text = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    std::fs::File::create(&temp)
        .and_then(|mut f| f.write_all(&text).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&temp, &path))
        .and_then(|()| std::fs::File::open(state_dir).and_then(|d| d.sync_all()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Raises the revision before a write to the vault: here first, then in
/// the vault's record. Returns the new revision.
///
/// # Errors
/// Either record cannot be read or written.
pub fn raise(vault_dir: &Path, state_dir: &Path, guid: ServerGuid) -> Result<u64, String> {
    let mut status = SyncStatus::load(vault_dir)?;
    let next = status.revision + 1;
    save(
        state_dir,
        &Recorded {
            vault: guid.to_string(),
            revision: next,
        },
    )?;
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
    save(
        state_dir,
        &Recorded {
            vault: guid.to_string(),
            revision: status.revision,
        },
    )?;
    Ok(status.revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUID: ServerGuid = ServerGuid([7; 16]);

    fn mine(revision: u64) -> Recorded {
        Recorded {
            vault: GUID.to_string(),
            revision,
        }
    }

    #[test]
    fn a_new_vault_agrees_with_a_client_that_never_used_it() {
        assert_eq!(judge(0, None, GUID), Verdict::Agrees);
    }

    #[test]
    fn a_used_vault_the_client_has_no_record_of_differs() {
        assert_eq!(
            judge(3, None, GUID),
            Verdict::Differs {
                vault: 3,
                recorded: None
            }
        );
    }

    #[test]
    fn equal_revisions_agree_and_an_interrupted_raise_is_the_clients_own() {
        assert_eq!(judge(4, Some(&mine(4)), GUID), Verdict::Agrees);
        assert_eq!(judge(4, Some(&mine(5)), GUID), Verdict::Agrees);
    }

    #[test]
    fn a_vault_written_by_someone_else_or_an_older_record_differs() {
        assert!(matches!(
            judge(6, Some(&mine(4)), GUID),
            Verdict::Differs { .. }
        ));
        assert!(matches!(
            judge(2, Some(&mine(4)), GUID),
            Verdict::Differs { .. }
        ));
    }

    #[test]
    fn a_record_of_another_vault_counts_as_none() {
        let other = Recorded {
            vault: ServerGuid([9; 16]).to_string(),
            revision: 3,
        };
        assert_eq!(judge(0, Some(&other), GUID), Verdict::Agrees);
        assert!(matches!(
            judge(3, Some(&other), GUID),
            Verdict::Differs { recorded: None, .. }
        ));
    }

    #[test]
    fn a_raise_reaches_both_records_and_accept_takes_the_vaults() {
        let vault = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        raise(vault.path(), state.path(), GUID).unwrap();
        raise(vault.path(), state.path(), GUID).unwrap();
        assert_eq!(SyncStatus::load(vault.path()).unwrap().revision, 2);
        assert_eq!(load(state.path()).unwrap(), Some(mine(2)));
        let other_state = tempfile::tempdir().unwrap();
        assert_eq!(accept(vault.path(), other_state.path(), GUID).unwrap(), 2);
        assert_eq!(load(other_state.path()).unwrap(), Some(mine(2)));
    }
}
