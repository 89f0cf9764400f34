//! The local vault tier (seed 001): a Tandem store on a local disk or a
//! mounted share that holds this node's backup data beside the server.
//!
//! The vault is the server's own store, not a second implementation of it:
//! the `tandem` binary installs a [`VaultOpener`] (crate `tandem-vault`)
//! that opens the store in this process and serves the server's `Backup`
//! service over an in-memory channel. A vault session is then an ordinary
//! [`Session`], so backup, restore and query run against it unchanged. This
//! library only decides *when* the vault is used; it never links the server.

pub mod calls;
pub mod matched;
pub mod own;
pub mod pulled;
pub mod revision;
pub mod status;
pub mod sync;
pub mod waiting;

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use tandem_proto::{ChunkId, ServerGuid, StoredChunk, pb};
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
    /// Keeps the store and its service alive while sessions use it, and
    /// does the store's own housekeeping.
    pub guard: Arc<dyn VaultStore>,
    /// The command's record of the vault being given up, shared by the
    /// service's guard on each call and by [`calls::VaultCalls`].
    pub stall: calls::Stall,
}

/// What a vault's space reclamation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Chunks no version uses any more, removed from the index.
    pub chunks: u64,
    /// Containers compacted or removed.
    pub containers: u64,
    /// Bytes given back to the file system.
    pub bytes: u64,
}

/// The vault's store, held open while sessions use it.
pub trait VaultStore: Send + Sync + std::fmt::Debug {
    /// Frees the space of data no version in the vault uses any more (after
    /// a pull or a `delete backup` removed versions): the server's own sweep
    /// and compaction. Blocking; the error says what failed.
    fn reclaim(&self) -> Result<Reclaimed, String>;

    /// Of `ids`, those the vault does not hold for its node. Blocking.
    fn missing_chunks(&self, ids: &[ChunkId]) -> Result<HashSet<ChunkId>, String>;

    /// Stores chunks this process compressed from data whose ids it computed
    /// itself (a backup's copy to the vault beside the server), durably and
    /// indexed for the node, as the server's ingest does. Unlike data from
    /// the network they are not decompressed and hashed again (about a
    /// tenth of the client's work in a backup with a vault). A chunk damaged later on disk is
    /// still found, since every read from the vault checks its hash.
    /// Blocking; returns the chunks newly stored.
    fn store_own_chunks(&self, chunks: Vec<StoredChunk>) -> Result<u64, String>;

    /// Puts copies of chunks read from the server in place of the vault's
    /// copies that are damaged or gone (the others are left alone), after
    /// checking each copy against its id: they came over the network.
    /// Blocking.
    fn repair_chunks(&self, chunks: Vec<StoredChunk>) -> Result<Repaired, String>;

    /// Stores versions a pull copies from the server, under the server's
    /// ids and times, checked like any version a vault takes (one it holds
    /// already is skipped); every chunk they use must be in the vault.
    /// `exact`: the vault holds no active version the server lacks, so each
    /// version takes the server's state as it is (the pull has already made
    /// older versions inactive); otherwise a version never displaces a newer
    /// one the vault kept. Blocking; returns the versions newly stored.
    fn store_pulled_versions(
        &self,
        versions: Vec<pb::ObjectVersion>,
        exact: bool,
    ) -> Result<u64, String>;
}

/// What [`VaultStore::repair_chunks`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Damaged or missing copies replaced.
    pub replaced: u64,
    /// Copies in the vault that were whole after all.
    pub intact: u64,
    /// Copies from the server that failed their check (not stored).
    pub refused: u64,
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
    /// with the directory and what to do. With `interrupt_sync`, a sync
    /// that holds the vault is asked to stop (see [`waiting`]) while the
    /// open waits for it. Each look at the directory that takes longer than
    /// `timeout` fails the open (the directory's file system stopped
    /// answering), leaving that look to finish on its own.
    fn open(
        &self,
        dir: PathBuf,
        node: String,
        interrupt_sync: bool,
        timeout: std::time::Duration,
    ) -> OpenFuture;
}

static OPENER: OnceLock<Box<dyn VaultOpener>> = OnceLock::new();

/// What a [`VaultOpener`] answers when a look at the directory ran out of
/// its time; [`open_unchecked`] turns it into
/// [`ClientError::VaultTimedOut`].
pub const DID_NOT_ANSWER: &str = "the vault's directory did not answer in time";

