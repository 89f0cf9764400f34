//! Walking a tree for a backup by directory descriptors.
//!
//! Each directory is opened relative to its parent's descriptor
//! (`openat(O_NOFOLLOW)`), and each entry is looked at, read and listed
//! relative to its directory's descriptor. So a path of any length is backed
//! up (the kernel refuses whole paths longer than `PATH_MAX`, 4096 bytes,
//! which is how a walk by paths lost deep trees), the kernel resolves one
//! component per call instead of the whole path, and no symlink is ever
//! followed. Entries come in the order a walk by sorted names gives: a
//! directory, then its contents by name (bytes), depth first.
//!
//! A walk holds one descriptor per directory level it is inside.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags, Stat};

use crate::backup::rules::Rules;

/// One walked object.
#[derive(Debug)]
pub struct Entry {
    /// Its full path (may exceed `PATH_MAX`; never passed to the kernel whole).
    pub path: PathBuf,
    /// Its directory.
    pub dir: Arc<OwnedFd>,
    /// Its name in `dir` (`.` for a walk's root without a parent, `/`).
    pub name: OsString,
    /// Its `lstat`.
    pub stat: Stat,
    /// 0 for the root of the walk.
    pub depth: usize,
}

impl Entry {
    /// Whether it is a directory (from its `lstat`, or the followed root).
    pub fn is_dir(&self) -> bool {
        rustix::fs::FileType::from_raw_mode(self.stat.st_mode) == rustix::fs::FileType::Directory
    }

    /// `/proc/self/fd/DIR/NAME`: a short path to this entry for the calls
    /// that have no `*at` form (`llistxattr`, `lgetxattr`); the kernel starts
    /// from the descriptor, so the whole path's length does not matter.
    pub fn proc_path(&self) -> PathBuf {
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()));
        p.push(&self.name);
        p
    }

    /// Opens this entry for reading without following a link, without
    /// making a terminal the controlling one, and without blocking on a FIFO
    /// that replaced a file since the walk looked.
    ///
    /// # Errors
    /// The system's answer.
    pub fn open(&self) -> io::Result<std::fs::File> {
        let fd = rustix::fs::openat(
            self.dir.as_fd(),
            &self.name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(std::fs::File::from(fd))
    }

    /// The target of this entry, a symlink.
    ///
    /// # Errors
    /// The system's answer.
    pub fn read_link(&self) -> io::Result<Vec<u8>> {
        Ok(rustix::fs::readlinkat(self.dir.as_fd(), &self.name, Vec::new())?.into_bytes())
    }
}

/// A problem met by the walk: a root that cannot be looked at, or a
/// directory that cannot be listed (its own entry has been returned).
#[derive(Debug)]
pub struct WalkError {
    /// The object.
    pub path: PathBuf,
    /// Its depth (0: the root).
    pub depth: usize,
    /// The system's answer.
    pub error: io::Error,
}

/// A directory being walked: its descriptor and its names not yet
/// returned, last first.
#[derive(Debug)]
struct Level {
    dir: Arc<OwnedFd>,
    path: PathBuf,
    pending: Vec<OsString>,
    depth: usize,
}

/// A walk of one tree.
#[derive(Debug)]
pub struct Walk {
    rules: Rules,
    root: Option<PathBuf>,
    stack: Vec<Level>,
    /// A directory that could not be listed, reported after its entry.
    failed: Option<WalkError>,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// The names in a directory, sorted by their bytes, without `.` and `..`,
/// read straight from the walk's own descriptor (no second descriptor, no
/// seek: a fresh one is at the start).
fn sorted_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 32 * 1024];
    let mut entries = rustix::fs::RawDir::new(dir, &mut buf);
    let mut names = Vec::new();
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

impl Walk {
    /// A walk of `root` (absolute; named on the command line, so short),
    /// leaving out every path `rules` exclude, with everything below it.
    pub fn new(root: &Path, rules: Rules) -> Self {
        Walk {
            rules,
            root: Some(root.to_path_buf()),
            stack: Vec::new(),
            failed: None,
        }
    }

    /// Whether `entry` is a directory an `exclude_dir` rule leaves out.
    fn excluded_dir(&self, entry: &Entry) -> bool {
        self.rules.has_exclude_dir() && entry.is_dir() && self.rules.excluded_dir(&entry.path)
    }

    /// Does not descend into `entry` (just returned) after all.
    pub fn skip_entered(&mut self, entry: &Entry) {
        if self
            .stack
            .last()
            .is_some_and(|level| level.path == entry.path)
        {
            self.stack.pop();
        }
        if self.failed.as_ref().is_some_and(|f| f.path == entry.path) {
            self.failed = None;
        }
    }

