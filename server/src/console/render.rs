//! How the console shows what the server answered: one [`Row`] per row
//! type (its column headers, its table cells, its JSON object), and one
//! printer for lists of rows and one for item/value pairs. A verb handler
//! picks the row type; the format (table, or JSON with `--json`) is chosen
//! here, so every listing behaves alike and a new format (list, CSV) is one
//! more printer, not a change to every verb.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Value, json};
use tandem_proto::pb;

use crate::convert::vocab::shown;
use crate::model::{ReplMode, ReplRule, ReplState, RunState};

/// Local time as `YYYY-MM-DD HH:MM:SS`, `-` for never (as the client shows it).
pub(super) fn show_time(ns: i64) -> String {
    tandem_client::output::timefmt::show(ns)
}

/// An empty table with `header`, in the console's style.
pub(super) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

/// Prints `value` as indented JSON.
pub(super) fn print_json(value: &Value) {
    tandem_client::outln!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// One kind of row the server returns, as the console shows it.
pub(super) trait Row {
    /// Column headers of the table, one per cell.
    const HEADERS: &'static [&'static str];
    /// The table cells, in header order.
    fn cells(&self) -> Vec<String>;
    /// The JSON object for `--json`.
    fn json(&self) -> Value;
}

/// Prints `rows` as a table, or as a JSON array with `as_json`.
pub(super) fn print_rows<R: Row>(rows: &[R], as_json: bool) {
    if as_json {
        print_json(&Value::Array(rows.iter().map(Row::json).collect()));
        return;
    }
    let mut t = table(R::HEADERS);
    for row in rows {
        t.add_row(row.cells());
    }
    tandem_client::outln!("{t}");
}

/// Prints item/value pairs as a two-column table, or `json` with `as_json`.
pub(super) fn print_items(items: Vec<(&str, String)>, json: &Value, as_json: bool) {
    if as_json {
        print_json(json);
        return;
    }
    let mut t = table(&["Item", "Value"]);
    for (item, value) in items {
        t.add_row(vec![item.to_string(), value]);
    }
    tandem_client::outln!("{t}");
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.into()
}

impl Row for pb::NodeInfo {
    const HEADERS: &'static [&'static str] = &[
        "Node",
        "Locked",
        "Registered",
        "Last Logon",
        "Failed Logons",
        "VerExists",
        "VerDeleted",
        "RetExtra",
        "RetOnly",
        "Filespaces",
        "Active Objects",
        "Versions",
        "Repl State",
        "Repl Mode",
        "Repl Rule",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            yes_no(self.locked),
            show_time(self.registered_ns),
            show_time(self.last_logon_ns),
            self.failed_logons.to_string(),
            self.verexists.to_string(),
            self.verdeleted.to_string(),
            self.retextra.to_string(),
            self.retonly.to_string(),
            self.filespaces.to_string(),
            self.active_objects.to_string(),
            self.total_versions.to_string(),
            shown(ReplState::from_pb(self.replstate), self.replstate),
            shown(ReplMode::from_pb(self.replmode), self.replmode),
            shown(ReplRule::from_pb(self.replrule), self.replrule),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name, "locked": self.locked, "registered": show_time(self.registered_ns),
            "last_logon": show_time(self.last_logon_ns), "failed_logons": self.failed_logons,
            "verexists": self.verexists, "verdeleted": self.verdeleted, "retextra": self.retextra,
            "retonly": self.retonly, "filespaces": self.filespaces,
            "active_objects": self.active_objects, "total_versions": self.total_versions,
            "replstate": shown(ReplState::from_pb(self.replstate), self.replstate),
            "replmode": shown(ReplMode::from_pb(self.replmode), self.replmode),
            "replrule": shown(ReplRule::from_pb(self.replrule), self.replrule),
        })
    }
}

impl Row for pb::AdminInfo {
    const HEADERS: &'static [&'static str] = &[
        "Administrator",
        "Locked?",
        "Registered",
        "Last Call",
        "Failed Logons",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            if self.locked { "Yes" } else { "No" }.to_string(),
            show_time(self.registered_ns),
            show_time(self.last_logon_ns),
            self.failed_logons.to_string(),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name, "locked": self.locked, "registered": show_time(self.registered_ns),
            "last_call": show_time(self.last_logon_ns), "failed_logons": self.failed_logons,
        })
    }
}

