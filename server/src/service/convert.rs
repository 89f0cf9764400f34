//! Protobuf <-> domain conversions, with validation of everything a client sends.

use tandem_proto::ChunkId;
use tandem_proto::pb;

use crate::error::ServerError;
use crate::model::{Filespace, NewVersion, ObjectAttrs, ObjectKind, StoredVersion};
use tandem_proto::ObjectId;

/// Checks that a client-supplied path is absolute and normalised: no empty,
/// `.` or `..` components and no NUL, so no stored path can later lead a
/// restore outside its destination.
///
/// # Errors
/// [`ServerError::InvalidArgument`] naming the path.
pub fn check_path(path: &str) -> Result<(), ServerError> {
    let bad = |why: &str| ServerError::InvalidArgument(format!("path {path:?} {why}"));
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
        match part {
            "" => return Err(bad("has an empty component")),
            "." | ".." => return Err(bad("has a '.' or '..' component")),
            _ => {}
        }
    }
    Ok(())
}

/// Converts and validates the chunk id list of a request.
///
/// # Errors
/// [`ServerError::InvalidArgument`] for an id that is not 32 bytes.
pub fn chunk_ids(raw: &[Vec<u8>]) -> Result<Vec<ChunkId>, ServerError> {
    raw.iter()
        .map(|b| ChunkId::from_slice(b).map_err(|e| ServerError::InvalidArgument(e.to_string())))
        .collect()
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

fn attrs_from_pb(a: pb::ObjectAttrs) -> Result<ObjectAttrs, ServerError> {
    check_path(&a.path)?;
    let kind = match pb::ObjectKind::try_from(a.kind) {
        Ok(pb::ObjectKind::File) => ObjectKind::File,
        Ok(pb::ObjectKind::Directory) => ObjectKind::Directory,
        Ok(pb::ObjectKind::Symlink) => ObjectKind::Symlink,
        _ => {
            return Err(ServerError::InvalidArgument(format!(
                "object {:?} has unknown kind {}",
                a.path, a.kind
            )));
        }
    };
    Ok(ObjectAttrs {
        path: a.path,
        kind,
        size: a.size,
        mode: a.mode,
        mtime_ns: a.mtime_ns,
        uid: a.uid,
        gid: a.gid,
        link_target: a.link_target,
    })
}

fn attrs_to_pb(a: ObjectAttrs) -> pb::ObjectAttrs {
    let kind = match a.kind {
        ObjectKind::File => pb::ObjectKind::File,
        ObjectKind::Directory => pb::ObjectKind::Directory,
        ObjectKind::Symlink => pb::ObjectKind::Symlink,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_normalised() {
        assert!(check_path("/a/b c/d").is_ok());
        assert!(check_path("/").is_ok());
        for bad in ["a/b", "/a/../b", "/a/./b", "/a//b", "/a/", "/a\0b", ""] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
