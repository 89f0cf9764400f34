//! The error log (`dsierror.log`): one line per event, each appended with a
//! single `write` on an `O_APPEND` file so concurrent clients never interleave
//! inside a line. Rotation renames the full log to `<name>.1`, keeping the newest lines.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::output::messages::Msg;

/// Appends messages to the error log.
#[derive(Debug, Clone)]
pub struct ErrorLog {
    path: PathBuf,
    max_bytes: u64,
}

impl ErrorLog {
    /// A log at `path`, rotated once larger than `max_mb` MiB (0 = never).
    pub fn new(path: PathBuf, max_mb: u64) -> Self {
        ErrorLog {
            path,
            max_bytes: max_mb.saturating_mul(1024 * 1024),
        }
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Formats one line: RFC 3339 local time with milliseconds and offset, id, text.
    pub fn line(msg: &Msg) -> String {
        let now = chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%.3f%:z");
        let text = super::messages::without_controls(&msg.text, false);
        format!("{now} {} {text}\n", msg.id)
    }

    /// Appends `msg`.
    ///
    /// # Errors
    /// I/O errors creating the directory or writing the file.
    pub fn append(&self, msg: &Msg) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The log names files and servers: only its user reads it.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        if self.max_bytes > 0 {
            self.rotate_if_full()?;
        }
        // Never through a link, never into a FIFO or device: a client run as
        // root must not append to whatever file someone who can write the
        // log's directory points its name at, nor wait on a pipe there.
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&self.path)
            .map_err(|e| match e.raw_os_error() {
                // What O_NOFOLLOW and O_NONBLOCK answer for a link and for a
                // FIFO nobody reads.
                Some(libc::ELOOP | libc::ENXIO) => self.not_a_file(),
                _ => e,
            })?;
        // A hard link to another file (where the kernel allows making one)
        // would be that file.
        let meta = file.metadata()?;
        if !meta.file_type().is_file() || std::os::unix::fs::MetadataExt::nlink(&meta) != 1 {
            return Err(self.not_a_file());
        }
        // One write call for the whole line: O_APPEND makes it land at the end
        // in one piece even with other clients appending.
        file.write_all(Self::line(msg).as_bytes())
    }

    fn not_a_file(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is a link, FIFO or device, or a file with other names (hard links), not a file of its own; nothing was written there. Move it away so the log can be made",
        )
    }

    fn rotate_if_full(&self) -> std::io::Result<()> {
        match std::fs::metadata(&self.path) {
            Ok(m) if m.len() >= self.max_bytes => {
                let mut old = self.path.clone().into_os_string();
                old.push(".1");
                // Another client may have rotated it first: NotFound is fine.
                match std::fs::rename(&self.path, PathBuf::from(old)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_offset_timestamp_and_id() {
        let line = ErrorLog::line(&Msg::not_found("/x"));
        let (stamp, rest) = line.split_once(' ').unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
            "{stamp}"
        );
        assert!(rest.starts_with("TDM1011W /x skipped"));
        assert!(line.ends_with('\n'));
    }

    #[test]
    fn a_servers_text_cannot_forge_or_hide_a_line() {
        // A refusal's reason as a hostile server might word it.
        let msg = Msg {
            id: "TDM1003E",
            text: "refused: no\rTDM2107I forged\n2026-01-01 TDM2108I forged \u{1b}[2K\u{2028}end"
                .into(),
        };
        let line = ErrorLog::line(&msg);
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert!(line.ends_with('\n'));
        assert!(!line.contains(['\r', '\u{1b}', '\u{2028}']), "{line:?}");
        assert!(line.contains("no\\u{d}TDM2107I"), "{line:?}");
        // On the console, newlines are kept (messages of parse errors span
        // lines) and the rest is escaped the same way.
        let shown = msg.to_string();
        assert!(!shown.contains(['\r', '\u{1b}', '\u{2028}']), "{shown:?}");
        assert!(shown.contains("\\u{1b}[2K"), "{shown:?}");
        // Plain text is left alone.
        assert_eq!(
            Msg::not_found("/x").to_string(),
            format!("TDM1011W {}", Msg::not_found("/x").text)
        );
    }

    #[test]
    fn a_link_or_fifo_in_the_logs_place_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("passwd");
        std::fs::write(&target, "root:x:0:0\n").unwrap();
        let linked = dir.path().join("dsierror.log");
        std::os::unix::fs::symlink(&target, &linked).unwrap();
        assert!(
            ErrorLog::new(linked, 0)
                .append(&Msg::not_found("/x"))
                .is_err()
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root:x:0:0\n");

        let hard = dir.path().join("hard.log");
        std::fs::hard_link(&target, &hard).unwrap();
        assert!(
            ErrorLog::new(hard, 0)
                .append(&Msg::not_found("/x"))
                .is_err()
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root:x:0:0\n");

        let fifo = dir.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Refused at once, not waited on until a reader comes.
        let err = ErrorLog::new(fifo, 0)
            .append(&Msg::not_found("/x"))
            .unwrap_err();
        assert!(err.to_string().contains("a link, FIFO"), "{err}");
    }

    #[test]
    fn rotation_keeps_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = ErrorLog::new(dir.path().join("dsierror.log"), 1);
        let big = Msg {
            id: "TDM1010W",
            text: "x".repeat(600 * 1024),
        };
        log.append(&big).unwrap();
        log.append(&big).unwrap();
        log.append(&Msg::not_found("/newest")).unwrap();
        let current = std::fs::read_to_string(log.path()).unwrap();
        assert!(current.contains("/newest"));
        assert!(dir.path().join("dsierror.log.1").exists());
    }
}
