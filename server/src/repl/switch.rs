//! Planned role switch (`switch replication`): a node's replication server
//! becomes its primary and this server, its primary until now, keeps it as
//! that server's replica, replicating the other way from then on.
//!
//! On this server (the old primary) each node goes through steps recorded
//! in the catalog before they are taken, so a server killed at any point
//! finds where it was and a re-run goes on from there:
//!
//! 1. **draining**: new sessions of the node are refused ("retry later");
//!    running ones may finish, and are waited for (bounded). When they do
//!    not end in time the switch is undone: nothing has changed.
//! 2. **frozen**: no write of the node is stored any more; a final
//!    replication sends the partner everything. When it fails, the switch
//!    is undone: the partner was never asked to take anything over.
//! 3. **handing over**: recorded *before* the partner is asked to take the
//!    node over (`TakeOver`), which it does in one transaction. From here
//!    only the partner knows whether it did, so only its answer moves the
//!    switch on: "taken" finishes it, a refusal undoes it, no answer leaves
//!    it for a re-run (still refusing every session and write here).
//! 4. **handed over**: in one transaction the node becomes the partner's
//!    replica here, and its clients are sent there at their next logon.
//!
//! At no point do both servers take backups of the node: the partner only
//! takes it over while this server is frozen or handing over, and this
//! server only writes again after the partner said no or promised never
//! to (`--cancel`, `AbandonTakeOver`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::remote::{Abandon, HandOver, connect};
use super::runs::replication_server;
use crate::ServerState;
use crate::actlog::{self, ServerMsg};
use crate::auth::SessionKind;
use crate::catalog::{Setting, SwitchRecord};
use crate::error::ServerError;
use crate::model::{PartnerServer, RunState, SwitchStep, normalize_node_name, now_ns};

/// How long a switch waits for a node's sessions when not told.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// How often the wait for sessions and for a running replication looks again.
const POLL: Duration = Duration::from_millis(200);

/// A node's claim on [`ServerState::switching`], given back when dropped:
/// one switch or cancel of a node at a time on this server.
struct SwitchClaim {
    state: Arc<ServerState>,
    node: String,
}

impl SwitchClaim {
    fn take(state: &Arc<ServerState>, node: &str) -> Option<SwitchClaim> {
        let mut set = state.switching.lock().unwrap_or_else(|e| e.into_inner());
        set.insert(node.to_string()).then(|| SwitchClaim {
            state: state.clone(),
            node: node.to_string(),
        })
    }
}

impl Drop for SwitchClaim {
    fn drop(&mut self) {
        self.state
            .switching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.node);
    }
}

/// How one node's switch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switched {
    /// The partner is the node's primary now.
    Done,
    /// It had been switched already (a re-run after the end).
    Already,
    /// The switch was undone; this server is still the node's primary.
    Cancelled,
}

/// One node's switch, as this server saw it.
#[derive(Debug, Clone)]
pub struct SwitchReport {
    /// The node.
    pub node: String,
    /// The partner (its new primary, or the one it would have had).
    pub to: String,
    /// What happened, or why it failed and what to do.
    pub outcome: Result<Switched, String>,
    /// Sessions waited for, by number.
    pub waited_for: Vec<u64>,
    /// Versions the final replication sent.
    pub objects_sent: u64,
    /// Wall time.
    pub elapsed_secs: f64,
}

impl SwitchReport {
    /// A report of `node` before anything happened.
    fn new(node: &str) -> Self {
        SwitchReport {
            node: node.to_string(),
            to: String::new(),
            outcome: Err(String::new()),
            waited_for: Vec::new(),
            objects_sent: 0,
            elapsed_secs: 0.0,
        }
    }

    /// Records a failure in the activity log (TDM0610E) as `what: why`;
    /// returns the report.
    async fn logged_if_failed(self, state: &Arc<ServerState>, what: String) -> Self {
        if let Err(why) = &self.outcome {
            actlog::record(
                &state.repo.catalog,
                ServerMsg::SwitchFailed,
                &self.node,
                "",
                format!("{what}: {why}"),
            )
            .await;
        }
        self
    }
}

