//! Restore fidelity on a hostile but real tree: every kind of object and
//! attribute a Linux file system keeps is backed up and restored exactly
//! (what `cp -a` keeps is the reference), and a restore never acts outside
//! its destination. Parts that need root (devices, trusted and security
//! attributes, owners) are checked when the tests run as root, as in CI.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, XattrFlags};
use tandem_tests::*;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn setup() -> (TestServer, TestClient, tempfile::TempDir) {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    let work = tempfile::tempdir().unwrap();
    (server, client, work)
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

/// A POSIX ACL in the kernel's xattr form: version 2, then (tag, perm, id)
/// entries in tag order.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}
const UNDEFINED_ID: u32 = u32::MAX;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mkfifo(path: &Path, mode: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        FileType::Fifo,
        Mode::from_raw_mode(mode),
        0,
    )
    .unwrap();
}

fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: nanos as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("utimensat");
}

/// Builds the tree of the fidelity table: hard links, a sparse file,
/// extended attributes, ACLs, special files, names that are not UTF-8, a
/// newline in a name, a 255-byte name, unusual directory modes.
fn build_hostile_tree(root: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    // Hard links: two names, and three names in two directories.
    w("hard/a", b"two names\n");
    std::fs::hard_link(root.join("hard/a"), root.join("hard/b")).unwrap();
    w("hard/c1", &random_bytes(3, 200_000));
    std::fs::create_dir_all(root.join("other")).unwrap();
    std::fs::hard_link(root.join("hard/c1"), root.join("hard/c2")).unwrap();
    std::fs::hard_link(root.join("hard/c1"), root.join("other/c3")).unwrap();
    // A sparse file: 1 GiB apparent, 3 MiB of data.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(root.join("sparse.img")).unwrap();
        f.set_len(1 << 30).unwrap();
        for (i, at) in [0u64, 512 << 20, (1 << 30) - (1 << 20)].iter().enumerate() {
            f.write_all_at(&random_bytes(100 + i as u64, 1 << 20), *at)
                .unwrap();
        }
    }
    // Extended attributes: user ones everywhere, trusted and a file
    // capability as root.
    w("xattr.txt", b"attributes\n");
    set_xattr(&root.join("xattr.txt"), "user.comment", b"hello");
    set_xattr(&root.join("xattr.txt"), "user.binary", &[0, 255, 1, 2]);
    if is_root() {
        set_xattr(&root.join("xattr.txt"), "trusted.secret", b"t");
        w("cap-bin", b"#!/bin/sh\n");
        chmod(&root.join("cap-bin"), 0o755);
        // VFS_CAP_REVISION_2 with the effective flag; CAP_NET_BIND_SERVICE
        // permitted (permitted and inheritable words, low then high).
        let mut cap = (0x0200_0000u32 | 1).to_le_bytes().to_vec();
        for word in [1u32 << 10, 0, 0, 0] {
            cap.extend_from_slice(&word.to_le_bytes());
        }
        set_xattr(&root.join("cap-bin"), "security.capability", &cap);
    }
    // ACLs: an access ACL whose mask differs from the owning group's
    // entry, and a directory with a default ACL.
    w("acl.txt", b"acl\n");
    chmod(&root.join("acl.txt"), 0o640);
    set_xattr(
        &root.join("acl.txt"),
        "system.posix_acl_access",
        &acl(&[
            (USER_OBJ, 6, UNDEFINED_ID),
            (USER, 6, 1234),
            (GROUP_OBJ, 4, UNDEFINED_ID),
            (MASK, 6, UNDEFINED_ID),
            (OTHER, 0, UNDEFINED_ID),
        ]),
    );
    std::fs::create_dir_all(root.join("acl-dir")).unwrap();
    let dir_acl = acl(&[
        (USER_OBJ, 7, UNDEFINED_ID),
        (USER, 5, 1234),
        (GROUP_OBJ, 5, UNDEFINED_ID),
        (MASK, 5, UNDEFINED_ID),
        (OTHER, 0, UNDEFINED_ID),
    ]);
    set_xattr(&root.join("acl-dir"), "system.posix_acl_access", &dir_acl);
    set_xattr(&root.join("acl-dir"), "system.posix_acl_default", &dir_acl);
    w("acl-dir/plain-inside.txt", b"no ACL of its own\n");
    rustix::fs::lremovexattr(
        root.join("acl-dir/plain-inside.txt").as_path(),
        "system.posix_acl_access",
    )
    .ok();
    chmod(&root.join("acl-dir/plain-inside.txt"), 0o604);
    // Special files.
    mkfifo(&root.join("fifo"), 0o620);
    if is_root() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("null-dev").as_path(),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("loop-dev").as_path(),
            FileType::BlockDevice,
            Mode::from_raw_mode(0o660),
            rustix::fs::makedev(7, 200),
        )
        .unwrap();
    }
    // Names: not UTF-8 (a file, a directory, a link target), a newline, 255
    // bytes, wildcard characters.
    let raw = |bytes: &[u8]| root.join(OsStr::from_bytes(bytes));
    std::fs::write(raw(b"caf\xe9.txt"), b"latin-1 name\n").unwrap();
    std::fs::create_dir_all(raw(b"d\xff\xfe")).unwrap();
    std::fs::write(raw(b"d\xff\xfe/inner.txt"), b"inside\n").unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"tar\xfeget"), root.join("badlink")).unwrap();
    w("new\nline.txt", b"a newline in the name\n");
    w(&format!("{}.txt", "n".repeat(251)), b"255 bytes of name\n");
    w("we[ird]*?.txt", b"wildcards in the name\n");
    // setuid/setgid and directory modes with their mtimes.
    w("suid", b"setuid\n");
    chmod(&root.join("suid"), 0o4755);
    w("ro-dir/f", b"in a read-only directory\n");
    std::fs::create_dir_all(root.join("deep")).unwrap();
    w("private/f", b"private\n");
    chmod(&root.join("private"), 0o700);
    if is_root() {
        std::os::unix::fs::lchown(root.join("suid"), Some(4321), Some(4321)).unwrap();
        chmod(&root.join("suid"), 0o6755);
        std::os::unix::fs::lchown(root.join("badlink"), Some(99), Some(98)).unwrap();
    }
    set_mtime(&root.join("suid"), 1_000_000_000, 123_456_789);
    set_mtime(&root.join("badlink"), 1_100_000_000, 5);
    set_mtime(&root.join("fifo"), 1_200_000_000, 6);
    make_deep_path(&root.join("deep"), 20);
    chmod(&root.join("ro-dir"), 0o555);
    for dir in ["ro-dir", "private", "acl-dir", "hard", "other"] {
        set_mtime(&root.join(dir), 1_300_000_000, 7);
    }
}

