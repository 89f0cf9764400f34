//! Which versions the vault got from a server: the object ids it held after
//! its last complete pull, with the GUID of the server pulled from, kept in
//! `state_dir` (`vault-pulled-<vault GUID>.bin`), where only this client
//! writes, and not in the vault directory.
//!
//! With the record of this client's own writes ([`super::own`]) it says
//! which of the vault's versions this client can vouch for: each id with
//! the digest of the version as the server listed it ([`super::own::digest`]),
//! so a version whose path, attributes or data were changed in the vault
//! since is not vouched for. A push to the server pulled from sends none
//! of these (that server had them, and dropped those it lacks by
//! expiration or deletion); a push to another server (a promoted secondary,
//! a rebuilt primary) sends it those it lacks. Deciding by id rather than
//! by time keeps clocks out of it: a client clock stepped back cannot make
//! an offline backup look pulled, and a server clock ahead cannot make a
//! pulled version look like the vault's own.
//!
//! Format: the magic `TDMPULL3`, the server GUID (16 bytes), then 48 bytes
//! per version: its object id and digest (with its backup time,
//! [`super::own::pulled_digest`]). Replaced atomically
//! (`tandem_os::atomic_file`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tandem_proto::{ObjectId, ServerGuid};

use super::own::Digest;

const MAGIC: &[u8; 8] = b"TDMPULL3";
const ENTRY: usize = 48;

/// The last complete pull into a vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The server pulled from.
    pub server: ServerGuid,
    /// The versions the vault held afterwards, with their digests.
    pub ids: HashMap<ObjectId, Digest>,
}

impl Record {
    /// Whether the vault's version `id`, with digest `digest`, is one this
    /// pull recorded, unchanged.
    #[must_use]
    pub fn has(&self, id: &ObjectId, digest: &Digest) -> bool {
        self.ids.get(id) == Some(digest)
    }
}

/// The record's path for vault `vault`.
#[must_use]
pub fn path(state_dir: &Path, vault: ServerGuid) -> PathBuf {
    state_dir.join(format!("vault-pulled-{}.bin", super::own::hex_of(vault)))
}

/// One record of this format's family: `magic`, a server GUID, then
/// `entry`-byte entries, at most `max_bytes` long. Returns the GUID and the
/// entries, or `None` when there is no record; `advice` follows the file's
/// name in errors.
fn read_record(
    path: &Path,
    magic: &[u8; 8],
    entry: usize,
    max_bytes: u64,
    advice: &str,
) -> Result<Option<(ServerGuid, Vec<u8>)>, String> {
    let bytes = match tandem_os::atomic_file::read_small(path, max_bytes) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}; {advice}", path.display())),
    };
    let damaged = || format!("{} is damaged; {advice}", path.display());
    let body = bytes.strip_prefix(magic.as_slice()).ok_or_else(damaged)?;
    if body.len() < 16 || (body.len() - 16) % entry != 0 {
        return Err(damaged());
    }
    let server = ServerGuid(body[..16].try_into().map_err(|_| damaged())?);
    let mut entries = bytes;
    entries.drain(..magic.len() + 16);
    Ok(Some((server, entries)))
}

/// The last pull into vault `vault`, or `None` when none is recorded.
///
/// # Errors
/// A record that cannot be read or is malformed, naming the file.
pub fn load(state_dir: &Path, vault: ServerGuid) -> Result<Option<Record>, String> {
    let path = path(state_dir, vault);
    let advice = "if it is damaged, remove it: the next sync then pulls again, and reports any active version the server lacks (TDM2137W)";
    // 48 bytes per pulled version: room for 50 million.
    let Some((server, entries)) = read_record(&path, MAGIC, ENTRY, 2400 << 20, advice)? else {
        return Ok(None);
    };
    let ids = entries
        .chunks_exact(ENTRY)
        .map(|raw| {
            let (id, digest) = raw.split_at(16);
            let id = ObjectId::from_slice(id).map_err(|e| e.to_string())?;
            Ok((
                id,
                digest
                    .try_into()
                    .map_err(|_| "a short digest".to_string())?,
            ))
        })
        .collect::<Result<_, String>>()
        .map_err(|e| format!("{} is damaged ({e}); {advice}", path.display()))?;
    Ok(Some(Record { server, ids }))
}

/// The record a client before this one kept in the vault directory itself
/// (`pulled-ids.bin`); only its presence is noted ([`crate::vault::note_legacy_record`]).
pub const LEGACY_FILE: &str = "pulled-ids.bin";

/// Records the versions (ids and digests) vault `vault` holds after a
/// complete pull from `server`.
///
/// # Errors
/// I/O failures, naming the file.
pub fn save(
    state_dir: &Path,
    vault: ServerGuid,
    server: ServerGuid,
    ids: &[(ObjectId, Digest)],
) -> Result<(), String> {
    crate::state_dir::ensure(state_dir).map_err(|e| e.to_string())?;
    let path = path(state_dir, vault);
    let mut bytes = Vec::with_capacity(MAGIC.len() + 16 + ids.len() * ENTRY);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&server.0);
    for (id, digest) in ids {
        bytes.extend_from_slice(&id.0);
        bytes.extend_from_slice(digest);
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
        let ids = [(ObjectId([3; 16]), [5; 32]), (ObjectId([4; 16]), [6; 32])];
        save(dir.path(), vault, server, &ids).unwrap();
        let back = load(dir.path(), vault).unwrap().unwrap();
        assert_eq!(back.server, server);
        assert_eq!(back.ids, ids.into_iter().collect());
        assert!(back.has(&ObjectId([3; 16]), &[5; 32]));
        assert!(!back.has(&ObjectId([3; 16]), &[6; 32]), "changed since");
        assert_eq!(load(dir.path(), ServerGuid([2; 16])).unwrap(), None);
    }

    #[test]
    fn a_truncated_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let vault = ServerGuid([9; 16]);
        save(
            dir.path(),
            vault,
            ServerGuid([1; 16]),
            &[(ObjectId([3; 16]), [5; 32])],
        )
        .unwrap();
        let path = path(dir.path(), vault);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = load(dir.path(), vault).unwrap_err();
        assert!(err.contains("vault-pulled-"), "{err}");
    }
}
