//! The restore destination as a tree of directory descriptors, so nothing a
//! restore does can land outside it.
//!
//! Every stored path is split into components, refusing empty, `.` and `..`
//! ones. Directories are opened one component at a time from DEST's own
//! descriptor with `O_NOFOLLOW`, and every later step (creating, renaming,
//! linking, setting attributes) is relative to the descriptor of the
//! directory it acts in. A symbolic link found where a directory goes is
//! never followed: it is refused, or with `--replace yes|all` removed and
//! replaced by the directory. A local user who swaps a checked directory for
//! a link after the check changes nothing either: the descriptor still
//! names the directory that was opened.
//!
//! Descriptors are `O_PATH` (no read permission needed, nothing to close
//! but the number) and only the [`CACHED_DIRS`] most recently used are kept
//! open, none of them after [`CACHED_DIRS`] more directories were opened
//! ([`DirCache`]): a restore holds a few whatever its size (it runs under
//! `ulimit -n 128`), and a directory opened again is walked again, with the
//! same checks.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::dircache::DirCache;
use crate::names;

/// Directory descriptors kept open at most.
pub(super) const CACHED_DIRS: usize = 32;

/// Where one object goes: the directory (components below DEST joined with
/// `/`, empty for DEST itself) and its name there.
#[derive(Debug, Clone)]
pub(super) struct Placed {
    /// The directory's path below DEST, as bytes; shared by the objects
    /// placed one after another in one directory.
    pub(super) parent: Arc<[u8]>,
    /// The object's name in it.
    pub(super) name: OsString,
}

/// The directory the last object was placed in: its stored path relative
/// to SOURCE's directory, and that path as [`Placed::parent`] holds it.
#[derive(Debug)]
struct LastParent {
    stored: String,
    joined: Arc<[u8]>,
}