/// What is compared of one entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    owner: (u32, u32),
    mtime: (i64, i64),
    size: u64,
    content: Option<Vec<u8>>,
    link_target: Option<OsString>,
    rdev: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The first name (in sorted order) of this entry's inode among the
    /// tree's entries: equal for hard links.
    link_group: Option<PathBuf>,
}

fn kind_name(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::CharacterDevice => "chr",
        FileType::BlockDevice => "blk",
        _ => "other",
    }
}

fn xattrs_of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 65536];
        let c = std::ffi::CString::new(name).unwrap();
        let len = rustix::fs::lgetxattr(path, c.as_c_str(), &mut value[..]).unwrap();
        out.push((name.to_vec(), value[..len].to_vec()));
    }
    out.sort();
    out
}

/// The entries of a tree, by descriptors so paths longer than `PATH_MAX`
/// are read too.
struct Snapshot {
    entries: BTreeMap<PathBuf, Entry>,
    /// Allocated bytes of files with fewer blocks than their length.
    allocated: BTreeMap<PathBuf, u64>,
    inodes: BTreeMap<(u64, u64), PathBuf>,
}

impl Snapshot {
    // `stat` field types differ by architecture.
    #[allow(clippy::unnecessary_cast)]
    fn visit(&mut self, dir: &std::os::fd::OwnedFd, rel: &Path) {
        use rustix::fs::{AtFlags, OFlags};
        let mut names = Vec::new();
        let mut listing = rustix::fs::Dir::read_from(dir).unwrap();
        while let Some(e) = listing.read() {
            let name = e.unwrap().file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(OsString::from(OsStr::from_bytes(&name)));
            }
        }
        names.sort();
        for name in names {
            let st = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW).unwrap();
            let ft = FileType::from_raw_mode(st.st_mode);
            let rel = rel.join(&name);
            let proc_path = PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(dir)
            ))
            .join(&name);
            let (size, blocks) = (st.st_size as u64, st.st_blocks as u64);
            let link_group = (ft == FileType::RegularFile && st.st_nlink > 1).then(|| {
                self.inodes
                    .entry((st.st_dev as u64, st.st_ino as u64))
                    .or_insert_with(|| rel.clone())
                    .clone()
            });
            if ft == FileType::RegularFile && blocks * 512 < size {
                self.allocated.insert(rel.clone(), blocks * 512);
            }
            let content = (ft == FileType::RegularFile).then(|| {
                let fd = rustix::fs::openat(
                    dir,
                    &name,
                    OFlags::RDONLY | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
                .unwrap();
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut data).unwrap();
                data
            });
            let link_target = (ft == FileType::Symlink).then(|| {
                OsString::from(OsStr::from_bytes(
                    rustix::fs::readlinkat(dir, &name, Vec::new())
                        .unwrap()
                        .as_bytes(),
                ))
            });
            self.entries.insert(
                rel.clone(),
                Entry {
                    kind: kind_name(ft),
                    mode: st.st_mode as u32,
                    owner: (st.st_uid as u32, st.st_gid as u32),
                    mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
                    size: if ft == FileType::RegularFile { size } else { 0 },
                    content,
                    link_target,
                    rdev: st.st_rdev as u64,
                    xattrs: xattrs_of(&proc_path),
                    link_group,
                },
            );
            if ft == FileType::Directory {
                let sub = rustix::fs::openat(
                    dir,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
                .unwrap();
                self.visit(&sub, &rel);
            }
        }
    }
}

