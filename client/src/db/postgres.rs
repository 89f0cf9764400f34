//! The PostgreSQL agent: base backups, continuous WAL archiving and
//! point-in-time recovery.
//!
//! A cluster is named by its data directory's canonical path, `PGDATA`.
//! Each base backup is the tar `pg_basebackup -D - -Ft -X none` writes,
//! streamed from the program into the uploader with no staging copy and
//! stored as `/@postgres/PGDATA/base/START.tar`, named after the WAL file
//! and position it starts at (read from the `backup_label` PostgreSQL puts
//! first in the tar). The WAL the backups need is not in them but archived
//! file by file, each as `/@postgres/PGDATA/wal/NAME`, by `archive_command
//! = 'tandem archive-wal %p'` (PostgreSQL runs it in the data directory,
//! which names the cluster). `pg_basebackup` returns only once the WAL its
//! backup needs is archived.
//!
//! Retention: after a base backup, all but the newest `--keep` base backups
//! are made inactive, and so is every WAL file older than the oldest base
//! backup kept; they then expire by the node's policy (RETONLY), like any
//! inactive version. Timeline history files are always kept.
//!
//! A restore lays down the newest base backup stored before the target time
//! (the newest of all without one) and configures recovery:
//! `recovery.signal`, and a `restore_command` that runs `tandem
//! restore-wal` to fetch each WAL file PostgreSQL asks for, up to
//! `recovery_target_time`. Starting the server then replays to the target
//! and promotes.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tandem_proto::pb;

use super::DbKind;
use crate::backup::BackupStats;
use crate::backup::chunker::Chunker;
use crate::error::{ClientError, ExitStatus};
use crate::logon::session::Session;
use crate::options::ClientOptions;
use crate::output::console::Console;
use crate::output::messages::Msg;
use crate::restore::RestoreStats;

/// The longest WAL, history or backup-history file name taken.
const MAX_WAL_NAME: usize = 64;

/// Base backups kept by default.
pub const DEFAULT_KEEP: u32 = 2;

/// The folder of a cluster's base backups.
fn base_folder(cluster: &Path) -> String {
    format!("{}/base", DbKind::Postgres.object_path(cluster))
}

/// The folder of a cluster's archived WAL.
fn wal_folder(cluster: &Path) -> String {
    format!("{}/wal", DbKind::Postgres.object_path(cluster))
}

/// The stored path of one of a cluster's archived WAL files.
fn wal_object(cluster: &Path, file: &str) -> String {
    format!("{}/{file}", wal_folder(cluster))
}

/// The name of a base backup from its `backup_label`: `START.tar`, START
/// being the WAL file and the position it starts at
/// (`000000010000000000000002.02000028`), so names are unique and the WAL
/// a backup needs can be told from its name.
fn base_name_from_label(label: &str) -> Option<String> {
    let line = label
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))?;
    let (lsn, rest) = line.split_once(' ')?;
    let file = rest.strip_prefix("(file ")?.strip_suffix(')')?;
    let low = lsn.split_once('/')?.1;
    let low = u32::from_str_radix(low, 16).ok()?;
    (file.len() == 24 && file.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("{file}.{low:08X}.tar"))
}

/// The `backup_label` at the start of a base backup's tar stream.
fn label_of(head: &[u8]) -> Option<String> {
    let mut archive = tar::Archive::new(head);
    let mut first = archive.entries().ok()?.next()?.ok()?;
    if first.path().ok()?.as_os_str() != "backup_label" {
        return None;
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut first, &mut text).ok()?;
    Some(text)
}

