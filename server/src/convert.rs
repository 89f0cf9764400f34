//! Protobuf <-> domain conversions, with validation of everything a client or
//! partner sends: the one edge between the wire types and the server's own.
//! The services use it on the way in and out, and so does the replication
//! client that talks to a partner.

mod schedule;
pub mod vocab;

pub use schedule::{event_to_pb, schedule_to_pb, scheduled_run_to_pb};

use prost::Message;
use tandem_proto::pb;
use tandem_proto::{ChunkId, StoredChunk};

use crate::catalog::{FilespaceTimes, Occupancy, VersionState};
use crate::error::ServerError;
use crate::expire::ExpirePreview;
use crate::model::{
    ArchiveCopy, Filespace, NewVersion, Node, NodeUsage, ObjectAttrs, ObjectKind, ReplRun,
    StoredVersion,
};
use tandem_proto::ObjectId;
use tandem_replication::ObjectState;

/// Checks that a client-supplied path is absolute and normalised: no empty,
/// `.` or `..` components and no NUL, also once escaped bytes are decoded,
/// and in the canonical encoding of [`tandem_proto::names`], so no stored
/// path can later lead a restore outside its destination.
///
/// # Errors
/// [`ServerError::InvalidArgument`] naming the path.
pub fn check_path(path: &str) -> Result<(), ServerError> {
    // Checked first: the other messages show the path.
    if path.len() > tandem_proto::MAX_PATH_BYTES {
        return Err(ServerError::InvalidArgument(format!(
            "a path of {} bytes is longer than the {} a stored path may have",
            path.len(),
            tandem_proto::MAX_PATH_BYTES
        )));
    }
    let bad = |why: &str| {
        // At most the first 200 characters, so an answer stays short.
        let shown: String = path.chars().take(200).collect();
        let cut = if shown.len() < path.len() { "..." } else { "" };
        ServerError::InvalidArgument(format!("path {shown:?}{cut} {why}"))
    };
    if !path.starts_with('/') {
        return Err(bad("is not absolute"));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if path == "/" {
        return Ok(());
    }
    for part in path[1..].split('/') {
        tandem_proto::names::check_component(part).map_err(bad)?;
    }
    Ok(())
}

/// The longest archive description accepted, in bytes (TSM allows 254
/// characters).
pub const MAX_DESCRIPTION_BYTES: usize = 255;

/// Checks an archive description: at most [`MAX_DESCRIPTION_BYTES`], no
/// control characters (it is printed in listings and logs as it is). An
/// empty one is a query's "any description", so a copy may not have it.
///
/// # Errors
/// [`ServerError::InvalidArgument`] naming what is wrong.
pub fn check_description(description: &str) -> Result<(), ServerError> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(ServerError::InvalidArgument(format!(
            "an archive description of {} bytes is longer than the {MAX_DESCRIPTION_BYTES} allowed",
            description.len()
        )));
    }
    if let Some(c) = description.chars().find(|c| c.is_control()) {
        return Err(ServerError::InvalidArgument(format!(
            "archive description {description:?} contains the control character {c:?}; use printable text"
        )));
    }
    Ok(())
}

/// Refuses a list of `len` `what` longer than `max` per call.
///
/// # Errors
/// [`ServerError::InvalidArgument`] saying what to do.
pub fn at_most(len: usize, max: usize, what: &str) -> Result<(), ServerError> {
    if len > max {
        return Err(ServerError::InvalidArgument(format!(
            "{len} {what} in one call; at most {max} are accepted, send the rest in further calls"
        )));
    }
    Ok(())
}

/// Converts the chunk ids a `FindMissingChunks` or `ReadChunks` call asks
/// about: at most [`tandem_proto::MAX_CHUNK_IDS_PER_CALL`] of them.
///
/// # Errors
/// [`ServerError::InvalidArgument`] for too many ids or a malformed one.
pub fn asked_chunk_ids(raw: &[Vec<u8>]) -> Result<Vec<ChunkId>, ServerError> {
    at_most(raw.len(), tandem_proto::MAX_CHUNK_IDS_PER_CALL, "chunk ids")?;
    chunk_ids(raw)
}

