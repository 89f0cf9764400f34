//! Console and error-log messages with TDM ids (`TDM` + 4 digits + severity).
//! Every id is listed in the README's message catalogue.

use std::fmt;

use tandem_proto::ServerGuid;

/// Message severity, the id's last letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Information.
    Info,
    /// Warning: something was skipped or is degraded.
    Warning,
    /// Error: something failed.
    Error,
}

/// A message for the console and, for warnings and errors, the error log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Id such as `TDM1010W`.
    pub id: &'static str,
    /// Text.
    pub text: String,
}

/// A stored or local name as shown to people and written to logs.
fn shown(path: &str) -> std::borrow::Cow<'_, str> {
    if crate::names::needs_escaping(path) {
        crate::names::display(path).into()
    } else {
        path.into()
    }
}

impl Msg {
    /// The message as one JSON object keyed by its severity, for `--json`.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        let key = match self.severity() {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        serde_json::json!({ key: { "id": self.id, "message": self.text } })
    }

    /// Severity from the id's suffix.
    pub fn severity(&self) -> Severity {
        match self.id.as_bytes().last() {
            Some(b'W') => Severity::Warning,
            Some(b'E' | b'S') => Severity::Error,
            _ => Severity::Info,
        }
    }

    /// A backup source could not be read.
    pub fn unreadable(path: &str, cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1010W",
            text: format!("{} skipped: cannot read it: {cause}", shown(path)),
        }
    }

    /// A path named for backup does not exist.
    pub fn not_found(path: &str) -> Self {
        Msg {
            id: "TDM1011W",
            text: format!("{} skipped: no such file or directory", shown(path)),
        }
    }

    /// A socket is not backed up: it belongs to the process listening on it
    /// and means nothing restored.
    pub fn socket(path: &str) -> Self {
        Msg {
            id: "TDM1015W",
            text: format!(
                "{} skipped: it is a socket, which cannot be restored",
                shown(path)
            ),
        }
    }

    /// Extended attributes or ACLs could not be read; the object is backed
    /// up without them.
    pub fn xattrs_unreadable(path: &str, cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1016W",
            text: format!(
                "{} backed up without its extended attributes and ACLs: {cause}",
                shown(path)
            ),
        }
    }

    /// A file kept changing on every read and is not stored (serialization
    /// `shared_static`).
    pub fn kept_changing(path: &str, reads: u32) -> Self {
        Msg {
            id: "TDM1017W",
            text: format!(
                "{} skipped: it changed during each of {reads} reads (serialization shared_static); \
                 back it up when it is quiet, or set serialization = \"shared_dynamic\" to store it anyway",
                shown(path)
            ),
        }
    }

    /// A backup's root that the include-exclude list leaves out.
    pub fn root_excluded(path: &str, option: &str, pattern: &str) -> Self {
        Msg {
            id: "TDM1018W",
            text: format!(
                "{} is left out by the include-exclude list ({option} {pattern:?}): nothing is sent from it, and an incremental makes its stored versions inactive; change the rule (`tandem query inclexcl --test PATH` shows it) or name another path",
                shown(path)
            ),
        }
    }

    /// A file's data failed verification during restore.
    pub fn corrupt(path: &str, cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1020E",
            text: format!(
                "{} not restored: stored data is damaged: {cause}",
                shown(path)
            ),
        }
    }

    /// A file's data could not be used: damaged ([`Msg::corrupt`]) or not
    /// read by the server (TDM1029E: a storage pool did not answer, and no
    /// other pool holds a copy), which says nothing about the data.
    pub fn data_failed(path: &str, cause: impl fmt::Display, damaged: bool) -> Self {
        if damaged {
            return Self::corrupt(path, cause);
        }
        Msg {
            id: "TDM1029E",
            text: format!(
                "{} not restored: the server could not read its data (not known to be damaged): {cause}; restore it again once the server's storage answers",
                shown(path)
            ),
        }
    }

    /// TDM1027I: the server replaced damaged chunks from its other storage
    /// pools or its partner (`sources`, said in full), and the files that
    /// used them are fetched again.
    pub fn chunks_repaired(server: &str, repaired: u64, sources: &str, files: usize) -> Self {
        Msg {
            id: "TDM1027I",
            text: format!(
                "server {server} found {repaired} damaged or missing chunk(s) and replaced them with verified copies from {sources}; restoring {files} file(s) again"
            ),
        }
    }

    /// TDM1028W: the server could not repair the chunks a restore could
    /// not use.
    pub fn chunks_not_repaired(server: &str, unrepaired: u64, reason: &str) -> Self {
        Msg {
            id: "TDM1028W",
            text: format!(
                "server {server} could not repair {unrepaired} damaged or missing chunk(s): {reason}; the files that use them are named below"
            ),
        }
    }

    /// A stored path would land outside the restore destination.
    pub fn escapes(path: &str, cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1021E",
            text: format!("{} not restored: {cause}", shown(path)),
        }
    }

    /// A restore target exists and is not replaced.
    pub fn exists(target: &str) -> Self {
        Msg {
            id: "TDM1022W",
            text: format!(
                "{} exists and was not replaced (use --replace yes to overwrite)",
                shown(target)
            ),
        }
    }

    /// A restore target could not be written.
    pub fn write_failed(target: &str, cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1023E",
            text: format!("{} not restored: {cause}", shown(target)),
        }
    }

    /// Nothing matched a restore or query pattern.
    pub fn no_match(pattern: &str) -> Self {
        Msg {
            id: "TDM1024W",
            text: format!("no stored objects match {}", shown(pattern)),
        }
    }

    /// A file changed while it was read, on every try, and was stored as
    /// read (serialization `shared_dynamic`).
    pub fn changed(path: &str, reads: u32) -> Self {
        Msg {
            id: "TDM1013W",
            text: format!(
                "{} changed during each of {reads} reads; stored as read and marked \"changed during backup\" \
                 (the copy may mix old and new data): back it up again when it is quiet",
                shown(path)
            ),
        }
    }

    /// An attribute of a restored object could not be set.
    pub fn attr_not_set(target: &str, what: &str, cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1025W",
            text: format!("{} restored without {what}: {cause}", shown(target)),
        }
    }

    /// A special file could not be created (devices need root).
    pub fn special_not_created(target: &str, cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1026W",
            text: format!("{} not restored: {cause}", shown(target)),
        }
    }
}

