//! What a command asks of the server, checked before the logon so bad input
//! never costs a session: one value per command, which [`super::dispatch`]
//! runs and which says whether it writes (refused in failover, where the
//! session is read-only) or needs no session at all.

use std::path::PathBuf;

use crate::backup::rules::Rules;

use super::{
    BackupCommand, Command, DbBackupCommand, DbRestoreCommand, DeleteCommand, QueryCommand,
    RestoreCommand, SetCommand,
};
use crate::archive::{ArchiveFilter, check_description, default_description};
use crate::backup::Mode;
use crate::db::DbKind;
use crate::delete::{DeleteRequest, confirm};
use crate::error::ClientError;
use crate::options::ClientOptions;
use crate::output::timefmt;
use crate::restore::RestoreRequest;
use crate::selection::{BackupDates, Selection};

/// The work of one command, with its arguments checked.
#[derive(Debug)]
pub(super) enum Work {
    /// `incremental` or `selective`.
    Backup {
        mode: Mode,
        paths: Vec<PathBuf>,
        rules: Rules,
        /// Only list what would be sent.
        preview: bool,
    },
    /// `restore`, or `retrieve` (with its archive filter).
    Restore(RestoreRequest),
    /// `archive`.
    Archive {
        paths: Vec<PathBuf>,
        rules: Rules,
        description: String,
    },
    /// `query archive`.
    QueryArchive(ArchiveFilter),
    /// `delete archive`; `confirmed` by `--yes`, else asked before the logon.
    DeleteArchive {
        filter: ArchiveFilter,
        confirmed: bool,
    },
    /// `query backup`.
    QueryBackup {
        selection: Selection,
        inactive: bool,
        dates: Option<BackupDates>,
    },
    /// `backup db KIND`.
    DbBackup {
        kind: DbKind,
        paths: Vec<PathBuf>,
        /// Base backups kept (PostgreSQL).
        keep: u32,
    },
    /// `restore db KIND`.
    DbRestore {
        kind: DbKind,
        database: PathBuf,
        dest: Option<PathBuf>,
        point_in_time_ns: Option<i64>,
        replace: bool,
    },
    /// `query db`.
    QueryDb { inactive: bool },
    /// `backup db mariadb`.
    MariadbBackup {
        binlogs: bool,
        socket: Option<PathBuf>,
    },
    /// `restore db mariadb`.
    MariadbRestore {
        datadir: PathBuf,
        socket: Option<PathBuf>,
        point_in_time_ns: Option<i64>,
    },
    /// `archive-wal`.
    ArchiveWal {
        wal: PathBuf,
        pgdata: Option<PathBuf>,
    },
    /// `restore-wal`.
    RestoreWal {
        pgdata: PathBuf,
        file: String,
        dest: PathBuf,
    },
    /// `query filespace`.
    QueryFilespace,
    /// `query session`.
    QuerySession,
    /// `query schedule`.
    QuerySchedule,
    /// `query vault`: answered from the vault alone.
    QueryVault,
    /// `set vault --accept`: answered from the vault alone.
    AcceptVault,
    /// `set vault --resend`: answered from the vault alone.
    ResendVault,
    /// `schedule`: the long-running scheduler, which logs on by itself.
    Schedule,
    /// `query options`: answered from the options alone.
    ShowOptions,
    /// `query inclexcl`: answered from the options alone.
    ShowInclexcl { rules: Rules, tests: Vec<PathBuf> },
    /// `set password`.
    SetPassword { old: String, new: String },
    /// `delete backup`, or `expire` (deltype active); `confirmed` by
    /// `--yes`, else asked before the logon.
    DeleteBackup {
        request: DeleteRequest,
        confirmed: bool,
        /// The command as typed, for messages.
        verb: &'static str,
    },
}

