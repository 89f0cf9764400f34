//! Filespaces and object versions: backup commits and inventory queries.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use tandem_proto::{ChunkId, ObjectId};

use super::dirs::{DirIds, split_path};
use super::{Catalog, from_sql_int, sql_int};
use crate::error::{CatalogError, ServerError};
use crate::model::{Filespace, NewVersion, ObjectAttrs, ObjectKind, StoredVersion, VersionQuery};

/// Outcome of a backup transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitCounts {
    /// Versions stored.
    pub stored: u64,
    /// Versions made inactive because the client no longer has the path.
    pub deactivated: u64,
    /// Every version this transaction made inactive: replaced by a version
    /// stored here, or of a path the client no longer has. A client writing
    /// to its local vault records them (the state changes it may later
    /// give a server).
    pub deactivated_ids: Vec<ObjectId>,
}

/// Where a page of [`Catalog::query_versions`] ended: the full sort key of its
/// last row (the row id breaks ties, and the path index carries it, so paging
/// needs no sort), so the next page neither repeats nor skips a row.
#[derive(Debug, Clone)]
pub struct PageKey {
    /// The filespace the first page resolved, so later pages do not look it up again.
    filespace: String,
    /// The last row was a version of the prefix itself, not of a path below it.
    exact: bool,
    dir: String,
    position: InDir,
}

/// A place within one directory's versions: after (name, backup time, row id).
#[derive(Debug, Clone)]
struct InDir {
    name: String,
    backup_ns: i64,
    row_id: i64,
}

impl InDir {
    /// Before every version of the directory.
    fn start() -> Self {
        InDir {
            name: String::new(),
            backup_ns: i64::MIN,
            row_id: i64::MIN,
        }
    }
}

/// What a version query covers: the prefix's own versions, which live in its
/// parent directory, and every directory in `[lower, upper)`.
struct Scope<'a> {
    /// (directory, name) of the prefix itself; `None` when that directory is
    /// already inside the range (a prefix of `/` or ending in `/`).
    exact: Option<(&'a str, &'a str)>,
    lower: String,
    upper: String,
}

impl<'a> Scope<'a> {
    fn of(prefix: &'a str) -> Self {
        let (lower, upper) = subtree_range(prefix);
        let (dir, name) = split_path(prefix);
        let inside = dir >= lower.as_str() && dir < upper.as_str();
        Scope {
            exact: (!inside).then_some((dir, name)),
            lower,
            upper,
        }
    }
}

/// The versions a page query has read so far, and where the last one was.
/// Only the last row's place makes the next page's key, so it is kept in
/// buffers reused from row to row rather than copied for every row: the
/// directory and name strings, and moving rows that carried them from one
/// list to the next, were a quarter of the server's work listing a large
/// filespace.
struct PageRows {
    versions: Vec<StoredVersion>,
    /// The last row's directory, and its place in it.
    last: Option<(String, InDir)>,
    /// Rows the page may hold.
    limit: usize,
    /// Bytes the page's rows take so far (see [`version_bytes`]).
    bytes: usize,
    /// A row did not fit in the bytes left: the page is full.
    out_of_bytes: bool,
}

/// Bytes of rows after which a page is full, however few rows it holds. A
/// node decides how many chunk ids a version lists (up to what one commit
/// message carries), so a page counted in rows alone could hold 512 rows of
/// 60 MiB each; this keeps a page to one such row, or many small ones.
pub(super) const PAGE_BYTES: usize = 8 * 1024 * 1024;

/// Roughly what a version takes in a page and in its answer: its chunk ids,
/// its variable-length attributes and the fixed part.
pub(super) fn version_bytes(v: &StoredVersion) -> usize {
    v.chunks.len() * std::mem::size_of::<ChunkId>()
        + v.attrs.path.len()
        + v.attrs.link_target.len()
        + v.attrs.extra.len()
        + v.filespace.len()
        + 128
}

impl PageRows {
    fn new(limit: usize) -> Self {
        PageRows {
            // Sized for a full page, within reason: a query that asks for a
            // huge page grows the list only as rows come.
            versions: Vec::with_capacity(limit.min(1024)),
            last: None,
            limit,
            bytes: 0,
            out_of_bytes: false,
        }
    }

