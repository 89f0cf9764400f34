//! The server catalog: nodes, filespaces, object versions, the chunk index and the
//! activity log, in one SQLite database. Every SQL statement of the server lives
//! in this module and its children.
//!
//! rusqlite is blocking, so async code reaches the catalog through
//! `spawn_blocking`. The writing connection sits behind a std `Mutex` that is
//! never held across an `.await`; SQLite allows one writer at a time anyway.
//! Hot reads (what a node owns, where chunks are, version listings, the
//! activity log) go to a few read-only connections instead: in WAL mode they
//! see the last committed state and neither wait for a commit's fsync nor hold
//! one up, so one node's large query does not stall another's backup. The database runs
//! in WAL mode with `synchronous=FULL`: a committed transaction is on disk, which is
//! what makes a commit an acknowledgement that survives power loss.

mod actlog;
mod admins;
mod archives;
mod changes;
mod chunks;
mod damage;
mod dbcopy;
mod dirs;
mod expire;
mod nodes;
mod objects;
mod occupancy;
mod pools;
mod recovery;
mod replication;
mod schedules;
mod switches;

pub use actlog::ActlogFilter;
pub use admins::Admin;
pub use archives::{ArchiveCommit, ArchiveKey, ArchivePage};
pub use damage::DamagedChunk;
pub use dbcopy::{ChunkReconcile, Damaged};

/// The server-wide settings the catalog keeps (its `server_info` table), so
/// a misspelled key cannot read or write a setting nobody else uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// The name this data directory was first started with.
    ServerName,
    /// This server's replication GUID, made at first start.
    Guid,
    /// The partner nodes are replicated to (SET REPLSERVER).
    ReplServer,
    /// The address this server's clients use when they fail over to it.
    FailoverAddress,
    /// Days activity-log records are kept (SET ACTLOGRETENTION).
    ActlogRetention,
    /// The outcome of the last `audit pool` (JSON), for monitoring.
    LastPoolAudit,
    /// The outcome of the last `audit container` (JSON).
    LastContainerAudit,
    /// The outcome of the last `audit node` (JSON).
    LastNodeAudit,
}

impl Setting {
    /// The key stored in `server_info`.
    fn key(self) -> &'static str {
        match self {
            Setting::ServerName => "server_name",
            Setting::Guid => "guid",
            Setting::ReplServer => "replserver",
            Setting::FailoverAddress => "failover_address",
            Setting::ActlogRetention => "actlog_retention_days",
            Setting::LastPoolAudit => "last_audit_pool",
            Setting::LastContainerAudit => "last_audit_container",
            Setting::LastNodeAudit => "last_audit_node",
        }
    }
}
pub use expire::{ExpiredVersion, ExpiringVersion, ReleasedSpace, SweepSnapshot};
pub use nodes::NodeHealth;
pub use objects::{CommitCounts, PageKey, VersionPage, path_is_within};
pub use occupancy::Occupancy;
pub use replication::{FilespaceTimes, ServerDeletion, VersionState};
pub use switches::SwitchRecord;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::CatalogError;
use crate::model::Policy;
use tandem_proto::ServerGuid;

/// The server's catalog database.
#[derive(Debug)]
pub struct Catalog {
    conn: Mutex<Connection>,
    /// Read-only connections for queries that need no writer (see the module
    /// documentation); taken in turn.
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Policy values of nodes that have none of their own.
    defaults: Policy,
    /// A checkpoint after a backup is waiting to run.
    after_backup_pending: AtomicBool,
    /// When the last checkpoint after a backup started.
    after_backup_last: Mutex<Option<Instant>>,
    /// The catalog's file, for connections a whole-table scan opens.
    path: std::path::PathBuf,
    /// The memory map every connection reads through (0: none).
    map_bytes: std::sync::atomic::AtomicI64,
}

