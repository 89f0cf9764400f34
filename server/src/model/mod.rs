//! Domain types of the server: what the catalog stores and the services speak.
//! Prost types are converted to these at the service edge.

mod vocab;

pub use vocab::{
    ReplMode, ReplRule, ReplState, RunState, ScheduleAction, SwitchStep, UnknownWord, Vocabulary,
};

use tandem_proto::{ChunkId, ObjectId, ServerGuid};

/// Kind of a stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A regular file with content.
    File,
    /// A directory.
    Directory,
    /// A symbolic link, stored as its target.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl ObjectKind {
    /// Integer code used in the catalog.
    pub fn code(self) -> i64 {
        match self {
            ObjectKind::File => 1,
            ObjectKind::Directory => 2,
            ObjectKind::Symlink => 3,
            ObjectKind::Fifo => 4,
            ObjectKind::CharDevice => 5,
            ObjectKind::BlockDevice => 6,
        }
    }

    /// Inverse of [`ObjectKind::code`].
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(ObjectKind::File),
            2 => Some(ObjectKind::Directory),
            3 => Some(ObjectKind::Symlink),
            4 => Some(ObjectKind::Fifo),
            5 => Some(ObjectKind::CharDevice),
            6 => Some(ObjectKind::BlockDevice),
            _ => None,
        }
    }
}

/// Attributes of one version of an object, as the client saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectAttrs {
    /// Absolute `/`-separated path.
    pub path: String,
    /// File, directory, symlink, FIFO or device.
    pub kind: ObjectKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, Unix nanoseconds.
    pub mtime_ns: i64,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Symlink target (empty otherwise).
    pub link_target: String,
    /// The client's `ObjectExtra` message (device number, extended
    /// attributes, hard-link group), protobuf-encoded and validated; empty
    /// when it has none. The server keeps it as it came.
    pub extra: Vec<u8>,
}

/// A version to store.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// Its attributes.
    pub attrs: ObjectAttrs,
    /// Content chunks in order.
    pub chunks: Vec<ChunkId>,
}

/// A stored version.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    /// Stable id.
    pub object_id: ObjectId,
    /// Filespace name.
    pub filespace: String,
    /// Attributes.
    pub attrs: ObjectAttrs,
    /// When stored, Unix nanoseconds.
    pub backup_ns: i64,
    /// Whether it is the active version of its path.
    pub active: bool,
    /// When it became inactive (0 if active).
    pub deactivated_ns: i64,
    /// Content chunks, when requested.
    pub chunks: Vec<ChunkId>,
}

/// Which versions a query returns.
#[derive(Debug, Clone, Default)]
pub struct VersionQuery {
    /// Filespace name; empty: the one owning `path_prefix`.
    pub filespace: String,
    /// Path equal to or below this.
    pub path_prefix: String,
    /// Include inactive versions.
    pub include_inactive: bool,
    /// Versions active at this time (Unix ns), if set.
    pub point_in_time_ns: Option<i64>,
    /// Load chunk lists.
    pub with_chunks: bool,
}

/// An archive copy (TSM ARCHIVE): a stored version that no backup replaces,
/// with its description and expiry.
#[derive(Debug, Clone)]
pub struct ArchiveCopy {
    /// The copy, as a version: `backup_ns` is when it was archived, and it
    /// is always active.
    pub version: StoredVersion,
    /// The description given when it was archived.
    pub description: String,
    /// When expiration deletes it, Unix ns.
    pub expires_ns: i64,
}

/// Which archive copies to list.
#[derive(Debug, Clone, Default)]
pub struct ArchiveQuery {
    /// Path equal to or below this.
    pub path_prefix: String,
    /// Only copies with exactly this description; empty: any.
    pub description: String,
    /// Load chunk lists.
    pub with_chunks: bool,
}

/// Retention policy values (TSM backup and archive copy groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Versions kept while the file exists.
    pub verexists: u32,
    /// Versions kept after the file is deleted.
    pub verdeleted: u32,
    /// Days an extra inactive version is kept.
    pub retextra: u32,
    /// Days the last inactive version of a deleted file is kept.
    pub retonly: u32,
    /// Days an archive copy is kept (TSM archive copy group RETVER).
    pub retver: u32,
}

impl Default for Policy {
    /// TSM's defaults for the STANDARD copy group.
    fn default() -> Self {
        Policy {
            verexists: 2,
            verdeleted: 1,
            retextra: 30,
            retonly: 60,
            retver: 365,
        }
    }
}

/// Optional changes to a policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyUpdate {
    /// New VEREXISTS.
    pub verexists: Option<u32>,
    /// New VERDELETED.
    pub verdeleted: Option<u32>,
    /// New RETEXTRA.
    pub retextra: Option<u32>,
    /// New RETONLY.
    pub retonly: Option<u32>,
    /// New RETVER (archive copies).
    pub retver: Option<u32>,
}