    /// Rows the page has room for.
    fn room(&self) -> usize {
        if self.out_of_bytes {
            return 0;
        }
        self.limit.saturating_sub(self.versions.len())
    }

    fn is_full(&self) -> bool {
        self.room() == 0
    }

    /// [`Self::room`] as a query's `LIMIT`.
    fn room_param(&self) -> i64 {
        i64::try_from(self.room()).unwrap_or(i64::MAX)
    }

    /// Reads every row a page query returns.
    fn read(&mut self, mut found: rusqlite::Rows<'_>, with_chunks: bool) -> rusqlite::Result<()> {
        // A page full of bytes ends before the query's rows do; the next
        // page starts after the last row taken.
        while !self.is_full()
            && let Some(r) = found.next()?
        {
            self.push(r, with_chunks)?;
        }
        Ok(())
    }

    /// Reads a row of the page queries: the version columns, then row id,
    /// directory and name.
    fn push(&mut self, r: &Row<'_>, with_chunks: bool) -> rusqlite::Result<()> {
        let version = version_from_row(r, with_chunks)?;
        let bytes = self.bytes.saturating_add(version_bytes(&version));
        // Kept whole within the bound, so the page's answer stays within a
        // message; a row over it alone still makes a page of its own. A row
        // left out starts the next page (the cursor is the last row kept).
        if bytes > PAGE_BYTES && !self.versions.is_empty() {
            self.out_of_bytes = true;
            return Ok(());
        }
        self.bytes = bytes;
        self.out_of_bytes = bytes >= PAGE_BYTES;
        self.versions.push(version);
        let dir = text_at(r, 16)?;
        let name = text_at(r, 17)?;
        let (last_dir, position) = self
            .last
            .get_or_insert_with(|| (String::new(), InDir::start()));
        last_dir.clear();
        last_dir.push_str(dir);
        position.name.clear();
        position.name.push_str(name);
        position.backup_ns = r.get(10)?;
        position.row_id = r.get(15)?;
        Ok(())
    }
}

/// One page of a version query.
#[derive(Debug, Default)]
pub struct VersionPage {
    /// The versions, in directory (through the last `/`), name, backup-time
    /// order: each path's versions together, oldest first (a restore keeps
    /// the last of each path's run).
    pub versions: Vec<StoredVersion>,
    /// Where the next page starts; `None` when this one is the last.
    pub next: Option<PageKey>,
}

/// The half-open range `[lower, upper)` of paths strictly below `prefix`.
/// `/` sorts just before `0`, so everything below `/a/b` lies in `["/a/b/", "/a/b0")`.
fn subtree_range(prefix: &str) -> (String, String) {
    let base = prefix.trim_end_matches('/');
    (format!("{base}/"), format!("{base}0"))
}

pub(crate) fn manifest_bytes(chunks: &[ChunkId]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.0).collect()
}

pub(crate) fn manifest_chunks(bytes: &[u8]) -> Result<Vec<ChunkId>, CatalogError> {
    if !bytes.len().is_multiple_of(32) {
        return Err(CatalogError::Malformed(format!(
            "manifest of {} bytes is not a multiple of 32",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| ChunkId(c.try_into().unwrap_or([0; 32])))
        .collect())
}

pub(crate) const VERSION_COLUMNS: &str = "o.object_id, f.name, d.path || o.name, o.kind, o.size, o.mode, \
     o.mtime_ns, o.uid, o.gid, o.link_target, o.backup_ns, o.active, o.deactivated_ns, o.manifest, o.extra";

/// The tables [`VERSION_COLUMNS`] come from.
pub(crate) const VERSION_TABLES: &str =
    "objects o JOIN dirs d ON d.id = o.dir_id JOIN filespaces f ON f.id = d.filespace_id";

/// Column `idx` of `r` as text, without a copy; an error names the column
/// and the type found.
fn text_at<'r>(r: &'r Row<'_>, idx: usize) -> rusqlite::Result<&'r str> {
    let value = r.get_ref(idx)?;
    value
        .as_str()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, value.data_type(), Box::new(e)))
}

