//! How the console shows what the server answered: one [`Row`] per row
//! type (its column headers, its table cells, its JSON object), and one
//! printer for lists of rows and one for item/value pairs. A verb handler
//! picks the row type; the format (`--format`: table, list, CSV, TSV, JSON)
//! is applied here, so every listing behaves alike.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Value, json};
use tandem_client::output::messages::without_controls;
use tandem_proto::pb;

use crate::convert::vocab::shown;
use crate::model::{ReplMode, ReplRule, ReplState, RunState};

/// Local time as `YYYY-MM-DD HH:MM:SS`, `-` for never (as the client shows it).
pub(super) fn show_time(ns: i64) -> String {
    tandem_client::output::timefmt::show(ns)
}

/// A name a client chose (a path, a filespace), for a table, list or CSV
/// cell: escaped, so it can neither forge a line nor reach the terminal as
/// an escape sequence. JSON carries the name itself (serde escapes it).
fn shown_name(name: &str) -> String {
    tandem_proto::names::display(name)
}

/// Text in JSON, `null` when there is none.
pub(super) fn json_text(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        Value::String(text.to_string())
    }
}

/// A time in JSON: RFC 3339 with offset, `null` for never.
pub(super) fn json_time(ns: i64) -> Value {
    tandem_client::output::timefmt::json(ns)
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

/// How results are printed (`--format`, `--json`), TSM's `-displaymode`,
/// `-comma` and `-tab` among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// A table, or a list when the table is wider than the terminal.
    #[default]
    Auto,
    /// A table, however wide.
    Table,
    /// One "Header: value" line per cell, a blank line between objects.
    List,
    /// Comma-separated values with a header line (RFC 4180 quoting).
    Csv,
    /// Tab-separated values with a header line; tabs and line breaks in a
    /// value are written as `\t`, `\n`, `\r` and a backslash as `\\`.
    Tsv,
    /// JSON (the same as `--json`).
    Json,
}

impl Format {
    /// Whether results go out as JSON.
    pub(super) fn is_json(self) -> bool {
        self == Format::Json
    }

    /// Whether results are for people to read, so a sentence may go with
    /// them (CSV and TSV carry only their rows, for a program to read).
    pub(super) fn for_people(self) -> bool {
        matches!(self, Format::Auto | Format::Table | Format::List)
    }
}

/// Prints `rows` in `format`.
pub(super) fn print_rows<R: Row>(rows: &[R], format: Format) {
    let mut cells: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    if format.for_people() {
        controls_shown(&mut cells);
    }
    match format {
        Format::Json => print_json(&Value::Array(rows.iter().map(Row::json).collect())),
        Format::Table => print_table(R::HEADERS, cells),
        Format::List => print_list(R::HEADERS, &cells),
        Format::Csv => print_separated(R::HEADERS, &cells, b','),
        Format::Tsv => print_tsv(R::HEADERS, &cells),
        Format::Auto => {
            let mut t = table(R::HEADERS);
            for row in &cells {
                t.add_row(row.clone());
            }
            let text = t.to_string();
            if fits_terminal(&text) {
                tandem_client::outln!("{text}");
            } else {
                print_list(R::HEADERS, &cells);
            }
        }
    }
}

/// Escapes control characters and direction marks in `cells` for a table
/// or list: cells carry text from partners and clients (a run's message, a
/// refusal's reason), and none of their escape sequences may reach the
/// terminal. Line breaks stay (a cell may list files one per line); free
/// text is made [`one_line`] by its row. (CSV quotes and TSV escapes its
/// own.)
fn controls_shown(cells: &mut [Vec<String>]) {
    for cell in cells.iter_mut().flatten() {
        if let std::borrow::Cow::Owned(escaped) = without_controls(cell, true) {
            *cell = escaped;
        }
    }
}

/// A message or reason as one line: a partner's or client's words cannot
/// start a line of their own in a list (`Header: value`) or a table.
fn one_line(text: &str) -> String {
    without_controls(text, false).into_owned()
}