/// Converts and validates the chunk id list of a request.
///
/// # Errors
/// [`ServerError::InvalidArgument`] for an id that is not 32 bytes.
pub fn chunk_ids(raw: &[Vec<u8>]) -> Result<Vec<ChunkId>, ServerError> {
    raw.iter().map(|b| chunk_id(b)).collect()
}

/// One chunk id as sent; an id that is not 32 bytes is an invalid argument.
fn chunk_id(raw: &[u8]) -> Result<ChunkId, ServerError> {
    ChunkId::from_slice(raw).map_err(|e| ServerError::InvalidArgument(e.to_string()))
}

/// Converts the chunks of an upload message. Only the ids are checked here;
/// the bytes are checked against them when they are stored.
///
/// # Errors
/// [`ServerError::InvalidArgument`] for an id that is not 32 bytes.
pub fn chunks_from_pb(chunks: Vec<pb::Chunk>) -> Result<Vec<StoredChunk>, ServerError> {
    chunks
        .into_iter()
        .map(|c| {
            Ok(StoredChunk {
                id: chunk_id(&c.id)?,
                data: c.data,
                raw_len: c.raw_len,
            })
        })
        .collect()
}

/// [`chunks_from_pb`] for a received upload message, with the chunks' bytes
/// moved into one buffer of exactly their size.
///
/// Decoded in place, each chunk's bytes are a slice of the transport's
/// receive buffer, and that whole allocation (with the start of the next
/// message and the room it grew by) stays in use until the last chunk of the
/// message is stored. The upload memory budget (`ingest_memory_mib`) counts
/// chunk bytes, so those buffers could hold about twice the budget: a heap
/// profile of 16 nodes backing up at once found 497 MB of them against the
/// default 256 MiB. Copied, what a stream holds is what the budget counts,
/// and the transport takes its buffer back for the next message. The copy
/// is one allocation per message, small beside hashing and decompressing
/// it; a message over the upload limit is refused before it is made.
///
/// # Errors
/// [`ServerError::InvalidArgument`] for an id that is not 32 bytes, or for
/// more chunk data than a message may carry.
pub fn upload_chunks_from_pb(chunks: Vec<pb::Chunk>) -> Result<Vec<StoredChunk>, ServerError> {
    let total = chunks.iter().map(|c| c.data.len()).sum();
    crate::repository::ingest::check_message_data(total)?;
    let mut copy = prost::bytes::BytesMut::with_capacity(total);
    let mut parsed = Vec::with_capacity(chunks.len());
    for c in chunks {
        let id = chunk_id(&c.id)?;
        copy.extend_from_slice(&c.data);
        parsed.push((id, c.data.len(), c.raw_len));
    }
    let mut copy = copy.freeze();
    Ok(parsed
        .into_iter()
        .map(|(id, len, raw_len)| StoredChunk {
            id,
            data: copy.split_to(len),
            raw_len,
        })
        .collect())
}

/// Converts a stored chunk for the wire.
pub fn chunk_to_pb(chunk: StoredChunk) -> pb::Chunk {
    pb::Chunk {
        id: chunk.id.as_slice().to_vec(),
        data: chunk.data,
        raw_len: chunk.raw_len,
    }
}

/// Converts a new object of a commit, checking it belongs under `filespace`.
///
/// # Errors
/// [`ServerError::InvalidArgument`] describing the malformed field.
pub fn new_version_from_pb(obj: pb::NewObject, filespace: &str) -> Result<NewVersion, ServerError> {
    let attrs = obj
        .attrs
        .ok_or_else(|| ServerError::InvalidArgument("object without attributes".into()))?;
    let attrs = attrs_from_pb(attrs)?;
    if !crate::catalog::path_is_within(&attrs.path, filespace) {
        return Err(ServerError::InvalidArgument(format!(
            "path {:?} is outside filespace {filespace:?}",
            attrs.path
        )));
    }
    let chunks = chunk_ids(&obj.chunk_ids)?;
    if attrs.kind != ObjectKind::File && !chunks.is_empty() {
        return Err(ServerError::InvalidArgument(format!(
            "{:?} is not a file but has content chunks",
            attrs.path
        )));
    }
    Ok(NewVersion { attrs, chunks })
}

