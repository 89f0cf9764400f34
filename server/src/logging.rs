//! Where the server's own log goes: stderr (for systemd's journal or a
//! terminal), or a file that rolls over daily or hourly and keeps a bounded
//! number of old files; as text or as one JSON object per line.
//!
//! Lines are written synchronously: a line about to be lost with a
//! `kill -9` is one an operator would want. The activity log in the catalog
//! stays the auditable record; this log is for operating the process.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;

/// How log lines are written (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event: time, level, the message (a TDM id
    /// first where it has one), then its fields.
    #[default]
    Text,
    /// One JSON object per line, for a log shipper.
    Json,
}

/// When the log file is closed and a new one begun (`log_rotation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogRotation {
    /// At midnight UTC; files are named `PREFIX.YYYY-MM-DD`.
    #[default]
    Daily,
    /// Every hour; `PREFIX.YYYY-MM-DD-HH`.
    Hourly,
    /// Never: one file, for an outside tool such as logrotate.
    Never,
}

/// The server's log settings, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The log file (its directory and name prefix); stderr when unset.
    pub file: Option<PathBuf>,
    /// Text or JSON.
    pub format: LogFormat,
    /// How the file rolls over.
    pub rotation: LogRotation,
    /// Rolled-over files kept besides the current one.
    pub max_files: usize,
}

/// The log cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file's directory cannot be made or the file opened.
    #[error("log_file {path}: {cause}; give a file in a directory the server's user may write")]
    File {
        /// The configured file.
        path: PathBuf,
        /// What failed.
        cause: String,
    },
}

/// Installs the global subscriber; `default_level` applies unless
/// `RUST_LOG` says otherwise. Colour codes only on a terminal.
///
/// # Errors
/// [`LogError`] when the log file cannot be opened.
pub fn init(settings: &LogSettings, default_level: &str) -> Result<(), LogError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match &settings.file {
        None => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let builder = builder.with_writer(std::io::stderr).with_ansi(ansi);
            match settings.format {
                LogFormat::Text => builder.init(),
                LogFormat::Json => builder.json().init(),
            }
        }
        Some(path) => {
            let appender = rolling_file(path, settings)?;
            let builder = builder.with_writer(appender).with_ansi(false);
            match settings.format {
                LogFormat::Text => builder.init(),
                LogFormat::Json => builder.json().init(),
            }
        }
    }
    Ok(())
}

fn rolling_file(path: &Path, settings: &LogSettings) -> Result<RollingFileAppender, LogError> {
    let fail = |cause: String| LogError::File {
        path: path.to_path_buf(),
        cause,
    };
    let prefix = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| fail("it names no file".into()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    let rotation = match settings.rotation {
        LogRotation::Daily => Rotation::DAILY,
        LogRotation::Hourly => Rotation::HOURLY,
        LogRotation::Never => Rotation::NEVER,
    };
    let mut builder = RollingFileAppender::builder()
        .rotation(rotation)
        .filename_prefix(prefix);
    if settings.rotation != LogRotation::Never {
        builder = builder.max_log_files(settings.max_files.saturating_add(1));
    }
    builder.build(dir).map_err(|e| fail(e.to_string()))
}
