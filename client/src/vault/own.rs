//! What this client wrote to its vault itself, kept in `state_dir`
//! (`vault-own-<vault GUID>.bin`), beside the record of its last pull
//! ([`super::pulled`]).
//!
//! A push sends a server only what this client can vouch for, and the
//! vault directory is not asked: whatever its owner, root, or another
//! machine writing a share puts there would otherwise reach the server as
//! this node's backups. Two kinds of entry:
//! - **content**: a digest of each version this client asks the vault to
//!   store (filespace, path, attributes, chunk ids; [`digest`]) with the
//!   time it asked, written and synced *before* the commit. Each entry
//!   vouches for one version the vault holds with that digest, stored
//!   within [`STORE_WINDOW_NS`] after that time ([`stored_by_us`]). So a
//!   version planted under a new id, a copy of one of ours, one of ours with
//!   its path, attributes or data changed in the vault's catalog, or with its
//!   backup time moved, is not this client's. And a client killed between
//!   its commit and anything after it leaves nothing of its own unrecorded.
//! - **deactivated**: the ids the vault's commit reports it made inactive,
//!   recorded after it. They allow only a state change on the server, of a
//!   version the server holds as the vault does. One lost to a kill is
//!   harmless: the next backup on the server makes the same versions
//!   inactive there.
//!
//! Anything else the vault holds is reported, kept there, and sent only when
//! the operator says so (`tandem set vault --resend`, which records the
//! digest of every version the vault holds).
//!
//! Format: the magic `TDMOWN03`, then 41-byte entries (a kind byte, `C` or
//! `D`; 32 bytes: a digest, or an id followed by zeros; a time in
//! nanoseconds, little-endian), appended and synced. An append cut short by
//! a crash is cut back to whole entries before the next one, and entries of
//! zeros (a crash that kept the length but not the data) are skipped.
//! Cleared when a pull completes: the vault is then a
//! copy of the server, and the pull's record vouches for what it holds.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tandem_proto::{ObjectId, ServerGuid, pb};

const MAGIC: &[u8; 8] = b"TDMOWN03";
const ENTRY: usize = 41;
/// How long after a content entry the vault's commit may have given the
/// version its backup time (the same clock, in this process; a commit takes
/// seconds).
pub const STORE_WINDOW_NS: i64 = 3600 * 1_000_000_000;
const CONTENT: u8 = b'C';
const DEACTIVATED: u8 = b'D';
/// About 50 million entries between two pulls.
const MAX_BYTES: u64 = 1600 << 20;

/// A digest of a version's content: what identifies it as what a client
/// stored, whatever id and time the store gave it.
pub type Digest = [u8; 32];

/// What this client recorded writing to one vault.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Digests of the versions it asked the vault to store, each with the
    /// times it asked (sorted).
    pub contents: HashMap<Digest, Vec<i64>>,
    /// Versions the vault reported it made inactive for this client.
    pub deactivated: HashSet<ObjectId>,
}

impl Ledger {
    /// Whether nothing is recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.contents.is_empty() && self.deactivated.is_empty()
    }
}

/// One entry to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A version about to be stored, by [`digest`], and the time it was asked.
    Content(Digest, i64),
    /// A version the vault made inactive.
    Deactivated(ObjectId),
}

/// The keys of the two digests, derived once (deriving them took as long
/// as hashing a small version).
fn keys() -> &'static ([u8; 32], [u8; 32]) {
    static KEYS: std::sync::OnceLock<([u8; 32], [u8; 32])> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        (
            blake3::derive_key("tandem vault version content v1", b""),
            blake3::derive_key("tandem vault pulled version v1", b""),
        )
    })
}