/// Longest extended-attribute name Linux allows (`XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest extended-attribute value Linux allows (`XATTR_SIZE_MAX`).
pub const XATTR_VALUE_MAX: usize = 64 * 1024;
/// Largest encoded [`pb::ObjectExtra`] of one object.
pub const EXTRA_MAX: usize = tandem_proto::MAX_EXTRA_BYTES;

/// Checks an object's extra part and returns it encoded for the catalog
/// (empty when it carries nothing).
///
/// # Errors
/// [`ServerError::InvalidArgument`] naming the path and the limit broken.
fn extra_from_pb(
    path: &str,
    kind: ObjectKind,
    extra: Option<pb::ObjectExtra>,
) -> Result<Vec<u8>, ServerError> {
    let Some(extra) = extra else {
        return Ok(Vec::new());
    };
    let bad = |why: String| ServerError::InvalidArgument(format!("object {path:?}: {why}"));
    let device = matches!(kind, ObjectKind::CharDevice | ObjectKind::BlockDevice);
    if extra.rdev != 0 && !device {
        return Err(bad(
            "a device number on an object that is not a device".into()
        ));
    }
    let file_only = extra.hard_link_group != 0
        || extra.hard_link_names != 0
        || extra.sparse
        || extra.changed_during_backup;
    if file_only && kind != ObjectKind::File {
        return Err(bad(
            "a hard-link group, sparse or changed-during-backup mark on an object that is not a file"
                .into(),
        ));
    }
    for x in &extra.xattrs {
        if x.name.is_empty() || x.name.len() > XATTR_NAME_MAX || x.name.contains(&0) {
            return Err(bad(format!(
                "extended attribute name {:?} must be 1-{XATTR_NAME_MAX} bytes without NUL",
                String::from_utf8_lossy(&x.name)
            )));
        }
        if x.value.len() > XATTR_VALUE_MAX {
            return Err(bad(format!(
                "extended attribute {:?} has {} bytes, more than {XATTR_VALUE_MAX}",
                String::from_utf8_lossy(&x.name),
                x.value.len()
            )));
        }
    }
    if extra == pb::ObjectExtra::default() {
        return Ok(Vec::new());
    }
    let encoded = extra.encode_to_vec();
    if encoded.len() > EXTRA_MAX {
        return Err(bad(format!(
            "its extended attributes take {} bytes, more than {EXTRA_MAX}",
            encoded.len()
        )));
    }
    Ok(encoded)
}

/// Decodes a stored extra part; `None` when there is none. A stored value
/// that no longer decodes (it was checked on the way in) is dropped rather
/// than failing the listing it is part of.
fn extra_to_pb(extra: &[u8]) -> Option<pb::ObjectExtra> {
    if extra.is_empty() {
        return None;
    }
    pb::ObjectExtra::decode(extra).ok()
}

