//! Nodes being recovered from their replica (`recover node`): the
//! `recoveries` table and the node's mode while it is there.

use rusqlite::{OptionalExtension, params};

use super::Catalog;
use crate::error::{CatalogError, ServerError};
use crate::model::ReplMode;

impl Catalog {
    /// Marks node `name` as being recovered from server `source` (`recover
    /// node`): a node this server does not hold is created by `source` when
    /// it sends it; a node already held for recovery from `source` stays so
    /// (a re-run). A node of this server's own that is not held is refused:
    /// it has not been lost, and a recovery would roll its versions' states
    /// back to the replica's.
    ///
    /// # Errors
    /// [`ServerError::FailedPrecondition`] for a node of this server's own
    /// that is not held, another server's replica, or a recovery from
    /// another server; SQLite errors.
    pub fn begin_recovery(&self, name: &str, source: &str, now_ns: i64) -> Result<(), ServerError> {
        self.hold_for_recovery(name, source, now_ns, false)
    }

    /// Holds node `name` for recovery from `source`: a node of this server's
    /// own (allowed only with `own_node`, for a restored catalog) goes to
    /// receive mode as `source`'s replica, so that only `source` may write
    /// to it and nothing may replicate it from here.
    fn hold_for_recovery(
        &self,
        name: &str,
        source: &str,
        now_ns: i64,
        own_node: bool,
    ) -> Result<(), ServerError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let underway: Option<String> = tx
            .query_row(
                "SELECT source FROM recoveries WHERE node = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        match underway {
            Some(from) if from == source => return Ok(()),
            Some(from) => {
                return Err(ServerError::FailedPrecondition(format!(
                    "node {name} is being recovered from server {from}; finish that with `recover node {name} --from {from}`"
                )));
            }
            None => {}
        }
        let existing: Option<(ReplMode, String, String)> = tx
            .query_row(
                "SELECT replmode, repl_server, replstate FROM nodes WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((ReplMode::Receive, owner, _)) = &existing {
            return Err(ServerError::FailedPrecondition(format!(
                "node {name} is a replica of server {owner} on this server; recover it on {owner}, not here"
            )));
        }
        if existing.is_some() && !own_node {
            return Err(ServerError::FailedPrecondition(format!(
                "node {name} is this server's own and holds its data, so there is nothing to recover: \
                 `recover node` rebuilds only a node this server lost (absent here, or held after `tandem-server restore-db`)"
            )));
        }
        if existing.is_some() {
            tx.execute(
                "UPDATE nodes SET replmode = 'receive', repl_server = ?2, replstate = 'enabled'
                 WHERE name = ?1",
                params![name, source],
            )?;
        }
        let prev_replstate = existing.map(|(_, _, state)| state).unwrap_or_default();
        tx.execute(
            "INSERT INTO recoveries (node, source, started_ns, prev_replstate)
             VALUES (?1, ?2, ?3, ?4)",
            params![name, source, now_ns, prev_replstate],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Ends the recovery of `name` from `source` once its data is back: the
    /// node is this server's own again, in send mode to `source`, with the
    /// replication state it had before the hold (enabled for a node that
    /// was not here). Returns false when no such recovery was under way.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn end_recovery(
        &self,
        name: &str,
        source: &str,
        now_ns: i64,
    ) -> Result<bool, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(prev) = take_recovery(&tx, name, source)? else {
            return Ok(false);
        };
        let state = if prev.is_empty() {
            "enabled"
        } else {
            prev.as_str()
        };
        tx.execute(
            "UPDATE nodes SET replmode = 'send', repl_server = ?2, replstate = ?3, last_repl_ns = ?4
             WHERE name = ?1",
            params![name, source, state, now_ns],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Ends the hold of `name` when `source` holds no replica of it (it was
    /// never replicated there): the node is this server's own again, in no
    /// replication mode, with the state it had. Returns false when no such
    /// hold was under way.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn release_unreplicated(&self, name: &str, source: &str) -> Result<bool, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(prev) = take_recovery(&tx, name, source)? else {
            return Ok(false);
        };
        let state = if prev.is_empty() {
            "disabled"
        } else {
            prev.as_str()
        };
        tx.execute(
            "UPDATE nodes SET replmode = 'none', repl_server = '', replstate = ?2 WHERE name = ?1",
            params![name, state],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Drops the recovery of `name` when the node does not exist here (a
    /// recovery that failed before its replica server created it).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn forget_recovery_of_absent(&self, name: &str) -> Result<bool, CatalogError> {
        Ok(self.conn().execute(
            "DELETE FROM recoveries WHERE node = ?1
               AND NOT EXISTS (SELECT 1 FROM nodes WHERE name = ?1)",
            [name],
        )? > 0)
    }

    /// The server node `name` is being recovered from, if it is.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn recovery_of(&self, name: &str) -> Result<Option<String>, CatalogError> {
        Ok(self
            .reader()
            .query_row(
                "SELECT source FROM recoveries WHERE node = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Every recovery under way, as (node, source), by node.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn recoveries(&self) -> Result<Vec<(String, String)>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare("SELECT node, source FROM recoveries ORDER BY node")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The replica nodes this server holds for server `source`, by name.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn replicas_of(&self, source: &str) -> Result<Vec<String>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT name FROM nodes WHERE replmode = 'receive' AND repl_server = ?1 ORDER BY name",
        )?;
        let rows = stmt
            .query_map([source], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(rows)
    }

    /// After a catalog restore: every node this server may have replicated
    /// is held for recovery from the server holding its replica (see
    /// [`Self::begin_recovery`]), since that replica may hold versions this
    /// catalog lost and a replication run would delete them. That is every
    /// node in send mode (from its recorded partner), and every node of its
    /// own with replication enabled or a recorded partner (its first run may
    /// have completed after the copy; from the replication server when none
    /// is recorded). Returns the nodes with their sources.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn hold_replicated_nodes_for_recovery(
        &self,
        now_ns: i64,
    ) -> Result<Vec<(String, String)>, ServerError> {
        let nodes: Vec<(String, String)> = {
            let conn = self.reader();
            let mut stmt = conn.prepare(
                "SELECT n.name,
                        CASE WHEN n.repl_server <> '' THEN n.repl_server
                             ELSE coalesce((SELECT value FROM server_info WHERE key = ?1), '') END
                 FROM nodes n
                 WHERE n.replmode <> 'receive'
                   AND (n.replmode = 'send' OR n.replstate = 'enabled' OR n.repl_server <> '')
                 ORDER BY n.name",
            )?;
            stmt.query_map([super::Setting::ReplServer.key()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<Vec<(String, String)>, _>>()
            .map_err(CatalogError::from)?
            .into_iter()
            .filter(|(_, source)| !source.is_empty())
            .collect()
        };
        for (node, source) in &nodes {
            self.hold_for_recovery(node, source, now_ns, true)?;
        }
        Ok(nodes)
    }
}

/// Removes the recovery of `name` from `source`; returns the replication
/// state the node had before it was held, if there was such a recovery.
fn take_recovery(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    source: &str,
) -> rusqlite::Result<Option<String>> {
    tx.query_row(
        "DELETE FROM recoveries WHERE node = ?1 AND source = ?2 RETURNING prev_replstate",
        params![name, source],
        |r| r.get(0),
    )
    .optional()
}