/// Checkpoints after backups start at least this far apart: any logged-on
/// node may end a backup as often as it likes, and each checkpoint holds
/// the writer (and fsyncs) while it runs.
const AFTER_BACKUP_CHECKPOINT_SPACING: Duration = Duration::from_secs(10);

/// How long a checkpoint after a backup waits for readers of older
/// snapshots before it copies what it can and leaves the rest.
const AFTER_BACKUP_CHECKPOINT_WAIT: Duration = Duration::from_millis(100);

/// How long a statement waits for a lock another connection holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Refuses a catalog holding a view or trigger: Tandem never makes one, so
/// something else changed the file, and a trigger would run its code at
/// the next write (an endless one would hang every backup).
fn refuse_foreign_schema(conn: &Connection, path: &Path) -> Result<(), CatalogError> {
    let found: Option<(String, String)> = conn
        .query_row(
            "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view') LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match found {
        None => Ok(()),
        Some((kind, name)) => Err(CatalogError::Malformed(format!(
            "{} holds a {kind} named {:?}, which Tandem never creates: something else changed this catalog. Restore it from a copy (`tandem-server restore-db`), or for a local vault move the vault directory away (the next command fills a new one from the server)",
            path.display(),
            tandem_proto::names::display(&name)
        ))),
    }
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `path` and applies the schema.
    /// `defaults` are the server-wide policy values.
    ///
    /// # Errors
    /// SQLite errors opening or migrating the database.
    pub fn open(path: &Path, defaults: Policy) -> Result<Self, CatalogError> {
        // Never through a symlink: a data dir (or a vault on a share) with a
        // planted link would otherwise have SQLite write wherever it points.
        // SQLite then refuses a link anywhere in the path, so the directory
        // is resolved first (a data dir may well be a link we made).
        let path = &resolved_dir(path)?;
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )?;
        // Nothing in the file runs code before it is checked: no function
        // with side effects from a view or trigger, and no view or trigger
        // at all, since Tandem makes none (a vault's catalog may be on a
        // share another machine writes).
        conn.pragma_update(None, "trusted_schema", "OFF")?;
        refuse_foreign_schema(&conn, path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Without a limit the WAL file keeps its largest size forever (a first
        // backup of many files grows it to hundreds of MiB); truncate it back
        // after each checkpoint so the catalog's footprint is its data.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        // Chunk ids and object ids are random, so their index pages are touched
        // all over: with SQLite's default 2 MiB page cache a first backup of
        // 200,000 files spent most of its server time re-reading and spilling
        // pages (profiled). 32 MiB holds those indexes for about a million
        // chunks; checkpoints every 16 MiB of WAL instead of 4 MiB.
        conn.pragma_update(None, "cache_size", -32 * 1024)?;
        conn.pragma_update(None, "wal_autocheckpoint", 4096)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let schema = include_str!("catalog/schema.sql");
        let moved = dirs::migrate_whole_paths(&mut conn, schema)?;
        if moved {
            tracing::info!("catalog moved to one row per directory: {}", path.display());
        }
        let extended = dirs::add_extra_column(&conn)?;
        if dirs::add_column(&conn, "servers", "fingerprint", "TEXT NOT NULL DEFAULT ''")? {
            tracing::warn!(
                "partner servers defined before TLS have no pinned fingerprint: define them again with --fingerprint"
            );
        }
        dirs::add_column(&conn, "chunks", "owner", "INTEGER NOT NULL DEFAULT 0")?;
        dirs::add_column(&conn, "nodes", "retver", "INTEGER")?;
        dirs::add_column(&conn, "nodes", "pool_id", "INTEGER NOT NULL DEFAULT 0")?;
        dirs::add_column(&conn, "nodes", "change_token", "INTEGER NOT NULL DEFAULT 0")?;
        if let Some(copies) = chunks::key_by_pool(&mut conn)? {
            tracing::info!(
                "the chunk index now keeps one row per storage pool: {copies} chunk(s) moved to the default pool's key"
            );
        }
        if extended {
            tracing::info!(
                "catalog objects can now carry extended attributes: {}",
                path.display()
            );
        }
        if schedules::widen_schedule_actions(&mut conn)? {
            tracing::info!("schedules may now run database backups (db-backup)");
        }
        conn.execute_batch(schema)?;
        // Until the grant has committed (it records so in the same
        // transaction), it runs at every open: a start cut short during it
        // leaves no backup unreadable.
        if let Some(granted) = Catalog::grant_referenced(&mut conn)? {
            tracing::info!(
                "chunks now belong to the nodes that stored them: {granted} references of existing versions granted"
            );
        }
        // Both happen exactly once, on a catalog from before names were bytes.
        if moved || extended {
            let (rewritten, left) = dirs::canonical_names(&mut conn)?;
            if rewritten + left > 0 {
                tracing::warn!(
                    "{rewritten} stored names rewritten to the byte-name encoding; {left} left \
                     as they were because the rewritten name exists already"
                );
            }
        }
        let readers = (0..READERS)
            .map(|_| open_reader(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Catalog {
            conn: Mutex::new(conn),
            readers,
            next_reader: AtomicUsize::new(0),
            after_backup_pending: AtomicBool::new(false),
            after_backup_last: Mutex::new(None),
            defaults,
            path: path.clone(),
            map_bytes: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// Lets every connection read the catalog's file through a memory map of
    /// up to `bytes` (SQLite clamps it to its build's limit) instead of a
    /// `pread` and a copy per page. A page its own cache does not hold then
    /// costs no system call: a backup of a tree other nodes stored already
    /// (a page of the chunk index and of `chunk_sharers` per chunk, spread at
    /// random) took about 28% less time on a catalog of a million versions.
    /// Writes still go through `pwrite` and the WAL. Only for a server's own
    /// data directory: a file that someone else may cut short under the map
    /// (a vault on a share) would stop the process with `SIGBUS`, and so
    /// does a read error of the disk here, where a `pread` would fail one
    /// request.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn read_through_memory_map(&self, bytes: i64) -> Result<(), CatalogError> {
        self.map_bytes.store(bytes, Ordering::Relaxed);
        self.conn().pragma_update(None, "mmap_size", bytes)?;
        for reader in &self.readers {
            reader
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pragma_update(None, "mmap_size", bytes)?;
        }
        Ok(())
    }

    /// Locks the connection. A panic while holding the lock leaves SQLite itself
    /// consistent (an open transaction is rolled back when dropped), so a
    /// poisoned lock is safe to reuse.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A read-only connection: a free one if there is, else the next in turn.
    /// Statements on it see committed data only, so callers that must see
    /// their own uncommitted writes use [`Self::conn`].
    fn reader(&self) -> MutexGuard<'_, Connection> {
        for reader in &self.readers {
            if let Ok(guard) = reader.try_lock() {
                return guard;
            }
        }
        let turn = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        self.readers[turn].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `read` in one read transaction on a reader connection. A batch
    /// of lookups (one per chunk or version id) then sees one snapshot and
    /// takes the WAL's read lock once; as separate statements each would be
    /// its own transaction, and each that starts after another connection's
    /// commit drops the reader's whole page cache (SQLite's WAL rule), so
    /// lookups beside a busy writer re-read every index page they touch.
    fn with_snapshot<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        let mut conn = self.reader();
        // Dropped at the end: a read-only transaction's rollback just ends it.
        let snapshot = conn.transaction()?;
        read(&snapshot)
    }

    /// Reads a server-wide setting.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn setting(&self, key: Setting) -> Result<Option<String>, CatalogError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT value FROM server_info WHERE key = ?1",
                [key.key()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// This server's GUID, made on first use and kept with the catalog
    /// (a catalog restored onto a new machine is the same server).
    ///
    /// # Errors
    /// SQLite errors; [`CatalogError::Malformed`] for a malformed GUID.
    pub fn server_guid(&self) -> Result<ServerGuid, CatalogError> {
        if let Some(text) = self.setting(Setting::Guid)? {
            return text
                .parse()
                .map_err(|e| CatalogError::Malformed(format!("server guid {text:?}: {e}")));
        }
        let guid = ServerGuid::random();
        self.conn().execute(
            "INSERT OR IGNORE INTO server_info (key, value) VALUES (?1, ?2)",
            [Setting::Guid.key(), &guid.to_string()],
        )?;
        match self.setting(Setting::Guid)? {
            Some(text) if text == guid.to_string() => Ok(guid),
            _ => self.server_guid(),
        }
    }

    /// Writes a server-wide setting.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn set_setting(&self, key: Setting, value: &str) -> Result<(), CatalogError> {
        self.conn().execute(
            "INSERT INTO server_info (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key.key(), value],
        )?;
        Ok(())
    }

    /// Moves the WAL's content into the main database file, so a stopped server
    /// leaves one self-contained file behind.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn checkpoint(&self) -> Result<(), CatalogError> {
        self.conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Asks for a checkpoint after a backup. Returns how long to wait
    /// before running it ([`Self::checkpoint_after_backup`]), spacing them
    /// [`AFTER_BACKUP_CHECKPOINT_SPACING`] apart; `None` when one is
    /// already waiting, which then serves this request too.
    pub fn schedule_checkpoint_after_backup(&self) -> Option<Duration> {
        if self.after_backup_pending.swap(true, Ordering::AcqRel) {
            return None;
        }
        let last = *self
            .after_backup_last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(last.map_or(Duration::ZERO, |at| {
            AFTER_BACKUP_CHECKPOINT_SPACING.saturating_sub(at.elapsed())
        }))
    }

    /// Runs the checkpoint [`Self::schedule_checkpoint_after_backup`]
    /// scheduled. A request from now on schedules the next one.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn checkpoint_after_backup(&self) -> Result<(), CatalogError> {
        *self
            .after_backup_last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        self.after_backup_pending.store(false, Ordering::Release);
        // A reader on an older snapshot (an expiration's scan of the whole
        // catalog) would make a full checkpoint wait for it, holding the
        // writer, up to the busy timeout. Given a moment only, SQLite copies
        // what it can without waiting and answers "busy"; the next
        // checkpoint does the rest.
        let conn = self.conn();
        conn.busy_timeout(AFTER_BACKUP_CHECKPOINT_WAIT)?;
        let done = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        conn.busy_timeout(BUSY_TIMEOUT)?;
        match done {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                Ok(())
            }
            other => Ok(other?),
        }
    }
}

/// Read-only connections beside the writer. Two match the two cores of a
/// small server; more would only add page caches.
const READERS: usize = 2;

/// `path` with its directory resolved (links followed), its file name as
/// given: a link there is for the no-follow open to refuse.
fn resolved_dir(path: &Path) -> Result<std::path::PathBuf, CatalogError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        CatalogError::Malformed(format!("{} names no catalog file", path.display()))
    })?;
    let dir = std::fs::canonicalize(dir)
        .map_err(|e| CatalogError::Malformed(format!("cannot resolve {}: {e}", dir.display())))?;
    Ok(dir.join(name))
}

/// Opens one read-only connection to the catalog the writer has set up.
fn open_reader(path: &Path) -> Result<Connection, CatalogError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    // Smaller than the writer's cache: readers walk the chunk index and the
    // version listings, and the OS page cache holds the rest.
    conn.pragma_update(None, "cache_size", -8 * 1024)?;
    conn.pragma_update(None, "trusted_schema", "OFF")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Nanoseconds in a day, for retention periods given in days.
const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// Converts an unsigned figure to SQLite's integer type. Sizes above `i64::MAX`
/// cannot occur on real file systems; saturate rather than wrap if one does.
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Converts an SQLite integer that the catalog wrote from an unsigned value.
fn from_sql_int(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests;