/// The digest of a version: its filespace, every attribute, and its chunk
/// ids, each field framed so no two different versions share an encoding.
/// The same whether computed from what a client sends or from a store's
/// listing of it (the store keeps each field as given).
#[must_use]
pub fn digest<'a>(
    filespace: &str,
    attrs: Option<&pb::ObjectAttrs>,
    chunk_ids: impl IntoIterator<Item = &'a Vec<u8>>,
) -> Digest {
    let mut h = blake3::Hasher::new_keyed(&keys().0);
    let bytes = |h: &mut blake3::Hasher, b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    bytes(&mut h, filespace.as_bytes());
    let default = pb::ObjectAttrs::default();
    let a = attrs.unwrap_or(&default);
    bytes(&mut h, a.path.as_bytes());
    h.update(&i64::from(a.kind).to_le_bytes());
    h.update(&a.size.to_le_bytes());
    h.update(&a.mode.to_le_bytes());
    h.update(&a.mtime_ns.to_le_bytes());
    h.update(&a.uid.to_le_bytes());
    h.update(&a.gid.to_le_bytes());
    bytes(&mut h, a.link_target.as_bytes());
    let no_extra = pb::ObjectExtra::default();
    let e = a.extra.as_ref().unwrap_or(&no_extra);
    h.update(&e.rdev.to_le_bytes());
    h.update(&(e.xattrs.len() as u64).to_le_bytes());
    for x in &e.xattrs {
        bytes(&mut h, &x.name);
        bytes(&mut h, &x.value);
    }
    h.update(&e.hard_link_group.to_le_bytes());
    h.update(&[u8::from(e.changed_during_backup), u8::from(e.sparse)]);
    h.update(&e.hard_link_names.to_le_bytes());
    h.update(&e.ctime_ns.to_le_bytes());
    let mut count = 0u64;
    let mut ids = blake3::Hasher::new();
    for id in chunk_ids {
        bytes(&mut ids, id);
        count += 1;
    }
    h.update(&count.to_le_bytes());
    h.update(ids.finalize().as_bytes());
    *h.finalize().as_bytes()
}

/// The digest of a version as a store lists it.
#[must_use]
pub fn digest_of(v: &pb::ObjectVersion) -> Digest {
    digest(&v.filespace, v.attrs.as_ref(), &v.chunk_ids)
}

/// The digest a pull's record keeps for a version: its content and its
/// backup time, as the server gave them.
#[must_use]
pub fn pulled_digest(v: &pb::ObjectVersion) -> Digest {
    let mut h = blake3::Hasher::new_keyed(&keys().1);
    h.update(&digest_of(v));
    h.update(&v.backup_time_ns.to_le_bytes());
    *h.finalize().as_bytes()
}

/// A vault GUID as it appears in a record's file name.
#[must_use]
pub fn hex_of(vault: ServerGuid) -> String {
    vault.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// The record's path for vault `vault`.
#[must_use]
pub fn path(state_dir: &Path, vault: ServerGuid) -> PathBuf {
    state_dir.join(format!("vault-own-{}.bin", hex_of(vault)))
}

/// What to do about a record that cannot be used.
const ADVICE: &str = "move it away, then run `tandem query vault`: if it reports versions not written by this client and they are this node's, `tandem set vault --resend` sends them";

/// The entries recorded for vault `vault` (none when there is no record).
///
/// # Errors
/// A record that cannot be read or is not one, naming the file.
pub fn load(state_dir: &Path, vault: ServerGuid) -> Result<Ledger, String> {
    let path = path(state_dir, vault);
    let bytes = match tandem_os::atomic_file::read_small(&path, MAX_BYTES) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ledger::default()),
        Err(e) => return Err(format!("cannot read {}: {e}; {ADVICE}", path.display())),
    };
    // Created but never written (a crash right after the create).
    if bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
        return Ok(Ledger::default());
    }
    let damaged = || {
        format!(
            "{} is not a record of this client's vault writes; {ADVICE}",
            path.display()
        )
    };
    let body = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(damaged)?;
    let mut ledger = Ledger::default();
    // A trailing partial entry is an append a crash cut short; entries of
    // zeros, an append whose data never reached the disk.
    for entry in body.chunks_exact(ENTRY) {
        let (kind, rest) = entry.split_at(1);
        let (value, at) = rest.split_at(32);
        let at = i64::from_le_bytes(at.try_into().map_err(|_| damaged())?);
        match kind[0] {
            CONTENT => {
                let digest: Digest = value.try_into().map_err(|_| damaged())?;
                ledger.contents.entry(digest).or_default().push(at);
            }
            DEACTIVATED => {
                ledger
                    .deactivated
                    .insert(ObjectId::from_slice(&value[..16]).map_err(|_| damaged())?);
            }
            0 if entry.iter().all(|&b| b == 0) => {}
            _ => return Err(damaged()),
        }
    }
    for times in ledger.contents.values_mut() {
        times.sort_unstable();
    }
    Ok(ledger)
}

