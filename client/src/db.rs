//! Database agents: a consistent copy of a database, taken the way its
//! engine allows while it keeps running, stored as an ordinary backup
//! version.
//!
//! Each kind of database has a filespace of its own (`/@sqlite`), and a
//! database's copies are the versions of one path in it: `/@sqlite` followed
//! by the database's absolute path. So a database copy is deduplicated,
//! replicated to the secondary, kept and expired by the node's policy, and
//! restorable in failover, exactly like a file; `--pitdate` picks the copy
//! that was active at a time, and `query backup` lists copies with their
//! kind. What the agent adds is how the copy is taken ([`sqlite`]) and how
//! it is put back: into a staging directory beside the destination, checked
//! by the engine, and only then renamed into place.

mod child;
pub mod mariadb;
pub mod postgres;
pub mod sqlite;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tandem_proto::{ChunkId, pb};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use crate::backup::chunker::Chunker;
use crate::backup::scan::Item;
use crate::backup::{self, BackupStats, Target, Uploader};
use crate::error::ClientError;
use crate::logon::session::Session;
use crate::options::ClientOptions;
use crate::output::console::Console;
use crate::output::messages::Msg;
use crate::restore::{self, Replace, RestoreRequest, RestoreStats};
use crate::selection::{Selection, escape_literal};

/// The kinds of database an agent backs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DbKind {
    /// SQLite database files.
    Sqlite,
    /// PostgreSQL clusters: base backups and archived WAL.
    Postgres,
    /// MariaDB servers: full dumps and binary logs.
    Mariadb,
}

impl DbKind {
    /// Every kind, for listings.
    pub const ALL: [DbKind; 3] = [DbKind::Sqlite, DbKind::Postgres, DbKind::Mariadb];

    /// The filespace holding this kind's copies.
    pub fn filespace(self) -> &'static str {
        match self {
            DbKind::Sqlite => "/@sqlite",
            DbKind::Postgres => "/@postgres",
            DbKind::Mariadb => "/@mariadb",
        }
    }

    /// The kind's name in listings.
    pub fn name(self) -> &'static str {
        match self {
            DbKind::Sqlite => "sqlite",
            DbKind::Postgres => "postgres",
            DbKind::Mariadb => "mariadb",
        }
    }

    /// The kind whose copies `filespace` holds, if it is an agent's.
    pub fn of_filespace(filespace: &str) -> Option<DbKind> {
        DbKind::ALL.into_iter().find(|k| k.filespace() == filespace)
    }

    /// The stored path of the database at `db` (absolute, encoded).
    pub fn object_path(self, db: &Path) -> String {
        format!(
            "{}{}",
            self.filespace(),
            crate::names::encode(db.as_os_str())
        )
    }
}

/// The name a database was backed up under: its canonical path if it is
/// there now (what the backup used), else `db` made absolute.
///
/// # Errors
/// The working directory cannot be read.
pub fn stored_name(db: &Path) -> Result<PathBuf, ClientError> {
    if let Ok(real) = std::fs::canonicalize(db) {
        return Ok(real);
    }
    crate::paths::absolute(db).map_err(|e| ClientError::Io {
        path: db.to_path_buf(),
        source: e,
    })
}