/// Whether every line of `text` fits the terminal on stdout; always true
/// when stdout is not a terminal (a file or a pipe gets the table).
fn fits_terminal(text: &str) -> bool {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return true;
    }
    let Some(width) = Table::new().width() else {
        return true;
    };
    text.lines()
        .all(|line| line.chars().count() <= usize::from(width))
}

fn print_table(headers: &[&str], cells: Vec<Vec<String>>) {
    let mut t = table(headers);
    for row in cells {
        t.add_row(row);
    }
    tandem_client::outln!("{t}");
}

/// The list layout: headers right-aligned to the longest, as TSM's
/// `-displaymode=list` and `query node f=d` show one object.
fn print_list(headers: &[&str], cells: &[Vec<String>]) {
    let width = headers.iter().map(|h| h.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (i, row) in cells.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for (header, value) in headers.iter().zip(row) {
            out.push_str(&format!("{header:>width$}: {value}\n"));
        }
    }
    tandem_client::outln!("{}", out.trim_end_matches('\n'));
}

fn print_separated(headers: &[&str], cells: &[Vec<String>], delimiter: u8) {
    let mut w = csv::WriterBuilder::new()
        .delimiter(delimiter)
        .from_writer(Vec::new());
    // Writing to memory fails only on a row of the wrong length, which
    // the header-per-cell test rules out.
    let _ = w.write_record(headers);
    for row in cells {
        let _ = w.write_record(row);
    }
    let bytes = w.into_inner().unwrap_or_default();
    tandem_client::outln!("{}", String::from_utf8_lossy(&bytes).trim_end_matches('\n'));
}

/// TSV as the IANA type and most tools read it: no quoting, so the few
/// characters that would break a line or a field are escaped instead.
fn print_tsv(headers: &[&str], cells: &[Vec<String>]) {
    let line = |values: &mut dyn Iterator<Item = &str>| -> String {
        values.map(escape_tsv).collect::<Vec<_>>().join("\t")
    };
    let mut out = line(&mut headers.iter().copied());
    for row in cells {
        out.push('\n');
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    tandem_client::outln!("{out}");
}

fn escape_tsv(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// Prints item/value pairs: a two-column table, `json`, or the other
/// formats as one object with the items as headers.
pub(super) fn print_items(items: Vec<(&str, String)>, json: &Value, format: Format) {
    let (headers, values): (Vec<&str>, Vec<String>) = items.into_iter().unzip();
    let mut row = vec![values];
    if format.for_people() {
        controls_shown(&mut row);
    }
    match format {
        Format::Json => print_json(json),
        Format::Auto | Format::Table => {
            let mut t = table(&["Item", "Value"]);
            for (item, value) in headers.iter().zip(&row[0]) {
                t.add_row(vec![item.to_string(), value.clone()]);
            }
            tandem_client::outln!("{t}");
        }
        Format::List => print_list(&headers, &row),
        Format::Csv => print_separated(&headers, &row, b','),
        Format::Tsv => print_tsv(&headers, &row),
    }
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
        "RetVer",
        "Filespaces",
        "Active Objects",
        "Versions",
        "Repl State",
        "Repl Mode",
        "Repl Rule",
        "Storage Pool",
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
            self.retver.to_string(),
            self.filespaces.to_string(),
            self.active_objects.to_string(),
            self.total_versions.to_string(),
            shown(ReplState::from_pb(self.replstate), self.replstate),
            shown(ReplMode::from_pb(self.replmode), self.replmode),
            shown(ReplRule::from_pb(self.replrule), self.replrule),
            self.pool.clone(),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name, "locked": self.locked, "registered": json_time(self.registered_ns),
            "last_logon": json_time(self.last_logon_ns), "failed_logons": self.failed_logons,
            "verexists": self.verexists, "verdeleted": self.verdeleted, "retextra": self.retextra,
            "retonly": self.retonly, "retver": self.retver, "filespaces": self.filespaces,
            "active_objects": self.active_objects, "total_versions": self.total_versions,
            "replstate": shown(ReplState::from_pb(self.replstate), self.replstate),
            "replmode": shown(ReplMode::from_pb(self.replmode), self.replmode),
            "replrule": shown(ReplRule::from_pb(self.replrule), self.replrule),
            "pool": self.pool,
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
            "name": self.name, "locked": self.locked, "registered": json_time(self.registered_ns),
            "last_call": json_time(self.last_logon_ns), "failed_logons": self.failed_logons,
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
            one_line(&self.message),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "id": self.id, "node": self.node, "target": self.target,
            "start": json_time(self.started_ns), "end": json_time(self.ended_ns),
            "state": shown(RunState::from_pb(self.state), self.state),
            "objects_sent": self.objects_sent, "bytes_sent": self.bytes_sent,
            "chunks_skipped": self.chunks_skipped, "objects_deleted": self.objects_deleted,
            "states_updated": self.states_updated, "message": json_text(&self.message),
        })
    }
}