/// Every entry below `root` (not `root` itself), with what a restore must
/// keep; and each sparse file's allocated bytes.
fn snapshot(root: &Path) -> (BTreeMap<PathBuf, Entry>, BTreeMap<PathBuf, u64>) {
    let mut snap = Snapshot {
        entries: BTreeMap::new(),
        allocated: BTreeMap::new(),
        inodes: BTreeMap::new(),
    };
    let dir = rustix::fs::openat(
        rustix::fs::CWD,
        root,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    snap.visit(&dir, Path::new(""));
    (snap.entries, snap.allocated)
}

/// Makes `levels` directories of 250-byte names below `root` and a file at
/// the bottom: a path of over 5,000 bytes, which no call taking a whole path
/// accepts.
fn make_deep_path(root: &Path, levels: usize) {
    use rustix::fs::OFlags;
    let name = "deep-".repeat(50);
    let mut fd = rustix::fs::openat(
        rustix::fs::CWD,
        root,
        OFlags::PATH | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    for _ in 0..levels {
        rustix::fs::mkdirat(&fd, name.as_str(), Mode::from_raw_mode(0o750)).unwrap();
        fd = rustix::fs::openat(
            &fd,
            name.as_str(),
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
    }
    let file = rustix::fs::openat(
        &fd,
        "bottom.txt",
        OFlags::WRONLY | OFlags::CREATE,
        Mode::from_raw_mode(0o640),
    )
    .unwrap();
    rustix::io::write(&file, b"at the bottom of a 5000-byte path\n").unwrap();
}

fn assert_exact_copy(src: &Path, out: &Path) {
    let (want, want_blocks) = snapshot(src);
    let (got, got_blocks) = snapshot(out);
    let want_names: Vec<_> = want.keys().collect();
    let got_names: Vec<_> = got.keys().collect();
    assert_eq!(got_names, want_names, "the trees list different entries");
    for (rel, w) in &want {
        assert_eq!(&got[rel], w, "{} differs", rel.display());
    }
    for (rel, blocks) in want_blocks {
        let restored = got_blocks
            .get(&rel)
            .unwrap_or_else(|| panic!("{} was restored fully allocated", rel.display()));
        assert!(
            *restored <= blocks + (1 << 20),
            "{}: {restored} bytes allocated against {blocks}",
            rel.display()
        );
    }
}

#[test]
fn a_hostile_tree_is_restored_exactly() {
    let (_server, client, work) = setup();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    build_hostile_tree(&src);
    // A socket is reported and counted, never silently left out.
    let socket = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    let out = client.run(&["--json", "incremental", &path_str(&src)]);
    assert_eq!(
        code(&out),
        4,
        "a skipped socket is exit 4: {}",
        stderr(&out)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["not_backed_up"]["socket"], 1, "{stats}");
    assert_eq!(stats["failed"], 1, "{stats}");
    assert!(stderr(&out).contains("TDM1015W"), "{}", stderr(&out));
    drop(socket);
    std::fs::remove_file(src.join("sock")).unwrap();
    // Holes are neither read nor sent.
    assert!(
        stats["bytes_scanned"].as_u64().unwrap() < 64 << 20,
        "the 1 GiB sparse file was read: {stats}"
    );
    // An unchanged tree is unchanged, hard links and attributes included
    // (the run before takes note of the socket's removal).
    client.json(&["incremental", &path_str(&src)]);
    let again = client.json(&["incremental", &path_str(&src)]);
    assert_eq!(again["backed_up"], 0, "{again}");

    let dest = work.path().join("out");
    let restored = client.json(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&dest),
        "--subdir",
    ]);
    assert_eq!(restored["failed"], 0, "{restored}");
    assert_eq!(restored["attributes_not_set"], 0, "{restored}");
    assert_eq!(
        restored["hard_links"], 3,
        "b, c2 and c3 are links: {restored}"
    );
    assert_exact_copy(&src, &dest);
}

#[test]
fn a_change_to_extended_attributes_alone_is_sent_again() {
    let (_server, client, work) = setup();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data\n").unwrap();
    client.json(&["incremental", &path_str(&src)]);
    set_xattr(&src.join("f"), "user.tag", b"new");
    let again = client.json(&["incremental", &path_str(&src)]);
    assert_eq!(again["backed_up"], 1, "{again}");
    let dest = work.path().join("out");
    client.json(&["restore", &path_str(&src.join("f")), &path_str(&dest)]);
    assert_eq!(xattrs_of(&dest.join("f")), xattrs_of(&src.join("f")));
}

#[test]
fn names_with_wildcards_are_restored_by_escaped_name() {
    let (_server, client, work) = setup();
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("we[ird]*")).unwrap();
    std::fs::write(src.join("we[ird]*/in?.txt"), b"x\n").unwrap();
    std::fs::write(src.join("plain.txt"), b"y\n").unwrap();
    client.json(&["incremental", &path_str(&src)]);
    let dest = work.path().join("out");
    let r = client.json(&[
        "restore",
        &format!("{}/we\\[ird\\]\\*", path_str(&src)),
        &path_str(&dest),
        "--subdir",
    ]);
    assert_eq!(r["restored"], 2, "{r}");
    assert_eq!(
        std::fs::read(dest.join("we[ird]*/in?.txt")).unwrap(),
        b"x\n"
    );
    assert!(!dest.join("plain.txt").exists());
    // A pattern that matches only the directory brings its contents with --subdir.
    let dest2 = work.path().join("out2");
    let r = client.json(&[
        "restore",
        &format!("{}/we*", path_str(&src)),
        &path_str(&dest2),
        "--subdir",
    ]);
    assert_eq!(r["restored"], 2, "{r}");
    assert!(dest2.join("we[ird]*/in?.txt").exists());
}