/// Column `idx` of `r` as bytes, without a copy; an error names the column
/// and the type found.
fn blob_at<'r>(r: &'r Row<'_>, idx: usize) -> rusqlite::Result<&'r [u8]> {
    let value = r.get_ref(idx)?;
    value
        .as_blob()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, value.data_type(), Box::new(e)))
}

pub(crate) fn version_from_row(r: &Row<'_>, with_chunks: bool) -> rusqlite::Result<StoredVersion> {
    let bad = |msg: String| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            Box::new(CatalogError::Malformed(msg)),
        )
    };
    let object_id = blob_at(r, 0)?;
    let kind_code: i64 = r.get(3)?;
    let manifest: Vec<u8> = if with_chunks { r.get(13)? } else { Vec::new() };
    Ok(StoredVersion {
        object_id: ObjectId::from_slice(object_id).map_err(|e| bad(e.to_string()))?,
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
        backup_ns: r.get(10)?,
        active: r.get(11)?,
        deactivated_ns: r.get(12)?,
        chunks: manifest_chunks(&manifest).map_err(|e| bad(e.to_string()))?,
    })
}

/// Where a new row of `objects` goes and what it says beyond its attributes.
pub(crate) struct ObjectRow<'a> {
    /// Its stable id (new for a backup, the source's for a replica).
    pub(crate) object_id: &'a ObjectId,
    /// Its filespace's row id.
    pub(crate) filespace_id: i64,
    /// Its directory's row id; `attrs.path` gives the last component.
    pub(crate) dir_id: i64,
    /// Path, kind, size, mode, times, owner, link target, extra.
    pub(crate) attrs: &'a ObjectAttrs,
    /// When it was stored (on the source, for a replica).
    pub(crate) backup_ns: i64,
    /// Whether it is the active version of its path.
    pub(crate) active: bool,
    /// When it turned inactive (0 while active).
    pub(crate) deactivated_ns: i64,
    /// Its content chunks, in order.
    pub(crate) chunks: &'a [ChunkId],
}

/// Inserts one version row: the one statement both a backup commit and a
/// replica write use, so the two can never store a version differently.
pub(crate) fn insert_object(tx: &Transaction<'_>, row: &ObjectRow<'_>) -> rusqlite::Result<()> {
    let a = row.attrs;
    let (_, name) = split_path(&a.path);
    tx.prepare_cached(
        "INSERT INTO objects (object_id, filespace_id, dir_id, name, kind, size, mode,
           mtime_ns, uid, gid, link_target, backup_ns, active, deactivated_ns, manifest, extra)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        row.object_id.0.as_slice(),
        row.filespace_id,
        row.dir_id,
        name,
        a.kind.code(),
        sql_int(a.size),
        a.mode,
        a.mtime_ns,
        a.uid,
        a.gid,
        a.link_target,
        row.backup_ns,
        row.active,
        row.deactivated_ns,
        manifest_bytes(row.chunks),
        a.extra,
    ])?;
    Ok(())
}

/// Makes the active version of `name` in directory `dir_id` inactive.
pub(crate) fn deactivate(
    tx: &Transaction<'_>,
    dir_id: i64,
    name: &str,
    now_ns: i64,
) -> rusqlite::Result<Vec<ObjectId>> {
    // Most calls find nothing: a first backup's or a first pull's every
    // path. A read of the one-active index answers that for less than the
    // UPDATE, which sets up a statement savepoint and a table for its
    // RETURNING rows even when no row matches. (A changed file, which has
    // an active version, pays the one extra read.)
    let any_active = tx
        .prepare_cached("SELECT 1 FROM objects WHERE dir_id = ?1 AND name = ?2 AND active = 1")?
        .exists(params![dir_id, name])?;
    if !any_active {
        return Ok(Vec::new());
    }
    let mut stmt = tx.prepare_cached(
        "UPDATE objects SET active = 0, deactivated_ns = ?3
         WHERE dir_id = ?1 AND name = ?2 AND active = 1
         RETURNING object_id",
    )?;
    let rows = stmt.query_map(params![dir_id, name, now_ns], |r| {
        let raw: Vec<u8> = r.get(0)?;
        ObjectId::from_slice(&raw).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, e.into())
        })
    })?;
    rows.collect()
}