fn attrs_from_pb(a: pb::ObjectAttrs) -> Result<ObjectAttrs, ServerError> {
    check_path(&a.path)?;
    // Linux allows 4 KiB; the bound for paths leaves room for the encoding.
    if a.link_target.len() > tandem_proto::MAX_PATH_BYTES {
        return Err(ServerError::InvalidArgument(format!(
            "the link target of {:?} has {} bytes, more than {}",
            a.path,
            a.link_target.len(),
            tandem_proto::MAX_PATH_BYTES
        )));
    }
    if !tandem_proto::names::is_canonical(&a.link_target) || a.link_target.contains('\0') {
        return Err(ServerError::InvalidArgument(format!(
            "the link target of {:?} is not in canonical form or contains NUL",
            a.path
        )));
    }
    let kind = match pb::ObjectKind::try_from(a.kind) {
        Ok(pb::ObjectKind::File) => ObjectKind::File,
        Ok(pb::ObjectKind::Directory) => ObjectKind::Directory,
        Ok(pb::ObjectKind::Symlink) => ObjectKind::Symlink,
        Ok(pb::ObjectKind::Fifo) => ObjectKind::Fifo,
        Ok(pb::ObjectKind::CharDevice) => ObjectKind::CharDevice,
        Ok(pb::ObjectKind::BlockDevice) => ObjectKind::BlockDevice,
        _ => {
            return Err(ServerError::InvalidArgument(format!(
                "object {:?} has unknown kind {}",
                a.path, a.kind
            )));
        }
    };
    let extra = extra_from_pb(&a.path, kind, a.extra)?;
    Ok(ObjectAttrs {
        path: a.path,
        kind,
        size: a.size,
        mode: a.mode,
        mtime_ns: a.mtime_ns,
        uid: a.uid,
        gid: a.gid,
        link_target: a.link_target,
        extra,
    })
}

fn attrs_to_pb(a: ObjectAttrs) -> pb::ObjectAttrs {
    let kind = match a.kind {
        ObjectKind::File => pb::ObjectKind::File,
        ObjectKind::Directory => pb::ObjectKind::Directory,
        ObjectKind::Symlink => pb::ObjectKind::Symlink,
        ObjectKind::Fifo => pb::ObjectKind::Fifo,
        ObjectKind::CharDevice => pb::ObjectKind::CharDevice,
        ObjectKind::BlockDevice => pb::ObjectKind::BlockDevice,
    };
    pb::ObjectAttrs {
        path: a.path,
        kind: kind as i32,
        size: a.size,
        mode: a.mode,
        mtime_ns: a.mtime_ns,
        uid: a.uid,
        gid: a.gid,
        link_target: a.link_target,
        extra: extra_to_pb(&a.extra),
    }
}

/// Converts a coverage row for the wire, its age as of `now_ns`.
pub fn coverage_to_pb(r: crate::coverage::CoverageRow, now_ns: i64) -> pb::CoverageRow {
    let age_ns = if r.copy_ns == 0 {
        0
    } else {
        now_ns.saturating_sub(r.copy_ns).max(0)
    };
    pb::CoverageRow {
        node: r.node,
        filespace: r.filespace,
        replmode: r.role.to_pb(),
        replstate: r.replstate.to_pb(),
        partner: r.partner,
        last_backup_end_ns: r.last_backup_end_ns,
        copy_ns: r.copy_ns,
        copy_age_secs: u64::try_from(age_ns / 1_000_000_000).unwrap_or(0),
        coverage: r.coverage.word().to_string(),
    }
}

/// Converts an archive copy for the wire.
pub fn archive_to_pb(a: ArchiveCopy) -> pb::ArchiveCopy {
    pb::ArchiveCopy {
        version: Some(version_to_pb(a.version)),
        description: a.description,
        expires_ns: a.expires_ns,
    }
}

/// Converts a stored version for the wire.
pub fn version_to_pb(v: StoredVersion) -> pb::ObjectVersion {
    pb::ObjectVersion {
        object_id: v.object_id.0.to_vec(),
        filespace: v.filespace,
        attrs: Some(attrs_to_pb(v.attrs)),
        backup_time_ns: v.backup_ns,
        active: v.active,
        deactivated_ns: v.deactivated_ns,
        chunk_ids: v.chunks.iter().map(|c| c.as_slice().to_vec()).collect(),
    }
}

