//! Console and error-log messages with TDM ids (`TDM` + 4 digits + severity).
//! Every id is listed in the README's message catalogue.

use std::fmt;

/// Message severity, the id's last letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Information.
    Info,
    /// Warning: something was skipped or is degraded.
    Warning,
    /// Error: something failed.
    Error,
}

/// A message for the console and, for warnings and errors, the error log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Id such as `TDM1010W`.
    pub id: &'static str,
    /// Text.
    pub text: String,
}

impl Msg {
    /// Severity from the id's suffix.
    pub fn severity(&self) -> Severity {
        match self.id.as_bytes().last() {
            Some(b'W') => Severity::Warning,
            Some(b'E' | b'S') => Severity::Error,
            _ => Severity::Info,
        }
    }

    /// A backup source could not be read.
    pub fn unreadable(path: &str, cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1010W",
            text: format!("{path} skipped: cannot read it: {cause}"),
        }
    }

    /// A path named for backup does not exist.
    pub fn not_found(path: &str) -> Self {
        Msg {
            id: "TDM1011W",
            text: format!("{path} skipped: no such file or directory"),
        }
    }

    /// A name that is not UTF-8 cannot be stored.
    pub fn not_utf8(path: &str) -> Self {
        Msg {
            id: "TDM1012W",
            text: format!("{path} skipped: its name is not valid UTF-8"),
        }
    }

    /// A file's data failed verification during restore.
    pub fn corrupt(path: &str, cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1020E",
            text: format!("{path} not restored: stored data is damaged: {cause}"),
        }
    }

    /// A stored path would land outside the restore destination.
    pub fn escapes(path: &str, cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1021E",
            text: format!("{path} not restored: {cause}"),
        }
    }

    /// A restore target exists and is not replaced.
    pub fn exists(target: &str) -> Self {
        Msg {
            id: "TDM1022W",
            text: format!("{target} exists and was not replaced (use --replace yes to overwrite)"),
        }
    }

    /// A restore target could not be written.
    pub fn write_failed(target: &str, cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1023E",
            text: format!("{target} not restored: {cause}"),
        }
    }

    /// Nothing matched a restore or query pattern.
    pub fn no_match(pattern: &str) -> Self {
        Msg {
            id: "TDM1024W",
            text: format!("no stored objects match {pattern}"),
        }
    }

    /// A file changed while it was read.
    pub fn changed(path: &str) -> Self {
        Msg {
            id: "TDM1013W",
            text: format!(
                "{path} changed while it was backed up; the stored copy may mix old and new data, back it up again"
            ),
        }
    }
}

impl Msg {
    /// TDM2106I: the primary did not answer.
    pub fn primary_failed(name: &str, address: &str, cause: &str) -> Self {
        Msg {
            id: "TDM2106I",
            text: format!("Connection to primary server {name} at {address} failed: {cause}"),
        }
    }

    /// TDM2107I: trying the replication server.
    pub fn trying_secondary(name: &str, address: &str) -> Self {
        Msg {
            id: "TDM2107I",
            text: format!("Attempting to connect to secondary server {name} at {address}"),
        }
    }

    /// TDM2108I: in failover mode.
    pub fn failed_over(name: &str, guid: &str, node: &str, replicated: &str) -> Self {
        Msg {
            id: "TDM2108I",
            text: format!(
                "Connected to secondary server {name} (guid {guid}) in failover mode; node {node} replicated {replicated}"
            ),
        }
    }

    /// TDM2109I: the primary answers again.
    pub fn failback(name: &str, address: &str) -> Self {
        Msg {
            id: "TDM2109I",
            text: format!(
                "Failback: primary server {name} at {address} is reachable again; the session is in normal mode"
            ),
        }
    }

    /// TDM2110E: a write refused in failover mode.
    pub fn failover_read_only(operation: &str, server: &str) -> Self {
        Msg {
            id: "TDM2110E",
            text: format!(
                "{operation} is not allowed in failover mode: secondary server {server} is read-only; run it again when the primary is back"
            ),
        }
    }

    /// TDM2111W: the replica lacks the newest backup of a filespace.
    pub fn replica_stale(filespace: &str, local: &str, replica: &str) -> Self {
        Msg {
            id: "TDM2111W",
            text: format!(
                "filespace {filespace}: the newest backup ({local}) has not reached the secondary yet; it holds the backup of {replica}"
            ),
        }
    }

    /// TDM2112E: the secondary is not the expected server.
    pub fn guid_mismatch(name: &str, address: &str, expected: &str, found: &str) -> Self {
        Msg {
            id: "TDM2112E",
            text: format!(
                "server at {address} presented guid {found}, but secondary server {name} has guid {expected}; refusing to log on to an unexpected server"
            ),
        }
    }

    /// TDM2114E: the secondary did not answer either.
    pub fn secondary_failed(name: &str, address: &str, cause: &str) -> Self {
        Msg {
            id: "TDM2114E",
            text: format!(
                "Connection to secondary server {name} at {address} failed as well: {cause}"
            ),
        }
    }

    /// The pushed replication server could not be saved.
    pub fn push_failed(cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1040W",
            text: format!(
                "the replication server details from the primary were not saved: {cause}; failover will use the details saved before"
            ),
        }
    }

    /// The options file now names a new or changed replication server.
    pub fn push_saved(name: &str, address: &str, file: &str) -> Self {
        Msg {
            id: "TDM1041I",
            text: format!("replication server {name} at {address} saved in {file}"),
        }
    }

    /// The local copy of the server inventory failed mid-scan.
    pub fn inventory_failed(cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1014W",
            text: format!(
                "the server inventory kept for this backup could not be read back, so no \
                 versions were made inactive this time (run the backup again): {cause}"
            ),
        }
    }

    /// The node replication table could not be updated.
    pub fn nrtable_failed(cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1042W",
            text: format!("the node replication table was not updated: {cause}"),
        }
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.id, self.text)
    }
}