/// Marks the inactive versions of `path` beyond the newest `keep` as expiring
/// (TSM: versions over VEREXISTS/VERDELETED are marked for deletion at once).
fn limit_inactive(
    tx: &Transaction<'_>,
    dir_id: i64,
    name: &str,
    keep: u32,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "UPDATE objects SET expiring = 1 WHERE id IN (
           SELECT id FROM objects
           WHERE dir_id = ?1 AND name = ?2 AND active = 0 AND expiring = 0
           ORDER BY backup_ns DESC LIMIT -1 OFFSET ?3)",
    )?
    .execute(params![dir_id, name, keep])
}

/// The visibility filter of a version query, on point-in-time parameter `pit`
/// (always mentioned, so every variant takes the same parameters).
fn state_filter(query: &VersionQuery, pit: &str) -> String {
    match query.point_in_time_ns {
        Some(_) => {
            format!("AND o.backup_ns <= {pit} AND (o.active = 1 OR o.deactivated_ns > {pit})")
        }
        None if query.include_inactive => format!("AND {pit} = {pit}"),
        None => format!("AND o.active = 1 AND {pit} = {pit}"),
    }
}

/// As many versions as `rows` has room for in directory `dir` after `from`
/// (only those named `name`, when given), in name, backup time and row id
/// order.
fn versions_in_dir(
    conn: &Connection,
    filespace_id: i64,
    query: &VersionQuery,
    dir: &str,
    name: Option<&str>,
    from: &InDir,
    rows: &mut PageRows,
) -> rusqlite::Result<()> {
    let name_filter = match name {
        Some(_) => "AND o.name = ?3",
        None => "AND ?3 IS NULL",
    };
    let state = state_filter(query, "?7");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS}, o.id, d.path, o.name FROM {VERSION_TABLES}
         WHERE d.filespace_id = ?1 AND d.path = ?2 {name_filter}
           AND (o.name, o.backup_ns, o.id) > (?4, ?5, ?6)
           AND o.expiring = 0 {state}
         ORDER BY o.name, o.backup_ns, o.id
         LIMIT ?8"
    ))?;
    let room = rows.room_param();
    let found = stmt.query(params![
        filespace_id,
        dir,
        name,
        from.name,
        from.backup_ns,
        from.row_id,
        query.point_in_time_ns.unwrap_or(0),
        room,
    ])?;
    rows.read(found, query.with_chunks)
}

/// As many versions as `rows` has room for in the directories after `lower`
/// (from it, when `inclusive`) and before `upper`, in directory, name, backup
/// time and row id order.
fn versions_in_dirs(
    conn: &Connection,
    filespace_id: i64,
    query: &VersionQuery,
    lower: &str,
    inclusive: bool,
    upper: &str,
    rows: &mut PageRows,
) -> rusqlite::Result<()> {
    let from = if inclusive { ">=" } else { ">" };
    let state = state_filter(query, "?4");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS}, o.id, d.path, o.name FROM {VERSION_TABLES}
         WHERE d.filespace_id = ?1 AND d.path {from} ?2 AND d.path < ?3
           AND o.expiring = 0 {state}
         ORDER BY d.path, o.name, o.backup_ns, o.id
         LIMIT ?5"
    ))?;
    let room = rows.room_param();
    let found = stmt.query(params![
        filespace_id,
        lower,
        upper,
        query.point_in_time_ns.unwrap_or(0),
        room,
    ])?;
    rows.read(found, query.with_chunks)
}

impl Catalog {
    /// Id of a node's filespace, creating it when `create` is set.
    pub(crate) fn filespace_id(
        tx: &Transaction<'_>,
        node_id: i64,
        name: &str,
        create: bool,
    ) -> rusqlite::Result<Option<i64>> {
        if create {
            tx.execute(
                "INSERT INTO filespaces (node_id, name) VALUES (?1, ?2)
                 ON CONFLICT (node_id, name) DO NOTHING",
                params![node_id, name],
            )?;
        }
        tx.query_row(
            "SELECT id FROM filespaces WHERE node_id = ?1 AND name = ?2",
            params![node_id, name],
            |r| r.get(0),
        )
        .optional()
    }