/// The destination of one restore.
#[derive(Debug)]
pub(super) struct DestTree {
    root: OwnedFd,
    shown: PathBuf,
    /// A symbolic link where a directory goes is removed (`--replace yes|all`).
    replace_links: bool,
    cache: Mutex<DirCache>,
    created: Mutex<HashSet<Vec<u8>>>,
    /// The directory of the last object placed: objects come grouped by
    /// directory, so the files of one directory share one copy of its name
    /// (a copy per file was 7 MiB of a restore of 80,000 small files), and
    /// its stored path is checked, decoded and walked once, not per file
    /// (a third of the time before the first file was fetched).
    last_parent: Mutex<Option<LastParent>>,
    /// DEST opened for `syncfs` when the restore starts (`None` when it
    /// cannot be read; each sync then opens it). Since Linux 5.8 `syncfs`
    /// reports the write-back errors met after its descriptor was opened,
    /// so one opened before anything is written misses none of them.
    sync_fd: Option<OwnedFd>,
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Splits a stored path relative to SOURCE's directory (encoded, `/`
/// separated) into the names it stands for.
///
/// # Errors
/// A sentence naming the component that could lead outside DEST.
pub(super) fn components(rel: &str, dest: &Path) -> Result<Vec<OsString>, String> {
    check_length(rel)?;
    rel.split('/')
        .map(|part| component(rel, part, dest))
        .collect()
}

/// No server stores a longer path; a listing that has one is not to be
/// walked (each of its many components costs a look-up of its prefix).
fn check_length(rel: &str) -> Result<(), String> {
    if rel.len() > tandem_proto::MAX_PATH_BYTES {
        return Err(format!(
            "a stored path of {} bytes is longer than the {} a stored path may have; it is not restored",
            rel.len(),
            tandem_proto::MAX_PATH_BYTES
        ));
    }
    Ok(())
}

/// One component `part` of the stored path `rel`, decoded, or why it could
/// lead outside DEST.
fn component(rel: &str, part: &str, dest: &Path) -> Result<OsString, String> {
    names::check_component(part)
        .map(OsString::from_vec)
        .map_err(|why| {
            format!(
                "the stored path {} {why} ({}), which could lead outside {}",
                names::display(rel),
                names::display(part),
                dest.display()
            )
        })
}

impl DestTree {
    /// Opens DEST. A DEST the user named is opened as given (a symlink there
    /// is their choice); an in-place restore (`follow_dest` false) goes to its
    /// directory by [`resolve_in_place`]. Missing directories on the way are
    /// created; nothing above DEST is ever removed or replaced.
    ///
    /// # Errors
    /// DEST cannot be opened or created, or (in place) a link is on the way.
    pub(super) fn open(dest: &Path, follow_dest: bool, replace_links: bool) -> io::Result<Self> {
        let (root, created) = if follow_dest {
            let existed = dest.symlink_metadata().is_ok();
            if let Ok(meta) = dest.metadata()
                && !meta.is_dir()
            {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "destination {} exists and is not a directory; name a directory (it is created when missing)",
                        dest.display()
                    ),
                ));
            }
            let (fd, made) = open_named(dest)?;
            (fd, made && !existed)
        } else {
            resolve_in_place(dest)?
        };
        let mut tree = DestTree::new(root, dest.to_path_buf(), replace_links);
        tree.sync_fd = tree.open_for_sync().ok();
        if created {
            tree.mark_created(&[]);
        }
        Ok(tree)
    }

    fn new(root: OwnedFd, shown: PathBuf, replace_links: bool) -> Self {
        DestTree {
            root,
            shown,
            replace_links,
            cache: Mutex::new(DirCache::new(CACHED_DIRS, CACHED_DIRS as u64)),
            created: Mutex::new(HashSet::new()),
            last_parent: Mutex::new(None),
            sync_fd: None,
        }
    }

    fn was_created(&self, joined: &[u8]) -> bool {
        self.created
            .lock()
            .map(|c| c.contains(joined))
            .unwrap_or(false)
    }

    /// `DEST/parent/name`, for messages (encoded, so any name shows safely).
    pub(super) fn shown(&self, placed: &Placed) -> String {
        let mut path = self.shown.clone();
        if !placed.parent.is_empty() {
            path.push(OsStr::from_bytes(&placed.parent));
        }
        path.push(&placed.name);
        names::encode(path.as_os_str())
    }

    /// DEST itself, shown for messages.
    pub(super) fn shown_dest(&self) -> String {
        self.shown_dir(&[])
    }

    /// A directory below DEST shown for messages.
    fn shown_dir(&self, parts: &[OsString]) -> String {
        let mut path = self.shown.clone();
        for p in parts {
            path.push(p);
        }
        names::encode(path.as_os_str())
    }

    fn mark_created(&self, parts: &[OsString]) {
        if let Ok(mut created) = self.created.lock() {
            created.insert(join(parts));
        }
    }

    /// Places `rel` (a stored path relative to SOURCE's directory) under
    /// DEST, creating the directories above it.
    ///
    /// # Errors
    /// A sentence naming what is in the way.
    pub(super) fn place(&self, rel: &str) -> Result<Placed, String> {
        let split = match rel.rsplit_once('/') {
            // `/x` has an empty first component, not DEST as its directory:
            // the full check below refuses it.
            Some(("", _)) => None,
            Some(split) => Some(split),
            None => Some(("", rel)),
        };
        // The same directory as the object before: it was checked and made
        // then, so only the name is new.
        if let Some((stored_parent, stored_name)) = split
            && let Some(parent) = self.same_parent_as_last(stored_parent)
        {
            check_length(rel)?;
            let name = component(rel, stored_name, &self.shown)?;
            return Ok(Placed { parent, name });
        }
        let mut parts = components(rel, &self.shown)?;
        let name = parts.pop().unwrap_or_default();
        self.walk(&parts, true)?;
        let parent: Arc<[u8]> = join(&parts).into();
        if let Some((stored_parent, _)) = split
            && let Ok(mut last) = self.last_parent.lock()
        {
            *last = Some(LastParent {
                stored: stored_parent.to_string(),
                joined: Arc::clone(&parent),
            });
        }
        Ok(Placed { parent, name })
    }

    /// The shared copy of the last object's directory when `stored_parent`
    /// is that directory.
    fn same_parent_as_last(&self, stored_parent: &str) -> Option<Arc<[u8]>> {
        let last = self.last_parent.lock().ok()?;
        let last = last.as_ref()?;
        (last.stored == stored_parent).then(|| Arc::clone(&last.joined))
    }

    /// Makes the directory `rel` itself (for a stored directory).
    ///
    /// # Errors
    /// A sentence naming what is in the way.
    pub(super) fn make_dir(&self, placed: &Placed) -> Result<(), String> {
        let mut parts = split(&placed.parent);
        parts.push(placed.name.clone());
        self.walk(&parts, true).map(drop)
    }

    /// Whether this restore created the directory `placed` itself.
    pub(super) fn made(&self, placed: &Placed) -> bool {
        let mut parts = split(&placed.parent);
        parts.push(placed.name.clone());
        self.was_created(&join(&parts))
    }

    /// Whether `placed` lies in a directory this restore created, so nothing
    /// can be in its way and looking is not needed.
    pub(super) fn in_new_dir(&self, placed: &Placed) -> bool {
        self.was_created(&placed.parent)
    }

    /// The descriptor of an existing directory below DEST (`parent` as in
    /// [`Placed`]), walked again without following links when it is no
    /// longer cached.
    ///
    /// # Errors
    /// It is gone or something else is in its place now.
    pub(super) fn dir(&self, parent: &[u8]) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = self.cache.lock().ok().and_then(|mut c| c.get(parent)) {
            return Ok(fd);
        }
        self.walk(&split(parent), false)
            .map_err(|why| io::Error::new(io::ErrorKind::NotFound, why))
    }

    /// Opens `parts` below DEST component by component, creating missing
    /// ones when `create` is set.
    fn walk(&self, parts: &[OsString], create: bool) -> Result<Arc<OwnedFd>, String> {
        let key = join(parts);
        if let Some(fd) = self.cache.lock().ok().and_then(|mut c| c.get(&key)) {
            return Ok(fd);
        }
        // Start below the deepest cached ancestor, or at DEST. Every cached
        // ancestor is marked as used, not only the deepest: a restore goes
        // depth first, and an ancestor left unmarked while a subtree below
        // it was restored would be dropped before the walks to its other
        // children need it.
        let cached = self.cache.lock().ok().and_then(|mut cache| {
            (1..parts.len())
                .filter_map(|depth| cache.get(&join(&parts[..depth])).map(|fd| (depth, fd)))
                .last()
        });
        let (depth, mut fd) = match cached {
            Some(found) => found,
            None => (
                0,
                Arc::new(
                    rustix::io::fcntl_dupfd_cloexec(self.root.as_fd(), 0)
                        .map_err(|e| format!("cannot open {}: {e}", self.shown.display()))?,
                ),
            ),
        };
        for i in depth..parts.len() {
            let name = &parts[i];
            let next = match open_dir_at(fd.as_fd(), name) {
                Ok(next) => next,
                Err(e) => self.make_way(fd.as_fd(), name, e, create, &parts[..=i])?,
            };
            fd = Arc::new(next);
            if let Ok(mut cache) = self.cache.lock() {
                cache.insert(join(&parts[..=i]), fd.clone());
            }
        }
        Ok(fd)
    }

    /// A directory could not be opened: create it when it is missing, replace
    /// a symlink in its place when allowed, and refuse anything else.
    fn make_way(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        error: Errno,
        create: bool,
        parts: &[OsString],
    ) -> Result<OwnedFd, String> {
        let shown = || self.shown_dir(parts);
        let cannot =
            |what: &str, e: Errno| format!("cannot {what} {}: {e}", names::display(&shown()));
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) if create => {}
            Err(Errno::NOENT) => return Err(cannot("open", Errno::NOENT)),
            Err(e) => return Err(cannot("inspect", e)),
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => return Err(cannot("open", error)),
                FileType::Symlink if self.replace_links && create => {
                    rustix::fs::unlinkat(dir, name, AtFlags::empty())
                        .map_err(|e| cannot("remove the symbolic link", e))?;
                }
                FileType::Symlink => {
                    return Err(format!(
                        "{} is a symbolic link where a directory goes; it is not followed \
                         (use --replace yes to replace it)",
                        names::display(&shown())
                    ));
                }
                _ => {
                    return Err(format!(
                        "{} exists and is not a directory",
                        names::display(&shown())
                    ));
                }
            },
        }
        let made = match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o777)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(cannot("create", e)),
        };
        #[cfg(test)]
        tests::after_mkdir(
            &self
                .shown
                .iter()
                .chain(parts.iter().map(OsString::as_os_str))
                .collect::<PathBuf>(),
        );
        let fd = open_dir_at(dir, name).map_err(|e| cannot("open", e))?;
        // Counted as new (nothing in it checked) only if it is ours: not
        // a directory another user swapped in after it was made.
        if made && is_own(&fd).map_err(|e| cannot("inspect", e))? {
            self.mark_created(parts);
        }
        Ok(fd)
    }

    /// Makes everything written under DEST durable (`syncfs`).
    ///
    /// # Errors
    /// The sync failed.
    pub(super) fn sync(&self) -> io::Result<()> {
        match &self.sync_fd {
            Some(fd) => rustix::fs::syncfs(fd)?,
            None => rustix::fs::syncfs(self.open_for_sync()?)?,
        }
        Ok(())
    }

    /// DEST as a descriptor `syncfs` takes (not `O_PATH`).
    fn open_for_sync(&self) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            self.root.as_fd(),
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }
}

