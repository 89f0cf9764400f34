//! Activity log message ids of the server (TSM `QUERY ACTLOG`), and the one
//! function that writes them: to the catalog for operators and to tracing for
//! the server's own log.

use std::sync::Arc;

use crate::catalog::{Catalog, Setting};
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
    /// A client stored archive copies (ARCHIVE).
    ArchiveStored,
    /// A client synchronised versions from its local vault to this server.
    VaultSynced,
    /// An administrator took a catalog backup (BACKUP DB).
    CatalogBackedUp,
    /// The catalog was restored from a backup (RESTORE DB).
    CatalogRestored,
    /// A scheduled catalog backup failed.
    CatalogBackupFailed,
    /// A damaged or missing chunk was replaced from another pool or the
    /// partner.
    ChunkRepaired,
    /// A damaged or missing chunk could not be repaired.
    ChunkUnrepaired,
    /// An audit of a node found every chunk whole (or repaired them all).
    AuditClean,
    /// An audit of a node left damaged or missing chunks.
    AuditDamage,
    /// An administrator ran a command.
    AdminCommand,
    /// An admin call came with missing or wrong credentials.
    AdminAuthFailed,
    /// An administrator (or the bootstrap token) made a call.
    AdminCall,
    /// An administrator was locked after failed attempts.
    AdminLocked,
    /// An expiration run finished.
    ExpirationDone,
    /// A filespace was deleted.
    FilespaceDeleted,
    /// A client deleted versions of its node (DELETE BACKUP).
    VersionsDeleted,
    /// A client deleted archive copies of its node (DELETE ARCHIVE).
    ArchivesDeleted,
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
    /// A node was recovered from its replica (`recover node`).
    NodeRecovered,
    /// A recovery of a node from its replica failed.
    NodeRecoveryFailed,
    /// A replica was sent back to its source for the source's recovery.
    ReplicaSentBack,
    /// A client reported a scheduled run completed.
    ScheduleCompleted,
    /// A client reported a scheduled run failed.
    ScheduleFailed,
    /// A planned role switch of a node started or went on a step.
    SwitchStep,
    /// A planned role switch of a node ended: the node changed primary.
    NodeSwitched,
    /// A planned role switch failed, or was undone.
    SwitchFailed,
    /// A client was sent to the server that is its node's primary now.
    LogonRedirected,
    /// A client logged on in failover mode.
    FailoverLogon,
    /// A client claimed a failover logon that this server cannot confirm.
    FailoverUnconfirmed,
    /// MOVE NODEDATA moved a node's data to another pool.
    NodeDataMoved,
    /// MOVE NODEDATA left chunks with no whole copy where they were.
    NodeDataMoveDamaged,
    /// A pool did not answer and reads were served from other pools.
    ReadFromOtherPool,
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
            ServerMsg::ArchiveStored => "TDM0411I",
            ServerMsg::VaultSynced => "TDM0412I",
            ServerMsg::AdminCommand => "TDM0500I",
            ServerMsg::AdminAuthFailed => "TDM0501W",
            ServerMsg::AdminCall => "TDM0502I",
            ServerMsg::AdminLocked => "TDM0503W",
            ServerMsg::ExpirationDone => "TDM0420I",
            ServerMsg::FilespaceDeleted => "TDM0421I",
            ServerMsg::VersionsDeleted => "TDM0422I",
            ServerMsg::ArchivesDeleted => "TDM0423I",
            ServerMsg::CatalogBackedUp => "TDM0425I",
            ServerMsg::CatalogRestored => "TDM0426W",
            ServerMsg::CatalogBackupFailed => "TDM0427E",
            ServerMsg::ChunkRepaired => "TDM0428I",
            ServerMsg::ChunkUnrepaired => "TDM0429E",
            ServerMsg::AuditClean => "TDM0430I",
            ServerMsg::AuditDamage => "TDM0431W",
            ServerMsg::ReplicationDone => "TDM0600I",
            ServerMsg::ReplicationFailed => "TDM0601E",
            ServerMsg::ReplicationAuthFailed => "TDM0602W",
            ServerMsg::ReplicaUpdated => "TDM0603I",
            ServerMsg::ReplicaWriteRefused => "TDM0604W",
            ServerMsg::NodeRecovered => "TDM0605I",
            ServerMsg::NodeRecoveryFailed => "TDM0606E",
            ServerMsg::ReplicaSentBack => "TDM0607I",
            ServerMsg::ScheduleCompleted => "TDM0432I",
            ServerMsg::ScheduleFailed => "TDM0433W",
            ServerMsg::SwitchStep => "TDM0608I",
            ServerMsg::NodeSwitched => "TDM0609I",
            ServerMsg::SwitchFailed => "TDM0610E",
            ServerMsg::LogonRedirected => "TDM0611I",
            ServerMsg::FailoverLogon => "TDM0406I",
            ServerMsg::FailoverUnconfirmed => "TDM0407W",
            ServerMsg::NodeDataMoved => "TDM0434I",
            ServerMsg::NodeDataMoveDamaged => "TDM0435W",
            ServerMsg::ReadFromOtherPool => "TDM0436W",
        }
    }
}

