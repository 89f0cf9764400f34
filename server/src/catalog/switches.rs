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
        let recovering: Option<String> = tx
            .query_row(
                "SELECT source FROM recoveries WHERE node = ?1",
                [node],
                |r| r.get(0),
            )
            .optional()?;
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

    /// Moves the switch `switch_id` of `node` to `step` (draining to frozen,
    /// frozen to handing over). Returns false when the switch is no longer
    /// recorded under that id.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn set_switch_step(
        &self,
        node: &str,
        switch_id: &str,
        step: SwitchStep,
    ) -> Result<bool, CatalogError> {
        let changed = self.conn().execute(
            "UPDATE switches SET step = ?3 WHERE node = ?1 AND switch_id = ?2",
            params![node, switch_id, step],
        )?;
        Ok(changed == 1)
    }

    /// Undoes the switch `switch_id` of `node` on its old primary: the
    /// record goes, and the node, never handed over, takes sessions again.
    /// Only a switch whose partner is known not to hold the node (it said
    /// no, or promised never to) may be undone once it is handing over.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn undo_switch(&self, node: &str, switch_id: &str) -> Result<bool, CatalogError> {
        let removed = self.conn().execute(
            "DELETE FROM switches WHERE node = ?1 AND switch_id = ?2
             AND step IN ('draining', 'frozen', 'handing_over')",
            params![node, switch_id],
        )?;
        Ok(removed == 1)
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
    /// [`ServerError::FailedPrecondition`] for an abandoned switch, a node
    /// that is not `from`'s replica here, one being recovered, or a
    /// replication server other than `from`; SQLite errors.
    pub fn take_over(
        &self,
        node: &str,
        from: &str,
        switch_id: &str,
        now_ns: i64,
    ) -> Result<bool, ServerError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(record) = record_of(&tx, node)?
            && record.switch_id == switch_id
        {
            return match record.step {
                SwitchStep::Taken => Ok(true),
                _ => Err(ServerError::FailedPrecondition(format!(
                    "the switch of node {node} from server {from} was cancelled; this server will not take the node over for it. Start a new switch on {from}"
                ))),
            };
        }
        let found: Option<(ReplMode, String)> = tx
            .query_row(
                "SELECT replmode, repl_server FROM nodes WHERE name = ?1",
                [node],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match found {
            Some((ReplMode::Receive, owner)) if owner == from => {}
            Some((ReplMode::Receive, owner)) => {
                return Err(ServerError::FailedPrecondition(format!(
                    "node {node} is the replica of server {owner} here, not of {from}; {from} cannot hand it over"
                )));
            }
            Some(_) => {
                return Err(ServerError::FailedPrecondition(format!(
                    "node {node} is this server's own, not a replica of server {from}; there is nothing to take over"
                )));
            }
            None => {
                return Err(ServerError::FailedPrecondition(format!(
                    "server {from} never replicated node {node} here; there is nothing to take over"
                )));
            }
        }
        let recovering: Option<String> = tx
            .query_row(
                "SELECT source FROM recoveries WHERE node = ?1",
                [node],
                |r| r.get(0),
            )
            .optional()?;
        if recovering.is_some() {
            return Err(ServerError::FailedPrecondition(format!(
                "node {node} is held for recovery here; it cannot be taken over until that ends"
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
             WHERE name = ?1",
            params![node, now_ns],
        )?;
        upsert(&tx, node, from, switch_id, SwitchStep::Taken, now_ns)?;
        tx.commit()?;
        Ok(false)
    }

    /// The new primary's promise, when the old one undoes a switch that was
    /// handing over: never to take `node` over for `switch_id`.
    ///
    /// # Errors
    /// [`ServerError::FailedPrecondition`] when that switch has taken it
    /// over already; SQLite errors.
    pub fn abandon_take_over(
        &self,
        node: &str,
        from: &str,
        switch_id: &str,
        now_ns: i64,
    ) -> Result<(), ServerError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(record) = record_of(&tx, node)?
            && record.switch_id == switch_id
            && record.step == SwitchStep::Taken
        {
            return Err(ServerError::AlreadyExists(format!(
                "node {node} was taken over here already; run `switch replication {node}` on {from} to finish the switch"
            )));
        }
        upsert(&tx, node, from, switch_id, SwitchStep::Abandoned, now_ns)?;
        tx.commit()?;
        Ok(())
    }
}
