//! The node replication table (TSM NRTABLEPATH): per server GUID and
//! filespace, the time of the last backup that server acknowledged. In
//! failover, comparing it with the secondary's replicated backup times tells
//! whether the replica has the newest backup.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use tandem_proto::ServerGuid;

use crate::logon::failover::SessionMode;

/// The `client_state` keys: the mode of the last session and the primary's GUID.
const LAST_MODE: &str = "last_mode";
const PRIMARY_GUID: &str = "primary_guid";

/// The table in `state_dir/nrtable.db`.
#[derive(Debug)]
pub struct NodeReplicationTable {
    conn: Connection,
    path: PathBuf,
}

impl NodeReplicationTable {
    /// Opens (creating) the table in `state_dir`.
    ///
    /// # Errors
    /// I/O or SQLite errors, with the path.
    pub fn open(state_dir: &Path) -> Result<Self, String> {
        use std::os::unix::fs::OpenOptionsExt;
        crate::state_dir::ensure(state_dir).map_err(|e| e.to_string())?;
        let path = state_dir.join("nrtable.db");
        // Created 0600 before SQLite opens it; its journal files take the same mode.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let fail = |e: rusqlite::Error| format!("{}: {e}", path.display());
        let conn = Connection::open(&path).map_err(fail)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(fail)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS backups (
               server_guid    TEXT NOT NULL,
               node           TEXT NOT NULL,
               filespace      TEXT NOT NULL,
               last_backup_ns INTEGER NOT NULL,
               PRIMARY KEY (server_guid, node, filespace));
             CREATE TABLE IF NOT EXISTS client_state (
               key   TEXT PRIMARY KEY,
               value TEXT NOT NULL);",
        )
        .map_err(fail)?;
        Ok(NodeReplicationTable { conn, path })
    }

    /// Records a backup the server acknowledged.
    ///
    /// # Errors
    /// SQLite errors, with the path.
    pub fn record(
        &self,
        server_guid: ServerGuid,
        node: &str,
        filespace: &str,
        at_ns: i64,
    ) -> Result<(), String> {
        self.conn
            .execute(
                "INSERT INTO backups (server_guid, node, filespace, last_backup_ns) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (server_guid, node, filespace) DO UPDATE SET last_backup_ns = excluded.last_backup_ns",
                params![server_guid.to_string(), node, filespace, at_ns],
            )
            .map(drop)
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// The last acknowledged backup of a filespace on a server.
    ///
    /// # Errors
    /// SQLite errors, with the path.
    pub fn last_backup(
        &self,
        server_guid: ServerGuid,
        node: &str,
        filespace: &str,
    ) -> Result<Option<i64>, String> {
        self.conn
            .query_row(
                "SELECT last_backup_ns FROM backups WHERE server_guid = ?1 AND node = ?2 AND filespace = ?3",
                params![server_guid.to_string(), node, filespace],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// The mode of the last session; normal when none is recorded (or the
    /// table cannot be read: then no failback message is owed either).
    pub fn last_mode(&self) -> SessionMode {
        match self.setting(LAST_MODE).ok().flatten().as_deref() {
            Some("failover") => SessionMode::Failover,
            _ => SessionMode::Normal,
        }
    }

    /// The primary's GUID as of the last normal session.
    pub fn primary_guid(&self) -> Option<ServerGuid> {
        self.setting(PRIMARY_GUID).ok().flatten()?.parse().ok()
    }

    /// Records a session: its mode, and for a normal one the primary's GUID.
    ///
    /// # Errors
    /// SQLite errors, with the path.
    pub fn record_session(&self, mode: SessionMode, guid: ServerGuid) -> Result<(), String> {
        self.set_setting(LAST_MODE, mode.name())?;
        if mode == SessionMode::Normal {
            self.set_setting(PRIMARY_GUID, &guid.to_string())?;
        }
        Ok(())
    }

    fn setting(&self, key: &str) -> Result<Option<String>, String> {
        self.conn
            .query_row(
                "SELECT value FROM client_state WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn set_setting(&self, key: &str, value: &str) -> Result<(), String> {
        self.conn
            .execute(
                "INSERT INTO client_state (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(drop)
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// Every filespace recorded for a server and node, with its time.
    ///
    /// # Errors
    /// SQLite errors, with the path.
    pub fn all(&self, server_guid: ServerGuid, node: &str) -> Result<Vec<(String, i64)>, String> {
        let mut stmt = self
            .conn
            .prepare("SELECT filespace, last_backup_ns FROM backups WHERE server_guid = ?1 AND node = ?2 ORDER BY filespace")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map(params![server_guid.to_string(), node], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| e.to_string())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_reads_back_per_server_and_filespace() {
        let dir = tempfile::tempdir().unwrap();
        let t = NodeReplicationTable::open(dir.path()).unwrap();
        let (g1, g2) = (ServerGuid([1; 16]), ServerGuid([2; 16]));
        t.record(g1, "ALICE", "/home", 5).unwrap();
        t.record(g1, "ALICE", "/home", 9).unwrap();
        t.record(g2, "ALICE", "/home", 1).unwrap();
        assert_eq!(t.last_backup(g1, "ALICE", "/home").unwrap(), Some(9));
        assert_eq!(t.last_backup(g1, "ALICE", "/srv").unwrap(), None);
        assert_eq!(t.all(g2, "ALICE").unwrap(), vec![("/home".to_string(), 1)]);
    }

    #[test]
    fn sessions_are_remembered_with_the_primary_of_the_last_normal_one() {
        let dir = tempfile::tempdir().unwrap();
        let t = NodeReplicationTable::open(dir.path()).unwrap();
        assert_eq!(t.last_mode(), SessionMode::Normal);
        assert_eq!(t.primary_guid(), None);
        t.record_session(SessionMode::Normal, ServerGuid([1; 16]))
            .unwrap();
        t.record_session(SessionMode::Failover, ServerGuid([2; 16]))
            .unwrap();
        assert_eq!(t.last_mode(), SessionMode::Failover);
        assert_eq!(t.primary_guid(), Some(ServerGuid([1; 16])));
    }
}
