//! `query backup`, `query filespace`, `query session`, `query options` and
//! `query inclexcl`: tables for people, JSON for scripts.

use std::io::Write;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;
use tandem_proto::pb;
use tokio_stream::StreamExt;

use crate::backup::human_bytes;
use crate::error::{ClientError, ExitStatus};
use crate::logon::session::Session;
use crate::options::ClientOptions;
use crate::output::console::Console;
use crate::output::messages::Msg;
use crate::output::timefmt;
use crate::selection::{BackupDates, Selection};

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

pub(crate) fn kind_name(kind: i32) -> &'static str {
    match pb::ObjectKind::try_from(kind) {
        Ok(pb::ObjectKind::File) => "file",
        Ok(pb::ObjectKind::Directory) => "dir",
        Ok(pb::ObjectKind::Symlink) => "link",
        Ok(pb::ObjectKind::Fifo) => "fifo",
        Ok(pb::ObjectKind::CharDevice) => "chr",
        Ok(pb::ObjectKind::BlockDevice) => "blk",
        _ => "?",
    }
}

/// Lists stored versions matching `selection`, printing each batch as it
/// arrives: a listing of a million-file filespace costs no more memory than one
/// of ten files. Text output is therefore in fixed columns (widths known before
/// the first row) rather than a table sized to its longest cell; JSON output is
/// one array with one version per line.
///
/// # Errors
/// Server failures; standard output closed.
pub async fn backup(
    session: &Session,
    selection: &Selection,
    inactive: bool,
    dates: Option<BackupDates>,
    console: &Console,
) -> Result<(), ClientError> {
    let mut client = session.client();
    let mut stream = client
        .query_objects(session.request(pb::QueryObjectsRequest {
            path_prefix: selection.prefix.clone(),
            include_inactive: inactive,
            ..Default::default()
        }))
        .await
        .map_err(|s| ClientError::server("listing stored objects", s))?
        .into_inner();
    let mut listing = VersionListing::new(console.json);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|s| ClientError::server("listing stored objects", s))?;
        for version in batch.versions {
            let in_range = dates.is_none_or(|d| d.contains(version.backup_time_ns));
            if in_range
                && version
                    .attrs
                    .as_ref()
                    .is_some_and(|a| selection.matches(&a.path))
            {
                listing.row(version).map_err(stdout_error)?;
            }
        }
    }
    if listing.rows == 0 {
        console.report(&Msg::no_match(&selection.prefix), ExitStatus::Skipped);
    }
    listing.finish().map_err(stdout_error)
}

/// Lists every stored version below each of `prefixes` (directory paths
/// ending in `/`) in one listing: `query db`, over the agents' filespaces.
///
/// # Errors
/// Server failures.
pub async fn backup_many(
    session: &Session,
    prefixes: &[String],
    inactive: bool,
    console: &Console,
) -> Result<(), ClientError> {
    let mut client = session.client();
    let mut listing = VersionListing::new(console.json);
    for prefix in prefixes {
        let mut stream = client
            .query_objects(session.request(pb::QueryObjectsRequest {
                path_prefix: prefix.trim_end_matches('/').to_string(),
                include_inactive: inactive,
                ..Default::default()
            }))
            .await
            .map_err(|s| ClientError::server("listing stored objects", s))?
            .into_inner();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|s| ClientError::server("listing stored objects", s))?;
            for version in batch.versions {
                let below = version
                    .attrs
                    .as_ref()
                    .is_some_and(|a| a.path.starts_with(prefix.as_str()));
                if below {
                    listing.row(version).map_err(stdout_error)?;
                }
            }
        }
    }
    if listing.rows == 0 {
        console.report(&Msg::no_match(&prefixes.join(" ")), ExitStatus::Skipped);
    }
    listing.finish().map_err(stdout_error)
}

fn stdout_error(source: std::io::Error) -> ClientError {
    ClientError::Io {
        path: "standard output".into(),
        source: crate::output::stdout::unless_reader_gone(source),
    }
}

/// Writes a version listing to standard output row by row.
struct VersionListing {
    out: std::io::BufWriter<std::io::Stdout>,
    json: bool,
    rows: u64,
}

impl VersionListing {
    fn new(json: bool) -> Self {
        VersionListing {
            out: std::io::BufWriter::new(std::io::stdout()),
            json,
            rows: 0,
        }
    }