/// Longest message text kept, in bytes: a whole record stays readable on a
/// console, and no client can make `query actlog` replies too large to send.
pub const MAX_TEXT_BYTES: usize = 2048;
/// Longest client-supplied label (client version, claimed primary) shown.
pub const MAX_LABEL_CHARS: usize = 64;
/// Days records are kept until an administrator sets otherwise (as TSM's
/// ACTLOGRETENTION default).
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
/// The longest retention an administrator may set.
pub const MAX_RETENTION_DAYS: u32 = 9999;

/// A client-supplied label for a message: at most [`MAX_LABEL_CHARS`]
/// characters, marked when cut (escaping happens in [`record`]).
pub fn label(text: &str) -> String {
    match text.char_indices().nth(MAX_LABEL_CHARS) {
        None => text.to_string(),
        Some((end, _)) => format!("{}... ({} bytes)", &text[..end], text.len()),
    }
}

/// Cuts `text` to [`MAX_TEXT_BYTES`] on a character boundary, saying so.
fn capped(text: String) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text;
    }
    let mut end = MAX_TEXT_BYTES - 64;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes cut)", &text[..end], text.len() - end)
}

/// The retention in days: the administrator's setting or the default.
///
/// # Errors
/// SQLite errors.
pub fn retention_days(catalog: &Catalog) -> Result<u32, crate::error::CatalogError> {
    Ok(catalog
        .setting(Setting::ActlogRetention)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_RETENTION_DAYS))
}

/// Stores a new retention and removes the records it no longer keeps;
/// returns how many.
///
/// # Errors
/// SQLite errors.
pub fn set_retention(catalog: &Catalog, days: u32) -> Result<u64, crate::error::CatalogError> {
    catalog.set_setting(Setting::ActlogRetention, &days.to_string())?;
    prune(catalog)
}

/// Removes the records older than the retention; returns how many.
///
/// # Errors
/// SQLite errors.
pub fn prune(catalog: &Catalog) -> Result<u64, crate::error::CatalogError> {
    let days = i64::from(retention_days(catalog)?);
    catalog.prune_activity(now_ns().saturating_sub(days * 86_400 * 1_000_000_000))
}

/// How long one address's refusals of one kind are summed up into one record.
pub const REFUSAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Addresses whose refusals are being summed up at once.
const REFUSAL_ADDRESSES: usize = 4096;

/// Refusals of callers that proved nothing (a wrong admin token, no
/// credentials, a replication caller that is not a partner) are recorded at
/// most once a minute per kind and address: each was a row written through
/// the catalog's one writer, and a caller without credentials could send
/// thousands a second. None is lost to the auditor: the ones held back are
/// counted, and the count is recorded with the next refusal of that kind
/// from that address, or by [`record_held_refusals`] once the minute is
/// over (the server runs it every minute and when it stops).
#[derive(Debug, Default)]
pub struct RefusalThrottle {
    state: std::sync::Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    /// (message id, address) -> its window.
    windows: std::collections::HashMap<(&'static str, String), Window>,
    /// Per message id, refusals held back while every address slot was
    /// taken.
    unplaced: std::collections::HashMap<&'static str, (ServerMsg, u64)>,
}

/// One address's refusals of one kind in the minute after one was recorded.
#[derive(Debug)]
struct Window {
    msg: ServerMsg,
    since: std::time::Instant,
    /// When its recorded refusal was, on the wall clock (for the summary).
    since_wall: chrono::DateTime<chrono::Utc>,
    held: u64,
}

/// Refusals held back and not yet recorded, as [`RefusalThrottle::take_held`]
/// hands them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRefusals {
    /// Their kind.
    pub msg: ServerMsg,
    /// The address they came from; `None` for addresses that found no slot.
    pub address: Option<String>,
    /// When the refusal recorded before them was (for an address).
    pub after: Option<chrono::DateTime<chrono::Utc>>,
    /// How many.
    pub count: u64,
}