    /// Stores a backup transaction atomically: every version becomes the active
    /// version of its path (the previous one turns inactive), and every path in
    /// `deactivate` loses its active version. All referenced chunks must already
    /// be in the chunk index and owned by the node (uploaded by it, or reported
    /// present to it), so a committed object can always be restored and a
    /// node cannot claim another node's data by naming its chunk ids.
    ///
    /// # Errors
    /// [`ServerError::MissingChunks`] when a referenced chunk is not stored;
    /// SQLite errors.
    pub fn commit_objects(
        &self,
        node_id: i64,
        filespace: &str,
        versions: &[NewVersion],
        deactivate_paths: &[String],
        now_ns: i64,
    ) -> Result<CommitCounts, ServerError> {
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
        // The active version counts towards VEREXISTS.
        let keep_existing = policy.verexists.saturating_sub(1);
        let mut counts = CommitCounts::default();
        let mut dirs = DirIds::default();
        {
            for v in versions {
                let a = &v.attrs;
                let (dir, name) = split_path(&a.path);
                let dir_id = dirs
                    .get(&tx, fs_id, dir, true)?
                    .ok_or_else(|| CatalogError::Malformed(format!("directory {dir} vanished")))?;
                let superseded = deactivate(&tx, dir_id, name, now_ns)?;
                insert_object(
                    &tx,
                    &ObjectRow {
                        object_id: &ObjectId::fresh(),
                        filespace_id: fs_id,
                        dir_id,
                        attrs: a,
                        backup_ns: now_ns,
                        active: true,
                        deactivated_ns: 0,
                        chunks: &v.chunks,
                    },
                )?;
                // Only a version turned inactive can take the path over its
                // limit; a path whose limit was lowered since is trimmed by
                // expiration, which applies the limits to every path.
                if !superseded.is_empty() {
                    limit_inactive(&tx, dir_id, name, keep_existing)?;
                }
                counts.stored += 1;
                counts.deactivated_ids.extend(superseded);
            }
        }
        for path in deactivate_paths {
            let (dir, name) = split_path(path);
            let Some(dir_id) = dirs.get(&tx, fs_id, dir, false)? else {
                continue; // nothing was ever stored in that directory
            };
            let gone = deactivate(&tx, dir_id, name, now_ns)?;
            if !gone.is_empty() {
                counts.deactivated += gone.len() as u64;
                counts.deactivated_ids.extend(gone);
                limit_inactive(&tx, dir_id, name, policy.verdeleted)?;
            }
        }
        // Hiding versions beyond the limit comes only with one of these.
        if counts.stored > 0 || counts.deactivated > 0 {
            super::changes::node_changed(&tx, node_id)?;
        }
        tx.commit()?;
        Ok(counts)
    }

