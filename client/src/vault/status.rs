//! The vault's synchronisation record, kept in the vault directory beside
//! the store (`sync-state.json`): when it last matched the server, and how
//! the last sync ended. It travels with the vault, so a vault moved to
//! another directory keeps its history.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The record's file name in the vault directory.
pub const FILE: &str = "sync-state.json";
/// Far more than the record needs.
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// How the vault stands against the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncStatus {
    /// The vault's revision for the node, raised before every write to it
    /// (see [`super::revision`]).
    pub revision: u64,
    /// Start of the last pull that completed (client clock, Unix ns): the
    /// vault held exactly the server's versions then (which ones is in
    /// [`super::pulled`]). 0: never.
    pub pulled_at_ns: i64,
    /// The server it last synchronised with.
    pub server: String,
    /// That server's GUID.
    pub server_guid: String,
    /// When the last sync ended (Unix ns), 0 if none ran.
    pub last_sync_ns: i64,
    /// Why the last sync failed; empty when it succeeded.
    pub last_error: String,
    /// Since when syncs have failed (Unix ns); 0 when the last succeeded.
    pub failing_since_ns: i64,
    /// A command wrote to the vault alone (no server took it) and the
    /// server has not received that yet. Set *before* such a write, so a
    /// crash during it still leaves it set; cleared by a successful push.
    /// While set, the vault is pushed before any command reaches the server,
    /// so the server never takes a newer backup before the vault's older one.
    pub offline_writes: bool,
    /// The server changed (a push reached it, or a command ran there) and
    /// no pull has made the vault a copy of it since.
    pub pull_pending: bool,
    /// Versions were removed from the vault outside a pull (a client's
    /// `delete backup`); the next sync frees their space.
    pub reclaim_pending: bool,
}

impl SyncStatus {
    /// Records that the vault matched server `name` (GUID `guid`) exactly
    /// as of `at_ns` (when the pull started, or when the tokens were read):
    /// nothing is pending, the last sync succeeded now.
    pub fn matched(&mut self, name: &str, guid: &str, at_ns: i64) {
        self.pulled_at_ns = at_ns;
        self.offline_writes = false;
        self.pull_pending = false;
        self.server = name.to_string();
        self.server_guid = guid.to_string();
        self.last_sync_ns = crate::db::now_ns();
        self.last_error.clear();
        self.failing_since_ns = 0;
    }

    /// The record in `dir`; the default (never synchronised) when there is
    /// none yet.
    ///
    /// # Errors
    /// A record that exists but cannot be read or parsed.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join(FILE);
        match tandem_os::atomic_file::read_small(&path, MAX_RECORD_BYTES) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{} is damaged ({e}); move it aside to start over: the next sync rebuilds it",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SyncStatus::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the record durably and atomically: a crash leaves the old
    /// record or the new one.
    ///
    /// # Errors
    /// I/O failures, naming the file.
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let path = dir.join(FILE);
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        tandem_os::atomic_file::replace(&path, &text, None)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Whether the vault is not yet a copy of the server: never
    /// synchronised, its last sync failed, or a change has not reached it.
    /// Such a vault is synchronised after any command on the server, a
    /// read too, not only after the next write.
    #[must_use]
    pub fn behind(&self) -> bool {
        self.last_sync_ns == 0
            || !self.last_error.is_empty()
            || self.offline_writes
            || self.pull_pending
    }

    /// The state word `query vault` shows.
    #[must_use]
    pub fn state(&self) -> &'static str {
        if self.last_sync_ns == 0 {
            "never synchronised"
        } else if !self.last_error.is_empty() {
            "failed"
        } else if self.offline_writes || self.pull_pending {
            "synchronizing"
        } else {
            "synchronized"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_record_reads_as_never_synchronised_and_a_saved_one_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let none = SyncStatus::load(dir.path()).unwrap();
        assert_eq!(none.state(), "never synchronised");
        let status = SyncStatus {
            pulled_at_ns: 5,
            server: "PRIMARY".into(),
            last_sync_ns: 7,
            ..SyncStatus::default()
        };
        status.save(dir.path()).unwrap();
        assert_eq!(SyncStatus::load(dir.path()).unwrap(), status);
        assert_eq!(status.state(), "synchronized");
        assert!(!status.behind());
        assert!(none.behind());
        let failed = SyncStatus {
            last_error: "disk full".into(),
            ..status.clone()
        };
        assert!(failed.behind());
        let pending = SyncStatus {
            pull_pending: true,
            ..status
        };
        assert!(pending.behind());
    }

    #[test]
    fn a_damaged_record_is_an_error_that_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let err = SyncStatus::load(dir.path()).unwrap_err();
        assert!(err.contains(FILE), "{err}");
    }
}
