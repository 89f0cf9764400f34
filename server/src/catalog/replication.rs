//! Replication in the catalog: partner servers, run records, the source's
//! inventory, and applying a replica on the target.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};
use tandem_proto::{ObjectId, ServerGuid};
use tandem_replication::ObjectState;

use super::dirs::{DirIds, delete_unused_dirs, split_path};
use super::objects::{
    ObjectRow, VERSION_COLUMNS, VERSION_TABLES, deactivate, insert_object, version_from_row,
};
use super::{Catalog, from_sql_int, sql_int};
use crate::error::{CatalogError, ServerError};
use crate::model::{
    PartnerServer, ReplMode, ReplRule, ReplRun, ReplState, RunState, StoredVersion,
};

/// The state of one version, as compared between servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionState {
    /// Object id.
    pub object_id: ObjectId,
    /// Active or not.
    pub active: bool,
    /// Deactivation time (0 when active).
    pub deactivated_ns: i64,
    /// Logical size (for `query replnode`).
    pub size: u64,
}

impl From<VersionState> for ObjectState {
    /// The part of a version's state the replication engine compares.
    fn from(v: VersionState) -> Self {
        ObjectState {
            object_id: v.object_id,
            active: v.active,
            deactivated_ns: v.deactivated_ns,
        }
    }
}

impl From<crate::model::Filespace> for FilespaceTimes {
    /// The backup times a source hands its target at the end of a run.
    fn from(f: crate::model::Filespace) -> Self {
        FilespaceTimes {
            name: f.name,
            last_backup_start_ns: f.last_backup_start_ns,
            last_backup_end_ns: f.last_backup_end_ns,
        }
    }
}

/// Source filespace times carried to the target at the end of a run.
#[derive(Debug, Clone)]
pub struct FilespaceTimes {
    /// Name.
    pub name: String,
    /// Last backup start on the source.
    pub last_backup_start_ns: i64,
    /// Last completed backup on the source.
    pub last_backup_end_ns: i64,
}

const RUN_COLUMNS: &str = "id, node, target, started_ns, ended_ns, state, objects_sent, \
     bytes_sent, chunks_skipped, objects_deleted, states_updated, message";

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReplRun> {
    Ok(ReplRun {
        id: r.get(0)?,
        node: r.get(1)?,
        target: r.get(2)?,
        started_ns: r.get(3)?,
        ended_ns: r.get(4)?,
        state: r.get(5)?,
        objects_sent: from_sql_int(r.get(6)?),
        bytes_sent: from_sql_int(r.get(7)?),
        chunks_skipped: from_sql_int(r.get(8)?),
        objects_deleted: from_sql_int(r.get(9)?),
        states_updated: from_sql_int(r.get(10)?),
        message: r.get(11)?,
    })
}

/// A partner's GUID column: empty until its first Hello; anything else that
/// is not a GUID is a damaged catalog, refused naming the column.
fn learned_guid(text: String, column: usize) -> rusqlite::Result<Option<ServerGuid>> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// What [`Catalog::delete_server`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerDeletion {
    /// The definition is gone.
    Deleted,
    /// No server has that name.
    NotDefined,
    /// It is this server's replication server.
    IsReplServer,
    /// It is the source of the replicas of these nodes.
    SourceOf(Vec<String>),
}

