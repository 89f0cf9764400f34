//! Gathers the figures for one scrape and encodes them as OpenMetrics text.
//! Everything is read afresh per scrape from cheap sources (in-memory
//! counters, one indexed catalog query per table, the pool's listing), so a
//! scrape every 15 s costs the server next to nothing.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::ServerState;
use crate::audit::AuditOutcome;
use crate::auth::SessionTotals;
use crate::catalog::{NodeHealth, Setting};
use crate::error::ServerError;
use crate::model::now_ns;
use crate::storage::PoolStatus;

/// Label sets: a few `(name, value)` pairs.
type Labels = Vec<(String, String)>;
/// A floating-point gauge (seconds, timestamps).
type Seconds = Gauge<f64, AtomicU64>;

/// What one scrape reports, read in one blocking step.
struct Snapshot {
    sessions: SessionTotals,
    nodes: Vec<NodeHealth>,
    pools: Vec<(String, PoolStatus)>,
    damaged: u64,
    audits: Vec<(&'static str, AuditOutcome)>,
    now_ns: i64,
}

/// The metrics text for one scrape.
///
/// # Errors
/// Catalog and pool-listing errors.
pub(super) async fn render(state: &Arc<ServerState>) -> Result<String, ServerError> {
    let sessions = state.sessions.totals();
    let snapshot = state
        .repo
        .blocking(move |r| {
            let mut audits = Vec::new();
            for (kind, setting) in [
                ("pool", Setting::LastPoolAudit),
                ("container", Setting::LastContainerAudit),
                ("node", Setting::LastNodeAudit),
            ] {
                if let Some(outcome) = AuditOutcome::last(&r.catalog, setting)? {
                    audits.push((kind, outcome));
                }
            }
            Ok(Snapshot {
                sessions,
                nodes: r.catalog.node_health()?,
                pools: r.pools.statuses()?,
                damaged: r.catalog.damaged_count()?,
                audits,
                now_ns: now_ns(),
            })
        })
        .await?;
    let mut registry = Registry::with_prefix("tandem");
    register_server(&mut registry, state);
    register_sessions(&mut registry, &snapshot.sessions);
    register_read_streams(&mut registry, state);
    register_nodes(&mut registry, &snapshot.nodes, snapshot.now_ns);
    register_pool(&mut registry, &snapshot.pools, snapshot.damaged);
    register_audits(&mut registry, &snapshot.audits);
    let mut text = String::new();
    encode(&mut text, &registry)
        .map_err(|e| ServerError::FailedPrecondition(format!("encoding the metrics: {e}")))?;
    Ok(text)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

fn gauge(value: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    g
}

/// Nanoseconds since the epoch as seconds.
fn seconds(ns: i64) -> f64 {
    ns as f64 / 1e9
}

fn register_server(registry: &mut Registry, state: &ServerState) {
    registry.register(
        "server",
        "This server: its name and version",
        Info::new(labels(&[
            ("name", &state.config.name),
            ("version", env!("CARGO_PKG_VERSION")),
        ])),
    );
}

fn register_sessions(registry: &mut Registry, s: &SessionTotals) {
    let open = Family::<Labels, Gauge>::default();
    open.get_or_create(&labels(&[("kind", "node")]))
        .set(i64::try_from(s.open_node).unwrap_or(i64::MAX));
    open.get_or_create(&labels(&[("kind", "replication")]))
        .set(i64::try_from(s.open_replication).unwrap_or(i64::MAX));
    registry.register("sessions_open", "Sessions open now, by kind", open);
    registry.register(
        "sessions_opened",
        "Sessions opened since the server started (nodes and partner servers)",
        counter(s.opened),
    );
    registry.register(
        "backup_received_bytes",
        "Stored-chunk bytes nodes sent since the server started (backups, archives)",
        counter(s.node_received),
    );
    registry.register(
        "restore_sent_bytes",
        "Stored-chunk bytes sent to nodes since the server started (restores, retrieves)",
        counter(s.node_sent),
    );
    registry.register(
        "replication_received_bytes",
        "Chunk bytes partner servers replicated to this server since it started",
        counter(s.replication_received),
    );
    registry.register(
        "replication_sent_bytes",
        "Chunk bytes this server sent to partner servers since it started",
        counter(s.replication_sent),
    );
}

fn register_read_streams(registry: &mut Registry, state: &ServerState) {
    let open = Family::<Labels, Gauge>::default();
    let waiting = Family::<Labels, Gauge>::default();
    for (kind, slots) in [("data", &state.read_slots), ("listing", &state.list_slots)] {
        let key = labels(&[("kind", kind)]);
        open.get_or_create(&key)
            .set(i64::try_from(slots.open()).unwrap_or(i64::MAX));
        waiting
            .get_or_create(&key)
            .set(i64::try_from(slots.waiting()).unwrap_or(i64::MAX));
    }
    registry.register(
        "read_streams_open",
        "Streamed answers open now: data (restores, vault syncs, partners' repair reads) and listing (queries of versions and archives)",
        open,
    );
    registry.register(
        "read_streams_waiting",
        "Calls waiting because their node or partner already has its streams of that kind open",
        waiting,
    );
}

fn register_nodes(registry: &mut Registry, nodes: &[NodeHealth], now_ns: i64) {
    let last_backup = Family::<Labels, Seconds>::default();
    let last_logon = Family::<Labels, Seconds>::default();
    let last_repl = Family::<Labels, Seconds>::default();
    let lag = Family::<Labels, Seconds>::default();
    let locked = Family::<Labels, Gauge>::default();
    for node in nodes {
        let key = labels(&[("node", &node.name)]);
        last_backup
            .get_or_create(&key)
            .set(seconds(node.last_backup_ns));
        last_logon
            .get_or_create(&key)
            .set(seconds(node.last_logon_ns));
        locked.get_or_create(&key).set(i64::from(node.locked));
        if node.replicated && !node.replica {
            last_repl
                .get_or_create(&key)
                .set(seconds(node.last_repl_ns));
            // Never replicated: behind since it was registered.
            let since = node.last_repl_ns.max(node.registered_ns);
            lag.get_or_create(&key)
                .set(seconds(now_ns - since).max(0.0));
        }
    }
    registry.register(
        "node_last_backup_timestamp_seconds",
        "When the node's last backup of any filespace ended (0: never)",
        last_backup,
    );
    registry.register(
        "node_last_logon_timestamp_seconds",
        "When the node last logged on (0: never)",
        last_logon,
    );
    registry.register(
        "node_locked",
        "1 when the node is locked against logons",
        locked,
    );
    registry.register(
        "node_last_replication_timestamp_seconds",
        "When the node's last successful replication ended (0: never); replicated nodes only",
        last_repl,
    );
    registry.register(
        "node_replication_lag_seconds",
        "Seconds since the node's last successful replication (since registration when never); replicated nodes only",
        lag,
    );
}

/// Every pool's figures, each series labelled with its pool's name.
fn register_pool(registry: &mut Registry, pools: &[(String, PoolStatus)], damaged: u64) {
    let info = Family::<Labels, Gauge>::default();
    let containers = Family::<Labels, Gauge>::default();
    let bytes = Family::<Labels, Gauge>::default();
    let pending = Family::<Labels, Gauge>::default();
    let requests = Family::<Labels, Counter>::default();
    let transferred = Family::<Labels, Counter>::default();
    let failures = Family::<Labels, Counter>::default();
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    for (name, p) in pools {
        let pool = name.as_str();
        info.get_or_create(&labels(&[
            ("pool", pool),
            ("kind", p.kind),
            ("location", &p.location),
        ]))
        .set(1);
        for (place, n, size) in [
            ("local", p.local_containers, p.local_bytes),
            ("bucket", p.remote_containers, p.remote_bytes),
        ] {
            let key = labels(&[("pool", pool), ("place", place)]);
            containers.get_or_create(&key).set(count(n));
            bytes.get_or_create(&key).set(count(size));
        }
        pending
            .get_or_create(&labels(&[("pool", pool)]))
            .set(count(p.uploads_pending));
        for (op, n) in [
            ("put", p.put_requests),
            ("get", p.get_requests),
            ("head", p.head_requests),
            ("delete", p.delete_requests),
        ] {
            requests
                .get_or_create(&labels(&[("pool", pool), ("op", op)]))
                .inc_by(n);
        }
        for (direction, n) in [("up", p.bytes_uploaded), ("down", p.bytes_downloaded)] {
            transferred
                .get_or_create(&labels(&[("pool", pool), ("direction", direction)]))
                .inc_by(n);
        }
        failures
            .get_or_create(&labels(&[("pool", pool)]))
            .inc_by(p.upload_failures);
    }
    registry.register(
        "pool_info",
        "Each storage pool (value 1): its name, kind (local or s3) and location",
        info,
    );
    registry.register(
        "pool_containers",
        "Containers of each pool on the local disk and in the bucket",
        containers,
    );
    registry.register(
        "pool_stored_bytes",
        "Container bytes of each pool on the local disk and in the bucket",
        bytes,
    );
    registry.register(
        "pool_uploads_pending",
        "Sealed containers of each pool waiting for upload to its bucket",
        pending,
    );
    registry.register(
        "pool_requests",
        "Object-store requests of each pool since the server started, by kind",
        requests,
    );
    registry.register(
        "pool_transferred_bytes",
        "Bytes each pool sent to and read from its object store since the server started",
        transferred,
    );
    registry.register(
        "pool_upload_failures",
        "Failed container uploads of each pool since the server started",
        failures,
    );
    registry.register(
        "damaged_chunks",
        "Chunks audits found damaged or missing and not yet repaired (query damaged)",
        gauge(damaged),
    );
}

fn register_audits(registry: &mut Registry, audits: &[(&'static str, AuditOutcome)]) {
    let ended = Family::<Labels, Seconds>::default();
    let checked = Family::<Labels, Gauge>::default();
    let damaged = Family::<Labels, Gauge>::default();
    let unrepaired = Family::<Labels, Gauge>::default();
    for (kind, outcome) in audits {
        let key = labels(&[("kind", kind)]);
        ended.get_or_create(&key).set(seconds(outcome.ended_ns));
        checked
            .get_or_create(&key)
            .set(i64::try_from(outcome.chunks_checked).unwrap_or(i64::MAX));
        damaged
            .get_or_create(&key)
            .set(i64::try_from(outcome.damaged).unwrap_or(i64::MAX));
        unrepaired
            .get_or_create(&key)
            .set(i64::try_from(outcome.unrepaired).unwrap_or(i64::MAX));
    }
    registry.register(
        "audit_last_end_timestamp_seconds",
        "When the last audit of each kind (pool, container, node) ended",
        ended,
    );
    registry.register(
        "audit_last_chunks_checked",
        "Chunks the last audit of each kind read",
        checked,
    );
    registry.register(
        "audit_last_damaged_chunks",
        "Chunks the last audit of each kind found damaged or missing",
        damaged,
    );
    registry.register(
        "audit_last_unrepaired_chunks",
        "Chunks still damaged or missing after the last audit of each kind",
        unrepaired,
    );
}