impl Msg {
    /// TDM2106I: the primary did not answer.
    pub fn primary_failed(name: &str, address: &str, cause: &str) -> Self {
        Msg {
            id: "TDM2106I",
            text: format!("Connection to primary server {name} at {address} failed: {cause}"),
        }
    }

    /// TDM2107I: trying the replication server.
    pub fn trying_secondary(name: &str, address: &str) -> Self {
        Msg {
            id: "TDM2107I",
            text: format!("Attempting to connect to secondary server {name} at {address}"),
        }
    }

    /// TDM1031W: the new password is in force on the server but nowhere in
    /// the client's configuration that Tandem can write.
    pub fn password_not_saved() -> Self {
        Msg {
            id: "TDM1031W",
            text: "password changed on the server; update TANDEM_PASSWORD (or `password` in the options file) before the next command".into(),
        }
    }

    /// TDM2108I: in failover mode.
    pub fn failed_over(name: &str, guid: ServerGuid, node: &str, replicated: &str) -> Self {
        Msg {
            id: "TDM2108I",
            text: format!(
                "Connected to secondary server {name} (guid {guid}) in failover mode; node {node} replicated {replicated}"
            ),
        }
    }

    /// TDM2109I: the primary answers again.
    pub fn failback(name: &str, address: &str) -> Self {
        Msg {
            id: "TDM2109I",
            text: format!(
                "Failback: primary server {name} at {address} is reachable again; the session is in normal mode"
            ),
        }
    }

    /// TDM2121W: no server answered; the command works on the vault alone.
    pub fn vault_alone(dir: &std::path::Path, cause: &str) -> Self {
        Msg {
            id: "TDM2121W",
            text: format!(
                "No server answered ({cause}); working on the local vault at {} alone. Backups stored there reach the primary at the first command after it returns",
                dir.display()
            ),
        }
    }

    /// TDM2122I: a write in failover mode goes to the vault only.
    pub fn vault_write_in_failover(operation: &str, server: &str, dir: &std::path::Path) -> Self {
        Msg {
            id: "TDM2122I",
            text: format!(
                "{operation} goes to the local vault at {} only: secondary server {server} is read-only while the primary is down. It reaches the primary at the first command after the primary returns",
                dir.display()
            ),
        }
    }