impl Catalog {
    /// Defines or redefines a partner server; its password comes sealed
    /// ([`crate::secrets`]).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn define_server(
        &self,
        name: &str,
        address: &str,
        sealed_password: &str,
        fingerprint: &str,
    ) -> Result<(), CatalogError> {
        self.conn().execute(
            "INSERT INTO servers (name, address, password, fingerprint) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET address = excluded.address,
                 password = excluded.password, fingerprint = excluded.fingerprint",
            params![name, address, sealed_password, fingerprint],
        )?;
        Ok(())
    }

    /// Replaces partners' passwords (name, sealed value) so that the old
    /// values leave no trace in the database files: with `secure_delete` the
    /// freed space is zeroed, and a truncating checkpoint empties the WAL
    /// that held the old pages. For sealing what an older server stored in
    /// clear.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn replace_server_passwords(
        &self,
        sealed: &[(String, String)],
    ) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        conn.pragma_update(None, "secure_delete", true)?;
        let result = (|| -> Result<(), CatalogError> {
            let tx = conn.transaction()?;
            for (name, value) in sealed {
                tx.execute(
                    "UPDATE servers SET password = ?2 WHERE name = ?1",
                    params![name, value],
                )?;
            }
            tx.commit()?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })();
        conn.pragma_update(None, "secure_delete", false)?;
        result
    }

    /// Changes what is given of a partner's definition; `None` keeps a
    /// value. Returns false when no server has that name.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn update_server(
        &self,
        name: &str,
        address: Option<&str>,
        sealed_password: Option<&str>,
        fingerprint: Option<&str>,
    ) -> Result<bool, CatalogError> {
        let changed = self.conn().execute(
            "UPDATE servers SET address = coalesce(?2, address),
                    password = coalesce(?3, password), fingerprint = coalesce(?4, fingerprint)
              WHERE name = ?1",
            params![name, address, sealed_password, fingerprint],
        )?;
        Ok(changed == 1)
    }

    /// Deletes a partner's definition unless something still needs it: the
    /// checks and the delete are one transaction, so a `set replserver` or a
    /// replica arriving meanwhile cannot slip between them.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn delete_server(&self, name: &str) -> Result<ServerDeletion, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let defined: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM servers WHERE name = ?1)",
            [name],
            |r| r.get(0),
        )?;
        if !defined {
            return Ok(ServerDeletion::NotDefined);
        }
        let repl_server: Option<String> = tx
            .query_row(
                "SELECT value FROM server_info WHERE key = ?1",
                [super::Setting::ReplServer.key()],
                |r| r.get(0),
            )
            .optional()?;
        if repl_server.as_deref() == Some(name) {
            return Ok(ServerDeletion::IsReplServer);
        }
        let replicas = {
            let mut stmt = tx.prepare(
                "SELECT name FROM nodes WHERE replmode = 'receive' AND repl_server = ?1 ORDER BY name",
            )?;
            stmt.query_map([name], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?
        };
        if !replicas.is_empty() {
            return Ok(ServerDeletion::SourceOf(replicas));
        }
        tx.execute("DELETE FROM servers WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(ServerDeletion::Deleted)
    }

    /// All partner servers by name.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn servers(&self) -> Result<Vec<PartnerServer>, CatalogError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, address, password, guid, failover_address, fingerprint
             FROM servers ORDER BY name",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(PartnerServer {
                    name: r.get(0)?,
                    address: r.get(1)?,
                    sealed_password: r.get(2)?,
                    guid: learned_guid(r.get(3)?, 3)?,
                    failover_address: r.get(4)?,
                    fingerprint: r.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// One partner server.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn server(&self, name: &str) -> Result<Option<PartnerServer>, CatalogError> {
        Ok(self.servers()?.into_iter().find(|s| s.name == name))
    }

    /// Records what a partner said about itself at Hello.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn set_server_identity(
        &self,
        name: &str,
        guid: ServerGuid,
        failover_address: &str,
    ) -> Result<(), CatalogError> {
        self.conn().execute(
            "UPDATE servers SET guid = ?2, failover_address = ?3 WHERE name = ?1",
            params![name, guid.to_string(), failover_address],
        )?;
        Ok(())
    }

    /// Sets replication state, rule or mode of a node (unset values stay).
    /// Returns false when the node does not exist.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn update_node_replication(
        &self,
        name: &str,
        replstate: Option<ReplState>,
        replrule: Option<ReplRule>,
        replmode: Option<ReplMode>,
    ) -> Result<bool, CatalogError> {
        Ok(self.conn().execute(
            "UPDATE nodes SET replstate = coalesce(?2, replstate), replrule = coalesce(?3, replrule),
                              replmode = coalesce(?4, replmode)
             WHERE name = ?1",
            params![name, replstate, replrule, replmode],
        )? == 1)
    }

    /// Every visible version of a node with its chunks (the source inventory).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn node_versions(&self, node_id: i64) -> Result<Vec<StoredVersion>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(&format!(
            "SELECT {VERSION_COLUMNS} FROM {VERSION_TABLES}
             WHERE f.node_id = ?1 AND o.expiring = 0 ORDER BY f.name, d.path, o.name, o.backup_ns"
        ))?;
        let rows = stmt
            .query_map([node_id], |r| version_from_row(r, true))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Versions of a node by object id.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn versions_by_id(
        &self,
        node_id: i64,
        ids: &[ObjectId],
    ) -> Result<Vec<StoredVersion>, CatalogError> {
        // One read transaction for every lookup (see `with_snapshot`).
        let mut reader = self.reader();
        let conn = reader.transaction()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM {VERSION_TABLES}
             WHERE f.node_id = ?1 AND o.object_id = ?2"
        ))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(v) = stmt
                .query_row(params![node_id, id.0.as_slice()], |r| {
                    version_from_row(r, true)
                })
                .optional()?
            {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// The state of every visible version of a node, with its filespace.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn version_states(
        &self,
        node_id: i64,
    ) -> Result<Vec<(String, VersionState)>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT f.name, o.object_id, o.active, o.deactivated_ns, o.size
             FROM filespaces f JOIN dirs d ON d.filespace_id = f.id JOIN objects o ON o.dir_id = d.id
             WHERE f.node_id = ?1 AND o.expiring = 0",
        )?;
        let rows = stmt
            .query_map([node_id], |r| {
                let id: Vec<u8> = r.get(1)?;
                Ok((
                    r.get::<_, String>(0)?,
                    id,
                    r.get(2)?,
                    r.get(3)?,
                    from_sql_int(r.get(4)?),
                ))
            })?
            .filter_map(|r| r.ok())
            .filter_map(|(fs, id, active, deactivated_ns, size)| {
                ObjectId::from_slice(&id).ok().map(|object_id| {
                    (
                        fs,
                        VersionState {
                            object_id,
                            active,
                            deactivated_ns,
                            size,
                        },
                    )
                })
            })
            .collect();
        Ok(rows)
    }

    /// Target side: creates the replica of a node in receive mode, owned by
    /// `source`, or updates its password hash and lock. A replica belongs to
    /// the server that created it; a local node is never turned into one.
    ///
    /// # Errors
    /// [`ServerError::FailedPrecondition`] for a local node,
    /// [`ServerError::PermissionDenied`] for another server's replica; SQLite errors.
    pub fn prepare_replica(
        &self,
        name: &str,
        password_hash: &str,
        locked: bool,
        source: &str,
        now_ns: i64,
    ) -> Result<(), ServerError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let existing: Option<(i64, ReplMode, String)> = tx
            .query_row(
                "SELECT id, replmode, repl_server FROM nodes WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match existing {
            None => {
                tx.execute(
                    &format!(
                        "INSERT INTO nodes (id, name, password_hash, locked, registered_ns, replstate, replmode, repl_server)
                         VALUES ({}, ?1, ?2, ?3, ?4, 'enabled', 'receive', ?5)",
                        super::nodes::NEXT_NODE_ID
                    ),
                    params![name, password_hash, locked, now_ns, source],
                )?;
            }
            Some((_, mode, _)) if mode != ReplMode::Receive => {
                return Err(ServerError::FailedPrecondition(format!(
                    "node {name} is registered on this server as a node of its own; it cannot become a replica of server {source}. Rename one of them, or remove the local node if it is not needed"
                )));
            }
            Some((_, _, owner)) if owner != source => {
                return Err(ServerError::PermissionDenied(format!(
                    "node {name} is the replica of server {owner}; server {source} may not change it. To move it, run `remove replnode {name}`, `delete filespace` for each of its filespaces and `remove node {name}` on this server; {source} then creates it afresh"
                )));
            }
            Some((id, _, _)) => {
                tx.execute(
                    "UPDATE nodes SET password_hash = ?2, locked = ?3, replstate = 'enabled' WHERE id = ?1",
                    params![id, password_hash, locked],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Target side: applies state changes (versions turned inactive on the source).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn apply_states(&self, node_id: i64, states: &[ObjectState]) -> Result<u64, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut updated = 0u64;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE objects SET active = ?3, deactivated_ns = ?4
                 WHERE object_id = ?2 AND filespace_id IN (SELECT id FROM filespaces WHERE node_id = ?1)",
            )?;
            // Deactivations first, so a version turning active never meets
            // another active version of its path.
            let mut ordered: Vec<&ObjectState> = states.iter().collect();
            ordered.sort_by_key(|s| s.active);
            for s in ordered {
                updated += stmt.execute(params![
                    node_id,
                    s.object_id.0.as_slice(),
                    s.active,
                    s.deactivated_ns
                ])? as u64;
            }
        }
        if updated > 0 {
            super::changes::node_changed(&tx, node_id)?;
        }
        tx.commit()?;
        Ok(updated)
    }

    /// Marks active versions of `node_id` inactive at the given times (a
    /// local vault's sync), never before a version's own backup time (two
    /// clocks made these times); inactive versions and other nodes' ids are
    /// left as they are. Returns the versions changed.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn deactivate_versions(
        &self,
        node_id: i64,
        deactivations: &[(ObjectId, i64)],
    ) -> Result<u64, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        super::switches::refuse_if_switch_stopped_writes(&tx, node_id)?;
        let mut changed = 0u64;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE objects SET active = 0, deactivated_ns = MAX(?3, backup_ns)
                 WHERE object_id = ?2 AND active = 1
                 AND filespace_id IN (SELECT id FROM filespaces WHERE node_id = ?1)",
            )?;
            for (id, at_ns) in deactivations {
                changed += stmt.execute(params![node_id, id.0.as_slice(), at_ns])? as u64;
            }
        }
        if changed > 0 {
            super::changes::node_changed(&tx, node_id)?;
        }
        tx.commit()?;
        Ok(changed)
    }

    /// Target side: stores replicated versions under their source object ids.
    /// Ids already present are skipped, so a resumed run can resend a batch.
    /// Every chunk must already be indexed and owned by the replica node
    /// (sent for it in this or an earlier run).
    ///
    /// # Errors
    /// [`ServerError::MissingChunks`]; SQLite errors.
    pub fn put_replicated(
        &self,
        node_id: i64,
        versions: &[StoredVersion],
    ) -> Result<u64, ServerError> {
        self.put_versions(node_id, versions, false)
    }

    /// Stores versions a node's local vault made while this server was
    /// away, under their original ids and times, as [`Self::put_replicated`]
    /// does, except that a version never displaces a newer one: an active
    /// vault version whose path has a newer version here (active or not) is
    /// stored inactive, until the first such version's backup time. Ids
    /// held for another node are refused, and a planned switch that stopped
    /// the node's writes refuses the whole batch, as for a backup.
    ///
    /// # Errors
    /// [`ServerError::MissingChunks`]; SQLite errors.
    pub fn put_vault_versions(
        &self,
        node_id: i64,
        versions: &[StoredVersion],
    ) -> Result<u64, ServerError> {
        self.put_versions(node_id, versions, true)
    }

    fn put_versions(
        &self,
        node_id: i64,
        versions: &[StoredVersion],
        newer_wins: bool,
    ) -> Result<u64, ServerError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if newer_wins {
            super::switches::refuse_if_switch_stopped_writes(&tx, node_id)?;
        }
        let mut stored = 0u64;
        {
            let mut has_object = tx.prepare_cached("SELECT 1 FROM objects WHERE object_id = ?1")?;
            let mut owner = tx.prepare_cached(
                "SELECT f.node_id FROM objects o JOIN filespaces f ON f.id = o.filespace_id
                 WHERE o.object_id = ?1",
            )?;
            let mut dirs = DirIds::default();
            let mut filespaces: HashMap<String, i64> = HashMap::new();
            for v in versions {
                if newer_wins {
                    // A node's own sync: an id held for another node is a
                    // conflict to report, not a version to count as stored.
                    let held_by: Option<i64> = owner
                        .query_row([v.object_id.0.as_slice()], |r| r.get(0))
                        .optional()?;
                    match held_by {
                        Some(id) if id == node_id => continue,
                        Some(_) => {
                            return Err(ServerError::InvalidArgument(format!(
                                "version id {} is not this node's; the vault's version of {:?} cannot be stored under it",
                                v.object_id, v.attrs.path
                            )));
                        }
                        None => {}
                    }
                } else if has_object.exists([v.object_id.0.as_slice()])? {
                    continue;
                }
                if let Some((first, count)) =
                    Self::first_unowned(&tx, node_id, &mut v.chunks.iter())?
                {
                    return Err(ServerError::MissingChunks { count, first });
                }
                let fs_id = match filespaces.get(&v.filespace) {
                    Some(id) => *id,
                    None => {
                        let id = Self::filespace_id(&tx, node_id, &v.filespace, true)?
                            .ok_or_else(|| CatalogError::Malformed("filespace vanished".into()))?;
                        filespaces.insert(v.filespace.clone(), id);
                        id
                    }
                };
                let a = &v.attrs;
                let (dir, name) = split_path(&a.path);
                let dir_id = dirs
                    .get(&tx, fs_id, dir, true)?
                    .ok_or_else(|| CatalogError::Malformed(format!("directory {dir} vanished")))?;
                let newer = if v.active && newer_wins {
                    first_newer(&tx, dir_id, name, v.backup_ns)?
                } else {
                    None
                };
                let (active, deactivated_ns) = match newer {
                    Some(newer_ns) => (false, newer_ns),
                    None => (v.active, v.deactivated_ns),
                };
                if active {
                    deactivate(&tx, dir_id, name, v.backup_ns)?;
                }
                insert_object(
                    &tx,
                    &ObjectRow {
                        object_id: &v.object_id,
                        filespace_id: fs_id,
                        dir_id,
                        attrs: a,
                        backup_ns: v.backup_ns,
                        active,
                        deactivated_ns,
                        chunks: &v.chunks,
                    },
                )?;
                stored += 1;
            }
        }
        if stored > 0 {
            super::changes::node_changed(&tx, node_id)?;
        }
        tx.commit()?;
        Ok(stored)
    }

    /// Target side: deletes replicated versions by object id.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn delete_replicated(&self, node_id: i64, ids: &[ObjectId]) -> Result<u64, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut deleted = 0u64;
        {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM objects WHERE object_id = ?2
                 AND filespace_id IN (SELECT id FROM filespaces WHERE node_id = ?1)",
            )?;
            for id in ids {
                deleted += stmt.execute(params![node_id, id.0.as_slice()])? as u64;
            }
        }
        if deleted > 0 {
            delete_unused_dirs(&tx)?;
            super::changes::node_changed(&tx, node_id)?;
        }
        tx.commit()?;
        Ok(deleted)
    }

    /// Target side: records a finished run: the source's filespace backup
    /// times and the replication time, so failover clients can judge currency.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn finish_replica(
        &self,
        node_id: i64,
        filespaces: &[FilespaceTimes],
        replicated_ns: i64,
    ) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for fs in filespaces {
            let id = Self::filespace_id(&tx, node_id, &fs.name, true)?
                .ok_or_else(|| CatalogError::Malformed("filespace vanished".into()))?;
            tx.execute(
                "UPDATE filespaces SET last_backup_start_ns = ?2, last_backup_end_ns = ?3, last_repl_ns = ?4
                 WHERE id = ?1",
                params![id, fs.last_backup_start_ns, fs.last_backup_end_ns, replicated_ns],
            )?;
        }
        tx.execute(
            "UPDATE nodes SET last_repl_ns = ?2 WHERE id = ?1",
            params![node_id, replicated_ns],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Source side: opens a run record.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn start_run(&self, node: &str, target: &str, now_ns: i64) -> Result<i64, CatalogError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO repl_runs (node, target, started_ns) VALUES (?1, ?2, ?3)",
            params![node, target, now_ns],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Source side: closes a run record; on success also marks the node replicated.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn end_run(&self, run: &ReplRun) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE repl_runs SET ended_ns = ?2, state = ?3, objects_sent = ?4, bytes_sent = ?5,
               chunks_skipped = ?6, objects_deleted = ?7, states_updated = ?8, message = ?9
             WHERE id = ?1",
            params![
                run.id,
                run.ended_ns,
                run.state,
                sql_int(run.objects_sent),
                sql_int(run.bytes_sent),
                sql_int(run.chunks_skipped),
                sql_int(run.objects_deleted),
                sql_int(run.states_updated),
                run.message
            ],
        )?;
        if run.state == RunState::Completed {
            tx.execute(
                "UPDATE nodes SET last_repl_ns = ?2, repl_server = ?3, replmode = 'send' WHERE name = ?1",
                params![run.node, run.ended_ns, run.target],
            )?;
            // A run sends what was committed before it started: a filespace
            // whose last backup ended by then is replicated as of the start;
            // one backed up since keeps its older time (what the primary's
            // `query filespace` shows as Last Replication).
            tx.execute(
                "UPDATE filespaces SET last_repl_ns = ?2
                  WHERE node_id = (SELECT id FROM nodes WHERE name = ?1)
                    AND last_backup_end_ns <= ?2 AND last_backup_start_ns <= ?2",
                params![run.node, run.started_ns],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs, oldest first, of one node or all.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn runs(&self, node: &str) -> Result<Vec<ReplRun>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM repl_runs WHERE ?1 = '' OR node = ?1 ORDER BY id"
        ))?;
        let rows = stmt
            .query_map([node], run_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Marks runs left `running` by a crash as failed (at start-up).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn fail_interrupted_runs(&self, now_ns: i64) -> Result<u64, CatalogError> {
        Ok(self.conn().execute(
            "UPDATE repl_runs SET state = 'failed', ended_ns = ?1,
               message = 'interrupted: the server stopped during the run; the next run resumes it'
             WHERE state = 'running'",
            [now_ns],
        )? as u64)
    }

    /// Whether the node has a completed backup in any filespace.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn has_backed_up(&self, node_id: i64) -> Result<bool, CatalogError> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT 1 FROM filespaces WHERE node_id = ?1 AND last_backup_end_ns > 0",
            )?
            .exists([node_id])?)
    }
}

/// The backup time of the first version of `name` in `dir_id` (active or
/// not) newer than `backup_ns`, if there is one: where a version backed up
/// at `backup_ns` stops being the current one.
fn first_newer(
    tx: &rusqlite::Transaction<'_>,
    dir_id: i64,
    name: &str,
    backup_ns: i64,
) -> rusqlite::Result<Option<i64>> {
    tx.prepare_cached(
        "SELECT MIN(backup_ns) FROM objects
         WHERE dir_id = ?1 AND name = ?2 AND backup_ns > ?3",
    )?
    .query_row(params![dir_id, name, backup_ns], |row| row.get(0))
}
