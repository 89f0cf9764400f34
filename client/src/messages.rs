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
