//! Planned role switches (`switch replication`): the `switches` table and
//! the changes of a node's mode that go with each step, each in one
//! transaction, so a server killed between two steps finds a row that says
//! exactly how far it got.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{Catalog, Setting};
use crate::error::{CatalogError, ServerError};
use crate::model::{ReplMode, ReplState, SwitchStep};

/// A node's switch as recorded on this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchRecord {
    /// The node.
    pub node: String,
    /// The other server: where the node goes (old primary) or came from
    /// (new primary).
    pub partner: String,
    /// The switch's id, fixed for its life.
    pub switch_id: String,
    /// How far it got.
    pub step: SwitchStep,
    /// When it started, Unix ns.
    pub started_ns: i64,
}

fn record_of(conn: &Connection, node: &str) -> Result<Option<SwitchRecord>, CatalogError> {
    Ok(conn
        .query_row(
            "SELECT node, partner, switch_id, step, started_ns FROM switches WHERE node = ?1",
            [node],
            |r| {
                Ok(SwitchRecord {
                    node: r.get(0)?,
                    partner: r.get(1)?,
                    switch_id: r.get(2)?,
                    step: r.get(3)?,
                    started_ns: r.get(4)?,
                })
            },
        )
        .optional()?)
}

fn upsert(
    tx: &Transaction<'_>,
    node: &str,
    partner: &str,
    switch_id: &str,
    step: SwitchStep,
    now_ns: i64,
) -> Result<(), CatalogError> {
    tx.execute(
        "INSERT INTO switches (node, partner, switch_id, step, started_ns, ended_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (node) DO UPDATE SET partner = excluded.partner,
             switch_id = excluded.switch_id, step = excluded.step,
             started_ns = excluded.started_ns, ended_ns = excluded.ended_ns",
        params![node, partner, switch_id, step, now_ns],
    )?;
    Ok(())
}

