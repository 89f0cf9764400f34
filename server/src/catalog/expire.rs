//! Expiration: which versions retention policy lets go, which chunks nothing
//! references any more, and container relocation for reclamation.

use std::collections::HashSet;

use rusqlite::params;
use tandem_proto::{ChunkId, ObjectId};

use super::dirs::delete_unused_dirs;
use super::{Catalog, DAY_NS, from_sql_int, sql_int};
use crate::error::CatalogError;
use crate::model::ChunkLocation;

/// The tables whose rows reference chunks by their manifests: a chunk is
/// kept while a row of either names it.
pub(super) const MANIFEST_TABLES: [&str; 2] = ["objects", "archives"];

/// Rows deleted per transaction, so a large expiration does not hold the
/// writer lock (and block backups) for long.
const DELETE_BATCH: usize = 5000;

impl Catalog {
    /// Ids of the versions that retention policy lets go at `now_ns`: those
    /// marked at commit, those beyond VEREXISTS (file exists) or VERDELETED
    /// (file deleted) after a policy change, inactive versions older than
    /// RETEXTRA days, and the last version of a deleted file older than RETONLY
    /// days. Active versions never expire.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn expired_versions(&self, now_ns: i64) -> Result<Vec<ExpiredVersion>, CatalogError> {
        let d = self.defaults;
        // A scan of every version: on a connection of its own, so neither
        // commits nor restores wait for it. A version found here that turns
        // active again before its deletion is kept (`delete_versions`).
        let conn = self.scan_connection()?;
        let mut stmt = conn.prepare(
            "SELECT id, object_id, node_id FROM (
               SELECT o.id, o.object_id, f.node_id, o.active, o.expiring, o.deactivated_ns,
                 row_number() OVER (PARTITION BY o.dir_id, o.name
                                    ORDER BY o.active DESC, o.backup_ns DESC) AS rank,
                 max(o.active) OVER (PARTITION BY o.dir_id, o.name) AS has_active,
                 coalesce(n.verexists, ?1) AS verexists, coalesce(n.verdeleted, ?2) AS verdeleted,
                 coalesce(n.retextra, ?3) AS retextra, coalesce(n.retonly, ?4) AS retonly
               FROM objects o JOIN filespaces f ON o.filespace_id = f.id
                              JOIN nodes n ON f.node_id = n.id)
             WHERE active = 0 AND (
               expiring = 1
               OR (has_active = 1 AND (rank > verexists OR ?5 - deactivated_ns >= retextra * ?6))
               OR (has_active = 0 AND (rank > verdeleted
                   OR (rank = 1 AND ?5 - deactivated_ns >= retonly * ?6)
                   OR (rank > 1 AND ?5 - deactivated_ns >= retextra * ?6))))",
        )?;
        let ids = stmt
            .query_map(
                params![
                    d.verexists,
                    d.verdeleted,
                    d.retextra,
                    d.retonly,
                    now_ns,
                    DAY_NS
                ],
                |r| {
                    Ok(ExpiredVersion {
                        row: r.get(0)?,
                        object_id: r.get(1)?,
                        node: r.get(2)?,
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ids)
    }

    /// Deletes expired versions, in batches. Returns how many were deleted.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn delete_versions(&self, expired: &[ExpiredVersion]) -> Result<u64, CatalogError> {
        // Only the very version found, and never an active one, whatever
        // changed since it was found: a replica's states are set by its
        // source, and a row id freed meanwhile may be taken by a new version.
        self.delete_in_batches(
            expired,
            "DELETE FROM objects WHERE id = ?1 AND object_id = ?2 AND active = 0",
            |v| v.node,
            |stmt, v| stmt.execute(params![v.row, v.object_id]),
        )
    }

    /// Runs `sql` once per item (a version, of node `node_of(item)`),
    /// `DELETE_BATCH` to a transaction that also draws a new change token
    /// for each node that lost a version, then drops the directory rows no
    /// version uses any more; returns the rows deleted.
    fn delete_in_batches<T>(
        &self,
        items: &[T],
        sql: &str,
        node_of: impl Fn(&T) -> i64,
        mut delete_one: impl FnMut(&mut rusqlite::CachedStatement<'_>, &T) -> rusqlite::Result<usize>,
    ) -> Result<u64, CatalogError> {
        let mut deleted = 0u64;
        for batch in items.chunks(DELETE_BATCH) {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            let mut changed = std::collections::BTreeSet::new();
            {
                let mut stmt = tx.prepare_cached(sql)?;
                for item in batch {
                    let rows = delete_one(&mut stmt, item)? as u64;
                    if rows > 0 {
                        changed.insert(node_of(item));
                        deleted += rows;
                    }
                }
            }
            for node in changed {
                super::changes::node_changed(&tx, node)?;
            }
            tx.commit()?;
        }
        if deleted > 0 {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            delete_unused_dirs(&tx)?;
            tx.commit()?;
        }
        Ok(deleted)
    }

    /// Runs `sql` once per item, `DELETE_BATCH` to a transaction; returns
    /// the rows deleted. For rows that hold no directory (archive copies).
    pub(super) fn delete_rows_in_batches<T>(
        &self,
        items: &[T],
        sql: &str,
        mut delete_one: impl FnMut(&mut rusqlite::CachedStatement<'_>, &T) -> rusqlite::Result<usize>,
    ) -> Result<u64, CatalogError> {
        let mut deleted = 0u64;
        for batch in items.chunks(DELETE_BATCH) {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(sql)?;
                for item in batch {
                    deleted += delete_one(&mut stmt, item)? as u64;
                }
            }
            tx.commit()?;
        }
        Ok(deleted)
    }

    /// Every indexed chunk id, once however many pools hold a copy.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn all_chunk_ids(&self) -> Result<Vec<ChunkId>, CatalogError> {
        all_chunk_ids_in(&self.conn())
    }

    /// A new read-only connection, read as the others are (see
    /// [`Catalog::read_through_memory_map`]), for one scan of a whole table
    /// that would hold up the writer or a reader for seconds.
    fn scan_connection(&self) -> Result<rusqlite::Connection, CatalogError> {
        let conn = super::open_reader(&self.path)?;
        conn.pragma_update(
            None,
            "mmap_size",
            self.map_bytes.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        Ok(conn)
    }

    /// A read snapshot of the whole catalog for the chunk sweep, on a
    /// connection of its own: reading every manifest takes seconds in a
    /// large catalog, and neither the writer (commits) nor the readers
    /// (restores, chunk lookups) wait for it meanwhile. The snapshot is
    /// fixed when this returns, so the caller opens it under the pin lock.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn sweep_snapshot(&self) -> Result<SweepSnapshot, CatalogError> {
        let conn = self.scan_connection()?;
        conn.execute_batch("BEGIN")?;
        // SQLite fixes a read transaction's snapshot at its first read.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        Ok(SweepSnapshot { conn })
    }
    /// Removes chunks from the index (their bytes become dead space).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn delete_chunks(&self, ids: &[ChunkId]) -> Result<u64, CatalogError> {
        let mut deleted = 0u64;
        for batch in ids.chunks(DELETE_BATCH) {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached("DELETE FROM chunks WHERE id = ?1")?;
                let mut sharers =
                    tx.prepare_cached("DELETE FROM chunk_sharers WHERE chunk = ?1")?;
                for id in batch {
                    deleted += stmt.execute([id.as_slice()])? as u64;
                    sharers.execute([id.as_slice()])?;
                }
            }
            tx.commit()?;
        }
        if deleted > 0 {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            delete_unused_dirs(&tx)?;
            tx.commit()?;
        }
        Ok(deleted)
    }

    /// Live (indexed) bytes per container, headers included.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn container_live_bytes(&self, header_bytes: u64) -> Result<Vec<(u32, u64)>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT container, sum(stored_len) + count(*) * ?1 FROM chunks GROUP BY container",
        )?;
        let rows = stmt
            .query_map([sql_int(header_bytes)], |r| {
                Ok((r.get(0)?, from_sql_int(r.get(1)?)))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Points chunks at their new (already fsynced) locations, in one
    /// transaction: each `(id, from, to)` only while the index still points
    /// at `from`, so a chunk a repair replaced meanwhile keeps its new copy.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn relocate_chunks(
        &self,
        moved: &[(ChunkId, ChunkLocation, ChunkLocation)],
    ) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE chunks SET container = ?2, offset = ?3
                 WHERE id = ?1 AND container = ?4 AND offset = ?5",
            )?;
            for (id, from, to) in moved {
                stmt.execute(params![
                    id.as_slice(),
                    to.container,
                    sql_int(to.offset),
                    from.container,
                    sql_int(from.offset)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes a node's filespace with all its versions and archive copies.
    /// Returns how many of each were deleted, or `None` if there is no such
    /// filespace.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn delete_filespace(
        &self,
        node_id: i64,
        name: &str,
    ) -> Result<Option<(u64, u64)>, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let id: Option<i64> = tx
            .query_row(
                "SELECT id FROM filespaces WHERE node_id = ?1 AND name = ?2",
                params![node_id, name],
                |r| r.get(0),
            )
            .ok();
        let Some(id) = id else {
            return Ok(None);
        };
        let versions = tx.execute(
            "DELETE FROM objects WHERE dir_id IN (SELECT id FROM dirs WHERE filespace_id = ?1)",
            [id],
        )? as u64;
        if versions > 0 {
            super::changes::node_changed(&tx, node_id)?;
        }
        let archives = tx.execute("DELETE FROM archives WHERE filespace_id = ?1", [id])? as u64;
        tx.execute("DELETE FROM filespaces WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(Some((versions, archives)))
    }
}

/// A version retention policy lets go ([`Catalog::expired_versions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredVersion {
    /// Its row.
    pub row: i64,
    /// Its object id, which no other version ever takes (a row id may be).
    pub object_id: Vec<u8>,
    /// Its node, whose change token the deletion renews.
    pub node: i64,
}