/// The nodes a switch covers: the named ones, or with `all` every node of
/// this server's own that is replicated, with every switch left unfinished.
/// With `cancel`, `all` means every unfinished switch.
///
/// # Errors
/// A bad node name; catalog errors.
pub async fn plan(
    state: &Arc<ServerState>,
    nodes: &[String],
    all: bool,
    cancel: bool,
) -> Result<Vec<String>, ServerError> {
    if !all {
        let mut out: Vec<String> = Vec::with_capacity(nodes.len());
        for asked in nodes {
            let name = normalize_node_name(asked)
                .ok_or_else(|| ServerError::InvalidArgument(format!("bad node name {asked:?}")))?;
            // A name given twice is one switch, not two racing each other.
            if !out.contains(&name) {
                out.push(name);
            }
        }
        return Ok(out);
    }
    let catalog = state.repo.catalog.clone();
    tokio::task::spawn_blocking(move || {
        let mut out: Vec<String> = catalog
            .unfinished_switches()?
            .into_iter()
            .map(|r| r.node)
            .collect();
        if !cancel {
            for (node, _) in catalog.list_nodes("")? {
                if !node.is_replica()
                    && node.replstate == crate::model::ReplState::Enabled
                    && !out.contains(&node.name)
                {
                    out.push(node.name);
                }
            }
        }
        out.sort();
        Ok(out)
    })
    .await?
}

/// Switches `node` to the replication server (see the module
/// documentation), waiting at most `wait` for its sessions. Every outcome
/// is in the report and the activity log (TDM0608I, TDM0609I, TDM0610E).
pub async fn switch_node(state: &Arc<ServerState>, node: &str, wait: Duration) -> SwitchReport {
    let started = Instant::now();
    let mut report = SwitchReport::new(node);
    report.outcome = match SwitchClaim::take(state, node) {
        Some(_claim) => run_switch(state, node, wait, &mut report).await,
        None => Err(format!(
            "another `switch replication` of node {node} is running on this server; wait for it"
        )),
    };
    report.elapsed_secs = started.elapsed().as_secs_f64();
    let what = format!("switch of node {node} to server {}", report.to);
    report.logged_if_failed(state, what).await
}

