//! Catalog backup and restore (TSM BACKUP DB / RESTORE DB): a consistent
//! copy of the live catalog, and bringing a restored copy back in line
//! with the containers before a server starts on it.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rusqlite::{OpenFlags, params};
use tandem_proto::ChunkId;

use super::expire::MANIFEST_TABLES;
use super::{Catalog, sql_int};
use crate::error::CatalogError;
use crate::model::ChunkLocation;

/// How a restored catalog's chunk index compared with the containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkReconcile {
    /// Index rows that point at the very record the containers hold.
    pub kept: u64,
    /// Index rows re-pointed to where a compaction after the copy moved
    /// their chunk.
    pub repointed: u64,
    /// Chunks the copy indexes but no container holds any more (freed after
    /// the copy); their rows are dropped.
    pub missing: Vec<ChunkId>,
    /// Chunks the containers hold that the copy does not index (written
    /// after it): the store reclaims them when the server starts (a
    /// container's unindexed tail is cut, the rest is dead space that
    /// compaction frees).
    pub unindexed: u64,
}

/// The statements that bring one chunk's index rows in line with the
/// containers.
struct Reconciler<'conn> {
    repoint: rusqlite::Statement<'conn>,
    drop: rusqlite::Statement<'conn>,
    drop_sharers: rusqlite::Statement<'conn>,
    /// Makes a dropped row's owner a sharer, unless it owns a row that stays.
    keep_owner: rusqlite::Statement<'conn>,
}

impl Reconciler<'_> {
    /// Reconciles the rows (one per pool) of chunk `raw`: a row is kept
    /// when a container holds its very record, re-pointed when its pool
    /// holds the chunk elsewhere, and dropped otherwise; but when none of
    /// the chunk's rows would stay and a pool with no row holds it, the
    /// last one moves there instead, keeping its owner. A chunk left with
    /// no row is missing, and its sharers go.
    fn reconcile_id(
        &mut self,
        raw: &[u8],
        rows: &[(Vec<u8>, ChunkLocation, i64)],
        found: &HashMap<ChunkId, Vec<ChunkLocation>>,
        out: &mut ChunkReconcile,
    ) -> Result<(), CatalogError> {
        let Ok(id) = ChunkId::from_slice(raw) else {
            return Ok(());
        };
        let places = found.get(&id).map_or(&[][..], Vec::as_slice);
        let mut left = 0;
        let mut lost = Vec::new();
        for (_, at, owner) in rows {
            if places.contains(at) {
                out.kept += 1;
                left += 1;
            } else if let Some(to) = places.iter().find(|p| p.pool == at.pool) {
                self.move_row(raw, at.pool, to)?;
                out.repointed += 1;
                left += 1;
            } else {
                lost.push((at.pool, *owner));
            }
        }
        let indexed_pools: Vec<u32> = rows.iter().map(|(_, at, _)| at.pool).collect();
        let elsewhere = places.iter().find(|p| !indexed_pools.contains(&p.pool));
        let mut dropped_owners = Vec::new();
        for (i, (pool, owner)) in lost.iter().enumerate() {
            match elsewhere {
                Some(to) if left == 0 && i + 1 == lost.len() => {
                    self.move_row(raw, *pool, to)?;
                    out.repointed += 1;
                    left += 1;
                }
                _ => {
                    self.drop.execute(params![raw, pool])?;
                    dropped_owners.push(*owner);
                }
            }
        }
        if left > 0 {
            // Ownership is of the chunk: a dropped copy's owner keeps it.
            for owner in dropped_owners.into_iter().filter(|o| *o != 0) {
                self.keep_owner.execute(params![raw, owner])?;
            }
        } else {
            self.drop_sharers.execute([raw])?;
            out.missing.push(id);
        }
        Ok(())
    }

    /// Points the row of `raw` in pool `from` at `to` (its pool included).
    fn move_row(&mut self, raw: &[u8], from: u32, to: &ChunkLocation) -> rusqlite::Result<()> {
        self.repoint.execute(params![
            raw,
            to.container,
            sql_int(to.offset),
            to.stored_len,
            to.raw_len,
            to.pool,
            from
        ])?;
        Ok(())
    }
}

/// Stored data that references chunks no container holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Damaged {
    /// Backup versions.
    pub versions: u64,
    /// Archive copies.
    pub archives: u64,
    /// A few of their paths, for the report.
    pub sample: Vec<String>,
}

impl Catalog {
    /// Writes a consistent copy of the catalog as it is now to `path`, a
    /// file that must not exist yet (SQLite's VACUUM INTO reads one snapshot
    /// on a reader, so backups go on meanwhile). Returns its size.
    ///
    /// # Errors
    /// SQLite errors (an existing file among them).
    pub fn backup_to(&self, path: &Path) -> Result<u64, CatalogError> {
        let target = path.to_str().ok_or_else(|| {
            CatalogError::Malformed(format!("{} is not a UTF-8 path", path.display()))
        })?;
        self.reader().execute("VACUUM INTO ?1", [target])?;
        let file = std::fs::File::open(path)
            .map_err(|e| CatalogError::Malformed(format!("{}: {e}", path.display())))?;
        file.sync_all()
            .map_err(|e| CatalogError::Malformed(format!("{}: {e}", path.display())))?;
        Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
    }

