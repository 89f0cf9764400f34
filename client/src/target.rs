//! Restore targets that can never land outside the destination: every stored
//! path is joined component by component, refusing `..`, `.` and empty parts,
//! and refusing to pass through a symbolic link (which could point anywhere).
//! Files are written to a temporary name in their directory and renamed into
//! place, so a symlink at the final name is replaced, never followed.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Joins `rel` (a `/`-separated path from the catalog) under `dest`, creating
/// missing parent directories. Returns the target path.
///
/// `dirs` remembers the directories found safe (or created) by earlier calls
/// of the same restore, which are not looked at again: files share their
/// directories, and checking each file's every ancestor cost four `lstat`
/// calls per file.
///
/// # Errors
/// A sentence naming the component at fault.
pub fn safe_target(dest: &Path, rel: &str, dirs: &mut PlacedDirs) -> Result<PathBuf, String> {
    let parts: Vec<&str> = rel.split('/').collect();
    let mut current = dest.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() || *part == "." || *part == ".." {
            return Err(format!(
                "the stored path {rel:?} has a {part:?} component, which could leave {}",
                dest.display()
            ));
        }
        current.push(part);
        if i + 1 == parts.len() {
            break;
        }
        if dirs.checked.contains(&current) {
            continue;
        }
        match std::fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symbolic link; restoring through it could write outside {}",
                    current.display(),
                    dest.display()
                ));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "{} exists and is not a directory",
                    current.display()
                ));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::create_dir(&current)
                    .or_else(|e| {
                        if e.kind() == ErrorKind::AlreadyExists {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| format!("cannot create {}: {e}", current.display()))?;
                dirs.created.insert(current.clone());
            }
            Err(e) => return Err(format!("cannot inspect {}: {e}", current.display())),
        }
        dirs.checked.insert(current.clone());
    }
    Ok(current)
}

/// The directories one restore has checked or created so far.
#[derive(Debug, Default)]
pub struct PlacedDirs {
    /// Found safe to write into.
    checked: HashSet<PathBuf>,
    /// Created by this restore: nothing else is in them yet.
    created: HashSet<PathBuf>,
}

impl PlacedDirs {
    /// Records that this restore created `dir` (the destination, when it did
    /// not exist before).
    pub fn created(&mut self, dir: &Path) {
        self.checked.insert(dir.to_path_buf());
        self.created.insert(dir.to_path_buf());
    }

    /// Whether `target` lies in a directory this restore created, so that no
    /// file can be in its way and looking for one can be skipped.
    pub fn in_new_dir(&self, target: &Path) -> bool {
        target.parent().is_some_and(|p| self.created.contains(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_creates_parents() {
        let dir = tempfile::tempdir().unwrap();
        let t = safe_target(dir.path(), "a/b/c.txt", &mut PlacedDirs::default()).unwrap();
        assert_eq!(t, dir.path().join("a/b/c.txt"));
        assert!(dir.path().join("a/b").is_dir());
    }

    #[test]
    fn refuses_dot_dot_and_empty_components() {
        let dir = tempfile::tempdir().unwrap();
        for rel in ["../x", "a/../../x", "a//b", "./a", ""] {
            let err = safe_target(dir.path(), rel, &mut PlacedDirs::default()).unwrap_err();
            assert!(err.contains("component"), "{rel}: {err}");
        }
    }

    #[test]
    fn refuses_to_pass_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("a")).unwrap();
        let err = safe_target(dir.path(), "a/evil", &mut PlacedDirs::default()).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn checked_directories_are_reused_and_bad_names_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut dirs = PlacedDirs::default();
        std::fs::create_dir(dir.path().join("old")).unwrap();
        let one = safe_target(dir.path(), "old/new/one.txt", &mut dirs).unwrap();
        assert!(dirs.checked.contains(&dir.path().join("old/new")));
        assert!(dirs.in_new_dir(&one));
        assert!(!dirs.in_new_dir(&dir.path().join("old/x")));
        let two = safe_target(dir.path(), "old/new/two.txt", &mut dirs).unwrap();
        assert_eq!(two, dir.path().join("old/new/two.txt"));
        let err = safe_target(dir.path(), "old/new/../../x", &mut dirs).unwrap_err();
        assert!(err.contains("component"), "{err}");
    }
}
