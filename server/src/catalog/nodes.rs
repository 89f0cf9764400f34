//! Nodes: registration, credentials, lock state and policy.

use rusqlite::{OptionalExtension, Row, params};

use super::Catalog;
use crate::error::CatalogError;
use crate::model::{Node, NodeUsage, Policy, PolicyUpdate};

impl Catalog {
    /// The effective policy of a node row id.
    ///
    /// # Errors
    /// SQLite errors.
    pub(crate) fn policy_of(
        tx: &rusqlite::Connection,
        node_id: i64,
        defaults: Policy,
    ) -> Result<Policy, CatalogError> {
        Ok(tx.query_row(
            "SELECT coalesce(verexists, ?2), coalesce(verdeleted, ?3), coalesce(retextra, ?4),
                    coalesce(retonly, ?5), coalesce(retver, ?6)
             FROM nodes WHERE id = ?1",
            params![
                node_id,
                defaults.verexists,
                defaults.verdeleted,
                defaults.retextra,
                defaults.retonly,
                defaults.retver
            ],
            |r| {
                Ok(Policy {
                    verexists: r.get(0)?,
                    verdeleted: r.get(1)?,
                    retextra: r.get(2)?,
                    retonly: r.get(3)?,
                    retver: r.get(4)?,
                })
            },
        )?)
    }
}

/// The id of the next node: above every id a node ever had, removed ones
/// included (SQLite alone would hand the highest id out again once freed).
pub(super) const NEXT_NODE_ID: &str = "(SELECT max(coalesce((SELECT max(id) FROM nodes), 0),
     coalesce((SELECT CAST(value AS INTEGER) FROM server_info WHERE key = 'highest_node_id'), 0)) + 1)";

const NODE_COLUMNS: &str = "id, name, password_hash, locked, failed_logons, registered_ns, \
     last_logon_ns, verexists, verdeleted, retextra, retonly, replstate, replmode, replrule, \
     last_repl_ns, repl_server, retver, pool_id";

/// How many columns [`NODE_COLUMNS`] names: queries add theirs after them.
const NODE_COLUMN_COUNT: usize = 18;

fn node_from_row(r: &Row<'_>, defaults: Policy) -> rusqlite::Result<Node> {
    let policy_value = |idx: usize, default: u32| -> rusqlite::Result<u32> {
        Ok(r.get::<_, Option<u32>>(idx)?.unwrap_or(default))
    };
    Ok(Node {
        id: r.get(0)?,
        name: r.get(1)?,
        password_hash: r.get(2)?,
        locked: r.get(3)?,
        failed_logons: r.get(4)?,
        registered_ns: r.get(5)?,
        last_logon_ns: r.get(6)?,
        policy: Policy {
            verexists: policy_value(7, defaults.verexists)?,
            verdeleted: policy_value(8, defaults.verdeleted)?,
            retextra: policy_value(9, defaults.retextra)?,
            retonly: policy_value(10, defaults.retonly)?,
            retver: policy_value(16, defaults.retver)?,
        },
        replstate: r.get(11)?,
        replmode: r.get(12)?,
        replrule: r.get(13)?,
        last_repl_ns: r.get(14)?,
        repl_server: r.get(15)?,
        pool_id: r.get(17)?,
    })
}