async fn run_switch(
    state: &Arc<ServerState>,
    node: &str,
    wait: Duration,
    report: &mut SwitchReport,
) -> Result<Switched, String> {
    let partner = {
        let (state, name) = (state.clone(), node.to_string());
        tokio::task::spawn_blocking(move || match replication_server(&state) {
            Ok(partner) => Ok(partner),
            // A replica here is better told where to switch it.
            Err(e) => match state.repo.catalog.node(&name) {
                Ok(Some(n)) if n.is_replica() => Err(format!(
                    "node {name} is a replica of server {} on this server; switch it on {}, its primary",
                    n.repl_server, n.repl_server
                )),
                _ => Err(e.to_string()),
            },
        })
        .await
        .map_err(|e| e.to_string())??
    };
    report.to.clone_from(&partner.name);
    let record = {
        let (catalog, name, to) = (
            state.repo.catalog.clone(),
            node.to_string(),
            partner.name.clone(),
        );
        let id = hex::encode(rand::random::<[u8; 16]>());
        tokio::task::spawn_blocking(move || catalog.begin_switch(&name, &to, &id, now_ns()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    };
    if record.step == SwitchStep::HandedOver {
        return Ok(Switched::Already);
    }
    step_logged(
        state,
        &record,
        match record.step {
            SwitchStep::Draining => format!(
                "switch of node {node} to server {}: new sessions of the node are refused (retry later), running ones may finish",
                partner.name
            ),
            step => format!(
                "switch of node {node} to server {}: going on from step {step}",
                partner.name
            ),
        },
    )
    .await;
    if record.step == SwitchStep::Draining {
        crate::faults::pause_point("switch-draining").await;
        report.waited_for = drain(state, &record, wait).await?;
        set_step(state, &record, SwitchStep::Draining, SwitchStep::Frozen).await?;
        crate::faults::pause_point("switch-frozen").await;
    }
    if matches!(record.step, SwitchStep::Draining | SwitchStep::Frozen) {
        report.objects_sent = final_replication(state, &record, &partner, wait).await?;
        set_step(state, &record, SwitchStep::Frozen, SwitchStep::HandingOver).await?;
        crate::faults::pause_point("switch-handing-over").await;
    }
    hand_over(state, &record, &partner).await
}

/// Logs a step of `record`'s switch (TDM0608I).
async fn step_logged(state: &Arc<ServerState>, record: &SwitchRecord, text: String) {
    actlog::record(
        &state.repo.catalog,
        ServerMsg::SwitchStep,
        &record.node,
        "",
        text,
    )
    .await;
}

async fn set_step(
    state: &Arc<ServerState>,
    record: &SwitchRecord,
    from: SwitchStep,
    to: SwitchStep,
) -> Result<(), String> {
    let (catalog, node, id) = (
        state.repo.catalog.clone(),
        record.node.clone(),
        record.switch_id.clone(),
    );
    let moved = tokio::task::spawn_blocking(move || catalog.set_switch_step(&node, &id, from, to))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if !moved {
        return Err(format!(
            "the switch of node {} is no longer in step {from} (cancelled meanwhile?); nothing more was done: run `switch replication {}` again to see where it stands",
            record.node, record.node
        ));
    }
    Ok(())
}

/// Undoes a switch in step `at` that the partner is known not to hold, and
/// says so.
async fn undo(
    state: &Arc<ServerState>,
    record: &SwitchRecord,
    at: SwitchStep,
    why: String,
) -> String {
    let (catalog, node, id) = (
        state.repo.catalog.clone(),
        record.node.clone(),
        record.switch_id.clone(),
    );
    let undone = tokio::task::spawn_blocking(move || catalog.undo_switch(&node, &id, at)).await;
    match undone {
        Ok(Ok(true)) => format!(
            "{why}; the switch was undone and node {} stays this server's own, taking backups again",
            record.node
        ),
        Ok(Ok(false)) => format!(
            "{why}; the switch was no longer in step {at}, so it was left as it is: run `switch replication {}` again to see where it stands",
            record.node
        ),
        Ok(Err(e)) => format!(
            "{why}; undoing the switch failed too ({e}); run `switch replication {} --cancel`",
            record.node
        ),
        Err(e) => format!(
            "{why}; undoing the switch failed too ({e}); run `switch replication {} --cancel`",
            record.node
        ),
    }
}

/// Waits until the node has no session here, at most `wait`; returns the
/// sessions waited for. When some are still open then, the switch is
/// undone and the error names them.
async fn drain(
    state: &Arc<ServerState>,
    record: &SwitchRecord,
    wait: Duration,
) -> Result<Vec<u64>, String> {
    let deadline = Instant::now() + wait;
    let mut waited: Vec<u64> = Vec::new();
    let mut told = false;
    loop {
        // A session idle past the limit is gone for the server (its next
        // call is refused), even if nothing has removed it yet.
        let now = now_ns();
        let open: Vec<_> = state
            .sessions
            .list()
            .into_iter()
            .filter(|s| {
                s.kind == SessionKind::Node
                    && s.node == record.node
                    && now - s.last_call_ns < crate::auth::SESSION_IDLE_NS
            })
            .collect();
        if open.is_empty() {
            return Ok(waited);
        }
        for s in &open {
            if !waited.contains(&s.id) {
                waited.push(s.id);
            }
        }
        if !told {
            told = true;
            let list = open
                .iter()
                .map(|s| format!("session {} from {}", s.id, s.peer))
                .collect::<Vec<_>>()
                .join(", ");
            step_logged(
                state,
                record,
                format!(
                    "switch of node {}: waiting up to {} s for {list} to end",
                    record.node,
                    wait.as_secs()
                ),
            )
            .await;
        }
        if Instant::now() >= deadline {
            let list = open
                .iter()
                .map(|s| format!("session {} from {}", s.id, s.peer))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(undo(
                state,
                record,
                SwitchStep::Draining,
                format!(
                    "{list} still running after {} s (end them with `cancel session`, or give more --wait)",
                    wait.as_secs()
                ),
            )
            .await);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The last replication before the hand-over, with writes stopped, to the
/// switch's partner (refused when `set replserver` names another server
/// now); waits (at most `wait`) for a run of the node that is already
/// going. Returns the versions it sent. A failure undoes the switch: the
/// partner has not been asked to take anything over.
async fn final_replication(
    state: &Arc<ServerState>,
    record: &SwitchRecord,
    partner: &PartnerServer,
    wait: Duration,
) -> Result<u64, String> {
    let deadline = Instant::now() + wait;
    let run = loop {
        match super::runs::replicate_node_to(state.clone(), record.node.clone(), &partner.name)
            .await
        {
            Err(ServerError::ReplicationRunning { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(POLL).await;
            }
            Err(e) => {
                return Err(undo(
                    state,
                    record,
                    SwitchStep::Frozen,
                    format!("the final replication could not start: {e}"),
                )
                .await);
            }
            Ok(run) => break run,
        }
    };
    if run.state != RunState::Completed {
        return Err(undo(
            state,
            record,
            SwitchStep::Frozen,
            format!("the final replication failed: {}", run.message),
        )
        .await);
    }
    Ok(run.objects_sent)
}

/// Asks the partner to take the node over and acts on its answer.
async fn hand_over(
    state: &Arc<ServerState>,
    record: &SwitchRecord,
    partner: &PartnerServer,
) -> Result<Switched, String> {
    let node = &record.node;
    let failover_address = {
        let catalog = state.repo.catalog.clone();
        tokio::task::spawn_blocking(move || catalog.setting(Setting::FailoverAddress))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .unwrap_or_default()
    };
    let versions = {
        let (catalog, name) = (state.repo.catalog.clone(), node.clone());
        tokio::task::spawn_blocking(move || catalog.count_node_versions(&name))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    };
    let answer = match connect(state, partner, node).await {
        Ok(remote) => {
            let answer = remote
                .take_over(&record.switch_id, versions, (state.guid, failover_address))
                .await;
            remote.bye().await;
            answer
        }
        Err(e) => HandOver::Unknown(e.to_string()),
    };
    match answer {
        HandOver::Taken { .. } => {
            crate::faults::pause_point("switch-taken").await;
            finish(state, record).await.map(|()| Switched::Done)
        }
        HandOver::Refused(why) => Err(undo(
            state,
            record,
            SwitchStep::HandingOver,
            format!(
                "server {} refused to take the node over: {why}",
                partner.name
            ),
        )
        .await),
        HandOver::Unknown(why) => Err(format!(
            "server {} did not confirm that it took node {node} over ({why}); the node stays paused here (no sessions, no writes). Run `switch replication {node}` again to finish the switch once {} answers, or `switch replication {node} --cancel` to undo it",
            partner.name, partner.name
        )),
    }
}

/// The last step here: the node becomes the partner's replica (TDM0609I).
async fn finish(state: &Arc<ServerState>, record: &SwitchRecord) -> Result<(), String> {
    let (catalog, node, id) = (
        state.repo.catalog.clone(),
        record.node.clone(),
        record.switch_id.clone(),
    );
    tokio::task::spawn_blocking(move || catalog.complete_handover(&node, &id, now_ns()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    actlog::record(
        &state.repo.catalog,
        ServerMsg::NodeSwitched,
        &record.node,
        "",
        format!(
            "node {} switched: server {} is its primary now; this server keeps it as {}'s read-only replica and sends its clients there at their next logon",
            record.node, record.partner, record.partner
        ),
    )
    .await;
    Ok(())
}

/// Undoes the unfinished switch of `node` (`--cancel`). A switch handing
/// over is undone only once the partner has promised never to take the
/// node over; if it already had, the switch is finished instead.
pub async fn cancel_switch(state: &Arc<ServerState>, node: &str, force: bool) -> SwitchReport {
    let started = Instant::now();
    let mut report = SwitchReport::new(node);
    report.outcome = match SwitchClaim::take(state, node) {
        Some(_claim) => run_cancel(state, node, force, &mut report).await,
        None => Err(format!(
            "a `switch replication` of node {node} is running on this server; wait for it to end, then cancel"
        )),
    };
    report.elapsed_secs = started.elapsed().as_secs_f64();
    let what = format!("cancel of the switch of node {node}");
    report.logged_if_failed(state, what).await
}

async fn run_cancel(
    state: &Arc<ServerState>,
    node: &str,
    force: bool,
    report: &mut SwitchReport,
) -> Result<Switched, String> {
    let (catalog, name) = (state.repo.catalog.clone(), node.to_string());
    let record = tokio::task::spawn_blocking(move || catalog.switch_of(&name))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
        .filter(|r| r.step.is_unfinished() || r.step == SwitchStep::HandedOver)
        .ok_or_else(|| format!("no switch of node {node} was started here"))?;
    report.to.clone_from(&record.partner);
    if record.step == SwitchStep::HandedOver {
        return Err(format!(
            "node {node} was switched to server {} already; to make this server its primary again, run `switch replication {node}` on {}",
            record.partner, record.partner
        ));
    }
    if record.step == SwitchStep::HandingOver {
        let (catalog, name) = (state.repo.catalog.clone(), record.partner.clone());
        let partner = tokio::task::spawn_blocking(move || catalog.server(&name))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("server {} is no longer defined here", record.partner))?;
        let answer = match connect(state, &partner, node).await {
            Ok(remote) => {
                let answer = remote.abandon_take_over(&record.switch_id).await;
                remote.bye().await;
                answer
            }
            Err(e) => Abandon::Unknown(e.to_string()),
        };
        match answer {
            Abandon::Fenced => {}
            Abandon::AlreadyTaken => {
                finish(state, &record).await?;
                return Ok(Switched::Done);
            }
            // The operator says the partner is gone for good: it cannot
            // take the node over any more, so this server takes writes
            // again. Loud in the log: if the partner comes back holding the
            // node, the node has two primaries until one is removed.
            Abandon::Unknown(why) if force => {
                actlog::record(
                    &state.repo.catalog,
                    ServerMsg::SwitchFailed,
                    node,
                    "",
                    format!(
                        "switch of node {node} to server {} undone with --force without that server's answer ({why}); if {} comes back holding the node as its own, run `remove replnode {node}` there before it takes backups",
                        record.partner, record.partner
                    ),
                )
                .await;
            }
            Abandon::Unknown(why) => {
                return Err(format!(
                    "server {} must confirm first that it has not taken node {node} over, and it did not answer ({why}); run the command again when it does, or add --force if {} is gone for good",
                    record.partner, record.partner
                ));
            }
        }
    }
    let (catalog, name, id) = (
        state.repo.catalog.clone(),
        node.to_string(),
        record.switch_id.clone(),
    );
    let at = record.step;
    let undone = tokio::task::spawn_blocking(move || catalog.undo_switch(&name, &id, at))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if !undone {
        return Err(format!(
            "the switch of node {node} moved on while it was being cancelled; run the command again"
        ));
    }
    step_logged(
        state,
        &record,
        format!(
            "switch of node {node} to server {} cancelled: the node stays this server's own and takes backups again",
            record.partner
        ),
    )
    .await;
    Ok(Switched::Cancelled)
}

/// The new primary's side: takes `node` over from `caller` (see
/// [`crate::catalog::Catalog::take_over`]) and records it (TDM0609I).
/// Returns true when the same switch had done it already.
///
/// # Errors
/// The catalog's refusals.
pub async fn take_over(
    state: &Arc<ServerState>,
    node: &str,
    caller: &str,
    switch_id: &str,
    versions_at_source: u64,
    caller_identity: (&str, &str),
) -> Result<bool, ServerError> {
    let name = normalize_node_name(node)
        .ok_or_else(|| ServerError::InvalidArgument(format!("bad node name {node:?}")))?;
    check_switch_id(switch_id)?;
    let guid: tandem_proto::ServerGuid = caller_identity.0.parse().map_err(|e| {
        ServerError::InvalidArgument(format!("source GUID {:?}: {e}", caller_identity.0))
    })?;
    let (catalog, lookup) = (state.repo.catalog.clone(), caller.to_string());
    let defined = tokio::task::spawn_blocking(move || catalog.server(&lookup))
        .await??
        .ok_or_else(|| ServerError::ServerNotDefined {
            server: caller.to_string(),
        })?;
    let failover_address =
        super::remote::checked_failover_address(state, &defined, caller_identity.1.to_string());
    let (catalog, n, from, id) = (
        state.repo.catalog.clone(),
        name.clone(),
        caller.to_string(),
        switch_id.to_string(),
    );
    crate::faults::pause_point("takeover-begin").await;
    let already = tokio::task::spawn_blocking(move || {
        let already = catalog.take_over(&n, &from, &id, versions_at_source, now_ns())?;
        // What the node's clients are told about their replication server
        // (the caller) from now on.
        catalog.set_server_identity(&from, guid, &failover_address)?;
        Ok::<bool, ServerError>(already)
    })
    .await??;
    crate::faults::pause_point("takeover-committed").await;
    if !already {
        actlog::record(
            &state.repo.catalog,
            ServerMsg::NodeSwitched,
            &name,
            "",
            format!(
                "node {name} taken over from server {caller} (planned role switch): this server is its primary now, replicating it to {caller}"
            ),
        )
        .await;
    }
    Ok(already)
}

/// The new primary's side of `--cancel` on the old one.
///
/// # Errors
/// [`ServerError::AlreadyExists`] when the switch took the node over here.
pub async fn abandon(
    state: &Arc<ServerState>,
    node: &str,
    caller: &str,
    switch_id: &str,
) -> Result<(), ServerError> {
    let name = normalize_node_name(node)
        .ok_or_else(|| ServerError::InvalidArgument(format!("bad node name {node:?}")))?;
    check_switch_id(switch_id)?;
    let (catalog, n, from, id) = (
        state.repo.catalog.clone(),
        name,
        caller.to_string(),
        switch_id.to_string(),
    );
    tokio::task::spawn_blocking(move || catalog.abandon_take_over(&n, &from, &id, now_ns())).await?
}

/// A switch id is 32 hex digits, as [`switch_node`] makes them.
fn check_switch_id(id: &str) -> Result<(), ServerError> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ServerError::InvalidArgument(format!(
            "switch id {:?} is not 32 hex digits",
            id.chars().take(40).collect::<String>()
        )))
    }
}
