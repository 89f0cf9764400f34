//! Named administrators (TSM REGISTER / UPDATE / REMOVE / QUERY ADMIN).

use rusqlite::{OptionalExtension, Row, params};

use super::Catalog;
use crate::error::CatalogError;

/// One administrator as the catalog keeps it.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Upper-case name.
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Its credentials are refused.
    pub locked: bool,
    /// Wrong passwords in a row.
    pub failed_logons: u32,
    /// When it was registered.
    pub registered_ns: i64,
    /// Its last accepted call; 0 for never.
    pub last_logon_ns: i64,
}

const COLUMNS: &str = "name, password_hash, locked, failed_logons, registered_ns, last_logon_ns";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Admin> {
    Ok(Admin {
        name: r.get(0)?,
        password_hash: r.get(1)?,
        locked: r.get(2)?,
        failed_logons: r.get(3)?,
        registered_ns: r.get(4)?,
        last_logon_ns: r.get(5)?,
    })
}

impl Catalog {
    /// Registers an administrator; `false` when the name is taken.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn register_admin(
        &self,
        name: &str,
        hash: &str,
        now_ns: i64,
    ) -> Result<bool, CatalogError> {
        Ok(self.conn().execute(
            "INSERT INTO admins (name, password_hash, registered_ns) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO NOTHING",
            params![name, hash, now_ns],
        )? == 1)
    }

    /// The administrator `name`, if registered.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn admin(&self, name: &str) -> Result<Option<Admin>, CatalogError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM admins WHERE name = ?1"),
                [name],
                from_row,
            )
            .optional()?)
    }

    /// Every administrator, by name.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn list_admins(&self) -> Result<Vec<Admin>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM admins ORDER BY name"))?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets a new password hash and/or lock state; unlocking also forgets
    /// failed attempts. `false` when there is no such administrator.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn update_admin(
        &self,
        name: &str,
        hash: Option<&str>,
        locked: Option<bool>,
    ) -> Result<bool, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists = tx
            .prepare("SELECT 1 FROM admins WHERE name = ?1")?
            .exists([name])?;
        if let Some(hash) = hash {
            tx.execute(
                "UPDATE admins SET password_hash = ?2 WHERE name = ?1",
                params![name, hash],
            )?;
        }
        if let Some(locked) = locked {
            tx.execute(
                "UPDATE admins SET locked = ?2,
                   failed_logons = CASE WHEN ?2 THEN failed_logons ELSE 0 END
                 WHERE name = ?1",
                params![name, locked],
            )?;
        }
        tx.commit()?;
        Ok(exists)
    }

    /// Removes an administrator unless it is the last one. `Ok(None)` when
    /// there is no such administrator, `Ok(Some(false))` when it is the last.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn remove_admin(&self, name: &str) -> Result<Option<bool>, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists = tx
            .prepare("SELECT 1 FROM admins WHERE name = ?1")?
            .exists([name])?;
        if !exists {
            return Ok(None);
        }
        let count: i64 = tx.query_row("SELECT count(*) FROM admins", [], |r| r.get(0))?;
        if count <= 1 {
            return Ok(Some(false));
        }
        tx.execute("DELETE FROM admins WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(Some(true))
    }

    /// Counts a wrong password; returns the failures in a row, and locks the
    /// administrator once they reach `limit` (0: never).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn record_admin_failure(&self, name: &str, limit: u32) -> Result<u32, CatalogError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE admins SET failed_logons = failed_logons + 1,
               locked = locked OR (?2 > 0 AND failed_logons + 1 >= ?2)
             WHERE name = ?1",
            params![name, limit],
        )?;
        Ok(conn
            .query_row(
                "SELECT failed_logons FROM admins WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// Records an accepted call: forgets failed attempts.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn record_admin_success(&self, name: &str, now_ns: i64) -> Result<(), CatalogError> {
        self.conn().execute(
            "UPDATE admins SET failed_logons = 0, last_logon_ns = ?2 WHERE name = ?1",
            params![name, now_ns],
        )?;
        Ok(())
    }
}