impl Row for pb::ReplicationRun {
    const HEADERS: &'static [&'static str] = &[
        "Run",
        "Node",
        "Target",
        "Start",
        "End",
        "State",
        "Objects Sent",
        "Bytes Sent",
        "Chunks Skipped",
        "Deleted",
        "Message",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.node.clone(),
            self.target.clone(),
            show_time(self.started_ns),
            show_time(self.ended_ns),
            shown(RunState::from_pb(self.state), self.state),
            self.objects_sent.to_string(),
            self.bytes_sent.to_string(),
            self.chunks_skipped.to_string(),
            self.objects_deleted.to_string(),
            self.message.clone(),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "id": self.id, "node": self.node, "target": self.target,
            "start": show_time(self.started_ns), "end": show_time(self.ended_ns),
            "state": shown(RunState::from_pb(self.state), self.state),
            "objects_sent": self.objects_sent, "bytes_sent": self.bytes_sent,
            "chunks_skipped": self.chunks_skipped, "objects_deleted": self.objects_deleted,
            "states_updated": self.states_updated, "message": self.message,
        })
    }
}

impl Row for pb::ActlogRecord {
    const HEADERS: &'static [&'static str] = &["Date/Time", "Message"];
    fn cells(&self) -> Vec<String> {
        vec![
            show_time(self.time_ns),
            format!("{} {}", self.msg_id, self.message),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "time": show_time(self.time_ns), "id": self.msg_id, "node": self.node,
            "peer": self.peer, "message": self.message,
        })
    }
}

impl Row for pb::SessionInfo {
    const HEADERS: &'static [&'static str] = &[
        "Sess Number",
        "Node",
        "Client Address",
        "Started",
        "Last Call",
        "Bytes Recvd",
        "Bytes Sent",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.node.clone(),
            self.peer.clone(),
            show_time(self.started_ns),
            show_time(self.last_call_ns),
            self.bytes_received.to_string(),
            self.bytes_sent.to_string(),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "id": self.id, "node": self.node, "peer": self.peer,
            "started": show_time(self.started_ns), "last_call": show_time(self.last_call_ns),
            "bytes_received": self.bytes_received, "bytes_sent": self.bytes_sent,
        })
    }
}

impl Row for pb::ServerInfo {
    const HEADERS: &'static [&'static str] = &[
        "Server",
        "Address",
        "GUID",
        "Replication Server",
        "Certificate Fingerprint",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.address.clone(),
            self.guid.clone(),
            if self.is_replserver { "yes" } else { "" }.into(),
            self.fingerprint.clone(),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name, "address": self.address, "guid": self.guid,
            "replserver": self.is_replserver, "fingerprint": self.fingerprint,
        })
    }
}

impl Row for pb::ReplFilespace {
    const HEADERS: &'static [&'static str] = &[
        "Filespace",
        "Objects Here",
        "Bytes Here",
        "Objects There",
        "Bytes There",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.source_objects.to_string(),
            self.source_bytes.to_string(),
            self.target_objects.to_string(),
            self.target_bytes.to_string(),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "filespace": self.name, "source_objects": self.source_objects,
            "source_bytes": self.source_bytes, "target_objects": self.target_objects,
            "target_bytes": self.target_bytes,
        })
    }
}

/// Prints what an expiration run did.
pub(super) fn print_expiration(r: &pb::ExpireInventoryResponse, as_json: bool) {
    print_items(
        vec![
            ("Versions expired", r.versions_expired.to_string()),
            ("Chunks freed", r.chunks_freed.to_string()),
            ("Containers compacted", r.containers_compacted.to_string()),
            ("Bytes reclaimed", r.bytes_reclaimed.to_string()),
            ("Elapsed", format!("{:.2} s", r.elapsed_secs)),
        ],
        &json!({
            "versions_expired": r.versions_expired, "chunks_freed": r.chunks_freed,
            "containers_compacted": r.containers_compacted, "bytes_reclaimed": r.bytes_reclaimed,
            "elapsed_secs": r.elapsed_secs,
        }),
        as_json,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn width<R: Row + Default>() -> (usize, usize) {
        (R::HEADERS.len(), R::default().cells().len())
    }

    /// Every table has one header per cell (the node table once printed 12
    /// headers over 15 cells).
    #[test]
    fn every_row_type_has_a_header_per_cell() {
        for (name, (headers, cells)) in [
            ("node", width::<pb::NodeInfo>()),
            ("admin", width::<pb::AdminInfo>()),
            ("run", width::<pb::ReplicationRun>()),
            ("actlog", width::<pb::ActlogRecord>()),
            ("session", width::<pb::SessionInfo>()),
            ("server", width::<pb::ServerInfo>()),
            ("replnode", width::<pb::ReplFilespace>()),
        ] {
            assert_eq!(headers, cells, "{name}");
        }
    }
}