/// Installs the vault implementation; the `tandem` binary does this once at
/// start. A second call is ignored.
pub fn install(opener: Box<dyn VaultOpener>) {
    let _ = OPENER.set(opener);
}

/// The name a vault session reports as its server.
pub const VAULT_NAME: &str = "VAULT";

/// Opens the vault that `options` names and logs on to it, after checking
/// that nobody else wrote to it since this client did. A command that
/// writes versions (and syncs after) passes `interrupt_sync`: a sync that
/// holds the vault then steps aside for it.
///
/// # Errors
/// [`ClientError::Vault`] when no vault is configured, this build cannot open
/// one, or the directory cannot be used; [`ClientError::SecondInstallation`].
pub async fn open(options: &ClientOptions, interrupt_sync: bool) -> Result<Session, ClientError> {
    let vault = open_unchecked(options, interrupt_sync).await?;
    let dir = options.vault_dir.clone().unwrap_or_default();
    let verdict = SyncStatus::load(&dir).and_then(|status| {
        let recorded = revision::load(&options.state_dir())?;
        Ok(revision::judge(
            status.revision,
            recorded.of(vault.info.guid),
        ))
    });
    match verdict {
        Ok(revision::Verdict::Agrees) => Ok(vault),
        Ok(revision::Verdict::Differs {
            vault: at,
            recorded,
        }) => {
            vault.logoff().await;
            Err(ClientError::SecondInstallation {
                dir,
                vault: at,
                recorded: match recorded {
                    Some(r) => format!("last wrote revision {r}"),
                    None => "has no record of it".into(),
                },
            })
        }
        Err(cause) => {
            vault.logoff().await;
            Err(vault_error(&dir, cause))
        }
    }
}

/// Opens the vault without the revision check (for `query vault` and
/// `set vault --accept`, which write nothing to it). With `interrupt_sync`
/// a sync that holds the vault is asked to stop.
async fn open_unchecked(
    options: &ClientOptions,
    interrupt_sync: bool,
) -> Result<Session, ClientError> {
    let Some(dir) = options.vault_dir.clone() else {
        return Err(vault_error(Path::new(""), "no vault_dir is set".into()));
    };
    let Some(opener) = OPENER.get() else {
        return Err(vault_error(
            &dir,
            "this program was built without the vault tier; use the `tandem` binary".into(),
        ));
    };
    // What this client may send from the vault, and whether another
    // installation wrote it, are decided by its records in state_dir.
    crate::state_dir::ensure(&options.state_dir())?;
    let node = options.node_name.to_ascii_uppercase();
    let timeout = std::time::Duration::from_secs(options.vault_timeout_seconds);
    let opened = opener
        .open(dir.clone(), node, interrupt_sync, timeout)
        .await
        .map_err(|cause| match cause.as_str() {
            DID_NOT_ANSWER => ClientError::VaultTimedOut {
                dir: dir.clone(),
                seconds: options.vault_timeout_seconds,
            },
            _ => vault_error(&dir, cause),
        })?;
    Session::over_vault(opened, options, &dir)
        .await
        .map_err(|e| vault_error(&dir, e.to_string()))
}

fn before_write_at(vault: &Session, dir: &Path, state_dir: &Path) -> Result<u64, ClientError> {
    revision::raise(dir, state_dir, vault.info.guid).map_err(|e| vault_error(dir, e))
}

/// Raises the vault's revision before a write to it.
///
/// # Errors
/// [`ClientError::Vault`] when a record cannot be written: the write must
/// not happen then.
pub fn before_write(vault: &Session, options: &ClientOptions) -> Result<u64, ClientError> {
    let dir = options.vault_dir.clone().unwrap_or_default();
    revision::raise(&dir, &options.state_dir(), vault.info.guid).map_err(|e| vault_error(&dir, e))
}

/// `tandem set vault --accept`: takes the vault's current state as this
/// client's, after a second-installation stop the operator has checked.
///
/// # Errors
/// No vault, or one that cannot be opened or recorded.
pub async fn accept(options: &ClientOptions, console: &Console) -> Result<(), ClientError> {
    let vault = open_unchecked(options, false).await?;
    let dir = options.vault_dir.clone().unwrap_or_default();
    let accepted = revision::accept(&dir, &options.state_dir(), vault.info.guid);
    vault.logoff().await;
    let at = accepted.map_err(|e| vault_error(&dir, e))?;
    console.audit(&Msg::vault_accepted(&dir, at));
    Ok(())
}

