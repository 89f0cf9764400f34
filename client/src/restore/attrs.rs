//! Setting a restored object's attributes, always through a descriptor or
//! relative to its directory's descriptor without following a link.
//!
//! The order matters and is the same for every kind:
//! 1. owner (as root): changing it clears set-user-ID bits and file
//!    capabilities, so it goes first;
//! 2. an ACL the object inherited from a default ACL of its new directory,
//!    when the stored object had none, is removed;
//! 3. extended attributes other than ACLs (writing `user.*` needs write
//!    permission, which a read-only mode would take away);
//! 4. mode, with its special bits;
//! 5. ACLs: setting `system.posix_acl_access` sets the group bits of the mode
//!    to the ACL's mask, which is what they were when the object was backed
//!    up, so mode and mask end up exactly as stored;
//! 6. times, last, since every change above moves the ctime and some
//!    file systems the mtime.
//!
//! Owner, mode and times failing fails the object. An extended attribute the
//! target refuses (a file system without them, a namespace the user may not
//! write) is reported by name and the restore goes on: [`Unset`].

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use tandem_proto::pb;

/// An attribute that could not be set: what, and why.
#[derive(Debug)]
pub(super) struct Unset {
    /// E.g. `extended attribute "trusted.x"`.
    pub(super) what: String,
    /// The system's answer.
    pub(super) cause: io::Error,
}

const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// Whether this process runs as root; asked of the system once, not once
/// per restored object.
fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| rustix::process::geteuid().is_root())
}

fn xattrs(attrs: &pb::ObjectAttrs) -> &[pb::Xattr] {
    attrs.extra.as_ref().map_or(&[], |e| e.xattrs.as_slice())
}

fn has(attrs: &pb::ObjectAttrs, name: &[u8]) -> bool {
    xattrs(attrs).iter().any(|x| x.name == name)
}

