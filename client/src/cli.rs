//! The `tandem` command line (TSM `dsmc` verbs) and the dispatch to commands.

mod work;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use tandem_proto::pb;

use crate::archive;
use crate::backup::{self, BackupStats, human_bytes};
use crate::delete::{self, DelType, DeleteStats};
use crate::error::{ClientError, ExitStatus};
use crate::logon::failover::SessionMode;
use crate::logon::session::Session;
use crate::options::{self, ClientOptions};
use crate::output::console::Console;
use crate::output::error_log::ErrorLog;
use crate::output::messages::Msg;
use crate::output::timefmt;
use crate::query;
use crate::restore::{self, Replace, RestoreStats};
use work::Work;

/// Tandem backup-archive client.
#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about,
    after_help = "Exit codes: 0 success, 4 some objects skipped, 8 warnings, 12 errors."
)]
pub struct Cli {
    /// Options file [default: $TANDEM_OPTIONS, ./tandem.toml, ~/.config/tandem/tandem.toml].
    #[arg(long, global = true, value_name = "FILE")]
    pub options: Option<PathBuf>,
    /// Print only warnings and errors.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Print results as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log on to the replication server even if the primary is up (FORCEFAILOVER).
    #[arg(long, global = true)]
    pub force_failover: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Back up new and changed files; files gone locally become inactive.
    #[command(visible_alias = "i")]
    Incremental {
        /// Files or directories [default: `domain` from the options file].
        paths: Vec<PathBuf>,
        /// List what would be sent and made inactive; send and change nothing.
        #[arg(long)]
        preview: bool,
    },
    /// Back up exactly these files and trees, changed or not.
    #[command(visible_alias = "sel")]
    Selective {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// List what would be sent; send nothing.
        #[arg(long)]
        preview: bool,
    },
    /// Back up databases with their agents (`backup db sqlite|postgres|mariadb ...`).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Restore files: SOURCE is a path or a directory with a pattern
    /// (`/data/*`); `restore db ...` restores a database copy (a path named
    /// `db` is written `./db`).
    #[command(
        visible_alias = "rest",
        args_conflicts_with_subcommands = true,
        subcommand_negates_reqs = true,
        disable_help_subcommand = true
    )]
    Restore {
        /// What to restore (any bytes; `\*`, `\?`, `\[` for those
        /// characters in a name).
        #[arg(required = true)]
        source: Option<OsString>,
        /// Where to; paths stay relative to SOURCE's directory [default: in place].
        dest: Option<PathBuf>,
        /// Include subdirectories.
        #[arg(long)]
        subdir: bool,
        /// Restore the versions that were active at this time: RFC 3339 or
        /// local 'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DD'; a time to the second
        /// includes that whole second (as `query backup` shows it), a date
        /// the whole day.
        #[arg(long, value_name = "TIME")]
        pitdate: Option<String>,
        /// Consider inactive versions too (the newest version of each file wins).
        #[arg(long)]
        inactive: bool,
        /// Restore the newest version of each file, active or inactive (TSM
        /// LATEST; the same choice as --inactive).
        #[arg(long, conflicts_with = "pitdate")]
        latest: bool,
        /// Only versions backed up at or after this time (a date: from its
        /// start); inactive versions are considered too.
        #[arg(long, value_name = "TIME", conflicts_with = "pitdate")]
        fromdate: Option<String>,
        /// Only versions backed up up to this time (a date: through its
        /// end); inactive versions are considered too.
        #[arg(long, value_name = "TIME", conflicts_with = "pitdate")]
        todate: Option<String>,
        /// What to do when a file exists.
        #[arg(long, value_enum, default_value = "no")]
        replace: Replace,
        #[command(subcommand)]
        database: Option<RestoreCommand>,
    },
    /// Store a described copy of files and trees, kept for the node's
    /// archive retention (RETVER days) whatever later happens to them or
    /// to their backups (TSM ARCHIVE). Everything named is read and sent.
    #[command(visible_alias = "ar")]
    Archive {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// What the copies are, to find them again (at most 255 bytes)
        /// [default: "Archive Date: " and today's date].
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// Write archive copies back: the newest copy of each path that SOURCE,
    /// --description and the dates select (TSM RETRIEVE).
    #[command(visible_alias = "ret")]
    Retrieve {
        /// What to retrieve, as for `restore`.
        source: OsString,
        /// Where to; paths stay relative to SOURCE's directory [default: in place].
        dest: Option<PathBuf>,
        /// Include subdirectories.
        #[arg(long)]
        subdir: bool,
        /// Only copies with exactly this description.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Only copies archived at or after this time (a date: from its start).
        #[arg(long, value_name = "TIME")]
        fromdate: Option<String>,
        /// Only copies archived up to this time (a date: through its end).
        #[arg(long, value_name = "TIME")]
        todate: Option<String>,
        /// What to do when a file exists.
        #[arg(long, value_enum, default_value = "no")]
        replace: Replace,
    },
    /// Store one PostgreSQL WAL file, for `archive_command = 'tandem
    /// --options FILE archive-wal %p'`: succeeds only once the server holds
    /// it; the same file archived again succeeds without sending anything.
    #[command(name = "archive-wal")]
    ArchiveWal {
        /// The WAL file (PostgreSQL's %p).
        wal: PathBuf,
        /// The cluster's data directory [default: the working directory,
        /// where PostgreSQL runs the command].
        #[arg(long, value_name = "DIR")]
        pgdata: Option<PathBuf>,
    },
    /// Fetch one archived WAL file, for the restore_command that `restore
    /// db postgres` writes: exits 0 fetched, 4 not stored, 126 on any other
    /// failure (PostgreSQL then stops recovery instead of ending it early).
    #[command(name = "restore-wal")]
    RestoreWal {
        /// The cluster's data directory as it was backed up.
        #[arg(long, value_name = "DIR")]
        pgdata: PathBuf,
        /// The WAL file's name (PostgreSQL's %f).
        file: String,
        /// Where to write it (PostgreSQL's %p).
        dest: PathBuf,
    },
    /// Show information from the server.
    #[command(subcommand, visible_alias = "q")]
    Query(QueryCommand),
    /// Change settings on the server.
    #[command(subcommand)]
    Set(SetCommand),
    /// Run this node's scheduled backups (TSM `dsmc schedule`): ask the
    /// primary for the next run, sleep until its window opens, run it,
    /// report the outcome; until killed. Run it as a service (README).
    #[command(visible_alias = "sched")]
    Schedule,
    /// Delete stored versions.
    #[command(subcommand, visible_alias = "del")]
    Delete(DeleteCommand),
    /// Make the active backup versions of files inactive, leaving the local
    /// files alone (TSM EXPIRE; the same as `delete backup --deltype
    /// active`). They then expire by the node's policy; a file that still
    /// exists is backed up again by the next incremental unless excluded.
    /// Asks first unless --yes. Refused in failover mode.
    #[command(visible_alias = "exp")]
    Expire {
        /// A path or a directory with a pattern, as for `query backup`.
        source: OsString,
        /// Include subdirectories.
        #[arg(long)]
        subdir: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Take a consistent copy of a running database and store it as a
    /// backup version of its own (filespace `/@KIND`).
    #[command(subcommand)]
    Db(DbBackupCommand),
}

#[derive(Debug, Subcommand)]
enum DbBackupCommand {
    /// SQLite database files, copied with SQLite's online backup API while
    /// writers go on.
    Sqlite {
        /// Database files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// A PostgreSQL cluster's base backup, streamed from `pg_basebackup`
    /// (connection from PGHOST, PGPORT, PGUSER). The WAL it needs comes
    /// from `archive_command = 'tandem archive-wal %p'`.
    Postgres {
        /// The cluster's data directory (PGDATA), which names it.
        pgdata: PathBuf,
        /// Base backups kept active; older ones, and the WAL only they
        /// need, are made inactive and expire by the node's policy.
        #[arg(long, value_name = "N", default_value_t = crate::db::postgres::DEFAULT_KEEP,
              value_parser = clap::value_parser!(u32).range(1..=1000))]
        keep: u32,
    },
    /// A MariaDB server: a full backup (`mariadb-dump --single-transaction`
    /// streamed, no staging), or with --binlogs the closed binary logs not
    /// stored yet (run it often: they are the incrementals).
    Mariadb {
        /// Store the closed binary logs instead of a full backup.
        #[arg(long)]
        binlogs: bool,
        /// The server's Unix socket [default: the client programs' own].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum RestoreCommand {
    /// Restore a database copy taken by `backup db`.
    #[command(subcommand)]
    Db(DbRestoreCommand),
}

#[derive(Debug, Subcommand)]
enum DbRestoreCommand {
    /// A SQLite database: the copy is checked with PRAGMA integrity_check
    /// before it is renamed into place.
    Sqlite {
        /// The database as it was backed up (`query db` lists them).
        database: PathBuf,
        /// Where to: a file, or a directory to restore into
        /// [default: the database's own path].
        dest: Option<PathBuf>,
        /// The copy that was active at this time (as for `restore`)
        /// [default: the newest].
        #[arg(long, value_name = "TIME")]
        pitdate: Option<String>,
        /// Replace an existing database file, with its -wal, -shm and
        /// -journal files. Stop every program that uses it first.
        #[arg(long)]
        replace: bool,
    },
    /// A PostgreSQL cluster: its base backup into TARGET and recovery
    /// settings that fetch WAL from Tandem; start PostgreSQL on TARGET to
    /// replay to the time and promote.
    Postgres {
        /// The cluster's data directory as it was backed up (`query db`).
        pgdata: PathBuf,
        /// A new or empty directory for the restored cluster.
        target: PathBuf,
        /// Recover to this time (recovery_target_time) from the newest base
        /// backup before it [default: all archived WAL].
        #[arg(long, value_name = "TIME")]
        pitdate: Option<String>,
    },
    /// A MariaDB server, into the running (empty) server --socket reaches:
    /// the newest full backup before the time, then its binary logs
    /// replayed up to the time.
    Mariadb {
        /// The backed-up server's data directory (`query db` lists them).
        datadir: PathBuf,
        /// Replay up to this time [default: every stored binary log].
        #[arg(long, value_name = "TIME")]
        pitdate: Option<String>,
        /// The socket of the server to restore into [default: the client
        /// programs' own].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum DeleteCommand {
    /// Delete archive copies (TSM DELETE ARCHIVE): every copy that SOURCE
    /// and --description select; asks first unless --yes. Refused in
    /// failover mode.
    #[command(visible_alias = "ar")]
    Archive {
        /// A path or a directory with a pattern, as for `query archive`.
        source: OsString,
        /// Include subdirectories.
        #[arg(long)]
        subdir: bool,
        /// Only copies with exactly this description.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Delete backup versions of files (TSM DELETE BACKUP); asks first
    /// unless --yes. Refused in failover mode.
    #[command(visible_alias = "ba")]
    Backup {
        /// A path or a directory with a pattern, as for `query backup`.
        source: OsString,
        /// Include subdirectories.
        #[arg(long)]
        subdir: bool,
        /// Which versions: `active` makes active versions of files inactive
        /// (they then expire by policy), `inactive` deletes the inactive
        /// ones, `all` deletes every version, directories too.
        #[arg(long, value_enum, default_value = "active")]
        deltype: DelType,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum QueryCommand {
    /// List archive copies: size, archive date, expiry, path, description.
    #[command(visible_alias = "ar")]
    Archive {
        /// A path or a directory with a pattern.
        pattern: OsString,
        /// Include subdirectories.
        #[arg(long)]
        subdir: bool,
        /// Only copies with exactly this description.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Only copies archived at or after this time.
        #[arg(long, value_name = "TIME")]
        fromdate: Option<String>,
        /// Only copies archived up to this time.
        #[arg(long, value_name = "TIME")]
        todate: Option<String>,
    },
    /// List stored versions.
    #[command(visible_alias = "b")]
    Backup {
        /// A path or a directory with a pattern.
        pattern: OsString,
        /// Include inactive versions.
        #[arg(long)]
        inactive: bool,
        /// Include subdirectories.
        #[arg(long)]
        subdir: bool,
        /// Only versions backed up at or after this time.
        #[arg(long, value_name = "TIME")]
        fromdate: Option<String>,
        /// Only versions backed up up to this time.
        #[arg(long, value_name = "TIME")]
        todate: Option<String>,
    },
    /// List the database copies the agents stored: kind, size, time.
    Db {
        /// Include inactive (older) copies.
        #[arg(long)]
        inactive: bool,
    },
    /// List this node's filespaces.
    #[command(visible_alias = "fi")]
    Filespace,
    /// Describe the session: server, GUID, node, mode.
    #[command(visible_alias = "se")]
    Session,
    /// This node's next scheduled runs, as the server has them.
    #[command(visible_alias = "sched")]
    Schedule,
    /// The local vault (`vault_dir`): its state against the server
    /// (synchronized, synchronizing, failed, since when and why) and what it
    /// holds. Needs no server.
    Vault,
    /// Show the effective options and where each value came from.
    #[command(visible_alias = "opt")]
    Options,
    /// Show the include-exclude list (exclude_dir, include, exclude) and,
    /// with --test, what it decides for given paths.
    Inclexcl {
        /// A path to judge: backed up or left out, and by which rule.
        #[arg(long, value_name = "PATH")]
        test: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SetCommand {
    /// The local vault: accept its state after a second-installation stop
    /// (TDM2127E), once checked with `query vault`; or send the server what
    /// only the vault still holds (TDM2129W, TDM2137W).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["accept", "resend"])))]
    Vault {
        /// Take the vault's current revision as this client's.
        #[arg(long)]
        accept: bool,
        /// Vouch for every version the vault holds, so the next command on
        /// the server first sends it those it lacks (after TDM2129W, when
        /// the server lost them, or TDM2137W, once you have checked that
        /// they are this node's).
        #[arg(long)]
        resend: bool,
    },
    /// Change the node's password.
    Password {
        /// Current password.
        old: String,
        /// New password (at least 8 characters).
        new: String,
    },
}

fn summary_table<K: Into<String>>(rows: Vec<(K, String)>) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    for (k, v) in rows {
        t.add_row(vec![k.into(), v]);
    }
    t
}

fn print_json<T: Serialize>(value: &T) {
    crate::outln!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn elapsed(secs: f64) -> String {
    let whole = secs as u64;
    format!(
        "{:02}:{:02}:{:02}.{:02}",
        whole / 3600,
        whole / 60 % 60,
        whole % 60,
        ((secs.fract()) * 100.0) as u64
    )
}

fn print_backup_summary(stats: &BackupStats, console: &Console) {
    if console.json {
        return print_json(stats);
    }
    if console.quiet {
        return;
    }
    let rate = stats.bytes_scanned as f64 / stats.elapsed_secs.max(0.001);
    let mut rows = vec![
        ("Objects inspected".to_string(), stats.inspected.to_string()),
        ("Objects backed up".into(), stats.backed_up.to_string()),
        ("Objects unchanged".into(), stats.unchanged.to_string()),
        ("Objects deactivated".into(), stats.deactivated.to_string()),
        ("Objects failed".into(), stats.failed.to_string()),
    ];
    for (reason, count) in &stats.not_backed_up {
        rows.push((format!("  not backed up: {reason}"), count.to_string()));
    }
    if stats.warnings > 0 {
        rows.push(("Warnings".into(), stats.warnings.to_string()));
    }
    rows.extend([
        ("Bytes scanned".into(), human_bytes(stats.bytes_scanned)),
        ("Bytes sent".into(), human_bytes(stats.bytes_sent)),
        (
            "Bytes deduplicated".into(),
            human_bytes(stats.bytes_deduplicated),
        ),
        (
            "Throughput".into(),
            format!("{}/s", human_bytes(rate as u64)),
        ),
        ("Elapsed".into(), elapsed(stats.elapsed_secs)),
    ]);
    crate::outln!("{}", summary_table(rows));
}

/// An archive's figures: a backup's, said in archive words, with the
/// copies' expiry.
fn print_archive_summary(stats: &BackupStats, console: &Console) {
    let expires = stats.archive_expires_ns.unwrap_or(0);
    let summary = serde_json::json!({
        "inspected": stats.inspected, "archived": stats.backed_up, "failed": stats.failed,
        "not_archived": stats.not_backed_up, "warnings": stats.warnings,
        "bytes_scanned": stats.bytes_scanned, "bytes_sent": stats.bytes_sent,
        "bytes_deduplicated": stats.bytes_deduplicated, "elapsed_secs": stats.elapsed_secs,
        "expires": timefmt::json(expires),
    });
    print_summary(&summary, console, || {
        let mut rows = vec![
            ("Objects inspected".to_string(), stats.inspected.to_string()),
            ("Objects archived".into(), stats.backed_up.to_string()),
            ("Objects failed".into(), stats.failed.to_string()),
        ];
        for (reason, count) in &stats.not_backed_up {
            rows.push((format!("  not archived: {reason}"), count.to_string()));
        }
        if stats.warnings > 0 {
            rows.push(("Warnings".into(), stats.warnings.to_string()));
        }
        rows.extend([
            ("Expires".into(), timefmt::show(expires)),
            ("Bytes scanned".into(), human_bytes(stats.bytes_scanned)),
            ("Bytes sent".into(), human_bytes(stats.bytes_sent)),
            (
                "Bytes deduplicated".into(),
                human_bytes(stats.bytes_deduplicated),
            ),
            ("Elapsed".into(), elapsed(stats.elapsed_secs)),
        ]);
        rows
    });
}

fn print_delete_summary(stats: &DeleteStats, console: &Console) {
    print_summary(stats, console, || {
        vec![
            ("Versions made inactive", stats.deactivated.to_string()),
            ("Versions deleted", stats.deleted.to_string()),
        ]
    });
}

/// A command's figures: JSON with `--json`, nothing with `--quiet`, else
/// the two-column table `rows` makes.
fn print_summary<T: Serialize, K: Into<String>>(
    stats: &T,
    console: &Console,
    rows: impl FnOnce() -> Vec<(K, String)>,
) {
    if console.json {
        print_json(stats);
    } else if !console.quiet {
        crate::outln!("{}", summary_table(rows()));
    }
}

fn print_restore_summary(stats: &RestoreStats, console: &Console) {
    print_summary(stats, console, || {
        let mut rows = vec![
            ("Objects restored", stats.restored.to_string()),
            ("  of them hard links", stats.hard_links.to_string()),
            ("Objects skipped", stats.skipped.to_string()),
            ("Objects failed", stats.failed.to_string()),
            (
                "Existing directories kept",
                stats.directories_kept.to_string(),
            ),
            (
                "Files missing some of their names",
                stats.hard_links_incomplete.to_string(),
            ),
            ("Attributes not set", stats.attributes_not_set.to_string()),
            ("Bytes restored", human_bytes(stats.bytes)),
            ("Elapsed", elapsed(stats.elapsed_secs)),
        ];
        if let Some(from) = &stats.sources {
            rows.insert(
                rows.len() - 1,
                (
                    "Data from the local vault",
                    format!(
                        "{} file(s), {}",
                        from.vault_files,
                        human_bytes(from.vault_bytes)
                    ),
                ),
            );
            rows.insert(
                rows.len() - 1,
                (
                    "Data from the server",
                    format!(
                        "{} file(s), {}",
                        from.server_files,
                        human_bytes(from.server_bytes)
                    ),
                ),
            );
        }
        rows
    });
}

async fn set_password(
    session: &Session,
    options: &ClientOptions,
    options_path: &std::path::Path,
    old: String,
    new: String,
    console: &Console,
) -> Result<(), ClientError> {
    session
        .client()
        .set_password(session.request(pb::SetPasswordRequest {
            old_password: old,
            new_password: new.clone(),
        }))
        .await
        .map_err(|s| ClientError::server("changing the password", s))?;
    match &options.password_file {
        Some(file) => {
            tandem_os::atomic_file::replace(file, format!("{new}\n").as_bytes(), Some(0o600))
                .map_err(|e| ClientError::Io { path: file.clone(), source: e })?;
            console.report(
                &Msg { id: "TDM1030I", text: format!("password changed; {} updated", file.display()) },
                ExitStatus::Success,
            );
        }
        // An inline password is rewritten in place, unless the environment
        // gave it (then the file's value, if any, is not the one in use).
        None if std::env::var_os("TANDEM_PASSWORD").is_none() => {
            match crate::logon::options_push::set_inline_password(options_path, &new) {
                Ok(true) => console.report(
                    &Msg {
                        id: "TDM1030I",
                        text: format!("password changed; {} updated", options_path.display()),
                    },
                    ExitStatus::Success,
                ),
                Ok(false) => console.report(&Msg::password_not_saved(), ExitStatus::Warnings),
                Err(e) => console.report(
                    &Msg {
                        id: "TDM1031W",
                        text: format!(
                            "password changed on the server, but the options file could not be updated ({e}); set `password` there before the next command"
                        ),
                    },
                    ExitStatus::Warnings,
                ),
            }
        }
        None => console.report(&Msg::password_not_saved(), ExitStatus::Warnings),
    }
    Ok(())
}

/// Whether `name` is one a server may have (its `name` setting).
fn is_server_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Saves the replication server the primary pushed, if it changed. A file
/// that cannot be written does not stop the command. Only a primary the
/// client has pinned may push one, and only with the secondary's
/// fingerprint: the block decides where the password goes in failover.
fn save_pushed_server(
    session: &Session,
    options: &ClientOptions,
    options_path: &std::path::Path,
    console: &Console,
) {
    let Some((server, _)) = &session.info.replication_server else {
        return;
    };
    if session.info.replica || session.mode != SessionMode::Normal {
        return;
    }
    let refusal = if options.primary_trust().is_none() {
        Some("the primary is reached in plaintext, so it is not authenticated")
    } else if !is_server_name(&server.name) {
        // It becomes a key of the options file and a word of every
        // failover line in dsierror.log.
        Some("its name is not 1-64 letters, digits, '_', '-' or '.' as a server's name is")
    } else if server
        .fingerprint
        .parse::<tandem_tls::Fingerprint>()
        .is_err()
    {
        Some("it carries no valid certificate fingerprint for the secondary")
    } else {
        None
    };
    if let Some(why) = refusal {
        let name: String = server.name.chars().take(64).collect();
        console.report(&Msg::push_ignored(&name, why), ExitStatus::Warnings);
        return;
    }
    match crate::logon::options_push::update(options_path, server) {
        Ok(true) => console.report(
            &Msg::push_saved(
                &server.name,
                &server.address,
                &options_path.display().to_string(),
            ),
            ExitStatus::Success,
        ),
        Ok(false) => {}
        Err(e) => console.report(&Msg::push_failed(e), ExitStatus::Warnings),
    }
}

/// The options to log on with after a move of the node's primary
/// (planned role switch): the new primary as the server, pinned by the
/// fingerprint it came with, and no replication server until the new
/// primary pushes its own.
fn moved_options(
    options: &ClientOptions,
    moved: &crate::logon::session::MovedPrimary,
) -> ClientOptions {
    let mut next = options.clone();
    next.server_name.clone_from(&moved.name);
    next.server_address.clone_from(&moved.address);
    if !moved.fingerprint.is_empty() {
        next.server_fingerprint = Some(moved.fingerprint.clone());
    }
    next.my_replication_server = None;
    next.replication_servers
        .retain(|name, _| !name.eq_ignore_ascii_case(&moved.name));
    next
}

/// Logs on to the node's new primary after a move, and only once that
/// logon has succeeded (with the GUID the move named) rewrites the options
/// file to name it (TDM2115I in the error log). A failed logon leaves the
/// file as it was, so the next command starts at the old primary again. A
/// file that cannot be written, or server options set in the environment,
/// do not stop the command (TDM2117W).
async fn follow_moved_primary(
    options: &ClientOptions,
    options_path: &std::path::Path,
    moved: &crate::logon::session::MovedPrimary,
    followed: &ClientOptions,
    console: &Console,
) -> Result<Session, ClientError> {
    let session = Session::establish(followed, console).await?;
    if session.info.guid != moved.guid {
        let found = session.info.guid;
        session.logoff().await;
        return Err(ClientError::LogonRefused {
            server: moved.name.clone(),
            message: format!(
                "server {} said node's primary is now {} with guid {}, but the server at {} has guid {found}; the move is not followed and the options file is unchanged",
                moved.told_by, moved.name, moved.guid, moved.address
            ),
        });
    }
    let shown = options_path.display().to_string();
    let from_env = [
        "TANDEM_SERVER_NAME",
        "TANDEM_SERVER_ADDRESS",
        "TANDEM_SERVER_FINGERPRINT",
    ]
    .into_iter()
    .find(|key| std::env::var_os(key).is_some());
    let fingerprint = (!moved.fingerprint.is_empty()).then_some(moved.fingerprint.as_str());
    let new_primary = crate::logon::options_push::NewPrimary {
        name: &moved.name,
        address: &moved.address,
        fingerprint,
    };
    let saved = match from_env {
        Some(key) => Err(format!(
            "{key} is set in the environment and overrides the file; update it there"
        )),
        None => crate::logon::options_push::move_primary(options_path, &new_primary)
            .map_err(|e| e.to_string()),
    };
    match saved {
        Ok(_) => console.audit(&Msg::primary_moved(&options.node_name, moved, &shown)),
        Err(cause) => console.report(
            &Msg::primary_moved_not_saved(&moved.name, &shown, &cause),
            ExitStatus::Warnings,
        ),
    }
    Ok(session)
}

/// The local vault, opened while the logon runs: each takes tens of
/// milliseconds, and in normal mode every command uses both. Only a vault
/// that exists already is opened early, so a command whose logon fails
/// creates none. A move to another primary leaves the vault options as
/// they are.
struct EarlyVault {
    /// Ends with `None` when the vault does not exist yet.
    opening: Option<tokio::task::JoinHandle<Option<Result<Session, ClientError>>>>,
    /// Set once the vault's directory did not answer: the command does not
    /// wait for it again (each wait would also leave a thread blocked).
    gave_up: Option<u64>,
    dir: PathBuf,
    /// Whether it was opened asking a sync that holds the vault to stop
    /// (leaving a marker in its directory until it gets the vault).
    interrupt_sync: bool,
}

impl EarlyVault {
    /// Starts opening the vault `options` names, if it exists.
    fn start(options: &ClientOptions, interrupt_sync: bool) -> EarlyVault {
        let dir = options.vault_dir.clone().unwrap_or_default();
        let opening = options.vault_dir.is_some().then(|| {
            let options = options.clone();
            let looked_at = dir.clone();
            tokio::spawn(async move {
                // Even this look waits on a share that stopped answering.
                let limit = std::time::Duration::from_secs(options.vault_timeout_seconds);
                let is_dir = tokio::task::spawn_blocking(move || looked_at.is_dir());
                match tokio::time::timeout(limit, is_dir).await {
                    Ok(Ok(true)) => Some(crate::vault::open(&options, interrupt_sync).await),
                    Ok(_) => None,
                    Err(_) => Some(Err(ClientError::VaultTimedOut {
                        dir: options.vault_dir.clone().unwrap_or_default(),
                        seconds: options.vault_timeout_seconds,
                    })),
                }
            })
        });
        EarlyVault {
            opening,
            dir,
            interrupt_sync,
            gave_up: None,
        }
    }

    /// The vault as [`crate::vault::open`] gives it: the one opened early
    /// if that worked (however it waited for the lock), else opened now.
    async fn open(
        &mut self,
        options: &ClientOptions,
        interrupt_sync: bool,
    ) -> Result<Session, ClientError> {
        if let Some(seconds) = self.gave_up {
            return Err(ClientError::VaultTimedOut {
                dir: self.dir.clone(),
                seconds,
            });
        }
        let result = match self.opening.take() {
            Some(opening) => match opening.await {
                Ok(Some(Ok(vault))) => Ok(vault),
                // It waited for the lock as long as this command would, or
                // the directory did not answer.
                Ok(Some(Err(e)))
                    if self.interrupt_sync
                        || !interrupt_sync
                        || matches!(e, ClientError::VaultTimedOut { .. }) =>
                {
                    Err(e)
                }
                // Opened again, now asking a sync to step aside (or made,
                // as the vault does not exist yet).
                Ok(_) | Err(_) => crate::vault::open(options, interrupt_sync).await,
            },
            None => crate::vault::open(options, interrupt_sync).await,
        };
        if let Err(ClientError::VaultTimedOut { seconds, .. }) = &result {
            self.gave_up = Some(*seconds);
        }
        result
    }

    /// Gives the vault up on a path that does not use it: an open still
    /// under way is stopped (and its request to a sync taken back) rather
    /// than waited for; a finished one is logged off.
    async fn release(&mut self) {
        let Some(opening) = self.opening.take() else {
            return;
        };
        if opening.is_finished() {
            if let Ok(Some(Ok(vault))) = opening.await {
                vault.logoff().await;
            }
        } else {
            self.stop(opening);
        }
    }

    fn stop(&self, opening: tokio::task::JoinHandle<Option<Result<Session, ClientError>>>) {
        opening.abort();
        if self.interrupt_sync {
            // On a blocking thread, not waited for: the directory may be on
            // a share that stopped answering.
            let dir = self.dir.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || {
                    crate::vault::waiting::withdraw(&dir);
                })),
                Err(_) => crate::vault::waiting::withdraw(&dir),
            }
        }
    }
}

impl Drop for EarlyVault {
    /// On an error return before the vault was used: as [`Self::release`],
    /// without the logoff (dropping the session closes the vault).
    fn drop(&mut self) {
        if let Some(opening) = self.opening.take()
            && !opening.is_finished()
        {
            self.stop(opening);
        }
    }
}

async fn dispatch(
    work: Work,
    options: &ClientOptions,
    options_path: &std::path::Path,
    console: &Console,
) -> Result<(), ClientError> {
    let followed;
    let mut waiting = TierWait::new(options.tier_wait_seconds);
    let mut early_vault = EarlyVault::start(options, work.changes_versions());
    let (session, options) = loop {
        match Session::establish(options, console).await {
            Err(ClientError::PrimaryMoved(moved)) => {
                followed = moved_options(options, &moved);
                let session =
                    follow_moved_primary(options, options_path, &moved, &followed, console).await?;
                break (session, &followed);
            }
            Err(e) if no_server_answered(&e) => {
                let cause = e.to_string();
                // The vault is the other tier: when it can take the work,
                // nothing waits for a server.
                let unanswered = match &options.vault_dir {
                    Some(_) => match early_vault.open(options, work.is_write()).await {
                        Ok(vault) => {
                            return on_vault_alone(
                                work,
                                vault,
                                options,
                                options_path,
                                console,
                                |dir| Msg::vault_alone(dir, &cause),
                            )
                            .await;
                        }
                        Err(e @ ClientError::SecondInstallation { .. }) => return Err(e),
                        Err(vault_error) => vault_error,
                    },
                    None => e,
                };
                waiting.pause(unanswered, console).await?;
            }
            other => break (other?, options),
        }
    };
    if session.mode == SessionMode::Failover {
        if work.is_write() {
            if options.vault_dir.is_some() && work.vault_can_take() {
                let secondary = session.info.name.clone();
                session.logoff().await;
                let operation = work.name();
                let vault = early_vault.open(options, true).await?;
                return on_vault_alone(work, vault, options, options_path, console, |dir| {
                    Msg::vault_write_in_failover(operation, &secondary, dir)
                })
                .await;
            }
            early_vault.release().await;
            let text = Msg::failover_read_only(work.name(), &session.info.name).text;
            session.logoff().await;
            return Err(ClientError::ReadOnly(text));
        }
        warn_if_stale(&session, options, console).await;
    } else {
        save_pushed_server(&session, options, options_path, console);
    }
    let vault = match (&options.vault_dir, session.mode) {
        (Some(dir), SessionMode::Normal) => {
            match early_vault.open(options, work.changes_versions()).await {
                Ok(vault) => match crate::vault::push_pending(
                    &vault,
                    &session,
                    dir,
                    &options.state_dir(),
                    console,
                )
                .await
                {
                    Ok(pushed) => Some((vault, dir.clone(), pushed)),
                    // The command goes on on the server: a version the vault
                    // sends later never displaces a newer one there.
                    Err(e) => {
                        let stalled = vault.vault_stalled();
                        match (e, stalled) {
                            (ClientError::SyncInterrupted(_), _) => {
                                console
                                    .audit(&Msg::vault_sync_interrupted(dir, &session.info.name));
                            }
                            // The share stopped answering: said as such,
                            // and not waited for again to log off.
                            (_, Some(why)) => {
                                console.report(&Msg::vault_unusable(why), ExitStatus::Warnings);
                            }
                            (e, None) => console.report(
                                &Msg::vault_sync_failed(&session.info.name, &e.to_string()),
                                ExitStatus::Warnings,
                            ),
                        }
                        if stalled.is_none() {
                            vault.logoff().await;
                        }
                        None
                    }
                },
                // A write stops: nothing may be written while someone else
                // uses this vault. A read goes on at the server.
                Err(e @ ClientError::SecondInstallation { .. }) if work.is_write() => {
                    session.logoff().await;
                    return Err(e);
                }
                Err(e) => {
                    console.report(&Msg::vault_unusable(&e.to_string()), ExitStatus::Warnings);
                    None
                }
            }
        }
        // In failover the vault serves restores beside the secondary; it
        // is not synchronised with a read-only server.
        (Some(dir), SessionMode::Failover) if work.reads_versions() => {
            match early_vault.open(options, false).await {
                Ok(vault) => Some((vault, dir.clone(), false)),
                Err(e) => {
                    console.report(&Msg::vault_unusable(&e.to_string()), ExitStatus::Warnings);
                    None
                }
            }
        }
        _ => {
            early_vault.release().await;
            None
        }
    };
    let writes_through =
        work.changes_versions() || vault.as_ref().is_some_and(|(_, _, pushed)| *pushed);
    // A vault that has not caught up (a sync failed, or never ran) catches
    // up after any command on the primary, a read too: the client is
    // otherwise idle then. Never with a read-only secondary in failover.
    // Until the pull after the command makes the vault a copy of the
    // server again, its record says it is behind: a command cut short, or
    // a vault that stops answering during it, leaves no claim of being in
    // sync (restores from the vault alone and `query vault` rely on it).
    let vault = match vault {
        Some((v, dir, pushed)) if writes_through => match crate::vault::expect_pull(&dir) {
            Ok(()) => Some((v, dir, pushed)),
            Err(cause) => {
                console.report(&Msg::vault_unusable(&cause), ExitStatus::Warnings);
                v.logoff().await;
                None
            }
        },
        other => other,
    };
    let syncs_after = writes_through
        || (session.mode == SessionMode::Normal
            && work.lets_vault_catch_up()
            && vault
                .as_ref()
                .is_some_and(|(_, dir, _)| crate::vault::behind(dir)));
    let result = match &vault {
        // A backup's chunks go to the vault as they go to the server, so
        // the sync after it moves only metadata; a restore takes from the
        // vault the files it holds whole, the rest from the server.
        Some((v, _, _)) if writes_through || work.reads_versions() => {
            let beside = session.with_vault_beside(v);
            perform(work, &beside, options, options_path, console).await
        }
        _ => perform(work, &session, options, options_path, console).await,
    };
    if let Some((v, dir, _)) = vault {
        // A vault that stopped answering during the command is not waited
        // for again, not even to log off: the command's own work is done.
        if syncs_after && v.vault_stalled().is_none() {
            crate::vault::synchronise(&v, &session, &dir, &options.state_dir(), console).await;
        }
        match v.vault_stalled() {
            Some(why) => console.report(&Msg::vault_unusable(why), ExitStatus::Warnings),
            None => v.logoff().await,
        }
    }
    session.logoff().await;
    result
}

/// Whether a logon failed because no server answered (the primary, and the
/// secondary when there is one), rather than because one refused.
/// Time between logon rounds while a command waits for a tier.
const TIER_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The wait of a command that found no tier answering, bounded by
/// `tier_wait_seconds`: said once (TDM2136I, in `dsierror.log` too), then
/// a pause before each new round until the time is up.
struct TierWait {
    deadline: std::time::Instant,
    limit_seconds: u64,
    said: bool,
}

impl TierWait {
    fn new(limit_seconds: u64) -> Self {
        TierWait {
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(limit_seconds),
            limit_seconds,
            said: false,
        }
    }

    /// Pauses before the next round, or gives `unanswered` back when the
    /// time is up.
    async fn pause(
        &mut self,
        unanswered: ClientError,
        console: &Console,
    ) -> Result<(), ClientError> {
        let left = self
            .deadline
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(unanswered);
        }
        if !self.said {
            self.said = true;
            console.audit(&Msg::waiting_for_tier(
                &unanswered.to_string(),
                self.limit_seconds,
            ));
        }
        tokio::time::sleep(left.min(TIER_RETRY_INTERVAL)).await;
        Ok(())
    }
}

fn no_server_answered(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Unreachable { .. } | ClientError::Failover { .. }
    )
}

/// Runs `work` on the local vault alone: no server took the session (or
/// the secondary, read-only, cannot take a write). A write is recorded in
/// the vault's sync record first, so it reaches the primary later.
async fn on_vault_alone(
    work: Work,
    vault: Session,
    options: &ClientOptions,
    options_path: &std::path::Path,
    console: &Console,
    announce: impl FnOnce(&std::path::Path) -> Msg,
) -> Result<(), ClientError> {
    let dir = options.vault_dir.clone().unwrap_or_default();
    if work.is_write() {
        if !work.vault_can_take() {
            vault.logoff().await;
            return Err(ClientError::ReadOnly(format!(
                "{} needs the server: only backups can be stored in the local vault alone; run it again when the primary is back",
                work.name()
            )));
        }
        let recorded = crate::vault::note_offline_write(&dir)
            .and_then(|()| crate::vault::before_write(&vault, options));
        if let Err(e) = recorded {
            vault.logoff().await;
            return Err(e);
        }
    }
    console.audit(&announce(&dir));
    let result = perform(work, &vault, options, options_path, console).await;
    vault.logoff().await;
    result
}

/// Carries out `work` on an open session (a server's or the vault's).
async fn perform(
    work: Work,
    session: &Session,
    options: &ClientOptions,
    options_path: &std::path::Path,
    console: &Console,
) -> Result<(), ClientError> {
    match work {
        Work::Backup {
            mode,
            paths,
            rules,
            preview: true,
        } => backup::preview::run(session, options, &paths, mode, &rules, console)
            .await
            .map(|p| backup::preview::print(&p, console)),
        Work::Backup {
            mode,
            paths,
            rules,
            preview: false,
        } => backup::run(session, options, &paths, mode, &rules, console)
            .await
            .map(|s| print_backup_summary(&s, console)),
        Work::Restore(req) => restore::run(session, req, console)
            .await
            .map(|s| print_restore_summary(&s, console)),
        Work::Archive {
            paths,
            rules,
            description,
        } => backup::archive(session, options, &paths, description, &rules, console)
            .await
            .map(|s| print_archive_summary(&s, console)),
        Work::QueryArchive(filter) => archive::query(session, &filter, console).await,
        Work::DeleteArchive { filter, .. } => {
            archive::delete(session, &filter, console).await.map(|s| {
                print_summary(&s, console, || {
                    vec![("Archive copies deleted", s.deleted.to_string())]
                })
            })
        }
        Work::QueryBackup {
            selection,
            inactive,
            dates,
        } => query::backup(session, &selection, inactive, dates, console).await,
        Work::DeleteBackup { request, .. } => {
            let deleted = delete::run(session, &request, console).await;
            // The same deletion in the vault beside, so its sync does not
            // take the versions for ones the server lost (it keeps those).
            if deleted.is_ok()
                && let Some(vault) = session.vault_beside()
            {
                let quiet = Console::new(None, true, false);
                match delete::run(vault, &request, &quiet).await {
                    Ok(s) if s.deleted > 0 => {
                        if let Some(dir) = &options.vault_dir {
                            crate::vault::reclaim_later(dir);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => console.report(
                        &Msg::vault_sync_failed(&session.info.name, &e.to_string()),
                        ExitStatus::Warnings,
                    ),
                }
            }
            deleted.map(|s| print_delete_summary(&s, console))
        }
        Work::QueryFilespace => query::filespaces(session, options, console).await,
        Work::QuerySession => query::session(session, options, console).await,
        Work::QuerySchedule => crate::schedule::query(session, console).await,
        Work::DbBackup { kind, paths, keep } => match kind {
            crate::db::DbKind::Sqlite => {
                crate::db::sqlite::backup(session, options, &paths, console).await
            }
            crate::db::DbKind::Postgres => {
                crate::db::postgres::backup(session, options, &paths[0], keep, console).await
            }
            crate::db::DbKind::Mariadb => Err(ClientError::Internal(
                "a MariaDB backup was planned as a file database's".into(),
            )),
        }
        .map(|s| print_backup_summary(&s, console)),
        Work::ArchiveWal { wal, pgdata } => {
            crate::db::postgres::archive_wal(session, options, &wal, pgdata.as_deref(), console)
                .await
                .map(|_| ())
        }
        Work::RestoreWal { pgdata, file, dest } => {
            match crate::db::postgres::restore_wal(session, &pgdata, &file, &dest, console).await {
                Ok(true) => Ok(()),
                // On a replica that is behind, "not stored" may only mean
                // "not replicated yet": recovery must stop, not end there.
                Ok(false) if session.mode == SessionMode::Failover => {
                    if postgres_replica_behind(session, options).await {
                        Err(ClientError::Database {
                            database: crate::db::shown(&pgdata),
                            message: format!(
                                "WAL file {file} is not on the replication server, whose copy of this node's PostgreSQL backups is behind the primary's; recovery stops here rather than end early: restore when the primary is back"
                            ),
                        })
                    } else {
                        Err(ClientError::WalNotStored(file))
                    }
                }
                // The vault may lack WAL files archived since its last
                // sync: recovery must stop, not end there.
                Ok(false) if session.mode == SessionMode::Vault => Err(ClientError::Database {
                    database: crate::db::shown(&pgdata),
                    message: format!(
                        "WAL file {file} is not in the local vault, which may lack files archived since its last sync with the server; recovery stops here rather than end early: restore when a server answers"
                    ),
                }),
                Ok(false) => Err(ClientError::WalNotStored(file)),
                Err(e) => Err(e),
            }
        }
        Work::DbRestore {
            kind,
            database,
            dest,
            point_in_time_ns,
            replace,
        } => match (kind, dest) {
            (crate::db::DbKind::Sqlite, dest) => {
                crate::db::sqlite::restore(
                    session,
                    &database,
                    dest.as_deref(),
                    point_in_time_ns,
                    replace,
                    console,
                )
                .await
            }
            (crate::db::DbKind::Postgres, Some(target)) => {
                crate::db::postgres::restore(
                    session,
                    options_path,
                    &database,
                    &target,
                    point_in_time_ns,
                    console,
                )
                .await
            }
            (crate::db::DbKind::Postgres, None) | (crate::db::DbKind::Mariadb, _) => {
                Err(ClientError::Internal(
                    "a database restore reached the logon without what it needs".into(),
                ))
            }
        }
        .map(|s| print_restore_summary(&s, console)),
        Work::QueryDb { inactive } => crate::db::query(session, inactive, console).await,
        Work::MariadbBackup { binlogs, socket } => {
            let connection = crate::db::mariadb::Connection { socket };
            if binlogs {
                crate::db::mariadb::backup_binlogs(session, options, &connection, console).await
            } else {
                crate::db::mariadb::backup_full(session, options, &connection, console).await
            }
            .map(|s| print_backup_summary(&s, console))
        }
        Work::MariadbRestore {
            datadir,
            socket,
            point_in_time_ns,
        } => crate::db::mariadb::restore(
            session,
            options,
            &datadir,
            &crate::db::mariadb::Connection { socket },
            point_in_time_ns,
            console,
        )
        .await
        .map(|s| print_restore_summary(&s, console)),
        Work::SetPassword { old, new } => {
            set_password(session, options, options_path, old, new, console).await
        }
        Work::ShowOptions
        | Work::ShowInclexcl { .. }
        | Work::Schedule
        | Work::QueryVault
        | Work::AcceptVault
        | Work::ResendVault => Err(ClientError::Internal(
            "a local query reached the logon; it needs no session".into(),
        )),
    }
}

/// In failover, whether the replica's copy of the PostgreSQL agent's
/// filespace is behind what the primary acknowledged (or cannot be told).
async fn postgres_replica_behind(session: &Session, options: &ClientOptions) -> bool {
    crate::logon::currency::check(session, options)
        .await
        .map(|all| {
            all.iter()
                .any(|f| f.filespace == crate::db::DbKind::Postgres.filespace() && !f.current)
        })
        .unwrap_or(true)
}

/// In failover, warns (TDM2111W) for each filespace whose newest backup has
/// not reached the secondary.
async fn warn_if_stale(session: &Session, options: &ClientOptions, console: &Console) {
    let Ok(filespaces) = crate::logon::currency::check(session, options).await else {
        return;
    };
    for fs in filespaces.iter().filter(|f| !f.current) {
        let local = fs
            .local_backup_ns
            .map_or_else(|| "-".into(), timefmt::rfc3339);
        let replica = if fs.replica_backup_ns == 0 {
            "nothing yet".to_string()
        } else {
            timefmt::rfc3339(fs.replica_backup_ns)
        };
        console.report(
            &Msg::replica_stale(&fs.filespace, &local, &replica),
            ExitStatus::Warnings,
        );
    }
}

/// Runs the client with `args` (including the program name) and returns the
/// exit code. Used by `main` and by `tandem-server demo`.
pub async fn run<I, T>(args: I) -> ExitStatus
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // A restore_command PostgreSQL runs that this version cannot parse
        // (written by another release, say) must stop recovery, not read as
        // "not in the archive".
        Err(e) if e.use_stderr() && runs_restore_wal(&args) => {
            let _ = e.print();
            return ExitStatus::RecoveryMustStop;
        }
        Err(e) if e.use_stderr() && crate::output::parse_errors::asks_for_json(&args) => {
            let msg = Msg {
                id: ClientError::Usage(String::new()).msg_id(),
                text: crate::output::parse_errors::plain_message(&e),
            };
            eprintln!("{}", msg.to_json());
            return ExitStatus::Error;
        }
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitStatus::Error
            } else {
                ExitStatus::Success
            };
        }
    };
    let wal_tool = WalTool::of(&cli.command);
    let env: HashMap<String, String> = std::env::vars().collect();
    let path = options::resolve_path(
        cli.options.as_deref(),
        env.get("TANDEM_OPTIONS").map(String::as_str),
        std::path::Path::new("tandem.toml").exists(),
        options::config_home().as_deref(),
    );
    let options = match ClientOptions::load(&path, &env) {
        Ok(mut o) => {
            o.force_failover |= cli.force_failover;
            o
        }
        Err(e) => {
            let err = ClientError::from(e);
            let msg = Msg {
                id: err.msg_id(),
                text: err.to_string(),
            };
            if cli.json {
                eprintln!("{}", msg.to_json());
            } else {
                eprintln!("{msg}");
            }
            return WalTool::exit(wal_tool, &err).unwrap_or(err.exit_status());
        }
    };
    let log = ErrorLog::new(options.error_log_path(), options.error_log_max_mb);
    let console = Console::new(Some(log), cli.quiet, cli.json);
    if let Some((file, mode)) = options.readable_secret(&path, &env) {
        // Said every time, but no reason to fail the command.
        console.report(&Msg::readable_password(&file, mode), ExitStatus::Success);
    }
    // Arguments are checked before the logon, so bad input never costs a session.
    let result = match Work::plan(cli.command, &options) {
        Ok(Work::ShowOptions) => {
            let mut effective = options.effective(&path, &env);
            if cli.force_failover {
                for o in effective.iter_mut().filter(|o| o.key == "force_failover") {
                    o.source = "flag --force-failover".into();
                }
            }
            query::options(&effective, &path, &console);
            Ok(())
        }
        Ok(Work::ShowInclexcl { rules, tests }) => query::inclexcl(&rules, &tests, &path, &console),
        Ok(Work::QueryVault) => crate::vault::query(&options, &console).await,
        Ok(Work::AcceptVault) => crate::vault::accept(&options, &console).await,
        Ok(Work::ResendVault) => crate::vault::resend(&options, &console).await,
        Ok(Work::Schedule) => crate::schedule::run(&path, &env, &console).await,
        Ok(work) => match work.confirm_first() {
            Ok(()) => {
                let done = dispatch(work, &options, &path, &console).await;
                // A command that failed midway leaves no progress line behind.
                console.end_progress();
                done
            }
            Err(err) => Err(err),
        },
        Err(err) => Err(err),
    };
    match result {
        // PostgreSQL reads only the exit code: a warning (a stale replica,
        // an options file it could not rewrite) must not turn a file
        // stored or fetched into a failure it retries forever.
        Ok(()) if wal_tool.is_some() => ExitStatus::Success,
        Ok(()) => console.status(),
        Err(err) => {
            console.report(
                &Msg {
                    id: err.msg_id(),
                    text: err.to_string(),
                },
                err.exit_status(),
            );
            WalTool::exit(wal_tool, &err).unwrap_or(console.status().max(err.exit_status()))
        }
    }
}

