//! Replication runs on the source server: the checks before a run, one run
//! per node at a time, the run record in the catalog and the activity log,
//! and the schedule that starts runs every `replication_interval_minutes`.

use std::sync::Arc;

use tandem_replication::ReplicationRule;

use super::remote::connect;
use super::source::LocalSource;
use crate::ServerState;
use crate::actlog::{self, ServerMsg};
use crate::catalog::Setting;
use crate::error::ServerError;
use crate::model::{Node, PartnerServer, ReplRun, ReplState, RunState, now_ns};

/// A node's claim on [`ServerState::running`], given back when dropped. It owns the
/// server state so that a started run can move to its own task.
pub(super) struct RunClaim {
    state: Arc<ServerState>,
    node: String,
}

impl Drop for RunClaim {
    fn drop(&mut self) {
        self.state
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.node);
    }
}

impl RunClaim {
    /// Claims `node`; `None` while another run of it holds the claim.
    pub(super) fn take(state: &Arc<ServerState>, node: &str) -> Option<RunClaim> {
        let mut set = state.running.lock().unwrap_or_else(|e| e.into_inner());
        set.insert(node.to_string()).then(|| RunClaim {
            state: state.clone(),
            node: node.to_string(),
        })
    }
}

/// A node's replication rule, as the engine takes it.
pub fn rule_of(node: &Node) -> ReplicationRule {
    node.replrule.into()
}

/// The partner named by `set replserver`, as defined here.
///
/// # Errors
/// [`ServerError::NoReplicationServer`], [`ServerError::ServerNotDefined`],
/// catalog errors.
pub fn replication_server(state: &ServerState) -> Result<PartnerServer, ServerError> {
    let name = state
        .repo
        .catalog
        .setting(Setting::ReplServer)?
        .filter(|s| !s.is_empty())
        .ok_or(ServerError::NoReplicationServer)?;
    state
        .repo
        .catalog
        .server(&name)?
        .ok_or(ServerError::ServerNotDefined { server: name })
}

/// Checks that `node` can be replicated now (to `expected`, when given)
/// and returns it with the target.
fn preflight(
    state: &ServerState,
    node: &str,
    expected: Option<&str>,
) -> Result<(Node, PartnerServer), ServerError> {
    let partner = replication_server(state)?;
    if let Some(expected) = expected
        && partner.name != expected
    {
        return Err(ServerError::FailedPrecondition(format!(
            "the replication server is {} now, not {expected}; node {node} is not replicated elsewhere by this run",
            partner.name
        )));
    }
    let node_rec = state.repo.registered_node(node)?;
    if node_rec.is_replica() {
        return Err(ServerError::FailedPrecondition(format!(
            "node {node} is a replica on this server (receive mode); replicate it from its source server"
        )));
    }
    if node_rec.replstate != ReplState::Enabled {
        return Err(ServerError::FailedPrecondition(format!(
            "replication is disabled for node {node}; use `update node {node} --replstate enabled`"
        )));
    }
    Ok((node_rec, partner))
}

/// Runs replication of one node to the replication server and records it.
/// Returns the run record (completed or failed).
///
/// # Errors
/// Refusals before a run starts (not configured, disabled, already running).
pub async fn replicate_node(state: Arc<ServerState>, node: String) -> Result<ReplRun, ServerError> {
    start_run(state, node).await?.finish().await
}

/// As [`replicate_node`], only to the partner named `partner`: refused when
/// `set replserver` names another server now.
///
/// # Errors
/// As [`replicate_node`].
pub async fn replicate_node_to(
    state: Arc<ServerState>,
    node: String,
    partner: &str,
) -> Result<ReplRun, ServerError> {
    start_run_checked(state, node, Some(partner.to_string()))
        .await?
        .finish()
        .await
}

/// A replication run that has started: checked, its node claimed, and
/// recorded in the catalog as running. [`StartedRun::finish`] does the work.
pub struct StartedRun {
    claim: RunClaim,
    node_rec: Node,
    partner: PartnerServer,
    run: ReplRun,
}