impl Row for pb::AuditedNode {
    const HEADERS: &'static [&'static str] = &[
        "Node",
        "Subset",
        "Chunks Checked",
        "Damaged",
        "Missing",
        "Repaired",
        "Unrepaired",
        "Partner",
        "Elapsed",
        "Reason",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            self.subset.clone(),
            self.chunks_checked.to_string(),
            self.damaged.to_string(),
            self.missing.to_string(),
            self.repaired.to_string(),
            self.unrepaired.to_string(),
            self.partner.clone(),
            format!("{:.1} s", self.elapsed_secs),
            one_line(&self.reason),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "node": self.node, "chunks_checked": self.chunks_checked,
            "damaged": self.damaged, "missing": self.missing,
            "repaired": self.repaired, "unrepaired": self.unrepaired,
            "partner": json_text(&self.partner), "reason": json_text(&self.reason),
            "elapsed_secs": self.elapsed_secs, "subset": self.subset,
            "files": self.files.iter().map(|f| json_text(f)).collect::<Vec<_>>(),
        })
    }
}

impl Row for pb::AuditPoolResponse {
    const HEADERS: &'static [&'static str] = &[
        "Scope",
        "Subset",
        "Containers",
        "Chunks Checked",
        "Bytes Read",
        "Damaged",
        "Repaired",
        "Unrepaired",
        "Elapsed",
        "Reason",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.scope.clone(),
            self.subset.clone(),
            self.containers.to_string(),
            self.chunks_checked.to_string(),
            self.bytes_read.to_string(),
            self.damaged.to_string(),
            self.repaired.to_string(),
            self.unrepaired.to_string(),
            format!("{:.1} s", self.elapsed_secs),
            one_line(&self.reason),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "scope": self.scope, "subset": self.subset, "containers": self.containers,
            "chunks_checked": self.chunks_checked, "bytes_read": self.bytes_read,
            "damaged": self.damaged, "repaired": self.repaired, "unrepaired": self.unrepaired,
            "files": self.files.iter().map(|f| json_text(f)).collect::<Vec<_>>(),
            "reason": json_text(&self.reason), "elapsed_secs": self.elapsed_secs,
        })
    }
}

impl Row for pb::DamagedChunk {
    const HEADERS: &'static [&'static str] =
        &["Chunk", "Container", "Found", "Reason", "Files Using It"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.chunk.clone(),
            if self.container == 0 {
                "-".to_string()
            } else {
                format!("{:08}", self.container)
            },
            show_time(self.found_ns),
            one_line(&self.reason),
            self.files.join("\n"),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "chunk": self.chunk, "container": self.container,
            "found": json_time(self.found_ns), "reason": json_text(&self.reason),
            "files": self.files.iter().map(|f| json_text(f)).collect::<Vec<_>>(),
        })
    }
}

impl Row for pb::ScheduleInfo {
    const HEADERS: &'static [&'static str] = &[
        "Schedule",
        "Action",
        "Objects",
        "Start",
        "Period",
        "Duration",
        "Pre-command",
        "Post-command",
        "Nodes",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.action.clone(),
            self.objects.join(" "),
            show_time(self.start_ns),
            if self.period_secs == 0 {
                "once".into()
            } else {
                format!("{} s", self.period_secs)
            },
            format!("{} s", self.duration_secs),
            self.pre_command.clone(),
            self.post_command.clone(),
            self.nodes.join(", "),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name, "action": self.action, "objects": self.objects,
            "start": json_time(self.start_ns), "period_secs": self.period_secs,
            "duration_secs": self.duration_secs, "pre_command": self.pre_command,
            "post_command": self.post_command, "nodes": self.nodes,
        })
    }
}

