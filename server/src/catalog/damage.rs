//! What a pool audit reads, and what it found: the chunk index walked by
//! container, who uses a chunk, and the damaged-chunk records (TSM's
//! damaged extents) that stay until a repair or a clean read clears them.

use std::collections::HashMap;

use rusqlite::params;
use tandem_proto::ChunkId;

use super::{Catalog, from_sql_int, sql_int};
use crate::error::CatalogError;
use crate::model::{ChunkLocation, now_ns};

/// A chunk an audit found damaged or missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedChunk {
    /// The chunk.
    pub id: ChunkId,
    /// Where the index said it was (0: not stored for `node` at all).
    pub container: u32,
    /// For a chunk not stored for a node: that node's row id; else 0.
    pub node: i64,
    /// What the read found.
    pub reason: String,
    /// Some files that use it, as `NODE:path`, separated by newlines.
    pub files: String,
    /// When it was found (Unix nanoseconds).
    pub found_ns: i64,
}

impl Catalog {
    /// Every indexed chunk copy in containers `first..end` that `keep`
    /// (given the id and the copy's location) selects, ordered by container
    /// and offset (the order a reader streams them in).
    /// One pass over the index: callers size the range to bound memory.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn chunks_in_containers(
        &self,
        first: u32,
        end: u32,
        keep: impl Fn(&ChunkId, &ChunkLocation) -> bool,
    ) -> Result<Vec<(ChunkId, ChunkLocation)>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT id, container, offset, stored_len, raw_len, pool FROM chunks
             WHERE container >= ?1 AND container < ?2",
        )?;
        let mut rows = stmt.query(params![first, end])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let raw: Vec<u8> = r.get(0)?;
            let Ok(id) = ChunkId::from_slice(&raw) else {
                continue;
            };
            let at = ChunkLocation {
                container: r.get(1)?,
                offset: from_sql_int(r.get(2)?),
                stored_len: r.get(3)?,
                raw_len: r.get(4)?,
                pool: r.get(5)?,
            };
            if keep(&id, &at) {
                out.push((id, at));
            }
        }
        out.sort_unstable_by_key(|(_, l)| (l.container, l.offset));
        Ok(out)
    }

    /// The nodes that own each of `ids` (first owner first, then sharers);
    /// ids no node owns any more are left out.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn chunk_users(&self, ids: &[ChunkId]) -> Result<HashMap<ChunkId, Vec<i64>>, CatalogError> {
        // One read transaction for every lookup (see `with_snapshot`).
        let mut reader = self.reader();
        let conn = reader.transaction()?;
        // The owner of each copy (one per pool), in pool order.
        let mut owners =
            conn.prepare_cached("SELECT owner FROM chunks WHERE id = ?1 ORDER BY pool")?;
        let mut sharers =
            conn.prepare_cached("SELECT node_id FROM chunk_sharers WHERE chunk = ?1")?;
        let mut out = HashMap::new();
        for id in ids {
            let mut users: Vec<i64> = Vec::new();
            let first = owners
                .query_map([id.as_slice()], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let rest = sharers
                .query_map([id.as_slice()], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            for node in first.into_iter().filter(|&n| n != 0).chain(rest) {
                if !users.contains(&node) {
                    users.push(node);
                }
            }
            if !users.is_empty() {
                out.insert(*id, users);
            }
        }
        Ok(out)
    }

    /// Records chunks an audit found damaged or missing (a later finding
    /// replaces an earlier one's reason and files, keeping when it was
    /// first found).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn mark_damaged(&self, found: &[DamagedChunk]) -> Result<(), CatalogError> {
        if found.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO damaged_chunks (id, container, reason, files, found_ns, node_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET container = excluded.container,
                   reason = excluded.reason, files = excluded.files,
                   node_id = excluded.node_id",
            )?;
            for d in found {
                stmt.execute(params![
                    d.id.as_slice(),
                    d.container,
                    d.reason,
                    d.files,
                    d.found_ns,
                    d.node
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Clears the damage records of chunks read whole since. With
    /// `stored_only`, records of chunks missing for a node stay: a chunk
    /// read whole from the pool is still not that node's.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn clear_damaged(&self, ids: &[ChunkId], stored_only: bool) -> Result<(), CatalogError> {
        if ids.is_empty() || self.damaged_rows()? == 0 {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(if stored_only {
                "DELETE FROM damaged_chunks WHERE id = ?1 AND container <> 0"
            } else {
                "DELETE FROM damaged_chunks WHERE id = ?1"
            })?;
            for id in ids {
                stmt.execute([id.as_slice()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops the damage records of chunks read whole in the containers
    /// given, by (id, container): a record naming another container stays,
    /// since another pool's copy of the chunk may be the damaged one,
    /// unless no copy is in that container any more.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn clear_damaged_copies(&self, read_whole: &[(ChunkId, u32)]) -> Result<(), CatalogError> {
        if read_whole.is_empty() || self.damaged_rows()? == 0 {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM damaged_chunks WHERE id = ?1 AND container <> 0 AND (container = ?2
                   OR NOT EXISTS (SELECT 1 FROM chunks c
                                  WHERE c.id = ?1 AND c.container = damaged_chunks.container))",
            )?;
            for (id, container) in read_whole {
                stmt.execute(params![id.as_slice(), container])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops the records of chunks missing for node `node`: its full audit
    /// is about to record what is missing now.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn clear_missing_for_node(&self, node: i64) -> Result<(), CatalogError> {
        if self.damaged_rows()? == 0 {
            return Ok(());
        }
        self.conn().execute(
            "DELETE FROM damaged_chunks WHERE container = 0 AND node_id = ?1",
            [node],
        )?;
        Ok(())
    }

    /// Rows in the damaged-chunk table, stale ones included (a cheap read).
    fn damaged_rows(&self) -> Result<u64, CatalogError> {
        Ok(self
            .reader()
            .query_row("SELECT count(*) FROM damaged_chunks", [], |r| {
                Ok(from_sql_int(r.get(0)?))
            })?)
    }

    /// Drops records nothing needs any more: chunks expiration freed since,
    /// and chunks missing for nodes that were removed since.
    fn prune_damaged(&self) -> Result<(), CatalogError> {
        if self.damaged_rows()? == 0 {
            return Ok(());
        }
        self.conn().execute(
            "DELETE FROM damaged_chunks WHERE
               (container <> 0 AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = damaged_chunks.id))
               OR (container = 0 AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = damaged_chunks.node_id))",
            [],
        )?;
        Ok(())
    }

    /// How many damaged chunks are recorded that still matter.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn damaged_count(&self) -> Result<u64, CatalogError> {
        self.prune_damaged()?;
        self.damaged_rows()
    }

    /// Up to `limit` damaged-chunk records, oldest finding first, and how
    /// many there are in all. Records of chunks expiration has freed since
    /// are dropped first: nothing uses them any more.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn damaged_chunks(&self, limit: u32) -> Result<(Vec<DamagedChunk>, u64), CatalogError> {
        self.prune_damaged()?;
        let conn = self.reader();
        let total = conn.query_row("SELECT count(*) FROM damaged_chunks", [], |r| {
            Ok(from_sql_int(r.get(0)?))
        })?;
        let mut stmt = conn.prepare(
            "SELECT id, container, reason, files, found_ns, node_id FROM damaged_chunks
             ORDER BY found_ns, id LIMIT ?1",
        )?;
        let rows = stmt
            .query_map([sql_int(u64::from(limit))], |r| {
                let raw: Vec<u8> = r.get(0)?;
                Ok((raw, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?
            .collect::<Result<Vec<(Vec<u8>, u32, String, String, i64, i64)>, _>>()?;
        let list = rows
            .into_iter()
            .filter_map(|(raw, container, reason, files, found_ns, node)| {
                Some(DamagedChunk {
                    id: ChunkId::from_slice(&raw).ok()?,
                    container,
                    node,
                    reason,
                    files,
                    found_ns,
                })
            })
            .collect();
        Ok((list, total))
    }
}

impl DamagedChunk {
    /// A finding made now (`node` for a chunk missing for that node).
    pub fn now(id: ChunkId, container: u32, node: i64, reason: String, files: &[String]) -> Self {
        DamagedChunk {
            id,
            container,
            node,
            reason,
            files: files.join("\n"),
            found_ns: now_ns(),
        }
    }
}
