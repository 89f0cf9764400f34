//! Which versions the vault got from the server: the object ids it held
//! after its last complete pull, with the GUID of the server pulled from
//! (`pulled-ids.bin` in the vault directory).
//!
//! A push sends the server only the vault's *own* versions, those not in
//! this set. Deciding by id rather than by time keeps clocks out of it: a
//! client clock stepped back cannot make an offline backup look pulled (and
//! a pull would then delete it), and a server clock ahead cannot make a
//! pulled version look like the vault's own (and a push would resurrect it
//! after the server expired it). A record of another server (a promoted
//! secondary, a rebuilt primary) counts as none: every version the new
//! server lacks is then sent to it before anything is pulled.
//!
//! Format: the magic `TDMPULL1`, the server GUID (16 bytes), then 16 bytes
//! per object id. Replaced atomically (`tandem_os::atomic_file`).

use std::collections::HashSet;
use std::path::Path;

use tandem_proto::{ObjectId, ServerGuid};

/// The record's file name in the vault directory.
pub const FILE: &str = "pulled-ids.bin";

const MAGIC: &[u8; 8] = b"TDMPULL1";

/// The ids pulled from `server`, or `None` when no pull from it is recorded.
///
/// # Errors
/// A record that cannot be read or is malformed, naming the file.
pub fn load(dir: &Path, server: ServerGuid) -> Result<Option<HashSet<ObjectId>>, String> {
    let path = dir.join(FILE);
    // 16 bytes per pulled version: room for 100 million.
    let bytes = match tandem_os::atomic_file::read_small(&path, 1600 << 20) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read {}: {e}; if it is damaged, remove it: the next sync then sends the server every version it lacks before pulling",
                path.display()
            ));
        }
    };
    let damaged = || {
        format!(
            "{} is damaged; remove it: the next sync then sends the server every version it lacks before pulling",
            path.display()
        )
    };
    let body = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(damaged)?;
    if body.len() < 16 || (body.len() - 16) % 16 != 0 {
        return Err(damaged());
    }
    let (guid, ids) = body.split_at(16);
    if guid != server.0.as_slice() {
        return Ok(None);
    }
    Ok(Some(
        ids.chunks_exact(16)
            .map(|raw| ObjectId::from_slice(raw).map_err(|_| damaged()))
            .collect::<Result<_, _>>()?,
    ))
}

/// Records the ids the vault holds after a complete pull from `server`.
///
/// # Errors
/// I/O failures, naming the file.
pub fn save(dir: &Path, server: ServerGuid, ids: &[ObjectId]) -> Result<(), String> {
    let path = dir.join(FILE);
    let mut bytes = Vec::with_capacity(MAGIC.len() + 16 + ids.len() * 16);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&server.0);
    for id in ids {
        bytes.extend_from_slice(&id.0);
    }
    tandem_os::atomic_file::replace(&path, &bytes, None)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_for_the_same_server_and_not_for_another() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerGuid([1; 16]);
        assert_eq!(load(dir.path(), server).unwrap(), None);
        let ids = [ObjectId([3; 16]), ObjectId([4; 16])];
        save(dir.path(), server, &ids).unwrap();
        let back = load(dir.path(), server).unwrap().unwrap();
        assert_eq!(back, ids.into_iter().collect());
        assert_eq!(load(dir.path(), ServerGuid([2; 16])).unwrap(), None);
    }

    #[test]
    fn a_truncated_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerGuid([1; 16]);
        save(dir.path(), server, &[ObjectId([3; 16])]).unwrap();
        let path = dir.path().join(FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = load(dir.path(), server).unwrap_err();
        assert!(err.contains(FILE), "{err}");
    }
}