/// The log and segment part of a WAL file name (its timeline left out), by
/// which WAL files and base backups are ordered for retention.
fn segment_part(name: &str) -> Option<&str> {
    name.get(8..24)
        .filter(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn db_error(cluster: &Path, message: String) -> ClientError {
    ClientError::Database {
        database: super::shown(cluster),
        message,
    }
}

/// The cluster at `pgdata`: its canonical path, once it is seen to be a
/// PostgreSQL data directory (it has `PG_VERSION`).
pub(crate) fn cluster_at(pgdata: &Path) -> Result<PathBuf, ClientError> {
    let cluster = std::fs::canonicalize(pgdata).map_err(|e| {
        db_error(
            pgdata,
            format!("cannot be opened: {e}; name the cluster's data directory (PGDATA)"),
        )
    })?;
    if !cluster.join("PG_VERSION").is_file() {
        return Err(db_error(
            &cluster,
            "is not a PostgreSQL data directory (no PG_VERSION); name the cluster's PGDATA".into(),
        ));
    }
    Ok(cluster)
}

/// Checks a WAL file name PostgreSQL passes (`%f`, or the last part of
/// `%p`): a segment, timeline history, backup history or partial file.
fn check_wal_name(name: &str) -> Result<(), ClientError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_WAL_NAME
        && name.starts_with(|c: char| c.is_ascii_hexdigit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ClientError::Usage(format!(
            "{name:?} is not a WAL file name (hex digits, as PostgreSQL names segments and history files); archive-wal and restore-wal take only those"
        )))
    }
}

/// Takes a base backup of the cluster at `pgdata` with `pg_basebackup`
/// (connection from the usual `PGHOST`, `PGPORT`, `PGUSER` variables),
/// stores it, and then keeps only the newest `keep` base backups and the
/// WAL they need active.
///
/// # Errors
/// Not a data directory, `pg_basebackup` missing or failing (its own
/// message is given), server and connection failures.
pub async fn backup(
    session: &Session,
    options: &ClientOptions,
    pgdata: &Path,
    keep: u32,
    console: &Console,
) -> Result<BackupStats, ClientError> {
    let cluster = cluster_at(pgdata)?;
    check_same_cluster(&cluster)?;
    let mut command = Command::new("pg_basebackup");
    command.args([
        "--pgdata=-",
        "--format=tar",
        "--wal-method=none",
        "--checkpoint=fast",
        "--no-manifest",
        "--no-password",
        "--label=tandem",
    ]);
    let folder = base_folder(&cluster);
    let name_it = move |head: &[u8]| {
        label_of(head)
            .as_deref()
            .and_then(base_name_from_label)
            .map(|name| format!("{folder}/{name}"))
            .ok_or("pg_basebackup's tar does not start with a backup_label naming the start of its WAL; use pg_basebackup of PostgreSQL 15 or later")
    };
    let stats = super::store_program_output(
        session,
        options,
        DbKind::Postgres,
        &cluster,
        "pg_basebackup",
        "install PostgreSQL's client programs or put them on PATH",
        command,
        name_it,
        console,
    )
    .await?;
    // pg_basebackup exits 0 even when the WAL its backup needs was never
    // archived (archive_mode off, an archive_command writing elsewhere):
    // such a backup cannot be restored, so it does not count, and nothing
    // older is retired for it.
    let archived = archived_wal_names(session, &cluster).await?;
    let stored_name = base_names(session, &cluster)
        .await?
        .into_iter()
        .max_by_key(|(_, time)| *time)
        .map(|(name, _)| name)
        .unwrap_or_default();
    if !has_history_file(&stored_name, &archived) {
        // Inactive, it counts for no --keep and is never restored from.
        deactivate(
            session,
            vec![format!("{}/{stored_name}", base_folder(&cluster))],
        )
        .await?;
        return Err(db_error(
            &cluster,
            format!(
                "the base backup was stored, but PostgreSQL did not archive its backup history file ({}*.backup) to this node, so it cannot be restored and is not used; check that archive_mode = on and that archive_command runs `tandem --options {{this options file}} archive-wal %p`",
                stored_name.get(..24).unwrap_or(&stored_name)
            ),
        ));
    }
    let (bases, wal) = retire(session, &cluster, keep.max(1)).await?;
    if bases + wal > 0 {
        console.report(
            &Msg::pg_retired(&cluster, bases, wal, keep.max(1)),
            ExitStatus::Success,
        );
    }
    Ok(stats)
}