/// Whether the command line asks for `restore-wal` (before it is parsed).
pub fn runs_restore_wal(args: &[OsString]) -> bool {
    args.iter().skip(1).any(|a| a == "restore-wal")
}

/// The commands PostgreSQL runs, whose exit codes it interprets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalTool {
    /// `archive-wal`: 0 once stored, anything else and PostgreSQL retries.
    Archive,
    /// `restore-wal`: 0 fetched, 4 not stored, 126 anything else (recovery
    /// must stop rather than end early).
    Restore,
}

impl WalTool {
    fn of(command: &Command) -> Option<WalTool> {
        match command {
            Command::ArchiveWal { .. } => Some(WalTool::Archive),
            Command::RestoreWal { .. } => Some(WalTool::Restore),
            _ => None,
        }
    }

    /// The exit code for `err` when the command is one of these.
    fn exit(tool: Option<WalTool>, err: &ClientError) -> Option<ExitStatus> {
        match (tool?, err) {
            (WalTool::Restore, ClientError::WalNotStored(_)) => Some(ExitStatus::Skipped),
            (WalTool::Restore, _) => Some(ExitStatus::RecoveryMustStop),
            (WalTool::Archive, _) => Some(ExitStatus::Error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pushed_server_name_must_be_a_servers_name() {
        for good in ["SECONDARY", "dr-site.2", "a_b"] {
            assert!(is_server_name(good), "{good}");
        }
        let long = "X".repeat(65);
        for bad in [
            "",
            "two words",
            "evil\n2026 TDM2108I",
            "a]b",
            "\u{1b}[2J",
            long.as_str(),
        ] {
            assert!(!is_server_name(bad), "{bad:?}");
        }
    }
}