/// Appends `entries` to the record for vault `vault`, durably.
///
/// # Errors
/// I/O failures, or a record grown past its limit, naming the file.
pub fn append(state_dir: &Path, vault: ServerGuid, entries: &[Entry]) -> Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    // A backup commits several batches at once: one append at a time, from
    // reading the length to the sync. (Another process cannot append: the
    // vault's lock is held for a whole command.)
    static APPENDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = APPENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    crate::state_dir::ensure(state_dir).map_err(|e| e.to_string())?;
    let path = path(state_dir, vault);
    let failed = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file; {ADVICE}",
            path.display()
        ));
    }
    let len = meta.len();
    let magic = MAGIC.len() as u64;
    if len >= magic {
        let mut head = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0).map_err(failed)?;
        if &head != MAGIC {
            return Err(format!(
                "{} is not a record of this client's vault writes (or is from another version); {ADVICE}",
                path.display()
            ));
        }
    }
    // Whole entries only: an append a crash cut short is cut back, so the
    // entries after it are read where they were written.
    let keep = if len < magic {
        0
    } else {
        magic + (len - magic) / ENTRY as u64 * ENTRY as u64
    };
    let adding = (entries.len() * ENTRY) as u64 + if keep == 0 { magic } else { 0 };
    if keep + adding > MAX_BYTES {
        return Err(format!(
            "{} would pass {MAX_BYTES} bytes: this client wrote that much to the vault alone since its last sync with the server; bring the server back (or move the vault away) before more backups go to the vault alone",
            path.display()
        ));
    }
    if keep != len {
        file.set_len(keep).map_err(failed)?;
    }
    let mut bytes = Vec::with_capacity(usize::try_from(adding).unwrap_or(0));
    if keep == 0 {
        bytes.extend_from_slice(MAGIC);
    }
    let now = crate::db::now_ns();
    for entry in entries {
        match entry {
            Entry::Content(d, at) => {
                bytes.push(CONTENT);
                bytes.extend_from_slice(d);
                bytes.extend_from_slice(&at.to_le_bytes());
            }
            Entry::Deactivated(id) => {
                bytes.push(DEACTIVATED);
                bytes.extend_from_slice(&id.0);
                bytes.extend_from_slice(&[0; 16]);
                bytes.extend_from_slice(&now.to_le_bytes());
            }
        }
    }
    let mut writer = &file;
    std::io::Seek::seek(&mut writer, std::io::SeekFrom::Start(keep)).map_err(failed)?;
    writer.write_all(&bytes).map_err(failed)?;
    file.sync_data().map_err(failed)?;
    if keep == 0 {
        // The new name itself must survive a crash too.
        std::fs::File::open(state_dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

/// Forgets the record for vault `vault` (after a complete pull).
///
/// # Errors
/// I/O failures other than a record that is not there.
pub fn clear(state_dir: &Path, vault: ServerGuid) -> Result<(), String> {
    let path = path(state_dir, vault);
    tandem_os::atomic_file::remove_if_present(&path)
        .map_err(|e| format!("cannot remove {}: {e}", path.display()))
}

/// The entries for a commit about to go to the vault: a digest of each
/// version it stores, with the time now.
#[must_use]
pub fn before_commit(request: &pb::CommitObjectsRequest) -> Vec<Entry> {
    let now = crate::db::now_ns();
    request
        .objects
        .iter()
        .map(|o| {
            Entry::Content(
                digest(&request.filespace, o.attrs.as_ref(), &o.chunk_ids),
                now,
            )
        })
        .collect()
}

/// Which of `versions` (the vault's, by id) this client stored, by its
/// `ledger`: each content entry vouches for the earliest version with its
/// digest stored within [`STORE_WINDOW_NS`] after it, and for no other.
#[must_use]
pub fn stored_by_us(
    ledger: &Ledger,
    versions: &HashMap<ObjectId, pb::ObjectVersion>,
) -> HashSet<ObjectId> {
    if ledger.contents.is_empty() {
        return HashSet::new();
    }
    let mut candidates: HashMap<Digest, Vec<(i64, ObjectId)>> = HashMap::new();
    for (id, v) in versions {
        let d = digest_of(v);
        if ledger.contents.contains_key(&d) {
            candidates
                .entry(d)
                .or_default()
                .push((v.backup_time_ns, *id));
        }
    }
    let mut ours = HashSet::new();
    for (d, mut found) in candidates {
        found.sort_unstable();
        let mut found = found.into_iter().peekable();
        for &at in &ledger.contents[&d] {
            // Versions stored before this entry was written are not its own.
            while found.next_if(|(t, _)| *t < at).is_some() {}
            if let Some((_, id)) = found.next_if(|(t, _)| *t <= at.saturating_add(STORE_WINDOW_NS))
            {
                ours.insert(id);
            }
        }
    }
    ours
}

/// The entries for a commit the vault took: the versions it made inactive.
///
/// # Errors
/// A malformed id in the reply (the record must not miss one).
pub fn after_commit(reply: &pb::CommitObjectsResponse) -> Result<Vec<Entry>, String> {
    reply
        .deactivated_ids
        .iter()
        .map(|raw| {
            ObjectId::from_slice(raw)
                .map(Entry::Deactivated)
                .map_err(|e| format!("the vault's commit named a malformed version id: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(path: &str) -> pb::ObjectAttrs {
        pb::ObjectAttrs {
            path: path.into(),
            kind: pb::ObjectKind::File as i32,
            size: 5,
            mode: 0o644,
            mtime_ns: 7,
            ..Default::default()
        }
    }

    fn digests(ledger: Ledger) -> HashSet<Digest> {
        ledger.contents.into_keys().collect()
    }

    #[test]
    fn entries_read_back_per_vault_and_clear_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let vault = ServerGuid([1; 16]);
        assert!(load(&state, vault).unwrap().is_empty());
        append(&state, vault, &[Entry::Content([3; 32], 10)]).unwrap();
        let more = [
            Entry::Deactivated(ObjectId([4; 16])),
            Entry::Content([5; 32], 20),
            Entry::Content([3; 32], 5),
        ];
        append(&state, vault, &more).unwrap();
        append(&state, vault, &[]).unwrap();
        let back = load(&state, vault).unwrap();
        assert_eq!(
            back.contents,
            HashMap::from([([3; 32], vec![5, 10]), ([5; 32], vec![20])])
        );
        assert_eq!(back.deactivated, HashSet::from([ObjectId([4; 16])]));
        assert!(load(&state, ServerGuid([2; 16])).unwrap().is_empty());
        clear(&state, vault).unwrap();
        assert!(load(&state, vault).unwrap().is_empty());
        clear(&state, vault).unwrap();
    }

    #[test]
    fn an_append_cut_short_is_cut_back_and_later_entries_read_right() {
        let dir = tempfile::tempdir().unwrap();
        let vault = ServerGuid([1; 16]);
        let two = [Entry::Content([3; 32], 1), Entry::Content([4; 32], 1)];
        append(dir.path(), vault, &two).unwrap();
        let file = path(dir.path(), vault);
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 5]).unwrap();
        let loaded = digests(load(dir.path(), vault).unwrap());
        assert_eq!(loaded, HashSet::from([[3; 32]]));
        append(dir.path(), vault, &[Entry::Content([6; 32], 2)]).unwrap();
        let loaded = digests(load(dir.path(), vault).unwrap());
        assert_eq!(loaded, HashSet::from([[3; 32], [6; 32]]));
        // Entries of zeros (data lost in a crash): skipped, and what is
        // appended after them still counts.
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.extend_from_slice(&[0; ENTRY * 2]);
        std::fs::write(&file, &bytes).unwrap();
        append(dir.path(), vault, &[Entry::Content([8; 32], 4)]).unwrap();
        let loaded = digests(load(dir.path(), vault).unwrap());
        assert_eq!(loaded, HashSet::from([[3; 32], [6; 32], [8; 32]]));
        // Created and never written: empty, and usable.
        std::fs::write(&file, b"").unwrap();
        assert!(load(dir.path(), vault).unwrap().is_empty());
        append(dir.path(), vault, &[Entry::Content([7; 32], 3)]).unwrap();
        let loaded = digests(load(dir.path(), vault).unwrap());
        assert_eq!(loaded, HashSet::from([[7; 32]]));
    }

    #[test]
    fn appends_from_many_threads_at_once_all_count() {
        let dir = tempfile::tempdir().unwrap();
        let vault = ServerGuid([1; 16]);
        std::thread::scope(|scope| {
            for t in 0..8u8 {
                let state = dir.path();
                scope.spawn(move || {
                    for n in 0..20u8 {
                        let mut d = [t; 32];
                        d[1] = n;
                        append(state, vault, &[Entry::Content(d, 1)]).unwrap();
                    }
                });
            }
        });
        assert_eq!(load(dir.path(), vault).unwrap().contents.len(), 160);
    }

    #[test]
    fn a_file_that_is_not_a_record_or_is_a_link_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let vault = ServerGuid([1; 16]);
        let file = path(dir.path(), vault);
        std::fs::write(&file, b"something else entirely, and long").unwrap();
        let err = load(dir.path(), vault).unwrap_err();
        assert!(
            err.contains("vault-own-") && err.contains("--resend"),
            "{err}"
        );
        let refused = append(dir.path(), vault, &[Entry::Content([3; 32], 1)]).unwrap_err();
        assert!(refused.contains("vault-own-"), "{refused}");
        std::fs::remove_file(&file).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        assert!(append(dir.path(), vault, &[Entry::Content([3; 32], 1)]).is_err());
        assert!(load(dir.path(), vault).is_err());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"");
    }

    #[test]
    fn each_content_entry_vouches_for_one_version_stored_just_after_it() {
        let version = |at: i64| pb::ObjectVersion {
            filespace: "/fs".into(),
            attrs: Some(attrs("/fs/a")),
            backup_time_ns: at,
            ..Default::default()
        };
        let d = digest_of(&version(0));
        let ledger = Ledger {
            contents: HashMap::from([(d, vec![100, 5_000])]),
            ..Default::default()
        };
        let id = |n: u8| ObjectId([n; 16]);
        let versions = HashMap::from([
            // Stored before any entry.
            (id(1), version(50)),
            // The first entry's.
            (id(2), version(110)),
            // A copy: no entry is left for it.
            (id(3), version(120)),
            // The second entry's.
            (id(4), version(5_010)),
            // Too late for any entry.
            (id(5), version(5_000 + STORE_WINDOW_NS + 1)),
        ]);
        assert_eq!(
            stored_by_us(&ledger, &versions),
            HashSet::from([id(2), id(4)])
        );
    }

    #[test]
    fn the_digest_changes_with_every_part_of_a_version() {
        let chunks = vec![vec![1u8; 32], vec![2u8; 32]];
        let base = digest("/fs", Some(&attrs("/fs/a")), &chunks);
        assert_eq!(base, digest("/fs", Some(&attrs("/fs/a")), &chunks));
        assert_ne!(base, digest("/fs2", Some(&attrs("/fs/a")), &chunks));
        assert_ne!(base, digest("/fs", Some(&attrs("/fs/b")), &chunks));
        let mut other = attrs("/fs/a");
        other.mode = 0o4755;
        assert_ne!(base, digest("/fs", Some(&other), &chunks));
        let mut other = attrs("/fs/a");
        other.extra = Some(pb::ObjectExtra {
            xattrs: vec![pb::Xattr {
                name: b"user.x".to_vec(),
                value: b"1".to_vec(),
            }],
            ..Default::default()
        });
        assert_ne!(base, digest("/fs", Some(&other), &chunks));
        // No extra and an empty one are the same version.
        let mut empty = attrs("/fs/a");
        empty.extra = Some(pb::ObjectExtra::default());
        assert_eq!(base, digest("/fs", Some(&empty), &chunks));
        let swapped = vec![vec![2u8; 32], vec![1u8; 32]];
        assert_ne!(base, digest("/fs", Some(&attrs("/fs/a")), &swapped));
        assert_ne!(base, digest("/fs", Some(&attrs("/fs/a")), &chunks[..1]));
    }
}