impl std::fmt::Debug for StartedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartedRun")
            .field("run", &self.run)
            .finish()
    }
}

/// Starts a run of `node`: the checks, the claim and the catalog record,
/// so that a caller who does not wait can report the run at once.
///
/// # Errors
/// Refusals (not configured, disabled, already running) and catalog errors.
pub async fn start_run(state: Arc<ServerState>, node: String) -> Result<StartedRun, ServerError> {
    start_run_checked(state, node, None).await
}

async fn start_run_checked(
    state: Arc<ServerState>,
    node: String,
    expected: Option<String>,
) -> Result<StartedRun, ServerError> {
    let check_state = state.clone();
    let check_node = node.clone();
    let (node_rec, partner) = tokio::task::spawn_blocking(move || {
        preflight(&check_state, &check_node, expected.as_deref())
    })
    .await??;
    let Some(claim) = RunClaim::take(&state, &node) else {
        return Err(ServerError::ReplicationRunning { node });
    };
    let started = now_ns();
    let (catalog, n, t) = (
        state.repo.catalog.clone(),
        node.clone(),
        partner.name.clone(),
    );
    let run_id = tokio::task::spawn_blocking(move || catalog.start_run(&n, &t, started)).await??;
    let run = ReplRun {
        id: run_id,
        node,
        target: partner.name.clone(),
        started_ns: started,
        state: RunState::Running,
        ..ReplRun::default()
    };
    Ok(StartedRun {
        claim,
        node_rec,
        partner,
        run,
    })
}

impl StartedRun {
    /// The run as recorded when it started (state "running").
    #[must_use]
    pub fn record(&self) -> &ReplRun {
        &self.run
    }

    /// Runs it to its end and records the outcome (catalog, activity log);
    /// returns the run record, completed or failed.
    ///
    /// # Errors
    /// Catalog errors while recording; a failed run is an `Ok` record.
    pub async fn finish(self) -> Result<ReplRun, ServerError> {
        let StartedRun {
            claim,
            node_rec,
            partner,
            run,
        } = self;
        let state = claim.state.clone();
        let node = run.node.clone();
        let outcome = run_once(&state, &node_rec, &partner).await;
        let mut run = ReplRun {
            ended_ns: now_ns(),
            ..run
        };
        match &outcome {
            Ok(report) => {
                run.state = RunState::Completed;
                run.objects_sent = report.objects_sent;
                run.bytes_sent = report.bytes_sent;
                run.chunks_skipped = report.chunks_skipped;
                run.objects_deleted = report.objects_deleted;
                run.states_updated = report.states_updated;
            }
            Err(e) => {
                run.state = RunState::Failed;
                run.message = e.to_string();
            }
        }
        let (catalog, record) = (state.repo.catalog.clone(), run.clone());
        tokio::task::spawn_blocking(move || catalog.end_run(&record)).await??;
        let (msg, text) = match &outcome {
            Ok(r) => (
                ServerMsg::ReplicationDone,
                format!(
                    "replication of node {node} to {} completed: {} version(s), {} chunk(s) ({} bytes) sent, {} chunk(s) already there, {} state change(s), {} deletion(s)",
                    partner.name,
                    r.objects_sent,
                    r.chunks_sent,
                    r.bytes_sent,
                    r.chunks_skipped,
                    r.states_updated,
                    r.objects_deleted
                ),
            ),
            Err(e) => (
                ServerMsg::ReplicationFailed,
                format!("replication of node {node} to {} failed: {e}", partner.name),
            ),
        };
        actlog::record(&state.repo.catalog, msg, &node, &partner.address, text).await;
        drop(claim);
        Ok(run)
    }
}

async fn run_once(
    state: &Arc<ServerState>,
    node: &Node,
    partner: &PartnerServer,
) -> Result<tandem_replication::RunReport, ServerError> {
    let target = connect(state, partner, &node.name).await?;
    let report = replicate_to(state, node, &target, rule_of(node), Deletions::Mirror).await?;
    // Only after a complete run: a failed one leaves its session, so the
    // chunks it uploaded stay pinned on the target until the session times
    // out, and a retry meanwhile finds them present instead of sending
    // them again.
    target.bye().await;
    Ok(report)
}

