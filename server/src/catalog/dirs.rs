//! Stored paths as a directory row and a name.
//!
//! A version row used to carry its whole path, and both path indexes carried it
//! again: three copies of `/home/user/projects/...` per version were most of
//! the catalog. Now the directory part (everything through the last `/`) is a
//! row of `dirs`, stored once per filespace, and a version holds its id and
//! the last component. `dirs.path || objects.name` is the path again.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

pub(crate) use tandem_proto::names::split_path;

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

/// Adds `column` (with its SQL declaration) to `table` in a catalog written
/// before the column existed. Returns whether it was added.
pub(crate) fn add_column(
    conn: &Connection,
    table: &str,
    column: &str,
    declaration: &str,
) -> rusqlite::Result<bool> {
    let has_table = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .exists([table])?;
    let has_column = conn
        .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
        .exists([table, column])?;
    if !has_table || has_column {
        return Ok(false);
    }
    conn.execute_batch(&format!(
        "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
    ))?;
    Ok(true)
}

/// Rewrites stored names that literally contain a character of the range
/// [`tandem_proto::names`] uses for escaped bytes into that encoding. Run
/// once, when a catalog from before names were bytes is first opened (the
/// caller knows: it is the open that adds the `extra` column or moves whole
/// paths): such a character was stored as it was, and would now be read as
/// an escaped byte. Only the rows to change are held in memory. A rewritten
/// directory whose new path another row already has is left as it was and
/// counted in the second figure. Returns (rewritten, left).
pub(crate) fn canonical_names(conn: &mut Connection) -> rusqlite::Result<(usize, usize)> {
    let needs = |text: &str| text.chars().any(tandem_proto::names::is_escape);
    let canonical = |text: &str| tandem_proto::names::encode_bytes(text.as_bytes());
    let tx = conn.transaction()?;
    let (mut rewritten, mut left) = (0, 0);
    for (table, id, columns) in [
        ("filespaces", "id", &["name"][..]),
        ("dirs", "id", &["path"][..]),
        ("objects", "id", &["name", "link_target"][..]),
    ] {
        let select = format!("SELECT {id}, {} FROM {table}", columns.join(", "));
        let mut changes: Vec<(i64, Vec<String>)> = Vec::new();
        {
            let mut stmt = tx.prepare(&select)?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let values: Vec<String> = (1..=columns.len())
                    .map(|i| row.get(i))
                    .collect::<Result<_, _>>()?;
                if values.iter().any(|v| needs(v)) {
                    changes.push((row.get(0)?, values.iter().map(|v| canonical(v)).collect()));
                }
            }
        }
        let set: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ?{}", i + 2))
            .collect();
        let update = format!(
            "UPDATE OR IGNORE {table} SET {} WHERE {id} = ?1",
            set.join(", ")
        );
        for (row_id, values) in changes {
            let mut params: Vec<rusqlite::types::Value> = vec![row_id.into()];
            params.extend(values.into_iter().map(rusqlite::types::Value::from));
            match tx.execute(&update, rusqlite::params_from_iter(params))? {
                0 => left += 1,
                n => rewritten += n,
            }
        }
    }
    tx.commit()?;
    Ok((rewritten, left))
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
