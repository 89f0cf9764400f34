//! The client's state directory (`state_dir`): made for this user alone,
//! and refused when anyone else may write in it.
//!
//! What the client keeps there decides what it trusts: its records of what
//! it wrote to the local vault (which decide what a sync may send to the
//! server), the vault revisions that detect a second installation, the node
//! replication table the failover decision reads, the scheduler's lock and
//! cache, and the staging of database copies. Someone who may write in the
//! directory could forge any of that, or put a link where a client run as
//! root then creates or chmods a file. So, as ssh does with `~/.ssh`, a
//! directory that is group- or world-writable, or belongs to another user,
//! is not used at all: the error says which and how to fix it.
//!
//! Its parents are checked too, up to `/`, and every symbolic link on the
//! way ([`tandem_os::way`]): whoever may write in a parent could rename
//! the directory away and put one of their own in its place.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use tandem_os::way::{MAX_LINKS, OTHERS_WRITE, WayError};

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// It is missing and cannot be made, or cannot be looked at.
    #[error(
        "cannot create or read the state directory {path}: {source}; set state_dir to a directory this user may create"
    )]
    Unusable {
        /// The directory, as configured.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Something other than a directory has its name.
    #[error("the state directory {path} is not a directory; set state_dir to a directory")]
    NotADirectory {
        /// The path, as configured.
        path: PathBuf,
    },
    /// Another user (not root) owns it and could forge its records.
    #[error(
        "the state directory {path} belongs to user id {owner}, not to this user (id {me}): its owner could forge the client's records. Set state_dir to a directory of this user's (run as root through sudo, use `sudo -H` so the default is root's own)"
    )]
    ForeignOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner's user id.
        owner: u32,
        /// This process's effective user id.
        me: u32,
    },
    /// Its group or everyone may create, replace and delete entries in it.
    #[error(
        "others may write in the state directory {path} (mode {mode:04o}), so they could forge the client's records; run `chmod go-w {path}`"
    )]
    OpenToOthers {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A parent, or a symbolic link on the way, belongs to another user
    /// (not root), who could put another directory in the state
    /// directory's place.
    #[error(
        "{parent}, on the way to the state directory {path}, belongs to user id {owner}, not to this user (id {me}) or root: its owner could put a directory of their own in the state directory's place. Set state_dir below directories (and links) of this user's or root's (run as root through sudo, use `sudo -H` so the default is root's own)"
    )]
    ParentForeignOwner {
        /// The state directory, as configured.
        path: PathBuf,
        /// The parent at fault.
        parent: PathBuf,
        /// Its owner's user id.
        owner: u32,
        /// This process's effective user id.
        me: u32,
    },
    /// Its group or everyone may rename entries in a parent (no sticky bit).
    #[error(
        "others may write in {parent}, a parent of the state directory {path} (mode {mode:04o}, no sticky bit), so they could put a directory of their own in its place; run `chmod go-w {parent}`, or set state_dir below directories only this user and root may write"
    )]
    ParentOpenToOthers {
        /// The state directory, as configured.
        path: PathBuf,
        /// The parent at fault.
        parent: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Makes `dir` (0700, with missing parents) if it does not exist, and
/// checks that only this user (or root) may write in it.
///
/// # Errors
/// [`StateDirError`], naming the directory and the fix.
pub fn ensure(dir: &Path) -> Result<(), StateDirError> {
    let unusable = |source| StateDirError::Unusable {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory => {
                StateDirError::NotADirectory {
                    path: dir.to_path_buf(),
                }
            }
            _ => unusable(e),
        })?;
    // A link to a directory is followed, as the options' other paths are:
    // what matters is who may write in the directory the files go into.
    let meta = std::fs::metadata(dir).map_err(unusable)?;
    let me = rustix::process::geteuid().as_raw();
    judge(dir, meta.is_dir(), meta.uid(), meta.mode(), me)?;
    tandem_os::way::check(dir, me).map_err(|e| match e {
        WayError::ForeignOwner { step, owner } => StateDirError::ParentForeignOwner {
            path: dir.to_path_buf(),
            parent: step,
            owner,
            me,
        },
        WayError::OpenToOthers { step, mode } => StateDirError::ParentOpenToOthers {
            path: dir.to_path_buf(),
            parent: step,
            mode,
        },
        WayError::TooManyLinks => unusable(std::io::Error::other(format!(
            "more than {MAX_LINKS} symbolic links on the way"
        ))),
        WayError::Unreadable { step, source } => unusable(std::io::Error::new(
            source.kind(),
            format!("{}: {source}", step.display()),
        )),
    })
}

