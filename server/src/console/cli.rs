//! The console's command line: global options and TSM verbs as clap
//! subcommands, each with its nouns.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};

use crate::console::render::Format;
use crate::model::{ReplRule, ReplState, Vocabulary};

/// Parses one of a vocabulary's words, in either case as TSM accepts them
/// (`ALL_DATA` or `all_data`); `--help` and a wrong word list them.
fn word<T: Vocabulary>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::ALL.iter().map(|v| v.as_str()))
        .try_map(|w| w.to_ascii_lowercase().parse::<T>())
}

/// A value given on the command line that must say something: an empty
/// or blank one would otherwise read as "not given" (every node, every
/// pool, the node's own pool), a bigger request than was typed.
fn non_blank(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        Err("an empty value names nothing; leave the option out instead".to_string())
    } else {
        Ok(value.to_string())
    }
}

/// Tandem administrative console.
#[derive(Debug, Parser)]
#[command(
    name = "tandem-admin",
    version,
    about,
    after_help = "Exit codes: 0 success, 12 error."
)]
pub struct AdminCli {
    /// Server URL.
    #[arg(long, global = true, default_value = "https://127.0.0.1:1500")]
    pub server: String,
    /// The server's certificate fingerprint (SHA-256, AB:CD:...) to pin
    /// [default: the `fingerprint` file beside --token-file]. Give it before
    /// the command (`define server` has a --fingerprint of its own).
    #[arg(long, value_name = "SHA256", conflicts_with = "ca_file")]
    pub fingerprint: Option<String>,
    /// Trust the server's certificate when a CA in this PEM file issued it,
    /// for the host name in --server (an organisation's own CA).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// File holding the server's admin token.
    #[arg(
        long,
        global = true,
        default_value = "./tandem-data/admin.token",
        value_name = "FILE"
    )]
    pub token_file: PathBuf,
    /// Act as this named administrator instead of with the admin token; its
    /// password comes from --admin-password-file or TANDEM_ADMIN_PASSWORD.
    #[arg(long, global = true, value_name = "NAME")]
    pub admin: Option<String>,
    /// File whose first line is the --admin administrator's password.
    #[arg(long, global = true, value_name = "FILE", requires = "admin")]
    pub admin_password_file: Option<PathBuf>,
    /// Print results as JSON (the same as --format json).
    #[arg(long, global = true)]
    pub json: bool,
    /// How to print results: a table (a list when wider than the
    /// terminal), always a table, a list, CSV, TSV or JSON.
    #[arg(long, global = true, value_enum, default_value_t = Format::Auto, conflicts_with = "json")]
    pub format: Format,
    #[command(subcommand)]
    pub(super) command: Verb,
}

#[derive(Debug, Subcommand)]
pub(super) enum Verb {
    /// REGISTER: create a node or an administrator.
    #[command(subcommand)]
    Register(RegisterNoun),
    /// UPDATE: change a node, an administrator or a partner server.
    #[command(subcommand)]
    Update(UpdateNoun),
    /// LOCK: refuse a node's logons or an administrator's calls.
    #[command(subcommand)]
    Lock(LockNoun),
    /// UNLOCK: accept them again.
    #[command(subcommand)]
    Unlock(LockNoun),
    /// REMOVE: delete a node that stores no data, a replica relation, or an administrator.
    #[command(subcommand)]
    Remove(RemoveNoun),
    /// QUERY: show nodes, administrators, the activity log, sessions, server status.
    #[command(subcommand)]
    Query(QueryNoun),
    /// EXPIRE: delete versions retention policy lets go and reclaim space.
    #[command(subcommand)]
    Expire(ExpireNoun),
    /// DELETE: delete a node's filespace with all its versions, or a partner server's definition.
    #[command(subcommand)]
    Delete(DeleteNoun),
    /// DEFINE: define a partner server.
    #[command(subcommand)]
    Define(DefineNoun),
    /// SET: server settings (replication server, failover address, activity log retention).
    #[command(subcommand)]
    Set(SetNoun),
    /// REPLICATE: replicate nodes to the replication server now.
    #[command(subcommand)]
    Replicate(ReplicateNoun),
    /// CANCEL: end an open session now.
    #[command(subcommand)]
    Cancel(CancelNoun),
    /// PING: check a partner server without replicating.
    #[command(subcommand)]
    Ping(PingNoun),
    /// ROTATE: replace the bootstrap admin token.
    #[command(subcommand)]
    Rotate(RotateNoun),
    /// BACKUP: copy the catalog while the server runs.
    #[command(subcommand)]
    Backup(BackupNoun),
    /// RECOVER: rebuild nodes of this server from their replica elsewhere.
    #[command(subcommand)]
    Recover(RecoverNoun),
    /// AUDIT: read and verify stored chunks (of nodes, the pool, a container), and repair.
    #[command(subcommand)]
    Audit(AuditNoun),
    /// SWITCH: make the replication server the primary of nodes (planned).
    #[command(subcommand)]
    Switch(SwitchNoun),
    /// MOVE: move a node's stored data to another storage pool.
    #[command(subcommand)]
    Move(MoveNoun),
}