/// Stores everything `source` yields as a new active version of the
/// object `attrs` describes, in `filespace`: a backup of its own, recorded
/// as started and completed like any other, so replication and failover
/// see it. `source` is read on a blocking thread; `attrs` is called once it
/// is read to its end (so the object may be named after what was read),
/// and the size is set from what was read. A read error, or an error from
/// `attrs`, stores nothing; `what` names the source in such an error.
///
/// # Errors
/// Read errors of `source`, `attrs`' errors, server and connection
/// failures.
pub(crate) async fn store_stream<R, A>(
    session: &Session,
    options: &ClientOptions,
    filespace: &str,
    what: &Path,
    source: R,
    attrs: A,
    console: &Console,
) -> Result<BackupStats, ClientError>
where
    R: Read + Send + 'static,
    A: FnOnce() -> std::io::Result<pb::ObjectAttrs> + Send + 'static,
{
    let started = Instant::now();
    let mut stats = BackupStats::default();
    let progress = console.start_progress();
    backup::mark(session, filespace, false).await?;
    let (tx, mut rx) = mpsc::channel::<Vec<Item>>(2);
    let producer = tokio::task::spawn_blocking(move || stream_items(source, attrs, &tx));
    let target = Target::Backup;
    let mut uploader = Uploader::new(
        session,
        filespace.to_string(),
        &target,
        &mut stats,
        &progress,
        started,
    );
    while let Some(batch) = rx.recv().await {
        uploader.take(batch, console).await?;
    }
    producer
        .await
        .map_err(|e| ClientError::task_failed("database reader", e))?
        .map_err(|e| ClientError::Io {
            path: what.to_path_buf(),
            source: e,
        })?;
    uploader.finish(Vec::new()).await?;
    let acknowledged = backup::mark(session, filespace, true).await?;
    backup::note_backup(session, options, filespace, acknowledged, console);
    console.end_progress();
    stats.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// Runs `command` (a database's own backup program, `program` in
/// messages) and stores what it writes on standard output as one new
/// version, with no staging copy: `path_from_head` names the object from
/// the first bytes of the stream once the program has finished with
/// success (a failure stores nothing). The object is private to the user
/// running the agent. `label` names the database in errors; `hint` says
/// what to install when the program cannot be started.
///
/// # Errors
/// The program missing or failing (its own words are given), the stream
/// not naming itself, server and connection failures.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn store_program_output<F>(
    session: &Session,
    options: &ClientOptions,
    kind: DbKind,
    label: &Path,
    program: &str,
    hint: &str,
    mut command: std::process::Command,
    path_from_head: F,
    console: &Console,
) -> Result<BackupStats, ClientError>
where
    F: FnOnce(&[u8]) -> Result<String, &'static str> + Send + 'static,
{
    let database_error = |message: String| ClientError::Database {
        database: shown(label),
        message,
    };
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| database_error(format!("{program} could not be started: {e}; {hint}")))?;
    let output = child::ChildOutput::new(program, child).map_err(|e| ClientError::Io {
        path: program.into(),
        source: e,
    })?;
    let (source, head) = child::KeepHead::new(output);
    let attrs = move || {
        let head = head.lock().unwrap_or_else(|e| e.into_inner());
        let path = path_from_head(&head).map_err(std::io::Error::other)?;
        Ok(pb::ObjectAttrs {
            path,
            kind: pb::ObjectKind::File as i32,
            mode: 0o600,
            mtime_ns: now_ns(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            ..Default::default()
        })
    };
    let stats = store_stream(
        session,
        options,
        kind.filespace(),
        label,
        source,
        attrs,
        console,
    )
    .await
    .map_err(|e| match e {
        ClientError::Io { source, .. } => database_error(source.to_string()),
        other => other,
    })?;
    console.report(
        &Msg::db_backed_up(kind.name(), label, stats.bytes_scanned),
        crate::error::ExitStatus::Success,
    );
    Ok(stats)
}

/// The attributes of a file the agent stores as it is on disk (a WAL file,
/// a binary log), under the stored path `path`.
pub(crate) fn file_attrs(path: String, meta: &std::fs::Metadata) -> pb::ObjectAttrs {
    use std::os::unix::fs::MetadataExt;
    pb::ObjectAttrs {
        path,
        kind: pb::ObjectKind::File as i32,
        mode: meta.mode() & 0o7777,
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        uid: meta.uid(),
        gid: meta.gid(),
        ..Default::default()
    }
}