impl RefusalThrottle {
    /// Whether a refusal of kind `msg` from `peer` is recorded now; if so,
    /// how many from that address were held back before it.
    fn admit(&self, msg: ServerMsg, peer: &str, now: std::time::Instant) -> Option<u64> {
        // The port changes with every connection; the address does not.
        let address = peer.rsplit_once(':').map_or(peer, |(a, _)| a).to_string();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let key = (msg.id(), address);
        if let Some(window) = state.windows.get_mut(&key)
            && now.saturating_duration_since(window.since) < REFUSAL_WINDOW
        {
            window.held += 1;
            return None;
        }
        if !state.windows.contains_key(&key) && state.windows.len() >= REFUSAL_ADDRESSES {
            state.windows.retain(|_, window| {
                window.held > 0 || now.saturating_duration_since(window.since) < REFUSAL_WINDOW
            });
            if state.windows.len() >= REFUSAL_ADDRESSES {
                state.unplaced.entry(msg.id()).or_insert((msg, 0)).1 += 1;
                return None;
            }
        }
        let window = Window {
            msg,
            since: now,
            since_wall: chrono::Utc::now(),
            held: 0,
        };
        Some(state.windows.insert(key, window).map_or(0, |w| w.held))
    }

    /// Takes out the counts of refusals held back whose minute is over (all
    /// of them when `all`, as the server stops), forgetting those windows.
    pub fn take_held(&self, now: std::time::Instant, all: bool) -> Vec<HeldRefusals> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut held = Vec::new();
        state.windows.retain(|(_, address), window| {
            if !all && now.saturating_duration_since(window.since) < REFUSAL_WINDOW {
                return true;
            }
            if window.held > 0 {
                held.push(HeldRefusals {
                    msg: window.msg,
                    address: Some(address.clone()),
                    after: Some(window.since_wall),
                    count: window.held,
                });
            }
            false
        });
        held.extend(
            state
                .unplaced
                .drain()
                .map(|(_, (msg, count))| HeldRefusals {
                    msg,
                    address: None,
                    after: None,
                    count,
                }),
        );
        held.sort_by(|a, b| (a.msg.id(), &a.address).cmp(&(b.msg.id(), &b.address)));
        held
    }
}

/// Records a refusal of a caller that proved nothing, within `throttle`'s
/// bound (see [`RefusalThrottle`]).
pub async fn record_refusal(
    catalog: &Arc<Catalog>,
    throttle: &RefusalThrottle,
    msg: ServerMsg,
    node: &str,
    peer: &str,
    text: String,
) {
    let Some(held) = throttle.admit(msg, peer, std::time::Instant::now()) else {
        return;
    };
    let text = match held {
        0 => text,
        n => format!(
            "{text} ({n} more refusals like it were held back in the minute before, not recorded one by one)"
        ),
    };
    record(catalog, msg, node, peer, text).await;
}

/// Records the counts of refusals `throttle` held back whose minute is over
/// (all of them when `all`): one record per kind and address, so that a
/// caller who stops within the minute still has every refusal counted.
pub async fn record_held_refusals(catalog: &Arc<Catalog>, throttle: &RefusalThrottle, all: bool) {
    for held in throttle.take_held(std::time::Instant::now(), all) {
        let (peer, text) = match (&held.address, held.after) {
            (Some(address), Some(after)) => (
                address.as_str(),
                format!(
                    "{} more refusals like the one recorded from this address at {} were held back in the minute after it, not recorded one by one",
                    held.count,
                    after.format("%Y-%m-%d %H:%M:%S UTC")
                ),
            ),
            _ => (
                "",
                format!(
                    "{} refusals of this kind were held back while {REFUSAL_ADDRESSES} other addresses' refusals were being counted, not recorded one by one (their addresses were not kept)",
                    held.count
                ),
            ),
        };
        record(catalog, held.msg, "", peer, text).await;
    }
}