/// Makes all but the newest `keep` active base backups of `cluster`
/// inactive, and every WAL file older than the oldest one kept (timeline
/// history files excepted); returns how many of each.
async fn retire(session: &Session, cluster: &Path, keep: u32) -> Result<(u64, u64), ClientError> {
    let mut bases = super::versions_below(session, &base_folder(cluster), false).await?;
    bases.sort_by_key(|v| std::cmp::Reverse(v.backup_time_ns));
    let kept = bases.len().min(keep as usize);
    let Some(oldest_kept) = bases[..kept]
        .iter()
        .filter_map(|v| v.attrs.as_ref())
        .filter_map(|a| a.path.rsplit('/').next().and_then(segment_part))
        .min()
        .map(str::to_string)
    else {
        return Ok((0, 0));
    };
    let old_bases: Vec<String> = bases[kept..]
        .iter()
        .filter_map(|v| v.attrs.as_ref().map(|a| a.path.clone()))
        .collect();
    let old_wal: Vec<String> = super::versions_below(session, &wal_folder(cluster), false)
        .await?
        .into_iter()
        .filter_map(|v| v.attrs.map(|a| a.path))
        .filter(|path| {
            let name = path.rsplit('/').next().unwrap_or_default();
            !name.ends_with(".history")
                && segment_part(name).is_some_and(|s| s < oldest_kept.as_str())
        })
        .collect();
    let counts = (old_bases.len() as u64, old_wal.len() as u64);
    deactivate(session, old_bases.into_iter().chain(old_wal).collect()).await?;
    Ok(counts)
}

/// Makes the active versions of `gone` (stored paths) inactive.
async fn deactivate(session: &Session, mut gone: Vec<String>) -> Result<(), ClientError> {
    while !gone.is_empty() {
        let batch: Vec<String> = gone
            .drain(..gone.len().min(tandem_proto::MAX_OBJECTS_PER_CALL))
            .collect();
        session
            .commit_objects(
                pb::CommitObjectsRequest {
                    filespace: DbKind::Postgres.filespace().to_string(),
                    objects: Vec::new(),
                    deactivate: batch,
                },
                "retiring old base backups and WAL",
            )
            .await?;
    }
    Ok(())
}

/// What `archive-wal` did with a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archived {
    /// Stored now.
    Stored,
    /// The same bytes were stored before (PostgreSQL asked again after a
    /// crash): nothing sent, success.
    AlreadyStored,
}

/// Archives the WAL file at `wal` (PostgreSQL's `%p`, relative to the data
/// directory it runs the command in) for the cluster at `pgdata` (default:
/// the working directory). Returns only once the server has acknowledged
/// it, so PostgreSQL may recycle the segment when this succeeds. A file
/// archived before with the same bytes succeeds without sending anything;
/// with different bytes it fails, and PostgreSQL keeps the segment.
///
/// # Errors
/// A bad name, different bytes archived before, read, server and
/// connection failures.
pub async fn archive_wal(
    session: &Session,
    options: &ClientOptions,
    wal: &Path,
    pgdata: Option<&Path>,
    console: &Console,
) -> Result<Archived, ClientError> {
    let here = PathBuf::from(".");
    let cluster = cluster_at(pgdata.unwrap_or(&here))?;
    let name = wal
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    check_wal_name(&name)?;
    let object = wal_object(&cluster, &name);
    let io = |e: std::io::Error| ClientError::Io {
        path: wal.to_path_buf(),
        source: e,
    };
    let file = std::fs::File::open(wal).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if let Some(stored) = super::stored_version(session, &object).await? {
        let local = {
            let wal = wal.to_path_buf();
            tokio::task::spawn_blocking(move || chunk_ids_of(&wal))
                .await
                .map_err(|e| ClientError::task_failed("WAL hashing", e))?
                .map_err(io)?
        };
        let stored_size = stored.attrs.as_ref().map_or(0, |a| a.size);
        if stored_size == local.0 && stored.chunk_ids == local.1 {
            console.report(&Msg::wal_already_archived(&name), ExitStatus::Success);
            return Ok(Archived::AlreadyStored);
        }
        return Err(db_error(
            &cluster,
            format!(
                "WAL file {name} was archived before with different content; PostgreSQL keeps it until this is resolved: check whether two clusters archive under one data directory name"
            ),
        ));
    }
    let attrs = super::file_attrs(object, &meta);
    super::store_stream(
        session,
        options,
        DbKind::Postgres.filespace(),
        wal,
        file,
        move || Ok(attrs),
        console,
    )
    .await?;
    Ok(Archived::Stored)
}

