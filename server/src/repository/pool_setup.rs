//! Before a server's storage pools open: where each keeps its containers,
//! the checks that no two pools, and no two servers, write into one
//! directory, a start refused without a pool that holds data, and which
//! container numbers each pool must not take again.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::catalog::Catalog;
use crate::config::PoolConfig;
use crate::error::{ServerError, StorageError};
use crate::storage::ChunkStore;

/// The pools a repository opens: the default one (`[pool]`) and the
/// others by upper-case name (`[pools.NAME]`).
#[derive(Debug, Clone, Copy)]
pub struct PoolSetup<'a> {
    /// `[pool]`.
    pub default: &'a PoolConfig,
    /// `[pools.NAME]`.
    pub more: &'a BTreeMap<String, PoolConfig>,
}

/// Where pool `name`'s containers are: DATA_DIR/containers for the default
/// pool; the configured directory, or DATA_DIR/pools/NAME, for the others.
#[must_use]
pub fn pool_dir(data_dir: &Path, name: &str, config: &PoolConfig) -> PathBuf {
    if name == "DEFAULT" {
        return data_dir.join("containers");
    }
    config
        .directory
        .clone()
        .unwrap_or_else(|| data_dir.join("pools").join(name))
}

/// One pool, ready to open.
pub(super) struct Place<'a> {
    pub(super) id: u32,
    pub(super) name: String,
    /// `pool` or `pools.NAME`.
    pub(super) table: String,
    pub(super) config: &'a PoolConfig,
    pub(super) dir: PathBuf,
    /// The ends of the containers the catalog indexes in this pool.
    pub(super) ends: Vec<(u32, u64)>,
    /// Container numbers other pools have.
    pub(super) taken: HashSet<u32>,
}

/// Every configured pool, ready to open.
pub(super) struct Prepared<'a> {
    pub(super) places: Vec<Place<'a>>,
    /// The highest container number anywhere: files and markers of every
    /// pool directory (those under DATA_DIR/pools of pools no longer
    /// configured too) and the catalog's index.
    pub(super) highest: u32,
    /// Names of pools the catalog knows and the configuration does not.
    pub(super) unconfigured: BTreeMap<u32, String>,
}

/// Gives each configured pool its id, directory and numbers, after the
/// checks of the module's doc.
///
/// # Errors
/// [`StorageError::Pool`] for a pool holding data that is not configured,
/// two pools on one directory, or a directory another server or pool
/// claimed; catalog and I/O errors.
pub(super) fn prepare<'a>(
    data_dir: &Path,
    catalog: &Catalog,
    pools: PoolSetup<'a>,
    guid: &str,
) -> Result<Prepared<'a>, ServerError> {
    let names: Vec<&str> = std::iter::once("DEFAULT")
        .chain(pools.more.keys().map(String::as_str))
        .collect();
    let ids = catalog.pool_ids(&names)?;
    let ends = catalog.container_ends_by_pool()?;
    let mut unconfigured = catalog.pool_names()?;
    unconfigured.retain(|id, _| !ids.values().any(|v| v == id));
    refuse_unconfigured_pools(&unconfigured, &ends)?;
    let mut places = Vec::new();
    for name in names {
        let (config, table) = match pools.more.get(name) {
            Some(config) => (config, format!("pools.{name}")),
            None => (pools.default, "pool".to_string()),
        };
        let dir = pool_dir(data_dir, name, config);
        // As the data dir: for this user alone, since it holds backup data.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StorageError::Io {
                path: dir.clone(),
                source,
            })?;
        if config.directory.is_some() {
            // One inside the data dir is covered by the data dir's checks.
            let what = format!("the directory of [{table}]");
            crate::state::refuse_replaceable(&dir, &what, nix::unistd::geteuid().as_raw())?;
            close_to_readers(&dir, &table, name, guid)?;
            crate::state::refuse_shared_dir(&dir, &what)?;
        }
        let id = ids[name];
        places.push(Place {
            id,
            name: name.to_string(),
            table,
            config,
            ends: ends
                .iter()
                .filter(|(pool, _, _)| *pool == id)
                .map(|(_, c, end)| (*c, *end))
                .collect(),
            dir,
            taken: HashSet::new(),
        });
    }
    refuse_shared_dirs(&places)?;
    for place in &places {
        claim_dir(place, guid)?;
    }
    // Numbers in every pool directory, configured or not, each directory
    // once however its path is written.
    let mut found: Vec<(PathBuf, HashSet<u32>)> = Vec::new();
    let mut dirs: Vec<PathBuf> = places.iter().map(|p| resolved(&p.dir)).collect();
    if let Ok(entries) = std::fs::read_dir(data_dir.join("pools")) {
        dirs.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .map(|p| resolved(&p)),
        );
    }
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        let numbers = ChunkStore::numbers_in(&dir)?;
        found.push((dir, numbers));
    }
    let mut highest = ends.iter().map(|(_, c, _)| *c).max().unwrap_or(0);
    for (_, numbers) in &found {
        highest = highest.max(numbers.iter().copied().max().unwrap_or(0));
    }
    for place in &mut places {
        let own = resolved(&place.dir);
        for (dir, numbers) in &found {
            if *dir != own {
                place.taken.extend(numbers);
            }
        }
        place.taken.extend(
            ends.iter()
                .filter(|(pool, _, _)| *pool != place.id)
                .map(|(_, c, _)| *c),
        );
    }
    Ok(Prepared {
        places,
        highest,
        unconfigured,
    })
}