    /// Checks that `path` is a whole Tandem catalog: SQLite's integrity
    /// check passes and the core tables are there. Returns its server GUID.
    ///
    /// # Errors
    /// [`CatalogError::Malformed`] saying what is wrong; SQLite errors.
    pub fn check_copy(path: &Path) -> Result<String, CatalogError> {
        let conn = rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let verdict: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if verdict != "ok" {
            return Err(CatalogError::Malformed(format!(
                "{} fails SQLite's integrity check: {verdict}",
                path.display()
            )));
        }
        for table in ["nodes", "filespaces", "objects", "chunks", "server_info"] {
            let present = conn
                .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
                .exists([table])?;
            if !present {
                return Err(CatalogError::Malformed(format!(
                    "{} has no {table} table: it is not a Tandem catalog",
                    path.display()
                )));
            }
        }
        Ok(conn
            .query_row(
                "SELECT value FROM server_info WHERE key = 'guid'",
                [],
                |r| r.get(0),
            )
            .unwrap_or_default())
    }

    /// The pool ids of a catalog copy by name (a copy from before storage
    /// pools knows only DEFAULT, 0).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn copy_pool_ids(
        path: &Path,
    ) -> Result<std::collections::BTreeMap<String, u32>, CatalogError> {
        let conn = rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let has_pools = conn
            .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pools'")?
            .exists([])?;
        let mut ids =
            std::collections::BTreeMap::from([("DEFAULT".to_string(), crate::model::DEFAULT_POOL)]);
        if has_pools {
            let mut stmt = conn.prepare("SELECT name, id FROM pools")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            for row in rows {
                let (name, id): (String, u32) = row?;
                ids.insert(name, id);
            }
        }
        Ok(ids)
    }

    /// Whether the catalog copy at `path` indexes any chunk in pool `pool`.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn copy_pool_has_chunks(path: &Path, pool: u32) -> Result<bool, CatalogError> {
        let conn = rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        Ok(conn
            .prepare("SELECT 1 FROM chunks WHERE pool = ?1 LIMIT 1")?
            .exists([pool])?)
    }

    /// Compares every index row with `found` (each chunk the containers
    /// hold, with where): rows that point elsewhere are re-pointed, rows of
    /// chunks no container holds are dropped and returned, in one transaction.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn reconcile_chunks(
        &self,
        found: &HashMap<ChunkId, Vec<ChunkLocation>>,
    ) -> Result<ChunkReconcile, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let indexed: Vec<(Vec<u8>, ChunkLocation, i64)> = {
            let mut stmt = tx.prepare(
                "SELECT id, container, offset, stored_len, raw_len, pool, owner FROM chunks
                 ORDER BY id, pool",
            )?;
            stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    ChunkLocation {
                        container: r.get(1)?,
                        offset: super::from_sql_int(r.get(2)?),
                        stored_len: r.get(3)?,
                        raw_len: r.get(4)?,
                        pool: r.get(5)?,
                    },
                    r.get(6)?,
                ))
            })?
            .collect::<Result<_, _>>()?
        };
        let mut out = ChunkReconcile::default();
        let known: HashSet<&[u8]> = indexed.iter().map(|(raw, _, _)| raw.as_slice()).collect();
        out.unindexed = found
            .keys()
            .filter(|id| !known.contains(id.as_bytes().as_slice()))
            .count() as u64;
        {
            let mut rows = Reconciler {
                repoint: tx.prepare(
                    "UPDATE chunks SET pool = ?6, container = ?2, offset = ?3, stored_len = ?4,
                       raw_len = ?5 WHERE id = ?1 AND pool = ?7",
                )?,
                drop: tx.prepare("DELETE FROM chunks WHERE id = ?1 AND pool = ?2")?,
                drop_sharers: tx.prepare("DELETE FROM chunk_sharers WHERE chunk = ?1")?,
                keep_owner: tx.prepare(
                    "INSERT OR IGNORE INTO chunk_sharers (chunk, node_id)
                     SELECT ?1, ?2 WHERE NOT EXISTS (SELECT 1 FROM chunks WHERE id = ?1 AND owner = ?2)",
                )?,
            };
            // Rows come in key order: each id's copies together.
            let mut at = 0;
            while at < indexed.len() {
                let raw = &indexed[at].0;
                let end = at
                    + indexed[at..]
                        .iter()
                        .take_while(|(r, _, _)| r == raw)
                        .count();
                rows.reconcile_id(raw, &indexed[at..end], found, &mut out)?;
                at = end;
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// The versions and archive copies that reference any of `missing`.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn damaged_by(&self, missing: &HashSet<ChunkId>) -> Result<Damaged, CatalogError> {
        let mut out = Damaged::default();
        if missing.is_empty() {
            return Ok(out);
        }
        let conn = self.conn();
        for table in MANIFEST_TABLES {
            let path = if table == "objects" {
                "(SELECT d.path FROM dirs d WHERE d.id = t.dir_id) || t.name"
            } else {
                "t.path"
            };
            let mut stmt = conn.prepare(&format!(
                "SELECT {path}, t.manifest FROM {table} t WHERE length(t.manifest) > 0"
            ))?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let manifest: Vec<u8> = row.get(1)?;
                let hit = super::chunks::manifest_ids(&manifest).any(|c| missing.contains(&c));
                if hit {
                    if table == "objects" {
                        out.versions += 1;
                    } else {
                        out.archives += 1;
                    }
                    if out.sample.len() < 20 {
                        out.sample.push(row.get(0)?);
                    }
                }
            }
        }
        Ok(out)
    }
}
