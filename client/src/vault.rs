//! The local vault tier (seed 001): a Tandem store on a local disk or a
//! mounted share that holds this node's backup data beside the server.
//!
//! The vault is the server's own store, not a second implementation of it:
//! the `tandem` binary installs a [`VaultOpener`] (crate `tandem-vault`)
//! that opens the store in this process and serves the server's `Backup`
//! service over an in-memory channel. A vault session is then an ordinary
//! [`Session`], so backup, restore and query run against it unchanged. This
//! library only decides *when* the vault is used; it never links the server.

pub mod status;
pub mod sync;

use std::any::Any;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use tandem_proto::ServerGuid;
use tonic::transport::Channel;

use crate::error::{ClientError, ExitStatus};
use crate::logon::session::Session;
use crate::options::ClientOptions;
use crate::output::console::Console;
use crate::output::messages::Msg;
use status::SyncStatus;

/// A vault opened in this process, ready for a logon.
pub struct OpenedVault {
    /// The in-memory connection to the vault's `Backup` service.
    pub channel: Channel,
    /// The node's password in the vault (kept in the vault directory).
    pub password: String,
    /// The vault store's GUID.
    pub guid: ServerGuid,
    /// Keeps the store and its service alive while sessions use it.
    pub guard: Arc<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for OpenedVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedVault")
            .field("guid", &self.guid)
            .finish_non_exhaustive()
    }
}

/// What [`VaultOpener::open`] returns.
pub type OpenFuture = Pin<Box<dyn Future<Output = Result<OpenedVault, String>> + Send>>;

/// Opens a vault directory for a node: creates the store on first use and
/// registers the node in it.
pub trait VaultOpener: Send + Sync {
    /// Opens `dir` for `node` (upper case). The error says what is wrong
    /// with the directory and what to do.
    fn open(&self, dir: PathBuf, node: String) -> OpenFuture;
}

static OPENER: OnceLock<Box<dyn VaultOpener>> = OnceLock::new();

/// Installs the vault implementation; the `tandem` binary does this once at
/// start. A second call is ignored.
pub fn install(opener: Box<dyn VaultOpener>) {
    let _ = OPENER.set(opener);
}

/// The name a vault session reports as its server.
pub const VAULT_NAME: &str = "VAULT";

/// Opens the vault that `options` names and logs on to it.
///
/// # Errors
/// [`ClientError::Vault`] when no vault is configured, this build cannot open
/// one, or the directory cannot be used.
pub async fn open(options: &ClientOptions) -> Result<Session, ClientError> {
    let Some(dir) = options.vault_dir.clone() else {
        return Err(vault_error(Path::new(""), "no vault_dir is set".into()));
    };
    let Some(opener) = OPENER.get() else {
        return Err(vault_error(
            &dir,
            "this program was built without the vault tier; use the `tandem` binary".into(),
        ));
    };
    let node = options.node_name.to_ascii_uppercase();
    let opened = opener
        .open(dir.clone(), node)
        .await
        .map_err(|cause| vault_error(&dir, cause))?;
    Session::over_vault(opened, options, &dir)
        .await
        .map_err(|e| vault_error(&dir, e.to_string()))
}

fn vault_error(dir: &Path, cause: String) -> ClientError {
    ClientError::Vault {
        dir: dir.to_path_buf(),
        cause,
    }
}

/// Records, before a command writes to the vault alone, that the server
/// will need what it writes; the write is refused when that cannot be
/// recorded (the vault would later take it for the server's deletion).
///
/// # Errors
/// [`ClientError::Vault`] when the record cannot be read or written.
pub fn note_offline_write(dir: &Path) -> Result<(), ClientError> {
    let mut status = SyncStatus::load(dir).map_err(|e| vault_error(dir, e))?;
    if !status.offline_writes {
        status.offline_writes = true;
        status.save(dir).map_err(|e| vault_error(dir, e))?;
    }
    Ok(())
}

/// Before a command reaches the server: when the vault holds writes the
/// server lacks, pushes them first, so the command (an incremental, say)
/// sees them and never stores a newer version before the vault's older one.
///
/// # Errors
/// A failed push: the command must not run on the server before it.
pub async fn push_pending(
    vault: &Session,
    server: &Session,
    dir: &Path,
    console: &Console,
) -> Result<(), ClientError> {
    let mut status = SyncStatus::load(dir).map_err(|e| vault_error(dir, e))?;
    if !status.offline_writes {
        return Ok(());
    }
    match sync::push(vault, server, status.pulled_at_ns).await {
        Ok(pushed) => {
            status.offline_writes = false;
            status.server.clone_from(&server.info.name);
            status.save(dir).map_err(|e| vault_error(dir, e))?;
            console.audit(&Msg::vault_synced(
                &server.info.name,
                &pushed,
                &sync::SyncReport::default(),
            ));
            Ok(())
        }
        Err(e) => {
            record_failure(&mut status, &server.info.name, &e.to_string(), dir);
            Err(vault_error(
                dir,
                format!(
                    "the versions it stored while the server was away could not be sent to server {} ({e}); nothing was done on the server, so that no newer backup overtakes them; try again",
                    server.info.name
                ),
            ))
        }
    }
}