/// `dir` with every link and `.` resolved (as it is when that fails).
fn resolved(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
}

/// Takes other users' read and search permission off a pool directory
/// this server already claimed for pool `pool` (earlier versions made it
/// 0755) when it is this user's, no link, and only its owner may write in
/// it: nobody else could have changed what is in it. Any other directory
/// open to others is refused as before. Said once in the log.
fn close_to_readers(dir: &Path, table: &str, pool: &str, guid: &str) -> Result<(), ServerError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |source| StorageError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(io)?;
    let mode = meta.mode() & 0o7777;
    let ours = || {
        std::fs::read(dir.join(CLAIM_FILE))
            .ok()
            .filter(|bytes| bytes.len() as u64 <= MAX_CLAIM_BYTES)
            .and_then(|bytes| serde_json::from_slice::<Claim>(&bytes).ok())
            .is_some_and(|claim| claim.server_guid == guid && claim.pool == pool)
    };
    if meta.is_dir()
        && meta.uid() == nix::unistd::geteuid().as_raw()
        && mode & tandem_os::way::OTHERS_WRITE == 0
        && mode & 0o077 != 0
        && ours()
    {
        let closed = mode & !0o077;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(closed)).map_err(io)?;
        tracing::warn!(
            "the directory of [{table}], {}, was readable by other users (mode {mode:04o}); it is {closed:04o} now",
            dir.display()
        );
    }
    Ok(())
}

/// Refuses a start without a pool that holds indexed chunks: the versions
/// using them could not be restored, and the chunks would look missing to
/// an audit. The pool's table must come back first.
fn refuse_unconfigured_pools(
    unconfigured: &BTreeMap<u32, String>,
    ends: &[(u32, u32, u64)],
) -> Result<(), ServerError> {
    let Some((pool, container, _)) = ends.iter().find(|(p, _, _)| unconfigured.contains_key(p))
    else {
        return Ok(());
    };
    let name = &unconfigured[pool];
    Err(StorageError::Pool {
        pool: name.clone(),
        container: Some(*container),
        reason: format!(
            "this storage pool holds backup data but the configuration has no [pools.{name}]; \
             add it again as it was (kind, directory or bucket) and restart"
        ),
    }
    .into())
}

