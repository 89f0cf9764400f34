//! Local path handling: absolute normalised paths, and the filespace (mount
//! point) a path belongs to, as TSM names filespaces after file systems.

use std::path::{Component, Path, PathBuf};

/// Makes `path` absolute against the working directory and removes `.` and
/// `..` lexically (without following symlinks, so a symlink named on the
/// command line is backed up as a link).
///
/// # Errors
/// When the working directory cannot be read.
pub fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    let joined = std::path::absolute(path)?;
    let mut out = PathBuf::from("/");
    for part in joined.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// The mount point containing `path`, read from `/proc/self/mountinfo`
/// (longest matching mount point); `/` when that cannot be read.
pub fn filespace_of(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let text = crate::names::encode(path.as_os_str());
    mount_points(&mounts)
        .filter(|m| within(&text, m))
        .max_by_key(String::len)
        .unwrap_or_else(|| "/".to_string())
}

/// Whether `path` is `root` or below it.
pub fn within(path: &str, root: &str) -> bool {
    root == "/"
        || path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Mount points listed in a mountinfo text (field 5, octal escapes decoded).
fn mount_points(mountinfo: &str) -> impl Iterator<Item = String> + '_ {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_octal)
}

fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    crate::names::encode_bytes(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_removes_dots_lexically() {
        assert_eq!(
            absolute(Path::new("/a/./b/../c")).unwrap(),
            Path::new("/a/c")
        );
        assert_eq!(absolute(Path::new("/..")).unwrap(), Path::new("/"));
    }

    #[test]
    fn mount_points_are_decoded() {
        let info = "22 1 0:21 / / rw - ext4 /dev/vda rw\n\
                    23 22 0:22 / /mnt/my\\040disk rw - ext4 /dev/vdb rw\n";
        let points: Vec<String> = mount_points(info).collect();
        assert_eq!(points, vec!["/", "/mnt/my disk"]);
    }

    #[test]
    fn within_respects_component_boundaries() {
        assert!(within("/home/a", "/home"));
        assert!(!within("/homework", "/home"));
        assert!(within("/anything", "/"));
    }
}
