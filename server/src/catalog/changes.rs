//! A node's change token (`nodes.change_token`): drawn afresh in the
//! transaction of every change to the node's versions, so that a client
//! whose local vault matched the server at one token knows, by asking for
//! the token alone, whether anything its vault copies has changed since.
//!
//! Every statement that inserts, deletes or changes the state of a version
//! (made inactive or active, hidden beyond the version limit) runs in a
//! transaction that calls [`node_changed`] when it changed a row: a backup's
//! commit, a replica's or a vault's versions and states, expiration,
//! `delete backup`, a filespace's removal. The catalog's tests go through
//! each. (Not a trigger: a catalog that holds one is refused as changed by
//! something else, see `refuse_foreign_schema`.)
//!
//! A token is random, not counted: a catalog restored from an older copy
//! goes on from that copy's token, and a count would then give a state the
//! client never saw a value it did see.

use rusqlite::Connection;

use super::{Catalog, CatalogError};

/// Draws a new token for node `node_id`, in the transaction that changed
/// its versions.
pub(super) fn node_changed(conn: &Connection, node_id: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE nodes SET change_token = random() WHERE id = ?1")?
        .execute([node_id])?;
    Ok(())
}

impl Catalog {
    /// Draws a new token for every node: at a server's start, since
    /// whatever changed the catalog while this build was not running it
    /// drew none.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn renew_change_tokens(&self) -> Result<(), CatalogError> {
        self.conn()
            .execute("UPDATE nodes SET change_token = random()", [])?;
        Ok(())
    }

    /// Node `node_id`'s change token: 0 when none was drawn yet (or there
    /// is no such node), which a client takes as "unknown".
    ///
    /// # Errors
    /// SQLite errors.
    pub fn change_token(&self, node_id: i64) -> Result<i64, CatalogError> {
        use rusqlite::OptionalExtension;
        Ok(self
            .reader()
            .query_row(
                "SELECT change_token FROM nodes WHERE id = ?1",
                [node_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }
}
