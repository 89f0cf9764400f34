//! The chunk index: which chunks exist and where their bytes live.

use rusqlite::params;
use tandem_proto::ChunkId;

use super::{Catalog, from_sql_int};
use crate::error::CatalogError;
use crate::model::ChunkLocation;

/// True when node `?2` owns chunk `?1` (see `chunks.owner` in the schema),
/// whichever pool holds the copy it owns by.
const OWNS: &str = "(EXISTS (SELECT 1 FROM chunks WHERE id = ?1 AND owner = ?2)
     OR EXISTS (SELECT 1 FROM chunk_sharers WHERE chunk = ?1 AND node_id = ?2))";

/// A row when chunk `?1` is stored (in any pool) and node `?2` owns it.
fn owned_sql() -> String {
    format!("SELECT 1 WHERE {OWNS}")
}

/// Makes node `node` an owner of the stored chunk `id`: its first owner when
/// it has none left, a sharer otherwise. Nothing happens for an unknown id.
fn grant(tx: &rusqlite::Transaction<'_>, node: i64, id: &ChunkId) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE chunks SET owner = ?2 WHERE id = ?1 AND owner = 0")?
        .execute(params![id.as_slice(), node])?;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO chunk_sharers (chunk, node_id)
         SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM chunks WHERE id = ?1)
           AND NOT EXISTS (SELECT 1 FROM chunks WHERE id = ?1 AND owner = ?2)",
    )?
    .execute(params![id.as_slice(), node])?;
    Ok(())
}

/// Rebuilds a chunk index from before storage pools (keyed by chunk id
/// alone) keyed by chunk and pool, every row in the default pool, in one
/// transaction before the schema is applied. `None` when there was nothing
/// to rebuild; else the rows moved.
pub(super) fn key_by_pool(conn: &mut rusqlite::Connection) -> rusqlite::Result<Option<u64>> {
    let has_table = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chunks'")?
        .exists([])?;
    let keyed = conn
        .prepare("SELECT 1 FROM pragma_table_info('chunks') WHERE name = 'pool'")?
        .exists([])?;
    if !has_table || keyed {
        return Ok(None);
    }
    let tx = conn.transaction()?;
    tx.execute_batch(
        "ALTER TABLE chunks RENAME TO chunks_before_pools;
         CREATE TABLE chunks (
             id         BLOB NOT NULL,
             pool       INTEGER NOT NULL DEFAULT 0,
             container  INTEGER NOT NULL,
             offset     INTEGER NOT NULL,
             stored_len INTEGER NOT NULL,
             raw_len    INTEGER NOT NULL,
             owner      INTEGER NOT NULL DEFAULT 0,
             PRIMARY KEY (id, pool)
         ) WITHOUT ROWID;",
    )?;
    let moved = tx.execute(
        "INSERT INTO chunks (id, pool, container, offset, stored_len, raw_len, owner)
         SELECT id, 0, container, offset, stored_len, raw_len, owner
         FROM chunks_before_pools ORDER BY id",
        [],
    )?;
    tx.execute_batch("DROP TABLE chunks_before_pools")?;
    tx.commit()?;
    Ok(Some(moved as u64))
}

