//! Atomic file replacement: write a temporary file in the same directory,
//! fsync it, rename it over the target, fsync the directory. Readers see the
//! old content or the new, never a mix. And the matching read of such a
//! small private file, bounded and never through a symlink.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Reads the whole of `path`, a small file of our own (a key, a state
/// record), refusing a symlink (`ELOOP`) and anything longer than
/// `max_bytes` (`InvalidData`, naming the limit): a directory another
/// machine or user can write must not make us read `/dev/zero` or a
/// file elsewhere.
///
/// # Errors
/// I/O errors, a symlink, or a file over the limit.
pub fn read_small(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "it is not a regular file",
        ));
    }
    let too_long = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it is longer than the {max_bytes} bytes such a file may have"),
        )
    };
    if meta.len() > max_bytes {
        return Err(too_long());
    }
    // Sized once (it may be large), and still bounded if it grows meanwhile.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_long());
    }
    Ok(bytes)
}

/// The directory `path` is in ("." for a bare name).
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `data` in a new temporary file in `dir`, not yet synced.
fn staged(dir: &Path, data: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tandem-")
        .tempfile_in(dir)?;
    tmp.write_all(data)?;
    Ok(tmp)
}

/// Syncs `tmp`, renames it to `path` in `dir` and syncs `dir`.
fn put_in_place(tmp: tempfile::NamedTempFile, path: &Path, dir: &Path) -> std::io::Result<()> {
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Replaces `path` with `data`, optionally with permission bits `mode`.
///
/// # Errors
/// I/O errors; the target is unchanged when one occurs.
pub fn replace(path: &Path, data: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let dir = parent_of(path);
    let tmp = staged(dir, data)?;
    if let Some(mode) = mode {
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    put_in_place(tmp, path, dir)
}

/// Replaces the file `path` names (through symbolic links, which stay) with
/// `data`, keeping its permission bits, and its owner and group as far as
/// this user may give them (root always; another user its own groups): for
/// a file the user keeps, such as an options file another account (a
/// database's, in the group) must still read after the rewrite. Where they
/// cannot be kept the new file is this user's, as any rewrite's would be.
///
/// # Errors
/// I/O errors; the file is unchanged when one occurs.
pub fn rewrite_keeping_owner(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::canonicalize(path)?;
    let old = std::fs::metadata(&target)?;
    let dir = parent_of(&target);
    let tmp = staged(dir, data)?;
    let new = tmp.as_file().metadata()?;
    let uid = (new.uid() != old.uid()).then_some(old.uid());
    let gid = (new.gid() != old.gid()).then_some(old.gid());
    if uid.is_some() || gid.is_some() {
        let refused = |e: &std::io::Error| e.raw_os_error() == Some(libc::EPERM);
        match std::os::unix::fs::fchown(tmp.as_file(), uid, gid) {
            Ok(()) => {}
            // Not root: the group alone, if it is one of this user's.
            Err(e) if refused(&e) && gid.is_some() => {
                match std::os::unix::fs::fchown(tmp.as_file(), None, gid) {
                    Err(e) if !refused(&e) => return Err(e),
                    _ => {}
                }
            }
            Err(e) if refused(&e) => {}
            Err(e) => return Err(e),
        }
    }
    // After the owner: a change of owner clears set-ID bits.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o7777))?;
    put_in_place(tmp, &target, dir)
}

/// [`read_small`] of a text file (UTF-8).
///
/// # Errors
/// As [`read_small`], and text that is not UTF-8 (`InvalidData`).
pub fn read_small_text(path: &Path, max_bytes: u64) -> std::io::Result<String> {
    String::from_utf8(read_small(path, max_bytes)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Removes `path`; one that is not there is not an error (a record
/// forgotten twice, or never written).
///
/// # Errors
/// Any other failure to remove it.
pub fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_read_refuses_links_and_long_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        replace(&file, b"secret", Some(0o600)).unwrap();
        assert_eq!(read_small(&file, 6).unwrap(), b"secret");
        let long = read_small(&file, 5).unwrap_err();
        assert_eq!(long.kind(), std::io::ErrorKind::InvalidData);
        assert!(long.to_string().contains("5 bytes"), "{long}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = read_small(&link, 100).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_small(&zero, 100).is_err());
        let device = read_small(Path::new("/dev/zero"), 100).unwrap_err();
        assert!(
            device.to_string().contains("not a regular file"),
            "{device}"
        );
    }

    #[test]
    fn a_rewrite_keeps_the_link_the_mode_and_the_group() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("real.toml");
        replace(&file, b"old\n", Some(0o640)).unwrap();
        // A group other than this process's, where it may give one (root).
        // Another owner and group, where this process may give them (root).
        let mine = std::fs::metadata(&file).unwrap();
        let (owner, group) = if mine.uid() == 0 {
            (12345, 12346)
        } else {
            (mine.uid(), mine.gid())
        };
        std::os::unix::fs::chown(&file, Some(owner), Some(group)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("tandem.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();

        rewrite_keeping_owner(&link, b"new\n").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"new\n");
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!(meta.gid(), group);
        assert_eq!(meta.uid(), owner);
        let strays: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(strays.len(), 2, "no temporary file is left: {strays:?}");
    }
}
