//! Which versions the vault got from a server: the object ids it held after
//! its last complete pull, with the GUID of the server pulled from, kept in
//! `state_dir` (`vault-pulled-<vault GUID>.bin`), where only this client
//! writes, and not in the vault directory.
//!
//! With the record of this client's own writes ([`super::own`]) it says
//! which of the vault's versions this client can vouch for. A push to the
//! server pulled from sends none of these (that server had them, and
//! dropped those it lacks by expiration or deletion); a push to another
//! server (a promoted secondary, a rebuilt primary) sends it those it
//! lacks. Deciding by id rather than by time keeps clocks out of it: a
//! client clock stepped back cannot make an offline backup look pulled,
//! and a server clock ahead cannot make a pulled version look like the
//! vault's own.
//!
//! Format: the magic `TDMPULL1`, the server GUID (16 bytes), then 16 bytes
//! per object id. Replaced atomically (`tandem_os::atomic_file`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tandem_proto::{ObjectId, ServerGuid};

const MAGIC: &[u8; 8] = b"TDMPULL1";

/// The last complete pull into a vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The server pulled from.
    pub server: ServerGuid,
    /// The versions the vault held afterwards.
    pub ids: HashSet<ObjectId>,
}

/// The record's path for vault `vault`.
#[must_use]
pub fn path(state_dir: &Path, vault: ServerGuid) -> PathBuf {
    state_dir.join(format!("vault-pulled-{}.bin", super::own::hex_of(vault)))
}

/// The last pull into vault `vault`, or `None` when none is recorded.
///
/// # Errors
/// A record that cannot be read or is malformed, naming the file.
pub fn load(state_dir: &Path, vault: ServerGuid) -> Result<Option<Record>, String> {
    let path = path(state_dir, vault);
    // 16 bytes per pulled version: room for 100 million.
    let bytes = match tandem_os::atomic_file::read_small(&path, 1600 << 20) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read {}: {e}; if it is damaged, remove it: the next sync then pulls again and keeps what the server lacks",
                path.display()
            ));
        }
    };
    let damaged = || {
        format!(
            "{} is damaged; remove it: the next sync then pulls again and keeps what the server lacks",
            path.display()
        )
    };
    let body = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(damaged)?;
    if body.len() < 16 || (body.len() - 16) % 16 != 0 {
        return Err(damaged());
    }
    let (guid, ids) = body.split_at(16);
    let server = ServerGuid(guid.try_into().map_err(|_| damaged())?);
    Ok(Some(Record {
        server,
        ids: ids
            .chunks_exact(16)
            .map(|raw| ObjectId::from_slice(raw).map_err(|_| damaged()))
            .collect::<Result<_, _>>()?,
    }))
}

/// Records the ids vault `vault` holds after a complete pull from `server`.
///
/// # Errors
/// I/O failures, naming the file.
pub fn save(
    state_dir: &Path,
    vault: ServerGuid,
    server: ServerGuid,
    ids: &[ObjectId],
) -> Result<(), String> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    let path = path(state_dir, vault);
    let mut bytes = Vec::with_capacity(MAGIC.len() + 16 + ids.len() * 16);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&server.0);
    for id in ids {
        bytes.extend_from_slice(&id.0);
    }
    tandem_os::atomic_file::replace(&path, &bytes, Some(0o600))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_with_their_server_per_vault() {
        let dir = tempfile::tempdir().unwrap();
        let vault = ServerGuid([9; 16]);
        let server = ServerGuid([1; 16]);
        assert_eq!(load(dir.path(), vault).unwrap(), None);
        let ids = [ObjectId([3; 16]), ObjectId([4; 16])];
        save(dir.path(), vault, server, &ids).unwrap();
        let back = load(dir.path(), vault).unwrap().unwrap();
        assert_eq!(back.server, server);
        assert_eq!(back.ids, ids.into_iter().collect());
        assert_eq!(load(dir.path(), ServerGuid([2; 16])).unwrap(), None);
    }

    #[test]
    fn a_truncated_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let vault = ServerGuid([9; 16]);
        save(dir.path(), vault, ServerGuid([1; 16]), &[ObjectId([3; 16])]).unwrap();
        let path = path(dir.path(), vault);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = load(dir.path(), vault).unwrap_err();
        assert!(err.contains("vault-pulled-"), "{err}");
    }
}