impl Row for pb::ScheduleEvent {
    const HEADERS: &'static [&'static str] = &[
        "Scheduled Start",
        "Window End",
        "Schedule",
        "Node",
        "Status",
        "Actual Start",
        "Ended",
        "Exit Code",
        "Message",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            show_time(self.window_start_ns),
            show_time(self.window_end_ns),
            self.schedule.clone(),
            self.node.clone(),
            self.state.clone(),
            show_time(self.started_ns),
            show_time(self.ended_ns),
            if self.state == "completed" || self.state == "failed" {
                self.exit_code.to_string()
            } else {
                String::new()
            },
            // The client's words: escaped, they cannot forge a row.
            shown_name(&self.message),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "schedule": self.schedule, "node": self.node,
            "window_start": json_time(self.window_start_ns), "window_end": json_time(self.window_end_ns),
            "state": self.state, "started": json_time(self.started_ns), "ended": json_time(self.ended_ns),
            "exit_code": self.exit_code, "message": self.message,
        })
    }
}

impl Row for pb::SwitchedNode {
    const HEADERS: &'static [&'static str] = &[
        "Node",
        "To",
        "State",
        "Sessions Waited For",
        "Objects Sent",
        "Elapsed",
        "Message",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            self.to.clone(),
            self.state.clone(),
            self.waited_for
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            self.objects_sent.to_string(),
            format!("{:.1} s", self.elapsed_secs),
            one_line(&self.message),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "node": self.node, "to": self.to, "state": self.state,
            "waited_for": self.waited_for, "objects_sent": self.objects_sent,
            "elapsed_secs": self.elapsed_secs, "message": self.message,
        })
    }
}

impl Row for pb::RecoveredNode {
    const HEADERS: &'static [&'static str] = &[
        "Node",
        "From",
        "State",
        "Objects Received",
        "Chunks Received",
        "Bytes Received",
        "Chunks Present",
        "States Updated",
        "Elapsed",
        "Message",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            self.from.clone(),
            self.state.clone(),
            self.objects_received.to_string(),
            self.chunks_received.to_string(),
            self.bytes_received.to_string(),
            self.chunks_present.to_string(),
            self.states_updated.to_string(),
            format!("{:.1} s", self.elapsed_secs),
            one_line(&self.message),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "node": self.node, "from": self.from, "state": self.state,
            "objects_received": self.objects_received, "chunks_received": self.chunks_received,
            "bytes_received": self.bytes_received, "chunks_present": self.chunks_present,
            "states_updated": self.states_updated, "elapsed_secs": self.elapsed_secs,
            "message": json_text(&self.message),
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
            "time": json_time(self.time_ns), "id": self.msg_id, "node": json_text(&self.node),
            "peer": json_text(&self.peer), "message": self.message,
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
            "started": json_time(self.started_ns), "last_call": json_time(self.last_call_ns),
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
            "name": self.name, "address": self.address, "guid": json_text(&self.guid),
            "replserver": self.is_replserver, "fingerprint": json_text(&self.fingerprint),
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
            shown_name(&self.name),
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

impl Row for pb::ExpiringVersion {
    const HEADERS: &'static [&'static str] = &[
        "Node",
        "Filespace",
        "Path",
        "Backup Date",
        "Inactive Since",
        "Size",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            shown_name(&self.filespace),
            shown_name(&self.path),
            show_time(self.backup_ns),
            show_time(self.deactivated_ns),
            self.size.to_string(),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "node": self.node, "filespace": self.filespace, "path": self.path,
            "backup_date": json_time(self.backup_ns), "inactive_since": json_time(self.deactivated_ns),
            "size": self.size,
        })
    }
}