/// Fetches WAL file `file` of the cluster named `pgdata` (as it was
/// backed up) to `dest` (PostgreSQL's `%p`), for `restore_command`.
/// Returns false, having written nothing, when no such file is stored:
/// PostgreSQL asks for files past the end of the archive as a matter of
/// course, and takes a failure as "not there".
///
/// # Errors
/// A bad name, restore, server and connection failures.
pub async fn restore_wal(
    session: &Session,
    pgdata: &Path,
    file: &str,
    dest: &Path,
    console: &Console,
) -> Result<bool, ClientError> {
    check_wal_name(file)?;
    let cluster = super::stored_name(pgdata)?;
    let object = wal_object(&cluster, file);
    if super::stored_version(session, &object).await?.is_none() {
        return Ok(false);
    }
    let dest = crate::paths::absolute(dest).map_err(|e| ClientError::Io {
        path: dest.to_path_buf(),
        source: e,
    })?;
    let parent = dest.parent().unwrap_or(Path::new("/")).to_path_buf();
    let (_stage, restored, _) = super::restore_object_to_staging(
        session,
        DbKind::Postgres,
        &object,
        &cluster,
        &parent,
        super::Version::Newest,
        console,
    )
    .await?;
    std::fs::rename(&restored, &dest).map_err(|e| ClientError::Io {
        path: dest.clone(),
        source: e,
    })?;
    Ok(true)
}

/// Restores the cluster named `pgdata` into `target` (a new or empty
/// directory): the base backup active at `point_in_time_ns` (the newest
/// without it), and the recovery settings that fetch WAL from Tandem up to
/// that time, through `tandem --options OPTIONS restore-wal`.
///
/// # Errors
/// `target` not empty, no base backup, a path the restore command cannot
/// carry, unpacking, server and connection failures.
pub async fn restore(
    session: &Session,
    options_path: &Path,
    pgdata: &Path,
    target: &Path,
    point_in_time_ns: Option<i64>,
    console: &Console,
) -> Result<RestoreStats, ClientError> {
    let cluster = super::stored_name(pgdata)?;
    let target = crate::paths::absolute(target).map_err(|e| ClientError::Io {
        path: target.to_path_buf(),
        source: e,
    })?;
    let tandem = std::env::current_exe().map_err(|e| ClientError::Io {
        path: "tandem".into(),
        source: e,
    })?;
    let options_path = crate::paths::absolute(options_path).map_err(|e| ClientError::Io {
        path: options_path.to_path_buf(),
        source: e,
    })?;
    let command = restore_command(&tandem, &options_path, &cluster)?;
    let base = base_for(session, &cluster, point_in_time_ns).await?;
    prepare_target(&cluster, &target)?;
    let parent = target.parent().unwrap_or(Path::new("/")).to_path_buf();
    let (_stage, tar, stats) = super::restore_object_to_staging(
        session,
        DbKind::Postgres,
        &base,
        &cluster,
        &parent,
        super::Version::Newest,
        console,
    )
    .await?;
    let into = target.clone();
    tokio::task::spawn_blocking(move || unpack(&tar, &into))
        .await
        .map_err(|e| ClientError::task_failed("unpacking the base backup", e))?
        .map_err(|e| {
            db_error(
                &cluster,
                format!(
                    "the base backup could not be unpacked into {}: {e}; empty that directory before you try again",
                    super::shown(&target)
                ),
            )
        })?;
    configure_recovery(&target, &command, point_in_time_ns).map_err(|e| ClientError::Io {
        path: target.join("postgresql.auto.conf"),
        source: e,
    })?;
    if let Some(owner) = unreadable_by_cluster_owner(&target, &options_path) {
        console.report(
            &Msg::restore_command_unreadable(&options_path, owner),
            ExitStatus::Warnings,
        );
    }
    console.report(
        &Msg::pg_restored(&cluster, &target, point_in_time_ns),
        ExitStatus::Success,
    );
    Ok(stats)
}