/// `tandem set vault --resend`: the operator vouches for every version the
/// vault holds now, so the next push (before the next command on the
/// server) sends the server every one of them it lacks. For versions a
/// lost `state_dir` forgot, or a server that lost versions the vault kept.
///
/// # Errors
/// No vault, or records that cannot be read or written.
pub async fn resend(options: &ClientOptions, console: &Console) -> Result<(), ClientError> {
    let vault = open(options, false).await?;
    let dir = options.vault_dir.clone().unwrap_or_default();
    // Recorded while the vault is held, so no sync clears it meanwhile.
    let state_dir = options.state_dir();
    let vouched = match sync::list_versions(&vault).await {
        Ok(versions) => own::load(&state_dir, vault.info.guid).and_then(|known| {
            // Each version once, however often the operator runs this: an
            // entry dated at its backup time, so it vouches for that version.
            let ours = own::stored_by_us(&known, &versions);
            let entries: Vec<_> = versions
                .iter()
                .filter(|(id, _)| !ours.contains(id))
                .map(|(_, v)| own::Entry::Content(own::digest_of(v), v.backup_time_ns))
                .collect();
            own::append(&state_dir, vault.info.guid, &entries)
        }),
        Err(e) => Err(e.to_string()),
    }
    .map_err(|e| vault_error(&dir, e));
    vault.logoff().await;
    vouched?;
    // Every version is vouched for now: an earlier client's record of
    // pulls has nothing left to say.
    let _ = std::fs::remove_file(dir.join(pulled::LEGACY_FILE));
    note_offline_write(&dir)?;
    console.audit(&Msg::vault_resend(&dir));
    Ok(())
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

/// For a vault a client before these records used (its record of pulls is
/// in the vault directory, and this client has none of its own for the
/// vault): says so, and takes nothing of that record. It would vouch for
/// the versions that client stored there alone, but it is the vault's own
/// word, which whoever can write the vault, or put another vault in its
/// place, can write too. The operator vouches for them instead, after
/// checking (`tandem set vault --resend`); the first pull records what the
/// server holds, as for any vault, and from then on only this client's
/// records count.
pub fn note_legacy_record(vault: &Session, dir: &Path, state_dir: &Path, console: &Console) {
    // Only whether a record exists (reading it is for the sync).
    if std::fs::symlink_metadata(pulled::path(state_dir, vault.info.guid)).is_err()
        && std::fs::symlink_metadata(dir.join(pulled::LEGACY_FILE)).is_ok()
    {
        console.report(&Msg::vault_legacy_record(dir), ExitStatus::Warnings);
    }
}

/// What this client can vouch for in `vault` (see [`own`]): its own writes
/// and its last pull, both recorded in `state_dir`.
fn vouched(vault: &Session, state_dir: &Path) -> Result<sync::Vouched, ClientError> {
    let dir = PathBuf::from(&vault.info.address);
    Ok(sync::Vouched {
        own: own::load(state_dir, vault.info.guid).map_err(|e| vault_error(&dir, e))?,
        pulled: pulled::load(state_dir, vault.info.guid).map_err(|e| vault_error(&dir, e))?,
    })
}

/// Before a command reaches the server: when the vault holds writes the
/// server lacks, pushes them first, so the command (an incremental, say)
/// sees them and never stores a newer version before the vault's older one.
/// Returns whether a push ran; the caller then pulls after the command, as
/// the vault is not an exact copy again until then.
///
/// # Errors
/// A failed push: a write must not run on the server before it.
pub async fn push_pending(
    vault: &Session,
    server: &Session,
    dir: &Path,
    state_dir: &Path,
    console: &Console,
) -> Result<bool, ClientError> {
    let mut status = SyncStatus::load(dir).map_err(|e| vault_error(dir, e))?;
    note_legacy_record(vault, dir, state_dir, console);
    let vouched = match vouched(vault, state_dir) {
        Ok(v) => v,
        Err(e) => {
            record_failure(&mut status, &server.info.name, &e.to_string(), dir);
            return Err(e);
        }
    };
    // This client's own record decides, whatever the vault's says.
    if !status.offline_writes && vouched.own.is_empty() {
        return Ok(false);
    }
    let pushed = sync::push(vault, server, &vouched, Some(dir)).await;
    match pushed {
        Ok(pushed) => {
            status.offline_writes = false;
            status.pull_pending = true;
            status.server.clone_from(&server.info.name);
            status.server_guid = server.info.guid.to_string();
            status.save(dir).map_err(|e| vault_error(dir, e))?;
            console.audit(&Msg::vault_synced(
                &server.info.name,
                &pushed,
                &sync::SyncReport::default(),
            ));
            Ok(true)
        }
        Err(e @ ClientError::SyncInterrupted(_)) => Err(e),
        Err(e) => {
            // A vault that stopped answering is not written to again: the
            // record would block on the same share.
            if vault.vault_stalled().is_none() {
                record_failure(&mut status, &server.info.name, &e.to_string(), dir);
            }
            // The vault's own errors say their directory and remedy
            // already: only their cause goes in.
            let cause = match &e {
                ClientError::Vault { cause, .. } => cause.clone(),
                other => other.to_string(),
            };
            Err(vault_error(
                dir,
                format!(
                    "the versions it stored while the server was away could not be sent to server {} ({cause})",
                    server.info.name
                ),
            ))
        }
    }
}

/// After a command on the server: sends the server whatever the vault
/// alone holds, then makes the vault an exact copy of the node's versions
/// there. A failure is a warning: the command's own work is done, and the
/// next sync resumes without resending what was committed.
pub async fn synchronise(
    vault: &Session,
    server: &Session,
    dir: &Path,
    state_dir: &Path,
    console: &Console,
) {
    let name = server.info.name.clone();
    let mut status = match SyncStatus::load(dir) {
        Ok(s) => s,
        Err(e) => {
            console.report(&Msg::vault_sync_failed(&name, &e), ExitStatus::Warnings);
            return;
        }
    };
    let vault_guid = vault.info.guid;
    if !status.offline_writes && !status.reclaim_pending {
        let checked_at = crate::db::now_ns();
        if still_matches(vault, server, state_dir).await {
            // Nothing changed on either side since the vault last matched
            // the server: it matches it now too.
            status.matched(&name, &server.info.guid.to_string(), checked_at);
            if let Err(e) = status.save(dir) {
                console.report(&Msg::vault_sync_failed(&name, &e), ExitStatus::Warnings);
            }
            return;
        }
    }
    // A sync cut short must leave no record that it matched.
    if let Err(e) = matched::forget(state_dir, vault_guid) {
        console.report(&Msg::vault_sync_failed(&name, &e), ExitStatus::Warnings);
        return;
    }
    // Until the pull completes the vault lacks what the command did (a
    // command that wrote through has said so already: `expect_pull`).
    if !status.pull_pending {
        status.pull_pending = true;
        if let Err(e) = status.save(dir) {
            console.report(&Msg::vault_sync_failed(&name, &e), ExitStatus::Warnings);
            return;
        }
    }
    let outcome = async {
        let mut vouched = vouched(vault, state_dir)?;
        // Only a vault this client wrote to alone holds versions of its
        // own (`push_pending` has usually sent them before the command);
        // after a pull from another server, what it brought and this
        // server lacks goes first too.
        let pushed = if status.offline_writes || vouched.may_push(server.info.guid) {
            sync::push(vault, server, &vouched, Some(dir)).await?
        } else {
            sync::SyncReport::default()
        };
        status.revision = before_write_at(vault, dir, state_dir)?;
        let started = crate::db::now_ns();
        // What the pull may copy is recorded first (with what was vouched
        // for already), so a pull cut short leaves nothing it copied
        // unvouched for.
        let (token, on_server) = sync::list_versions_with_token(server).await?;
        let mut before: std::collections::HashMap<_, _> =
            vouched.pulled.take().map(|p| p.ids).unwrap_or_default();
        before.extend(on_server.iter().map(|(id, v)| (*id, own::pulled_digest(v))));
        let listed: Vec<_> = before.iter().map(|(id, d)| (*id, *d)).collect();
        pulled::save(state_dir, vault_guid, server.info.guid, &listed)
            .map_err(|e| vault_error(dir, e))?;
        vouched.pulled = Some(pulled::Record {
            server: server.info.guid,
            ids: before,
        });
        let pulled = sync::pull(server, on_server, vault, &vouched, Some(dir)).await?;
        // The vault is now a copy of the server, and the pull's record
        // names every version it holds that anyone vouches for.
        pulled::save(state_dir, vault_guid, server.info.guid, &pulled.held)
            .map_err(|e| vault_error(dir, e))?;
        own::clear(state_dir, vault_guid).map_err(|e| vault_error(dir, e))?;
        Ok::<_, ClientError>((pushed, pulled, started, token))
    }
    .await;
    match outcome {
        Ok((pushed, pulled, started, token)) => {
            if pulled.kept > 0 {
                console.report(
                    &Msg::vault_keeps_extra(&name, pulled.kept),
                    ExitStatus::Warnings,
                );
            }
            let unvouched = pushed.unvouched.max(pulled.unvouched);
            let clean = pulled.kept == 0 && unvouched == 0;
            if unvouched > 0 {
                console.report(
                    &Msg::vault_unvouched(
                        dir,
                        &name,
                        unvouched,
                        &own::path(state_dir, vault.info.guid),
                    ),
                    ExitStatus::Warnings,
                );
            }
            let pulled = pulled.report;
            status.matched(&name, &server.info.guid.to_string(), started);
            if let Err(e) = status.save(dir) {
                console.report(&Msg::vault_sync_failed(&name, &e), ExitStatus::Warnings);
            }
            let moved = pushed.versions + pushed.deactivated + pulled.versions;
            if moved + pulled.deactivated + pulled.deleted > 0 {
                console.audit(&Msg::vault_synced(&name, &pushed, &pulled));
            }
            if pulled.deleted > 0 || status.reclaim_pending {
                reclaim(vault, console).await;
                status.reclaim_pending = false;
                let _ = status.save(dir);
            }
            // A clean copy: the next command needs only the token to know
            // whether anything changed. Kept or unvouched versions are said
            // again by the next sync instead.
            if clean
                && token != 0
                && let Ok((vault_token, _)) = sync::change_token_and_filespaces(vault).await
            {
                let record = matched::Match {
                    server_guid: server.info.guid.to_string(),
                    token,
                    revision: status.revision,
                    vault_token,
                    at_ns: crate::db::now_ns(),
                };
                if let Err(e) = matched::save(state_dir, vault_guid, &record) {
                    console.report(&Msg::vault_sync_failed(&name, &e), ExitStatus::Warnings);
                }
            }
        }
        Err(ClientError::SyncInterrupted(_)) => {
            console.audit(&Msg::vault_sync_interrupted(dir, &name));
        }
        // A vault that stopped answering is said once, by the command
        // (TDM2125W), and its directory is not written to again.
        Err(_) if vault.vault_stalled().is_some() => {}
        Err(e) => {
            record_failure(&mut status, &name, &e.to_string(), dir);
            console.report(
                &Msg::vault_sync_failed(&name, &e.to_string()),
                ExitStatus::Warnings,
            );
        }
    }
}

/// Whether the vault still matches `server` as at its last clean sync
/// ([`matched`]): the same server and change token, and no write to the
/// vault since. Any doubt (no record, a failed call) is a no.
async fn still_matches(vault: &Session, server: &Session, state_dir: &Path) -> bool {
    let Some(record) = matched::load(state_dir, vault.info.guid) else {
        return false;
    };
    // What the vault may push is decided by the pull's record (without it,
    // a full sync writes it again) and by the record of this client's own
    // writes to it, which only a full sync clears: while that holds
    // anything, every command would list both sides to push it.
    if !pulled::path(state_dir, vault.info.guid).exists()
        || own::path(state_dir, vault.info.guid).exists()
    {
        return false;
    }
    let Some(revision) = revision::load(state_dir)
        .ok()
        .and_then(|r| r.of(vault.info.guid))
    else {
        return false;
    };
    let Ok((vault_token, _)) = sync::change_token_and_filespaces(vault).await else {
        return false;
    };
    match sync::change_token_and_filespaces(server).await {
        Ok((token, _)) => record.holds(
            server.info.guid,
            token,
            (revision, vault_token),
            crate::db::now_ns(),
        ),
        Err(_) => false,
    }
}

/// Records in `dir` that the vault is behind the server until a pull
/// completes, before a command that writes through to the server runs.
///
/// # Errors
/// The record cannot be read or written (then the vault is left out).
pub fn expect_pull(dir: &Path) -> Result<(), String> {
    let mut status = SyncStatus::load(dir)?;
    if status.pull_pending {
        return Ok(());
    }
    status.pull_pending = true;
    status.save(dir)
}

/// Whether the vault in `dir` still has to catch up with the server (see
/// [`SyncStatus::behind`]); a record that cannot be read counts as behind,
/// so the sync that reports it runs.
#[must_use]
pub fn behind(dir: &Path) -> bool {
    SyncStatus::load(dir).map_or(true, |status| status.behind())
}

/// Marks that versions were removed from the vault outside a pull (a
/// client's `delete backup`): the sync after the command frees their space.
/// Best effort: the next pull that removes versions frees it too.
pub fn reclaim_later(dir: &Path) {
    if let Ok(mut status) = SyncStatus::load(dir)
        && !status.reclaim_pending
    {
        status.reclaim_pending = true;
        let _ = status.save(dir);
    }
}

/// Frees the vault's space that versions removed from it used; reports
/// what it gave back in `dsierror.log`. Run at the end of a sync, when no
/// chunk sent during the command still waits for its versions. A failure
/// is a warning: nothing is lost, the space is freed at the next attempt.
async fn reclaim(vault: &Session, console: &Console) {
    let Some(calls) = vault.vault_store().filter(|c| c.stalled().is_none()) else {
        return;
    };
    let store = calls.store().clone();
    let done = tokio::task::spawn_blocking(move || store.reclaim())
        .await
        .unwrap_or_else(|e| Err(format!("the reclamation task failed: {e}")));
    match done {
        Ok(r) if r.chunks + r.containers > 0 => {
            console.audit(&Msg::vault_reclaimed(&vault.info.address, &r));
        }
        Ok(_) => {}
        Err(cause) => console.report(
            &Msg::vault_sync_failed(
                crate::vault::VAULT_NAME,
                &format!("freeing space in {}: {cause}", vault.info.address),
            ),
            ExitStatus::Warnings,
        ),
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
    let vault = open_unchecked(options, false).await?;
    let status = SyncStatus::load(&dir).map_err(|e| vault_error(&dir, e))?;
    let recorded = revision::load(&options.state_dir()).map_err(|e| vault_error(&dir, e))?;
    let verdict = revision::judge(status.revision, recorded.of(vault.info.guid));
    note_legacy_record(&vault, &dir, &options.state_dir(), console);
    let vouched = vouched(&vault, &options.state_dir());
    let listed = sync::list_versions(&vault).await;
    vault.logoff().await;
    let versions = listed?;
    let vouched = vouched?;
    let active = versions.values().filter(|v| v.active).count();
    let judged = vouched.judge(&versions);
    // Versions it stored itself; its deactivations of pulled ones go too,
    // but are not counted as versions.
    let to_send = versions.keys().filter(|id| judged.is_ours(id)).count();
    let unvouched = versions
        .iter()
        .filter(|(id, v)| !judged.holds(id, v))
        .count();
    let time = |ns: i64| {
        if ns == 0 {
            "-".to_string()
        } else {
            crate::output::timefmt::show(ns)
        }
    };
    let word = if to_send > 0 && status.state() == "synchronized" {
        "synchronizing"
    } else {
        status.state()
    };
    let mut state = match word {
        "synchronizing" => format!("synchronizing ({to_send} version(s) to send to the server)"),
        "failed" => format!(
            "failed since {}: {}",
            time(status.failing_since_ns),
            status.last_error
        ),
        other => other.to_string(),
    };
    let second_installation = verdict != revision::Verdict::Agrees;
    if second_installation {
        state = format!(
            "{state}; SECOND INSTALLATION: written by someone else since this client (see `tandem set vault --accept`)"
        );
    }
    if console.json {
        let doc = serde_json::json!({
            "vault_dir": dir,
            "state": word,
            "server": status.server,
            "last_sync": (status.last_sync_ns != 0).then(|| crate::output::timefmt::json(status.last_sync_ns)),
            "matched_server_at": (status.pulled_at_ns != 0).then(|| crate::output::timefmt::json(status.pulled_at_ns)),
            "failing_since": (status.failing_since_ns != 0).then(|| crate::output::timefmt::json(status.failing_since_ns)),
            "last_error": status.last_error,
            "versions": versions.len(),
            "active_versions": active,
            "versions_to_send": to_send,
            "versions_unvouched": unvouched,
            "revision": status.revision,
            "second_installation": second_installation,
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
        ("Revision", status.revision.to_string()),
        (
            "Versions held",
            format!("{} ({active} active)", versions.len()),
        ),
    ] {
        t.add_row(vec![k.to_string(), v]);
    }
    if unvouched > 0 {
        t.add_row(vec![
            "Not written by this client".to_string(),
            format!(
                "{unvouched} version(s): neither this client's writes nor a pull's (TDM2137W); not sent to a server"
            ),
        ]);
    }
    crate::outln!("{t}");
    Ok(())
}