/// Links followed at most while resolving an in-place DEST (the kernel's
/// own limit).
const MAX_LINKS: usize = 40;

/// Whether a symlink met above an in-place DEST may be followed: the link
/// and the directory holding it belong to root or to this user, and nobody
/// else may write that directory. Links the system set up (`/bin` to
/// `usr/bin`, `/home` to `var/home`) pass; a link another user could have
/// planted does not.
fn trusted_link(dir: BorrowedFd<'_>, link: &rustix::fs::Stat) -> bool {
    let me = rustix::process::geteuid().as_raw();
    let ours = |uid: u32| uid == 0 || uid == me;
    let Ok(holder) = rustix::fs::fstat(dir) else {
        return false;
    };
    ours(link.st_uid) && ours(holder.st_uid) && holder.st_mode & 0o022 == 0
}

/// Opens the directory of an in-place restore, `dest`, from `/`, one
/// component at a time. The stored path is not the user's word for where
/// writing is safe, so a symlink on the way is followed only when
/// [`trusted_link`] says so (its target resolved by the same rule) and is
/// refused otherwise; missing directories are created. Returns the
/// descriptor and whether DEST itself was created.
///
/// # Errors
/// A link that is not trusted, something that is not a directory, or the
/// system's answer.
fn resolve_in_place(dest: &Path) -> io::Result<(OwnedFd, bool)> {
    use std::path::Component;
    let refuse = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
    let slash = || {
        rustix::fs::openat(
            rustix::fs::CWD,
            "/",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let mut stack: Vec<OwnedFd> = vec![slash()?];
    let mut pending: std::collections::VecDeque<OsString> = dest
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let mut links = 0;
    let mut created = false;
    while let Some(name) = pending.pop_front() {
        match name.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                created = false;
                continue;
            }
            _ => {}
        }
        let here = stack
            .last()
            .map(AsFd::as_fd)
            .ok_or_else(|| refuse("no directory".into()))?;
        created = false;
        let next = match open_dir_at(here, &name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(here, &name, Mode::from_raw_mode(0o777)) {
                    Ok(()) => created = true,
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                open_dir_at(here, &name)?
            }
            Err(e) => {
                let st = rustix::fs::statat(here, &name, AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                    return Err(e.into());
                }
                if !trusted_link(here, &st) || links >= MAX_LINKS {
                    return Err(refuse(format!(
                        "{} lies behind the symbolic link {:?} (owner uid {}), which another user \
                         could have placed; an in-place restore does not follow it: give a \
                         destination explicitly",
                        dest.display(),
                        name,
                        st.st_uid
                    )));
                }
                links += 1;
                let target = rustix::fs::readlinkat(here, &name, Vec::new())?;
                let target = Path::new(OsStr::from_bytes(target.as_bytes()));
                if target.is_absolute() {
                    stack.truncate(1);
                }
                for part in target.components().rev() {
                    if let Component::Normal(p) = part {
                        pending.push_front(p.to_os_string());
                    } else if part == Component::ParentDir {
                        pending.push_front(OsString::from(".."));
                    }
                }
                continue;
            }
        };
        stack.push(next);
    }
    let fd = stack.pop().ok_or_else(|| refuse("no directory".into()))?;
    let created = created && is_own(&fd)?;
    Ok((fd, created))
}

