//! The server's shared state: the repository and everything around it that
//! only a running server needs (configuration, identity, sessions, secrets,
//! the data directory's lock), and how a data directory is opened and
//! prepared at start.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_proto::ServerGuid;

use crate::auth::{self, Sessions, Token};
use crate::catalog::{Catalog, Setting};
use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::expire::{self, ExpireReport};
use crate::repository::Repository;
use crate::{model, secrets};

/// Everything the services share.
#[derive(Debug)]
pub struct ServerState {
    /// The configuration the server started with.
    pub config: ServerConfig,
    /// The node data: catalog, containers and pins.
    pub repo: Arc<Repository>,
    /// Open client sessions.
    pub sessions: Sessions,
    /// This server's replication GUID.
    pub guid: ServerGuid,
    /// The bootstrap admin token (DATA_DIR/admin.token); replaced by
    /// `rotate admintoken`.
    pub admin_token: std::sync::RwLock<Token>,
    /// Nodes being replicated now: one run per node (see [`crate::repl::runs`]).
    pub running: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Nodes a `switch replication` (or its `--cancel`) works on now: one
    /// at a time per node, so two commands never move one switch's steps
    /// against each other (see [`crate::repl::switch`]).
    pub switching: std::sync::Mutex<std::collections::HashSet<String>>,
    /// One self-repair at a time per node (by node id): a node's restores
    /// wait for each other's repairs instead of asking the partner twice.
    pub repairing: std::sync::Mutex<std::collections::HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// This server's TLS certificate and key: served to every caller and
    /// presented to partner servers for mutual TLS.
    pub identity: Arc<tandem_tls::ServerIdentity>,
    /// The key partner passwords are sealed with (DATA_DIR/secrets.key).
    pub secrets: secrets::SecretKey,
    /// The exclusive lock on the data directory, held while the state lives.
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// Slots for password verifications (argon2 memory is the bound).
    pub verifications: Arc<tokio::sync::Semaphore>,
    /// The argon2 working memory those slots reuse.
    pub verify_memory: Arc<auth::VerifyMemory>,
    /// Bytes of request bodies held for callers not yet proven
    /// ([`crate::service::limits`]).
    pub unproven_bodies: Arc<crate::service::limits::UnprovenBudget>,
    /// Refusals of callers that proved nothing, recorded at a bounded rate.
    pub refusals: crate::actlog::RefusalThrottle,
    /// Held by a pool or container audit: one at a time, so two never read
    /// the whole pool at once or repair the same chunk twice.
    pub pool_audit: tokio::sync::Mutex<()>,
    /// Chunk-reading streams open per node or partner (bounded, see
    /// [`crate::service::read_slots`]).
    pub read_slots: crate::service::read_slots::ReadSlots,
    /// Listing streams (`QueryObjects`, `QueryArchives`) open per node.
    pub list_slots: crate::service::read_slots::ReadSlots,
    /// Upload streams open per node or partner: each may hold a message
    /// being decoded, which the upload memory budget counts only once it is
    /// whole ([`crate::service::UPLOAD_STREAMS_PER_CALLER`]).
    pub upload_slots: crate::service::read_slots::ReadSlots,
}

/// The data dir holds partner credentials, password hashes and every
/// node's data: like PostgreSQL, refuse to run in one that other users may
/// enter, or that belongs to another user (who could plant links in it that
/// this process would then write through).
fn refuse_shared_data_dir(dir: &Path) -> Result<(), ServerError> {
    refuse_shared_dir(dir, "data dir")
}

