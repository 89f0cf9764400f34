//! A command that finds the vault held by another one (a sync after a
//! backup, say) asks it to let go: it leaves a marker in the vault
//! directory while it waits for the lock, and a sync checks for the marker
//! between batches and stops there. What the sync committed stays; the
//! next sync goes on from it. So a write never waits behind a sync.

use std::path::{Path, PathBuf};

/// The marker's name in the vault directory.
const MARKER: &str = "write-waiting";

fn marker(dir: &Path) -> PathBuf {
    dir.join(MARKER)
}

/// Asks whoever holds the vault to stop its sync. Best effort: a vault
/// directory that cannot take the marker is one the caller cannot use
/// either, and its open says why.
pub fn ask(dir: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a planted link, and never waiting on a planted FIFO
    // (O_NONBLOCK: a FIFO without a reader fails at once; nothing changes
    // for a file): the marker is an empty file of ours.
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(marker(dir));
}

/// Takes the request back: the caller has the vault now (or gave up).
pub fn withdraw(dir: &Path) {
    let _ = std::fs::remove_file(marker(dir));
}

/// Whether a command is waiting for the vault `dir`.
#[must_use]
pub fn asked(dir: &Path) -> bool {
    marker(dir).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_seen_until_it_is_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!asked(dir.path()));
        ask(dir.path());
        ask(dir.path());
        assert!(asked(dir.path()));
        withdraw(dir.path());
        assert!(!asked(dir.path()));
        withdraw(dir.path());
    }

    #[test]
    fn a_fifo_in_the_markers_place_does_not_hang_the_request() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&marker(dir.path()), nix::sys::stat::Mode::S_IRWXU).unwrap();
        ask(dir.path());
        withdraw(dir.path());
        assert!(!asked(dir.path()));
    }
}