    /// TDM2123I: vault and server were synchronised.
    pub fn vault_synced(
        server: &str,
        pushed: &crate::vault::sync::SyncReport,
        pulled: &crate::vault::sync::SyncReport,
    ) -> Self {
        Msg {
            id: "TDM2123I",
            text: format!(
                "Local vault synchronized with server {server}: to the server {} version(s), {} made inactive, {} chunk(s) ({}); to the vault {} version(s), {} made inactive, {} removed, {} chunk(s) ({})",
                pushed.versions,
                pushed.deactivated,
                pushed.chunks,
                crate::backup::human_bytes(pushed.bytes),
                pulled.versions,
                pulled.deactivated,
                pulled.deleted,
                pulled.chunks,
                crate::backup::human_bytes(pulled.bytes),
            ),
        }
    }

    /// TDM2124W: a vault sync failed; it is tried again after the next command.
    pub fn vault_sync_failed(server: &str, cause: &str) -> Self {
        Msg {
            id: "TDM2124W",
            text: format!(
                "Local vault sync with server {server} failed: {cause}. Nothing committed is lost; the sync resumes after the next command on the server (see `tandem query vault`)"
            ),
        }
    }

    /// TDM2125W: the vault cannot be used; the command works on the server alone.
    pub fn vault_unusable(cause: &str) -> Self {
        Msg {
            id: "TDM2125W",
            text: format!(
                "The local vault cannot be used, so this command works on the server alone: {cause}"
            ),
        }
    }

    /// TDM2126I: a restore takes the data the local vault holds from it.
    pub fn restoring_from_vault(dir: &str, files: usize, server: &str) -> Self {
        Msg {
            id: "TDM2126I",
            text: format!(
                "Restoring the data of {files} file(s) from the local vault at {dir}, which holds all of it; the rest comes from server {server}"
            ),
        }
    }

    /// TDM2132I: a sync let another command write to the vault.
    pub fn vault_sync_interrupted(dir: &std::path::Path, server: &str) -> Self {
        Msg {
            id: "TDM2132I",
            text: format!(
                "The sync of the local vault at {} with server {server} stopped for another command that writes to the vault; what it copied stays, and the next sync goes on from there",
                dir.display()
            ),
        }
    }

    /// TDM2133I: the vault freed the space of versions removed from it.
    pub fn vault_reclaimed(dir: &str, r: &crate::vault::Reclaimed) -> Self {
        Msg {
            id: "TDM2133I",
            text: format!(
                "Local vault at {dir} freed the space of removed versions: {} chunk(s), {} container(s) compacted or removed, {} given back",
                r.chunks,
                r.containers,
                crate::backup::human_bytes(r.bytes)
            ),
        }
    }

    /// TDM2131W: vault data failed its check during a restore; the files
    /// are fetched from the server instead.
    pub fn vault_data_damaged(dir: &str, cause: &str, files: usize, server: &str) -> Self {
        Msg {
            id: "TDM2131W",
            text: format!(
                "The local vault at {dir} could not serve the data of {files} file(s) ({cause}); they are fetched from server {server} instead. Check the vault's disk"
            ),
        }
    }

    /// TDM2134I: damaged vault chunks were replaced with the server's copies.
    /// `later`: damaged chunks beyond what one restore repairs, left for
    /// the restores that meet them.
    pub fn vault_repaired(dir: &str, chunks: u64, server: &str, later: usize) -> Self {
        let later = if later > 0 {
            format!("; {later} more damaged chunk(s) are left for later restores that need them")
        } else {
            String::new()
        };
        Msg {
            id: "TDM2134I",
            text: format!(
                "Local vault at {dir}: {chunks} damaged chunk(s) replaced with verified copies from server {server}; restores take those files from the vault again{later}"
            ),
        }
    }

    /// TDM2135W: damaged vault chunks could not be replaced.
    pub fn vault_repair_failed(dir: &str, cause: &str) -> Self {
        Msg {
            id: "TDM2135W",
            text: format!(
                "Local vault at {dir}: damaged chunks could not be replaced ({cause}); restores keep taking those files from the server. Check the vault's disk"
            ),
        }
    }

    /// TDM2136I: no tier answered; the command waits for one.
    pub fn waiting_for_tier(cause: &str, seconds: u64) -> Self {
        Msg {
            id: "TDM2136I",
            text: format!(
                "No server or local vault can take this command ({cause}); trying again every 5 s for up to {seconds} s (tier_wait_seconds)"
            ),
        }
    }

