//! What this client wrote to its vault itself: the ids of the versions it
//! stored there and of those it made inactive there, kept in `state_dir`
//! (`vault-own-<vault GUID>.bin`), beside the records of its pulls
//! ([`super::pulled`]).
//!
//! A push sends a server only versions (and deactivations) it can vouch
//! for: those in this record, or those a pull brought from another server.
//! The vault directory is not asked: whatever its owner, root, or another
//! machine writing a share puts there would otherwise reach the server as
//! this node's backups. A version the vault holds with no such record is
//! reported, kept in the vault, and sent only when the operator says so
//! (`tandem set vault --resend`, which records every version the vault
//! holds here).
//!
//! The ids come back from the vault's commit, so they are recorded just
//! after it and before the command reports the versions backed up. A
//! client killed between the two leaves versions it never acknowledged:
//! the next backup stores those files again, and the versions left over
//! are reported like any other the record lacks.
//!
//! Format: the magic `TDMOWN01`, then 16 bytes per id, appended and synced
//! after each commit. A record cut short by a crash loses only its last,
//! unacknowledged, partial id. Cleared when a pull completes: the vault is
//! then a copy of the server, and the pull's record names what it holds.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tandem_proto::{ObjectId, ServerGuid};

const MAGIC: &[u8; 8] = b"TDMOWN01";
/// 16 bytes per id: room for 100 million writes between two pulls.
const MAX_BYTES: u64 = 1600 << 20;

/// The record's path for vault `vault`.
#[must_use]
pub fn path(state_dir: &Path, vault: ServerGuid) -> PathBuf {
    state_dir.join(format!("vault-own-{}.bin", hex_of(vault)))
}

/// A vault GUID as it appears in a record's file name.
#[must_use]
pub fn hex_of(vault: ServerGuid) -> String {
    vault.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ids recorded for vault `vault` (none when there is no record).
///
/// # Errors
/// A record that cannot be read or does not start as one, naming the file.
pub fn load(state_dir: &Path, vault: ServerGuid) -> Result<HashSet<ObjectId>, String> {
    let path = path(state_dir, vault);
    let bytes = match tandem_os::atomic_file::read_small(&path, MAX_BYTES) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let body = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(|| {
        format!(
            "{} is not a record of this client's vault writes; move it away, then `tandem set vault --resend` if the vault's versions are this node's",
            path.display()
        )
    })?;
    // A trailing partial id is an append a crash cut short: never
    // acknowledged, so left out.
    Ok(body
        .chunks_exact(16)
        .filter_map(|raw| ObjectId::from_slice(raw).ok())
        .collect())
}

/// Appends `ids` to the record for vault `vault`, durably, before the write
/// that made them is acknowledged.
///
/// # Errors
/// I/O failures, naming the file.
pub fn append(state_dir: &Path, vault: ServerGuid, ids: &[ObjectId]) -> Result<(), String> {
    if ids.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(state_dir)
        .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    let path = path(state_dir, vault);
    let failed = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .map_err(failed)?;
    let new = file.metadata().map_err(failed)?.len() == 0;
    let mut bytes = Vec::with_capacity(MAGIC.len() + ids.len() * 16);
    if new {
        bytes.extend_from_slice(MAGIC);
    }
    for id in ids {
        bytes.extend_from_slice(&id.0);
    }
    file.write_all(&bytes).map_err(failed)?;
    file.sync_data().map_err(failed)?;
    if new {
        // The new name itself must survive a crash too.
        std::fs::File::open(state_dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

/// Forgets the record for vault `vault` (after a complete pull).
///
/// # Errors
/// I/O failures other than a record that is not there.
pub fn clear(state_dir: &Path, vault: ServerGuid) -> Result<(), String> {
    let path = path(state_dir, vault);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

/// The ids a commit's reply names (stored and made inactive); an id that is
/// not 16 bytes is an error, since the record must not miss one.
///
/// # Errors
/// A malformed id in the reply.
pub fn ids_of(reply: &tandem_proto::pb::CommitObjectsResponse) -> Result<Vec<ObjectId>, String> {
    reply
        .stored_ids
        .iter()
        .chain(&reply.deactivated_ids)
        .map(|raw| {
            ObjectId::from_slice(raw)
                .map_err(|e| format!("the vault's commit named a malformed version id: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_ids_read_back_per_vault_and_clear_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let vault = ServerGuid([1; 16]);
        assert!(load(&state, vault).unwrap().is_empty());
        append(&state, vault, &[ObjectId([3; 16])]).unwrap();
        append(&state, vault, &[ObjectId([4; 16]), ObjectId([5; 16])]).unwrap();
        append(&state, vault, &[]).unwrap();
        let back = load(&state, vault).unwrap();
        assert_eq!(back.len(), 3);
        assert!(back.contains(&ObjectId([4; 16])));
        assert!(load(&state, ServerGuid([2; 16])).unwrap().is_empty());
        clear(&state, vault).unwrap();
        assert!(load(&state, vault).unwrap().is_empty());
        clear(&state, vault).unwrap();
    }

    #[test]
    fn an_append_cut_short_loses_only_its_partial_id() {
        let dir = tempfile::tempdir().unwrap();
        let vault = ServerGuid([1; 16]);
        append(dir.path(), vault, &[ObjectId([3; 16]), ObjectId([4; 16])]).unwrap();
        let file = path(dir.path(), vault);
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 5]).unwrap();
        assert_eq!(
            load(dir.path(), vault).unwrap(),
            HashSet::from([ObjectId([3; 16])])
        );
    }

    #[test]
    fn a_file_that_is_not_a_record_or_is_a_link_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let vault = ServerGuid([1; 16]);
        let file = path(dir.path(), vault);
        std::fs::write(&file, b"something else entirely").unwrap();
        let err = load(dir.path(), vault).unwrap_err();
        assert!(err.contains("vault-own-"), "{err}");
        std::fs::remove_file(&file).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        assert!(append(dir.path(), vault, &[ObjectId([3; 16])]).is_err());
        assert!(load(dir.path(), vault).is_err());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"");
    }
}