/// Converts a replicated version received from a source, validating it.
///
/// # Errors
/// [`ServerError::InvalidArgument`] describing the malformed field.
pub fn stored_version_from_pb(v: pb::ObjectVersion) -> Result<StoredVersion, ServerError> {
    check_path(&v.filespace)?;
    let attrs = attrs_from_pb(
        v.attrs
            .ok_or_else(|| ServerError::InvalidArgument("version without attributes".into()))?,
    )?;
    if !crate::catalog::path_is_within(&attrs.path, &v.filespace) {
        return Err(ServerError::InvalidArgument(format!(
            "path {:?} is outside filespace {:?}",
            attrs.path, v.filespace
        )));
    }
    Ok(StoredVersion {
        object_id: ObjectId::from_slice(&v.object_id)
            .map_err(|e| ServerError::InvalidArgument(e.to_string()))?,
        filespace: v.filespace,
        attrs,
        backup_ns: v.backup_time_ns,
        active: v.active,
        deactivated_ns: v.deactivated_ns,
        chunks: chunk_ids(&v.chunk_ids)?,
    })
}

/// Converts a version a node's vault sync sends (or a vault is given by
/// its own client), validating it like [`stored_version_from_pb`] and its
/// times: none after `latest` (the receiver's clock plus the allowed skew),
/// an inactive version's end not before its start.
///
/// # Errors
/// [`ServerError::InvalidArgument`] naming the version and what is wrong.
pub fn vault_version_from_pb(
    v: pb::ObjectVersion,
    latest: i64,
) -> Result<StoredVersion, ServerError> {
    let v = stored_version_from_pb(v)?;
    let times_ok = v.backup_ns > 0
        && v.backup_ns <= latest
        && if v.active {
            v.deactivated_ns == 0
        } else {
            v.deactivated_ns >= v.backup_ns && v.deactivated_ns <= latest
        };
    if !times_ok {
        return Err(ServerError::InvalidArgument(format!(
            "version {} of {:?} has impossible times (backed up {}, inactive since {}); a vault sync sends the times its vault recorded, none in the future",
            v.object_id, v.attrs.path, v.backup_ns, v.deactivated_ns
        )));
    }
    if v.attrs.kind != crate::model::ObjectKind::File && !v.chunks.is_empty() {
        return Err(ServerError::InvalidArgument(format!(
            "{:?} is not a file but has content chunks",
            v.attrs.path
        )));
    }
    Ok(v)
}

/// Converts a filespace for the wire.
pub fn filespace_to_pb(f: Filespace) -> pb::Filespace {
    pb::Filespace {
        name: f.name,
        active_objects: f.active_objects,
        active_bytes: f.active_bytes,
        last_backup_start_ns: f.last_backup_start_ns,
        last_backup_end_ns: f.last_backup_end_ns,
        last_replication_ns: f.last_repl_ns,
    }
}

/// Converts a version's state received in a target's inventory.
///
/// # Errors
/// [`ServerError::InvalidArgument`] for a malformed object id.
pub fn version_state_from_pb(v: &pb::VersionState) -> Result<VersionState, ServerError> {
    Ok(VersionState {
        object_id: ObjectId::from_slice(&v.object_id)
            .map_err(|e| ServerError::InvalidArgument(e.to_string()))?,
        active: v.active,
        deactivated_ns: v.deactivated_ns,
        size: v.size,
    })
}

/// Converts a held version's state, with its filespace, for a target's inventory.
pub fn version_state_to_pb(filespace: String, v: VersionState) -> pb::VersionState {
    pb::VersionState {
        object_id: v.object_id.0.to_vec(),
        active: v.active,
        deactivated_ns: v.deactivated_ns,
        filespace,
        size: v.size,
    }
}

/// Converts a state change a source sends.
///
/// # Errors
/// [`ServerError::InvalidArgument`] for a malformed object id.
pub fn object_state_from_pb(v: &pb::VersionState) -> Result<ObjectState, ServerError> {
    Ok(version_state_from_pb(v)?.into())
}

/// Converts a state change for the wire.
pub fn object_state_to_pb(s: &ObjectState) -> pb::VersionState {
    pb::VersionState {
        object_id: s.object_id.0.to_vec(),
        active: s.active,
        deactivated_ns: s.deactivated_ns,
        ..Default::default()
    }
}