/// The stored path of the base backup to restore for `point_in_time_ns`:
/// the newest stored before it (active or not yet expired), or the newest
/// of all.
async fn base_for(
    session: &Session,
    cluster: &Path,
    point_in_time_ns: Option<i64>,
) -> Result<String, ClientError> {
    let archived = archived_wal_names(session, cluster).await?;
    base_names(session, cluster)
        .await?
        .into_iter()
        .filter(|(name, time)| {
            point_in_time_ns.is_none_or(|t| *time <= t) && has_history_file(name, &archived)
        })
        .max_by_key(|(_, time)| *time)
        .map(|(name, _)| format!("{}/{name}", base_folder(cluster)))
        .ok_or_else(|| {
            let when = point_in_time_ns.map_or_else(String::new, |ns| {
                format!(" before {}", crate::output::timefmt::rfc3339(ns))
            });
            db_error(
                cluster,
                format!(
                    "no base backup of this cluster is stored{when}; `tandem query db --inactive` lists them"
                ),
            )
        })
}

/// The cluster's stored base backups (active or not): name and time.
async fn base_names(session: &Session, cluster: &Path) -> Result<Vec<(String, i64)>, ClientError> {
    Ok(super::versions_below(session, &base_folder(cluster), true)
        .await?
        .into_iter()
        .filter_map(|v| {
            let name = v.attrs?.path.rsplit('/').next()?.to_string();
            Some((name, v.backup_time_ns))
        })
        .collect())
}

/// The names of the cluster's archived WAL files (active or not).
async fn archived_wal_names(
    session: &Session,
    cluster: &Path,
) -> Result<std::collections::HashSet<String>, ClientError> {
    Ok(super::versions_below(session, &wal_folder(cluster), true)
        .await?
        .into_iter()
        .filter_map(|v| Some(v.attrs?.path.rsplit('/').next()?.to_string()))
        .collect())
}

/// Whether the backup history file PostgreSQL archives at the end of the
/// base backup `base` (`START.tar`) is stored: proof that the WAL the
/// backup needs reached this node.
fn has_history_file(base: &str, archived: &std::collections::HashSet<String>) -> bool {
    // `FILE.LSNLOW.tar` against `FILE.OFFSET.backup`, OFFSET being the start
    // position within its segment (segments are 1 MiB to 1 GiB).
    let parts = |name: &str, suffix: &str| -> Option<(String, u32)> {
        let stem = name.strip_suffix(suffix)?;
        let (file, number) = stem.split_once('.')?;
        (file.len() == 24).then_some(())?;
        Some((file.to_string(), u32::from_str_radix(number, 16).ok()?))
    };
    let Some((file, low)) = parts(base, ".tar") else {
        return false;
    };
    archived
        .iter()
        .filter_map(|n| parts(n, ".backup"))
        .any(|(f, offset)| f == file && (20..=30).any(|bits| low & ((1u32 << bits) - 1) == offset))
}

