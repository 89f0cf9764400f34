//! `tandem-server restore-db` (TSM RESTORE DB): puts a catalog copy made by
//! `backup db` back in place of a lost or damaged catalog, on a stopped
//! server, and brings it in line with the containers before anything can
//! start on it.
//!
//! Why the order matters: a store opened on a catalog cuts every container
//! back to its last indexed chunk. An old catalog does not know where a
//! compaction after the copy moved chunks, so opening a store on it first
//! would destroy data it still needs. The containers are therefore read
//! from their own record headers first: index rows whose chunk moved are
//! re-pointed, rows of chunks freed since are dropped and the versions
//! that used them are named. Then every node this server replicated is held
//! for recovery from its replica (`recover node`): the replica may hold
//! versions this catalog lost, which a replication run would delete there,
//! so none can run (and no backup can change the node) until the replica's
//! data is back.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tandem_proto::ChunkId;

use crate::actlog::ServerMsg;
use crate::catalog::{Catalog, ChunkReconcile, Damaged};
use crate::error::ServerError;
use crate::model::{ActlogRecord, ChunkLocation, Policy, now_ns};
use crate::storage::ChunkStore;

/// What a catalog restore did.
#[derive(Debug, Clone)]
pub struct RestoreDbReport {
    /// Where the replaced catalog files were moved (none if there was none).
    pub kept_aside: Option<PathBuf>,
    /// How the index compared with the containers.
    pub chunks: ChunkReconcile,
    /// Stored data that lost its chunks since the copy.
    pub damaged: Damaged,
    /// Nodes held for recovery, with the server holding their replica.
    pub held: Vec<(String, String)>,
}

/// Refuses a data dir another user owns: the restored catalog would be
/// this user's (root's, typically, in a recovery), mode 0600, and the
/// server, running as the directory's owner, could not open it.
fn refuse_other_users_data_dir(data_dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(data_dir)
        .map_err(crate::state::setup_err(format!(
            "cannot read data dir {}",
            data_dir.display()
        )))?
        .uid();
    let me = nix::unistd::geteuid().as_raw();
    if owner != me {
        return Err(ServerError::FailedPrecondition(format!(
            "data dir {} belongs to uid {owner}, not to this process's user (uid {me}); run restore-db as the user the server runs as (e.g. `sudo -u tandem`), so that the restored catalog is that user's. Nothing was changed",
            data_dir.display()
        )));
    }
    Ok(())
}

/// Restores the catalog of `data_dir` from `copy`.
///
/// # Errors
/// The data dir in use by a running server, a copy that is not a whole
/// Tandem catalog or belongs to another server (nothing is changed then),
/// I/O and catalog errors.
pub fn restore_db(
    data_dir: &Path,
    copy: &Path,
    policy: Policy,
    pools: crate::repository::PoolSetup<'_>,
) -> Result<RestoreDbReport, ServerError> {
    refuse_other_users_data_dir(data_dir)?;
    let _lock = crate::state::lock_data_dir(data_dir)?;
    let refused = |e: crate::error::CatalogError| {
        ServerError::FailedPrecondition(format!("{e}; nothing was changed"))
    };
    let guid = Catalog::check_copy(copy).map_err(refused)?;
    let live = data_dir.join("catalog.db");
    let current = current_guid(&live);
    if !current.is_empty() && !guid.is_empty() && current != guid {
        return Err(ServerError::FailedPrecondition(format!(
            "{} is a catalog of server GUID {guid}, but this data dir belongs to {current}; \
             restore a copy of this server's own catalog. Nothing was changed",
            copy.display()
        )));
    }
    // The pool directories pass the checks a start makes before any is
    // read: a catalog is never pointed at another server's containers.
    let owner = [guid.as_str(), current.as_str()]
        .into_iter()
        .find_map(|text| text.parse::<tandem_proto::ServerGuid>().ok());
    if let Some(owner) = owner {
        crate::repository::check_pool_dirs(data_dir, &pools, &owner.to_string())
            .map_err(|e| ServerError::FailedPrecondition(format!("{e}; nothing was changed")))?;
    }
    // A pool the copy uses and the configuration lacks: its rows would be
    // dropped as missing, and its containers emptied at the next start.
    for (name, id) in Catalog::copy_pool_ids(copy).map_err(refused)? {
        let configured = name == "DEFAULT" || pools.more.contains_key(&name);
        if !configured && Catalog::copy_pool_has_chunks(copy, id).map_err(refused)? {
            return Err(ServerError::FailedPrecondition(format!(
                "{} indexes data in storage pool {name}, which the configuration does not have; \
                 add [pools.{name}] as it was and run restore-db again. Nothing was changed",
                copy.display()
            )));
        }
    }
    // Everything is read and decided on a staged copy first: a failure
    // until the final rename leaves the data dir as it was.
    let staged = stage(data_dir, copy)?;
    let mut report = match prepare_staged(&staged, copy, policy, data_dir, &pools) {
        Ok(report) => report,
        Err(e) => {
            discard_staged(&staged);
            return Err(e);
        }
    };
    report.kept_aside = put_in_place(data_dir, &staged)?;
    Ok(report)
}