    /// The root's entry: its parent directory and its name there. A root
    /// that is a symlink to a directory is followed (it was named on the
    /// command line, as walks by path always did): the entry is then the
    /// directory itself, as `.` in it.
    fn root_entry(&mut self, root: PathBuf) -> Result<Entry, WalkError> {
        let fail = |error: io::Error| WalkError {
            path: root.clone(),
            depth: 0,
            error,
        };
        let (parent, name) = match (root.parent(), root.file_name()) {
            (Some(parent), Some(name)) => (parent.to_path_buf(), name.to_os_string()),
            _ => (root.clone(), OsString::from(".")),
        };
        let path_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut dir = rustix::fs::openat(rustix::fs::CWD, &parent, path_flags, Mode::empty())
            .map_err(|e| fail(e.into()))?;
        let mut stat = rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fail(e.into()))?;
        let mut name = name;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Symlink
            && let Ok(target) = rustix::fs::openat(&dir, &name, path_flags, Mode::empty())
        {
            stat = rustix::fs::fstat(&target).map_err(|e| fail(e.into()))?;
            dir = target;
            name = OsString::from(".");
        }
        Ok(Entry {
            path: root.clone(),
            dir: Arc::new(dir),
            name,
            stat,
            depth: 0,
        })
    }

    /// Descends into `entry` if it is a directory; an error if it cannot be
    /// listed.
    fn enter(&mut self, entry: &Entry) -> Result<(), WalkError> {
        if rustix::fs::FileType::from_raw_mode(entry.stat.st_mode)
            != rustix::fs::FileType::Directory
        {
            return Ok(());
        }
        let opened = rustix::fs::openat(entry.dir.as_fd(), &entry.name, dir_flags(), Mode::empty())
            .map_err(io::Error::from)
            .and_then(|fd| {
                let mut names = sorted_names(fd.as_fd())?;
                names.reverse();
                Ok((fd, names))
            });
        match opened {
            Ok((fd, pending)) => {
                self.stack.push(Level {
                    dir: Arc::new(fd),
                    path: entry.path.clone(),
                    pending,
                    depth: entry.depth + 1,
                });
                Ok(())
            }
            Err(error) => Err(WalkError {
                path: entry.path.clone(),
                depth: entry.depth,
                error,
            }),
        }
    }
}

impl Iterator for Walk {
    type Item = Result<Entry, WalkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(failed) = self.failed.take() {
            return Some(Err(failed));
        }
        let entry = if let Some(root) = self.root.take() {
            match self.root_entry(root) {
                Ok(e) if !self.rules.decide_in_tree(&e.path, e.is_dir()).is_included() => {
                    return None;
                }
                Ok(e) => e,
                Err(e) => return Some(Err(e)),
            }
        } else {
            loop {
                let level = self.stack.last_mut()?;
                let Some(name) = level.pending.pop() else {
                    self.stack.pop();
                    continue;
                };
                let path = level.path.join(&name);
                if self.rules.excluded_by_name(&path) {
                    continue;
                }
                let (dir, depth) = (level.dir.clone(), level.depth);
                match rustix::fs::statat(dir.as_fd(), &name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => {
                        let entry = Entry {
                            path,
                            dir,
                            name,
                            stat,
                            depth,
                        };
                        if self.excluded_dir(&entry) {
                            continue;
                        }
                        break entry;
                    }
                    // Gone since the directory was listed: nothing to back up.
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => {
                        return Some(Err(WalkError {
                            path,
                            depth,
                            error: e.into(),
                        }));
                    }
                }
            }
        };
        // A directory that cannot be listed is reported after its own entry,
        // which is still backed up.
        if let Err(e) = self.enter(&entry) {
            self.failed = Some(e);
        }
        Some(Ok(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walked(root: &Path, rules: Rules) -> Vec<String> {
        Walk::new(root, rules)
            .map(|e| match e {
                Ok(e) => e
                    .path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                Err(e) => format!("error {}", e.path.display()),
            })
            .collect()
    }

    #[test]
    fn walks_depth_first_in_name_order_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for p in ["b/z", "b/a", "a", "c/d/e"] {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        std::os::unix::fs::symlink(root.join("c"), root.join("link")).unwrap();
        assert_eq!(
            walked(root, Rules::default()),
            ["", "a", "b", "b/a", "b/z", "c", "c/d", "c/d/e", "link"]
        );
        let excludes = Rules::new(&[], &[], &["**/c".to_string()]).unwrap();
        assert_eq!(walked(root, excludes), ["", "a", "b", "b/a", "b/z", "link"]);
        // exclude_dir takes the directory b but not the file a; c/d is
        // excluded by name, and include does not reach below it.
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        let rules = Rules::new(
            &strings(&["**/b", "**/a"]),
            &strings(&["**/c/d/e"]),
            &strings(&["**/c/**"]),
        )
        .unwrap();
        assert_eq!(walked(root, rules), ["", "a", "c", "link"]);
    }

    #[test]
    fn paths_longer_than_path_max_are_walked_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let long = "d".repeat(250);
        let mut fd = rustix::fs::openat(
            rustix::fs::CWD,
            dir.path(),
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        for _ in 0..20 {
            rustix::fs::mkdirat(&fd, long.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            fd = rustix::fs::openat(
                &fd,
                long.as_str(),
                OFlags::PATH | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .unwrap();
        }
        let file = rustix::fs::openat(
            &fd,
            "deep.txt",
            OFlags::WRONLY | OFlags::CREATE,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&file, b"deep").unwrap();
        let deepest = Walk::new(dir.path(), Rules::default())
            .map(Result::unwrap)
            .last()
            .unwrap();
        assert!(deepest.path.as_os_str().len() > 5000);
        assert_eq!(deepest.name, "deep.txt");
        let mut data = String::new();
        std::io::Read::read_to_string(&mut deepest.open().unwrap(), &mut data).unwrap();
        assert_eq!(data, "deep");
    }

    #[test]
    fn a_root_that_is_a_link_to_a_directory_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("real/sub")).unwrap();
        std::fs::write(dir.path().join("real/sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let root = dir.path().join("link");
        assert_eq!(walked(&root, Rules::default()), ["", "sub", "sub/f"]);
    }

    #[test]
    fn a_missing_root_is_an_error_at_depth_zero() {
        let dir = tempfile::tempdir().unwrap();
        let got: Vec<_> = Walk::new(&dir.path().join("nope"), Rules::default()).collect();
        assert_eq!(got.len(), 1);
        let err = got.into_iter().next().unwrap().unwrap_err();
        assert_eq!((err.depth, err.error.kind()), (0, io::ErrorKind::NotFound));
    }
}