    /// TDM2128I: the operator accepted the vault's state.
    pub fn vault_accepted(dir: &std::path::Path, revision: u64) -> Self {
        Msg {
            id: "TDM2128I",
            text: format!(
                "The local vault at {} is accepted at revision {revision}: this client writes to it again",
                dir.display()
            ),
        }
    }

    /// TDM2129W: the vault keeps active versions the server no longer has.
    pub fn vault_keeps_extra(server: &str, count: u64) -> Self {
        Msg {
            id: "TDM2129W",
            text: format!(
                "The local vault keeps {count} active version(s) that server {server} no longer holds: deleted there by an operator, or lost (a catalog restored from an older copy). If the server lost them, `tandem set vault --resend` sends them back at the next backup"
            ),
        }
    }

    /// TDM2137W: versions in the vault that this client cannot vouch for
    /// (neither its own writes nor a pull's, as they were then, by its
    /// records in `record`'s directory): not sent to the server, and left
    /// in the vault.
    pub fn vault_unvouched(
        dir: &std::path::Path,
        server: &str,
        count: u64,
        record: &std::path::Path,
    ) -> Self {
        Msg {
            id: "TDM2137W",
            text: format!(
                "The local vault at {} holds {count} version(s) that server {server} lacks and that this client neither wrote nor pulled (no record in {}); they were not sent to the server and stay in the vault. If they are this node's backups (its state_dir was replaced or restored, or the clock jumped during a backup to the vault), `tandem set vault --resend` sends them; if not, someone else writes to the vault directory or changed versions in it: keep a copy of it for investigation, move it away, and the next command fills a new one from the server",
                dir.display(),
                record.parent().unwrap_or(record).display()
            ),
        }
    }

    /// TDM2139W: a vault carries an earlier client's record of pulls, which
    /// is not taken on the vault's word.
    pub fn vault_legacy_record(dir: &std::path::Path) -> Self {
        Msg {
            id: "TDM2139W",
            text: format!(
                "The local vault at {} carries a record of pulls ({}) kept by a client from before 2026-12-06, which vouched for the versions that client stored in the vault alone. A record in the vault is the vault's own word, so it is not taken: any such versions stay in the vault, not sent to the server (TDM2137W counts them). If this machine's earlier client did back up to the vault while the server was away, check the vault, then `tandem set vault --resend` sends them; if not, keep the directory for investigation and move it away",
                dir.display(),
                crate::vault::pulled::LEGACY_FILE
            ),
        }
    }

    /// TDM2130I: the vault's versions will be sent to the server again.
    pub fn vault_resend(dir: &std::path::Path) -> Self {
        Msg {
            id: "TDM2130I",
            text: format!(
                "The local vault at {} sends the server every version it lacks before the next command there",
                dir.display()
            ),
        }
    }

    /// TDM2110E: a write refused in failover mode.
    pub fn failover_read_only(operation: &str, server: &str) -> Self {
        Msg {
            id: "TDM2110E",
            text: format!(
                "{operation} is not allowed in failover mode: secondary server {server} is read-only; run it again when the primary is back"
            ),
        }
    }

    /// TDM2111W: the replica lacks the newest backup of a filespace.
    pub fn replica_stale(filespace: &str, local: &str, replica: &str) -> Self {
        Msg {
            id: "TDM2111W",
            text: format!(
                "filespace {filespace}: the newest backup ({local}) has not reached the secondary yet; it holds the backup of {replica}"
            ),
        }
    }

    /// TDM2112E: the secondary is not the expected server.
    pub fn guid_mismatch(name: &str, address: &str, expected: ServerGuid, found: &str) -> Self {
        Msg {
            id: "TDM2112E",
            text: format!(
                "server at {address} presented guid {found}, but secondary server {name} has guid {expected}; refusing to log on to an unexpected server"
            ),
        }
    }

    /// TDM2113E: the secondary's certificate is not the one the primary
    /// pushed (or none was pushed): no credential is sent to it.
    pub fn secondary_untrusted(name: &str, address: &str, cause: &str) -> Self {
        Msg {
            id: "TDM2113E",
            text: format!(
                "secondary server {name} at {address} is not trusted: {cause}; no failover, no credential was sent. Log on to the primary once it is back so it can push the secondary's fingerprint again"
            ),
        }
    }

