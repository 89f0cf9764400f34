//! The server's active versions below a backup's root, as an incremental
//! compares against them.
//!
//! Held in a private temporary SQLite database rather than a hash map, so the
//! client's memory does not grow with the number of files in the filespace:
//! SQLite keeps a few megabytes of pages in memory and the rest in a temporary
//! file that is deleted when the backup ends. Each walked path is taken out as
//! it is seen; what is left at the end is gone locally.

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use tandem_proto::pb;

/// Pages SQLite may keep in memory, in KiB (negative `cache_size`).
const CACHE_KIB: i64 = 4096;

/// Active versions by path.
#[derive(Debug)]
pub struct Inventory {
    conn: Connection,
    /// Rows added; a first backup's inventory is empty and is never queried.
    added: u64,
}

impl Inventory {
    /// An empty inventory in a new temporary database.
    ///
    /// # Errors
    /// SQLite cannot make the temporary database.
    pub fn new() -> Result<Self, rusqlite::Error> {
        // An empty file name is SQLite's private temporary database on disk.
        let conn = Connection::open("")?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = OFF;
             PRAGMA synchronous = OFF;
             PRAGMA cache_size = -{CACHE_KIB};
             CREATE TABLE inventory (path TEXT PRIMARY KEY, attrs BLOB NOT NULL) WITHOUT ROWID;"
        ))?;
        Ok(Inventory { conn, added: 0 })
    }

    /// Adds versions (one transaction for the lot).
    ///
    /// # Errors
    /// SQLite errors (a full temporary directory, say).
    pub fn add(&mut self, versions: Vec<pb::ObjectAttrs>) -> Result<(), rusqlite::Error> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx
                .prepare_cached("INSERT OR REPLACE INTO inventory (path, attrs) VALUES (?1, ?2)")?;
            self.added += versions.len() as u64;
            for attrs in versions {
                insert.execute(params![attrs.path, attrs.encode_to_vec()])?;
            }
        }
        tx.commit()
    }

    /// Removes and returns the version at `path`, if any.
    ///
    /// The first call opens one transaction that lasts as long as the
    /// inventory: the database is private and thrown away, so committing each
    /// delete (SQLite's default) would only add a journal cycle per file.
    ///
    /// # Errors
    /// SQLite errors, or a stored row that does not decode.
    pub fn take(&mut self, path: &str) -> Result<Option<pb::ObjectAttrs>, rusqlite::Error> {
        if self.added == 0 {
            return Ok(None);
        }
        if self.conn.is_autocommit() {
            self.conn.execute_batch("BEGIN")?;
        }
        let blob: Option<Vec<u8>> = self
            .conn
            .prepare_cached("DELETE FROM inventory WHERE path = ?1 RETURNING attrs")?
            .query_row([path], |row| row.get(0))
            .optional()?;
        blob.map(|b| {
            pb::ObjectAttrs::decode(b.as_slice()).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, e.into())
            })
        })
        .transpose()
    }

    /// Paths not taken, in order.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn remaining(&self) -> Result<Vec<String>, rusqlite::Error> {
        self.conn
            .prepare("SELECT path FROM inventory ORDER BY path")?
            .query_map([], |row| row.get(0))?
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(path: &str, size: u64) -> pb::ObjectAttrs {
        pb::ObjectAttrs {
            path: path.into(),
            size,
            ..Default::default()
        }
    }

    #[test]
    fn take_returns_each_version_once_and_remaining_lists_the_rest() {
        let mut inv = Inventory::new().unwrap();
        inv.add(vec![attrs("/a", 1), attrs("/b", 2), attrs("/c/d", 3)])
            .unwrap();
        assert_eq!(inv.take("/b").unwrap().unwrap().size, 2);
        assert!(inv.take("/b").unwrap().is_none());
        assert!(inv.take("/nope").unwrap().is_none());
        assert_eq!(inv.remaining().unwrap(), vec!["/a", "/c/d"]);
    }
}
