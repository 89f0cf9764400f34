//! The activity log (TSM `QUERY ACTLOG`).

use rusqlite::params;

use super::Catalog;
use crate::error::CatalogError;
use crate::model::ActlogRecord;

/// Which activity-log records a query wants (TSM QUERY ACTLOG's
/// BEGINDATE/ENDDATE, SEARCH, NODENAME, MSGNO).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActlogFilter {
    /// At or after this time (Unix ns).
    pub begin_ns: i64,
    /// Before this time (Unix ns); 0 for no end.
    pub end_ns: i64,
    /// Text the message, node or id contains (any case); empty for all.
    pub search: String,
    /// The node the record is about (upper-case); empty for all.
    pub node: String,
    /// A prefix of the message id; empty for all.
    pub msg_id: String,
    /// At most this many, the newest.
    pub limit: u32,
}

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

    /// The newest `filter.limit` records that pass `filter`, oldest first.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn query_activity(&self, filter: &ActlogFilter) -> Result<Vec<ActlogRecord>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT time_ns, msg_id, node, peer, message FROM actlog
             WHERE time_ns >= ?1 AND (?4 = 0 OR time_ns < ?4)
               AND (?2 = '' OR instr(lower(message || ' ' || node || ' ' || msg_id), lower(?2)) > 0)
               AND (?5 = '' OR node = ?5)
               AND (?6 = '' OR substr(msg_id, 1, length(?6)) = ?6)
             ORDER BY id DESC LIMIT ?3",
        )?;
        let mut rows = stmt
            .query_map(
                params![
                    filter.begin_ns,
                    filter.search,
                    filter.limit,
                    filter.end_ns,
                    filter.node,
                    filter.msg_id
                ],
                |r| {
                    Ok(ActlogRecord {
                        time_ns: r.get(0)?,
                        msg_id: r.get(1)?,
                        node: r.get(2)?,
                        peer: r.get(3)?,
                        message: r.get(4)?,
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        rows.reverse();
        Ok(rows)
    }
}