impl Row for pb::MoveNodeDataResponse {
    const HEADERS: &'static [&'static str] = &[
        "Node",
        "From Pool",
        "To Pool",
        "Chunks",
        "Copied",
        "Copied Bytes",
        "Already There",
        "Removed",
        "Kept (Shared)",
        "Damaged",
        "Seconds",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            self.from_pool.clone(),
            self.to_pool.clone(),
            self.chunks.to_string(),
            self.copied.to_string(),
            self.copied_bytes.to_string(),
            self.already.to_string(),
            self.removed.to_string(),
            self.shared.to_string(),
            self.damaged.to_string(),
            format!("{:.1}", self.elapsed_secs),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "node": self.node, "from_pool": self.from_pool, "to_pool": self.to_pool,
            "chunks": self.chunks, "copied": self.copied, "copied_bytes": self.copied_bytes,
            "already": self.already, "removed": self.removed, "shared": self.shared,
            "damaged": self.damaged, "elapsed_secs": self.elapsed_secs, "note": self.note,
        })
    }
}

impl Row for pb::StoragePool {
    const HEADERS: &'static [&'static str] = &[
        "Pool",
        "Kind",
        "Location",
        "Local Containers",
        "Local Bytes",
        "Bucket Containers",
        "Bucket Bytes",
        "Uploads Pending",
        "PUTs",
        "GETs",
        "HEADs",
        "DELETEs",
        "Bytes Up",
        "Bytes Down",
        "Upload Failures",
        "Last Upload Error",
        "Nodes",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.kind.clone(),
            self.location.clone(),
            self.local_containers.to_string(),
            self.local_bytes.to_string(),
            self.remote_containers.to_string(),
            self.remote_bytes.to_string(),
            self.uploads_pending.to_string(),
            self.put_requests.to_string(),
            self.get_requests.to_string(),
            self.head_requests.to_string(),
            self.delete_requests.to_string(),
            self.bytes_uploaded.to_string(),
            self.bytes_downloaded.to_string(),
            self.upload_failures.to_string(),
            self.last_upload_error.clone(),
            self.nodes.to_string(),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name, "nodes": self.nodes,
            "kind": self.kind, "location": self.location,
            "local_containers": self.local_containers, "local_bytes": self.local_bytes,
            "remote_containers": self.remote_containers, "remote_bytes": self.remote_bytes,
            "uploads_pending": self.uploads_pending,
            "put_requests": self.put_requests, "get_requests": self.get_requests,
            "head_requests": self.head_requests, "delete_requests": self.delete_requests,
            "bytes_uploaded": self.bytes_uploaded, "bytes_downloaded": self.bytes_downloaded,
            "upload_failures": self.upload_failures, "last_upload_error": self.last_upload_error,
        })
    }
}

impl Row for pb::Occupancy {
    const HEADERS: &'static [&'static str] = &[
        "Node",
        "Filespace",
        "Files",
        "Versions",
        "Logical Bytes",
        "Archives",
        "Archive Bytes",
        "Chunks",
        "Stored Bytes",
        "Pools",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            shown_name(&self.filespace),
            self.files.to_string(),
            self.versions.to_string(),
            self.logical_bytes.to_string(),
            self.archives.to_string(),
            self.archive_bytes.to_string(),
            self.chunks.to_string(),
            self.stored_bytes.to_string(),
            self.pools.join(", "),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "node": self.node, "filespace": self.filespace, "files": self.files,
            "versions": self.versions, "logical_bytes": self.logical_bytes,
            "archives": self.archives, "archive_bytes": self.archive_bytes,
            "chunks": self.chunks, "stored_bytes": self.stored_bytes,
            "pools": self.pools,
        })
    }
}

