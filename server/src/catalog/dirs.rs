//! Stored paths as a directory row and a name.
//!
//! A version row used to carry its whole path, and both path indexes carried it
//! again: three copies of `/home/user/projects/...` per version were most of
//! the catalog. Now the directory part (everything through the last `/`) is a
//! row of `dirs`, stored once per filespace, and a version holds its id and
//! the last component. `dirs.path || objects.name` is the path again.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

/// Splits a path after its last `/`: `/a/b` is (`/a/`, `b`), `/a` is (`/`, `a`),
/// `/` is (`/`, ``). A path without `/` has an empty directory part. The two
/// parts concatenated are always the path.
pub(crate) fn split_path(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => path.split_at(i + 1),
        None => ("", path),
    }
}

/// Directory ids within one transaction. Remembers the last directory, since
/// a backup's versions arrive directory by directory.
#[derive(Debug, Default)]
pub(crate) struct DirIds {
    last: Option<(i64, String, i64)>,
}

impl DirIds {
    /// The id of directory `dir` of filespace `filespace_id`; created when
    /// missing and `create` is set, else `None` when missing.
    pub(crate) fn get(
        &mut self,
        tx: &Transaction<'_>,
        filespace_id: i64,
        dir: &str,
        create: bool,
    ) -> rusqlite::Result<Option<i64>> {
        if let Some((fs, path, id)) = &self.last
            && *fs == filespace_id
            && path == dir
        {
            return Ok(Some(*id));
        }
        let found: Option<i64> = tx
            .prepare_cached("SELECT id FROM dirs WHERE filespace_id = ?1 AND path = ?2")?
            .query_row(params![filespace_id, dir], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None if create => {
                tx.prepare_cached("INSERT INTO dirs (filespace_id, path) VALUES (?1, ?2)")?
                    .execute(params![filespace_id, dir])?;
                tx.last_insert_rowid()
            }
            None => return Ok(None),
        };
        self.last = Some((filespace_id, dir.to_string(), id));
        Ok(Some(id))
    }
}

/// Deletes directories no version refers to any more (after expiration or
/// replicated deletions). Returns how many went.
pub(crate) fn delete_unused_dirs(tx: &Transaction<'_>) -> rusqlite::Result<usize> {
    tx.execute(
        "DELETE FROM dirs WHERE NOT EXISTS (SELECT 1 FROM objects WHERE dir_id = dirs.id)",
        [],
    )
}

/// Columns copied unchanged from an old version row to a new one, in order.
const KEPT_COLUMNS: &str = "id, object_id, filespace_id, kind, size, mode, mtime_ns, uid, gid, \
     link_target, backup_ns, active, deactivated_ns, expiring, manifest";

/// Moves a catalog written before `dirs` existed (whole paths in `objects`)
/// to the current layout, in one transaction, before the schema is applied.
/// Returns whether there was anything to move. Row ids and object ids are
/// kept, so nothing that refers to a version notices.
pub(crate) fn migrate_whole_paths(conn: &mut Connection, schema: &str) -> rusqlite::Result<bool> {
    let whole_paths = conn
        .prepare("SELECT 1 FROM pragma_table_info('objects') WHERE name = 'path'")?
        .exists([])?;
    if !whole_paths {
        return Ok(false);
    }
    let tx = conn.transaction()?;
    tx.execute_batch(
        "DROP INDEX IF EXISTS objects_by_path;
         DROP INDEX IF EXISTS objects_one_active;
         ALTER TABLE objects RENAME TO objects_whole_paths;",
    )?;
    tx.execute_batch(schema)?;
    {
        let mut read = tx.prepare(&format!(
            "SELECT path, {KEPT_COLUMNS} FROM objects_whole_paths ORDER BY filespace_id, path"
        ))?;
        let mut insert = tx.prepare(&format!(
            "INSERT INTO objects (dir_id, name, {KEPT_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        ))?;
        let mut dirs = DirIds::default();
        let mut rows = read.query([])?;
        while let Some(row) = rows.next()? {
            let path: String = row.get(0)?;
            let filespace_id: i64 = row.get(3)?;
            let (dir, name) = split_path(&path);
            let dir_id = dirs.get(&tx, filespace_id, dir, true)?;
            let mut values = vec![Value::from(dir_id), Value::from(name.to_string())];
            for i in 1..=15 {
                values.push(row.get(i)?);
            }
            insert.execute(rusqlite::params_from_iter(values))?;
        }
    }
    tx.execute_batch("DROP TABLE objects_whole_paths")?;
    tx.commit()?;
    Ok(true)
}

/// Adds the `extra` column to a catalog written before objects carried
/// extended attributes, device numbers and hard-link groups; its versions get
/// an empty one. Returns whether the column was added.
pub(crate) fn add_extra_column(conn: &Connection) -> rusqlite::Result<bool> {
    let has_table = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'objects'")?
        .exists([])?;
    let has_column = conn
        .prepare("SELECT 1 FROM pragma_table_info('objects') WHERE name = 'extra'")?
        .exists([])?;
    if !has_table || has_column {
        return Ok(false);
    }
    conn.execute_batch("ALTER TABLE objects ADD COLUMN extra BLOB NOT NULL DEFAULT x''")?;
    Ok(true)
}

/// Rewrites stored names that literally contain a character of the range
/// [`tandem_proto::names`] uses for escaped bytes into that encoding, once
/// per catalog: before names were bytes, such a character was stored as it
/// was, and would now be read as an escaped byte. Returns the rows rewritten.
pub(crate) fn canonical_names(conn: &mut Connection) -> rusqlite::Result<usize> {
    const DONE: &str = "names_canonical";
    let done = conn
        .prepare("SELECT 1 FROM server_info WHERE key = ?1")?
        .exists([DONE])?;
    if done {
        return Ok(0);
    }
    let needs = |text: &str| text.chars().any(tandem_proto::names::is_escape);
    let canonical = |text: &str| tandem_proto::names::encode_bytes(text.as_bytes());
    let tx = conn.transaction()?;
    let mut rewritten = 0;
    {
        let dirs: Vec<(i64, String)> = tx
            .prepare("SELECT id, path FROM dirs")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (id, path) in dirs.into_iter().filter(|(_, p)| needs(p)) {
            rewritten += tx.execute(
                "UPDATE dirs SET path = ?1 WHERE id = ?2",
                params![canonical(&path), id],
            )?;
        }
        let objects: Vec<(i64, String, String)> = tx
            .prepare("SELECT id, name, link_target FROM objects")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (id, name, target) in objects.into_iter().filter(|(_, n, t)| needs(n) || needs(t)) {
            rewritten += tx.execute(
                "UPDATE objects SET name = ?1, link_target = ?2 WHERE id = ?3",
                params![canonical(&name), canonical(&target), id],
            )?;
        }
    }
    tx.execute(
        "INSERT INTO server_info (key, value) VALUES (?1, '1')",
        [DONE],
    )?;
    tx.commit()?;
    Ok(rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join_give_the_path_back() {
        assert_eq!(split_path("/a/b"), ("/a/", "b"));
        assert_eq!(split_path("/a"), ("/", "a"));
        assert_eq!(split_path("/"), ("/", ""));
        assert_eq!(split_path("/a/b/"), ("/a/b/", ""));
        assert_eq!(split_path("plain"), ("", "plain"));
        for p in ["/x/y z/ü.txt", "/", "", "rel/a", "/a//b"] {
            let (dir, name) = split_path(p);
            assert_eq!(format!("{dir}{name}"), p);
            assert!(!name.contains('/'));
        }
    }
}