    /// TDM2114E: the secondary did not answer either.
    pub fn secondary_failed(name: &str, address: &str, cause: &str) -> Self {
        Msg {
            id: "TDM2114E",
            text: format!(
                "Connection to secondary server {name} at {address} failed as well: {cause}"
            ),
        }
    }

    /// TDM2115I: the node's primary server moved (planned role switch) and
    /// the options file now names the new one.
    pub fn primary_moved(
        node: &str,
        moved: &crate::logon::session::MovedPrimary,
        options_file: &str,
    ) -> Self {
        let how = if moved.at_failover {
            format!(
                "server {} said so at a failover logon: it took the node over from its old primary",
                moved.told_by
            )
        } else {
            format!("old primary server {} sent the client there", moved.told_by)
        };
        Msg {
            id: "TDM2115I",
            text: format!(
                "Primary server of node {node} moved to server {} at {} (guid {}); {how}. {options_file} now names it (server_name, server_address, server_fingerprint); the new primary pushes its replication server at logon",
                moved.name, moved.address, moved.guid
            ),
        }
    }

    /// TDM2117W: the options file could not be rewritten for a new primary.
    pub fn primary_moved_not_saved(name: &str, options_file: &str, cause: &str) -> Self {
        Msg {
            id: "TDM2117W",
            text: format!(
                "the options file {options_file} could not be updated for the new primary server {name} ({cause}); this command goes on with it, but the next one starts at the old primary again: set server_name, server_address and server_fingerprint by hand"
            ),
        }
    }

    /// TDM1050I: `tandem schedule` started.
    pub fn scheduler_started() -> Self {
        Msg {
            id: "TDM1050I",
            text: "scheduler started: asking the primary server for this node's schedule".into(),
        }
    }

    /// TDM1051I: waiting for a window to open.
    pub fn schedule_waiting(schedule: &str, opens: &str) -> Self {
        let schedule = one_line(schedule);
        Msg {
            id: "TDM1051I",
            text: format!("next scheduled run: {schedule}, window opens {opens}"),
        }
    }

    /// TDM1052I: a scheduled run starts.
    pub fn schedule_running(schedule: &str, action: &str, objects: &str) -> Self {
        let (schedule, action, objects) = (one_line(schedule), one_line(action), one_line(objects));
        Msg {
            id: "TDM1052I",
            text: format!("schedule {schedule}: running {action} {objects}"),
        }
    }

    /// TDM1053I: a scheduled run ended.
    pub fn schedule_outcome(schedule: &str, state: &str, code: i32, message: &str) -> Self {
        let (schedule, message) = (one_line(schedule), one_line(message));
        Msg {
            id: "TDM1053I",
            text: format!("schedule {schedule}: {state} (exit code {code}): {message}"),
        }
    }

    /// TDM1054W: the primary cannot be asked; the cached schedule is used.
    pub fn schedule_offline(cause: &str, cached: usize) -> Self {
        let cause = one_line(cause);
        Msg {
            id: "TDM1054W",
            text: format!(
                "the primary server cannot be asked for the schedule ({cause}); going on with the {cached} run(s) it gave last, and asking again every minute. Outcomes are kept and reported when it answers"
            ),
        }
    }

    /// TDM1055I: an outcome kept during an outage was delivered.
    pub fn schedule_reported_late(schedule: &str, window_start_ns: i64) -> Self {
        let schedule = one_line(schedule);
        Msg {
            id: "TDM1055I",
            text: format!(
                "schedule {schedule}: the outcome of the run of {} was reported now that the primary answers",
                crate::output::timefmt::show(window_start_ns)
            ),
        }
    }

    /// TDM1056W: the server refused an outcome.
    pub fn schedule_report_refused(schedule: &str, why: &str) -> Self {
        let (schedule, why) = (one_line(schedule), one_line(why));
        Msg {
            id: "TDM1056W",
            text: format!("schedule {schedule}: the server refused the run's outcome: {why}"),
        }
    }

    /// TDM1057W: an outcome could not be kept for later.
    pub fn schedule_report_lost(cause: &str) -> Self {
        let cause = one_line(cause);
        Msg {
            id: "TDM1057W",
            text: format!(
                "a scheduled run's outcome could not be delivered nor kept for later ({cause}); `query event` will show the run as missed"
            ),
        }
    }