/// Everything below `dir` with its mode, mtime and content, to prove a
/// restore left it alone.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u32, i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let m = std::fs::symlink_metadata(dir).unwrap();
    out.push((
        dir.to_path_buf(),
        m.mode(),
        m.mtime(),
        m.mtime_nsec(),
        Vec::new(),
    ));
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        let data = if m.is_file() {
            std::fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        out.push((p, m.mode(), m.mtime(), m.mtime_nsec(), data));
    }
    out.sort();
    out
}

/// A backed-up tree whose directory `proj` has mode 0777 and a file `f`.
fn backed_up_project(client: &TestClient, work: &Path) -> PathBuf {
    let src = work.join("home");
    std::fs::create_dir_all(src.join("proj")).unwrap();
    std::fs::write(src.join("proj/f"), b"project file\n").unwrap();
    std::fs::write(src.join("top.txt"), b"top\n").unwrap();
    chmod(&src.join("proj"), 0o777);
    client.json(&["incremental", &path_str(&src)]);
    src
}

fn outside_dir(work: &Path) -> PathBuf {
    let outside = work.join("etc-like");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("passwd"), b"root:x:0:0\n").unwrap();
    chmod(&outside, 0o755);
    set_mtime(&outside, 1_000_000, 0);
    outside
}

#[test]
fn a_symlink_where_a_directory_goes_is_refused_or_replaced_never_followed() {
    let (_server, client, work) = setup();
    let src = backed_up_project(&client, work.path());
    let outside = outside_dir(work.path());
    let before = fingerprint(&outside);
    // In DEST: refused without --replace, replaced with it.
    let dest = work.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("proj")).unwrap();
    let out = client.run(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&dest),
        "--subdir",
    ]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert_eq!(fingerprint(&outside), before, "outside DEST changed");
    let out = client.run(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&dest),
        "--subdir",
        "--replace",
        "yes",
    ]);
    assert_success(&out, "restore replacing the link");
    assert!(
        std::fs::symlink_metadata(dest.join("proj"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        std::fs::read(dest.join("proj/f")).unwrap(),
        b"project file\n"
    );
    assert_eq!(fingerprint(&outside), before, "outside DEST changed");
    // In place: the user swapped the directory for a link to somewhere else.
    std::fs::remove_dir_all(src.join("proj")).unwrap();
    std::os::unix::fs::symlink(&outside, src.join("proj")).unwrap();
    let out = client.run(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        "--subdir",
        "--replace",
        "all",
    ]);
    assert_success(&out, "in-place restore over a link");
    assert_eq!(
        fingerprint(&outside),
        before,
        "an in-place restore changed the link's target"
    );
    let m = std::fs::symlink_metadata(src.join("proj")).unwrap();
    assert!(m.is_dir() && m.mode() & 0o7777 == 0o777);
}

