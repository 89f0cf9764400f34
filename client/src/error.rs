//! Client errors and the exit codes they map to.
//!
//! Exit codes follow TSM's `dsmc` scheme so existing scripts keep working:
//! 0 success, 4 some objects skipped (the rest done), 8 warnings,
//! 12 errors (nothing or not everything could be done).

use std::path::PathBuf;

use crate::options::OptionsError;

/// Process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitStatus {
    /// Everything done.
    Success = 0,
    /// Some objects were skipped (not found, unreadable, not replaced); the rest was done.
    Skipped = 4,
    /// Done, with warnings.
    Warnings = 8,
    /// Failed, or at least one object failed with an error (e.g. corrupt data).
    Error = 12,
    /// `restore-wal` failed for a reason other than the file not being
    /// stored: PostgreSQL stops recovery on a code above 125, where any
    /// lower one would read as "not in the archive" and end recovery early.
    RecoveryMustStop = 126,
}

impl ExitStatus {
    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// What can stop a client command.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The options file is missing or wrong.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The server did not answer.
    #[error(
        "cannot reach server {server} at {address}: {cause} ({attempts} attempt(s) in {elapsed_ms} ms); check that the server runs and that server_address is right"
    )]
    Unreachable {
        /// Server name from the options.
        server: String,
        /// Its address.
        address: String,
        /// The last transport error.
        cause: String,
        /// Tries made.
        attempts: u32,
        /// Time spent.
        elapsed_ms: u128,
    },
    /// A server proved who it is but stayed too busy to take the logon for
    /// all of `busy_wait_seconds`. Never a reason to fail over.
    #[error(
        "server {server} at {address} answered but stayed busy for {seconds} s: {cause}. It is up, so no failover was made; try again later, or raise busy_wait_seconds"
    )]
    Busy {
        /// Server name.
        server: String,
        /// Its address.
        address: String,
        /// What it said last.
        cause: String,
        /// How long the client waited.
        seconds: u64,
    },
    /// The primary is not the server the options pin: nothing was sent to
    /// it, and this never leads to failover.
    #[error(
        "server {server} is not trusted: {cause}. No failover: a server that answers with the wrong certificate is not an outage"
    )]
    Untrusted {
        /// Server name from the options.
        server: String,
        /// What the handshake found (both fingerprints on a mismatch).
        cause: String,
    },
    /// The server refused the logon.
    #[error("logon to server {server} refused: {message}")]
    LogonRefused {
        /// Server name.
        server: String,
        /// The server's reason.
        message: String,
    },
    /// The server failed a request.
    #[error("{operation} failed on the server: {message}")]
    Server {
        /// What was being done.
        operation: &'static str,
        /// The server's message.
        message: String,
    },
    /// Failover could not give a session (GUID mismatch, secondary down).
    #[error("{text}")]
    Failover {
        /// Message id.
        id: &'static str,
        /// What happened.
        text: String,
    },
    /// A write refused because the session is in failover mode.
    #[error("{0}")]
    ReadOnly(String),
    /// A command-line argument is wrong.
    #[error("{0}")]
    Usage(String),
    /// The client itself failed: one of its own tasks or threads stopped
    /// unexpectedly. Neither the input nor the server is at fault.
    #[error(
        "internal error: {0}; run the command again, and report it with the error log if it recurs"
    )]
    Internal(String),
    /// The node's primary server has moved (planned role switch); the
    /// command follows it once. Shown only when it moved again.
    #[error(
        "server {} says node's primary server is now {} at {}; the client followed one such move in this command and does not follow another; check the servers' `query actlog --msgno TDM0611`",
        .0.told_by, .0.name, .0.address
    )]
    PrimaryMoved(Box<crate::logon::session::MovedPrimary>),
    /// A database agent could not copy or restore a database.
    #[error("database {database}: {message}")]
    Database {
        /// The database, as named.
        database: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// The local vault (`vault_dir`) cannot be opened or used.
    #[error(
        "vault {dir}: {cause}; check vault_dir in the options file (the directory must be writable by this user)"
    )]
    Vault {
        /// The vault directory, as configured.
        dir: PathBuf,
        /// What went wrong.
        cause: String,
    },
    /// The local vault's directory did not answer within
    /// `vault_timeout_seconds` (a network share that stopped answering).
    #[error(
        "vault {dir}: its directory did not answer within {seconds} s (a network share that stopped answering?); the vault is left out of this command. Check the share, or raise vault_timeout_seconds if it is merely slow"
    )]
    VaultTimedOut {
        /// The vault directory, as configured.
        dir: PathBuf,
        /// The limit that ran out.
        seconds: u64,
    },
    /// The vault was written by someone else since this client last wrote
    /// it (or this client's state is older than the vault).
    #[error(
        "second installation detected: the local vault {dir} is at revision {vault} but this client {recorded}. Another machine may back up this node into the same vault, or state_dir was restored from an older copy. Nothing was written. Check with `tandem query vault`, then accept the vault's state with `tandem set vault --accept`"
    )]
    SecondInstallation {
        /// The vault directory.
        dir: PathBuf,
        /// The vault's revision.
        vault: u64,
        /// What this client recorded, in words.
        recorded: String,
    },
    /// A vault sync stopped between batches because another command is
    /// waiting to write to the vault; the next sync goes on from there.
    #[error("the sync stopped for another command that writes to the vault {0}")]
    SyncInterrupted(PathBuf),
    /// `restore-wal`: no such WAL file is stored (PostgreSQL's normal
    /// question past the end of the archive).
    #[error("WAL file {0} is not stored")]
    WalNotStored(String),
    /// The state directory cannot be made or read, is not a directory,
    /// belongs to another user, or others may write in it.
    #[error(transparent)]
    StateDir(#[from] crate::state_dir::StateDirError),
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

impl ClientError {
    /// Wraps a status from the server for `operation`: the server's own
    /// words (they say what to do); the gRPC code's name would tell a user
    /// nothing, so it goes only to the debug log.
    pub fn server(operation: &'static str, status: tonic::Status) -> Self {
        tracing::debug!(operation, code = ?status.code(), "server refused");
        let message = match status.message() {
            "" => format!(
                "the server failed without saying why (gRPC code {})",
                i32::from(status.code())
            ),
            text => text.to_string(),
        };
        ClientError::Server { operation, message }
    }

    /// One of the client's own tasks or threads (`what`) ended abnormally.
    pub fn task_failed(what: &str, cause: impl std::fmt::Display) -> Self {
        ClientError::Internal(format!("the {what} failed: {cause}"))
    }

    /// The exit code for this error.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            ClientError::WalNotStored(_) => ExitStatus::Skipped,
            _ => ExitStatus::Error,
        }
    }

    /// The TDM message id printed with this error.
    pub fn msg_id(&self) -> &'static str {
        match self {
            ClientError::Options(_) => "TDM1001E",
            ClientError::Unreachable { .. } => "TDM1002E",
            ClientError::LogonRefused { .. } => "TDM1003E",
            ClientError::Busy { .. } => "TDM1072E",
            ClientError::Untrusted { .. } => "TDM1009E",
            ClientError::Server { .. } => "TDM1005E",
            ClientError::Usage(_) => "TDM1006E",
            ClientError::Failover { id, .. } => id,
            ClientError::ReadOnly(_) => "TDM2110E",
            ClientError::Io { .. } => "TDM1007E",
            ClientError::StateDir(_) => "TDM1073E",
            ClientError::Internal(_) => "TDM1004E",
            ClientError::PrimaryMoved(_) => "TDM2116E",
            ClientError::Database { .. } => "TDM1062E",
            ClientError::WalNotStored(_) => "TDM1064I",
            ClientError::Vault { .. } | ClientError::VaultTimedOut { .. } => "TDM2120E",
            ClientError::SecondInstallation { .. } => "TDM2127E",
            ClientError::SyncInterrupted(_) => "TDM2132I",
        }
    }
}