impl Work {
    /// Checks a command's arguments against the options.
    ///
    /// # Errors
    /// [`ClientError::Usage`] naming what is wrong.
    pub(super) fn plan(command: Command, options: &ClientOptions) -> Result<Work, ClientError> {
        Ok(match command {
            Command::Incremental { paths, preview } => {
                let paths = if paths.is_empty() {
                    options.domain.clone()
                } else {
                    paths
                };
                if paths.is_empty() {
                    return Err(ClientError::Usage(
                        "no paths given and no `domain` in the options file; name what to back up"
                            .into(),
                    ));
                }
                Work::Backup {
                    mode: Mode::Incremental,
                    paths,
                    rules: rules(options)?,
                    preview,
                }
            }
            Command::Selective { paths, preview } => Work::Backup {
                mode: Mode::Selective,
                paths,
                rules: rules(options)?,
                preview,
            },
            Command::Backup(BackupCommand::Db(DbBackupCommand::Sqlite { paths })) => {
                Work::DbBackup {
                    kind: DbKind::Sqlite,
                    paths,
                    keep: 0,
                }
            }
            Command::Backup(BackupCommand::Db(DbBackupCommand::Postgres { pgdata, keep })) => {
                Work::DbBackup {
                    kind: DbKind::Postgres,
                    paths: vec![crate::db::postgres::cluster_at(&pgdata)?],
                    keep,
                }
            }
            Command::Backup(BackupCommand::Db(DbBackupCommand::Mariadb { binlogs, socket })) => {
                Work::MariadbBackup { binlogs, socket }
            }
            Command::Restore {
                database:
                    Some(RestoreCommand::Db(DbRestoreCommand::Mariadb {
                        datadir,
                        pitdate,
                        socket,
                    })),
                ..
            } => Work::MariadbRestore {
                datadir,
                socket,
                point_in_time_ns: recovery_target(pitdate.as_deref())?,
            },
            Command::ArchiveWal { wal, pgdata } => Work::ArchiveWal { wal, pgdata },
            Command::RestoreWal { pgdata, file, dest } => Work::RestoreWal { pgdata, file, dest },
            Command::Restore {
                database:
                    Some(RestoreCommand::Db(DbRestoreCommand::Postgres {
                        pgdata,
                        target,
                        pitdate,
                    })),
                ..
            } => Work::DbRestore {
                kind: DbKind::Postgres,
                database: pgdata,
                dest: Some(target),
                point_in_time_ns: recovery_target(pitdate.as_deref())?,
                replace: false,
            },
            Command::Restore {
                database:
                    Some(RestoreCommand::Db(DbRestoreCommand::Sqlite {
                        database,
                        dest,
                        pitdate,
                        replace,
                    })),
                ..
            } => Work::DbRestore {
                kind: DbKind::Sqlite,
                database,
                dest,
                point_in_time_ns: point_in_time(pitdate.as_deref())?,
                replace,
            },
            Command::Restore {
                source: None,
                database: None,
                ..
            } => {
                return Err(ClientError::Usage(
                    "name what to restore: a path, or `db KIND DATABASE`".into(),
                ));
            }
            Command::Restore {
                source: Some(source),
                database: None,
                dest,
                subdir,
                pitdate,
                inactive,
                latest,
                fromdate,
                todate,
                replace,
            } => Work::Restore(RestoreRequest {
                selection: Selection::parse(&crate::names::encode(&source), subdir)?,
                dest: destination(dest)?,
                // The versions active at the end of the span named: a time
                // copied from `query backup` (to the second) includes the
                // version stored in that second.
                point_in_time_ns: point_in_time(pitdate.as_deref())?,
                inactive: inactive || latest,
                dates: BackupDates::parse(fromdate.as_deref(), todate.as_deref())?,
                replace,
                archive: None,
            }),
            Command::Archive { paths, description } => Work::Archive {
                paths,
                rules: rules(options)?,
                description: match description {
                    Some(d) => {
                        check_description(&d)?;
                        d
                    }
                    None => default_description(),
                },
            },
            Command::Retrieve {
                source,
                dest,
                subdir,
                description,
                fromdate,
                todate,
                replace,
            } => {
                let filter = archive_filter(&source, subdir, description, fromdate, todate)?;
                Work::Restore(RestoreRequest {
                    selection: filter.selection.clone(),
                    dest: destination(dest)?,
                    point_in_time_ns: None,
                    inactive: false,
                    dates: None,
                    replace,
                    archive: Some(filter),
                })
            }
            Command::Query(QueryCommand::Archive {
                pattern,
                subdir,
                description,
                fromdate,
                todate,
            }) => Work::QueryArchive(archive_filter(
                &pattern,
                subdir,
                description,
                fromdate,
                todate,
            )?),
            Command::Delete(DeleteCommand::Archive {
                source,
                subdir,
                description,
                yes,
            }) => Work::DeleteArchive {
                filter: archive_filter(&source, subdir, description, None, None)?,
                confirmed: yes,
            },
            Command::Query(QueryCommand::Backup {
                pattern,
                subdir,
                inactive,
                fromdate,
                todate,
            }) => Work::QueryBackup {
                selection: Selection::parse(&crate::names::encode(&pattern), subdir)?,
                inactive,
                dates: BackupDates::parse(fromdate.as_deref(), todate.as_deref())?,
            },
            Command::Query(QueryCommand::Db { inactive }) => Work::QueryDb { inactive },
            Command::Query(QueryCommand::Filespace) => Work::QueryFilespace,
            Command::Query(QueryCommand::Session) => Work::QuerySession,
            Command::Query(QueryCommand::Schedule) => Work::QuerySchedule,
            Command::Query(QueryCommand::Vault) => Work::QueryVault,
            Command::Schedule => Work::Schedule,
            Command::Query(QueryCommand::Options) => Work::ShowOptions,
            Command::Query(QueryCommand::Inclexcl { test }) => Work::ShowInclexcl {
                rules: rules(options)?,
                tests: test,
            },
            Command::Set(SetCommand::Vault { accept: true, .. }) => Work::AcceptVault,
            Command::Set(SetCommand::Vault { .. }) => Work::ResendVault,
            Command::Set(SetCommand::Password { new, .. }) if new.chars().count() < 8 => {
                return Err(ClientError::Usage(
                    "the new password is too short; use at least 8 characters".into(),
                ));
            }
            Command::Set(SetCommand::Password { old, new }) => Work::SetPassword { old, new },
            Command::Delete(DeleteCommand::Backup {
                source,
                subdir,
                deltype,
                yes,
            }) => Work::DeleteBackup {
                request: DeleteRequest {
                    selection: Selection::parse(&crate::names::encode(&source), subdir)?,
                    deltype,
                },
                confirmed: yes,
                verb: "delete backup",
            },
            Command::Expire {
                source,
                subdir,
                yes,
            } => Work::DeleteBackup {
                request: DeleteRequest {
                    selection: Selection::parse(&crate::names::encode(&source), subdir)?,
                    deltype: crate::delete::DelType::Active,
                },
                confirmed: yes,
                verb: "expire",
            },
        })
    }