#[test]
fn a_symlink_where_a_file_goes_is_replaced_not_written_through() {
    let (_server, client, work) = setup();
    let src = backed_up_project(&client, work.path());
    let outside = outside_dir(work.path());
    let before = fingerprint(&outside);
    std::fs::remove_file(src.join("top.txt")).unwrap();
    std::os::unix::fs::symlink(outside.join("passwd"), src.join("top.txt")).unwrap();
    // Not replaced without --replace.
    let out = client.run(&["restore", &path_str(&src.join("top.txt"))]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert_eq!(fingerprint(&outside), before);
    let out = client.run(&[
        "restore",
        &path_str(&src.join("top.txt")),
        "--replace",
        "yes",
    ]);
    assert_success(&out, "restore over a link");
    assert_eq!(
        fingerprint(&outside),
        before,
        "the link's target was written"
    );
    let m = std::fs::symlink_metadata(src.join("top.txt")).unwrap();
    assert!(m.is_file());
    assert_eq!(std::fs::read(src.join("top.txt")).unwrap(), b"top\n");
}

/// Rewrites `path` (same size, new bytes each time) until `stop` is set.
fn keep_rewriting(path: PathBuf, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{Seek, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let block = vec![0x5au8; 1 << 20];
    // Bounded, but far beyond what the backups under test take.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        for _ in 0..8 {
            f.write_all(&block).unwrap();
        }
    }
}

#[test]
fn a_file_rewritten_during_its_backup_is_skipped_or_marked() {
    let (_server, client, work) = setup();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let busy = src.join("busy.db");
    std::fs::write(&busy, random_bytes(9, 16 << 20)).unwrap();
    std::fs::write(src.join("quiet.txt"), b"quiet\n").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (busy, stop) = (busy.clone(), stop.clone());
        std::thread::spawn(move || keep_rewriting(busy, stop))
    };
    // shared_static (the default): skipped with a warning, exit 4.
    let out = client.run(&["--json", "incremental", &path_str(&src)]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("TDM1017W"), "{}", stderr(&out));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["not_backed_up"]["kept changing"], 1, "{stats}");
    // shared_dynamic: stored, marked, exit 8.
    client.add_options("serialization = \"shared_dynamic\"\nchanging_retries = 1\n");
    let out = client.run(&["--json", "incremental", &path_str(&src)]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(stderr(&out).contains("TDM1013W"), "{}", stderr(&out));
    let listed = client.json(&["query", "backup", &path_str(&busy)]);
    assert_eq!(listed[0]["changed_during_backup"], true, "{listed}");
    // Once quiet, the next incremental stores it again, unmarked.
    let again = client.json(&["incremental", &path_str(&src)]);
    assert_eq!(again["backed_up"], 1, "{again}");
    let listed = client.json(&["query", "backup", &path_str(&busy)]);
    assert_eq!(listed[0]["changed_during_backup"], false, "{listed}");
}