/// After a command on the server: makes the vault a copy of the node's
/// versions there (pushing first whatever the vault alone holds). A
/// failure is a warning: the command's own work is done, and the next
/// command resumes the sync without resending what was committed.
pub async fn synchronise(vault: &Session, server: &Session, dir: &Path, console: &Console) {
    let name = server.info.name.clone();
    let mut status = match SyncStatus::load(dir) {
        Ok(s) => s,
        Err(e) => {
            console.report(&Msg::vault_sync_failed(&name, &e), ExitStatus::Warnings);
            return;
        }
    };
    let outcome = async {
        let pushed = if status.offline_writes {
            sync::push(vault, server, status.pulled_at_ns).await?
        } else {
            sync::SyncReport::default()
        };
        let started = crate::db::now_ns();
        let pulled = sync::pull(server, vault).await?;
        Ok::<_, ClientError>((pushed, pulled, started))
    }
    .await;
    match outcome {
        Ok((pushed, pulled, started)) => {
            status.pulled_at_ns = started;
            status.offline_writes = false;
            status.server.clone_from(&name);
            status.last_sync_ns = crate::db::now_ns();
            status.last_error.clear();
            status.failing_since_ns = 0;
            if let Err(e) = status.save(dir) {
                console.report(&Msg::vault_sync_failed(&name, &e), ExitStatus::Warnings);
            }
            let moved = pushed.versions + pushed.deactivated + pulled.versions;
            if moved + pulled.deactivated + pulled.deleted > 0 {
                console.audit(&Msg::vault_synced(&name, &pushed, &pulled));
            }
        }
        Err(e) => {
            record_failure(&mut status, &name, &e.to_string(), dir);
            console.report(
                &Msg::vault_sync_failed(&name, &e.to_string()),
                ExitStatus::Warnings,
            );
        }
    }
}

fn record_failure(status: &mut SyncStatus, server: &str, cause: &str, dir: &Path) {
    let now = crate::db::now_ns();
    status.server = server.to_string();
    status.last_sync_ns = now;
    status.last_error = cause.to_string();
    if status.failing_since_ns == 0 {
        status.failing_since_ns = now;
    }
    // The failure is reported already; a record that cannot be written
    // only loses the "since when".
    let _ = status.save(dir);
}

/// Whether the vault matched the server at its last sync and holds no
/// writes the server lacks: then it can serve restores.
#[must_use]
pub fn is_synchronized(dir: &Path) -> bool {
    SyncStatus::load(dir).is_ok_and(|s| s.state() == "synchronized")
}

/// `tandem query vault`: the vault's state against the server and what it
/// holds, read from the vault alone (no server is asked).
///
/// # Errors
/// No `vault_dir`, or a vault that cannot be opened.
pub async fn query(options: &ClientOptions, console: &Console) -> Result<(), ClientError> {
    let Some(dir) = options.vault_dir.clone() else {
        return Err(ClientError::Usage(
            "no local vault is configured: set vault_dir in the options file".into(),
        ));
    };
    let vault = open(options).await?;
    let status = SyncStatus::load(&dir).map_err(|e| vault_error(&dir, e))?;
    let listed = sync::list_versions(&vault).await;
    vault.logoff().await;
    let versions = listed?;
    let active = versions.values().filter(|v| v.active).count();
    let own = versions
        .values()
        .filter(|v| v.backup_time_ns > status.pulled_at_ns)
        .count();
    let to_send = if status.offline_writes { own } else { 0 };
    let time = |ns: i64| {
        if ns == 0 {
            "-".to_string()
        } else {
            crate::output::timefmt::show(ns)
        }
    };
    let state = match status.state() {
        "synchronizing" => format!("synchronizing ({to_send} version(s) to send to the server)"),
        "failed" => format!(
            "failed since {}: {}",
            time(status.failing_since_ns),
            status.last_error
        ),
        other => other.to_string(),
    };
    if console.json {
        let doc = serde_json::json!({
            "vault_dir": dir,
            "state": status.state(),
            "server": status.server,
            "last_sync": (status.last_sync_ns != 0).then(|| crate::output::timefmt::json(status.last_sync_ns)),
            "matched_server_at": (status.pulled_at_ns != 0).then(|| crate::output::timefmt::json(status.pulled_at_ns)),
            "failing_since": (status.failing_since_ns != 0).then(|| crate::output::timefmt::json(status.failing_since_ns)),
            "last_error": status.last_error,
            "versions": versions.len(),
            "active_versions": active,
            "versions_to_send": to_send,
        });
        crate::outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(());
    }
    let mut t = crate::query::table(&["Item", "Value"]);
    for (k, v) in [
        ("Vault", dir.display().to_string()),
        ("State", state),
        ("Server", status.server.clone()),
        ("Last sync", time(status.last_sync_ns)),
        ("Matched the server at", time(status.pulled_at_ns)),
        (
            "Versions held",
            format!("{} ({active} active)", versions.len()),
        ),
    ] {
        t.add_row(vec![k.to_string(), v]);
    }
    crate::outln!("{t}");
    Ok(())
}
