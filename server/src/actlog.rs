//! Activity log message ids of the server (TSM `QUERY ACTLOG`), and the one
//! function that writes them: to the catalog for operators and to tracing for
//! the server's own log.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::model::{ActlogRecord, now_ns};

/// Server activity message ids. The README's message catalogue documents each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMsg {
    /// Server started.
    Started,
    /// Server stopped.
    Stopped,
    /// A client session was opened.
    SessionOpened,
    /// A client session was ended.
    SessionEnded,
    /// Logon refused: wrong password.
    WrongPassword,
    /// Logon refused: node locked.
    NodeLocked,
    /// Logon refused: unknown node.
    UnknownNode,
    /// A node changed its password.
    PasswordChanged,
    /// A backup of a filespace completed.
    BackupCompleted,
    /// An administrator ran a command.
    AdminCommand,
    /// An admin call came with a missing or wrong token.
    AdminAuthFailed,
    /// An expiration run finished.
    ExpirationDone,
    /// A filespace was deleted.
    FilespaceDeleted,
    /// A replication run completed (source).
    ReplicationDone,
    /// A replication run failed (source).
    ReplicationFailed,
    /// A server-to-server call was refused (target).
    ReplicationAuthFailed,
    /// A replica was updated by its source (target).
    ReplicaUpdated,
    /// A write by a node held here as a replica was refused.
    ReplicaWriteRefused,
    /// A client logged on in failover mode.
    FailoverLogon,
}

impl ServerMsg {
    /// The message id, e.g. `TDM0400I`.
    pub fn id(self) -> &'static str {
        match self {
            ServerMsg::Started => "TDM0001I",
            ServerMsg::Stopped => "TDM0002I",
            ServerMsg::SessionOpened => "TDM0400I",
            ServerMsg::SessionEnded => "TDM0401I",
            ServerMsg::WrongPassword => "TDM0402W",
            ServerMsg::NodeLocked => "TDM0403W",
            ServerMsg::UnknownNode => "TDM0404W",
            ServerMsg::PasswordChanged => "TDM0405I",
            ServerMsg::BackupCompleted => "TDM0410I",
            ServerMsg::AdminCommand => "TDM0500I",
            ServerMsg::AdminAuthFailed => "TDM0501W",
            ServerMsg::ExpirationDone => "TDM0420I",
            ServerMsg::FilespaceDeleted => "TDM0421I",
            ServerMsg::ReplicationDone => "TDM0600I",
            ServerMsg::ReplicationFailed => "TDM0601E",
            ServerMsg::ReplicationAuthFailed => "TDM0602W",
            ServerMsg::ReplicaUpdated => "TDM0603I",
            ServerMsg::ReplicaWriteRefused => "TDM0604W",
            ServerMsg::FailoverLogon => "TDM0406I",
        }
    }
}

/// Records an event in the activity log. A failure to record is itself logged
/// but never fails the operation being recorded.
pub async fn record(catalog: &Arc<Catalog>, msg: ServerMsg, node: &str, peer: &str, text: String) {
    // Names in a message (filespaces, paths, nodes) come from clients: shown
    // escaped, so none can forge a line of the log or reach a terminal as an
    // escape sequence.
    let text = if tandem_proto::names::needs_escaping(&text) {
        tandem_proto::names::display(&text)
    } else {
        text
    };
    tracing::info!(id = msg.id(), node, peer, "{text}");
    let record = ActlogRecord {
        time_ns: now_ns(),
        msg_id: msg.id().to_string(),
        node: node.to_string(),
        peer: peer.to_string(),
        message: text,
    };
    let catalog = catalog.clone();
    let result = tokio::task::spawn_blocking(move || catalog.log_activity(&record)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(cause = %e, "cannot write activity log"),
        Err(e) => tracing::error!(cause = %e, "cannot write activity log"),
    }
}