    /// Asks on the terminal before work that deletes, unless confirmed.
    ///
    /// # Errors
    /// [`ClientError::Usage`] when the answer is not yes or cannot be asked.
    pub(super) fn confirm_first(&self) -> Result<(), ClientError> {
        match self {
            Work::DeleteBackup {
                request,
                confirmed: false,
                verb,
            } => confirm(
                verb,
                &match request.deltype {
                    crate::delete::DelType::Active => format!(
                        "Make the active backup versions matching {} inactive (they then expire by the node's policy)? Type yes: ",
                        crate::names::display(&request.selection.prefix)
                    ),
                    other => format!(
                        "Delete the {other:?} backup versions matching {}? This cannot be undone. Type yes: ",
                        crate::names::display(&request.selection.prefix)
                    ),
                },
            ),
            Work::DeleteArchive {
                filter,
                confirmed: false,
            } => confirm(
                "delete archive",
                &format!(
                    "Delete the archive copies matching {}{}? This cannot be undone. Type yes: ",
                    crate::names::display(&filter.selection.prefix),
                    filter
                        .description
                        .as_ref()
                        .map_or_else(String::new, |d| format!(" with description {d:?}"))
                ),
            ),
            _ => Ok(()),
        }
    }

    /// Whether the work changes what the server stores: such work is refused
    /// on a failover session (TDM2110E), before anything is sent.
    pub(super) fn is_write(&self) -> bool {
        match self {
            Work::Backup { preview, .. } => !preview,
            Work::SetPassword { .. }
            | Work::DbBackup { .. }
            | Work::MariadbBackup { .. }
            | Work::ArchiveWal { .. }
            | Work::DeleteBackup { .. }
            | Work::Archive { .. }
            | Work::DeleteArchive { .. } => true,
            Work::QueryArchive(_)
            | Work::Restore(_)
            | Work::DbRestore { .. }
            | Work::MariadbRestore { .. }
            | Work::RestoreWal { .. }
            | Work::QueryDb { .. }
            | Work::QueryBackup { .. }
            | Work::QueryFilespace
            | Work::QuerySession
            | Work::QuerySchedule
            | Work::QueryVault
            | Work::AcceptVault
            | Work::ResendVault
            | Work::Schedule
            | Work::ShowOptions
            | Work::ShowInclexcl { .. } => false,
        }
    }

