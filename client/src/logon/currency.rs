//! Is the replica current? In failover mode the client compares, per
//! filespace, the last backup its primary acknowledged (node replication
//! table) with the source backup time the secondary received at its last
//! replication (DOMAIN 2.4: equal means current).

use serde::Serialize;
use tandem_proto::pb;

use crate::error::ClientError;
use crate::logon::nrtable::NodeReplicationTable;
use crate::logon::session::Session;
use crate::options::ClientOptions;

/// The replica's state of one filespace.
#[derive(Debug, Clone, Serialize)]
pub struct FilespaceCurrency {
    /// Filespace.
    pub filespace: String,
    /// Last backup the primary acknowledged to this client (Unix ns), if known.
    pub local_backup_ns: Option<i64>,
    /// The source's last backup time as replicated to this server (Unix ns).
    pub replica_backup_ns: i64,
    /// When the filespace was last replicated here (Unix ns).
    pub replicated_ns: i64,
    /// Whether the replica holds the newest backup this client knows of.
    pub current: bool,
}

/// Compares the session's server (a replica) with the node replication table.
///
/// # Errors
/// Server failures listing filespaces.
pub async fn check(
    session: &Session,
    options: &ClientOptions,
) -> Result<Vec<FilespaceCurrency>, ClientError> {
    let filespaces = list_filespaces(session).await?;
    Ok(compare(session, options, &filespaces))
}

/// The session's filespaces as the server reports them.
///
/// # Errors
/// Server failures.
pub async fn list_filespaces(session: &Session) -> Result<Vec<pb::Filespace>, ClientError> {
    Ok(session
        .client()
        .query_filespaces(session.request(pb::QueryFilespacesRequest {}))
        .await
        .map_err(|s| ClientError::server("listing filespaces", s))?
        .into_inner()
        .filespaces)
}

/// Compares already listed filespaces with the node replication table.
pub fn compare(
    session: &Session,
    options: &ClientOptions,
    filespaces: &[pb::Filespace],
) -> Vec<FilespaceCurrency> {
    let table = NodeReplicationTable::open(&options.state_dir()).ok();
    let local = table
        .as_ref()
        .and_then(|t| t.all(t.primary_guid()?, &session.info.node).ok())
        .unwrap_or_default();
    let mut out: Vec<FilespaceCurrency> = filespaces
        .iter()
        .map(|f| {
            let known = local
                .iter()
                .find(|(name, _)| *name == f.name)
                .map(|(_, t)| *t);
            FilespaceCurrency {
                filespace: f.name.clone(),
                local_backup_ns: known,
                replica_backup_ns: f.last_backup_end_ns,
                replicated_ns: f.last_replication_ns,
                current: known.is_none_or(|t| f.last_backup_end_ns >= t),
            }
        })
        .collect();
    // A filespace backed up on the primary that never reached the replica.
    for (name, t) in &local {
        if !out.iter().any(|c| &c.filespace == name) {
            out.push(FilespaceCurrency {
                filespace: name.clone(),
                local_backup_ns: Some(*t),
                replica_backup_ns: 0,
                replicated_ns: 0,
                current: false,
            });
        }
    }
    out
}