/// Converts a filespace's backup times for the end of a run.
pub fn filespace_times_to_pb(f: FilespaceTimes) -> pb::FilespaceTimes {
    pb::FilespaceTimes {
        name: f.name,
        last_backup_start_ns: f.last_backup_start_ns,
        last_backup_end_ns: f.last_backup_end_ns,
    }
}

/// Converts the filespace times a source sends, checking each name.
///
/// # Errors
/// [`ServerError::InvalidArgument`] for a malformed filespace name.
pub fn filespace_times_from_pb(f: pb::FilespaceTimes) -> Result<FilespaceTimes, ServerError> {
    check_path(&f.name)?;
    Ok(FilespaceTimes {
        name: f.name,
        last_backup_start_ns: f.last_backup_start_ns,
        last_backup_end_ns: f.last_backup_end_ns,
    })
}

/// A node with its usage, as `query node` shows it; `pool` is the name of
/// its storage pool.
pub fn node_to_pb(node: Node, usage: NodeUsage, pool: String) -> pb::NodeInfo {
    pb::NodeInfo {
        pool,
        name: node.name,
        locked: node.locked,
        registered_ns: node.registered_ns,
        last_logon_ns: node.last_logon_ns,
        failed_logons: node.failed_logons,
        verexists: node.policy.verexists,
        verdeleted: node.policy.verdeleted,
        retextra: node.policy.retextra,
        retonly: node.policy.retonly,
        retver: node.policy.retver,
        filespaces: usage.filespaces,
        active_objects: usage.active_objects,
        total_versions: usage.total_versions,
        replstate: node.replstate.to_pb(),
        replmode: node.replmode.to_pb(),
        replrule: node.replrule.to_pb(),
    }
}

/// A replication run, as `replicate node` and `query replication` show it.
pub fn run_to_pb(r: ReplRun) -> pb::ReplicationRun {
    pb::ReplicationRun {
        id: u64::try_from(r.id).unwrap_or(0),
        node: r.node,
        target: r.target,
        started_ns: r.started_ns,
        ended_ns: r.ended_ns,
        state: r.state.to_pb(),
        objects_sent: r.objects_sent,
        bytes_sent: r.bytes_sent,
        chunks_skipped: r.chunks_skipped,
        objects_deleted: r.objects_deleted,
        states_updated: r.states_updated,
        message: r.message,
    }
}

/// An expiration preview as `PreviewExpiration` answers it.
pub fn preview_to_pb(p: ExpirePreview) -> pb::ExpirationPreview {
    pb::ExpirationPreview {
        versions: p.versions,
        archives: p.archives,
        logical_bytes: p.released.logical_bytes,
        chunks: p.released.chunks,
        stored_bytes: p.released.stored_bytes,
        listed: p
            .listed
            .into_iter()
            .map(|v| pb::ExpiringVersion {
                node: v.node,
                filespace: v.filespace,
                path: v.path,
                backup_ns: v.backup_ns,
                deactivated_ns: v.deactivated_ns,
                size: v.size,
            })
            .collect(),
    }
}

