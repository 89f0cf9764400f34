//! What a backup keeps of a local object beyond `lstat`: its extended
//! attributes (POSIX ACLs are the `system.posix_acl_*` ones, file
//! capabilities `security.capability`), a device's number, and which names
//! are one file (hard links).

use std::collections::HashMap;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;

use rustix::fs::{FileType, Stat};
use rustix::io::Errno;
use tandem_proto::pb;

/// Linux's limit on the list of one inode's attribute names and on one
/// value (`XATTR_LIST_MAX`, `XATTR_SIZE_MAX`): a buffer this large never
/// comes back too small.
const XATTR_BUF: usize = 64 * 1024;

/// Reads extended attributes with one reused buffer.
#[derive(Debug)]
pub struct XattrReader {
    names: Vec<u8>,
    value: Vec<u8>,
}

impl Default for XattrReader {
    fn default() -> Self {
        XattrReader {
            names: vec![0; XATTR_BUF],
            value: vec![0; XATTR_BUF],
        }
    }
}

/// The file system does not keep extended attributes at all: nothing to
/// back up, not an error.
fn unsupported(e: Errno) -> bool {
    e == Errno::NOTSUP || e == Errno::OPNOTSUPP
}

/// Where a file's extended attributes are read from.
#[derive(Debug, Clone, Copy)]
pub enum XattrSource<'a> {
    /// By path, not following a symlink (`llistxattr`, `lgetxattr`).
    Path(&'a Path),
    /// From an open file (`flistxattr`, `fgetxattr`): no path walk, and the
    /// attributes are those of the very file whose data is read.
    File(BorrowedFd<'a>),
}

impl XattrSource<'_> {
    fn list(self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Path(path) => rustix::fs::llistxattr(path, buf),
            XattrSource::File(fd) => rustix::fs::flistxattr(fd, buf),
        }
    }

    fn get(self, name: &std::ffi::CStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Path(path) => rustix::fs::lgetxattr(path, name, buf),
            XattrSource::File(fd) => rustix::fs::fgetxattr(fd, name, buf),
        }
    }
}

impl XattrReader {
    /// The attributes of `path` (not following a symlink), ordered by name.
    /// An attribute removed between listing and reading is left out.
    ///
    /// # Errors
    /// The list or a value cannot be read (permissions, I/O).
    pub fn read(&mut self, path: &Path) -> io::Result<Vec<pb::Xattr>> {
        self.read_from(XattrSource::Path(path))
    }