/// Opens a DEST the user named, creating what is missing of it; whether
/// this call made DEST itself. The part that exists is opened as named (a
/// link the user put in the path is their choice). Each missing directory
/// is made with `mkdirat` in the one above it and opened from there without
/// following links, so a local user who swaps a directory just made for a
/// link (to `/etc`, say) makes the restore stop instead of writing there.
///
/// # Errors
/// A directory cannot be opened or made, DEST ends in `..` that does not
/// exist, or a directory made was replaced by something else meanwhile.
fn open_named(dest: &Path) -> io::Result<(OwnedFd, bool)> {
    use std::path::Component;
    let cannot_create =
        |e: io::Error| io::Error::new(e.kind(), format!("cannot create {}: {e}", dest.display()));
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    // The deepest part that exists, and what follows it (names to make,
    // and `..` steps back out of one just made), last first.
    let mut existing = dest.to_path_buf();
    let mut missing: Vec<OsString> = Vec::new();
    let root = loop {
        let at = if existing.as_os_str().is_empty() {
            Path::new(".")
        } else {
            existing.as_path()
        };
        match rustix::fs::openat(rustix::fs::CWD, at, dir_flags, Mode::empty()) {
            Ok(fd) => break fd,
            Err(Errno::NOENT) => match existing.components().next_back() {
                Some(last @ (Component::Normal(_) | Component::ParentDir | Component::CurDir)) => {
                    missing.push(last.as_os_str().to_os_string());
                    existing.pop();
                }
                _ => return Err(cannot_create(Errno::NOENT.into())),
            },
            Err(e) => return Err(cannot_create(e.into())),
        }
    };
    // The directories entered below the existing part, each made here.
    let mut stack: Vec<(OwnedFd, bool)> = vec![(root, false)];
    #[cfg(test)]
    let mut here = existing.clone();
    for name in missing.iter().rev() {
        match name.as_bytes() {
            b"." => continue,
            b".." => {
                // Only a directory made here can be left by `..` (one that
                // existed would have been opened as part of the path).
                if stack.len() < 2 {
                    return Err(cannot_create(Errno::NOENT.into()));
                }
                stack.pop();
                #[cfg(test)]
                here.pop();
                continue;
            }
            _ => {}
        }
        let (fd, _) = stack
            .last()
            .ok_or_else(|| cannot_create(Errno::NOENT.into()))?;
        let made = match rustix::fs::mkdirat(fd, name, Mode::from_raw_mode(0o777)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(cannot_create(e.into())),
        };
        #[cfg(test)]
        {
            here.push(name);
            tests::after_mkdir(&here);
        }
        let shown = Path::new(name).display();
        let next = open_dir_at(fd.as_fd(), name).map_err(|e| {
            let why = if made {
                format!(
                    "{} changed while it was being created: {shown} is not the directory just \
                     made ({e}); another user may be able to write above it. Nothing was restored",
                    dest.display()
                )
            } else {
                format!(
                    "cannot create {}: {shown} exists and is not a directory (a symbolic link \
                     to nowhere?) ({e})",
                    dest.display()
                )
            };
            io::Error::new(io::ErrorKind::AlreadyExists, why)
        })?;
        stack.push((next, made));
    }
    let (fd, made) = stack
        .pop()
        .ok_or_else(|| cannot_create(Errno::NOENT.into()))?;
    let made = made && is_own(&fd)?;
    Ok((fd, made))
}

