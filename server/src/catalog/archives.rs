//! Archive copies (TSM ARCHIVE and RETRIEVE): described copies of files kept
//! for the node's archive retention, apart from the backup versions, which
//! neither replace nor expire them.

use rusqlite::{Row, params};
use tandem_proto::ObjectId;

use super::objects::manifest_bytes;
use super::{Catalog, DAY_NS, from_sql_int, sql_int};
use crate::error::{CatalogError, ServerError};
use crate::model::{ArchiveCopy, ArchiveQuery, NewVersion, ObjectAttrs, ObjectKind, StoredVersion};

/// Where a page of [`Catalog::query_archives`] ended: its last row's sort key.
#[derive(Debug, Clone)]
pub struct ArchiveKey {
    path: String,
    archived_ns: i64,
    row_id: i64,
}

/// One page of an archive listing.
#[derive(Debug, Default)]
pub struct ArchivePage {
    /// Copies in path, archive time and row order.
    pub copies: Vec<ArchiveCopy>,
    /// Where the next page starts; `None` when this one is the last.
    pub next: Option<ArchiveKey>,
}

/// What an archive commit stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveCommit {
    /// Copies stored.
    pub stored: u64,
    /// When they expire, Unix ns.
    pub expires_ns: i64,
}

const ARCHIVE_COLUMNS: &str = "a.object_id, f.name, a.path, a.kind, a.size, a.mode, a.mtime_ns, \
     a.uid, a.gid, a.link_target, a.archived_ns, a.expires_ns, a.description, a.manifest, a.extra, a.id";

fn archive_from_row(r: &Row<'_>, with_chunks: bool) -> rusqlite::Result<(ArchiveCopy, i64)> {
    let bad = |msg: String| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            Box::new(CatalogError::Malformed(msg)),
        )
    };
    let object_id: Vec<u8> = r.get(0)?;
    let kind_code: i64 = r.get(3)?;
    let manifest: Vec<u8> = if with_chunks { r.get(13)? } else { Vec::new() };
    let chunks = super::objects::manifest_chunks(&manifest).map_err(|e| bad(e.to_string()))?;
    let archived_ns = r.get(10)?;
    Ok((
        ArchiveCopy {
            version: StoredVersion {
                object_id: ObjectId::from_slice(&object_id).map_err(|e| bad(e.to_string()))?,
                filespace: r.get(1)?,
                attrs: ObjectAttrs {
                    path: r.get(2)?,
                    kind: ObjectKind::from_code(kind_code)
                        .ok_or_else(|| bad(format!("unknown object kind {kind_code}")))?,
                    size: from_sql_int(r.get(4)?),
                    mode: r.get(5)?,
                    mtime_ns: r.get(6)?,
                    uid: r.get(7)?,
                    gid: r.get(8)?,
                    link_target: r.get(9)?,
                    extra: r.get(14)?,
                },
                backup_ns: archived_ns,
                active: true,
                deactivated_ns: 0,
                chunks,
            },
            expires_ns: r.get(11)?,
            description: r.get(12)?,
        },
        r.get(15)?,
    ))
}