/// Chunks `source` into items for the uploader and ends with the object
/// itself, which is sent only once `source` has been read to its end
/// without error and `attrs` has named it: a failure leaves nothing to
/// commit.
fn stream_items<R: Read>(
    source: R,
    attrs: impl FnOnce() -> std::io::Result<pb::ObjectAttrs>,
    tx: &mpsc::Sender<Vec<Item>>,
) -> std::io::Result<u64> {
    let gone = || std::io::Error::other("the upload stopped before the database was read");
    let mut chunker = Chunker::default();
    let mut chunks = Vec::new();
    let read = chunker.split(source, |piece| {
        let id = ChunkId::of(piece);
        chunks.push(id);
        tx.blocking_send(vec![
            Item::Scanned(piece.len() as u64),
            Item::Chunk {
                id,
                data: piece.to_vec(),
            },
        ])
        .is_ok()
    })?;
    let read = read.ok_or_else(gone)?;
    let mut attrs = attrs()?;
    attrs.size = read;
    tx.blocking_send(vec![Item::Object { attrs, chunks }])
        .map_err(|_| gone())?;
    Ok(read)
}

/// Restores the copy of `kind` database `name` that `point_in_time_ns`
/// selects (the active one without it) into a new staging directory in
/// `parent`, and returns the directory (removed when dropped) and the
/// restored file in it.
///
/// # Errors
/// No such copy, a restore failure, server and connection failures.
pub(crate) async fn restore_to_staging(
    session: &Session,
    kind: DbKind,
    name: &Path,
    parent: &Path,
    point_in_time_ns: Option<i64>,
    console: &Console,
) -> Result<(tempfile::TempDir, PathBuf, RestoreStats), ClientError> {
    let object = kind.object_path(name);
    let version = match point_in_time_ns {
        Some(ns) => Version::ActiveAt(ns),
        None => Version::Active,
    };
    restore_object_to_staging(session, kind, &object, name, parent, version, console).await
}

/// Which version of a stored path a staging restore takes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Version {
    /// The active one.
    Active,
    /// The one active at this time (Unix ns).
    ActiveAt(i64),
    /// The newest, active or inactive (an object deactivated by the
    /// agent's retention that has not expired yet).
    Newest,
}

/// [`restore_to_staging`] of any stored path `object` of database `name`
/// (a PostgreSQL cluster's base backup or one of its WAL files).
///
/// # Errors
/// As [`restore_to_staging`].
pub(crate) async fn restore_object_to_staging(
    session: &Session,
    kind: DbKind,
    object: &str,
    name: &Path,
    parent: &Path,
    version: Version,
    console: &Console,
) -> Result<(tempfile::TempDir, PathBuf, RestoreStats), ClientError> {
    let point_in_time_ns = match version {
        Version::ActiveAt(ns) => Some(ns),
        Version::Active | Version::Newest => None,
    };
    let stage = tempfile::Builder::new()
        .prefix(".tandem-restore-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(|e| ClientError::Io {
            path: parent.to_path_buf(),
            source: e,
        })?;
    let request = RestoreRequest {
        selection: Selection::parse(&escape_literal(object), false)?,
        dest: Some(stage.path().to_path_buf()),
        point_in_time_ns,
        inactive: matches!(version, Version::Newest),
        dates: None,
        replace: Replace::No,
        archive: None,
    };
    let stats = restore::run(session, request, console).await?;
    let file_name = crate::names::decode(object.rsplit('/').next().unwrap_or_default());
    let restored = stage.path().join(file_name);
    if stats.failed == 0 && stats.restored == 1 && is_something_else(&restored) {
        // An agent stores a regular file; anything else (a link to a file
        // elsewhere on this host, above all) was not made by one, and what
        // follows would open, replay or move whatever it names.
        return Err(ClientError::Database {
            database: shown(name),
            message: format!(
                "the stored copy {object} is not a regular file with one name (a symbolic link, a directory or a special file): no database agent stored it, so nothing was restored; check who wrote this node's data"
            ),
        });
    }
    if stats.failed > 0 || stats.restored != 1 || !restored.is_file() {
        let when = match point_in_time_ns {
            Some(ns) => format!(" that was active at {}", crate::output::timefmt::show(ns)),
            None => String::new(),
        };
        return Err(ClientError::Database {
            database: shown(name),
            message: if stats.failed > 0 {
                format!("its copy{when} could not be restored (see the messages above)")
            } else {
                format!(
                    "no {} copy{when} is stored under this name; `tandem query db --inactive` lists the copies",
                    kind.name()
                )
            },
        });
    }
    Ok((stage, restored, stats))
}