/// A registered node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Row id.
    pub id: i64,
    /// Upper-case name.
    pub name: String,
    /// argon2 PHC hash of the password.
    pub password_hash: String,
    /// Logons refused when set.
    pub locked: bool,
    /// Failed logons since the last good one.
    pub failed_logons: u32,
    /// Registration time.
    pub registered_ns: i64,
    /// Last good logon.
    pub last_logon_ns: i64,
    /// Effective policy.
    pub policy: Policy,
    /// Whether it is replicated.
    pub replstate: ReplState,
    /// `send` (source), `receive` (replica, read-only) or `none` yet.
    pub replmode: ReplMode,
    /// Which versions are replicated.
    pub replrule: ReplRule,
    /// Last successful replication run.
    pub last_repl_ns: i64,
    /// Source: the target of that run; target: the source.
    pub repl_server: String,
    /// The storage pool its new data goes to (`pools.id`).
    pub pool_id: u32,
}

impl Node {
    /// Whether this server holds the node as a read-only replica.
    pub fn is_replica(&self) -> bool {
        self.replmode == ReplMode::Receive
    }
}

/// A partner server (DEFINE SERVER).
#[derive(Clone)]
pub struct PartnerServer {
    /// Name.
    pub name: String,
    /// Server-to-server URL.
    pub address: String,
    /// The shared credential, sealed with the server's secrets key
    /// ([`crate::secrets`]); [`crate::ServerState::partner_password`] opens it.
    pub sealed_password: String,
    /// Its GUID, as learned at the last Hello (none before the first).
    pub guid: Option<ServerGuid>,
    /// The address its clients use in failover, as learned at the last Hello.
    pub failover_address: String,
    /// Its pinned certificate fingerprint (empty only for a plaintext
    /// loopback partner in development).
    pub fingerprint: String,
}

impl std::fmt::Debug for PartnerServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartnerServer")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("password", &"***")
            .field("guid", &self.guid)
            .finish()
    }
}

/// One replication run (QUERY REPLICATION).
#[derive(Debug, Clone, Default)]
pub struct ReplRun {
    /// Run number.
    pub id: i64,
    /// Node.
    pub node: String,
    /// Target server.
    pub target: String,
    /// Start.
    pub started_ns: i64,
    /// End (0 while running).
    pub ended_ns: i64,
    /// How it stands.
    pub state: RunState,
    /// Versions sent.
    pub objects_sent: u64,
    /// Compressed chunk bytes sent.
    pub bytes_sent: u64,
    /// Chunks the target already had.
    pub chunks_skipped: u64,
    /// Versions deleted on the target.
    pub objects_deleted: u64,
    /// State changes sent.
    pub states_updated: u64,
    /// Failure text.
    pub message: String,
}

/// Per-node storage figures for `query node`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeUsage {
    /// Filespaces.
    pub filespaces: u32,
    /// Active versions.
    pub active_objects: u64,
    /// All versions.
    pub total_versions: u64,
}

/// A node's filespace with its figures.
#[derive(Debug, Clone)]
pub struct Filespace {
    /// Name (path root).
    pub name: String,
    /// Active versions.
    pub active_objects: u64,
    /// Logical bytes of active versions.
    pub active_bytes: u64,
    /// Start of the last backup.
    pub last_backup_start_ns: i64,
    /// End of the last completed backup.
    pub last_backup_end_ns: i64,
    /// Last replication of this filespace (on a replica).
    pub last_repl_ns: i64,
}

/// The storage pool every catalog has: `[pool]` in the configuration.
pub const DEFAULT_POOL: u32 = 0;

/// Where a chunk's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The storage pool holding this copy (`pools.id`).
    pub pool: u32,
    /// Container number.
    pub container: u32,
    /// Byte offset of the data in the container.
    pub offset: u64,
    /// Compressed length.
    pub stored_len: u32,
    /// Uncompressed length.
    pub raw_len: u32,
}

/// One activity log record.
#[derive(Debug, Clone)]
pub struct ActlogRecord {
    /// Time, Unix nanoseconds.
    pub time_ns: i64,
    /// Message id such as `TDM0400I`.
    pub msg_id: String,
    /// Node, if any.
    pub node: String,
    /// Peer address, if any.
    pub peer: String,
    /// Text.
    pub message: String,
}

/// Current time in Unix nanoseconds.
pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// Validates and upper-cases a node name: 1–64 characters of letters, digits,
/// `_`, `-` and `.` (what TSM allows, minus characters that need quoting).
pub fn normalize_node_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    ok.then(|| name.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_upper_cased_and_checked() {
        assert_eq!(normalize_node_name("alice").as_deref(), Some("ALICE"));
        assert_eq!(
            normalize_node_name("web-01.prod").as_deref(),
            Some("WEB-01.PROD")
        );
        assert_eq!(normalize_node_name(""), None);
        assert_eq!(normalize_node_name("a b"), None);
        assert_eq!(normalize_node_name(&"x".repeat(65)), None);
    }
}