impl Catalog {
    /// The switch recorded for `node`, in any step.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn switch_of(&self, node: &str) -> Result<Option<SwitchRecord>, CatalogError> {
        record_of(&self.reader(), node)
    }

    /// Every switch started here and not ended (draining, frozen, handing
    /// over), by node.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn unfinished_switches(&self) -> Result<Vec<SwitchRecord>, CatalogError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(
            "SELECT node, partner, switch_id, step, started_ns FROM switches
             WHERE step IN ('draining', 'frozen', 'handing_over') ORDER BY node",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(SwitchRecord {
                    node: r.get(0)?,
                    partner: r.get(1)?,
                    switch_id: r.get(2)?,
                    step: r.get(3)?,
                    started_ns: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Starts (or finds) the switch of `node` to `partner` on its primary:
    /// an unfinished switch to `partner` is returned as it stands (a re-run
    /// goes on from there), and so is a finished one while the node is
    /// still `partner`'s replica here. Otherwise the node must be this
    /// server's own, replicated (replstate enabled), not being recovered,
    /// and not replicated anywhere but `partner`; it starts draining under
    /// `new_id`.
    ///
    /// # Errors
    /// [`ServerError::FailedPrecondition`] naming what stands in the way;
    /// [`ServerError::NodeNotFound`]; SQLite errors.
    pub fn begin_switch(
        &self,
        node: &str,
        partner: &str,
        new_id: &str,
        now_ns: i64,
    ) -> Result<SwitchRecord, ServerError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let found: Option<(ReplMode, String, ReplState)> = tx
            .query_row(
                "SELECT replmode, repl_server, replstate FROM nodes WHERE name = ?1",
                [node],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((mode, repl_server, replstate)) = found else {
            return Err(ServerError::NodeNotFound {
                node: node.to_string(),
            });
        };
        if let Some(existing) = record_of(&tx, node)? {
            let same_partner = existing.partner == partner;
            if existing.step.is_unfinished() && same_partner {
                return Ok(existing);
            }
            if existing.step.is_unfinished() {
                return Err(ServerError::FailedPrecondition(format!(
                    "a switch of node {node} to server {} is under way; finish it with `switch replication {node}` while {} is the replication server, or undo it with --cancel",
                    existing.partner, existing.partner
                )));
            }
            if existing.step == SwitchStep::HandedOver
                && same_partner
                && mode == ReplMode::Receive
                && repl_server == partner
            {
                return Ok(existing);
            }
        }
        let recovering = recovery_source(&tx, node)?;
        if let Some(source) = recovering {
            return Err(ServerError::FailedPrecondition(format!(
                "node {node} is being recovered from server {source}; finish `recover node {node}` before switching it"
            )));
        }
        if mode == ReplMode::Receive {
            return Err(ServerError::FailedPrecondition(format!(
                "node {node} is a replica of server {repl_server} on this server; switch it on {repl_server}, its primary"
            )));
        }
        if replstate != ReplState::Enabled {
            return Err(ServerError::FailedPrecondition(format!(
                "replication is disabled for node {node}, so server {partner} holds no current replica to take over; enable it with `update node {node} --replstate enabled` and replicate it first"
            )));
        }
        let rule: crate::model::ReplRule =
            tx.query_row("SELECT replrule FROM nodes WHERE name = ?1", [node], |r| {
                r.get(0)
            })?;
        if rule != crate::model::ReplRule::AllData {
            return Err(ServerError::FailedPrecondition(format!(
                "node {node} is replicated with rule {rule}, so server {partner} lacks some of its versions, and once it is the primary its replication would delete them here; run `update node {node} --replrule all_data` and `replicate node {node}` first"
            )));
        }
        let archived: i64 = tx.query_row(
            "SELECT COUNT(*) FROM archives WHERE node_id = (SELECT id FROM nodes WHERE name = ?1)",
            [node],
            |r| r.get(0),
        )?;
        if archived > 0 {
            return Err(ServerError::FailedPrecondition(format!(
                "node {node} has {archived} archive copies, which replication does not carry yet: they would stay on this server only, out of the new primary's reach; retrieve or delete them first (`tandem delete archive`), or keep this server the node's primary"
            )));
        }
        if mode == ReplMode::Send && !repl_server.is_empty() && repl_server != partner {
            return Err(ServerError::FailedPrecondition(format!(
                "node {node} is replicated to server {repl_server}, not to {partner} (the replication server now); replicate it to {partner} first"
            )));
        }
        upsert(&tx, node, partner, new_id, SwitchStep::Draining, now_ns)?;
        tx.commit()?;
        Ok(SwitchRecord {
            node: node.to_string(),
            partner: partner.to_string(),
            switch_id: new_id.to_string(),
            step: SwitchStep::Draining,
            started_ns: now_ns,
        })
    }

    /// Moves the switch `switch_id` of `node` from step `from` to `to`
    /// (draining to frozen, frozen to handing over). Returns false, changing
    /// nothing, when the switch is not in step `from` under that id any more.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn set_switch_step(
        &self,
        node: &str,
        switch_id: &str,
        from: SwitchStep,
        to: SwitchStep,
    ) -> Result<bool, CatalogError> {
        let changed = self.conn().execute(
            "UPDATE switches SET step = ?4 WHERE node = ?1 AND switch_id = ?2 AND step = ?3",
            params![node, switch_id, from, to],
        )?;
        Ok(changed == 1)
    }

    /// Undoes the switch `switch_id` of `node` on its old primary if it is
    /// in step `at`: the record goes, and the node, never handed over, takes
    /// sessions again. A switch handing over may be undone only once the
    /// partner is known not to hold the node (it said no, or promised never
    /// to). Returns false, changing nothing, in any other step.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn undo_switch(
        &self,
        node: &str,
        switch_id: &str,
        at: SwitchStep,
    ) -> Result<bool, CatalogError> {
        if !at.is_unfinished() {
            return Ok(false);
        }
        let removed = self.conn().execute(
            "DELETE FROM switches WHERE node = ?1 AND switch_id = ?2 AND step = ?3",
            params![node, switch_id, at],
        )?;
        Ok(removed == 1)
    }

    /// The number of versions of `node` held here, which a hand-over sends
    /// so the new primary can check that its replica is whole.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn count_node_versions(&self, node: &str) -> Result<u64, CatalogError> {
        let count: i64 = self.reader().query_row(
            "SELECT COUNT(*) FROM objects WHERE filespace_id IN
               (SELECT f.id FROM filespaces f JOIN nodes n ON n.id = f.node_id WHERE n.name = ?1)",
            [node],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Ends the switch on the old primary once the partner has taken the
    /// node over: in one transaction the node becomes the partner's replica
    /// here (receive mode) and the record says handed over, so its logons
    /// are sent to the partner from now on.
    ///
    /// # Errors
    /// [`ServerError::FailedPrecondition`] when the switch is not recorded
    /// under `switch_id`; SQLite errors.
    pub fn complete_handover(
        &self,
        node: &str,
        switch_id: &str,
        now_ns: i64,
    ) -> Result<(), ServerError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(record) = record_of(&tx, node)?.filter(|r| r.switch_id == switch_id) else {
            return Err(ServerError::FailedPrecondition(format!(
                "the switch of node {node} is no longer recorded here; see `query actlog --msgno TDM0608`"
            )));
        };
        if record.step == SwitchStep::HandedOver {
            return Ok(());
        }
        tx.execute(
            "UPDATE nodes SET replmode = 'receive', repl_server = ?2, replstate = 'enabled'
             WHERE name = ?1",
            params![node, record.partner],
        )?;
        tx.execute(
            "UPDATE switches SET step = 'handed_over', ended_ns = ?3
             WHERE node = ?1 AND switch_id = ?2",
            params![node, switch_id, now_ns],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The new primary's side of a switch: makes this server's replica of
    /// `node`, held for `from`, its own (send mode, replicating to `from`,
    /// current as of now: `from` replicated it last with its writes
    /// stopped), and names `from` the replication server when none is set.
    /// Returns true when the same switch had already done it.
    ///
    /// # Errors
    /// [`ServerError::FailedPrecondition`] for a cancelled switch, a node
    /// that is not `from`'s replica here, one being recovered, a replica
    /// that does not hold `versions_at_source` versions, or a replication
    /// server other than `from`; [`ServerError::AlreadyExists`] for a node
    /// that is this server's own by other means (not a refusal: the caller
    /// must not undo on it); SQLite errors.
    pub fn take_over(
        &self,
        node: &str,
        from: &str,
        switch_id: &str,
        versions_at_source: u64,
        now_ns: i64,
    ) -> Result<bool, ServerError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        match answer_of(&tx, node, switch_id, from)? {
            Some(Answer::Taken) => return Ok(true),
            Some(Answer::Fenced) => {
                return Err(ServerError::FailedPrecondition(format!(
                    "the switch of node {node} from server {from} was cancelled; this server will not take the node over for it. Start a new switch on {from}"
                )));
            }
            None => {}
        }
        let found: Option<(i64, ReplMode, String)> = tx
            .query_row(
                "SELECT id, replmode, repl_server FROM nodes WHERE name = ?1",
                [node],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let node_id = match found {
            Some((id, ReplMode::Receive, owner)) if owner == from => id,
            Some((_, ReplMode::Receive, owner)) => {
                return Err(ServerError::FailedPrecondition(format!(
                    "node {node} is the replica of server {owner} here, not of {from}; {from} cannot hand it over"
                )));
            }
            // Not a "no": what made the node this server's own is not known
            // here, so the caller must not take it for a refusal and undo.
            Some(_) => {
                return Err(ServerError::AlreadyExists(format!(
                    "node {node} is this server's own already, not by this switch; resolve it by hand: `query node {node}` on both servers"
                )));
            }
            None => {
                return Err(ServerError::FailedPrecondition(format!(
                    "server {from} never replicated node {node} here; there is nothing to take over"
                )));
            }
        };
        let recovering = recovery_source(&tx, node)?;
        if recovering.is_some() {
            return Err(ServerError::FailedPrecondition(format!(
                "node {node} is held for recovery here; it cannot be taken over until that ends"
            )));
        }
        let held: i64 = tx.query_row(
            "SELECT COUNT(*) FROM objects WHERE filespace_id IN (SELECT id FROM filespaces WHERE node_id = ?1)",
            [node_id],
            |r| r.get(0),
        )?;
        if u64::try_from(held).unwrap_or(0) != versions_at_source {
            return Err(ServerError::FailedPrecondition(format!(
                "the replica of node {node} here holds {held} versions and server {from} holds {versions_at_source}; it is not whole, so it is not taken over (replicate the node again, then switch)"
            )));
        }
        let replserver: Option<String> = tx
            .query_row(
                "SELECT value FROM server_info WHERE key = ?1",
                [Setting::ReplServer.key()],
                |r| r.get(0),
            )
            .optional()?;
        match replserver.as_deref() {
            None | Some("") => {
                tx.execute(
                    "INSERT INTO server_info (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![Setting::ReplServer.key(), from],
                )?;
            }
            Some(named) if named == from => {}
            Some(other) => {
                return Err(ServerError::FailedPrecondition(format!(
                    "this server replicates its own nodes to server {other}, so node {node} could not go on replicating to {from}; run `set replserver {from}` here (or switch to a server that replicates to {from})"
                )));
            }
        }
        tx.execute(
            "UPDATE nodes SET replmode = 'send', replstate = 'enabled', last_repl_ns = ?2
             WHERE id = ?1",
            params![node_id, now_ns],
        )?;
        upsert(&tx, node, from, switch_id, SwitchStep::Taken, now_ns)?;
        tx.execute(
            "INSERT INTO switch_answers (node, switch_id, partner, answer, at_ns)
             VALUES (?1, ?2, ?3, 'taken', ?4)",
            params![node, switch_id, from, now_ns],
        )?;
        tx.commit()?;
        Ok(false)
    }

    /// The new primary's promise, when the old one undoes a switch that was
    /// handing over: never to take `node` over for `switch_id`. Only the
    /// server the node is replicated from may ask; for a node this server
    /// does not hold there is nothing to fence.
    ///
    /// # Errors
    /// [`ServerError::AlreadyExists`] when that switch has taken the node
    /// over already; [`ServerError::PermissionDenied`] for a node that is
    /// another server's replica here or this server's own; SQLite errors.
    pub fn abandon_take_over(
        &self,
        node: &str,
        from: &str,
        switch_id: &str,
        now_ns: i64,
    ) -> Result<(), ServerError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        match answer_of(&tx, node, switch_id, from)? {
            Some(Answer::Taken) => {
                return Err(ServerError::AlreadyExists(format!(
                    "node {node} was taken over here already; run `switch replication {node}` on {from} to finish the switch"
                )));
            }
            Some(Answer::Fenced) => return Ok(()),
            None => {}
        }
        let found: Option<(ReplMode, String)> = tx
            .query_row(
                "SELECT replmode, repl_server FROM nodes WHERE name = ?1",
                [node],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match found {
            // Absent: fenced all the same, so a late hand-over is refused.
            None => {}
            Some((ReplMode::Receive, owner)) if owner == from => {}
            Some(_) => {
                return Err(ServerError::PermissionDenied(format!(
                    "node {node} is not a replica of server {from} here; {from} has no switch of it to cancel"
                )));
            }
        }
        tx.execute(
            "INSERT INTO switch_answers (node, switch_id, partner, answer, at_ns)
             VALUES (?1, ?2, ?3, 'fenced', ?4)",
            params![node, switch_id, from, now_ns],
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// What this server answered to a switch of another server.
enum Answer {
    Taken,
    Fenced,
}

/// The answer this server gave `from` for switch `switch_id` of `node`.
fn answer_of(
    conn: &Connection,
    node: &str,
    switch_id: &str,
    from: &str,
) -> Result<Option<Answer>, CatalogError> {
    let answer: Option<String> = conn
        .query_row(
            "SELECT answer FROM switch_answers WHERE node = ?1 AND switch_id = ?2 AND partner = ?3",
            params![node, switch_id, from],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match answer.as_deref() {
        Some("taken") => Some(Answer::Taken),
        Some("fenced") => Some(Answer::Fenced),
        _ => None,
    })
}

/// Refuses, inside the write's own transaction, a write of node `node_id`
/// once a planned role switch of it has stopped its writes: the final
/// replication may have read the catalog already, so a write stored now
/// would never reach the new primary. In the same transaction as the
/// write, it cannot slip in between the switch's step and the run.
///
/// # Errors
/// [`CatalogError::Refused`] naming the new primary; SQLite errors.
pub(super) fn refuse_if_switch_stopped_writes(
    conn: &Connection,
    node_id: i64,
) -> Result<(), CatalogError> {
    let switch: Option<(String, SwitchStep)> = conn
        .query_row(
            "SELECT s.partner, s.step FROM switches s JOIN nodes n ON n.name = s.node WHERE n.id = ?1",
            [node_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match switch {
        Some((partner, step)) if step.blocks_writes() => Err(CatalogError::Refused(format!(
            "the node is being switched to server {partner} (planned role switch): its writes are paused here; retry in a few minutes"
        ))),
        _ => Ok(()),
    }
}

/// The server `node` is being recovered from, if it is (`recover node`).
fn recovery_source(conn: &Connection, node: &str) -> Result<Option<String>, CatalogError> {
    Ok(conn
        .query_row(
            "SELECT source FROM recoveries WHERE node = ?1",
            [node],
            |r| r.get(0),
        )
        .optional()?)
}