impl Catalog {
    /// Stores archive copies of `versions` in one transaction, described by
    /// `description` and kept for the node's archive retention (RETVER days)
    /// from `now_ns`. Like a backup commit, every referenced chunk must be
    /// stored and owned by the node.
    ///
    /// # Errors
    /// [`ServerError::MissingChunks`] when a referenced chunk is not the
    /// node's; SQLite errors.
    pub fn commit_archive(
        &self,
        node_id: i64,
        filespace: &str,
        versions: &[NewVersion],
        description: &str,
        now_ns: i64,
    ) -> Result<ArchiveCommit, ServerError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        super::switches::refuse_if_switch_stopped_writes(&tx, node_id)?;
        let fs_id = Self::filespace_id(&tx, node_id, filespace, true)?
            .ok_or_else(|| CatalogError::Malformed("filespace vanished".into()))?;
        if let Some((first, count)) =
            Self::first_unowned(&tx, node_id, &mut versions.iter().flat_map(|v| &v.chunks))?
        {
            return Err(ServerError::MissingChunks { count, first });
        }
        let policy = Self::policy_of(&tx, node_id, self.defaults)?;
        let expires_ns = now_ns.saturating_add(i64::from(policy.retver).saturating_mul(DAY_NS));
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO archives (object_id, node_id, filespace_id, path, kind, size, mode,
                   mtime_ns, uid, gid, link_target, archived_ns, expires_ns, description,
                   manifest, extra)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?;
            for v in versions {
                let a = &v.attrs;
                insert.execute(params![
                    ObjectId::fresh().0.as_slice(),
                    node_id,
                    fs_id,
                    a.path,
                    a.kind.code(),
                    sql_int(a.size),
                    a.mode,
                    a.mtime_ns,
                    a.uid,
                    a.gid,
                    a.link_target,
                    now_ns,
                    expires_ns,
                    description,
                    manifest_bytes(&v.chunks),
                    a.extra,
                ])?;
            }
        }
        tx.commit()?;
        Ok(ArchiveCommit {
            stored: versions.len() as u64,
            expires_ns,
        })
    }

    /// One page of a node's archive copies matching `query`: at most `limit`
    /// after `after`, in path, archive time and row order.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn query_archives(
        &self,
        node_id: i64,
        query: &ArchiveQuery,
        after: Option<&ArchiveKey>,
        limit: usize,
    ) -> Result<ArchivePage, CatalogError> {
        let base = query.path_prefix.trim_end_matches('/');
        let (lower, upper) = (format!("{base}/"), format!("{base}0"));
        let start = after.cloned().unwrap_or(ArchiveKey {
            path: String::new(),
            archived_ns: i64::MIN,
            row_id: i64::MIN,
        });
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ARCHIVE_COLUMNS} FROM archives a JOIN filespaces f ON f.id = a.filespace_id
             WHERE a.node_id = ?1 AND (a.path = ?2 OR (a.path >= ?3 AND a.path < ?4))
               AND (?5 = '' OR a.description = ?5)
               AND (a.path, a.archived_ns, a.id) > (?6, ?7, ?8)
             ORDER BY a.path, a.archived_ns, a.id
             LIMIT ?9"
        ))?;
        let found = stmt.query_map(
            params![
                node_id,
                query.path_prefix,
                lower,
                upper,
                query.description,
                start.path,
                start.archived_ns,
                start.row_id,
                i64::try_from(limit).unwrap_or(i64::MAX),
            ],
            |r| archive_from_row(r, query.with_chunks),
        )?;
        // Bounded in bytes as a version page is (see `objects::PAGE_BYTES`):
        // a row that does not fit starts the next page.
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        let mut full = false;
        for row in found {
            let row = row?;
            let more = bytes.saturating_add(
                super::objects::version_bytes(&row.0.version) + row.0.description.len(),
            );
            if more > super::objects::PAGE_BYTES && !rows.is_empty() {
                full = true;
                break;
            }
            bytes = more;
            rows.push(row);
        }
        let next = match rows.last() {
            Some((last, row_id)) if full || rows.len() == limit => Some(ArchiveKey {
                path: last.version.attrs.path.clone(),
                archived_ns: last.version.backup_ns,
                row_id: *row_id,
            }),
            _ => None,
        };
        Ok(ArchivePage {
            copies: rows.into_iter().map(|(copy, _)| copy).collect(),
            next,
        })
    }

    /// Deletes the archive copies with these object ids that belong to
    /// `node_id` (DELETE ARCHIVE); other nodes' ids are left alone. Their
    /// chunks are freed by the next expiration's sweep.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn delete_node_archives(
        &self,
        node_id: i64,
        object_ids: &[ObjectId],
    ) -> Result<u64, CatalogError> {
        self.delete_rows_in_batches(
            object_ids,
            "DELETE FROM archives WHERE object_id = ?1 AND node_id = ?2",
            |stmt, id| stmt.execute(params![id.0.as_slice(), node_id]),
        )
    }

    /// Row ids of the archive copies expired at `now_ns`.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn expired_archives(&self, now_ns: i64) -> Result<Vec<i64>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT id FROM archives WHERE expires_ns <= ?1")?;
        let ids = stmt
            .query_map([now_ns], |r| r.get(0))?
            .collect::<Result<Vec<i64>, _>>()?;
        Ok(ids)
    }

    /// Deletes archive copies by row id, in batches; returns how many.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn delete_archives(&self, ids: &[i64]) -> Result<u64, CatalogError> {
        self.delete_rows_in_batches(ids, "DELETE FROM archives WHERE id = ?1", |stmt, id| {
            stmt.execute([id])
        })
    }
}