#[test]
fn names_are_shown_escaped_so_they_cannot_forge_log_lines() {
    let (_server, client, work) = setup();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let evil = src.join("x\nTDM9999E forged\u{1b}[31m");
    std::os::unix::net::UnixListener::bind(&evil)
        .map(drop)
        .unwrap();
    let out = client.run(&["incremental", &path_str(&src)]);
    assert_eq!(code(&out), 4);
    let log = client.error_log();
    assert!(!log.lines().any(|l| l.starts_with("TDM9999E")), "{log}");
    assert!(log.contains("x\\nTDM9999E forged\\u{1b}[31m"), "{log}");
    assert!(!stderr(&out).contains('\u{1b}'), "{}", stderr(&out));
    // And a file with that name restores under its real name.
    std::fs::remove_file(&evil).unwrap();
    std::fs::write(&evil, b"evil name\n").unwrap();
    client.run(&["incremental", &path_str(&src)]);
    let dest = work.path().join("out");
    client.json(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&dest),
    ]);
    let name: OsString = evil.file_name().unwrap().to_os_string();
    assert_eq!(std::fs::read(dest.join(&name)).unwrap(), b"evil name\n");
}

#[test]
fn existing_directories_keep_their_attributes_unless_replacing() {
    let (_server, client, work) = setup();
    let src = backed_up_project(&client, work.path());
    let dest = work.path().join("dest");
    std::fs::create_dir_all(dest.join("proj")).unwrap();
    chmod(&dest.join("proj"), 0o700);
    let r = client.json(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&dest),
        "--subdir",
    ]);
    assert_eq!(r["directories_kept"], 1, "{r}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(
        mode(&dest.join("proj")),
        0o700,
        "an existing directory was changed"
    );
    assert_eq!(
        std::fs::read(dest.join("proj/f")).unwrap(),
        b"project file\n"
    );
    client.json(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&dest),
        "--subdir",
        "--replace",
        "yes",
    ]);
    assert_eq!(mode(&dest.join("proj")), 0o777);
}

#[test]
fn acls_inherited_from_the_destination_are_removed() {
    let (_server, client, work) = setup();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("plain.txt"), b"no ACL\n").unwrap();
    chmod(&src.join("plain.txt"), 0o600);
    mkfifo(&src.join("pipe"), 0o600);
    client.json(&["incremental", &path_str(&src)]);
    // A destination whose default ACL would give user 1234 read and write.
    let dest = work.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let inherit = acl(&[
        (USER_OBJ, 7, UNDEFINED_ID),
        (USER, 6, 1234),
        (GROUP_OBJ, 5, UNDEFINED_ID),
        (MASK, 7, UNDEFINED_ID),
        (OTHER, 5, UNDEFINED_ID),
    ]);
    set_xattr(&dest, "system.posix_acl_default", &inherit);
    let r = client.json(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&dest),
    ]);
    assert_eq!(r["failed"], 0, "{r}");
    for name in ["plain.txt", "pipe"] {
        let got = dest.join(name);
        assert_eq!(
            xattrs_of(&got),
            xattrs_of(&src.join(name)),
            "{name} kept an inherited ACL"
        );
        assert_eq!(
            std::fs::symlink_metadata(&got).unwrap().mode() & 0o7777,
            0o600,
            "{name}"
        );
    }
}

#[test]
fn a_replica_restores_the_hostile_tree_exactly_in_failover() {
    let (primary, secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    build_hostile_tree(&src);
    client.json(&["incremental", &path_str(&src)]);
    let run = replicate(&primary, "alice");
    assert_eq!(run["state"], "completed", "{run}");
    client.json(&["query", "session"]); // saves the failover block
    let dest = work.path().join("out");
    let restored = client.json(&[
        "--force-failover",
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&dest),
        "--subdir",
    ]);
    assert_eq!(restored["failed"], 0, "{restored}");
    assert_exact_copy(&src, &dest);
    drop(secondary);
}
