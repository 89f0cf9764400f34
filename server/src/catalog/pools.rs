//! Storage pools in the catalog: the id each configured name keeps, and
//! which pool a node's new data goes to.

use std::collections::BTreeMap;

use rusqlite::params;

use super::{Catalog, from_sql_int};
use crate::error::CatalogError;

impl Catalog {
    /// The id of each pool name in `names` (upper case), giving a new name
    /// the next free id; DEFAULT is always 0. Ids are never reused, so a
    /// name removed and given again later finds its own chunks.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn pool_ids(&self, names: &[&str]) -> Result<BTreeMap<String, u32>, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut out = BTreeMap::new();
        for name in names {
            tx.prepare_cached("INSERT OR IGNORE INTO pools (name) VALUES (?1)")?
                .execute([name])?;
            let id: u32 = tx
                .prepare_cached("SELECT id FROM pools WHERE name = ?1")?
                .query_row([name], |r| r.get(0))?;
            out.insert((*name).to_string(), id);
        }
        tx.commit()?;
        Ok(out)
    }

    /// Every pool name the catalog knows, by id.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn pool_names(&self) -> Result<BTreeMap<u32, String>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare("SELECT id, name FROM pools")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// For every container with indexed chunks: its pool and the end of
    /// its last indexed chunk (see [`Self::container_ends`]).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn container_ends_by_pool(&self) -> Result<Vec<(u32, u32, u64)>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT pool, container, max(offset + stored_len) FROM chunks GROUP BY pool, container",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, from_sql_int(r.get(2)?))))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Sends node `name`'s new data to pool `pool` from its next upload on;
    /// what it stored before stays where it is (TSM's destination). `None`
    /// when there is no such node.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn set_node_pool(&self, name: &str, pool: u32) -> Result<Option<()>, CatalogError> {
        let changed = self.conn().execute(
            "UPDATE nodes SET pool_id = ?2 WHERE name = ?1",
            params![name, pool],
        )?;
        Ok((changed > 0).then_some(()))
    }

    /// How many nodes send their new data to each pool, by pool id.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn nodes_per_pool(&self) -> Result<BTreeMap<u32, u64>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare("SELECT pool_id, count(*) FROM nodes GROUP BY pool_id")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, from_sql_int(r.get(1)?))))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}