/// The run proper, over a connected partner: prepare the replica, let the
/// engine send what it lacks, then hand over the filespace times.
pub(super) async fn replicate_to(
    state: &Arc<ServerState>,
    node: &Node,
    target: &super::RemoteTarget,
    rule: ReplicationRule,
    deletions: Deletions,
) -> Result<tandem_replication::RunReport, ServerError> {
    target.prepare(node).await?;
    let source = LocalSource::new(state.repo.clone(), node.id);
    let report = match deletions {
        Deletions::Mirror => tandem_replication::replicate(&source, target, rule).await,
        Deletions::Keep => tandem_replication::replicate(&source, &AddOnly(target), rule).await,
    }
    .map_err(|e| ServerError::FailedPrecondition(e.to_string()))?;
    let (catalog, node_id) = (state.repo.catalog.clone(), node.id);
    let filespaces = tokio::task::spawn_blocking(move || catalog.list_filespaces(node_id))
        .await??
        .into_iter()
        .map(Into::into)
        .collect();
    target.finish(filespaces, now_ns()).await?;
    Ok(report)
}

/// What a run does with versions the target holds and the source does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deletions {
    /// Deletes them: the replica mirrors its source (ordinary replication).
    Mirror,
    /// Keeps them (a recovery): they may be data the sending side never
    /// received, which only the receiving side holds.
    Keep,
}

/// A target that is only added to: every call but deletion goes through.
struct AddOnly<'a>(&'a super::RemoteTarget);

impl tandem_replication::Target<crate::model::StoredVersion> for AddOnly<'_> {
    type Error = tonic::Status;

    async fn inventory(&self) -> Result<Vec<tandem_replication::ObjectState>, tonic::Status> {
        self.0.inventory().await
    }

    async fn missing_chunks(
        &self,
        ids: &[tandem_proto::ChunkId],
    ) -> Result<Vec<tandem_proto::ChunkId>, tonic::Status> {
        self.0.missing_chunks(ids).await
    }

    async fn put_chunks(
        &self,
        chunks: Vec<tandem_proto::StoredChunk>,
    ) -> Result<(), tonic::Status> {
        self.0.put_chunks(chunks).await
    }

    async fn update_states(
        &self,
        states: &[tandem_replication::ObjectState],
    ) -> Result<u64, tonic::Status> {
        self.0.update_states(states).await
    }

    async fn put_objects(
        &self,
        objects: Vec<crate::model::StoredVersion>,
    ) -> Result<u64, tonic::Status> {
        self.0.put_objects(objects).await
    }

    async fn delete_objects(&self, _ids: &[tandem_proto::ObjectId]) -> Result<u64, tonic::Status> {
        Ok(0)
    }
}

/// Replicates every node with replication enabled, every `minutes`, until shutdown.
pub async fn schedule(state: Arc<ServerState>, shutdown: tokio_util::sync::CancellationToken) {
    let minutes = state.config.replication_interval_minutes;
    if minutes == 0 {
        return;
    }
    let period = std::time::Duration::from_secs(minutes * 60);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let catalog = state.repo.catalog.clone();
        let nodes = match tokio::task::spawn_blocking(move || catalog.list_nodes("")).await {
            Ok(Ok(nodes)) => nodes,
            Ok(Err(e)) => {
                tracing::warn!(cause = %e, "scheduled replication skipped: the nodes cannot be read");
                continue;
            }
            Err(e) => {
                tracing::warn!(cause = %e, "scheduled replication skipped");
                continue;
            }
        };
        for (node, _) in nodes {
            if node.replstate == ReplState::Enabled
                && !node.is_replica()
                && let Err(e) = replicate_node(state.clone(), node.name.clone()).await
            {
                tracing::warn!(node = %node.name, cause = %e, "scheduled replication not started");
            }
        }
    }
}
