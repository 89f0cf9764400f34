//! QUERY OCCUPANCY: what each filespace holds, in files, versions and bytes.

use std::collections::HashSet;

use rusqlite::params;
use tandem_proto::ChunkId;

use super::{Catalog, from_sql_int};
use crate::error::CatalogError;

/// What one filespace of one node occupies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// The node.
    pub node: String,
    /// The filespace.
    pub filespace: String,
    /// Active (current) files.
    pub files: u64,
    /// Versions stored, active and inactive.
    pub versions: u64,
    /// Sum of the versions' file sizes.
    pub logical_bytes: u64,
    /// Archive copies stored (TSM counts them apart from backups).
    pub archives: u64,
    /// Sum of the archive copies' file sizes.
    pub archive_bytes: u64,
    /// Distinct chunks the filespace's versions and archive copies reference.
    pub chunks: u64,
    /// Their stored bytes, every copy in every pool (the space they take),
    /// each chunk counted once here even when other filespaces share it (so
    /// the rows of a server can add up to more than its disks).
    pub stored_bytes: u64,
    /// The storage pools holding copies of those chunks, by name.
    pub pools: Vec<String>,
}

impl Catalog {
    /// Occupancy of every filespace of `node` (upper-case), or of all nodes
    /// when `node` is empty, by node and filespace name.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn occupancy(&self, node: &str) -> Result<Vec<Occupancy>, CatalogError> {
        // Before a reader is held: it takes one of its own.
        let pool_names = self.pool_names()?;
        // A read-only scan of every manifest: the readers, so backups are
        // not held up by it.
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT f.id, n.name, f.name, coalesce(sum(o.active), 0), count(o.id),
                    coalesce(sum(o.size), 0)
               FROM filespaces f JOIN nodes n ON f.node_id = n.id
                                 LEFT JOIN objects o ON o.filespace_id = f.id AND o.expiring = 0
              WHERE ?1 = '' OR n.name = ?1
              GROUP BY f.id ORDER BY n.name, f.name",
        )?;
        let rows = stmt
            .query_map(params![node], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    Occupancy {
                        node: r.get(1)?,
                        filespace: r.get(2)?,
                        files: from_sql_int(r.get(3)?),
                        versions: from_sql_int(r.get(4)?),
                        logical_bytes: from_sql_int(r.get(5)?),
                        ..Occupancy::default()
                    },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut archives = conn.prepare(
            "SELECT count(*), coalesce(sum(size), 0) FROM archives WHERE filespace_id = ?1",
        )?;
        let mut manifests = conn.prepare(
            "SELECT manifest FROM objects WHERE filespace_id = ?1 AND expiring = 0
             UNION ALL SELECT manifest FROM archives WHERE filespace_id = ?1",
        )?;
        let mut copies =
            conn.prepare_cached("SELECT stored_len, pool FROM chunks WHERE id = ?1")?;
        let mut out = Vec::with_capacity(rows.len());
        for (filespace_id, mut row) in rows {
            (row.archives, row.archive_bytes) = archives.query_row([filespace_id], |r| {
                Ok((from_sql_int(r.get(0)?), from_sql_int(r.get(1)?)))
            })?;
            let mut chunks = HashSet::new();
            let mut list = manifests.query([filespace_id])?;
            while let Some(r) = list.next()? {
                let manifest: Vec<u8> = r.get(0)?;
                chunks.extend(
                    manifest
                        .chunks_exact(32)
                        .filter_map(|c| ChunkId::from_slice(c).ok()),
                );
            }
            let mut pools = std::collections::BTreeSet::new();
            for chunk in &chunks {
                let mut stored = false;
                let mut rows = copies.query([chunk.as_slice()])?;
                while let Some(r) = rows.next()? {
                    stored = true;
                    row.stored_bytes += from_sql_int(r.get(0)?);
                    pools.insert(r.get::<_, u32>(1)?);
                }
                row.chunks += u64::from(stored);
            }
            row.pools = pools
                .into_iter()
                .map(|id| {
                    pool_names
                        .get(&id)
                        .cloned()
                        .unwrap_or_else(|| format!("number {id}"))
                })
                .collect();
            out.push(row);
        }
        Ok(out)
    }
}
