//! Storage pools in the catalog: the id each configured name keeps, which
//! pool a node's new data goes to, and the copies MOVE NODEDATA adds and
//! removes.

use std::collections::BTreeMap;

use rusqlite::params;
use tandem_proto::ChunkId;

use super::chunks::manifest_ids;
use super::{Catalog, from_sql_int};
use crate::error::CatalogError;
use crate::model::ChunkLocation;

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

impl Catalog {
    /// Of `candidates`, the chunks that the backup versions and archive
    /// copies of nodes other than `node` whose pool is `pool` use: the
    /// copies MOVE NODEDATA leaves in that pool, its deduplication domain.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn chunks_used_in_pool_by_others(
        &self,
        node: i64,
        pool: u32,
        candidates: &std::collections::HashSet<ChunkId>,
    ) -> Result<std::collections::HashSet<ChunkId>, CatalogError> {
        let conn = self.reader();
        let mut used = std::collections::HashSet::new();
        for sql in [
            "SELECT o.manifest FROM objects o JOIN filespaces f ON f.id = o.filespace_id
               JOIN nodes n ON n.id = f.node_id
              WHERE n.id != ?1 AND n.pool_id = ?2 AND length(o.manifest) > 0",
            "SELECT a.manifest FROM archives a JOIN nodes n ON n.id = a.node_id
              WHERE n.id != ?1 AND n.pool_id = ?2 AND length(a.manifest) > 0",
        ] {
            let mut stmt = conn.prepare(sql)?;
            let mut rows = stmt.query(params![node, pool])?;
            while let Some(row) = rows.next()? {
                let manifest: Vec<u8> = row.get(0)?;
                used.extend(manifest_ids(&manifest).filter(|id| candidates.contains(id)));
            }
        }
        Ok(used)
    }

    /// Indexes fsynced copies of chunks in the pool each location names,
    /// in place of that pool's copy when it has one (a damaged one: the
    /// caller found it so). Only chunks the index has get a copy, and
    /// ownership is not changed: it is of the chunk, whichever copy it was
    /// recorded on. Returns the copies indexed.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn put_pool_copies(
        &self,
        copies: &[(ChunkId, ChunkLocation)],
    ) -> Result<u64, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut put = 0u64;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO chunks (id, container, offset, stored_len, raw_len, owner, pool)
                 SELECT ?1, ?2, ?3, ?4, ?5, 0, ?6 WHERE EXISTS (SELECT 1 FROM chunks WHERE id = ?1)
                 ON CONFLICT (id, pool) DO UPDATE SET container = excluded.container,
                   offset = excluded.offset, stored_len = excluded.stored_len,
                   raw_len = excluded.raw_len",
            )?;
            for (id, at) in copies {
                put += stmt.execute(params![
                    id.as_slice(),
                    at.container,
                    super::sql_int(at.offset),
                    at.stored_len,
                    at.raw_len,
                    at.pool
                ])? as u64;
            }
        }
        tx.commit()?;
        Ok(put)
    }

    /// Removes pool `pool`'s copy of each of `ids` that another pool also
    /// holds (never a chunk's last copy); the node recorded as owner on a
    /// removed row stays an owner, as a sharer. Returns the copies removed;
    /// their bytes become dead space that compaction reclaims.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn drop_pool_copies(&self, pool: u32, ids: &[ChunkId]) -> Result<u64, CatalogError> {
        let mut removed = 0u64;
        for batch in ids.chunks(DROP_BATCH) {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            {
                let mut keep_owner = tx.prepare_cached(
                    "INSERT OR IGNORE INTO chunk_sharers (chunk, node_id)
                     SELECT id, owner FROM chunks AS here WHERE id = ?1 AND pool = ?2 AND owner != 0
                       AND EXISTS (SELECT 1 FROM chunks WHERE id = ?1 AND pool != ?2)
                       AND NOT EXISTS (SELECT 1 FROM chunks WHERE id = ?1 AND pool != ?2
                                         AND owner = here.owner)",
                )?;
                let mut drop = tx.prepare_cached(
                    "DELETE FROM chunks WHERE id = ?1 AND pool = ?2
                       AND EXISTS (SELECT 1 FROM chunks WHERE id = ?1 AND pool != ?2)",
                )?;
                for id in batch {
                    keep_owner.execute(params![id.as_slice(), pool])?;
                    removed += drop.execute(params![id.as_slice(), pool])? as u64;
                }
            }
            tx.commit()?;
        }
        Ok(removed)
    }
}

/// Copies removed per transaction by [`Catalog::drop_pool_copies`].
const DROP_BATCH: usize = 1024;