/// The rule, apart from the file system: a directory, owned by `me` or
/// root, that neither its group nor others may write.
fn judge(dir: &Path, is_dir: bool, owner: u32, mode: u32, me: u32) -> Result<(), StateDirError> {
    let path = dir.to_path_buf();
    if !is_dir {
        return Err(StateDirError::NotADirectory { path });
    }
    if owner != me && owner != 0 {
        return Err(StateDirError::ForeignOwner { path, owner, me });
    }
    if mode & OTHERS_WRITE != 0 {
        return Err(StateDirError::OpenToOthers {
            path,
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const DIR: u32 = 0o040_000;

    #[test]
    fn only_a_directory_of_this_user_or_root_that_others_cannot_write_is_used() {
        let dir = Path::new("/s");
        assert!(judge(dir, true, 1000, DIR | 0o700, 1000).is_ok());
        assert!(judge(dir, true, 1000, DIR | 0o755, 1000).is_ok());
        assert!(judge(dir, true, 0, DIR | 0o755, 1000).is_ok(), "root's");
        assert!(matches!(
            judge(dir, true, 1001, DIR | 0o700, 1000),
            Err(StateDirError::ForeignOwner {
                owner: 1001,
                me: 1000,
                ..
            })
        ));
        for mode in [0o770, 0o707, 0o777, 0o1777, 0o720] {
            let err = judge(dir, true, 1000, DIR | mode, 1000).unwrap_err();
            assert!(
                matches!(err, StateDirError::OpenToOthers { mode: m, .. } if m == mode),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("chmod go-w /s"), "{err}");
        }
        assert!(matches!(
            judge(dir, false, 1000, 0o100_600, 1000),
            Err(StateDirError::NotADirectory { .. })
        ));
    }

    #[test]
    fn a_link_another_user_owns_is_refused_even_in_a_sticky_directory() {
        // Giving a link away takes root (as the tests run in CI and here).
        if rustix::process::geteuid().as_raw() != 0 {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let (sticky, real) = (base.path().join("sticky"), base.path().join("real"));
        std::fs::create_dir_all(real.join("state")).unwrap();
        std::fs::create_dir(&sticky).unwrap();
        std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let link = sticky.join("state");
        std::os::unix::fs::symlink(real.join("state"), &link).unwrap();
        ensure(&link).expect("root's own link");
        std::os::unix::fs::lchown(&link, Some(4242), None).unwrap();
        let err = ensure(&link).unwrap_err();
        assert!(
            matches!(&err, StateDirError::ParentForeignOwner { parent, owner: 4242, .. } if *parent == link),
            "{err}"
        );
    }

    #[test]
    fn a_link_on_the_way_leads_to_its_targets_parents_which_are_checked_too() {
        let base = tempfile::tempdir().unwrap();
        // base/open (0777) holds `hop`, a link to base/real; the state
        // directory is reached through base/entry -> base/open/hop/state.
        let (open, real) = (base.path().join("open"), base.path().join("real"));
        std::fs::create_dir_all(real.join("state")).unwrap();
        std::fs::create_dir(&open).unwrap();
        std::os::unix::fs::symlink(&real, open.join("hop")).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let entry = base.path().join("entry");
        std::os::unix::fs::symlink(open.join("hop/state"), &entry).unwrap();
        let err = ensure(&entry).unwrap_err();
        assert!(
            matches!(&err, StateDirError::ParentOpenToOthers { parent, .. } if *parent == open),
            "the link's own parent, though neither the given nor the real path's: {err}"
        );
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure(&entry).expect("every step closed");
    }

    #[test]
    fn a_state_directory_below_a_parent_others_may_write_is_refused_also_through_a_link() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure(&open.join("state")).unwrap_err();
        assert!(
            matches!(&err, StateDirError::ParentOpenToOthers { parent, .. } if *parent == open),
            "{err}"
        );
        // Reached through a link from a safe place, the real parent counts.
        let link = base.path().join("link");
        std::os::unix::fs::symlink(open.join("state"), &link).unwrap();
        let err = ensure(&link).unwrap_err();
        assert!(
            matches!(&err, StateDirError::ParentOpenToOthers { parent, .. } if parent.ends_with("open")),
            "{err}"
        );
        // Sticky, as /tmp is, it is fine.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        ensure(&open.join("state")).expect("below a sticky directory");
        ensure(&link).expect("through the link too");
    }

    #[test]
    fn a_missing_directory_is_made_for_this_user_alone() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b/state");
        ensure(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        ensure(&dir).expect("an existing one of this user's is used");
    }

    #[test]
    fn an_existing_directory_others_may_write_is_refused_and_left_as_it_is() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure(&dir).unwrap_err();
        assert!(err.to_string().contains("mode 0777"), "{err}");
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o777, "not changed behind the user's back");

        let file = base.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            ensure(&file),
            Err(StateDirError::NotADirectory { .. })
        ));
    }
}