#[derive(Debug, Subcommand)]
pub(super) enum MoveNoun {
    /// MOVE NODEDATA: copy every chunk of the node's versions and archive
    /// copies stored in --from-pool to --to-pool (verified, fsynced, then
    /// indexed), then remove the source copies no other node uses. The
    /// source's space comes back at the next `expire inventory`. Run again
    /// after an interruption: it copies only what is still missing. Exits 8
    /// when chunks with no whole copy stayed behind.
    Nodedata {
        /// The node.
        name: String,
        /// The pool to move the data out of.
        #[arg(long, value_name = "POOL", value_parser = non_blank)]
        from_pool: String,
        /// The pool to move it to [default: the node's own pool].
        #[arg(long, value_name = "POOL", value_parser = non_blank)]
        to_pool: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum SwitchNoun {
    /// Planned role switch, run on the nodes' primary: refuse their new
    /// sessions, wait for running ones, replicate them one last time, then
    /// make the replication server their primary and keep them here as its
    /// read-only replicas. Clients follow at their next logon. Safe to run
    /// again after any interruption; --cancel undoes an unfinished switch.
    Replication {
        /// Node names (or --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        names: Vec<String>,
        /// Every replicated node of this server's own, and every switch left
        /// unfinished (with --cancel: every unfinished switch).
        #[arg(long)]
        all: bool,
        /// Seconds to wait for the nodes' running sessions to end before
        /// giving up (the switch is undone then) [default: 300].
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
        /// Undo unfinished switches: the nodes stay this server's own.
        #[arg(long)]
        cancel: bool,
        /// With --cancel: undo a switch that was handing over even though
        /// the replication server cannot confirm it did not take the node
        /// over. Only when that server is gone for good.
        #[arg(long, requires = "cancel")]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum AuditNoun {
    /// Read every chunk the node's versions and archive copies use, check
    /// each against its hash (TSM AUDIT CONTAINER), and with --fix replace
    /// damaged or missing ones with verified copies: another storage pool's
    /// whole copy here, else the server that shares the node. Exits 8
    /// (TDM0517W) when damage remains.
    Node {
        /// The node [default: every node].
        #[arg(value_parser = non_blank)]
        name: Option<String>,
        /// Repair what is damaged or missing, from another storage pool
        /// or the replication partner.
        #[arg(long)]
        fix: bool,
        /// Read only some chunks: a share picked afresh each run (10%) or
        /// a fixed slice (1/7; slices 1/7 to 7/7 read every chunk once).
        #[arg(long, value_name = "SUBSET", value_parser = non_blank)]
        read_data_subset: Option<String>,
    },
    /// Read every chunk stored in the storage pools (or the one named),
    /// container by container (the order a bucket is read fastest), and check each against its
    /// hash; damage is recorded (`query damaged`) with the files using it.
    /// --fix repairs each damaged chunk from another storage pool's whole
    /// copy, else from the replication partner of a node using it. Exits 8
    /// (TDM0517W) when damage remains.
    Pool {
        /// Only this storage pool [default: every pool].
        #[arg(value_parser = non_blank)]
        name: Option<String>,
        /// Repair damaged chunks from another pool or the replication
        /// partner.
        #[arg(long)]
        fix: bool,
        /// Read only some chunks: a share picked afresh each run (10%) or
        /// a fixed slice (1/7; slices 1/7 to 7/7 read every chunk once).
        #[arg(long, value_name = "SUBSET", value_parser = non_blank)]
        read_data_subset: Option<String>,
    },
    /// Read and verify every chunk of one container (TSM AUDIT CONTAINER),
    /// e.g. one a TDM0441W or a disk error named.
    Container {
        /// The container number (as in 00000007.tdc: 7).
        number: u32,
        /// Repair damaged chunks from another pool or the replication
        /// partner.
        #[arg(long)]
        fix: bool,
        /// Read only some chunks: a share (10%) or a slice (1/7).
        #[arg(long, value_name = "SUBSET", value_parser = non_blank)]
        read_data_subset: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum RecoverNoun {
    /// Bring nodes back from the server holding their replica, after this
    /// server lost them (an empty new server, or `tandem-server restore-db`):
    /// the nodes are held read-only, the replica sends back what this server
    /// lacks, then they are this server's own again, replicating as before.
    /// Safe to run again; it goes on where a cut run stopped.
    Node {
        /// Node names (or --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        names: Vec<String>,
        /// Every node held for recovery here and every replica the server
        /// (--from, or the replication server) holds for this one.
        #[arg(long)]
        all: bool,
        /// The server holding the replicas [default: each node's recorded
        /// replica server, else the replication server].
        #[arg(long, value_name = "SERVER")]
        from: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum BackupNoun {
    /// Write a consistent copy of the catalog into DIR on the server's
    /// machine (TSM BACKUP DB); `tandem-server restore-db` brings it back.
    Db {
        /// An existing directory, absolute, on the server's machine.
        #[arg(long, value_name = "DIR")]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum CancelNoun {
    /// End a client's or partner's session (its number from `query
    /// session`): its next call is refused, and a transfer under way stops
    /// at its next part.
    Session {
        /// The session number.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum PingNoun {
    /// Reach a defined server and check its certificate pin, the shared
    /// password (both ways) and the replication protocol.
    Server {
        /// A defined server's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum RotateNoun {
    /// Write a new random token to the server's DATA_DIR/admin.token; the old one stops working.
    Admintoken,
}

#[derive(Debug, Subcommand)]
pub(super) enum DefineNoun {
    /// Define a partner server and the password both servers share.
    Server {
        /// Its name.
        name: String,
        /// Its server-to-server URL.
        #[arg(long)]
        address: String,
        /// File whose first line is the shared server password.
        #[arg(long, value_name = "FILE")]
        server_password_file: PathBuf,
        /// Its certificate fingerprint, as its `query status` prints it
        /// (required for https://).
        #[arg(long, value_name = "SHA256")]
        fingerprint: Option<String>,
    },
    /// Define a client schedule (TSM DEFINE SCHEDULE): what the associated
    /// nodes' `tandem schedule` runs, and when. Each window opens at START
    /// + k * PERIOD and lasts DURATION; a run must start within it.
    Schedule {
        /// Its name.
        name: String,
        /// What it runs on the client.
        #[arg(long, value_parser = ["incremental", "selective", "db-backup", "command"], default_value = "incremental")]
        action: String,
        /// Absolute paths to back up (repeat for more); for `--action
        /// db-backup` databases as KIND:/path (`sqlite:/srv/app.db`); for
        /// `--action command` the command line, run by `sh -c`.
        #[arg(long, required = true, value_name = "OBJECT")]
        objects: Vec<String>,
        /// The first window's start (RFC 3339, 'YYYY-MM-DD HH:MM:SS' or
        /// 'YYYY-MM-DD') [default: now].
        #[arg(long, value_name = "TIME")]
        start: Option<String>,
        /// Time between windows: 30s, 15m, 1h, 1d, 1w, or `once`.
        #[arg(long, default_value = "1d", value_name = "SPAN")]
        period: String,
        /// How long each window stays open (TSM DURATION).
        #[arg(long, default_value = "1h", value_name = "SPAN")]
        duration: String,
        /// Shell command run before the action; a non-zero exit cancels
        /// the run (TSM PRESCHEDULECMD).
        #[arg(long, value_name = "COMMAND")]
        pre_command: Option<String>,
        /// Shell command run after the action (TSM POSTSCHEDULECMD).
        #[arg(long, value_name = "COMMAND")]
        post_command: Option<String>,
    },
    /// Associate nodes with a schedule (TSM DEFINE ASSOCIATION).
    Association {
        /// The schedule.
        schedule: String,
        /// Node names.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum SetNoun {
    /// Set the replication server of this server ("" clears it).
    Replserver {
        /// A defined server's name.
        name: String,
    },
    /// Set the address clients use to reach this server in failover ("" clears it).
    Failoveraddress {
        /// URL handed to clients.
        address: String,
    },
    /// Set how many days activity log records are kept (default 30); older
    /// ones are removed at once and then hourly.
    Actlogretention {
        /// Days, 1 to 9999.
        days: u32,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum ReplicateNoun {
    /// Replicate nodes.
    Node {
        /// Node names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Wait until the runs end and show their results.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum ExpireNoun {
    /// Run expiration and space reclamation now (with --preview: list what
    /// would go, delete nothing).
    Inventory {
        /// Apply retention as if it were this time (RFC 3339 or local
        /// 'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DD', taken at its start). Without
        /// --preview this is not a simulation: what would have expired by
        /// then is deleted now, for good.
        #[arg(long, value_name = "TIME")]
        now: Option<String>,
        /// Only list the versions that would expire and the space that would
        /// be freed; change nothing.
        #[arg(long)]
        preview: bool,
        /// With --preview, list at most this many versions (the oldest
        /// stored; 1 to 10000); the totals always count all of them.
        #[arg(long, default_value_t = 1000, requires = "preview",
              value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum DeleteNoun {
    /// Delete a client schedule and its associations (TSM DELETE SCHEDULE).
    Schedule {
        /// Its name.
        name: String,
    },
    /// End nodes' association with a schedule (TSM DELETE ASSOCIATION).
    Association {
        /// The schedule.
        schedule: String,
        /// Node names.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Delete a partner server's definition (refused while it is the
    /// replication server or the source of replicas held here).
    Server {
        /// A defined server's name.
        name: String,
    },
    /// Delete a filespace (asks for confirmation unless --yes).
    Filespace {
        /// Node name.
        node: String,
        /// Filespace name, as `tandem query filespace` shows it.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum RegisterNoun {
    /// Register a node; the password is read from --password-file or the first line of stdin.
    Node {
        /// Node name.
        name: String,
        /// File whose first line is the password.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Storage pool its data goes to (a [pools.NAME] of the server's
        /// configuration); DEFAULT when omitted.
        #[arg(long, value_name = "NAME")]
        pool: Option<String>,
    },
    /// Register a named administrator; the password is read from --password-file or stdin.
    Admin {
        /// Administrator name.
        name: String,
        /// File whose first line is the password.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum UpdateNoun {
    /// Change a partner server's address, shared password or pinned
    /// certificate; what is not given stays.
    Server {
        /// A defined server's name.
        name: String,
        /// Its new server-to-server URL.
        #[arg(long)]
        address: Option<String>,
        /// File whose first line is the new shared password (change it on
        /// the partner too).
        #[arg(long, value_name = "FILE")]
        server_password_file: Option<PathBuf>,
        /// Its new certificate fingerprint, as its `query status` prints it.
        #[arg(long, value_name = "SHA256")]
        fingerprint: Option<String>,
    },
    /// Change an administrator's password, or lock or unlock it.
    Admin {
        /// Administrator name.
        name: String,
        /// File whose first line is the new password.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Refuse its credentials.
        #[arg(long, conflicts_with = "unlock")]
        lock: bool,
        /// Accept them again.
        #[arg(long)]
        unlock: bool,
    },
    /// Lock or unlock a node, set its policy or password.
    Node {
        /// Node name.
        name: String,
        /// Refuse the node's logons.
        #[arg(long, conflicts_with = "unlock")]
        lock: bool,
        /// Allow the node's logons again.
        #[arg(long)]
        unlock: bool,
        /// Versions kept while a file exists (VEREXISTS).
        #[arg(long)]
        verexists: Option<u32>,
        /// Versions kept after a file is deleted (VERDELETED).
        #[arg(long)]
        verdeleted: Option<u32>,
        /// Days an extra inactive version is kept (RETEXTRA).
        #[arg(long)]
        retextra: Option<u32>,
        /// Days the last inactive version of a deleted file is kept (RETONLY).
        #[arg(long)]
        retonly: Option<u32>,
        /// Days an archive copy is kept (archive copy group RETVER).
        #[arg(long)]
        retver: Option<u32>,
        /// File whose first line is the new password.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Replication state.
        #[arg(long, ignore_case = true, value_parser = word::<ReplState>())]
        replstate: Option<ReplState>,
        /// Replication rule.
        #[arg(long, ignore_case = true, value_parser = word::<ReplRule>())]
        replrule: Option<ReplRule>,
        /// Storage pool its new data goes to from now on (TSM's
        /// destination); what it stored before stays where it is.
        #[arg(long, value_name = "NAME")]
        pool: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum LockNoun {
    /// A node.
    Node {
        /// Node name.
        name: String,
    },
    /// A named administrator.
    Admin {
        /// Administrator name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum RemoveNoun {
    /// Remove a node (refused while it owns filespaces).
    Node {
        /// Node name.
        name: String,
    },
    /// Remove an administrator (never yourself, never the last one).
    Admin {
        /// Administrator name.
        name: String,
    },
    /// End replication of a node here; on a target the node may write again.
    Replnode {
        /// Node name.
        name: String,
    },
}

/// Where an activity log record comes from, by its message id's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Originator {
    /// The server itself: start and stop (TDM00xx).
    Server,
    /// Client sessions and stored data: logons, backups, deletions, and
    /// expiration runs and filespace deletions too (TDM04xx).
    Client,
    /// Administrators' calls and changes (TDM05xx).
    Admin,
    /// Server-to-server replication (TDM06xx).
    Replication,
}

impl Originator {
    /// The message id prefix of its records.
    pub(super) fn msg_prefix(self) -> &'static str {
        match self {
            Originator::Server => "TDM00",
            Originator::Client => "TDM04",
            Originator::Admin => "TDM05",
            Originator::Replication => "TDM06",
        }
    }
}

#[derive(Debug, Subcommand)]
pub(super) enum QueryNoun {
    /// Client schedules with their windows and nodes (TSM QUERY SCHEDULE).
    Schedule {
        /// Schedule name; all when omitted.
        #[arg(value_parser = non_blank)]
        name: Option<String>,
    },
    /// Each expected scheduled run and how it went: completed, failed (with
    /// the exit code and message), missed, in progress, pending (window
    /// open), future (TSM QUERY EVENT). Exits 8 (TDM0518W) when any run
    /// in the range failed or was missed.
    Event {
        /// Node name; all when omitted.
        node: Option<String>,
        /// Runs whose window starts at or after this time [default: 24
        /// hours ago].
        #[arg(long, value_name = "TIME")]
        begin: Option<String>,
        /// Runs whose window starts up to this time [default: 24 hours
        /// ahead].
        #[arg(long, value_name = "TIME")]
        end: Option<String>,
    },
    /// Nodes with lock state, policy and storage.
    Node {
        /// Node name; all when omitted.
        #[arg(value_parser = non_blank)]
        name: Option<String>,
    },
    /// Activity log records.
    Actlog {
        /// Only records at or after this time (RFC 3339, 'YYYY-MM-DD HH:MM:SS'
        /// or 'YYYY-MM-DD': from the start of that second or day).
        #[arg(long, value_name = "TIME")]
        begin: Option<String>,
        /// Only records up to this time, the whole second or day included.
        #[arg(long, value_name = "TIME")]
        end: Option<String>,
        /// Only records containing this text.
        #[arg(long)]
        search: Option<String>,
        /// Only records about this node.
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// Only records whose message id starts with this (TDM0406I, TDM06).
        #[arg(long, value_name = "ID")]
        msgno: Option<String>,
        /// Only records of one range of message ids: the server itself
        /// (TDM00xx), client sessions and stored data (TDM04xx: logons,
        /// backups, deletions, and also expiration runs and filespace
        /// deletions), administrators' calls and changes (TDM05xx) or
        /// replication (TDM06xx).
        #[arg(long, value_enum, conflicts_with = "msgno")]
        originator: Option<Originator>,
        /// At most this many (newest) records, 1 to 20000.
        #[arg(long, default_value_t = 1000,
              value_parser = clap::value_parser!(u32).range(1..=20_000))]
        limit: u32,
    },
    /// Open client sessions.
    Session,
    /// Every filespace of a node (or of all): active files and bytes, last
    /// backup, last replication.
    Filespace {
        /// Node name; all when omitted.
        node: Option<String>,
    },
    /// Administrators with lock state and last call.
    Admin,
    /// Server name, GUID, data directory and storage.
    Status,
    /// Defined partner servers.
    Server,
    /// Whether each filespace has a copy on another server, and how old
    /// the newest is. Exits 8 (TDM0516W) when a filespace has none, or
    /// when its copy misses the last backup and is older than --max-age.
    Coverage {
        /// Node name; all when omitted.
        node: Option<String>,
        /// Hours a copy may lag the last backup before it counts as stale.
        #[arg(long, value_name = "HOURS", default_value_t = 24)]
        max_age: u64,
    },
    /// The storage pools, one row each: where the containers are (local
    /// disk or S3 bucket), how many wait for upload, the object store's
    /// requests, and how many nodes send their data there.
    Stgpool {
        /// Pool name; all when omitted.
        #[arg(value_parser = non_blank)]
        name: Option<String>,
    },
    /// Chunks audits found damaged or missing and not yet repaired (TSM
    /// QUERY DAMAGED), with the files that use them; the oldest first.
    Damaged,
    /// Per node and filespace: files, versions, logical and stored bytes.
    Occupancy {
        /// Node name; all when omitted.
        node: Option<String>,
    },
    /// Per filespace: versions and bytes here and on the replication server.
    Replnode {
        /// Node name.
        name: String,
    },
    /// Replication runs.
    Replication {
        /// Node name; all when omitted.
        #[arg(value_parser = non_blank)]
        name: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update_node(args: &[&str]) -> Result<(Option<ReplState>, Option<ReplRule>), clap::Error> {
        let argv = ["tandem-admin", "update", "node", "n1"].iter().chain(args);
        match AdminCli::try_parse_from(argv)?.command {
            Verb::Update(UpdateNoun::Node {
                replstate,
                replrule,
                ..
            }) => Ok((replstate, replrule)),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn replication_words_parse_in_either_case() {
        assert_eq!(
            update_node(&["--replstate", "ENABLED", "--replrule", "active_data"]).unwrap(),
            (Some(ReplState::Enabled), Some(ReplRule::ActiveData))
        );
        assert_eq!(
            update_node(&["--replrule", "ALL_DATA"]).unwrap(),
            (None, Some(ReplRule::AllData))
        );
    }

    #[test]
    fn a_wrong_replication_word_lists_the_allowed_ones() {
        let err = update_node(&["--replrule", "everything"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("'everything'"), "{err}");
        assert!(err.contains("all_data, active_data, none"), "{err}");
    }
}