impl Row for pb::CoverageRow {
    const HEADERS: &'static [&'static str] = &[
        "Node",
        "Filespace",
        "Role",
        "Replication",
        "Other Server",
        "Last Backup End",
        "Newest Copy Elsewhere",
        "Copy Age",
        "Coverage",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            shown_name(&self.filespace),
            shown(ReplMode::from_pb(self.replmode), self.replmode),
            shown(ReplState::from_pb(self.replstate), self.replstate),
            self.partner.clone(),
            show_time(self.last_backup_end_ns),
            show_time(self.copy_ns),
            if self.copy_ns == 0 {
                "-".into()
            } else {
                format!("{:.1} h", self.copy_age_secs as f64 / 3600.0)
            },
            self.coverage.clone(),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "node": self.node, "filespace": self.filespace,
            "replmode": shown(ReplMode::from_pb(self.replmode), self.replmode),
            "replstate": shown(ReplState::from_pb(self.replstate), self.replstate),
            "partner": self.partner,
            "last_backup_end": json_time(self.last_backup_end_ns),
            "newest_copy": json_time(self.copy_ns),
            "copy_age_secs": self.copy_age_secs, "coverage": self.coverage,
        })
    }
}

impl Row for pb::NodeFilespace {
    const HEADERS: &'static [&'static str] = &[
        "Node",
        "Filespace",
        "Active Files",
        "Active Bytes",
        "Last Backup Start",
        "Last Backup End",
        "Last Replication",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.node.clone(),
            shown_name(&self.filespace),
            self.active_objects.to_string(),
            self.active_bytes.to_string(),
            show_time(self.last_backup_start_ns),
            show_time(self.last_backup_end_ns),
            show_time(self.last_replication_ns),
        ]
    }
    fn json(&self) -> Value {
        json!({
            "node": self.node, "filespace": self.filespace,
            "active_files": self.active_objects, "active_bytes": self.active_bytes,
            "last_backup_start": json_time(self.last_backup_start_ns),
            "last_backup_end": json_time(self.last_backup_end_ns),
            "last_replication": json_time(self.last_replication_ns),
        })
    }
}

/// Prints what an expiration run did.
pub(super) fn print_expiration(r: &pb::ExpireInventoryResponse, format: Format) {
    print_items(
        vec![
            ("Versions expired", r.versions_expired.to_string()),
            ("Archive copies expired", r.archives_expired.to_string()),
            ("Chunks freed", r.chunks_freed.to_string()),
            ("Containers compacted", r.containers_compacted.to_string()),
            ("Bytes reclaimed", r.bytes_reclaimed.to_string()),
            ("Elapsed", format!("{:.2} s", r.elapsed_secs)),
        ],
        &json!({
            "versions_expired": r.versions_expired, "archives_expired": r.archives_expired,
            "chunks_freed": r.chunks_freed,
            "containers_compacted": r.containers_compacted, "bytes_reclaimed": r.bytes_reclaimed,
            "elapsed_secs": r.elapsed_secs,
        }),
        format,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn width<R: Row + Default>() -> (usize, usize) {
        (R::HEADERS.len(), R::default().cells().len())
    }

    #[test]
    fn a_partners_words_reach_a_table_without_their_escape_sequences() {
        let run = pb::ReplicationRun {
            message: "refused: no\u{1b}]52;c;ZXZpbA==\u{7}\nTDM0001I forged".into(),
            ..Default::default()
        };
        let mut cells = vec![run.cells()];
        controls_shown(&mut cells);
        let message = cells[0].last().unwrap();
        // Files listed one per line in a cell keep their lines.
        let damaged = pb::DamagedChunk {
            files: vec!["/a".into(), "/b".into()],
            ..Default::default()
        };
        let mut listed = vec![damaged.cells()];
        controls_shown(&mut listed);
        assert_eq!(listed[0].last().unwrap(), "/a\n/b");
        assert!(!message.contains(['\u{1b}', '\u{7}', '\n']), "{message:?}");
        assert!(message.contains("\\u{1b}]52"), "{message:?}");
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
            ("expiring", width::<pb::ExpiringVersion>()),
            ("occupancy", width::<pb::Occupancy>()),
            ("stgpool", width::<pb::StoragePool>()),
            ("filespace", width::<pb::NodeFilespace>()),
            ("coverage", width::<pb::CoverageRow>()),
        ] {
            assert_eq!(headers, cells, "{name}");
        }
    }
}
