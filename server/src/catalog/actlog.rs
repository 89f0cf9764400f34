//! The activity log (TSM `QUERY ACTLOG`).

use rusqlite::params;

use super::Catalog;
use crate::error::CatalogError;
use crate::model::ActlogRecord;

impl Catalog {
    /// Appends a record.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn log_activity(&self, record: &ActlogRecord) -> Result<(), CatalogError> {
        self.conn().execute(
            "INSERT INTO actlog (time_ns, msg_id, node, peer, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                record.time_ns,
                record.msg_id,
                record.node,
                record.peer,
                record.message
            ],
        )?;
        Ok(())
    }

    /// Removes records older than `before_ns`; returns how many.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn prune_activity(&self, before_ns: i64) -> Result<u64, CatalogError> {
        Ok(self
            .conn()
            .execute("DELETE FROM actlog WHERE time_ns < ?1", [before_ns])? as u64)
    }

    /// The newest `limit` records at or after `begin_ns` whose message, node or id
    /// contains `search` (case-insensitive), oldest first.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn query_activity(
        &self,
        begin_ns: i64,
        search: &str,
        limit: u32,
    ) -> Result<Vec<ActlogRecord>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT time_ns, msg_id, node, peer, message FROM actlog
             WHERE time_ns >= ?1
               AND (?2 = '' OR instr(lower(message || ' ' || node || ' ' || msg_id), lower(?2)) > 0)
             ORDER BY id DESC LIMIT ?3",
        )?;
        let mut rows = stmt
            .query_map(params![begin_ns, search, limit], |r| {
                Ok(ActlogRecord {
                    time_ns: r.get(0)?,
                    msg_id: r.get(1)?,
                    node: r.get(2)?,
                    peer: r.get(3)?,
                    message: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.reverse();
        Ok(rows)
    }
}
