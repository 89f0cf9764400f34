//! `tandem-admin`, the operator's console (TSM `dsmadmc`): TSM verbs as clap
//! subcommands, readable tables, `--json` for scripts.

use std::ffi::OsString;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use chrono::{Local, TimeZone};
use clap::{Parser, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;
use tandem_proto::pb::{self, admin_client::AdminClient};
use tonic::transport::{Channel, Endpoint};

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
    /// Print results as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// REGISTER: create a node or an administrator.
    #[command(subcommand)]
    Register(RegisterNoun),
    /// UPDATE: change a node or an administrator.
    #[command(subcommand)]
    Update(UpdateNoun),
    /// REMOVE: delete a node that stores no data, a replica relation, or an administrator.
    #[command(subcommand)]
    Remove(RemoveNoun),
    /// QUERY: show nodes, administrators, the activity log, sessions, server status.
    #[command(subcommand)]
    Query(QueryNoun),
    /// EXPIRE: delete versions retention policy lets go and reclaim space.
    #[command(subcommand)]
    Expire(ExpireNoun),
    /// DELETE: delete a node's filespace with all its versions.
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
    /// ROTATE: replace the bootstrap admin token.
    #[command(subcommand)]
    Rotate(RotateNoun),
}

#[derive(Debug, Subcommand)]
enum RotateNoun {
    /// Write a new random token to the server's DATA_DIR/admin.token; the old one stops working.
    Admintoken,
}

#[derive(Debug, Subcommand)]
enum DefineNoun {
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
}