    /// The attributes of `source`, ordered by name; as [`XattrReader::read`].
    ///
    /// # Errors
    /// The list or a value cannot be read (permissions, I/O).
    pub fn read_from(&mut self, source: XattrSource<'_>) -> io::Result<Vec<pb::Xattr>> {
        let listed = match source.list(&mut self.names[..]) {
            Ok(n) => n,
            Err(e) if unsupported(e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if listed == 0 {
            return Ok(Vec::new());
        }
        let mut names: Vec<Vec<u8>> = self.names[..listed]
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let c_name = std::ffi::CString::new(name.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            match source.get(c_name.as_c_str(), &mut self.value[..]) {
                Ok(n) => out.push(pb::Xattr {
                    name,
                    value: self.value[..n].to_vec(),
                }),
                Err(e) if e == Errno::NODATA => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }
}

/// The fields of an `lstat` or `fstat` a backup uses, in the same types on
/// every architecture (the kernel's `stat` differs between them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lstat {
    /// File type.
    pub file_type: FileType,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Length in bytes.
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Device number of a device file.
    pub rdev: u64,
    /// Device holding it.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Names it has.
    pub nlink: u64,
}

impl From<&Stat> for Lstat {
    // The casts widen or keep each field; their source types differ by
    // architecture, so on some of them a cast is to the same type.
    #[allow(clippy::unnecessary_cast)]
    fn from(st: &Stat) -> Self {
        let ns = |secs: i64, nanos: i64| secs.saturating_mul(1_000_000_000).saturating_add(nanos);
        Lstat {
            file_type: FileType::from_raw_mode(st.st_mode as u32),
            mode: st.st_mode as u32 & 0o7777,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            size: st.st_size.max(0) as u64,
            blocks: st.st_blocks as u64,
            mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
            rdev: st.st_rdev as u64,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            nlink: st.st_nlink as u64,
        }
    }
}

impl Lstat {
    /// Of an open file.
    ///
    /// # Errors
    /// The system's answer.
    pub fn of_file(file: &std::fs::File) -> io::Result<Self> {
        Ok(Lstat::from(&rustix::fs::fstat(file)?))
    }

    /// Whether the file has fewer blocks than its length needs: it may
    /// have holes.
    pub fn may_have_holes(&self) -> bool {
        self.blocks.saturating_mul(512) < self.size
    }
}

/// The kind of a local object from its file type; `None` for a socket,
/// which cannot be recreated with its meaning (a socket belongs to the
/// process that listens on it).
pub fn kind_of(file_type: FileType) -> Option<pb::ObjectKind> {
    Some(match file_type {
        FileType::RegularFile => pb::ObjectKind::File,
        FileType::Directory => pb::ObjectKind::Directory,
        FileType::Symlink => pb::ObjectKind::Symlink,
        FileType::Fifo => pb::ObjectKind::Fifo,
        FileType::CharacterDevice => pb::ObjectKind::CharDevice,
        FileType::BlockDevice => pb::ObjectKind::BlockDevice,
        _ => return None,
    })
}

/// A stable number for one inode of one backup: equal for the names of one
/// file, never 0 (0 means "not hard-linked").
pub fn hard_link_group(dev: u64, ino: u64) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&dev.to_le_bytes());
    bytes[8..].copy_from_slice(&ino.to_le_bytes());
    let hash = blake3::hash(&bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first).max(1)
}

/// What the scanner learned of a file with several names the first time it
/// read it, so the other names are stored without reading it again.
#[derive(Debug, Clone)]
pub struct SeenInode {
    /// Size and mtime when it was read: a name seen later with others is
    /// read again.
    pub size: u64,
    /// Modification time, ns.
    pub mtime_ns: i64,
    /// Its content's chunks.
    pub chunks: Vec<tandem_proto::ChunkId>,
    /// It had holes.
    pub sparse: bool,
}

/// Files with several names already read in this backup, by (device, inode).
/// Bounded: past [`SeenInodes::MAX`] entries later names are read again,
/// which costs time but never correctness.
#[derive(Debug, Default)]
pub struct SeenInodes {
    by_inode: HashMap<(u64, u64), SeenInode>,
}

impl SeenInodes {
    /// Entries kept at most (~100 bytes each plus 32 per chunk).
    pub const MAX: usize = 1_000_000;

    /// What was read of this inode, if it still has that size and mtime.
    pub fn get(&self, dev: u64, ino: u64, size: u64, mtime_ns: i64) -> Option<&SeenInode> {
        self.by_inode
            .get(&(dev, ino))
            .filter(|s| s.size == size && s.mtime_ns == mtime_ns)
    }

    /// Remembers a read inode.
    pub fn insert(&mut self, dev: u64, ino: u64, seen: SeenInode) {
        if self.by_inode.len() < Self::MAX {
            self.by_inode.insert((dev, ino), seen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_attributes_are_read_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let set = |name: &str, value: &[u8]| {
            rustix::fs::lsetxattr(&file, name, value, rustix::fs::XattrFlags::empty())
        };
        if set("user.b", b"2").is_err() {
            eprintln!("this file system keeps no user attributes; skipped");
            return;
        }
        set("user.a", b"").unwrap();
        set("user.c", &[0, 255, 1]).unwrap();
        let got = XattrReader::default().read(&file).unwrap();
        let got: Vec<(&[u8], &[u8])> = got
            .iter()
            .filter(|x| x.name.starts_with(b"user."))
            .map(|x| (x.name.as_slice(), x.value.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                (&b"user.a"[..], &b""[..]),
                (b"user.b", b"2"),
                (b"user.c", &[0, 255, 1])
            ]
        );
    }

    #[test]
    fn groups_differ_by_inode_and_are_never_zero() {
        assert_eq!(hard_link_group(1, 2), hard_link_group(1, 2));
        assert_ne!(hard_link_group(1, 2), hard_link_group(1, 3));
        assert_ne!(hard_link_group(1, 2), hard_link_group(2, 2));
        assert_ne!(hard_link_group(0, 0), 0);
    }
}