/// Checks that the server `pg_basebackup` will reach (PGHOST, PGPORT) runs
/// the cluster at `cluster`: the system identifier it reports is the one
/// in `global/pg_control`, so another cluster's backup is never stored
/// under this one's name.
fn check_same_cluster(cluster: &Path) -> Result<(), ClientError> {
    let control = std::fs::read(cluster.join("global").join("pg_control")).map_err(|e| {
        db_error(
            cluster,
            format!("global/pg_control cannot be read: {e}; run the agent as the cluster's user"),
        )
    })?;
    let Some(id) = control.get(..8).and_then(|b| b.try_into().ok()) else {
        return Err(db_error(cluster, "global/pg_control is too short".into()));
    };
    // The host's own byte order, as PostgreSQL writes it; shown signed, as
    // PostgreSQL shows it.
    let on_disk = i64::from_ne_bytes(id);
    // Over a replication connection, the kind pg_basebackup itself needs,
    // so pg_hba rules that allow only replication do not stop the check.
    let out = Command::new("psql")
        .args([
            "--no-psqlrc",
            "--no-password",
            "--tuples-only",
            "--no-align",
            "--command=IDENTIFY_SYSTEM",
            "dbname=postgres replication=true",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            db_error(
                cluster,
                format!("psql could not be started: {e}; install PostgreSQL's client programs or put them on PATH"),
            )
        })?;
    if !out.status.success() {
        return Err(db_error(
            cluster,
            format!(
                "the server cannot be asked for its identity (set PGHOST, PGPORT, PGUSER): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let answered = text
        .trim()
        .split('|')
        .next()
        .unwrap_or_default()
        .to_string();
    let unsigned = on_disk as u64;
    if answered != on_disk.to_string() && answered != unsigned.to_string() {
        return Err(db_error(
            cluster,
            format!(
                "the server that PGHOST/PGPORT reach is another cluster (system identifier {answered}, this data directory's is {on_disk}); point them at this cluster's server"
            ),
        ));
    }
    Ok(())
}

/// The restored cluster's owner, when it is not the user running this
/// restore and cannot read `options`: PostgreSQL runs `restore_command` as
/// that owner, and every WAL fetch would fail (stopping recovery).
fn unreadable_by_cluster_owner(target: &Path, options: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(target.join("PG_VERSION")).ok()?.uid();
    let file = std::fs::metadata(options).ok()?;
    let readable = file.uid() == owner || file.mode() & 0o004 != 0;
    (owner != rustix::process::geteuid().as_raw() && !readable).then_some(owner)
}

/// Makes `target` an empty directory of mode 0700 (PostgreSQL's own
/// requirement), refusing one that holds anything.
fn prepare_target(cluster: &Path, target: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e: std::io::Error| ClientError::Io {
        path: target.to_path_buf(),
        source: e,
    };
    match std::fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(db_error(
                    cluster,
                    format!(
                        "{} is not empty; restore into a new or empty directory",
                        super::shown(target)
                    ),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target).map_err(io)?;
        }
        Err(e) => return Err(io(e)),
    }
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// The `restore_command` line: every path in it must be plain, since it
/// goes through both the configuration file's quoting and the shell.
fn restore_command(tandem: &Path, options: &Path, cluster: &Path) -> Result<String, ClientError> {
    let plain = |p: &Path| {
        let text = p.to_str().unwrap_or_default();
        (!text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._+-@,=:".contains(c)))
        .then(|| text.to_string())
        .ok_or_else(|| {
            ClientError::Usage(format!(
                "{} has characters a restore_command cannot carry safely (spaces, quotes, shell characters); use a path of letters, digits and /._+-@,=:",
                super::shown(p)
            ))
        })
    };
    Ok(format!(
        "{} --options {} --quiet restore-wal --pgdata {} %f %p",
        plain(tandem)?,
        plain(options)?,
        plain(cluster)?
    ))
}

/// Unpacks the base backup's tar into `target`, entry by entry, without
/// set-ID or sticky bits. Owners are kept when running as root (the cluster's files must belong to its
/// server's user). The tar came from a server: an entry that would land
/// outside `target` is refused, and so is any link but a tablespace's
/// (`pg_tblspc/OID`, the only links `pg_basebackup` writes), since the
/// restore then writes files in `target` by name.
fn unpack(tar: &Path, target: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(std::fs::File::open(tar)?);
    archive.set_preserve_permissions(true);
    // pg_basebackup never writes set-user-ID, set-group-ID or sticky files:
    // none is made from a tar a server sent.
    archive.set_mask(0o7000);
    archive.set_preserve_ownerships(rustix::process::geteuid().is_root());
    archive.set_overwrite(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let kind = entry.header().entry_type();
        if (kind.is_symlink() && !is_tablespace_link(&path)) || kind.is_hard_link() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the base backup holds a link at {}, where pg_basebackup writes none; it was not made by PostgreSQL, so nothing more is unpacked",
                    super::shown(&path)
                ),
            ));
        }
        if !entry.unpack_in(target)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the base backup's entry {} would land outside {}",
                    super::shown(&path),
                    super::shown(target)
                ),
            ));
        }
    }
    // The tar has no entry for its top directory: as root, give it to the
    // owner of the cluster's files, or PostgreSQL will not start on it.
    if rustix::process::geteuid().is_root() {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(target.join("PG_VERSION"))?;
        std::os::unix::fs::chown(target, Some(owner.uid()), Some(owner.gid()))?;
    }
    Ok(())
}