/// One filespace's occupancy as `QueryOccupancy` answers it.
pub fn occupancy_to_pb(o: Occupancy) -> pb::Occupancy {
    pb::Occupancy {
        node: o.node,
        filespace: o.filespace,
        files: o.files,
        versions: o.versions,
        logical_bytes: o.logical_bytes,
        archives: o.archives,
        archive_bytes: o.archive_bytes,
        chunks: o.chunks,
        stored_bytes: o.stored_bytes,
        pools: o.pools,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_normalised() {
        assert!(check_path("/a/b c/d").is_ok());
        assert!(check_path("/").is_ok());
        assert!(check_path("/caf\u{10FFE9}/x").is_ok());
        for bad in [
            "a/b",
            "/a/../b",
            "/a/./b",
            "/a//b",
            "/a/",
            "/a\0b",
            "",
            "/d/\u{10FF2E}\u{10FF2E}/x",
            "/d/\u{10FF2F}etc",
            "/d/a\u{10FF41}",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn attrs_with(kind: pb::ObjectKind, extra: pb::ObjectExtra) -> pb::ObjectAttrs {
        pb::ObjectAttrs {
            path: "/a".into(),
            kind: kind as i32,
            extra: Some(extra),
            ..Default::default()
        }
    }

    fn xattr(name: &[u8], value_len: usize) -> pb::Xattr {
        pb::Xattr {
            name: name.to_vec(),
            value: vec![7; value_len],
        }
    }

    #[test]
    fn a_link_target_longer_than_a_path_may_be_is_refused() {
        let mut attrs = attrs_with(pb::ObjectKind::Symlink, pb::ObjectExtra::default());
        attrs.link_target = "a".repeat(tandem_proto::MAX_PATH_BYTES);
        assert!(attrs_from_pb(attrs.clone()).is_ok());
        attrs.link_target.push('a');
        let err = attrs_from_pb(attrs).unwrap_err().to_string();
        assert!(
            err.contains("link target") && err.contains("more than"),
            "{err}"
        );
    }

    #[test]
    fn extra_round_trips_and_an_empty_one_is_not_stored() {
        let extra = pb::ObjectExtra {
            xattrs: vec![xattr(b"user.a", 3), xattr(b"system.posix_acl_access", 28)],
            hard_link_group: 9,
            ..Default::default()
        };
        let stored = attrs_from_pb(attrs_with(pb::ObjectKind::File, extra.clone())).unwrap();
        assert_eq!(attrs_to_pb(stored).extra, Some(extra));
        let empty =
            attrs_from_pb(attrs_with(pb::ObjectKind::File, pb::ObjectExtra::default())).unwrap();
        assert!(empty.extra.is_empty());
        let device = pb::ObjectExtra {
            rdev: 0x0103,
            ..Default::default()
        };
        let stored = attrs_from_pb(attrs_with(pb::ObjectKind::CharDevice, device.clone())).unwrap();
        assert_eq!(stored.kind, ObjectKind::CharDevice);
        assert_eq!(attrs_to_pb(stored).extra, Some(device));
    }

    #[test]
    fn extra_beyond_the_limits_is_refused_with_the_reason() {
        let cases = [
            (pb::ObjectKind::File, vec![xattr(b"", 1)], "name"),
            (pb::ObjectKind::File, vec![xattr(&[b'u'; 256], 1)], "name"),
            (pb::ObjectKind::File, vec![xattr(b"user.\0x", 1)], "name"),
            (
                pb::ObjectKind::File,
                vec![xattr(b"user.big", 65 * 1024)],
                "bytes",
            ),
            (
                pb::ObjectKind::File,
                (0..5)
                    .map(|i| xattr(format!("user.{i}").as_bytes(), 60 * 1024))
                    .collect(),
                "more than",
            ),
        ];
        for (kind, xattrs, why) in cases {
            let err = attrs_from_pb(attrs_with(
                kind,
                pb::ObjectExtra {
                    xattrs,
                    ..Default::default()
                },
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(why) && err.contains("/a"), "{err}");
        }
        let rdev_on_file = pb::ObjectExtra {
            rdev: 1,
            ..Default::default()
        };
        assert!(attrs_from_pb(attrs_with(pb::ObjectKind::File, rdev_on_file)).is_err());
        let group_on_dir = pb::ObjectExtra {
            hard_link_group: 1,
            ..Default::default()
        };
        assert!(attrs_from_pb(attrs_with(pb::ObjectKind::Directory, group_on_dir)).is_err());
    }

    /// A version a vault sync or a pull offers a vault, built to be valid.
    fn vault_version() -> pb::ObjectVersion {
        pb::ObjectVersion {
            object_id: vec![9; 16],
            filespace: "/a".into(),
            attrs: Some(pb::ObjectAttrs {
                path: "/a/f".into(),
                kind: pb::ObjectKind::File as i32,
                ..Default::default()
            }),
            backup_time_ns: 1_000,
            active: true,
            deactivated_ns: 0,
            chunk_ids: vec![vec![1; 32]],
        }
    }

    #[test]
    fn a_vault_version_with_lying_times_kind_or_path_is_refused() {
        let latest = 2_000;
        assert!(vault_version_from_pb(vault_version(), latest).is_ok());
        let refused = |change: fn(&mut pb::ObjectVersion)| {
            let mut v = vault_version();
            change(&mut v);
            vault_version_from_pb(v, latest).unwrap_err().to_string()
        };
        assert!(refused(|v| v.backup_time_ns = 2_001).contains("impossible times"));
        assert!(refused(|v| v.backup_time_ns = 0).contains("impossible times"));
        assert!(refused(|v| v.deactivated_ns = 1_500).contains("impossible times"));
        assert!(
            refused(|v| {
                v.active = false;
                v.deactivated_ns = 999;
            })
            .contains("impossible times")
        );
        assert!(
            refused(|v| {
                v.active = false;
                v.deactivated_ns = 2_001;
            })
            .contains("impossible times")
        );
        assert!(
            refused(|v| v.attrs.as_mut().unwrap().kind = pb::ObjectKind::Directory as i32)
                .contains("not a file")
        );
        assert!(refused(|v| v.attrs.as_mut().unwrap().path = "/b/f".into()).contains("outside"));
        assert!(refused(|v| v.object_id = vec![1; 3]).contains("16"));
    }

    /// What the transport decoded: chunks whose bytes are slices of one
    /// receive buffer, returned beside them.
    fn received(sizes: &[usize]) -> (prost::bytes::Bytes, Vec<pb::Chunk>) {
        let total: usize = sizes.iter().sum();
        // Room past the message, as a receive buffer has for the next one.
        let buffer: Vec<u8> = (0..total + 4096).map(|i| (i % 251) as u8).collect();
        let buffer = prost::bytes::Bytes::from(buffer);
        let mut at = 0;
        let chunks = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let chunk = pb::Chunk {
                    id: vec![i as u8; 32],
                    data: buffer.slice(at..at + len),
                    raw_len: len as u64 * 3,
                };
                at += len;
                chunk
            })
            .collect();
        (buffer, chunks)
    }

    #[test]
    fn an_upload_message_lets_go_of_the_receive_buffer() {
        let (buffer, chunks) = received(&[1000, 0, 70_000, 5]);
        let expected: Vec<(Vec<u8>, Vec<u8>, u64)> = chunks
            .iter()
            .map(|c| (c.id.clone(), c.data.to_vec(), c.raw_len))
            .collect();
        let stored = upload_chunks_from_pb(chunks).unwrap();
        // Only the buffer itself is left: the chunks hold copies.
        assert!(buffer.is_unique(), "a chunk still holds the receive buffer");
        assert_eq!(stored.len(), expected.len());
        for (chunk, (id, data, raw_len)) in stored.iter().zip(&expected) {
            assert_eq!(chunk.id.as_slice(), id.as_slice());
            assert_eq!(&chunk.data[..], data.as_slice());
            assert_eq!(chunk.raw_len, *raw_len);
        }
        assert!(upload_chunks_from_pb(Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn an_upload_message_over_the_limit_is_refused_before_the_copy() {
        let limit = crate::repository::ingest::MAX_UPLOAD_MESSAGE_BYTES;
        let (_, chunks) = received(&[limit / 2, limit / 2 + 1]);
        let err = upload_chunks_from_pb(chunks).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        let (_, chunks) = received(&[limit / 2, limit / 2]);
        assert_eq!(upload_chunks_from_pb(chunks).unwrap().len(), 2);
    }

    #[test]
    fn an_upload_message_with_a_bad_id_is_refused() {
        let (_, mut chunks) = received(&[10, 10]);
        chunks[1].id = vec![7; 31];
        let err = upload_chunks_from_pb(chunks).unwrap_err();
        assert!(matches!(err, ServerError::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains("32"), "{err}");
    }
}