impl Catalog {
    /// Registers a node. Returns `None` when the name is taken.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn register_node(
        &self,
        name: &str,
        password_hash: &str,
        now_ns: i64,
    ) -> Result<Option<Node>, CatalogError> {
        let inserted = self.conn().execute(
            &format!(
                "INSERT INTO nodes (id, name, password_hash, registered_ns)
                 VALUES ({NEXT_NODE_ID}, ?1, ?2, ?3) ON CONFLICT (name) DO NOTHING"
            ),
            params![name, password_hash, now_ns],
        )?;
        if inserted == 0 {
            return Ok(None);
        }
        self.node(name)
    }

    /// Looks a node up by its upper-case name.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn node(&self, name: &str) -> Result<Option<Node>, CatalogError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE name = ?1"),
                [name],
                |r| node_from_row(r, self.defaults),
            )
            .optional()?)
    }

    /// Nodes matching `name` (all when empty), with their storage figures.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn list_nodes(&self, name: &str) -> Result<Vec<(Node, NodeUsage)>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(&format!(
            "SELECT {NODE_COLUMNS},
               (SELECT count(*) FROM filespaces f WHERE f.node_id = nodes.id),
               (SELECT count(*) FROM filespaces f JOIN dirs d ON d.filespace_id = f.id
                  JOIN objects o ON o.dir_id = d.id WHERE f.node_id = nodes.id AND o.active = 1),
               (SELECT count(*) FROM filespaces f JOIN dirs d ON d.filespace_id = f.id
                  JOIN objects o ON o.dir_id = d.id WHERE f.node_id = nodes.id AND o.expiring = 0)
             FROM nodes WHERE ?1 = '' OR name = ?1 ORDER BY name"
        ))?;
        let rows = stmt
            .query_map([name], |r| {
                Ok((
                    node_from_row(r, self.defaults)?,
                    NodeUsage {
                        filespaces: r.get(NODE_COLUMN_COUNT)?,
                        active_objects: r
                            .get::<_, i64>(NODE_COLUMN_COUNT + 1)?
                            .try_into()
                            .unwrap_or(0),
                        total_versions: r
                            .get::<_, i64>(NODE_COLUMN_COUNT + 2)?
                            .try_into()
                            .unwrap_or(0),
                    },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Applies lock, policy and password changes. Returns the updated node, or
    /// `None` if it does not exist.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn update_node(
        &self,
        name: &str,
        locked: Option<bool>,
        policy: PolicyUpdate,
        password_hash: Option<&str>,
    ) -> Result<Option<Node>, CatalogError> {
        let changed = self.conn().execute(
            "UPDATE nodes SET
               locked        = coalesce(?2, locked),
               failed_logons = CASE WHEN ?2 = 0 THEN 0 ELSE failed_logons END,
               verexists     = coalesce(?3, verexists),
               verdeleted    = coalesce(?4, verdeleted),
               retextra      = coalesce(?5, retextra),
               retonly       = coalesce(?6, retonly),
               password_hash = coalesce(?7, password_hash),
               retver        = coalesce(?8, retver)
             WHERE name = ?1",
            params![
                name,
                locked,
                policy.verexists,
                policy.verdeleted,
                policy.retextra,
                policy.retonly,
                password_hash,
                policy.retver
            ],
        )?;
        if changed == 0 {
            return Ok(None);
        }
        self.node(name)
    }

    /// Replaces a node's password hash only if it is still `old_hash` (the
    /// one its old password was checked against): a reset by an
    /// administrator in the meantime is not overwritten. Whether it changed.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn replace_password_hash(
        &self,
        name: &str,
        old_hash: &str,
        new_hash: &str,
    ) -> Result<bool, CatalogError> {
        let changed = self.conn().execute(
            "UPDATE nodes SET password_hash = ?3 WHERE name = ?1 AND password_hash = ?2",
            params![name, old_hash, new_hash],
        )?;
        Ok(changed > 0)
    }

    /// Deletes a node that has no filespaces. Returns the number of its
    /// filespaces instead when it still has some (nothing is deleted then), or
    /// `None` when the node does not exist.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn remove_node(&self, name: &str) -> Result<Option<u32>, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let found: Option<(i64, u32)> = tx
            .query_row(
                "SELECT id, (SELECT count(*) FROM filespaces WHERE node_id = nodes.id)
                 FROM nodes WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((id, filespaces)) = found else {
            return Ok(None);
        };
        if filespaces == 0 {
            // No later node gets this id (or any lower one) again: sessions,
            // pins or an upload still under way under the old id can never
            // act for another node.
            tx.execute(
                "INSERT INTO server_info (key, value)
                 VALUES ('highest_node_id', (SELECT max(id) FROM nodes))
                 ON CONFLICT (key) DO UPDATE SET value =
                   max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                [],
            )?;
            tx.execute("DELETE FROM nodes WHERE id = ?1", [id])?;
            tx.execute("UPDATE chunks SET owner = 0 WHERE owner = ?1", [id])?;
            tx.execute("DELETE FROM chunk_sharers WHERE node_id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(Some(filespaces))
    }

    /// Records a successful logon: resets the failure count.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn record_logon_success(&self, node_id: i64, now_ns: i64) -> Result<(), CatalogError> {
        self.conn().execute(
            "UPDATE nodes SET failed_logons = 0, last_logon_ns = ?2 WHERE id = ?1",
            params![node_id, now_ns],
        )?;
        Ok(())
    }

    /// Records a failed logon and returns the failures since the last success.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn record_logon_failure(&self, node_id: i64) -> Result<u32, CatalogError> {
        Ok(self.conn().query_row(
            "UPDATE nodes SET failed_logons = failed_logons + 1 WHERE id = ?1
             RETURNING failed_logons",
            [node_id],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_column_count_matches_the_list() {
        assert_eq!(
            super::NODE_COLUMNS.split(',').count(),
            super::NODE_COLUMN_COUNT
        );
    }
}

/// What a monitoring system watches per node: when it last logged on,
/// backed up and replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    /// Node name.
    pub name: String,
    /// Locked against logons.
    pub locked: bool,
    /// A replica of another server's node (`replmode receive`).
    pub replica: bool,
    /// Replication enabled for it.
    pub replicated: bool,
    /// Registration time (Unix nanoseconds).
    pub registered_ns: i64,
    /// Last logon (0: never).
    pub last_logon_ns: i64,
    /// End of the last completed backup of any filespace (0: never).
    pub last_backup_ns: i64,
    /// Last successful replication run (0: never).
    pub last_repl_ns: i64,
}

impl Catalog {
    /// Every node's [`NodeHealth`], by name: one indexed query, cheap enough
    /// for every scrape.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn node_health(&self) -> Result<Vec<NodeHealth>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT n.name, n.locked, n.replmode, n.replstate, n.registered_ns, n.last_logon_ns,
               (SELECT coalesce(max(f.last_backup_end_ns), 0) FROM filespaces f WHERE f.node_id = n.id),
               n.last_repl_ns
             FROM nodes n ORDER BY n.name",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(NodeHealth {
                    name: r.get(0)?,
                    locked: r.get(1)?,
                    replica: r.get::<_, String>(2)? == "receive",
                    replicated: r.get::<_, String>(3)? == "enabled",
                    registered_ns: r.get(4)?,
                    last_logon_ns: r.get(5)?,
                    last_backup_ns: r.get(6)?,
                    last_repl_ns: r.get(7)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
