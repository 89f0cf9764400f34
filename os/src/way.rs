//! Whether anyone but this user and root could put another directory in
//! the place of one of ours: the client's state directory, a server's data
//! directory, a local vault.
//!
//! Checking the directory itself is not enough. Whoever may write in one
//! of its parents may rename it away and put a directory of their own in
//! its place, and whoever owns a symbolic link on the way may point it
//! elsewhere. So every step is looked at, up to `/`: the path as given,
//! and for each link met, its target and the target's parents. Each parent
//! must belong to this user or root and be closed to its group's and
//! others' writes unless it has the sticky bit (`/tmp`), where nobody may
//! rename what is not theirs; each link must belong to this user or root.
//! As OpenSSH's strict modes, a group-writable parent is refused even when
//! the group is the user's own.
//!
//! Each step is read without following it (`lstat`), so a link is judged
//! as a link and then followed by hand.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Write permission for the group and for others.
pub const OTHERS_WRITE: u32 = 0o022;
/// The sticky bit: only an entry's owner may rename or delete it.
const STICKY: u32 = 0o1000;
/// Symbolic links followed on the way, at most (the kernel's own limit).
pub const MAX_LINKS: usize = 40;

/// A step on the way that someone else could use to replace the directory.
#[derive(Debug)]
pub enum WayError {
    /// A parent, or a symbolic link on the way, belongs to another user
    /// (not root).
    ForeignOwner {
        /// The parent or link at fault.
        step: PathBuf,
        /// Its owner's user id.
        owner: u32,
    },
    /// Its group or everyone may rename entries in a parent (no sticky bit).
    OpenToOthers {
        /// The parent at fault.
        step: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// More than [`MAX_LINKS`] symbolic links on the way (a loop, likely).
    TooManyLinks,
    /// A step could not be looked at.
    Unreadable {
        /// The step.
        step: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Checks every step on the way to `dir` (which must exist) for `me`, this
/// process's effective user id. The directory itself is held to the
/// parents' rule only: the caller holds it to its own, stricter one.
///
/// # Errors
/// The first step at fault, as [`WayError`].
pub fn check(dir: &Path, me: u32) -> Result<(), WayError> {
    let unreadable = |step: &Path| {
        let step = step.to_path_buf();
        move |source| WayError::Unreadable { step, source }
    };
    let mut paths = vec![std::path::absolute(dir).map_err(unreadable(dir))?];
    let mut seen = std::collections::HashSet::new();
    let mut links = 0;
    while let Some(path) = paths.pop() {
        for step in path.ancestors() {
            if !seen.insert(step.to_path_buf()) {
                continue;
            }
            let meta = std::fs::symlink_metadata(step).map_err(unreadable(step))?;
            if meta.file_type().is_symlink() {
                judge_link(step, meta.uid(), me)?;
                links += 1;
                if links > MAX_LINKS {
                    return Err(WayError::TooManyLinks);
                }
                let target = std::fs::read_link(step).map_err(unreadable(step))?;
                let from = step.parent().unwrap_or(Path::new("/"));
                paths.push(from.join(target));
            } else {
                judge_parent(step, meta.uid(), meta.mode(), me)?;
            }
        }
    }
    Ok(())
}

/// The rule for a symbolic link on the way, and for every other step's
/// owner: `me` or root (only its owner can point a link elsewhere, or
/// change who may write in a directory).
fn judge_link(step: &Path, owner: u32, me: u32) -> Result<(), WayError> {
    if owner != me && owner != 0 {
        return Err(WayError::ForeignOwner {
            step: step.to_path_buf(),
            owner,
        });
    }
    Ok(())
}

/// The rule for a parent: owned by `me` or root, and either closed to
/// others' writes or sticky.
fn judge_parent(step: &Path, owner: u32, mode: u32, me: u32) -> Result<(), WayError> {
    judge_link(step, owner, me)?;
    if mode & OTHERS_WRITE != 0 && mode & STICKY == 0 {
        return Err(WayError::OpenToOthers {
            step: step.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: u32 = 0o040_000;

    #[test]
    fn a_parent_others_may_rename_things_in_is_refused_unless_sticky() {
        let parent = Path::new("/p");
        assert!(judge_parent(parent, 0, DIR | 0o755, 1000).is_ok());
        assert!(judge_parent(parent, 1000, DIR | 0o700, 1000).is_ok());
        assert!(judge_parent(parent, 0, DIR | 0o1777, 1000).is_ok(), "/tmp");
        for mode in [0o775, 0o757, 0o777] {
            let err = judge_parent(parent, 1000, DIR | mode, 1000).unwrap_err();
            assert!(
                matches!(err, WayError::OpenToOthers { mode: m, .. } if m == mode),
                "{mode:o}: {err:?}"
            );
        }
        assert!(matches!(
            judge_parent(parent, 1001, DIR | 0o755, 1000),
            Err(WayError::ForeignOwner { owner: 1001, .. })
        ));
    }

    #[test]
    fn a_link_is_trusted_only_from_this_user_or_root() {
        let link = Path::new("/l");
        assert!(judge_link(link, 1000, 1000).is_ok());
        assert!(judge_link(link, 0, 1000).is_ok());
        assert!(matches!(
            judge_link(link, 1001, 1000),
            Err(WayError::ForeignOwner { owner: 1001, .. })
        ));
    }

    #[test]
    fn a_chain_of_more_links_than_the_kernel_follows_ends_with_an_error() {
        let base = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(base.path()).unwrap().uid();
        let link = |i: usize| base.path().join(format!("l{i}"));
        std::fs::create_dir(base.path().join("real")).unwrap();
        std::os::unix::fs::symlink(base.path().join("real"), link(MAX_LINKS)).unwrap();
        for i in (0..MAX_LINKS).rev() {
            std::os::unix::fs::symlink(link(i + 1), link(i)).unwrap();
        }
        assert!(check(&link(1), me).is_ok(), "{MAX_LINKS} links");
        assert!(matches!(check(&link(0), me), Err(WayError::TooManyLinks)));
    }
}
