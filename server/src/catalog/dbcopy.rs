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
        let indexed: Vec<(Vec<u8>, ChunkLocation)> = {
            let mut stmt =
                tx.prepare("SELECT id, container, offset, stored_len, raw_len, pool FROM chunks")?;
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
                ))
            })?
            .collect::<Result<_, _>>()?
        };
        let mut out = ChunkReconcile::default();
        let known: HashSet<&[u8]> = indexed.iter().map(|(raw, _)| raw.as_slice()).collect();
        out.unindexed = found
            .keys()
            .filter(|id| !known.contains(id.as_bytes().as_slice()))
            .count() as u64;
        {
            let mut repoint = tx.prepare(
                "UPDATE chunks SET container = ?2, offset = ?3, stored_len = ?4, raw_len = ?5
                 WHERE id = ?1 AND pool = ?6",
            )?;
            let mut drop = tx.prepare("DELETE FROM chunks WHERE id = ?1 AND pool = ?2")?;
            let mut drop_sharers = tx.prepare("DELETE FROM chunk_sharers WHERE chunk = ?1")?;
            for (raw, at) in indexed {
                let Ok(id) = ChunkId::from_slice(&raw) else {
                    continue;
                };
                // A copy is re-pointed only within its own pool.
                let places = found.get(&id).map_or(&[][..], Vec::as_slice);
                if places.contains(&at) {
                    out.kept += 1;
                } else if let Some(to) = places.iter().find(|p| p.pool == at.pool) {
                    repoint.execute(params![
                        raw,
                        to.container,
                        sql_int(to.offset),
                        to.stored_len,
                        to.raw_len,
                        at.pool
                    ])?;
                    out.repointed += 1;
                } else {
                    drop.execute(params![raw, at.pool])?;
                    // Ownership goes with the chunk's last copy.
                    if places.is_empty() {
                        drop_sharers.execute([&raw])?;
                        // Rows come in key order, an id's copies together.
                        if out.missing.last() != Some(&id) {
                            out.missing.push(id);
                        }
                    }
                }
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