impl Catalog {
    /// The storage pool node `node`'s new data goes to (the default pool
    /// for a node that is not registered).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn node_pool(&self, node: i64) -> Result<u32, CatalogError> {
        use rusqlite::OptionalExtension;
        Ok(self
            .reader()
            .prepare_cached("SELECT pool_id FROM nodes WHERE id = ?1")?
            .query_row([node], |r| r.get(0))
            .optional()?
            .unwrap_or(crate::model::DEFAULT_POOL))
    }

    /// The ids of `ids` that pool `pool` holds no copy of, in input order.
    /// Only for deciding what to write: what a node is told uses
    /// [`Self::unowned_chunks`].
    ///
    /// # Errors
    /// SQLite errors.
    pub fn missing_chunks(&self, pool: u32, ids: &[ChunkId]) -> Result<Vec<ChunkId>, CatalogError> {
        let mut conn = self.conn();
        // One transaction for the batch (see `with_snapshot`).
        let snapshot = conn.transaction()?;
        let mut stmt =
            snapshot.prepare_cached("SELECT 1 FROM chunks WHERE id = ?1 AND pool = ?2")?;
        let mut missing = Vec::new();
        for id in ids {
            if !stmt.exists(params![id.as_slice(), pool])? {
                missing.push(*id);
            }
        }
        Ok(missing)
    }

    /// The ids of `ids` that node `node` does not own a copy of in pool
    /// `pool` (its pool), in input order: those not stored there, and those
    /// only other nodes uploaded. A chunk id is no proof of holding its data,
    /// so for those the node must upload the bytes; a chunk stored only in
    /// another pool is uploaded again, so the node's data is all in its pool.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn unowned_chunks(
        &self,
        node: i64,
        pool: u32,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, CatalogError> {
        let sql = format!(
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM chunks WHERE id = ?1 AND pool = ?3) AND {OWNS}"
        );
        self.with_snapshot(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut unowned = Vec::new();
            for id in ids {
                if !stmt.exists(params![id.as_slice(), node, pool])? {
                    unowned.push(*id);
                }
            }
            Ok(unowned)
        })
    }

    /// Where each of `ids` is stored (`None` for unknown ids): one copy, the
    /// one in the lowest-numbered pool when there are several.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn chunk_locations(
        &self,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<ChunkLocation>>, CatalogError> {
        self.locations(
            "SELECT container, offset, stored_len, raw_len, pool FROM chunks WHERE id = ?1
             ORDER BY pool LIMIT 1",
            None,
            ids,
        )
    }

    /// Where each of `ids` is stored, for a read by node `node`: `None` for
    /// ids that are not stored or that the node does not own, alike.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn owned_chunk_locations(
        &self,
        node: i64,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<ChunkLocation>>, CatalogError> {
        self.locations(
            &format!(
                "SELECT container, offset, stored_len, raw_len, pool FROM chunks WHERE id = ?1
                   AND {OWNS} ORDER BY pool LIMIT 1"
            ),
            Some(node),
            ids,
        )
    }

    /// Every copy of chunk `id`, in pool order.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn chunk_copies(&self, id: &ChunkId) -> Result<Vec<ChunkLocation>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT container, offset, stored_len, raw_len, pool FROM chunks
             WHERE id = ?1 ORDER BY pool",
        )?;
        let copies = stmt
            .query_map([id.as_slice()], |r| {
                Ok(ChunkLocation {
                    container: r.get(0)?,
                    offset: from_sql_int(r.get(1)?),
                    stored_len: r.get(2)?,
                    raw_len: r.get(3)?,
                    pool: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(copies)
    }

    /// Where pool `pool`'s copy of each of `ids` is (`None` where it has
    /// none): what compaction of that pool's containers compares with.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn pool_chunk_locations(
        &self,
        pool: u32,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<ChunkLocation>>, CatalogError> {
        self.locations(
            "SELECT container, offset, stored_len, raw_len, pool FROM chunks
             WHERE id = ?1 AND pool = ?2",
            Some(i64::from(pool)),
            ids,
        )
    }

    /// Runs a location query (`?1` the id, `?2` the node or pool when
    /// given) per id.
    fn locations(
        &self,
        sql: &str,
        node: Option<i64>,
        ids: &[ChunkId],
    ) -> Result<Vec<Option<ChunkLocation>>, CatalogError> {
        self.with_snapshot(|conn| {
            let mut stmt = conn.prepare_cached(sql)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let mut rows = match node {
                    Some(node) => stmt.query(params![id.as_slice(), node])?,
                    None => stmt.query([id.as_slice()])?,
                };
                out.push(match rows.next()? {
                    Some(r) => Some(ChunkLocation {
                        container: r.get(0)?,
                        offset: from_sql_int(r.get(1)?),
                        stored_len: r.get(2)?,
                        raw_len: r.get(3)?,
                        pool: r.get(4)?,
                    }),
                    None => None,
                });
            }
            Ok(out)
        })
    }

    /// Points chunks at fresh, verified and fsynced copies (self-repair),
    /// and makes node `node` an owner of each and of every chunk of
    /// `proven` (whose verified bytes it sent), in one transaction: the row
    /// of a damaged copy is re-pointed (its old record becomes dead space
    /// that compaction reclaims), the row of a missing one is added.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn replace_chunks(
        &self,
        node: i64,
        written: &[(ChunkId, ChunkLocation)],
        proven: &[ChunkId],
    ) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO chunks (id, container, offset, stored_len, raw_len, owner, pool)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id, pool) DO UPDATE SET container = excluded.container,
                   offset = excluded.offset, stored_len = excluded.stored_len,
                   raw_len = excluded.raw_len",
            )?;
            for (id, loc) in written {
                stmt.execute(params![
                    id.as_slice(),
                    loc.container,
                    super::sql_int(loc.offset),
                    loc.stored_len,
                    loc.raw_len,
                    node,
                    loc.pool
                ])?;
                grant(&tx, node, id)?;
                tx.prepare_cached("DELETE FROM damaged_chunks WHERE id = ?1")?
                    .execute([id.as_slice()])?;
            }
        }
        // Every copy of a proven chunk now reads whole, or was replaced.
        for id in proven {
            grant(&tx, node, id)?;
            tx.prepare_cached("DELETE FROM damaged_chunks WHERE id = ?1")?
                .execute([id.as_slice()])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every distinct chunk node `node`'s backup versions and archive copies
    /// use, sorted (what an audit of the node reads).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn node_chunk_ids(&self, node: i64) -> Result<Vec<ChunkId>, CatalogError> {
        let mut ids = std::collections::BTreeSet::new();
        self.each_node_manifest(node, |_, manifest| {
            ids.extend(manifest_ids(manifest));
            Ok(())
        })?;
        Ok(ids.into_iter().collect())
    }

    /// For each of `ids`, up to `limit` paths of node `node`'s backup
    /// versions and archive copies whose data uses it, for the activity log.
    /// Reads every manifest of the node: for the rare damaged chunk.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn node_paths_using(
        &self,
        node: i64,
        ids: &std::collections::HashSet<ChunkId>,
        limit: usize,
    ) -> Result<std::collections::HashMap<ChunkId, Vec<String>>, CatalogError> {
        let mut found: std::collections::HashMap<ChunkId, Vec<String>> =
            std::collections::HashMap::new();
        if ids.is_empty() {
            return Ok(found);
        }
        self.each_node_manifest(node, |row, manifest| {
            for id in manifest_ids(manifest).filter(|c| ids.contains(c)) {
                let paths = found.entry(id).or_default();
                let path: String = row.get(0)?;
                if paths.len() < limit && !paths.contains(&path) {
                    paths.push(path);
                }
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Calls `each` with every row (path in column 0) and manifest of node
    /// `node`'s backup versions and archive copies.
    fn each_node_manifest(
        &self,
        node: i64,
        mut each: impl FnMut(&rusqlite::Row<'_>, &[u8]) -> rusqlite::Result<()>,
    ) -> Result<(), CatalogError> {
        let conn = self.reader();
        for sql in [
            "SELECT d.path || o.name, o.manifest FROM objects o
               JOIN filespaces f ON f.id = o.filespace_id
               JOIN dirs d ON d.id = o.dir_id
             WHERE f.node_id = ?1",
            "SELECT a.path, a.manifest FROM archives a WHERE a.node_id = ?1",
        ] {
            let mut stmt = conn.prepare(sql)?;
            let mut rows = stmt.query([node])?;
            while let Some(row) = rows.next()? {
                let manifest: Vec<u8> = row.get(1)?;
                each(row, &manifest)?;
            }
        }
        Ok(())
    }

    /// Indexes fsynced chunks that node `node` uploaded, in one transaction,
    /// and makes the node an owner of every chunk it sent (`uploaded`, which
    /// includes those it found stored already: sending the bytes proves it
    /// holds them). Ids already present keep their first location (a
    /// concurrent session stored them too); returns how many were new.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn insert_chunks(
        &self,
        node: i64,
        written: &[(ChunkId, ChunkLocation)],
        uploaded: &[ChunkId],
    ) -> Result<u64, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut inserted = 0u64;
        let mut fresh = std::collections::HashSet::new();
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO chunks (id, container, offset, stored_len, raw_len, owner, pool)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id, pool) DO NOTHING",
            )?;
            for (id, loc) in written {
                let added = stmt.execute(params![
                    id.as_slice(),
                    loc.container,
                    super::sql_int(loc.offset),
                    loc.stored_len,
                    loc.raw_len,
                    node,
                    loc.pool
                ])?;
                if added > 0 {
                    fresh.insert(*id);
                }
                inserted += added as u64;
            }
        }
        for id in uploaded.iter().filter(|id| !fresh.contains(*id)) {
            grant(&tx, node, id)?;
        }
        tx.commit()?;
        Ok(inserted)
    }

    /// Gives every node ownership of the chunks its stored versions
    /// reference, once per catalog: a catalog from before chunk ownership
    /// keeps its backups readable by their nodes. Marks the catalog in the
    /// same transaction; `None` when it was marked already.
    pub(super) fn grant_referenced(
        conn: &mut rusqlite::Connection,
    ) -> rusqlite::Result<Option<u64>> {
        let tx = conn.transaction()?;
        let done = tx
            .prepare("SELECT 1 FROM server_info WHERE key = 'chunk_owners_granted'")?
            .exists([])?;
        if done {
            return Ok(None);
        }
        let mut granted = 0u64;
        {
            let mut stmt = tx.prepare(
                "SELECT f.node_id, o.manifest FROM objects o
                 JOIN filespaces f ON f.id = o.filespace_id WHERE length(o.manifest) > 0",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let node: i64 = row.get(0)?;
                let manifest: Vec<u8> = row.get(1)?;
                for raw in manifest.chunks_exact(32) {
                    if let Ok(id) = ChunkId::from_slice(raw) {
                        grant(&tx, node, &id)?;
                        granted += 1;
                    }
                }
            }
        }
        tx.execute(
            "INSERT INTO server_info (key, value) VALUES ('chunk_owners_granted', '1')",
            [],
        )?;
        tx.commit()?;
        Ok(Some(granted))
    }

    /// Whether node `node` owns every chunk of `ids`; the first it does not
    /// own otherwise, with how many it does not own. For commits.
    pub(super) fn first_unowned(
        tx: &rusqlite::Transaction<'_>,
        node: i64,
        ids: &mut dyn Iterator<Item = &ChunkId>,
    ) -> rusqlite::Result<Option<(ChunkId, usize)>> {
        let mut stmt = tx.prepare_cached(&owned_sql())?;
        let mut first = None;
        let mut count = 0usize;
        for id in ids {
            if !stmt.exists(params![id.as_slice(), node])? {
                first.get_or_insert(*id);
                count += 1;
            }
        }
        Ok(first.map(|f| (f, count)))
    }

    /// For every container with indexed chunks, the end of its last indexed
    /// chunk. Bytes past that end were never acknowledged (a crash between
    /// write and index) and may be cut off at start-up.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn container_ends(&self) -> Result<Vec<(u32, u64)>, CatalogError> {
        // A reader: a scan of the whole index must not hold up commits.
        let conn = self.reader();
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
        Ok(self.reader().query_row(
            "SELECT count(*), coalesce(sum(stored_len), 0) FROM chunks",
            [],
            |r| Ok((from_sql_int(r.get(0)?), from_sql_int(r.get(1)?))),
        )?)
    }
}

/// The chunk ids of a manifest (32 bytes each), in order.
pub(super) fn manifest_ids(manifest: &[u8]) -> impl Iterator<Item = ChunkId> + '_ {
    manifest
        .chunks_exact(32)
        .filter_map(|c| ChunkId::from_slice(c).ok())
}