    fn row(&mut self, v: pb::ObjectVersion) -> std::io::Result<()> {
        let a = v.attrs.unwrap_or_default();
        let state = if v.active { "active" } else { "inactive" };
        let changed = a.extra.as_ref().is_some_and(|e| e.changed_during_backup);
        let path = crate::names::display(&a.path);
        // A database agent's copy shows its database's kind.
        let kind = crate::db::DbKind::of_filespace(&v.filespace)
            .map_or_else(|| kind_name(a.kind), crate::db::DbKind::name);
        if self.json {
            let item = json!({
                "path": path, "kind": kind, "size": a.size,
                "changed_during_backup": changed,
                "backup_time": timefmt::json(v.backup_time_ns),
                "state": state,
                "deactivated": timefmt::json(v.deactivated_ns),
                "filespace": v.filespace,
            });
            let lead = if self.rows == 0 { "[\n" } else { ",\n" };
            write!(self.out, "{lead}  {item}")?;
        } else {
            if self.rows == 0 {
                self.line(
                    "Size",
                    "Backup Date",
                    "State",
                    "Deactivated",
                    "Type",
                    "Path",
                )?;
                self.line(
                    "----",
                    "-----------",
                    "-----",
                    "-----------",
                    "----",
                    "----",
                )?;
            }
            self.line(
                &human_bytes(a.size),
                &timefmt::show(v.backup_time_ns),
                state,
                &timefmt::show(v.deactivated_ns),
                kind,
                &if changed {
                    format!("{path}  (changed during backup)")
                } else {
                    path
                },
            )?;
        }
        self.rows += 1;
        Ok(())
    }

    fn line(
        &mut self,
        size: &str,
        backup: &str,
        state: &str,
        deactivated: &str,
        kind: &str,
        path: &str,
    ) -> std::io::Result<()> {
        writeln!(
            self.out,
            "{size:>10}  {backup:<19}  {state:<8}  {deactivated:<19}  {kind:<6}  {path}"
        )
    }

    fn finish(mut self) -> std::io::Result<()> {
        if self.json {
            let close = if self.rows == 0 { "[]\n" } else { "\n]\n" };
            self.out.write_all(close.as_bytes())?;
        }
        self.out.flush()
    }
}

/// Lists the node's filespaces.
///
/// # Errors
/// Server failures.
pub async fn filespaces(
    session: &Session,
    options: &ClientOptions,
    console: &Console,
) -> Result<(), ClientError> {
    let filespaces = crate::logon::currency::list_filespaces(session).await?;
    // In failover mode, say per filespace whether the replica is current.
    let currency = if session.mode == crate::logon::failover::SessionMode::Failover {
        crate::logon::currency::compare(session, options, &filespaces)
    } else {
        Vec::new()
    };
    let current = |name: &str| {
        currency
            .iter()
            .find(|c| c.filespace == name)
            .map(|c| c.current)
    };
    if console.json {
        let list: Vec<_> = filespaces
            .iter()
            .map(|f| {
                json!({
                    "name": crate::names::display(&f.name), "active_objects": f.active_objects, "active_bytes": f.active_bytes,
                    "last_backup_start": timefmt::json(f.last_backup_start_ns),
                    "last_backup_end": timefmt::json(f.last_backup_end_ns),
                    "last_replication": timefmt::json(f.last_replication_ns),
                    "replica_current": current(&f.name),
                })
            })
            .collect();
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return Ok(());
    }
    let mut header = vec![
        "Filespace",
        "Objects",
        "Size",
        "Last Backup Start",
        "Last Backup End",
        "Last Replication",
    ];
    if !currency.is_empty() {
        header.push("Replica Current");
    }
    let mut t = table(&header);
    for f in filespaces {
        let mut row = vec![
            crate::names::display(&f.name),
            f.active_objects.to_string(),
            human_bytes(f.active_bytes),
            timefmt::show(f.last_backup_start_ns),
            timefmt::show(f.last_backup_end_ns),
            timefmt::show(f.last_replication_ns),
        ];
        if !currency.is_empty() {
            row.push(match current(&f.name) {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "-".into(),
            });
        }
        t.add_row(row);
    }
    crate::outln!("{t}");
    Ok(())
}

/// The replication server: as the primary just sent it, else as stored.
fn replication_line(session: &Session, options: &ClientOptions) -> String {
    if let Some((s, _)) = &session.info.replication_server {
        return format!("{} at {} (guid {})", s.name, s.address, s.guid);
    }
    match options.replication_server() {
        Some((name, e)) => format!("{name} at {} (guid {})", e.address, e.server_guid),
        None => "none stored yet (pushed after the first backup and replication)".into(),
    }
}