/// Records an event in the activity log. A failure to record is itself logged
/// but never fails the operation being recorded.
pub async fn record(catalog: &Arc<Catalog>, msg: ServerMsg, node: &str, peer: &str, text: String) {
    // Names in a message (filespaces, paths, nodes) come from clients: shown
    // escaped, so none can forge a line of the log or reach a terminal as an
    // escape sequence; and cut, so none can make the log unreadable.
    let text = capped(if tandem_proto::names::needs_escaping(&text) {
        tandem_proto::names::display(&text)
    } else {
        text
    });
    // The id leads the message, as in the activity log and the client's
    // log, and is a field of its own for a JSON log's readers.
    tracing::info!(id = msg.id(), node, peer, "{} {text}", msg.id());
    let record = ActlogRecord {
        time_ns: now_ns(),
        msg_id: msg.id().to_string(),
        node: label(&tandem_proto::names::display(node)),
        peer: label(&tandem_proto::names::display(peer)),
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

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: ServerMsg = ServerMsg::AdminAuthFailed;
    const PARTNER: ServerMsg = ServerMsg::ReplicationAuthFailed;

    /// Kind, address and count of each (the time is the wall clock's).
    fn counts(held: Vec<HeldRefusals>) -> Vec<(&'static str, Option<String>, u64)> {
        held.into_iter()
            .map(|h| (h.msg.id(), h.address, h.count))
            .collect()
    }

    #[test]
    fn refusals_from_one_address_are_recorded_once_a_minute_with_a_count() {
        let throttle = RefusalThrottle::default();
        let t0 = std::time::Instant::now();
        let later = |secs| t0 + std::time::Duration::from_secs(secs);
        assert_eq!(throttle.admit(ADMIN, "10.0.0.1:4000", t0), Some(0));
        // Another port of the same address, within the minute: held back.
        for port in 4001..4011 {
            assert_eq!(
                throttle.admit(ADMIN, &format!("10.0.0.1:{port}"), later(10)),
                None
            );
        }
        // Another kind or another address has its own window.
        assert_eq!(throttle.admit(PARTNER, "10.0.0.1:4000", later(10)), Some(0));
        assert_eq!(throttle.admit(ADMIN, "[::1]:4000", later(10)), Some(0));
        // After the minute the next one is recorded, with the count.
        assert_eq!(throttle.admit(ADMIN, "10.0.0.1:5000", later(61)), Some(10));
        assert_eq!(throttle.admit(ADMIN, "10.0.0.1:5000", later(62)), None);
    }

    #[test]
    fn refusals_from_more_addresses_than_slots_are_counted_not_lost() {
        let throttle = RefusalThrottle::default();
        let t0 = std::time::Instant::now();
        for i in 0..REFUSAL_ADDRESSES {
            assert_eq!(
                throttle.admit(ADMIN, &format!("10.1.{}.{}:1", i / 256, i % 256), t0),
                Some(0)
            );
        }
        assert_eq!(throttle.admit(ADMIN, "10.9.9.9:1", t0), None);
        assert_eq!(throttle.admit(PARTNER, "10.9.9.10:1", t0), None);
        assert_eq!(throttle.admit(ADMIN, "10.9.9.11:1", t0), None);
        // Once windows have ended, slots are freed.
        let later = t0 + REFUSAL_WINDOW;
        assert_eq!(throttle.admit(ADMIN, "10.9.9.9:1", later), Some(0));
        // The ones that found no slot are handed out by kind, once.
        assert_eq!(
            counts(throttle.take_held(later, false)),
            vec![("TDM0501W", None, 2), ("TDM0602W", None, 1)]
        );
        assert!(throttle.take_held(later, true).is_empty());
    }

    #[test]
    fn held_back_refusals_are_handed_out_once_their_minute_is_over() {
        let throttle = RefusalThrottle::default();
        let t0 = std::time::Instant::now();
        let later = |secs| t0 + std::time::Duration::from_secs(secs);
        assert_eq!(throttle.admit(ADMIN, "10.0.0.1:1", t0), Some(0));
        assert_eq!(throttle.admit(ADMIN, "10.0.0.2:1", t0), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.admit(ADMIN, "10.0.0.1:2", later(1)), None);
        }
        // Within the minute nothing is due.
        assert!(throttle.take_held(later(30), false).is_empty());
        // After it, the caller that stopped has its count recorded; the
        // address with nothing held back is simply forgotten.
        let held = throttle.take_held(later(61), false);
        assert!(held[0].after.is_some());
        assert_eq!(counts(held), vec![("TDM0501W", Some("10.0.0.1".into()), 5)]);
        assert!(throttle.take_held(later(62), false).is_empty());
        // The next refusal from there starts afresh: nothing counted twice.
        assert_eq!(throttle.admit(ADMIN, "10.0.0.1:3", later(63)), Some(0));
        // As the server stops, everything held back is handed out at once.
        assert_eq!(throttle.admit(ADMIN, "10.0.0.1:4", later(64)), None);
        assert_eq!(
            counts(throttle.take_held(later(64), true)),
            vec![("TDM0501W", Some("10.0.0.1".into()), 1)]
        );
    }
}