/// Refuses two pools whose containers directories are one (however the
/// paths are written): their appends would overwrite each other, and
/// expiration in one would delete the other's containers.
fn refuse_shared_dirs(places: &[Place<'_>]) -> Result<(), ServerError> {
    let mut seen: Vec<(PathBuf, &str)> = Vec::new();
    for place in places {
        let real = place
            .dir
            .canonicalize()
            .map_err(|source| StorageError::Io {
                path: place.dir.clone(),
                source,
            })?;
        if let Some((_, other)) = seen.iter().find(|(dir, _)| *dir == real) {
            return Err(StorageError::Pool {
                pool: place.name.clone(),
                container: None,
                reason: format!(
                    "its containers directory {} is pool {other}'s too; give [{}] a directory of its own",
                    real.display(),
                    place.table
                ),
            }
            .into());
        }
        seen.push((real, &place.name));
    }
    Ok(())
}

/// The file that binds a pool directory to one server's pool.
const CLAIM_FILE: &str = "tandem-pool.json";
/// Far more than a claim (a GUID and a pool name) takes.
const MAX_CLAIM_BYTES: u64 = 64 * 1024;

/// What a claim file holds.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct Claim {
    server_guid: String,
    pool: String,
}

/// Binds a pool's directory to that pool of the server `guid` the first
/// time it is used, and refuses it afterwards to any other server or pool:
/// nothing else locks a directory outside the data dir, and a second server
/// opening it would cut away every container its own catalog does not
/// index. An unclaimed directory that already holds containers is taken
/// only by the default pool (its own DATA_DIR/containers, from before
/// claims) or by a pool whose chunks the catalog indexes there.
///
/// # Errors
/// [`StorageError::Pool`] for a directory claimed by another server or
/// pool, an unclaimed one holding containers this pool does not index, or
/// a claim file that cannot be read as ours; I/O errors.
fn claim_dir(place: &Place<'_>, guid: &str) -> Result<(), ServerError> {
    if check_claim(place, guid)? {
        return Ok(());
    }
    let (dir, name) = (place.dir.as_path(), place.name.as_str());
    let path = dir.join(CLAIM_FILE);
    let ours = Claim {
        server_guid: guid.to_string(),
        pool: name.to_string(),
    };
    let io = |source| -> ServerError {
        StorageError::Io {
            path: path.clone(),
            source,
        }
        .into()
    };
    let text = serde_json::to_string(&ours).map_err(|e| {
        ServerError::from(StorageError::Pool {
            pool: name.to_string(),
            container: None,
            reason: e.to_string(),
        })
    })?;
    // Of two servers starting at once on one directory, one creates the
    // claim; the other finds it taken and reads it next start.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

/// Whether `place`'s directory is claimed for this pool of server `guid`
/// already (`false`: unclaimed, and free to claim).
///
/// # Errors
/// As [`claim_dir`], which writes nothing when this fails.
fn check_claim(place: &Place<'_>, guid: &str) -> Result<bool, ServerError> {
    let (dir, name) = (place.dir.as_path(), place.name.as_str());
    let path = dir.join(CLAIM_FILE);
    let ours = Claim {
        server_guid: guid.to_string(),
        pool: name.to_string(),
    };
    let refuse = |reason: String| -> ServerError {
        StorageError::Pool {
            pool: name.to_string(),
            container: None,
            reason,
        }
        .into()
    };
    let io = |source| -> ServerError {
        StorageError::Io {
            path: path.clone(),
            source,
        }
        .into()
    };
    // Bounded and never through a link: a vault's directory may be on a
    // share that others write.
    match tandem_os::atomic_file::read_small_text(&path, MAX_CLAIM_BYTES) {
        Ok(text) => {
            let found: Claim = serde_json::from_str(&text).map_err(|e| {
                refuse(format!(
                    "{} is not a pool claim Tandem wrote ({e}); give this pool another directory",
                    path.display()
                ))
            })?;
            if found == ours {
                return Ok(true);
            }
            Err(refuse(format!(
                "{} belongs to pool {} of the server with GUID {}; give [pools.{name}] a directory of its own",
                dir.display(),
                found.pool,
                found.server_guid
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let holds_containers = !ChunkStore::numbers_in(dir)?.is_empty();
            if holds_containers && name != "DEFAULT" && place.ends.is_empty() {
                return Err(refuse(format!(
                    "{} holds containers this server's catalog does not index (another server's?); \
                     give [pools.{name}] an empty directory of its own",
                    dir.display()
                )));
            }
            Ok(false)
        }
        Err(e) => Err(io(e)),
    }
}

/// The checks a start makes on the configured pools' directories (two
/// pools on one directory; a directory another server or pool claimed,
/// or an unclaimed one holding containers), creating and claiming
/// nothing: `restore-db` runs them before it reads any directory, so a
/// catalog is never pointed at containers that are not this server's.
/// Directories that do not exist yet are skipped.
///
/// # Errors
/// As [`prepare`].
pub fn check_pool_dirs(
    data_dir: &Path,
    pools: &PoolSetup<'_>,
    guid: &str,
) -> Result<(), ServerError> {
    let places: Vec<Place<'_>> = std::iter::once(("DEFAULT", pools.default, "pool".to_string()))
        .chain(
            pools
                .more
                .iter()
                .map(|(name, config)| (name.as_str(), config, format!("pools.{name}"))),
        )
        .map(|(name, config, table)| Place {
            id: 0,
            name: name.to_string(),
            table,
            config,
            dir: pool_dir(data_dir, name, config),
            ends: Vec::new(),
            taken: HashSet::new(),
        })
        .filter(|place| place.dir.is_dir())
        .collect();
    refuse_shared_dirs(&places)?;
    for place in &places {
        check_claim(place, guid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost::bytes::Bytes;
    use tandem_proto::ChunkId;

    use crate::config::PoolConfig;
    use crate::model::{ChunkLocation, Policy};
    use crate::repository::{PoolSetup, Repository};
    use crate::storage::verify_chunk;

    fn open(data: &std::path::Path, more: &BTreeMap<String, PoolConfig>) -> Repository {
        let setup = PoolSetup {
            default: &PoolConfig::default(),
            more,
        };
        Repository::open(data, Policy::default(), setup, "TEST", |_| Ok(())).unwrap()
    }

    /// Stores one chunk (seeded) for node `node` and returns where it went.
    fn store(repo: &Repository, node: i64, seed: u8) -> ChunkLocation {
        let raw = vec![seed; 1000];
        let id = ChunkId::of(&raw);
        let data = Bytes::from(zstd::bulk::compress(&raw, 1).unwrap());
        let chunk = verify_chunk(id, data, 1000).unwrap();
        repo.store_chunks(1, node, vec![chunk]).unwrap();
        repo.catalog.chunk_copies(&id).unwrap()[0]
    }

    #[test]
    fn a_pool_added_back_never_appends_to_a_number_another_pool_took_meanwhile() {
        let data = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let tape = PoolConfig {
            directory: Some(outside.path().join("tape")),
            ..PoolConfig::default()
        };
        let with_tape = BTreeMap::from([("TAPE".to_string(), tape)]);
        let node = {
            let repo = open(data.path(), &with_tape);
            let node = repo.catalog.register_node("N", "h", 1).unwrap().unwrap().id;
            assert_eq!(
                store(&repo, node, 1).container,
                1,
                "DEFAULT's open container"
            );
            node
        };
        // TAPE (its empty container 2 in a directory outside the data dir)
        // leaves the configuration; DEFAULT seals and takes number 2.
        {
            let repo = open(data.path(), &BTreeMap::new());
            assert_eq!(repo.pools.default_store().seal().unwrap(), 2);
            assert_eq!(store(&repo, node, 2).container, 2);
        }
        // TAPE comes back: its newest file is number 2, which DEFAULT has,
        // so its data goes to a new number.
        let repo = open(data.path(), &with_tape);
        let tape_id = repo.pools.id_of("TAPE").unwrap();
        repo.catalog.set_node_pool("N", tape_id).unwrap();
        let at = store(&repo, node, 3);
        assert_eq!(at.pool, tape_id);
        assert!(at.container > 2, "{at:?}");
        // DEFAULT's container 2 kept its chunk.
        let raw = vec![2u8; 1000];
        let copy = repo.catalog.chunk_copies(&ChunkId::of(&raw)).unwrap()[0];
        assert_eq!((copy.pool, copy.container), (0, 2));
        assert!(repo.pools.read(copy).is_ok());
    }
}