    /// Writes the local vault may take alone while no server does: backups
    /// of every kind, which reach the primary by the vault's sync. Archives,
    /// deletions and password changes need the server.
    pub(super) fn vault_can_take(&self) -> bool {
        matches!(
            self,
            Work::Backup { preview: false, .. }
                | Work::DbBackup { .. }
                | Work::MariadbBackup { .. }
                | Work::ArchiveWal { .. }
        )
    }

    /// Work after which the vault is synchronised with the server: what
    /// changes the node's versions there. PostgreSQL's `archive-wal` runs once
    /// per WAL file and is left to the next backup's sync.
    pub(super) fn changes_versions(&self) -> bool {
        matches!(
            self,
            Work::Backup { preview: false, .. }
                | Work::DbBackup { .. }
                | Work::MariadbBackup { .. }
                | Work::DeleteBackup { .. }
        )
    }

    /// Work after which a vault that is behind (a sync failed, or never
    /// ran) may catch up: everything but PostgreSQL's per-WAL-file tools,
    /// which run inside the database's archive and restore commands and
    /// must not wait for a whole sync.
    pub(super) fn lets_vault_catch_up(&self) -> bool {
        !matches!(self, Work::ArchiveWal { .. } | Work::RestoreWal { .. })
    }

    /// Restores, which a synchronised vault serves at local-disk speed.
    pub(super) fn reads_versions(&self) -> bool {
        matches!(
            self,
            Work::Restore(req) if req.archive.is_none()
        ) || matches!(self, Work::DbRestore { .. } | Work::MariadbRestore { .. })
    }