/// The stored mtime as a timespec (also used as the access time).
fn stored_times(attrs: &pb::ObjectAttrs) -> Timestamps {
    let t = Timespec {
        tv_sec: attrs.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: attrs.mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn xattr_name(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn unset(name: &[u8], cause: impl Into<io::Error>) -> Unset {
    Unset {
        what: format!("extended attribute {:?}", String::from_utf8_lossy(name)),
        cause: cause.into(),
    }
}

/// A removal that found nothing to remove, or a file system without
/// extended attributes, is not a failure.
fn nothing_there(e: Errno) -> bool {
    e == Errno::NODATA || e == Errno::NOTSUP || e == Errno::OPNOTSUPP
}

/// How the object whose attributes are set is reached: never by a path
/// that could lead somewhere else.
enum Target<'a> {
    /// An open regular file or directory.
    Open(BorrowedFd<'a>),
    /// A FIFO or device, held by an `O_PATH` descriptor and changed through
    /// `/proc/self/fd/N`, which names exactly that inode.
    Node { node: OwnedFd },
    /// A symlink, held by an `O_PATH` descriptor of the link itself.
    Link {
        node: OwnedFd,
        dir: BorrowedFd<'a>,
        name: &'a OsStr,
    },
}

fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

impl Target<'_> {
    fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        let (uid, gid) = (
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        );
        match self {
            Target::Open(fd) => rustix::fs::fchown(fd, uid, gid)?,
            Target::Node { node } | Target::Link { node, .. } => {
                rustix::fs::chownat(node, "", uid, gid, AtFlags::EMPTY_PATH)?;
            }
        }
        Ok(())
    }

    fn chmod(&self, mode: u32) -> io::Result<()> {
        let mode = Mode::from_raw_mode(mode & 0o7777);
        match self {
            Target::Open(fd) => rustix::fs::fchmod(fd, mode)?,
            Target::Node { node } => rustix::fs::chmod(fd_path(node.as_fd()).as_str(), mode)?,
            Target::Link { .. } => {} // a link's mode means nothing on Linux
        }
        Ok(())
    }

    fn remove_xattr(&self, name: &CString) -> rustix::io::Result<()> {
        match self {
            Target::Open(fd) => rustix::fs::fremovexattr(fd, name.as_c_str()),
            Target::Node { node } => {
                rustix::fs::removexattr(fd_path(node.as_fd()).as_str(), name.as_c_str())
            }
            Target::Link { .. } => Ok(()), // links carry no ACLs
        }
    }

    fn set_xattr(&self, name: &CString, value: &[u8]) -> rustix::io::Result<()> {
        let flags = XattrFlags::empty();
        match self {
            Target::Open(fd) => rustix::fs::fsetxattr(fd, name.as_c_str(), value, flags),
            Target::Node { node } => rustix::fs::setxattr(
                fd_path(node.as_fd()).as_str(),
                name.as_c_str(),
                value,
                flags,
            ),
            Target::Link {
                dir, name: link, ..
            } => rustix::fs::lsetxattr(proc_path(*dir, link), name.as_c_str(), value, flags),
        }
    }

    fn set_times(&self, attrs: &pb::ObjectAttrs) -> io::Result<()> {
        let times = stored_times(attrs);
        match self {
            Target::Open(fd) => rustix::fs::futimens(fd, &times)?,
            // Through the magic link: exactly the node that was checked.
            Target::Node { node } => rustix::fs::utimensat(
                rustix::fs::CWD,
                fd_path(node.as_fd()).as_str(),
                &times,
                AtFlags::empty(),
            )?,
            // A link's times can only be set by name (no descriptor form
            // refuses to follow it); the name was checked to be a link.
            Target::Link { dir, name, .. } => {
                rustix::fs::utimensat(dir, *name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
            }
        }
        Ok(())
    }
}

fn is_acl(name: &[u8]) -> bool {
    name == ACL_ACCESS || name == ACL_DEFAULT
}

/// Sets everything in the order of the module's doc, except that ACLs come
/// after the mode and other attributes before it: writing `user.*`
/// attributes needs write permission, which a read-only mode would take
/// away, while setting an ACL only needs ownership and leaves the mode's
/// group bits at the ACL's mask, which they were when backed up.
fn apply(target: &Target<'_>, attrs: &pb::ObjectAttrs, is_dir: bool) -> io::Result<Vec<Unset>> {
    if is_root() {
        target.chown(attrs.uid, attrs.gid)?;
    }
    let mut unsets = Vec::new();
    if !matches!(target, Target::Link { .. }) {
        let mut inherited = vec![ACL_ACCESS];
        if is_dir {
            inherited.push(ACL_DEFAULT);
        }
        for name in inherited.into_iter().filter(|n| !has(attrs, n)) {
            if let Err(e) = target.remove_xattr(&xattr_name(name)?)
                && !nothing_there(e)
            {
                unsets.push(Unset {
                    what: format!(
                        "the removal of an inherited {}",
                        String::from_utf8_lossy(name)
                    ),
                    cause: e.into(),
                });
            }
        }
    }
    let (acls, others): (Vec<&pb::Xattr>, Vec<&pb::Xattr>) =
        xattrs(attrs).iter().partition(|x| is_acl(&x.name));
    for x in others {
        if let Err(e) = target.set_xattr(&xattr_name(&x.name)?, &x.value) {
            unsets.push(unset(&x.name, e));
        }
    }
    target.chmod(attrs.mode)?;
    for x in acls {
        if let Err(e) = target.set_xattr(&xattr_name(&x.name)?, &x.value) {
            unsets.push(unset(&x.name, e));
        }
    }
    target.set_times(attrs)?;
    Ok(unsets)
}

/// Applies every attribute to an open regular file or directory.
///
/// # Errors
/// Owner, mode or times could not be set.
pub(super) fn apply_to_fd(
    fd: BorrowedFd<'_>,
    attrs: &pb::ObjectAttrs,
    is_dir: bool,
) -> io::Result<Vec<Unset>> {
    apply(&Target::Open(fd), attrs, is_dir)
}

/// `/proc/self/fd/DIR/NAME`: a path for the calls that have no `*at` form
/// (`lsetxattr`). The kernel resolves the descriptor itself, not a path, so
/// only `NAME` is looked up, in the directory the restore holds.
fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> std::path::PathBuf {
    let mut p = std::path::PathBuf::from(fd_path(dir));
    p.push(name);
    p
}

/// Applies every attribute to a symlink, FIFO or device `name` in `dir`
/// that this restore just made, after checking that what is there now is
/// still of that kind (a local user who can write the directory could have
/// swapped it): it is held by an `O_PATH` descriptor from then on.
///
/// # Errors
/// Something else is there now, or owner, mode or times could not be set.
pub(super) fn apply_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    attrs: &pb::ObjectAttrs,
    expected: FileType,
) -> io::Result<Vec<Unset>> {
    let node = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let found = FileType::from_raw_mode(rustix::fs::fstat(&node)?.st_mode);
    if found != expected {
        return Err(io::Error::other(format!(
            "it was replaced by something else ({found:?}) before its attributes were set"
        )));
    }
    let target = if expected == FileType::Symlink {
        Target::Link { node, dir, name }
    } else {
        Target::Node { node }
    };
    apply(&target, attrs, false)
}

/// Whether this process may create device nodes (root, or `CAP_MKNOD`,
/// which unprivileged users lack).
pub(super) fn may_make_devices() -> bool {
    is_root()
}

/// The name bytes of a stored xattr list, for tests and messages.
#[cfg(test)]
pub(super) fn names_of(attrs: &pb::ObjectAttrs) -> Vec<&[u8]> {
    xattrs(attrs).iter().map(|x| x.name.as_slice()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_1970_keep_their_nanoseconds() {
        let attrs = pb::ObjectAttrs {
            mtime_ns: -1_500_000_000,
            ..Default::default()
        };
        let t = stored_times(&attrs).last_modification;
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 500_000_000));
    }

    #[test]
    fn a_file_gets_mode_xattrs_and_times_through_its_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        let attrs = pb::ObjectAttrs {
            mode: 0o640,
            mtime_ns: 1_234_567_891,
            extra: Some(pb::ObjectExtra {
                xattrs: vec![pb::Xattr {
                    name: b"user.k".to_vec(),
                    value: b"v".to_vec(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(names_of(&attrs), [b"user.k"]);
        let unsets = apply_to_fd(file.as_fd(), &attrs, false).unwrap();
        let meta = std::fs::metadata(dir.path().join("f")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1, 234_567_891));
        if unsets.is_empty() {
            let mut buf = [0u8; 8];
            let n = rustix::fs::fgetxattr(&file, "user.k", &mut buf[..]).unwrap();
            assert_eq!(&buf[..n], b"v");
        } else {
            // A file system without user attributes: reported, not silent.
            assert!(unsets[0].what.contains("user.k"));
        }
    }
}