    /// TDM1058W: the options file could not be read again; the scheduler
    /// goes on with the options it read last.
    pub fn schedule_options_unreadable(cause: &str) -> Self {
        let cause = one_line(cause);
        Msg {
            id: "TDM1058W",
            text: format!(
                "the options file could not be read again ({cause}); the scheduler goes on with the options it read last"
            ),
        }
    }

    /// TDM1059W: a run's window closed before the scheduler could start
    /// it; it is not run, and the server counts it as missed.
    pub fn schedule_window_closed(schedule: &str, closed: &str) -> Self {
        let schedule = one_line(schedule);
        Msg {
            id: "TDM1059W",
            text: format!(
                "schedule {schedule}: its window closed at {closed} before the run could start (a run before it went on, the primary was slow to answer, or the host slept); it was not run and the server shows it as missed. Lengthen the schedule's --duration if this recurs"
            ),
        }
    }

    /// TDM1044W: the node's password is in a file other users may read.
    pub fn readable_password(path: &std::path::Path, mode: u32) -> Self {
        Msg {
            id: "TDM1044W",
            text: format!(
                "{} holds this node's password and is open to other users (mode {mode:04o}); run: chmod 600 '{}'",
                path.display(),
                path.display()
            ),
        }
    }

    /// TDM1043W: the pushed replication server was not saved.
    pub fn push_ignored(name: &str, why: &str) -> Self {
        Msg {
            id: "TDM1043W",
            text: format!(
                "replication server {name} pushed by the primary was not saved: {why}; failover to it stays off"
            ),
        }
    }

    /// The pushed replication server could not be saved.
    pub fn push_failed(cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1040W",
            text: format!(
                "the replication server details from the primary were not saved: {cause}; failover will use the details saved before"
            ),
        }
    }

    /// The options file now names a new or changed replication server.
    pub fn push_saved(name: &str, address: &str, file: &str) -> Self {
        Msg {
            id: "TDM1041I",
            text: format!("replication server {name} at {address} saved in {file}"),
        }
    }

    /// The local copy of the server inventory failed mid-scan.
    pub fn inventory_failed(cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1014W",
            text: format!(
                "the server inventory kept for this backup could not be read back, so no \
                 versions were made inactive this time (run the backup again): {cause}"
            ),
        }
    }

    /// A database agent stored a copy.
    pub fn db_backed_up(kind: &str, db: &std::path::Path, bytes: u64) -> Self {
        Msg {
            id: "TDM1060I",
            text: format!(
                "{kind} database {} backed up: a consistent copy of {}",
                crate::db::shown(db),
                crate::backup::human_bytes(bytes)
            ),
        }
    }

    /// A database agent restored a copy.
    pub fn db_restored(kind: &str, db: &std::path::Path, dest: &std::path::Path) -> Self {
        Msg {
            id: "TDM1061I",
            text: format!(
                "{kind} database {} restored to {} and checked",
                crate::db::shown(db),
                crate::db::shown(dest)
            ),
        }
    }

    /// `archive-wal` found the same WAL file stored already.
    pub fn wal_already_archived(name: &str) -> Self {
        Msg {
            id: "TDM1063I",
            text: format!("WAL file {name} is archived already with the same content"),
        }
    }

    /// A PostgreSQL cluster's base backup was laid down with its recovery
    /// settings.
    pub fn pg_restored(
        cluster: &std::path::Path,
        target: &std::path::Path,
        point_in_time_ns: Option<i64>,
    ) -> Self {
        let until = match point_in_time_ns {
            Some(ns) => format!("recovery stops at {}", crate::output::timefmt::rfc3339(ns)),
            None => "recovery replays all archived WAL".to_string(),
        };
        Msg {
            id: "TDM1065I",
            text: format!(
                "PostgreSQL cluster {} restored to {}; start PostgreSQL on it: {until}, WAL comes from Tandem, then it is promoted",
                crate::db::shown(cluster),
                crate::db::shown(target)
            ),
        }
    }

    /// The PostgreSQL agent's retention made old base backups and WAL
    /// inactive.
    pub fn pg_retired(cluster: &std::path::Path, bases: u64, wal: u64, keep: u32) -> Self {
        Msg {
            id: "TDM1066I",
            text: format!(
                "PostgreSQL cluster {}: {bases} base backup(s) beyond the newest {keep} and {wal} WAL file(s) older than the oldest kept made inactive; they expire by the node's policy",
                crate::db::shown(cluster)
            ),
        }
    }

    /// The MariaDB agent stored closed binary logs.
    pub fn binlogs_stored(datadir: &std::path::Path, stored: u64, before: u64) -> Self {
        Msg {
            id: "TDM1067I",
            text: format!(
                "MariaDB server {}: {stored} binary log(s) stored, {before} stored before",
                crate::db::shown(datadir)
            ),
        }
    }

    /// The MariaDB agent loaded a dump and replayed binary logs.
    pub fn mariadb_restored(
        datadir: &std::path::Path,
        logs: usize,
        point_in_time_ns: Option<i64>,
    ) -> Self {
        let until = match point_in_time_ns {
            Some(ns) => format!("up to {}", crate::output::timefmt::rfc3339(ns)),
            None => "to their end".to_string(),
        };
        Msg {
            id: "TDM1068I",
            text: format!(
                "MariaDB server {} restored: its full backup loaded and {logs} binary log(s) replayed {until}",
                crate::db::shown(datadir)
            ),
        }
    }

    /// Binary logs were purged on the server before the agent stored them.
    pub fn binlogs_missing(datadir: &std::path::Path, base: &str, from: u64, to: u64) -> Self {
        Msg {
            id: "TDM1069W",
            text: format!(
                "MariaDB server {}: binary logs {base}.{from:06} to {base}.{to:06} were purged before they were stored; no point in time across them can be restored: take a full backup now, and store binary logs more often than they are purged",
                crate::db::shown(datadir)
            ),
        }
    }

    /// The restore_command written for a restored cluster names an options
    /// file its owner cannot read.
    pub fn restore_command_unreadable(options: &std::path::Path, owner: u32) -> Self {
        Msg {
            id: "TDM1070W",
            text: format!(
                "PostgreSQL runs restore_command as the cluster's owner (uid {owner}), who cannot read {}: every WAL fetch would fail and recovery stop; give that user an options file and state_dir of its own and edit restore_command in postgresql.auto.conf, or restore as that user",
                crate::db::shown(options)
            ),
        }
    }

    /// TDM1071W: a server that proved who it is has not taken the logon
    /// (it says it is busy, or has not answered yet); the client waits and
    /// tries again.
    pub fn server_busy(name: &str, address: &str, cause: &str, seconds: u64) -> Self {
        Msg {
            id: "TDM1071W",
            text: format!(
                "Server {name} at {address} answered the TLS handshake but has not taken the logon ({cause}); trying again for up to {seconds} s (busy_wait_seconds)"
            ),
        }
    }

    /// The node replication table could not be updated.
    pub fn nrtable_failed(cause: impl fmt::Display) -> Self {
        Msg {
            id: "TDM1042W",
            text: format!("the node replication table was not updated: {cause}"),
        }
    }
}