/// Whether the directory `fd` belongs to this process's user: one this
/// restore just made does. Another user's directory swapped in for it is
/// then not taken for an empty one of ours, where nothing needs checking.
fn is_own(fd: &OwnedFd) -> rustix::io::Result<bool> {
    let st = rustix::fs::fstat(fd)?;
    Ok(st.st_uid == rustix::process::geteuid().as_raw())
}

fn join(parts: &[OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(p.as_bytes());
    }
    out
}

fn split(joined: &[u8]) -> Vec<OsString> {
    if joined.is_empty() {
        return Vec::new();
    }
    joined
        .split(|&b| b == b'/')
        .map(|p| OsString::from_vec(p.to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a test does in the middle of `open_named`.
    type RaceHook = Option<Box<dyn FnMut(&Path)>>;

    thread_local! {
        /// Runs after each directory `open_named` makes, before it is
        /// opened: the moment a local user racing the restore would strike.
        static AFTER_MKDIR: std::cell::RefCell<RaceHook> =
            const { std::cell::RefCell::new(None) };
    }

    /// Runs the hook, if a test set one, on the directory just made.
    pub(super) fn after_mkdir(made: &Path) {
        AFTER_MKDIR.with(|hook| {
            if let Some(hook) = hook.borrow_mut().as_mut() {
                hook(made);
            }
        });
    }

    /// Sets the hook for one `open_named` call's race.
    fn race(hook: impl FnMut(&Path) + 'static) {
        AFTER_MKDIR.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
    }

    #[test]
    fn a_named_destination_swapped_for_a_link_while_it_is_made_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // The last directory made (DEST itself), then one on the way to it.
        for (dest, swapped) in [("new", "new"), ("a/b/c", "a/b")] {
            let swapped = base.path().join(swapped);
            let (target, moved) = (outside.path().to_path_buf(), base.path().join("moved"));
            let victim = swapped.clone();
            race(move |made| {
                if made == victim {
                    std::fs::rename(made, &moved).unwrap();
                    std::os::unix::fs::symlink(&target, made).unwrap();
                }
            });
            let err = DestTree::open(&base.path().join(dest), true, false).unwrap_err();
            assert!(
                err.to_string()
                    .contains("changed while it was being created"),
                "{err}"
            );
            assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
            std::fs::remove_file(&swapped).unwrap();
            std::fs::remove_dir_all(base.path().join("moved")).unwrap();
        }
        race(|_| {});
        // Without a race the same names are made and DEST is new.
        let tree = DestTree::open(&base.path().join("a/b/c"), true, false).unwrap();
        assert!(tree.in_new_dir(&tree.place("f").unwrap()));
    }

    #[test]
    fn another_users_directory_swapped_in_is_not_taken_for_a_new_one() {
        if !rustix::process::geteuid().is_root() {
            return; // making a directory another user owns needs root
        }
        let base = tempfile::tempdir().unwrap();
        let moved = base.path().join("moved");
        race(move |made| {
            std::fs::rename(made, &moved).unwrap();
            std::fs::create_dir(made).unwrap();
            std::os::unix::fs::chown(made, Some(65534), Some(65534)).unwrap();
        });
        let tree = DestTree::open(&base.path().join("new"), true, false).unwrap();
        race(|_| {});
        // Opened, but what is in it is checked as in any existing directory.
        assert!(!tree.in_new_dir(&tree.place("f").unwrap()));
        // The same for a directory made below DEST.
        let moved = base.path().join("moved2");
        race(move |made| {
            if made.ends_with("sub") {
                std::fs::rename(made, &moved).unwrap();
                std::fs::create_dir(made).unwrap();
                std::os::unix::fs::chown(made, Some(65534), Some(65534)).unwrap();
            }
        });
        let placed = tree.place("sub/f");
        race(|_| {});
        assert!(!tree.in_new_dir(&placed.unwrap()));
        assert!(tree.in_new_dir(&tree.place("mine/f").unwrap()));
    }

    #[test]
    fn places_and_creates_parents() {
        let dir = tempfile::tempdir().unwrap();
        let tree = DestTree::open(dir.path(), true, false).unwrap();
        let placed = tree.place("a/b/c.txt").unwrap();
        assert_eq!(&*placed.parent, b"a/b");
        assert_eq!(placed.name, "c.txt");
        assert!(dir.path().join("a/b").is_dir());
        assert!(tree.in_new_dir(&placed));
        // Objects placed one after another in one directory share its name.
        let next = tree.place("a/b/d.txt").unwrap();
        assert!(Arc::ptr_eq(&placed.parent, &next.parent));
        // Below directories already open, and after older ones were dropped.
        for i in 0..(CACHED_DIRS * 2) {
            let placed = tree.place(&format!("a/b/d{i}/e/f")).unwrap();
            assert_eq!(&*placed.parent, format!("a/b/d{i}/e").as_bytes());
        }
        tree.make_dir(&tree.place("a/b/c/x").unwrap()).unwrap();
        assert!(dir.path().join("a/b/c/x").is_dir());
        assert!(dir.path().join("a/b/d40/e").is_dir());
        let held = tree.dir(b"a/b/d3/e").unwrap();
        rustix::fs::mkdirat(held.as_fd(), "g", Mode::from_raw_mode(0o700)).unwrap();
        assert!(dir.path().join("a/b/d3/e/g").is_dir());
    }

    #[test]
    fn refuses_dot_dot_and_empty_components() {
        let dir = tempfile::tempdir().unwrap();
        let tree = DestTree::open(dir.path(), true, true).unwrap();
        for rel in [
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "",
            "\u{10FF2E}\u{10FF2E}/x",
            "a/\u{10FF2F}etc\u{10FF2F}cron.d",
        ] {
            let err = tree.place(rel).unwrap_err();
            assert!(
                err.contains("component") || err.contains("canonical") || err.contains("longer"),
                "{rel}: {err}"
            );
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Well formed but longer than any server stores: not walked.
        let long = "a/".repeat(tandem_proto::MAX_PATH_BYTES / 2) + "a";
        let err = tree.place(&long).unwrap_err();
        assert!(err.contains("longer than the 32768"), "{}", &err[..200]);
        assert!(err.len() < 300, "the path is not repeated: {}", err.len());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_name_in_the_same_directory_as_the_last_is_still_checked() {
        let dir = tempfile::tempdir().unwrap();
        let tree = DestTree::open(dir.path(), true, true).unwrap();
        let first = tree.place("a/b/ok").unwrap();
        // The directory is reused; each name after it is checked alone.
        for name in ["..", ".", "", "\u{10FF2E}\u{10FF2E}", "x\u{10FF2F}y"] {
            let err = tree.place(&format!("a/b/{name}")).unwrap_err();
            assert!(
                err.contains("component") || err.contains("canonical"),
                "{name}: {err}"
            );
        }
        let long = format!("a/b/{}", "n".repeat(tandem_proto::MAX_PATH_BYTES));
        assert!(tree.place(&long).unwrap_err().contains("longer than"));
        let next = tree.place("a/b/ok2").unwrap();
        assert!(Arc::ptr_eq(&first.parent, &next.parent));
        assert_eq!(next.name, "ok2");
        // A directory refused once is refused for every name in it: a
        // failure is never remembered as the last directory.
        for name in ["f", "g"] {
            assert!(tree.place(&format!("a/../{name}")).is_err());
        }
        // DEST itself is a directory like any other; a path with an empty
        // first component is not in it.
        assert_eq!(&*tree.place("top").unwrap().parent, b"");
        assert_eq!(tree.place("top2").unwrap().name, "top2");
        for rel in ["/x", "/", "//x"] {
            let err = tree.place(rel).unwrap_err();
            assert!(err.contains("component"), "{rel}: {err}");
        }
        assert_eq!(tree.place("top3").unwrap().name, "top3");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only a/ was made"
        );
    }

    #[test]
    fn named_destinations_are_made_as_create_dir_all_made_them() {
        let base = tempfile::tempdir().unwrap();
        // `..` out of a directory just made, and `.` on the way.
        DestTree::open(&base.path().join("new/../x/./y"), true, false).unwrap();
        assert!(base.path().join("new").is_dir());
        assert!(base.path().join("x/y").is_dir());
        // A new DEST, then the same one again, existing.
        let new = DestTree::open(&base.path().join("rel/sub"), true, false).unwrap();
        assert!(new.in_new_dir(&new.place("f").unwrap()));
        let again = DestTree::open(&base.path().join("rel/sub"), true, false).unwrap();
        assert!(!again.in_new_dir(&again.place("f").unwrap()));
        // A link to nowhere on the way is named as such.
        std::os::unix::fs::symlink(base.path().join("nowhere"), base.path().join("dangling"))
            .unwrap();
        let err = DestTree::open(&base.path().join("dangling/sub"), true, false).unwrap_err();
        assert!(
            err.to_string().contains("exists and is not a directory"),
            "{err}"
        );
        assert!(!base.path().join("nowhere").exists());
        // A file on the way.
        std::fs::write(base.path().join("file"), b"x").unwrap();
        let err = DestTree::open(&base.path().join("file/sub"), true, false).unwrap_err();
        assert!(err.to_string().contains("cannot create"), "{err}");
    }

    #[test]
    fn refuses_to_pass_through_a_symlink_unless_replacing() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("a")).unwrap();
        let tree = DestTree::open(dir.path(), true, false).unwrap();
        let err = tree.place("a/evil").unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        let tree = DestTree::open(dir.path(), true, true).unwrap();
        tree.place("a/evil").unwrap();
        assert!(dir.path().join("a").symlink_metadata().unwrap().is_dir());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_swapped_for_a_link_after_the_check_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let tree = DestTree::open(dir.path(), true, false).unwrap();
        let placed = tree.place("sub/file").unwrap();
        let held = tree.dir(&placed.parent).unwrap();
        std::fs::rename(dir.path().join("sub"), dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();
        // The held descriptor still names the directory that was checked.
        rustix::fs::mkdirat(held.as_fd(), "x", Mode::from_raw_mode(0o700)).unwrap();
        assert!(dir.path().join("moved/x").is_dir());
        // A fresh walk refuses the link.
        tree.cache.lock().unwrap().clear();
        let err = tree.dir(&placed.parent).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn in_place_destinations_are_walked_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        // A link this user made in a directory only they can write is theirs
        // to follow; chmod the directory so others could write it, and it is not.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = DestTree::open(&dir.path().join("link/sub"), false, true).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(
            dir.path()
                .join("link")
                .symlink_metadata()
                .unwrap()
                .is_symlink()
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        DestTree::open(&dir.path().join("link/sub"), false, true).unwrap();
        assert!(outside.path().join("sub").is_dir());
        assert!(
            dir.path()
                .join("link")
                .symlink_metadata()
                .unwrap()
                .is_symlink()
        );
        let tree = DestTree::open(&dir.path().join("new/sub"), false, false).unwrap();
        assert!(dir.path().join("new/sub").is_dir());
        let placed = tree.place("f").unwrap();
        assert!(tree.in_new_dir(&placed));
    }

    #[test]
    fn non_utf8_names_are_placed_as_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let tree = DestTree::open(dir.path(), true, false).unwrap();
        let rel = format!("{}/f", names::encode_bytes(b"d\xff"));
        let placed = tree.place(&rel).unwrap();
        assert_eq!(&*placed.parent, b"d\xff");
        assert!(dir.path().join(OsStr::from_bytes(b"d\xff")).is_dir());
    }
}