/// Whether `path` (an entry of a base backup) is a tablespace's link:
/// `pg_tblspc/NAME`, with or without a leading `./`.
fn is_tablespace_link(path: &Path) -> bool {
    use std::path::Component;
    let parts: Vec<Component<'_>> = path
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    matches!(parts.as_slice(), [Component::Normal(dir), Component::Normal(_)] if *dir == "pg_tblspc")
}

/// Adds the recovery settings to `postgresql.auto.conf` (read last, so
/// they win) and creates `recovery.signal`, never through a link.
fn configure_recovery(
    target: &Path,
    command: &str,
    point_in_time_ns: Option<i64>,
) -> std::io::Result<()> {
    let mut settings = format!(
        "\n# Added by `tandem restore db postgres`: recovery from Tandem.\nrestore_command = '{command}'\nrecovery_target_action = 'promote'\n"
    );
    if let Some(ns) = point_in_time_ns {
        let at = chrono::DateTime::from_timestamp_nanos(ns)
            .format("%Y-%m-%d %H:%M:%S%.6f+00")
            .to_string();
        settings.push_str(&format!("recovery_target_time = '{at}'\n"));
    }
    let conf = target.join("postgresql.auto.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&conf)?;
    file.write_all(settings.as_bytes())?;
    file.sync_all()?;
    let signal = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(target.join("recovery.signal"))?;
    signal.sync_all()?;
    super::sync_parent(&conf)
}

/// The size of the file at `path` and its chunk ids as a backup would cut
/// them, to compare with a stored version.
fn chunk_ids_of(path: &Path) -> std::io::Result<(u64, Vec<Vec<u8>>)> {
    let mut ids = Vec::new();
    let read = Chunker::default().split(std::fs::File::open(path)?, |piece| {
        ids.push(tandem_proto::ChunkId::of(piece).as_slice().to_vec());
        true
    })?;
    Ok((read.unwrap_or(0), ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_backup_is_named_after_where_its_wal_starts() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nLABEL: tandem\n";
        assert_eq!(
            base_name_from_label(label).as_deref(),
            Some("000000010000000000000002.02000028.tar")
        );
        for bad in [
            "",
            "START WAL LOCATION: 0/2000028\n",
            "START WAL LOCATION: zz (file 000000010000000000000002)\n",
            "START WAL LOCATION: 0/2000028 (file ../../etc/passwd)\n",
        ] {
            assert_eq!(base_name_from_label(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn wal_names_are_ordered_by_segment_whatever_the_timeline() {
        assert_eq!(
            segment_part("000000020000000100000003"),
            Some("0000000100000003")
        );
        assert_eq!(
            segment_part("000000010000000000000002.00000028.backup"),
            Some("0000000000000002")
        );
        assert_eq!(segment_part("00000002.history"), None);
        for bad in ["", "..", "0000000100000000000000zz", "a/b"] {
            assert!(
                check_wal_name(bad).is_err() || segment_part(bad).is_none(),
                "{bad}"
            );
        }
        assert!(check_wal_name("../000000010000000000000002").is_err());
        assert!(check_wal_name("000000010000000000000002").is_ok());
        assert!(check_wal_name("00000002.history").is_ok());
    }

    #[test]
    fn a_tar_entry_that_climbs_out_of_the_target_is_not_written_there() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_old();
        let name = b"../escaped";
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_size(4);
        header.set_mode(0o600);
        header.set_cksum();
        builder.append(&header, &b"evil"[..]).unwrap();
        let tar = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("base.tar");
        std::fs::write(&file, tar).unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let _ = unpack(&file, &target);
        assert!(
            !dir.path().join("escaped").exists(),
            "nothing lands outside the target"
        );
    }

    /// A tar holding `PG_VERSION` and one symlink entry `name` -> `target`.
    fn tar_with_link(name: &str, link_target: &Path) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_mode(0o600);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, "PG_VERSION", &b"16\n"[..])
            .unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        link.set_uid(0);
        link.set_gid(0);
        link.set_mtime(0);
        builder.append_link(&mut link, name, link_target).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_base_backup_with_a_link_outside_pg_tblspc_is_refused_and_nothing_is_written_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"precious").unwrap();
        for name in ["recovery.signal", "postgresql.auto.conf", "base/link"] {
            let file = dir.path().join("base.tar");
            std::fs::write(&file, tar_with_link(name, &outside)).unwrap();
            let target = dir
                .path()
                .join(format!("target-{}", name.replace('/', "-")));
            std::fs::create_dir(&target).unwrap();
            let err = unpack(&file, &target).unwrap_err();
            assert!(err.to_string().contains("holds a link at"), "{err}");
            // Had it been unpacked, the recovery files must still not follow it.
            std::os::unix::fs::symlink(&outside, target.join("recovery.signal")).unwrap();
            assert!(configure_recovery(&target, "true", None).is_err());
            assert_eq!(std::fs::read(&outside).unwrap(), b"precious", "{name}");
        }
    }

    #[test]
    fn a_tablespace_link_is_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("base.tar");
        std::fs::write(
            &file,
            tar_with_link("pg_tblspc/16384", Path::new("/srv/ts")),
        )
        .unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        unpack(&file, &target).unwrap();
        assert_eq!(
            std::fs::read_link(target.join("pg_tblspc/16384")).unwrap(),
            Path::new("/srv/ts")
        );
        assert!(is_tablespace_link(Path::new("./pg_tblspc/1")));
        assert!(!is_tablespace_link(Path::new("pg_tblspc/1/x")));
        assert!(!is_tablespace_link(Path::new("pg_tblspc")));
    }

    #[test]
    fn the_backup_label_is_read_from_the_head_of_the_tar() {
        let mut builder = tar::Builder::new(Vec::new());
        let label = b"START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(label.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        builder
            .append_data(&mut header, "backup_label", &label[..])
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let text = label_of(&tar).unwrap();
        assert_eq!(
            base_name_from_label(&text).as_deref(),
            Some("000000010000000000000003.03000028.tar")
        );
        assert_eq!(label_of(b"not a tar at all"), None);
    }
}