/// `text` from a server or a command, as one line of a message: a
/// scheduler's messages go to a journal, where a line break in a schedule's
/// name or a command's output would start a line that looks like another
/// message (a run "completed" that never ran).
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    without_controls(text, false)
}

/// `text` with every control character and every line or bidi separator
/// written as `\u{..}`, except newlines: kept with `keep_newlines`, turned
/// into spaces without it. Server answers reach messages (a
/// refusal's reason, a server's name), and a carriage return or an escape
/// sequence in one could hide or forge a line of `dsierror.log` or of the
/// terminal an auditor reads.
pub fn without_controls(text: &str, keep_newlines: bool) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        (c.is_control() && !(keep_newlines && c == '\n'))
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' if !keep_newlines => out.push(' '),
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.id, without_controls(&self.text, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedules_name_or_a_commands_output_cannot_start_a_line_of_its_own() {
        let forged = "nightly\n2026-12-07T01:00:00 TDM1053I schedule nightly: completed";
        let shown = Msg::schedule_outcome(forged, "failed", 12, "no\r\nTDM1053I fine").to_string();
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert!(shown.contains("failed (exit code 12)"), "{shown}");
        for msg in [
            Msg::schedule_running("a\nb", "command\n", "/x\n/y"),
            Msg::schedule_waiting("a\nb", "soon"),
            Msg::schedule_report_refused("a", "b\nc"),
            Msg::schedule_offline("b\nc", 1),
            Msg::schedule_window_closed("a\nb", "now"),
        ] {
            assert_eq!(msg.to_string().lines().count(), 1, "{msg}");
        }
    }
}
