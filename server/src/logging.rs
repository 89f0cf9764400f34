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

/// When the log file is closed and a new one begun (`log_rotation`). With
/// rotation the current file carries its period's stamp too.
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
    // The appender's own pruning would delete every file whose name merely
    // starts with the prefix; ours deletes only names it made.
    let appender = RollingFileAppender::builder()
        .rotation(rotation)
        .filename_prefix(prefix)
        .build(dir)
        .map_err(|e| fail(e.to_string()))?;
    if settings.rotation != LogRotation::Never {
        let (dir, prefix, rotation, keep) = (
            dir.to_path_buf(),
            prefix.to_string(),
            settings.rotation,
            settings.max_files,
        );
        std::thread::Builder::new()
            .name("log-pruner".into())
            .spawn(move || {
                loop {
                    if let Err(e) = prune_rotated(&dir, &prefix, rotation, keep) {
                        tracing::warn!(dir = %dir.display(), cause = %e, "cannot prune old log files");
                    }
                    std::thread::sleep(std::time::Duration::from_secs(600));
                }
            })
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(appender)
}

/// Whether `name` is `PREFIX.` and a date (daily) or date and hour (hourly)
/// in the appender's format: the only files pruning may delete.
fn is_rotated_name(name: &str, prefix: &str, rotation: LogRotation) -> bool {
    let Some(stamp) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return false;
    };
    let shape: &[u8] = match rotation {
        LogRotation::Daily => b"dddd-dd-dd",
        LogRotation::Hourly => b"dddd-dd-dd-dd",
        LogRotation::Never => return false,
    };
    stamp.len() == shape.len()
        && stamp.bytes().zip(shape).all(|(c, want)| match want {
            b'd' => c.is_ascii_digit(),
            other => c == *other,
        })
}

/// Deletes the oldest of this log's rolled files beyond `keep` (besides the
/// current one); touches nothing else in `dir`.
fn prune_rotated(
    dir: &Path,
    prefix: &str,
    rotation: LogRotation,
    keep: usize,
) -> std::io::Result<()> {
    let mut ours: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| is_rotated_name(name, prefix, rotation))
        .collect();
    // The stamps sort as they run: oldest first.
    ours.sort();
    let excess = ours.len().saturating_sub(keep.saturating_add(1));
    for name in &ours[..excess] {
        std::fs::remove_file(dir.join(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_logs_rolled_files_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "server.log.2026-11-28",
            "server.log.2026-11-29",
            "server.log.2026-11-30",
            "server.log.2026-12-01",
            "server.log.notes",
            "server.log",
            "server.log.2026-12-01-07",
            "serverside.log.2026-11-01",
            "catalog.db",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        prune_rotated(dir.path(), "server.log", LogRotation::Daily, 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "catalog.db",
                "server.log",
                "server.log.2026-11-29",
                "server.log.2026-11-30",
                "server.log.2026-12-01",
                "server.log.2026-12-01-07",
                "server.log.notes",
                "serverside.log.2026-11-01",
            ]
        );
    }
}