    /// The operation's name in messages.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Work::Backup {
                mode: Mode::Incremental,
                ..
            } => "incremental backup",
            Work::Backup {
                mode: Mode::Selective,
                ..
            } => "selective backup",
            Work::Restore(req) if req.archive.is_some() => "retrieve",
            Work::Restore(_) => "restore",
            Work::Archive { .. } => "archive",
            Work::QueryArchive(_) => "query archive",
            Work::DeleteArchive { .. } => "delete archive",
            Work::QueryBackup { .. } => "query backup",
            Work::DbBackup { .. } => "database backup",
            Work::DbRestore { .. } => "database restore",
            Work::QueryDb { .. } => "query db",
            Work::ArchiveWal { .. } => "archive-wal",
            Work::MariadbBackup { .. } => "database backup",
            Work::MariadbRestore { .. } => "database restore",
            Work::RestoreWal { .. } => "restore-wal",
            Work::QueryFilespace => "query filespace",
            Work::QuerySession => "query session",
            Work::QuerySchedule => "query schedule",
            Work::QueryVault => "query vault",
            Work::AcceptVault | Work::ResendVault => "set vault",
            Work::Schedule => "schedule",
            Work::ShowOptions => "query options",
            Work::ShowInclexcl { .. } => "query inclexcl",
            Work::SetPassword { .. } => "set password",
            Work::DeleteBackup { verb, .. } => verb,
        }
    }
}

/// A named destination made absolute now (the working directory of the
/// command, not of a later step).
fn destination(dest: Option<PathBuf>) -> Result<Option<PathBuf>, ClientError> {
    dest.as_deref()
        .map(crate::paths::absolute)
        .transpose()
        .map_err(|e| ClientError::Usage(format!("destination cannot be resolved: {e}")))
}

/// The archive copies SOURCE, a description and a date range select.
fn archive_filter(
    source: &std::ffi::OsStr,
    subdir: bool,
    description: Option<String>,
    fromdate: Option<String>,
    todate: Option<String>,
) -> Result<ArchiveFilter, ClientError> {
    if let Some(d) = &description {
        check_description(d)?;
    }
    Ok(ArchiveFilter {
        selection: Selection::parse(&crate::names::encode(source), subdir)?,
        description,
        dates: BackupDates::parse(fromdate.as_deref(), todate.as_deref())?,
    })
}

/// The options file's include-exclude list, each pattern checked.
pub(crate) fn rules(options: &ClientOptions) -> Result<Rules, ClientError> {
    Rules::new(&options.exclude_dir, &options.include, &options.exclude)
        .map_err(|e| ClientError::Usage(e.to_string()))
}

/// A database's recovery target: the instant typed, as PostgreSQL and
/// MariaDB take it (`14:05:00` must not replay a commit at 14:05:00.3).
fn recovery_target(pitdate: Option<&str>) -> Result<Option<i64>, ClientError> {
    Ok(pitdate
        .map(timefmt::parse_time)
        .transpose()?
        .map(|t| t.first_ns))
}

/// The end of the span a `--pitdate` names, so a time copied from a
/// listing (to the second) includes what was stored in that second.
fn point_in_time(pitdate: Option<&str>) -> Result<Option<i64>, ClientError> {
    Ok(pitdate
        .map(timefmt::parse_time)
        .transpose()?
        .map(|t| t.last_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_backups_archives_deletions_and_password_changes_write() {
        let writes = |w: &Work| w.is_write();
        assert!(writes(&Work::Backup {
            mode: Mode::Incremental,
            paths: vec!["/x".into()],
            rules: Rules::default(),
            preview: false,
        }));
        assert!(!writes(&Work::Backup {
            mode: Mode::Incremental,
            paths: vec!["/x".into()],
            rules: Rules::default(),
            preview: true,
        }));
        assert!(writes(&Work::SetPassword {
            old: "a".into(),
            new: "b".into()
        }));
        assert!(writes(&Work::Archive {
            paths: vec!["/x".into()],
            rules: Rules::default(),
            description: "d".into(),
        }));
        let filter =
            archive_filter(std::ffi::OsStr::new("/x"), false, None, None, None).expect("filter");
        assert!(writes(&Work::DeleteArchive {
            filter: filter.clone(),
            confirmed: true,
        }));
        assert!(!writes(&Work::QueryArchive(filter)));
        for read in [Work::QueryFilespace, Work::QuerySession, Work::ShowOptions] {
            assert!(!read.is_write(), "{}", read.name());
        }
    }
}