/// Describes the session: server, GUID, node, mode, the stored replication
/// server, and in failover mode whether each filespace's replica is current.
///
/// # Errors
/// Server failures while checking the replica.
pub async fn session(
    session: &Session,
    options: &ClientOptions,
    console: &Console,
) -> Result<(), ClientError> {
    let i = &session.info;
    let currency = if session.mode == crate::logon::failover::SessionMode::Failover {
        crate::logon::currency::check(session, options).await?
    } else {
        Vec::new()
    };
    if console.json {
        let doc = json!({
            "server_name": i.name, "server_address": i.address, "server_guid": i.guid.to_string(),
            "node": i.node, "session": i.session_id, "mode": session.mode.name(),
            "primary_server": session.primary.name, "primary_address": session.primary.address,
            "error_log": options.error_log_path(),
            "replication_server": match &i.replication_server {
                Some((s, _)) => Some(json!({ "name": s.name, "address": s.address, "server_guid": s.guid.to_string() })),
                None => options.replication_server().map(|(name, e)| json!({
                    "name": name, "address": e.address, "server_guid": e.server_guid.to_string(),
                })),
            },
            "last_replication": i.replication_server.as_ref().map(|(_, t)| timefmt::json(*t))
                .or_else(|| (i.replicated_ns != 0).then(|| timefmt::json(i.replicated_ns))),
            "replica": currency.iter().map(|c| json!({
                "filespace": c.filespace, "current": c.current,
                "local_backup": c.local_backup_ns.map(timefmt::json),
                "replica_backup": timefmt::json(c.replica_backup_ns),
                "replicated": timefmt::json(c.replicated_ns),
            })).collect::<Vec<_>>(),
        });
        crate::outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(());
    }
    let mut t = table(&["Item", "Value"]);
    for (k, v) in [
        ("Server name", i.name.clone()),
        ("Server address", i.address.clone()),
        ("Server GUID", i.guid.to_string()),
        ("Node", i.node.clone()),
        ("Session", i.session_id.to_string()),
        ("Mode", session.mode.name().to_string()),
        (
            "Primary server",
            format!("{} at {}", session.primary.name, session.primary.address),
        ),
        ("Error log", options.error_log_path().display().to_string()),
        ("Replication server", replication_line(session, options)),
    ] {
        t.add_row(vec![k.to_string(), v]);
    }
    crate::outln!("{t}");
    if !currency.is_empty() {
        let mut r = table(&[
            "Filespace",
            "Last Backup (primary)",
            "Backup on Replica",
            "Replicated",
            "Current",
        ]);
        for c in &currency {
            r.add_row(vec![
                c.filespace.clone(),
                c.local_backup_ns.map_or_else(|| "-".into(), timefmt::show),
                timefmt::show(c.replica_backup_ns),
                timefmt::show(c.replicated_ns),
                if c.current { "yes" } else { "NO" }.to_string(),
            ]);
        }
        crate::outln!("{r}");
    }
    Ok(())
}

/// Prints the effective options (no logon needed).
pub fn options(
    effective: &[crate::options::EffectiveOption],
    path: &std::path::Path,
    console: &Console,
) {
    if console.json {
        let doc = json!({ "options_file": path, "options": effective });
        crate::outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    crate::outln!("Options file: {}", path.display());
    let mut t = table(&["Option", "Value", "Source"]);
    for o in effective {
        t.add_row(vec![o.key.to_string(), o.value.clone(), o.source.clone()]);
    }
    crate::outln!("{t}");
}

/// `query inclexcl`: the include-exclude list in the order its kinds decide,
/// and for each `--test` path whether it would be backed up and by which rule.
pub fn inclexcl(
    rules: &crate::backup::rules::Rules,
    tests: &[std::path::PathBuf],
    path: &std::path::Path,
    console: &Console,
) -> Result<(), ClientError> {
    use crate::backup::rules::Decision;
    let mut decided = Vec::with_capacity(tests.len());
    for test in tests {
        let absolute = crate::paths::absolute(test).map_err(|e| ClientError::Io {
            path: test.clone(),
            source: e,
        })?;
        // A path that is not there is judged as a file would be.
        let is_dir = std::fs::symlink_metadata(&absolute).is_ok_and(|m| m.is_dir());
        let decision = rules.decide_in_tree(&absolute, is_dir);
        decided.push((crate::names::encode(absolute.as_os_str()), is_dir, decision));
    }
    if console.json {
        let tests: Vec<_> = decided
            .iter()
            .map(|(p, is_dir, d)| {
                let (backed_up, rule) = match d {
                    Decision::Included(rule) => (true, rule.as_ref()),
                    Decision::Excluded(rule) => (false, Some(rule)),
                };
                json!({ "path": p, "directory": is_dir, "backed_up": backed_up, "rule": rule })
            })
            .collect();
        let doc = json!({ "options_file": path, "rules": rules.list(), "tests": tests });
        crate::outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(());
    }
    crate::outln!("Options file: {}", path.display());
    if rules.is_empty() {
        crate::outln!("No include or exclude rules: everything named is backed up.");
    } else {
        let mut t = table(&["Option", "Pattern", "Effect"]);
        for rule in rules.list() {
            let effect = match rule.kind {
                crate::backup::rules::RuleKind::ExcludeDir => {
                    "directories matching are not entered"
                }
                crate::backup::rules::RuleKind::Include => "backed up even if excluded",
                crate::backup::rules::RuleKind::Exclude => {
                    "left out (a directory whole) unless included"
                }
            };
            t.add_row(vec![
                rule.kind.option().to_string(),
                crate::names::display(&rule.pattern),
                effect.to_string(),
            ]);
        }
        crate::outln!("{t}");
    }
    for (p, _, d) in &decided {
        let shown = crate::names::display(p);
        match d {
            Decision::Included(None) => crate::outln!("{shown}: backed up (no rule matches)"),
            Decision::Included(Some(r)) => {
                crate::outln!("{shown}: backed up ({} {:?})", r.kind.option(), r.pattern);
            }
            Decision::Excluded(r) => {
                crate::outln!("{shown}: left out ({} {:?})", r.kind.option(), r.pattern);
            }
        }
    }
    Ok(())
}
