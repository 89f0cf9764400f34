//! Test data: deterministic bytes, a small tree with every kind of entry,
//! and a comparison of two trees by content and attributes.

use std::path::{Path, PathBuf};

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a small varied tree: nested folders, an empty file, duplicate files,
/// names with spaces and non-ASCII, a symlink, a read-only file, a 3 MiB file.
pub fn make_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    };
    for i in 0..30u64 {
        w(
            &format!("docs/sub {}/file-{i}.txt", i % 3),
            format!("content of file {i}\n")
                .repeat(1 + i as usize * 10)
                .as_bytes(),
        );
    }
    w("empty", b"");
    w("dup/a.bin", &random_bytes(7, 300_000));
    w("dup/b.bin", &random_bytes(7, 300_000));
    w("Grüße/naïve résumé.txt", "unicode\n".as_bytes());
    w("big/large.bin", &random_bytes(11, 3 * 1024 * 1024 + 17));
    w("ro.txt", b"read only\n");
    std::fs::set_permissions(root.join("ro.txt"), std::fs::Permissions::from_mode(0o444))
        .expect("chmod");
    std::os::unix::fs::symlink("docs/sub 1/file-1.txt", root.join("link")).expect("symlink");
    if nix::unistd::geteuid().is_root() {
        // Owners are restored when the client runs as root: give one file a foreign owner.
        std::os::unix::fs::lchown(root.join("ro.txt"), Some(4321), Some(4321)).expect("chown");
    }
    std::fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
}

/// Asserts two trees hold the same entries, bytes, link targets, modes and
/// file mtimes.
pub fn assert_same_tree(a: &Path, b: &Path) {
    use std::os::unix::fs::MetadataExt;
    let list = |root: &Path| {
        let mut v: Vec<PathBuf> = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).expect("read_dir") {
                let p = e.expect("entry").path();
                if std::fs::symlink_metadata(&p).expect("meta").is_dir() {
                    stack.push(p.clone());
                }
                v.push(p.strip_prefix(root).expect("prefix").to_path_buf());
            }
        }
        v.sort();
        v
    };
    let (left, right) = (list(a), list(b));
    assert_eq!(left, right, "the trees list different entries");
    for rel in left {
        let (x, y) = (a.join(&rel), b.join(&rel));
        let (mx, my) = (
            std::fs::symlink_metadata(&x).expect("meta"),
            std::fs::symlink_metadata(&y).expect("meta"),
        );
        assert_eq!(
            mx.file_type().is_symlink(),
            my.file_type().is_symlink(),
            "{}",
            rel.display()
        );
        if mx.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&x).ok(),
                std::fs::read_link(&y).ok(),
                "link {}",
                rel.display()
            );
            continue;
        }
        assert_eq!(mx.mode(), my.mode(), "mode of {}", rel.display());
        assert_eq!(
            (mx.uid(), mx.gid()),
            (my.uid(), my.gid()),
            "owner of {}",
            rel.display()
        );
        if mx.is_file() {
            assert!(
                std::fs::read(&x).expect("read") == std::fs::read(&y).expect("read"),
                "content of {}",
                rel.display()
            );
            assert_eq!(
                (mx.mtime(), mx.mtime_nsec()),
                (my.mtime(), my.mtime_nsec()),
                "mtime of {}",
                rel.display()
            );
        }
    }
}