/// Refuses `dir` (named `what` in the error) when another user owns it,
/// may enter it, or could put another directory in its place: it holds
/// backup data, which others must not read, and a directory of theirs
/// could hold links this process would write through.
pub(crate) fn refuse_shared_dir(dir: &Path, what: &str) -> Result<(), ServerError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(dir)
        .map_err(setup_err(format!("cannot read {what} {}", dir.display())))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(ServerError::FailedPrecondition(format!(
            "{what} {} belongs to uid {}, not to this process's user (uid {me}); give it to this user (`chown`) or use a directory of its own",
            dir.display(),
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(ServerError::FailedPrecondition(format!(
            "{what} {} is open to other users (mode {:o}); run `chmod 700 {}` and start again",
            dir.display(),
            mode & 0o7777,
            dir.display()
        )));
    }
    refuse_replaceable(dir, what, me)
}

/// Refuses `dir` (a data dir, a pool's directory, where catalog copies go;
/// named `what`) when it or a parent or a link on the way to it lets
/// another user put a directory of their own in its place
/// ([`tandem_os::way`]): this process would then serve, and write into,
/// whatever that user prepared.
pub(crate) fn refuse_replaceable(dir: &Path, what: &str, me: u32) -> Result<(), ServerError> {
    use tandem_os::way::WayError;
    let shown = dir.display();
    let why = match tandem_os::way::check(dir, me) {
        Ok(()) => return Ok(()),
        Err(WayError::ForeignOwner { step, owner }) => format!(
            "{}, on the way to {what} {shown}, belongs to uid {owner}, not to this process's user (uid {me}) or root: its owner could put a directory of their own in its place; keep {what} below directories (and links) of this user's or root's",
            step.display()
        ),
        Err(WayError::OpenToOthers { step, mode }) => format!(
            "others may write in {step} (mode {mode:04o}, no sticky bit), on the way to {what} {shown}, so they could replace what is kept there; run `chmod go-w {step}`, or keep {what} below directories only this user and root may write",
            step = step.display()
        ),
        Err(WayError::TooManyLinks) => format!(
            "more than {} symbolic links on the way to {what} {shown}",
            tandem_os::way::MAX_LINKS
        ),
        Err(WayError::Unreadable { step, source }) => format!(
            "cannot look at {}, on the way to {what} {shown}: {source}",
            step.display()
        ),
    };
    Err(ServerError::FailedPrecondition(why))
}

/// The directories inside a data dir that the store writes into.
const STORE_SUBDIRS: [&str; 1] = ["containers"];

/// Refuses a vault whose `containers` is a symlink, not a directory, or
/// another user's: the checks of the vault directory itself would say
/// nothing about where the store then truncates, compacts and creates
/// files, and a vault may be on a share another machine writes.
fn refuse_linked_subdirs(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    for name in STORE_SUBDIRS {
        let path = dir.join(name);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(setup_err(format!("cannot read {}", path.display()))(e)),
        };
        let wrong = if meta.file_type().is_symlink() {
            "a symbolic link".to_string()
        } else if !meta.is_dir() {
            "not a directory".to_string()
        } else if meta.uid() != me {
            format!(
                "owned by uid {}, not by this process's user (uid {me})",
                meta.uid()
            )
        } else {
            continue;
        };
        return Err(ServerError::FailedPrecondition(format!(
            "{} is {wrong}; a store keeps its containers in a directory of its own. Check who changed it, then move it away (the vault is filled again from the server)",
            path.display()
        )));
    }
    Ok(())
}

/// Takes `DATA_DIR/lock` exclusively (and writes our pid into it), so a
/// second server can never open the same catalog and containers: its
/// start-up would cut the first one's containers back to their last indexed
/// chunk, under a running backup.
pub(crate) fn lock_data_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, ServerError> {
    use std::io::{Read, Seek};
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .map_err(setup_err(format!("cannot open {}", path.display())))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0)
                .and_then(|()| lock.rewind())
                .and_then(|()| writeln!(lock, "{}", std::process::id()))
                .and_then(|()| lock.sync_all())
                .map_err(setup_err(format!("cannot write {}", path.display())))?;
            Ok(lock)
        }
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
            // A pid, and no more of a file whoever holds the lock may have
            // made endless.
            let mut holder = String::new();
            let _ = file.take(32).read_to_string(&mut holder);
            Err(ServerError::FailedPrecondition(format!(
                "data dir {} is in use by another tandem-server (pid {}); stop that server first, or give this one a data dir of its own",
                dir.display(),
                holder
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect::<String>()
            )))
        }
        Err((_, errno)) => Err(setup_err(format!("cannot lock {}", path.display()))(
            std::io::Error::from(errno),
        )),
    }
}

