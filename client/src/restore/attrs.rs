//! Setting a restored object's attributes, always through a descriptor or
//! relative to its directory's descriptor without following a link.
//!
//! The order matters and is the same for every kind:
//! 1. owner (as root): changing it clears set-user-ID bits and file
//!    capabilities, so it goes first;
//! 2. an ACL the object inherited from a default ACL of its new directory,
//!    when the stored object had none, is removed;
//! 3. mode, with its special bits;
//! 4. extended attributes, ACLs among them: setting `system.posix_acl_access`
//!    sets the group bits of the mode to the ACL's mask, which is what they
//!    were when the object was backed up, so mode and mask end up exactly as
//!    stored;
//! 5. times, last, since every change above moves the ctime and some
//!    file systems the mtime.
//!
//! Owner, mode and times failing fails the object. An extended attribute the
//! target refuses (a file system without them, a namespace the user may not
//! write) is reported by name and the restore goes on: [`Unset`].

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps, XattrFlags};
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

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
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

/// Applies every attribute to an open regular file or directory.
///
/// # Errors
/// Owner, mode or times could not be set.
pub(super) fn apply_to_fd(
    fd: BorrowedFd<'_>,
    attrs: &pb::ObjectAttrs,
    is_dir: bool,
) -> io::Result<Vec<Unset>> {
    if is_root() {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(attrs.uid)),
            Some(rustix::fs::Gid::from_raw(attrs.gid)),
        )?;
    }
    let mut unsets = Vec::new();
    let mut inherited = vec![ACL_ACCESS];
    if is_dir {
        inherited.push(ACL_DEFAULT);
    }
    for name in inherited {
        if !has(attrs, name) {
            let c = xattr_name(name)?;
            if let Err(e) = rustix::fs::fremovexattr(fd, c.as_c_str())
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
    rustix::fs::fchmod(fd, Mode::from_raw_mode(attrs.mode & 0o7777))?;
    for x in xattrs(attrs) {
        let c = xattr_name(&x.name)?;
        if let Err(e) = rustix::fs::fsetxattr(fd, c.as_c_str(), &x.value, XattrFlags::empty()) {
            unsets.push(unset(&x.name, e));
        }
    }
    rustix::fs::futimens(fd, &stored_times(attrs))?;
    Ok(unsets)
}

/// `/proc/self/fd/DIR/NAME`: a path for the calls that have no `*at` form
/// (`lsetxattr`). The kernel resolves the descriptor itself, not a path, so
/// only `NAME` is looked up, in the directory the restore holds.
fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> std::path::PathBuf {
    let mut p = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(name);
    p
}

/// Applies every attribute to a symlink, FIFO or device `name` in `dir`,
/// never following a link.
///
/// # Errors
/// Owner, mode or times could not be set.
pub(super) fn apply_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    attrs: &pb::ObjectAttrs,
    is_link: bool,
) -> io::Result<Vec<Unset>> {
    if is_root() {
        rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(attrs.uid)),
            Some(rustix::fs::Gid::from_raw(attrs.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    if !is_link {
        // No fchmodat that refuses links on older kernels: open the node
        // itself (O_PATH, never following) and change it through
        // /proc/self/fd, which names exactly that inode.
        let node = rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let kind = rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&node)?.st_mode);
        if kind == rustix::fs::FileType::Symlink {
            return Err(io::Error::other("it was replaced by a symbolic link"));
        }
        let through = format!("/proc/self/fd/{}", node.as_fd().as_raw_fd());
        rustix::fs::chmod(through.as_str(), Mode::from_raw_mode(attrs.mode & 0o7777))?;
    }
    let mut unsets = Vec::new();
    let path = proc_path(dir, name);
    for x in xattrs(attrs) {
        let c = xattr_name(&x.name)?;
        if let Err(e) = rustix::fs::lsetxattr(&path, c.as_c_str(), &x.value, XattrFlags::empty()) {
            unsets.push(unset(&x.name, e));
        }
    }
    rustix::fs::utimensat(dir, name, &stored_times(attrs), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(unsets)
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
