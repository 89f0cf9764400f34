//! A file larger than 2 GiB is streamed through backup and restore with
//! bounded memory on the client.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::Command;

use tandem_tests::*;

const SIZE: u64 = (2 << 30) + 4097;
/// The client may hold a flush batch (32 MiB), a few chunks in flight and
/// their compressed copies; anything near the file size means it is buffered.
const CLIENT_RSS_LIMIT_KIB: u64 = 400 * 1024;

/// A sparse file with a distinct marker every 256 KiB, so its chunks differ.
fn write_sparse(path: &std::path::Path) {
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(SIZE).unwrap();
    let mut offset = 0;
    while offset + 64 < SIZE {
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(format!("marker at {offset:020}\n").as_bytes())
            .unwrap();
        offset += 256 * 1024;
    }
}

fn sha256_of(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_file_over_two_gib_streams_with_bounded_memory() {
    let server = TestServer::start("PRIMARY");
    server.register("big", "big-password");
    let client = TestClient::new(&server, "big", "big-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let file = src.join("huge.img");
    write_sparse(&file);

    let mut cmd = Command::new(bin("tandem"));
    cmd.arg("--options")
        .arg(&client.options)
        .args(["--json", "incremental"])
        .arg(&src);
    let (out, peak) = run_measured(cmd);
    assert_success(&out, "backup of the large file");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["bytes_scanned"].as_u64().unwrap(), SIZE);
    eprintln!("backup of {SIZE} bytes: client peak RSS {peak} KiB, {stats}");
    assert!(
        peak < CLIENT_RSS_LIMIT_KIB,
        "client peak RSS {peak} KiB while backing up"
    );

    let dest = work.path().join("out");
    let mut cmd = Command::new(bin("tandem"));
    cmd.arg("--options")
        .arg(&client.options)
        .args(["--json", "restore"])
        .arg(&file)
        .arg(&dest);
    let (out, peak) = run_measured(cmd);
    assert_success(&out, "restore of the large file");
    eprintln!("restore: client peak RSS {peak} KiB");
    assert!(
        peak < CLIENT_RSS_LIMIT_KIB,
        "client peak RSS {peak} KiB while restoring"
    );
    let restored = dest.join("huge.img");
    assert_eq!(std::fs::metadata(&restored).unwrap().len(), SIZE);
    let mut tail = Vec::new();
    std::fs::File::open(&restored)
        .unwrap()
        .take(64)
        .read_to_end(&mut tail)
        .unwrap();
    assert!(tail.starts_with(b"marker at 00000000000000000000"));
    assert_eq!(sha256_of(&file), sha256_of(&restored));
}

/// A sparse file of more chunks than one `ReadChunks` call may name
/// (`tandem_proto::MAX_CHUNK_IDS_PER_CALL`): its holes are 4 MiB all-zero
/// chunks, so 66 GiB is 16,896 of them. The restore asks in several calls.
#[test]
fn a_file_of_more_chunks_than_one_call_may_name_restores() {
    use std::os::unix::fs::MetadataExt;
    const HUGE: u64 = 66 << 30;
    let server = TestServer::start("PRIMARY");
    server.register("big", "big-password");
    let client = TestClient::new(&server, "big", "big-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let file = src.join("disk.img");
    let markers = [0, HUGE / 2, HUGE - 4096];
    {
        let mut f = std::fs::File::create(&file).unwrap();
        f.set_len(HUGE).unwrap();
        for at in markers {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(format!("marker at {at:020}\n").as_bytes())
                .unwrap();
        }
    }
    let backed_up = client.json(&["incremental", &path_str(&src)]);
    assert_eq!(backed_up["failed"], 0, "{backed_up}");

    let dest = work.path().join("out");
    let restored = client.json(&["restore", &path_str(&file), &path_str(&dest)]);
    assert_eq!(restored["failed"], 0, "{restored}");
    let copy = dest.join("disk.img");
    let meta = std::fs::metadata(&copy).unwrap();
    assert_eq!(meta.len(), HUGE);
    assert!(
        meta.blocks() * 512 < 64 << 20,
        "the holes stay holes: {} bytes allocated",
        meta.blocks() * 512
    );
    let mut f = std::fs::File::open(&copy).unwrap();
    for at in markers {
        let mut line = vec![0u8; 31];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut line).unwrap();
        assert_eq!(line, format!("marker at {at:020}\n").as_bytes());
    }
}