#[derive(Debug, Subcommand)]
enum SetNoun {
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
enum ReplicateNoun {
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
enum ExpireNoun {
    /// Run expiration and space reclamation now.
    Inventory {
        /// Evaluate retention as if it were this time (simulation, tests).
        #[arg(long, value_name = "TIME")]
        now: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DeleteNoun {
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
enum RegisterNoun {
    /// Register a node; the password is read from --password-file or the first line of stdin.
    Node {
        /// Node name.
        name: String,
        /// File whose first line is the password.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
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
enum UpdateNoun {
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
        /// File whose first line is the new password.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Replication state.
        #[arg(long, value_parser = ["enabled", "disabled"])]
        replstate: Option<String>,
        /// Replication rule.
        #[arg(long, value_parser = ["all_data", "active_data", "none"])]
        replrule: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RemoveNoun {
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

#[derive(Debug, Subcommand)]
enum QueryNoun {
    /// Nodes with lock state, policy and storage.
    Node {
        /// Node name; all when omitted.
        name: Option<String>,
    },
    /// Activity log records.
    Actlog {
        /// Only records at or after this time (RFC 3339 or 'YYYY-MM-DD HH:MM:SS').
        #[arg(long, value_name = "TIME")]
        begin: Option<String>,
        /// Only records containing this text.
        #[arg(long)]
        search: Option<String>,
        /// At most this many (newest) records.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Open client sessions.
    Session,
    /// Administrators with lock state and last call.
    Admin,
    /// Server name, GUID, data directory and storage.
    Status,
    /// Defined partner servers.
    Server,
    /// Per filespace: versions and bytes here and on the replication server.
    Replnode {
        /// Node name.
        name: String,
    },
    /// Replication runs.
    Replication {
        /// Node name; all when omitted.
        name: Option<String>,
    },
}

/// A console failure: what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach server at {address}: {cause}; check --server and that the server runs")]
    Unreachable { address: String, cause: String },
    #[error("{0}")]
    Refused(String),
}

fn read_secret(file: Option<&Path>, what: &str) -> Result<String, AdminError> {
    let text = match file {
        Some(f) => std::fs::read_to_string(f).map_err(|e| {
            AdminError::Usage(format!("cannot read {what} file {}: {e}", f.display()))
        })?,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| AdminError::Usage(format!("cannot read {what} from stdin: {e}")))?;
            line
        }
    };
    let first = text.lines().next().unwrap_or("").to_string();
    if first.is_empty() {
        return Err(AdminError::Usage(format!(
            "{what} is empty: give it on stdin or with --password-file"
        )));
    }
    Ok(first)
}

/// Asks on the terminal; refuses when stdin is not a terminal.
fn confirm(question: &str) -> Result<(), AdminError> {
    use std::io::{IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(AdminError::Usage(
            "confirmation needed but stdin is not a terminal; add --yes".into(),
        ));
    }
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| AdminError::Usage(format!("cannot read the answer: {e}")))?;
    if answer.trim().eq_ignore_ascii_case("yes") {
        Ok(())
    } else {
        Err(AdminError::Usage(
            "not confirmed; nothing was deleted".into(),
        ))
    }
}

fn print_runs(runs: &[pb::ReplicationRun], as_json: bool) {
    if as_json {
        let list: Vec<_> = runs.iter().map(|r| json!({
            "id": r.id, "node": r.node, "target": r.target, "start": show_time(r.started_ns),
            "end": show_time(r.ended_ns), "state": r.state, "objects_sent": r.objects_sent,
            "bytes_sent": r.bytes_sent, "chunks_skipped": r.chunks_skipped,
            "objects_deleted": r.objects_deleted, "states_updated": r.states_updated, "message": r.message,
        })).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return;
    }
    let mut t = table(&[
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
    ]);
    for r in runs {
        t.add_row(vec![
            r.id.to_string(),
            r.node.clone(),
            r.target.clone(),
            show_time(r.started_ns),
            show_time(r.ended_ns),
            r.state.clone(),
            r.objects_sent.to_string(),
            r.bytes_sent.to_string(),
            r.chunks_skipped.to_string(),
            r.objects_deleted.to_string(),
            r.message.clone(),
        ]);
    }
    println!("{t}");
}

fn print_expiration(r: &pb::ExpireInventoryResponse, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(&json!({
            "versions_expired": r.versions_expired, "chunks_freed": r.chunks_freed,
            "containers_compacted": r.containers_compacted, "bytes_reclaimed": r.bytes_reclaimed,
            "elapsed_secs": r.elapsed_secs,
        })).unwrap_or_default());
        return;
    }
    let mut t = table(&["Item", "Value"]);
    for (k, v) in [
        ("Versions expired", r.versions_expired.to_string()),
        ("Chunks freed", r.chunks_freed.to_string()),
        ("Containers compacted", r.containers_compacted.to_string()),
        ("Bytes reclaimed", r.bytes_reclaimed.to_string()),
        ("Elapsed", format!("{:.2} s", r.elapsed_secs)),
    ] {
        t.add_row(vec![k.to_string(), v]);
    }
    println!("{t}");
}

fn parse_time(text: &str) -> Result<i64, AdminError> {
    let parsed = chrono::DateTime::parse_from_rfc3339(text).ok().or_else(|| {
        let naive = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").ok()?;
        Local
            .from_local_datetime(&naive)
            .earliest()
            .map(|d| d.fixed_offset())
    });
    parsed.and_then(|d| d.timestamp_nanos_opt()).ok_or_else(|| {
        AdminError::Usage(format!(
            "time {text:?} is not understood; use RFC 3339 or 'YYYY-MM-DD HH:MM:SS'"
        ))
    })
}

fn show_time(ns: i64) -> String {
    if ns == 0 {
        return "-".into();
    }
    Local
        .timestamp_nanos(ns)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// The `authorization` value the console sends: a named administrator's
/// credentials with --admin, else the bootstrap token from --token-file.
fn credentials(
    cli: &AdminCli,
) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, AdminError> {
    let value = match &cli.admin {
        Some(name) => {
            use base64::Engine;
            let password = match (
                &cli.admin_password_file,
                std::env::var("TANDEM_ADMIN_PASSWORD"),
            ) {
                (Some(file), _) => read_secret(Some(file), "administrator password")?,
                (None, Ok(password)) if !password.is_empty() => password,
                _ => {
                    return Err(AdminError::Usage(format!(
                        "--admin {name} needs its password: give --admin-password-file FILE or set TANDEM_ADMIN_PASSWORD"
                    )));
                }
            };
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"))
            )
        }
        None => {
            let token_text = std::fs::read_to_string(&cli.token_file).map_err(|e| {
                AdminError::Usage(format!(
                    "cannot read the admin token {}: {e}; use --token-file with the server's DATA_DIR/admin.token, or --admin NAME",
                    cli.token_file.display()
                ))
            })?;
            format!("Bearer {}", token_text.trim())
        }
    };
    value.parse().map_err(|_| {
        AdminError::Usage("the admin credentials hold characters a header cannot carry".into())
    })
}

struct Console {
    client: AdminClient<Channel>,
    token: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    address: String,
}

impl Console {
    async fn connect(cli: &AdminCli) -> Result<Self, AdminError> {
        let https = tandem_tls::parse_url_scheme(&cli.server)
            .map_err(|e| AdminError::Usage(format!("--server: {e}")))?;
        if !https && (cli.fingerprint.is_some() || cli.ca_file.is_some()) {
            return Err(AdminError::Usage(format!(
                "--server {} is plaintext http://, which cannot check --fingerprint or --ca-file; use https://",
                cli.server
            )));
        }
        if !https && !tandem_tls::is_loopback_url(&cli.server) {
            return Err(AdminError::Usage(format!(
                "--server {}: plaintext http:// is allowed only to a loopback address; use https://",
                cli.server
            )));
        }
        let token = credentials(cli)?;
        let endpoint = Endpoint::from_shared(cli.server.clone())
            .map_err(|e| {
                AdminError::Usage(format!("--server {:?} is not a valid URL: {e}", cli.server))
            })?
            .connect_timeout(std::time::Duration::from_secs(5));
        let tls = if https {
            Some(
                tandem_tls::ClientTls::new(&console_trust(cli)?, None)
                    .map_err(|e| AdminError::Usage(e.to_string()))?,
            )
        } else {
            None
        };
        // The token is sent only after the server's certificate matched.
        let channel = tandem_tls::connect(endpoint, tls.as_ref())
            .await
            .map_err(|e| match e {
                tandem_tls::ConnectError::Unreachable { url, cause } => AdminError::Unreachable {
                    address: url,
                    cause,
                },
                other => AdminError::Usage(other.to_string()),
            })?;
        Ok(Console {
            client: AdminClient::new(channel),
            token,
            address: cli.server.clone(),
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.metadata_mut().insert("authorization", self.token.clone());
        r
    }

    fn refused(&self, status: tonic::Status) -> AdminError {
        if status.code() == tonic::Code::Unavailable {
            return AdminError::Unreachable {
                address: self.address.clone(),
                cause: status.message().to_string(),
            };
        }
        AdminError::Refused(status.message().to_string())
    }
}

/// How the console recognises the server: `--ca-file`, `--fingerprint`,
/// or the `fingerprint` file the server writes beside its admin token.
fn console_trust(cli: &AdminCli) -> Result<tandem_tls::Trust, AdminError> {
    if let Some(ca) = &cli.ca_file {
        return Ok(tandem_tls::Trust::CaFile(ca.clone()));
    }
    let text = match &cli.fingerprint {
        Some(text) => text.clone(),
        None => {
            let file = cli.token_file.with_file_name("fingerprint");
            std::fs::read_to_string(&file).map_err(|e| {
                AdminError::Usage(format!(
                    "cannot read the server's fingerprint {}: {e}; give --fingerprint (as the server logged it at start) or --ca-file",
                    file.display()
                ))
            })?
        }
    };
    text.parse()
        .map(tandem_tls::Trust::Pinned)
        .map_err(|e: tandem_tls::FingerprintError| AdminError::Usage(e.to_string()))
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

fn node_json(n: &pb::NodeInfo) -> serde_json::Value {
    json!({
        "name": n.name, "locked": n.locked, "registered": show_time(n.registered_ns),
        "last_logon": show_time(n.last_logon_ns), "failed_logons": n.failed_logons,
        "verexists": n.verexists, "verdeleted": n.verdeleted, "retextra": n.retextra, "retonly": n.retonly,
        "filespaces": n.filespaces, "active_objects": n.active_objects, "total_versions": n.total_versions,
        "replstate": n.replstate, "replmode": n.replmode, "replrule": n.replrule,
    })
}

fn print_nodes(nodes: &[pb::NodeInfo], as_json: bool) {
    if as_json {
        let list: Vec<_> = nodes.iter().map(node_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return;
    }
    let mut t = table(&[
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
    ]);
    for n in nodes {
        t.add_row(vec![
            n.name.clone(),
            if n.locked { "yes" } else { "no" }.into(),
            show_time(n.registered_ns),
            show_time(n.last_logon_ns),
            n.failed_logons.to_string(),
            n.verexists.to_string(),
            n.verdeleted.to_string(),
            n.retextra.to_string(),
            n.retonly.to_string(),
            n.filespaces.to_string(),
            n.active_objects.to_string(),
            n.total_versions.to_string(),
            n.replstate.clone(),
            n.replmode.clone(),
            n.replrule.clone(),
        ]);
    }
    println!("{t}");
}

fn print_admins(admins: &[pb::AdminInfo], as_json: bool) {
    if as_json {
        let list: Vec<_> = admins
            .iter()
            .map(|a| {
                json!({
                    "name": a.name, "locked": a.locked, "registered": show_time(a.registered_ns),
                    "last_call": show_time(a.last_logon_ns), "failed_logons": a.failed_logons,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return;
    }
    let mut t = table(&[
        "Administrator",
        "Locked?",
        "Registered",
        "Last Call",
        "Failed Logons",
    ]);
    for a in admins {
        t.add_row(vec![
            a.name.clone(),
            if a.locked { "Yes" } else { "No" }.to_string(),
            show_time(a.registered_ns),
            show_time(a.last_logon_ns),
            a.failed_logons.to_string(),
        ]);
    }
    println!("{t}");
}

async fn execute(cli: AdminCli) -> Result<(), AdminError> {
    // Read local inputs first: a bad password file should not cost a connection.
    let secret = match &cli.command {
        Verb::Register(RegisterNoun::Node { password_file, .. }) => {
            Some(read_secret(password_file.as_deref(), "password")?)
        }
        Verb::Update(UpdateNoun::Node {
            password_file: Some(f),
            ..
        }) => Some(read_secret(Some(f), "password")?),
        Verb::Register(RegisterNoun::Admin { password_file, .. }) => {
            Some(read_secret(password_file.as_deref(), "password")?)
        }
        Verb::Update(UpdateNoun::Admin {
            password_file: Some(f),
            ..
        }) => Some(read_secret(Some(f), "password")?),
        Verb::Define(DefineNoun::Server {
            server_password_file,
            ..
        }) => Some(read_secret(Some(server_password_file), "server password")?),
        Verb::Delete(DeleteNoun::Filespace {
            node,
            name,
            yes: false,
        }) => {
            confirm(&format!(
                "Delete filespace {name} of node {} with all its versions? This cannot be undone. Type yes: ",
                node.to_ascii_uppercase()
            ))?;
            None
        }
        _ => None,
    };
    let mut console = Console::connect(&cli).await?;
    let as_json = cli.json;
    match cli.command {
        Verb::Register(RegisterNoun::Node { name, .. }) => {
            let req = console.request(pb::RegisterNodeRequest {
                name,
                password: secret.unwrap_or_default(),
            });
            let node = console
                .client
                .register_node(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            if !as_json {
                println!("TDM0500I node {} registered", node.name);
            }
            print_nodes(&[node], as_json);
        }
        Verb::Update(UpdateNoun::Node {
            name,
            lock,
            unlock,
            verexists,
            verdeleted,
            retextra,
            retonly,
            replstate,
            replrule,
            ..
        }) => {
            let locked = if lock {
                Some(true)
            } else if unlock {
                Some(false)
            } else {
                None
            };
            if locked.is_none()
                && secret.is_none()
                && replstate.is_none()
                && replrule.is_none()
                && [verexists, verdeleted, retextra, retonly]
                    .iter()
                    .all(Option::is_none)
            {
                return Err(AdminError::Usage(
                    "nothing to update: give --lock, --unlock, a policy value, --replstate, --replrule or --password-file"
                        .into(),
                ));
            }
            let req = console.request(pb::UpdateNodeRequest {
                name,
                locked,
                policy: Some(pb::PolicyUpdate {
                    verexists,
                    verdeleted,
                    retextra,
                    retonly,
                }),
                password: secret,
                replstate_enabled: replstate.map(|s| s == "enabled"),
                replrule,
            });
            let node = console
                .client
                .update_node(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            if !as_json {
                println!("TDM0500I node {} updated", node.name);
            }
            print_nodes(&[node], as_json);
        }
        Verb::Register(RegisterNoun::Admin { name, .. }) => {
            let req = console.request(pb::RegisterAdminRequest {
                name,
                password: secret.unwrap_or_default(),
            });
            let admin = console
                .client
                .register_admin(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            if !as_json {
                println!("TDM0500I administrator {} registered", admin.name);
            }
            print_admins(&[admin], as_json);
        }
        Verb::Update(UpdateNoun::Admin {
            name, lock, unlock, ..
        }) => {
            let req = console.request(pb::UpdateAdminRequest {
                name,
                password: secret.unwrap_or_default(),
                lock,
                unlock,
            });
            let admin = console
                .client
                .update_admin(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            if !as_json {
                println!("TDM0500I administrator {} updated", admin.name);
            }
            print_admins(&[admin], as_json);
        }
        Verb::Remove(RemoveNoun::Admin { name }) => {
            let req = console.request(pb::RemoveAdminRequest { name: name.clone() });
            console
                .client
                .remove_admin(req)
                .await
                .map_err(|s| console.refused(s))?;
            if as_json {
                println!("{}", json!({ "removed": name.to_ascii_uppercase() }));
            } else {
                println!(
                    "TDM0500I administrator {} removed",
                    name.to_ascii_uppercase()
                );
            }
        }
        Verb::Query(QueryNoun::Admin) => {
            let req = console.request(pb::QueryAdminsRequest {});
            let reply = console
                .client
                .query_admins(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            print_admins(&reply.admins, as_json);
        }
        Verb::Rotate(RotateNoun::Admintoken) => {
            let req = console.request(pb::RotateAdminTokenRequest {});
            let reply = console
                .client
                .rotate_admin_token(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            if as_json {
                println!("{}", json!({ "token_file": reply.path }));
            } else {
                println!(
                    "TDM0500I a new admin token is in {} on the server; the old one no longer works",
                    reply.path
                );
            }
        }
        Verb::Remove(RemoveNoun::Node { name }) => {
            let req = console.request(pb::RemoveNodeRequest { name: name.clone() });
            console
                .client
                .remove_node(req)
                .await
                .map_err(|s| console.refused(s))?;
            if as_json {
                println!("{}", json!({ "removed": name.to_ascii_uppercase() }));
            } else {
                println!("TDM0500I node {} removed", name.to_ascii_uppercase());
            }
        }
        Verb::Query(QueryNoun::Node { name }) => {
            let req = console.request(pb::QueryNodesRequest {
                name: name.unwrap_or_default(),
            });
            let reply = console
                .client
                .query_nodes(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            print_nodes(&reply.nodes, as_json);
        }
        Verb::Query(QueryNoun::Actlog {
            begin,
            search,
            limit,
        }) => {
            let begin_ns = begin.as_deref().map(parse_time).transpose()?.unwrap_or(0);
            let req = console.request(pb::QueryActlogRequest {
                begin_ns,
                search: search.unwrap_or_default(),
                limit,
            });
            let reply = console
                .client
                .query_actlog(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            if as_json {
                let list: Vec<_> = reply.records.iter().map(|r| json!({
                    "time": show_time(r.time_ns), "id": r.msg_id, "node": r.node, "peer": r.peer, "message": r.message,
                })).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                let mut t = table(&["Date/Time", "Message"]);
                for r in reply.records {
                    t.add_row(vec![
                        show_time(r.time_ns),
                        format!("{} {}", r.msg_id, r.message),
                    ]);
                }
                println!("{t}");
            }
        }
        Verb::Query(QueryNoun::Session) => {
            let req = console.request(pb::QuerySessionsRequest {});
            let reply = console
                .client
                .query_sessions(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            if as_json {
                let list: Vec<_> = reply.sessions.iter().map(|s| json!({
                    "id": s.id, "node": s.node, "peer": s.peer, "started": show_time(s.started_ns),
                    "last_call": show_time(s.last_call_ns), "bytes_received": s.bytes_received, "bytes_sent": s.bytes_sent,
                })).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                let mut t = table(&[
                    "Sess Number",
                    "Node",
                    "Client Address",
                    "Started",
                    "Last Call",
                    "Bytes Recvd",
                    "Bytes Sent",
                ]);
                for s in reply.sessions {
                    t.add_row(vec![
                        s.id.to_string(),
                        s.node,
                        s.peer,
                        show_time(s.started_ns),
                        show_time(s.last_call_ns),
                        s.bytes_received.to_string(),
                        s.bytes_sent.to_string(),
                    ]);
                }
                println!("{t}");
            }
        }
        Verb::Expire(ExpireNoun::Inventory { now }) => {
            let now_ns = now.as_deref().map(parse_time).transpose()?.unwrap_or(0);
            let req = console.request(pb::ExpireInventoryRequest { now_ns });
            let r = console
                .client
                .expire_inventory(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            print_expiration(&r, as_json);
        }
        Verb::Delete(DeleteNoun::Filespace { node, name, .. }) => {
            let req = console.request(pb::DeleteFilespaceRequest {
                node,
                filespace: name.clone(),
            });
            let r = console
                .client
                .delete_filespace(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            if as_json {
                let reclaimed = r.reclaimed.unwrap_or_default();
                println!("{}", serde_json::to_string_pretty(&json!({
                    "filespace": name, "versions_deleted": r.versions_deleted,
                    "chunks_freed": reclaimed.chunks_freed, "bytes_reclaimed": reclaimed.bytes_reclaimed,
                })).unwrap_or_default());
            } else {
                println!(
                    "TDM0421I filespace {name} deleted: {} version(s)",
                    r.versions_deleted
                );
                print_expiration(&r.reclaimed.unwrap_or_default(), false);
            }
        }
        Verb::Define(DefineNoun::Server {
            name,
            address,
            fingerprint,
            ..
        }) => {
            let req = console.request(pb::DefineServerRequest {
                name,
                address,
                password: secret.unwrap_or_default(),
                fingerprint: fingerprint.unwrap_or_default(),
            });
            let s = console
                .client
                .define_server(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            if as_json {
                println!(
                    "{}",
                    json!({ "name": s.name, "address": s.address, "fingerprint": s.fingerprint })
                );
            } else {
                println!(
                    "TDM0500I server {} defined at {}, certificate fingerprint {}",
                    s.name,
                    s.address,
                    if s.fingerprint.is_empty() {
                        "none (plaintext loopback)"
                    } else {
                        &s.fingerprint
                    }
                );
            }
        }
        Verb::Set(SetNoun::Replserver { name }) => {
            let req = console.request(pb::SetReplServerRequest { name: name.clone() });
            console
                .client
                .set_repl_server(req)
                .await
                .map_err(|s| console.refused(s))?;
            println!(
                "TDM0500I replication server set to {:?}",
                name.to_ascii_uppercase()
            );
        }
        Verb::Set(SetNoun::Failoveraddress { address }) => {
            let req = console.request(pb::SetFailoverAddressRequest {
                address: address.clone(),
            });
            console
                .client
                .set_failover_address(req)
                .await
                .map_err(|s| console.refused(s))?;
            println!("TDM0500I failover address set to {address:?}");
        }
        Verb::Set(SetNoun::Actlogretention { days }) => {
            let req = console.request(pb::SetActlogRetentionRequest { days });
            let r = console
                .client
                .set_actlog_retention(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            println!(
                "TDM0500I activity log retention set to {days} days; {} older records removed",
                r.removed
            );
        }
        Verb::Replicate(ReplicateNoun::Node { names, wait }) => {
            let req = console.request(pb::ReplicateNodeRequest { nodes: names, wait });
            let r = console
                .client
                .replicate_node(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            let failed = r.runs.iter().any(|run| run.state == "failed");
            print_runs(&r.runs, as_json);
            if failed {
                return Err(AdminError::Refused(
                    "replication failed; see the message above and `query actlog`".into(),
                ));
            }
        }
        Verb::Remove(RemoveNoun::Replnode { name }) => {
            let req = console.request(pb::RemoveReplNodeRequest { node: name.clone() });
            console
                .client
                .remove_repl_node(req)
                .await
                .map_err(|s| console.refused(s))?;
            println!(
                "TDM0500I replication removed for node {}",
                name.to_ascii_uppercase()
            );
        }
        Verb::Query(QueryNoun::Server) => {
            let req = console.request(pb::QueryServersRequest {});
            let r = console
                .client
                .query_servers(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            if as_json {
                let list: Vec<_> = r.servers.iter().map(|s| json!({
                    "name": s.name, "address": s.address, "guid": s.guid, "replserver": s.is_replserver,
                    "fingerprint": s.fingerprint,
                })).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                let mut t = table(&[
                    "Server",
                    "Address",
                    "GUID",
                    "Replication Server",
                    "Certificate Fingerprint",
                ]);
                for s in r.servers {
                    t.add_row(vec![
                        s.name,
                        s.address,
                        s.guid,
                        if s.is_replserver { "yes" } else { "" }.into(),
                        s.fingerprint,
                    ]);
                }
                println!("{t}");
            }
        }
        Verb::Query(QueryNoun::Replnode { name }) => {
            let req = console.request(pb::QueryReplNodeRequest { node: name });
            let r = console
                .client
                .query_repl_node(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            if as_json {
                let list: Vec<_> = r.filespaces.iter().map(|f| json!({
                    "filespace": f.name, "source_objects": f.source_objects, "source_bytes": f.source_bytes,
                    "target_objects": f.target_objects, "target_bytes": f.target_bytes,
                })).collect();
                println!("{}", serde_json::to_string_pretty(&json!({
                    "node": r.node, "target": r.target, "last_replication": show_time(r.last_replication_ns), "filespaces": list,
                })).unwrap_or_default());
            } else {
                println!(
                    "Node {} -> {}, last replication {}",
                    r.node,
                    r.target,
                    show_time(r.last_replication_ns)
                );
                let mut t = table(&[
                    "Filespace",
                    "Objects Here",
                    "Bytes Here",
                    "Objects There",
                    "Bytes There",
                ]);
                for f in r.filespaces {
                    t.add_row(vec![
                        f.name,
                        f.source_objects.to_string(),
                        f.source_bytes.to_string(),
                        f.target_objects.to_string(),
                        f.target_bytes.to_string(),
                    ]);
                }
                println!("{t}");
            }
        }
        Verb::Query(QueryNoun::Replication { name }) => {
            let req = console.request(pb::QueryReplicationRequest {
                node: name.unwrap_or_default(),
            });
            let r = console
                .client
                .query_replication(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            print_runs(&r.runs, as_json);
        }
        Verb::Query(QueryNoun::Status) => {
            let req = console.request(pb::QueryStatusRequest {});
            let s = console
                .client
                .query_status(req)
                .await
                .map_err(|s| console.refused(s))?
                .into_inner();
            if as_json {
                println!("{}", serde_json::to_string_pretty(&json!({
                    "server_name": s.server_name, "server_guid": s.server_guid, "data_dir": s.data_dir,
                    "chunks": s.chunks, "stored_bytes": s.stored_bytes, "version": s.version,
                    "fingerprint": s.fingerprint, "tls": s.tls,
                    "actlog_retention_days": s.actlog_retention_days,
                })).unwrap_or_default());
            } else {
                let mut t = table(&["Item", "Value"]);
                for (k, v) in [
                    ("Server name", s.server_name),
                    ("Server GUID", s.server_guid),
                    ("Data directory", s.data_dir),
                    ("Chunks", s.chunks.to_string()),
                    ("Stored bytes", s.stored_bytes.to_string()),
                    ("Version", s.version),
                    ("Certificate fingerprint (SHA-256)", s.fingerprint),
                    (
                        "Activity log retention (days)",
                        s.actlog_retention_days.to_string(),
                    ),
                    (
                        "Transport",
                        if s.tls {
                            "TLS"
                        } else {
                            "PLAINTEXT (development only)"
                        }
                        .into(),
                    ),
                ] {
                    t.add_row(vec![k.to_string(), v]);
                }
                println!("{t}");
            }
        }
    }
    Ok(())
}

/// Runs the console with `args` (including the program name); returns the exit code.
pub async fn run<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match AdminCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 12 } else { 0 };
        }
    };
    match execute(cli).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("TDM0510E {e}");
            12
        }
    }
}