/// The server's name is kept in its catalog: a data dir started under
/// another `--name` would show a new name with the same GUID to clients and
/// partners. `rename` accepts the new name on purpose. Only checks: the
/// name is stored once the start has passed its other checks.
fn check_server_name(catalog: &Catalog, config: &ServerConfig) -> Result<(), ServerError> {
    match catalog.setting(Setting::ServerName)? {
        Some(stored) if stored != config.name && !config.rename => {
            Err(ServerError::FailedPrecondition(format!(
                "data dir {} belongs to server {stored}, but this start names it {}; start it as {stored}, or add --rename to rename it (clients and partners must then use the new name)",
                config.data_dir.display(),
                config.name
            )))
        }
        _ => Ok(()),
    }
}

pub(crate) fn setup_err(context: String) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Setup { context, source }
}

/// Reads a bearer token (the admin token, the metrics token), creating it
/// (mode 0600) on first start.
pub(crate) fn load_or_create_token(path: &Path) -> Result<Token, ServerError> {
    // Read and written never through a link, and read with a bound.
    let text = tandem_os::atomic_file::read_small_text(path, 4096);
    match text {
        Ok(text) if !text.trim().is_empty() => return Ok(Token::new(&text)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(setup_err(format!("cannot read {}", path.display()))(e)),
    }
    let token = Token::random();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(setup_err(format!("cannot create {}", path.display())))?;
    file.write_all(format!("{}\n", token.expose()).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(setup_err(format!("cannot write {}", path.display())))?;
    Ok(token)
}

/// Writes `text` to `path` with mode 0600, replacing it atomically (a crash
/// leaves the old content or the new, never a mix).
fn write_private(path: &Path, text: &str) -> Result<(), ServerError> {
    tandem_os::atomic_file::replace(path, text.as_bytes(), Some(0o600))
        .map_err(setup_err(format!("cannot write {}", path.display())))
}

/// Seals partner passwords that a server from before sealing stored in clear
/// (see [`secrets`]), leaving no trace of the clear ones; a no-op once all
/// are sealed. Warns about sealed ones this key cannot open (a replaced or
/// lost `secrets.key`), which would otherwise fail only at the next run.
fn seal_partner_passwords(catalog: &Catalog, key: &secrets::SecretKey) -> Result<(), ServerError> {
    let mut clear = Vec::new();
    for partner in catalog.servers()? {
        let purpose = secrets::partner_purpose(&partner.name);
        if !secrets::SecretKey::is_sealed(&partner.sealed_password) {
            clear.push((
                partner.name.clone(),
                key.seal(&purpose, &partner.sealed_password),
            ));
        } else if let Err(e) = key.open(&purpose, &partner.sealed_password) {
            tracing::warn!(server = partner.name, "{e}");
        }
    }
    if !clear.is_empty() {
        catalog.replace_server_passwords(&clear)?;
        tracing::info!(
            servers = clear.len(),
            "partner passwords stored in clear by an older server are now sealed"
        );
    }
    Ok(())
}

/// How much of a server's catalog is read through a memory map
/// ([`Catalog::read_through_memory_map`]); address space, not memory: the
/// pages are the file system's cache, shared by all connections.
const CATALOG_MAP_BYTES: i64 = 16 << 30;

/// What a data directory is opened as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A `tandem-server`.
    Server,
    /// A client's local vault.
    Vault,
}

/// Registers the first administrator, ADMIN, when there is none (a new
/// data dir, or one from before named administrators), with a random
/// password written to `password_file` for the operator to use and change.
fn create_first_admin(catalog: &Catalog, password_file: &Path) -> Result<(), ServerError> {
    if !catalog.list_admins()?.is_empty() {
        return Ok(());
    }
    let password = Token::random();
    let hash = auth::hash_password(password.expose())?;
    write_private(password_file, &format!("{}\n", password.expose()))?;
    catalog.register_admin(FIRST_ADMIN, &hash, model::now_ns())?;
    tracing::warn!(
        "administrator {FIRST_ADMIN} registered; its password is in {} (give it with `tandem-admin --admin {FIRST_ADMIN} --admin-password-file {}`, then change it with `update admin`)",
        password_file.display(),
        password_file.display()
    );
    Ok(())
}

/// The administrator made at the first start.
pub const FIRST_ADMIN: &str = "ADMIN";

impl ServerState {
    /// Ends the session holding `token` (a client's logoff, a partner's
    /// bye): it is forgotten and the chunks it pinned may be reclaimed.
    pub fn end_session(&self, token: &str) -> Option<auth::Session> {
        let session = self.sessions.close(token)?;
        self.repo.pins.release(session.id);
        Some(session)
    }

    /// Ends every session of `node` (it was removed), as [`Self::end_session`].
    pub fn end_node_sessions(&self, node: &str) {
        for id in self.sessions.close_node(node) {
            self.repo.pins.release(id);
        }
    }

    /// Ends every replication session of partner `source` (deleted), as
    /// [`Self::end_session`].
    pub fn end_partner_sessions(&self, source: &str) {
        for id in self.sessions.close_replication(source) {
            self.repo.pins.release(id);
        }
    }

    /// Ends session number `id` for an administrator: its token is refused
    /// from now on and the chunks it pinned may be reclaimed.
    pub fn cancel_session(&self, id: u64) -> Option<auth::Session> {
        let session = self.sessions.cancel(id)?;
        self.repo.pins.release(session.id);
        Some(session)
    }

    /// The shared password of partner `partner`, opened from its sealed form.
    ///
    /// # Errors
    /// The catalog's value cannot be opened with this server's key.
    pub fn partner_password(&self, partner: &model::PartnerServer) -> Result<String, ServerError> {
        Ok(self.secrets.open(
            &secrets::partner_purpose(&partner.name),
            &partner.sealed_password,
        )?)
    }

    /// Seals a partner's shared password for the catalog.
    #[must_use]
    pub fn seal_partner_password(&self, partner: &str, password: &str) -> String {
        self.secrets
            .seal(&secrets::partner_purpose(partner), password)
    }

    /// The numbers of the sessions open now (clients and partners).
    #[must_use]
    pub fn open_session_ids(&self) -> std::collections::HashSet<u64> {
        self.sessions.list().iter().map(|s| s.id).collect()
    }

    /// Runs expiration and reclamation on the repository as of `now_ns`,
    /// keeping the pins of the sessions open now (see [`expire`]).
    ///
    /// # Errors
    /// Catalog and storage errors; what was done before the error stays done.
    pub fn expire_inventory(&self, now_ns: i64) -> Result<ExpireReport, ServerError> {
        expire::expire_inventory(&self.repo, &|| self.open_session_ids(), now_ns)
    }

    /// What [`Self::expire_inventory`] at `now_ns` would delete; changes nothing.
    ///
    /// # Errors
    /// Catalog errors.
    pub fn preview_expiration(
        &self,
        now_ns: i64,
        list_limit: usize,
    ) -> Result<expire::ExpirePreview, ServerError> {
        expire::preview_expiration(&self.repo, now_ns, list_limit)
    }

    /// Sweeps and compacts the repository without expiring versions.
    ///
    /// # Errors
    /// Catalog and storage errors.
    pub fn reclaim(&self) -> Result<ExpireReport, ServerError> {
        expire::reclaim(&self.repo, &|| self.open_session_ids())
    }

    /// Replaces the bootstrap token with a new random one, in
    /// DATA_DIR/admin.token first and then in memory; returns the file.
    ///
    /// # Errors
    /// The file cannot be written (the old token stays in force).
    pub fn rotate_admin_token(&self) -> Result<PathBuf, ServerError> {
        let path = self.config.data_dir.join("admin.token");
        let token = Token::random();
        // Held across the file and the swap: two rotations at once cannot
        // leave the file holding one token and the server the other.
        let mut current = self.admin_token.write().unwrap_or_else(|e| e.into_inner());
        write_private(&path, &format!("{}\n", token.expose()))?;
        *current = token;
        Ok(path)
    }

    /// Opens the data directory, creating the catalog, containers, GUID and
    /// admin token on first start, and cutting unacknowledged container bytes.
    ///
    /// # Errors
    /// I/O and catalog errors, each naming the file at fault.
    pub fn open(config: ServerConfig) -> Result<Arc<Self>, ServerError> {
        Self::open_as(config, Role::Server)
    }

    /// Opens a data directory as a client's local vault: the same store,
    /// but no administrator is created (nobody administers a vault over the
    /// network; its service is reached in memory only).
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn open_vault(config: ServerConfig) -> Result<Arc<Self>, ServerError> {
        Self::open_as(config, Role::Vault)
    }

    fn open_as(config: ServerConfig, role: Role) -> Result<Arc<Self>, ServerError> {
        let dir = &config.data_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(setup_err(format!(
                "cannot create data dir {}",
                dir.display()
            )))?;
        match role {
            Role::Server => refuse_shared_data_dir(dir)?,
            Role::Vault => refuse_shared_dir(dir, "the vault directory")?,
        }
        let lock = lock_data_dir(dir)?;
        if role == Role::Vault {
            refuse_linked_subdirs(dir)?;
        }
        let pools = crate::repository::PoolSetup {
            default: &config.pool,
            more: &config.pools,
        };
        let mut repo = Repository::open(dir, config.policy, pools, &config.name, |catalog| {
            check_server_name(catalog, &config)
        })?;
        repo.ingest_budget = crate::repository::ingest::IngestBudget::new(config.ingest_memory_mib);
        if role == Role::Server {
            repo.catalog.read_through_memory_map(CATALOG_MAP_BYTES)?;
            // Whatever changed the catalog while this build was not running
            // it (an older build, a file put in its place) drew no token:
            // every node gets a new one, and each vault compares in full once.
            repo.catalog.renew_change_tokens()?;
        }
        let repo = Arc::new(repo);
        let catalog: &Catalog = &repo.catalog;
        // Kept once the start got this far (a prefix claimed under it): a
        // first start refused by its pool leaves the data dir unnamed.
        if catalog.setting(Setting::ServerName)?.as_deref() != Some(config.name.as_str()) {
            catalog.set_setting(Setting::ServerName, &config.name)?;
        }
        let guid = catalog.server_guid()?;
        let admin_token = load_or_create_token(&dir.join("admin.token"))?;
        let secrets = secrets::SecretKey::load_or_create(&dir.join("secrets.key"))?;
        seal_partner_passwords(catalog, &secrets)?;
        if role == Role::Server {
            create_first_admin(catalog, &dir.join("admin.password"))?;
        }
        let identity = match (&config.tls_cert, &config.tls_key, role) {
            // A vault is served in memory only: nothing of TLS is read
            // from, or written to, its directory.
            (_, _, Role::Vault) => {
                tandem_tls::ServerIdentity::ephemeral(&config.certificate_names())
            }
            (Some(cert), Some(key), Role::Server) => {
                tandem_tls::ServerIdentity::from_files(cert, key)
            }
            _ => tandem_tls::ServerIdentity::load_or_create(
                &dir.join("tls"),
                &config.certificate_names(),
            ),
        }
        .map_err(|e| ServerError::FailedPrecondition(format!("TLS identity: {e}")))?;
        let interrupted = catalog.fail_interrupted_runs(model::now_ns())?;
        if interrupted > 0 {
            tracing::warn!(
                runs = interrupted,
                "replication runs interrupted by the last stop are marked failed"
            );
        }
        for switch in catalog.unfinished_switches()? {
            tracing::warn!(
                node = %switch.node,
                to = %switch.partner,
                step = %switch.step,
                "a planned role switch of this node was interrupted; it takes no sessions until `tandem-admin switch replication {}` finishes it (or --cancel undoes it)",
                switch.node
            );
        }
        Ok(Arc::new(ServerState {
            config,
            repo,
            sessions: Sessions::default(),
            guid,
            admin_token: std::sync::RwLock::new(admin_token),
            running: std::sync::Mutex::default(),
            switching: std::sync::Mutex::default(),
            repairing: std::sync::Mutex::default(),
            identity: Arc::new(identity),
            secrets,
            _lock: lock,
            verifications: Arc::new(tokio::sync::Semaphore::new(
                auth::MAX_CONCURRENT_VERIFICATIONS,
            )),
            verify_memory: Arc::default(),
            unproven_bodies: crate::service::limits::unproven_body_budget(),
            refusals: crate::actlog::RefusalThrottle::default(),
            pool_audit: tokio::sync::Mutex::default(),
            read_slots: crate::service::read_slots::ReadSlots::new("data streams"),
            list_slots: crate::service::read_slots::ReadSlots::new("listing streams"),
            upload_slots: crate::service::read_slots::ReadSlots::sized(
                "upload streams",
                crate::service::UPLOAD_STREAMS_PER_CALLER,
                crate::service::UPLOAD_STREAMS_WAITING,
            ),
        }))
    }
}
