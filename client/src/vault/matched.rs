//! When the vault last matched the server exactly, by the server's change
//! token for the node, kept in `state_dir`
//! (`vault-match-<vault GUID>.json`), where only this client writes.
//!
//! Without it, the sync at the end of every command lists every version of
//! the node on both sides to find what changed: on a node of 86,666
//! versions an unchanged incremental took 1.2 s with the vault against
//! 0.45 s without, and ten times the memory. The server draws a new random
//! token in the transaction of every change to the node's versions; a sync
//! that ends with the vault a clean copy of the server records the token it
//! read before listing, and the vault's revision and own change token
//! after. The next command's sync asks for the two tokens alone: the same
//! server token, the same server, the vault's revision and token unchanged
//! (nothing wrote to it since, nor was it rolled back) and nothing of its
//! own to send, and there is nothing to move.
//!
//! Any full sync forgets the record before it starts, so a sync cut short
//! never leaves one behind; a record older than [`FULL_SYNC_AFTER_NS`] is
//! not trusted, so the two sides are compared in full at least once a day
//! whatever the tokens say.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tandem_proto::ServerGuid;

/// A day: after it the next sync compares every version again.
pub const FULL_SYNC_AFTER_NS: i64 = 24 * 3600 * 1_000_000_000;
/// Far more than the record needs.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// The vault matched this server's state at this token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    /// The server's GUID.
    pub server_guid: String,
    /// Its change token for the node, read before the listing.
    pub token: i64,
    /// The vault's revision after the sync.
    pub revision: u64,
    /// The vault's own change token after the sync (its store draws one
    /// as a server's does): a vault directory rolled back to a snapshot
    /// with the same revision, taken during a pull, shows another.
    #[serde(default)]
    pub vault_token: i64,
    /// When the sync ended (client clock, Unix ns).
    pub at_ns: i64,
}

impl Match {
    /// Whether the vault, now at `now` (its revision and token), still
    /// matches `server`, whose token is `token`, at `now_ns`.
    #[must_use]
    pub fn holds(&self, server: ServerGuid, token: i64, now: (u64, i64), now_ns: i64) -> bool {
        token != 0
            && self.token == token
            && self.server_guid == server.to_string()
            && (self.revision, self.vault_token) == now
            && (0..FULL_SYNC_AFTER_NS).contains(&(now_ns - self.at_ns))
    }
}

/// The record's path for vault `vault`.
#[must_use]
pub fn path(state_dir: &Path, vault: ServerGuid) -> PathBuf {
    state_dir.join(format!("vault-match-{}.json", super::own::hex_of(vault)))
}

/// The record for vault `vault`; `None` when there is none or it cannot be
/// read (the sync then compares everything, as without one).
#[must_use]
pub fn load(state_dir: &Path, vault: ServerGuid) -> Option<Match> {
    let bytes =
        tandem_os::atomic_file::read_small(&path(state_dir, vault), MAX_RECORD_BYTES).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Records `matched` for vault `vault`.
///
/// # Errors
/// I/O failures, naming the file.
pub fn save(state_dir: &Path, vault: ServerGuid, matched: &Match) -> Result<(), String> {
    crate::state_dir::ensure(state_dir).map_err(|e| e.to_string())?;
    let path = path(state_dir, vault);
    let bytes = serde_json::to_vec_pretty(matched).map_err(|e| e.to_string())?;
    tandem_os::atomic_file::replace(&path, &bytes, Some(0o600))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Forgets the record for vault `vault`, before a sync that changes it.
///
/// # Errors
/// A record that exists and cannot be removed, naming the file: the sync
/// must not go on, or a later command could trust it.
pub fn forget(state_dir: &Path, vault: ServerGuid) -> Result<(), String> {
    let path = path(state_dir, vault);
    tandem_os::atomic_file::remove_if_present(&path)
        .map_err(|e| format!("cannot remove {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_match_holds_only_for_the_same_server_tokens_and_revision_within_a_day() {
        let server = ServerGuid([1; 16]);
        let m = Match {
            server_guid: server.to_string(),
            token: 42,
            revision: 7,
            vault_token: 9,
            at_ns: 1_000,
        };
        assert!(m.holds(server, 42, (7, 9), 2_000));
        assert!(!m.holds(server, 43, (7, 9), 2_000), "the server changed");
        assert!(!m.holds(server, 42, (8, 9), 2_000), "the vault was written");
        assert!(
            !m.holds(server, 42, (7, 10), 2_000),
            "the vault rolled back"
        );
        let other = ServerGuid([2; 16]);
        assert!(!m.holds(other, 42, (7, 9), 2_000), "another server");
        let a_day_later = 1_000 + FULL_SYNC_AFTER_NS;
        assert!(!m.holds(server, 42, (7, 9), a_day_later), "a day old");
        assert!(!m.holds(server, 42, (7, 9), 500), "a clock stepped back");
        let unknown = Match { token: 0, ..m };
        assert!(!unknown.holds(server, 0, (7, 9), 2_000), "no tokens");
    }

    #[test]
    fn a_record_reads_back_and_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let vault = ServerGuid([9; 16]);
        assert_eq!(load(dir.path(), vault), None);
        let m = Match {
            server_guid: ServerGuid([1; 16]).to_string(),
            token: -5,
            revision: 3,
            vault_token: 4,
            at_ns: 10,
        };
        save(dir.path(), vault, &m).unwrap();
        assert_eq!(load(dir.path(), vault), Some(m));
        forget(dir.path(), vault).unwrap();
        assert_eq!(load(dir.path(), vault), None);
        forget(dir.path(), vault).expect("nothing to forget");
        std::fs::write(path(dir.path(), vault), b"not json").unwrap();
        assert_eq!(load(dir.path(), vault), None, "unreadable: not trusted");
    }
}