/// Whether something is at `path` that is not a regular file with one
/// name (looked at without following a link). Nothing there is for the
/// caller's own "not stored" error.
fn is_something_else(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| !(m.file_type().is_file() && m.nlink() == 1))
}

/// Lists the stored database copies of every kind (`query db`).
///
/// # Errors
/// Server failures.
pub async fn query(
    session: &Session,
    inactive: bool,
    console: &Console,
) -> Result<(), ClientError> {
    let prefixes: Vec<String> = DbKind::ALL
        .iter()
        .map(|k| format!("{}/", k.filespace()))
        .collect();
    crate::query::backup_many(session, &prefixes, inactive, console).await
}

/// Makes sure the parent directory of `path` has its new entry on disk.
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    std::fs::File::open(parent)?.sync_all()
}

/// Now, in Unix nanoseconds.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A local path as shown in messages and logs: any byte that could forge a
/// line or a terminal sequence is escaped, as for stored names.
pub(crate) fn shown(path: &Path) -> String {
    crate::names::display(&crate::names::encode(path.as_os_str())).to_string()
}

/// The newest version (active or not) of the stored path `object`, with
/// its chunk ids.
pub(crate) async fn stored_version(
    session: &Session,
    object: &str,
) -> Result<Option<pb::ObjectVersion>, ClientError> {
    Ok(query_versions(session, object, true, true)
        .await?
        .into_iter()
        .filter(|v| v.attrs.as_ref().is_some_and(|a| a.path == object))
        .max_by_key(|v| v.backup_time_ns))
}

/// The versions stored below the folder `folder` (active ones, or all).
pub(crate) async fn versions_below(
    session: &Session,
    folder: &str,
    include_inactive: bool,
) -> Result<Vec<pb::ObjectVersion>, ClientError> {
    let below = format!("{folder}/");
    Ok(query_versions(session, folder, include_inactive, false)
        .await?
        .into_iter()
        .filter(|v| v.attrs.as_ref().is_some_and(|a| a.path.starts_with(&below)))
        .collect())
}

async fn query_versions(
    session: &Session,
    prefix: &str,
    include_inactive: bool,
    with_chunks: bool,
) -> Result<Vec<pb::ObjectVersion>, ClientError> {
    let mut stream = session
        .client()
        .query_objects(session.request(pb::QueryObjectsRequest {
            path_prefix: prefix.to_string(),
            include_inactive,
            with_chunks,
            ..Default::default()
        }))
        .await
        .map_err(|s| ClientError::server("listing stored database files", s))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|s| ClientError::server("listing stored database files", s))?;
        out.extend(batch.versions);
    }
    Ok(out)
}

/// `state_dir/staging`, the user's alone (0700): staged copies and dumps
/// hold whole databases.
///
/// # Errors
/// The directory cannot be made; others may write in `state_dir`
/// ([`ClientError::StateDir`]).
pub(crate) fn staging_root(options: &ClientOptions) -> Result<PathBuf, ClientError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let state_dir = options.state_dir();
    crate::state_dir::ensure(&state_dir)?;
    let root = state_dir.join("staging");
    let io = |e: std::io::Error| ClientError::Io {
        path: root.clone(),
        source: e,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .map_err(io)?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_regular_file_with_one_name_is_a_staged_copy() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("copy.db");
        std::fs::write(&file, b"data").unwrap();
        assert!(!is_something_else(&file));
        let elsewhere = dir.path().join("elsewhere.db");
        std::fs::write(&elsewhere, b"not ours").unwrap();
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert!(is_something_else(&link), "a link to a file is not a copy");
        let hard = dir.path().join("hard.db");
        std::fs::hard_link(&elsewhere, &hard).unwrap();
        assert!(is_something_else(&hard), "nor a file with another name");
        assert!(is_something_else(dir.path()), "nor a directory");
        assert!(
            !is_something_else(&dir.path().join("missing")),
            "nothing there is left to the caller's own error"
        );
    }
}