/// The GUID recorded in the catalog at `live`, or nothing.
fn current_guid(live: &Path) -> String {
    Catalog::check_copy(live).unwrap_or_default()
}

/// Where every configured pool's containers hold each chunk, read from
/// their record headers. Each pool is scanned under the id `catalog` has
/// for it; a pool made after the copy gets its next free id there, so a
/// chunk whose only copy is now in that pool is found, not called missing.
fn scan_pools(
    catalog: &Catalog,
    data_dir: &Path,
    pools: &crate::repository::PoolSetup<'_>,
) -> Result<HashMap<ChunkId, Vec<ChunkLocation>>, ServerError> {
    let configured: Vec<(&str, &crate::config::PoolConfig)> =
        std::iter::once(("DEFAULT", pools.default))
            .chain(pools.more.iter().map(|(name, c)| (name.as_str(), c)))
            .collect();
    let names: Vec<&str> = configured.iter().map(|(name, _)| *name).collect();
    let ids = catalog.pool_ids(&names)?;
    let mut found: HashMap<ChunkId, Vec<ChunkLocation>> = HashMap::new();
    for (name, config) in configured {
        let bucket = crate::repository::open_pool(config)?;
        let dir = crate::repository::pool_dir(data_dir, name, config);
        for (chunk, at) in ChunkStore::scan_dir(&dir, ids[name], bucket.as_ref())? {
            found.entry(chunk).or_default().push(at);
        }
    }
    Ok(found)
}

/// Copies `copy` into the data dir as `catalog.db.restoring`, synced.
fn stage(data_dir: &Path, copy: &Path) -> Result<PathBuf, ServerError> {
    let io = |context: String| move |source| ServerError::Setup { context, source };
    let staged = data_dir.join("catalog.db.restoring");
    discard_staged(&staged);
    std::fs::copy(copy, &staged).map_err(io(format!(
        "copying {} to {}",
        copy.display(),
        staged.display()
    )))?;
    std::fs::File::open(&staged)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("syncing {}", staged.display())))?;
    Ok(staged)
}

/// Removes a staged copy and its SQLite side files.
fn discard_staged(staged: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", staged.display()));
    }
}

/// Brings the staged copy in line with every configured pool's containers,
/// holds the replicated nodes for recovery and logs the restore in it;
/// closes it with everything checkpointed into the one file. The report
/// has nothing kept aside yet.
fn prepare_staged(
    staged: &Path,
    copy: &Path,
    policy: Policy,
    data_dir: &Path,
    pools: &crate::repository::PoolSetup<'_>,
) -> Result<RestoreDbReport, ServerError> {
    let catalog = Catalog::open(staged, policy)?;
    let found = scan_pools(&catalog, data_dir, pools)?;
    let chunks = catalog.reconcile_chunks(&found)?;
    let missing: HashSet<ChunkId> = chunks.missing.iter().copied().collect();
    let damaged = catalog.damaged_by(&missing)?;
    let held = catalog.hold_replicated_nodes_for_recovery(now_ns())?;
    catalog.log_activity(&ActlogRecord {
        time_ns: now_ns(),
        msg_id: ServerMsg::CatalogRestored.id().to_string(),
        node: String::new(),
        peer: String::new(),
        message: format!(
            "catalog restored from {}: {} chunk(s) in place, {} re-pointed, {} missing, {} not in the copy; {} version(s) and {} archive copy(ies) damaged; {} node(s) held for recovery from their replica",
            crate::actlog::label(&copy.display().to_string()),
            chunks.kept,
            chunks.repointed,
            chunks.missing.len(),
            chunks.unindexed,
            damaged.versions,
            damaged.archives,
            held.len()
        ),
    })?;
    catalog.checkpoint()?;
    drop(catalog);
    Ok(RestoreDbReport {
        kept_aside: None,
        chunks,
        damaged,
        held,
    })
}

/// Moves the current catalog files (with their WAL) aside, never deleting
/// them, and renames the prepared `staged` copy over `catalog.db`. Returns
/// where the old files went.
fn put_in_place(data_dir: &Path, staged: &Path) -> Result<Option<PathBuf>, ServerError> {
    let io = |context: String| move |source| ServerError::Setup { context, source };
    // A checkpointed copy needs no side files; stale ones must not pair
    // with it under the new name.
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", staged.display()));
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let aside = data_dir.join(format!("catalog.db.before-restore-{stamp}"));
    let mut moved = false;
    for suffix in ["", "-wal", "-shm"] {
        let from = data_dir.join(format!("catalog.db{suffix}"));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&from, &to).map_err(io(format!("moving {} aside", from.display())))?;
            moved = true;
        }
    }
    std::fs::rename(staged, data_dir.join("catalog.db"))
        .map_err(io(format!("renaming {}", staged.display())))?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", data_dir.display())))?;
    Ok(moved.then_some(aside))
}
