//! The chunk index: which chunks exist and where their bytes live.

use rusqlite::params;
use tandem_proto::ChunkId;

use super::{Catalog, from_sql_int};
use crate::error::CatalogError;
use crate::model::ChunkLocation;

impl Catalog {
    /// The ids of `ids` that are not in the index, in input order.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn missing_chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")?;
        let mut missing = Vec::new();
        for id in ids {
            if !stmt.exists([id.as_slice()])? {
                missing.push(*id);
            }
        }
        Ok(missing)
    }

    /// Where each of `ids` is stored (`None` for unknown ids).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn chunk_locations(
        &self,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<ChunkLocation>>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT container, offset, stored_len, raw_len FROM chunks WHERE id = ?1",
        )?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let mut rows = stmt.query([id.as_slice()])?;
            out.push(match rows.next()? {
                Some(r) => Some(ChunkLocation {
                    container: r.get(0)?,
                    offset: from_sql_int(r.get(1)?),
                    stored_len: r.get(2)?,
                    raw_len: r.get(3)?,
                }),
                None => None,
            });
        }
        Ok(out)
    }

    /// Adds fsynced chunks to the index in one transaction. Ids already present
    /// keep their first location (a concurrent session stored them too); returns
    /// how many were new.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn insert_chunks(&self, chunks: &[(ChunkId, ChunkLocation)]) -> Result<u64, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut inserted = 0u64;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO chunks (id, container, offset, stored_len, raw_len)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
            )?;
            for (id, loc) in chunks {
                inserted += stmt.execute(params![
                    id.as_slice(),
                    loc.container,
                    super::sql_int(loc.offset),
                    loc.stored_len,
                    loc.raw_len
                ])? as u64;
            }
        }
        tx.commit()?;
        Ok(inserted)
    }

    /// For every container with indexed chunks, the end of its last indexed
    /// chunk. Bytes past that end were never acknowledged (a crash between
    /// write and index) and may be cut off at start-up.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn container_ends(&self) -> Result<Vec<(u32, u64)>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT container, max(offset + stored_len) FROM chunks GROUP BY container")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, from_sql_int(r.get(1)?))))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Number of indexed chunks and their total compressed size.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn chunk_totals(&self) -> Result<(u64, u64), CatalogError> {
        Ok(self.conn().query_row(
            "SELECT count(*), coalesce(sum(stored_len), 0) FROM chunks",
            [],
            |r| Ok((from_sql_int(r.get(0)?), from_sql_int(r.get(1)?))),
        )?)
    }
}