/// One version an expiration would delete, as a preview lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiringVersion {
    /// Its node.
    pub node: String,
    /// Its filespace.
    pub filespace: String,
    /// Its full path.
    pub path: String,
    /// When it was backed up (Unix ns).
    pub backup_ns: i64,
    /// When it became inactive (Unix ns; 0 while active, which never expires).
    pub deactivated_ns: i64,
    /// Its size in bytes.
    pub size: u64,
}

/// What deleting a set of versions would give back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReleasedSpace {
    /// Sum of the versions' file sizes.
    pub logical_bytes: u64,
    /// Chunks only those versions reference (and no session has pinned).
    pub chunks: u64,
    /// Their stored bytes, record headers included.
    pub stored_bytes: u64,
}

impl Catalog {
    /// Node, filespace and path of the first `limit` of `ids` (the caller
    /// orders them), stopping once their paths add up to `max_bytes`;
    /// sorted by path. Bounded, so a huge expiration stays cheap to preview
    /// and its answer fits in one message.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn describe_versions(
        &self,
        ids: &[i64],
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<ExpiringVersion>, CatalogError> {
        // A read-only scan: the readers, so backups are not held up.
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT n.name, f.name, d.path || o.name, o.backup_ns, o.deactivated_ns, o.size
               FROM objects o JOIN dirs d ON o.dir_id = d.id
                              JOIN filespaces f ON o.filespace_id = f.id
                              JOIN nodes n ON f.node_id = n.id
              WHERE o.id = ?1",
        )?;
        let mut out: Vec<ExpiringVersion> = Vec::with_capacity(ids.len().min(limit));
        let mut bytes = 0usize;
        for id in ids.iter().take(limit) {
            if bytes >= max_bytes {
                break;
            }
            if let Some(v) = stmt
                .query_map([id], |r| {
                    Ok(ExpiringVersion {
                        node: r.get(0)?,
                        filespace: r.get(1)?,
                        path: r.get(2)?,
                        backup_ns: r.get(3)?,
                        deactivated_ns: r.get(4)?,
                        size: from_sql_int(r.get(5)?),
                    })
                })?
                .next()
            {
                let v = v?;
                bytes += v.path.len() + v.filespace.len() + v.node.len();
                out.push(v);
            }
        }
        out.sort_by(|a, b| {
            (&a.node, &a.filespace, &a.path, a.backup_ns).cmp(&(
                &b.node,
                &b.filespace,
                &b.path,
                b.backup_ns,
            ))
        });
        Ok(out)
    }

    /// What deleting the versions `ids` and the archive copies
    /// `archive_ids` would release: their logical size, and the chunks
    /// nothing else references and no session in `pinned` holds.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn space_released_by(
        &self,
        ids: &HashSet<i64>,
        archive_ids: &HashSet<i64>,
        pinned: &HashSet<ChunkId>,
        header_bytes: u64,
    ) -> Result<ReleasedSpace, CatalogError> {
        let mut released = ReleasedSpace::default();
        let mut only_theirs = HashSet::new();
        let mut kept = HashSet::new();
        for (table, going) in MANIFEST_TABLES.into_iter().zip([ids, archive_ids]) {
            let conn = self.reader();
            let mut stmt = conn.prepare(&format!("SELECT id, size, manifest FROM {table}"))?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                let manifest: Vec<u8> = row.get(2)?;
                let chunks = manifest
                    .chunks_exact(32)
                    .filter_map(|c| ChunkId::from_slice(c).ok());
                if going.contains(&id) {
                    released.logical_bytes += from_sql_int(row.get(1)?);
                    only_theirs.extend(chunks);
                } else {
                    kept.extend(chunks);
                }
            }
        }
        only_theirs.retain(|c| !kept.contains(c) && !pinned.contains(c));
        // One read transaction for every lookup (see `with_snapshot`).
        let mut reader = self.reader();
        let conn = reader.transaction()?;
        let mut stmt = conn.prepare_cached("SELECT stored_len FROM chunks WHERE id = ?1")?;
        for chunk in &only_theirs {
            let stored: Option<i64> = stmt
                .query_map([chunk.as_slice()], |r| r.get(0))?
                .next()
                .transpose()?;
            if let Some(stored) = stored {
                released.chunks += 1;
                released.stored_bytes += from_sql_int(stored) + header_bytes;
            }
        }
        Ok(released)
    }
}