    /// The filespace of `node_id` that owns `path`: the longest filespace name
    /// that is `path` itself or one of its ancestors.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn filespace_for_path(
        &self,
        node_id: i64,
        path: &str,
    ) -> Result<Option<String>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT name FROM filespaces WHERE node_id = ?1")?;
        let names = stmt
            .query_map([node_id], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(names
            .into_iter()
            .filter(|fs| path_is_within(path, fs))
            .max_by_key(String::len))
    }

    /// One page of the versions of a node's objects matching `query`, ordered by
    /// directory, name, backup time and object id (the prefix's own versions
    /// first): at most `limit` rows after `after` (from
    /// the start when `None`). Callers page through a large filespace with
    /// [`VersionPage::next`], so neither side holds the whole list and the
    /// catalog lock is held for one page at a time.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn query_versions(
        &self,
        node_id: i64,
        query: &VersionQuery,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<VersionPage, CatalogError> {
        let filespace = match after {
            Some(key) => key.filespace.clone(),
            None if query.filespace.is_empty() => {
                match self.filespace_for_path(node_id, &query.path_prefix)? {
                    Some(fs) => fs,
                    None => return Ok(VersionPage::default()),
                }
            }
            None => query.filespace.clone(),
        };
        let conn = self.reader();
        let Some(fs_id) = conn
            .prepare_cached("SELECT id FROM filespaces WHERE node_id = ?1 AND name = ?2")?
            .query_row(params![node_id, filespace], |r| r.get::<_, i64>(0))
            .optional()?
        else {
            return Ok(VersionPage::default());
        };
        let scope = Scope::of(&query.path_prefix);
        let mut rows = PageRows::new(limit);
        // The prefix's own versions sort first: their directory is the
        // prefix's parent, which sorts before the prefix's subtree.
        if let Some((dir, name)) = scope.exact
            && after.is_none_or(|k| k.exact)
        {
            let from = after.map_or_else(InDir::start, |k| k.position.clone());
            versions_in_dir(&conn, fs_id, query, dir, Some(name), &from, &mut rows)?;
        }
        if !rows.is_full() {
            match after.filter(|k| !k.exact) {
                Some(k) => {
                    versions_in_dir(&conn, fs_id, query, &k.dir, None, &k.position, &mut rows)?;
                    if !rows.is_full() {
                        let (lower, upper) = (&k.dir, &scope.upper);
                        versions_in_dirs(&conn, fs_id, query, lower, false, upper, &mut rows)?;
                    }
                }
                None => {
                    let (lower, upper) = (&scope.lower, &scope.upper);
                    versions_in_dirs(&conn, fs_id, query, lower, true, upper, &mut rows)?;
                }
            }
        }
        let next = match rows.last {
            Some((dir, position)) if rows.is_full() => Some(PageKey {
                filespace: filespace.clone(),
                // Rows below the prefix never come from its parent directory.
                exact: scope.exact.is_some_and(|(exact_dir, _)| dir == exact_dir),
                dir,
                position,
            }),
            _ => None,
        };
        Ok(VersionPage {
            versions: rows.versions,
            next,
        })
    }

    /// A node's filespaces with their figures.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn list_filespaces(&self, node_id: i64) -> Result<Vec<Filespace>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT f.name, count(o.id), coalesce(sum(o.size), 0),
                    f.last_backup_start_ns, f.last_backup_end_ns, f.last_repl_ns
             FROM filespaces f LEFT JOIN dirs d ON d.filespace_id = f.id
                               LEFT JOIN objects o ON o.dir_id = d.id AND o.active = 1
             WHERE f.node_id = ?1 GROUP BY f.id ORDER BY f.name",
        )?;
        let rows = stmt
            .query_map([node_id], |r| {
                Ok(Filespace {
                    name: r.get(0)?,
                    active_objects: from_sql_int(r.get(1)?),
                    active_bytes: from_sql_int(r.get(2)?),
                    last_backup_start_ns: r.get(3)?,
                    last_backup_end_ns: r.get(4)?,
                    last_repl_ns: r.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Records the start (`completed == false`) or successful end of a backup.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn mark_backup(
        &self,
        node_id: i64,
        filespace: &str,
        completed: bool,
        now_ns: i64,
    ) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        super::switches::refuse_if_switch_stopped_writes(&tx, node_id)?;
        let fs_id = Self::filespace_id(&tx, node_id, filespace, true)?
            .ok_or_else(|| CatalogError::Malformed("filespace vanished".into()))?;
        let column = if completed {
            "last_backup_end_ns"
        } else {
            "last_backup_start_ns"
        };
        tx.execute(
            &format!("UPDATE filespaces SET {column} = ?2 WHERE id = ?1"),
            params![fs_id, now_ns],
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// Whether `path` is `root` or lies below it (`/` is below nothing but itself
/// and contains everything).
pub fn path_is_within(path: &str, root: &str) -> bool {
    if root == "/" {
        return path.starts_with('/');
    }
    path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtree_range_covers_children_but_not_siblings() {
        let exact = "/a/b";
        let (lower, upper) = subtree_range(exact);
        let within = |p: &str| p == exact || (p >= lower.as_str() && p < upper.as_str());
        assert!(within("/a/b"));
        assert!(within("/a/b/c"));
        assert!(within("/a/b/c/d e"));
        assert!(!within("/a/bc"));
        assert!(!within("/a/b-c"));
        assert!(!within("/a"));
    }

    #[test]
    fn path_within_root() {
        assert!(path_is_within("/home/a", "/home"));
        assert!(path_is_within("/home", "/home"));
        assert!(!path_is_within("/homework", "/home"));
        assert!(path_is_within("/x", "/"));
    }
}
