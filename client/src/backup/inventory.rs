//! The server's active versions below a backup's root, as an incremental
//! compares against them.
//!
//! Held in a private temporary SQLite database rather than a hash map, so the
//! client's memory grows by only one bit per file in the filespace:
//! SQLite keeps a few megabytes of pages in memory and the rest in a temporary
//! file that is deleted when the backup ends. Each walked path is taken as it
//! is seen; what is left at the end is gone locally.
//!
//! Taking a path marks its row in a bit set (one bit per row: 1.2 MiB for
//! ten million) instead of deleting it. A `DELETE ... RETURNING` per walked
//! file cost more than the walk itself in an unchanged incremental of 80,000
//! files: SQLite opens and closes a temporary b-tree for each `RETURNING`,
//! and rebalances the table's pages as it shrinks. (A hash map in memory for
//! small inventories was tried as well: 27 MiB more for those 80,000 files
//! and no faster, as the wait for the server's listing then dominates.)

use fixedbitset::FixedBitSet;
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use tandem_proto::pb;

/// Pages SQLite may keep in memory, in KiB (negative `cache_size`).
const CACHE_KIB: i64 = 4096;

/// Active versions by path.
#[derive(Debug)]
pub struct Inventory {
    conn: Connection,
    /// Rows added: the next row's number. A first backup's inventory is
    /// empty and is never queried.
    added: usize,
    /// Row numbers taken.
    taken: FixedBitSet,
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
             CREATE TABLE inventory (
                 path TEXT PRIMARY KEY,
                 seq INTEGER NOT NULL,
                 attrs BLOB NOT NULL
             ) WITHOUT ROWID;"
        ))?;
        Ok(Inventory {
            conn,
            added: 0,
            taken: FixedBitSet::new(),
        })
    }

    /// Adds versions, in one transaction. A path added again replaces its
    /// earlier version.
    ///
    /// # Errors
    /// SQLite errors (a full temporary directory, say).
    pub fn add(&mut self, versions: Vec<pb::ObjectAttrs>) -> Result<(), rusqlite::Error> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO inventory (path, seq, attrs) VALUES (?1, ?2, ?3)",
            )?;
            for mut attrs in versions {
                let seq = i64::try_from(self.added)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
                // The path is the row's key: not stored a second time in the
                // encoded version (about half its bytes for a small file).
                let path = std::mem::take(&mut attrs.path);
                insert.execute(params![path, seq, attrs.encode_to_vec()])?;
                self.added += 1;
            }
        }
        tx.commit()?;
        self.taken.grow(self.added);
        Ok(())
    }

    /// Takes the version at `path`: returns it the first time, `None` after
    /// that or when there is none.
    ///
    /// # Errors
    /// SQLite errors, or a stored version that does not decode.
    pub fn take(&mut self, path: &str) -> Result<Option<pb::ObjectAttrs>, rusqlite::Error> {
        if self.added == 0 {
            return Ok(None);
        }
        let found: Option<(i64, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT seq, attrs FROM inventory WHERE path = ?1")?
            .query_row([path], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let Some((seq, blob)) = found else {
            return Ok(None);
        };
        let seq = seq_index(seq, 0)?;
        if seq >= self.taken.len() {
            self.taken.grow(seq + 1);
        }
        if self.taken.put(seq) {
            return Ok(None);
        }
        pb::ObjectAttrs::decode(blob.as_slice())
            .map(|attrs| {
                Some(pb::ObjectAttrs {
                    path: path.to_string(),
                    ..attrs
                })
            })
            .map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Blob, e.into())
            })
    }

    /// Paths not taken, in order.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn remaining(&self) -> Result<Vec<String>, rusqlite::Error> {
        let mut left = Vec::new();
        let mut query = self
            .conn
            .prepare("SELECT path, seq FROM inventory ORDER BY path")?;
        let mut rows = query.query([])?;
        while let Some(row) = rows.next()? {
            if !self.taken.contains(seq_index(row.get(1)?, 1)?) {
                left.push(row.get(0)?);
            }
        }
        Ok(left)
    }
}

/// A row number read from result column `column`, as an index into the
/// taken set.
fn seq_index(seq: i64, column: usize) -> Result<usize, rusqlite::Error> {
    usize::try_from(seq).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Integer, e.into())
    })
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
        let b = inv.take("/b").unwrap().unwrap();
        assert_eq!((b.path.as_str(), b.size), ("/b", 2));
        assert!(inv.take("/b").unwrap().is_none());
        assert!(inv.take("/nope").unwrap().is_none());
        assert_eq!(inv.remaining().unwrap(), vec!["/a", "/c/d"]);
    }

    #[test]
    fn a_path_added_again_is_taken_once_with_its_last_version() {
        let mut inv = Inventory::new().unwrap();
        inv.add(vec![attrs("/a", 1), attrs("/b", 2)]).unwrap();
        inv.add(vec![attrs("/a", 3)]).unwrap();
        assert_eq!(inv.take("/a").unwrap().unwrap().size, 3);
        assert!(inv.take("/a").unwrap().is_none());
        assert_eq!(inv.remaining().unwrap(), vec!["/b"]);
        assert_eq!(inv.take("/b").unwrap().unwrap().size, 2);
        assert!(inv.remaining().unwrap().is_empty());
    }

    #[test]
    fn an_empty_inventory_takes_nothing_and_leaves_nothing() {
        let mut inv = Inventory::new().unwrap();
        assert!(inv.take("/a").unwrap().is_none());
        assert!(inv.remaining().unwrap().is_empty());
    }
}
