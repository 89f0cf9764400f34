//! The bodies of Tandem's fuzz targets: everything that decodes bytes an
//! attacker controls. Each function must return for any input, without a
//! panic, and checks what must hold of what it accepts. The cargo-fuzz
//! targets in `cargo-fuzz/` call these on nightly; `tests/replay.rs` runs
//! them over the kept corpus on stable, in CI.

use std::io::Write;
use std::path::Path;

use prost::Message;
use prost::bytes::Bytes;
use tandem_proto::{ChunkId, pb};

/// A target: takes any bytes, returns, or panics on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("chunk_frame", chunk_frame),
    ("container_records", container_records),
    ("wire_objects", wire_objects),
    ("options_file", options_file),
    ("restore_paths", restore_paths),
    ("pitdate", pitdate),
];

/// An uploaded chunk: the first 4 bytes are the claimed raw length, the rest
/// the stored bytes. What the server accepts decodes to exactly that length
/// and hashes to the id it was checked against.
pub fn chunk_frame(data: &[u8]) {
    let Some((len, stored)) = data.split_first_chunk::<4>() else {
        return;
    };
    let raw_len = u64::from(u32::from_le_bytes(*len) % (8 << 20));
    let stored = Bytes::copy_from_slice(stored);
    // With an id that cannot match, only refusals are possible.
    assert!(
        tandem_server::storage::verify_chunk(ChunkId([0xEE; 32]), stored.clone(), raw_len).is_err()
    );
    // With the id of what the bytes decode to, acceptance must be exact.
    // Bounded as the server bounds it: a bomb is not a finding.
    if let Ok(raw) = zstd::bulk::decompress(&stored, 8 << 20)
        && let Ok(chunk) = tandem_server::storage::verify_chunk(ChunkId::of(&raw), stored, raw_len)
    {
        assert_eq!(raw.len() as u64, raw_len);
        assert_eq!(chunk.id, ChunkId::of(&raw));
    }
}

/// A container file as found at start-up: its records are listed from their
/// own headers, and every listed record lies inside the file.
pub fn container_records(data: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("00000001.tdc");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(data))
        .expect("write container");
    let store = tandem_server::storage::ChunkStore::open(dir.path(), &[(1, data.len() as u64)])
        .expect("open store");
    if let Ok(records) = store.records(1) {
        for (_, loc) in records {
            assert!(loc.offset + u64::from(loc.stored_len) <= data.len() as u64);
        }
    }
}

/// A new object of a commit and a replicated version, as protobuf bytes:
/// what converts has a path inside its filespace with no `..`, `.` or empty
/// component once decoded.
pub fn wire_objects(data: &[u8]) {
    use tandem_server::convert;
    if let Ok(object) = pb::NewObject::decode(data)
        && let Ok(version) = convert::new_version_from_pb(object, "/fs")
    {
        assert_safe_path(&version.attrs.path);
        assert!(tandem_server::catalog::path_is_within(
            &version.attrs.path,
            "/fs"
        ));
    }
    if let Ok(version) = pb::ObjectVersion::decode(data)
        && let Ok(stored) = convert::stored_version_from_pb(version)
    {
        assert_safe_path(&stored.attrs.path);
    }
    let text = String::from_utf8_lossy(data);
    if convert::check_path(&text).is_ok() {
        assert_safe_path(&text);
    }
}

fn assert_safe_path(path: &str) {
    assert!(path.starts_with('/'), "{path:?}");
    if path == "/" {
        return;
    }
    for part in path[1..].split('/') {
        let raw = tandem_proto::names::decode_bytes(part);
        assert!(
            !raw.is_empty() && raw != b"." && raw != b".." && !raw.contains(&b'/'),
            "{path:?}"
        );
        assert!(!raw.contains(&0), "{path:?}");
    }
}

/// An options file: it loads or is refused with a message naming the file.
pub fn options_file(data: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tandem.toml");
    std::fs::write(&path, data).expect("write options");
    if let Err(e) =
        tandem_client::options::ClientOptions::load(&path, &std::collections::HashMap::new())
    {
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}

/// A stored path relative to a restore's source: what the restore accepts to
/// place below DEST is plain names only.
pub fn restore_paths(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(parts) = tandem_client::restore::dest_components(&text, Path::new("/dest")) {
        for part in parts {
            let raw = part.as_encoded_bytes();
            assert!(!raw.is_empty() && raw != b"." && raw != b"..", "{text:?}");
            assert!(!raw.contains(&b'/') && !raw.contains(&0), "{text:?}");
        }
    }
    let _ = tandem_client::selection::Selection::parse(&text, true);
}

/// A `--pitdate` value: parsed or refused, never a panic.
pub fn pitdate(data: &[u8]) {
    let _ = tandem_client::output::timefmt::parse_time(&String::from_utf8_lossy(data));
}