impl Catalog {
    /// Deletes the versions with these object ids that belong to `node_id`
    /// (DELETE BACKUP); ids of other nodes' versions are left alone. Their
    /// chunks are freed by the next expiration's sweep.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn delete_node_versions(
        &self,
        node_id: i64,
        object_ids: &[ObjectId],
    ) -> Result<u64, CatalogError> {
        self.delete_in_batches(
            object_ids,
            "DELETE FROM objects WHERE object_id = ?1
               AND filespace_id IN (SELECT id FROM filespaces WHERE node_id = ?2)",
            |_| node_id,
            |stmt, id| stmt.execute(params![id.0.as_slice(), node_id]),
        )
    }
}

/// One read snapshot of the catalog ([`Catalog::sweep_snapshot`]).
pub struct SweepSnapshot {
    conn: rusqlite::Connection,
}

impl std::fmt::Debug for SweepSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SweepSnapshot").finish_non_exhaustive()
    }
}

impl SweepSnapshot {
    /// The indexed chunks no version or archive copy references in this
    /// snapshot.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn unreferenced_chunks(&self) -> Result<Vec<ChunkId>, CatalogError> {
        let referenced = referenced_chunks_in(&self.conn)?;
        let mut unreferenced = all_chunk_ids_in(&self.conn)?;
        unreferenced.retain(|id| !referenced.contains(id));
        Ok(unreferenced)
    }
}

/// Every chunk id some stored version or archive copy references.
fn referenced_chunks_in(conn: &rusqlite::Connection) -> Result<HashSet<ChunkId>, CatalogError> {
    let mut set = HashSet::new();
    for table in MANIFEST_TABLES {
        let mut stmt = conn.prepare(&format!(
            "SELECT manifest FROM {table} WHERE length(manifest) > 0"
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let manifest = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
            for c in manifest.chunks_exact(32) {
                if let Ok(id) = ChunkId::from_slice(c) {
                    set.insert(id);
                }
            }
        }
    }
    Ok(set)
}

/// Every indexed chunk id, once however many pools hold a copy.
fn all_chunk_ids_in(conn: &rusqlite::Connection) -> Result<Vec<ChunkId>, CatalogError> {
    let mut stmt = conn.prepare("SELECT DISTINCT id FROM chunks")?;
    let ids = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))?
        .filter_map(|r| r.ok().and_then(|b| ChunkId::from_slice(&b).ok()))
        .collect();
    Ok(ids)
}
