//! Serving: the gRPC services on one listener, and the background work a
//! running server does (scheduled expiration and replication, activity log
//! retention) until shutdown.

use std::sync::Arc;

use tandem_proto::pb::admin_server::AdminServer;
use tandem_proto::pb::backup_server::BackupServer;
use tandem_proto::pb::replication_server::ReplicationServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::actlog::{self, ServerMsg};
use crate::error::ServerError;
use crate::state::{ServerState, setup_err};
use crate::{expire, model, repl, service};

/// Serves the backup, admin and health services on `listener` until `shutdown`
/// is cancelled, then checkpoints the catalog. In-flight calls finish first;
/// an upload cut short never reached the catalog, so it leaves nothing visible.
///
/// # Errors
/// Transport errors, and catalog errors during the final checkpoint.
pub async fn run(
    state: Arc<ServerState>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let addr = listener
        .local_addr()
        .map_err(setup_err("cannot read the bound address".into()))?;
    // Bound before listen.addr is written (which tells that the server is
    // up), so a wrong metrics_listen stops the start with the reason.
    let metrics = crate::metrics::bind(&state).await?;
    let fingerprint = state.identity.fingerprint();
    // The fingerprint first: whoever sees listen.addr can pin at once. Each
    // is replaced whole (written aside, then renamed), so a reader that sees
    // the file never reads it half-written (a test once read an empty
    // listen.addr, and so the address "http://"). Both 0600, as the
    // rest of the data directory.
    tandem_os::atomic_file::replace(
        &state.config.data_dir.join("fingerprint"),
        format!("{fingerprint}\n").as_bytes(),
        None,
    )
    .map_err(setup_err("cannot write fingerprint".into()))?;
    tandem_os::atomic_file::replace(
        &state.config.data_dir.join("listen.addr"),
        format!("{addr}\n").as_bytes(),
        None,
    )
    .map_err(setup_err("cannot write listen.addr".into()))?;
    let transport = if state.config.insecure_plaintext {
        "PLAINTEXT (development only)".to_string()
    } else {
        format!("TLS, certificate fingerprint {fingerprint}")
    };
    actlog::record(
        &state.repo.catalog,
        ServerMsg::Started,
        "",
        "",
        format!(
            "server {} (guid {}) listening on {addr}, {transport}",
            state.config.name, state.guid
        ),
    )
    .await;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<BackupServer<service::backup::BackupService>>()
        .await;
    health_reporter
        .set_serving::<AdminServer<service::admin::AdminService>>()
        .await;
    let backup = BackupServer::new(service::backup::BackupService::new(state.clone()))
        .max_decoding_message_size(tandem_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(tandem_proto::MAX_MESSAGE_BYTES);
    let admin = AdminServer::new(service::admin::AdminService::new(state.clone()));
    let replication =
        ReplicationServer::new(service::replication::ReplicationService::new(state.clone()))
            .max_decoding_message_size(tandem_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(tandem_proto::MAX_MESSAGE_BYTES);
    let scheduler = tokio::spawn(expiration_schedule(state.clone(), shutdown.clone()));
    let repl_scheduler = tokio::spawn(repl::schedule(state.clone(), shutdown.clone()));
    let actlog_pruner = tokio::spawn(actlog_retention(state.clone(), shutdown.clone()));
    let refusal_counts = tokio::spawn(held_refusals(state.clone(), shutdown.clone()));
    let db_backups = tokio::spawn(crate::dbbackup::schedule(state.clone(), shutdown.clone()));
    let audits = tokio::spawn(crate::audit::schedule::run(state.clone(), shutdown.clone()));
    let metrics_endpoint = metrics.map(|(listener, token)| {
        tokio::spawn(crate::metrics::serve(
            state.clone(),
            listener,
            token,
            shutdown.clone(),
        ))
    });

    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(tandem_proto::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(tandem_proto::CONNECTION_WINDOW_BYTES)
        .max_frame_size(tandem_proto::MAX_FRAME_BYTES)
        // Connections whose peer vanished are found and closed.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        // A client opens about a dozen streams at once; more from one
        // connection are refused by HTTP/2 itself.
        .max_concurrent_streams(Some(64))
        .layer(service::limits::PreAuthLayer::new(state.clone()))
        .add_service(health_service)
        .add_service(backup)
        .add_service(admin)
        .add_service(replication);
    let grace = std::time::Duration::from_secs(state.config.shutdown_grace_seconds);
    let (result, cut_off, grace_ends) = if state.config.insecure_plaintext {
        let serving = router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        );
        serve_with_grace(serving, &shutdown, grace).await
    } else {
        let incoming =
            tandem_tls::incoming(listener, &state.identity, state.config.connection_limits())
                .map_err(|e| ServerError::FailedPrecondition(format!("TLS identity: {e}")))?;
        let serving =
            router.serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
        serve_with_grace(serving, &shutdown, grace).await
    };
    // Background work ends before the catalog is checkpointed: a scheduled
    // replication run or expiration gets what is left of the grace period,
    // then is cut off like a call.
    shutdown.cancel();
    let mut background = vec![
        scheduler,
        repl_scheduler,
        actlog_pruner,
        refusal_counts,
        db_backups,
        audits,
    ];
    background.extend(metrics_endpoint);
    let cut_off = end_background(background, grace_ends).await? || cut_off;
    actlog::record_held_refusals(&state.repo.catalog, &state.refusals, true).await;
    actlog::record(
        &state.repo.catalog,
        ServerMsg::Stopped,
        "",
        "",
        if cut_off {
            format!(
                "server stopped; calls still in progress {} s after the stop was requested were cut off",
                grace.as_secs()
            )
        } else {
            "server stopped".into()
        },
    )
    .await;
    let catalog = state.repo.catalog.clone();
    tokio::task::spawn_blocking(move || catalog.checkpoint()).await??;
    result.map_err(|e| ServerError::FailedPrecondition(format!("transport: {e}")))
}

/// Runs `serving` until it ends; once `shutdown` is cancelled, waits at
/// most `grace` for the calls in progress to finish, then stops waiting (a
/// long `audit pool` or a stalled backup must not keep a stop waiting until
/// systemd kills the server before the catalog is checkpointed). Calls
/// still running go on, each on its connection's task, until the process
/// exits (the binary gives them 5 s after the checkpoint); each catalog
/// commit of theirs is atomic and durable, so none is half-visible: an
/// upload commits its version only at its last message, and an audit has
/// recorded every group it finished.
/// Returns whether calls were cut off, and when the grace period ends.
async fn serve_with_grace<E>(
    serving: impl std::future::Future<Output = Result<(), E>>,
    shutdown: &CancellationToken,
    grace: std::time::Duration,
) -> (Result<(), E>, bool, tokio::time::Instant) {
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => {
            return (result, false, tokio::time::Instant::now() + grace);
        }
        () = shutdown.cancelled() => {}
    }
    let grace_ends = tokio::time::Instant::now() + grace;
    match tokio::time::timeout_at(grace_ends, &mut serving).await {
        Ok(result) => (result, false, grace_ends),
        Err(_) => {
            tracing::warn!(
                "TDM0003W calls still in progress {} s after the stop was requested were cut off (shutdown_grace_seconds); the server stops",
                grace.as_secs()
            );
            (Ok(()), true, grace_ends)
        }
    }
}

/// Waits for the background tasks until `grace_ends`, then aborts those
/// still running (at their next await; a catalog transaction on a blocking
/// thread completes or rolls back whole). Returns whether any was cut off.
///
/// # Errors
/// A task that panicked.
async fn end_background(
    tasks: Vec<tokio::task::JoinHandle<()>>,
    grace_ends: tokio::time::Instant,
) -> Result<bool, ServerError> {
    let mut cut_off = false;
    let mut failed = None;
    for mut task in tasks {
        match tokio::time::timeout_at(grace_ends, &mut task).await {
            // A task that failed does not keep the others from ending.
            Ok(joined) => {
                if let Err(e) = joined {
                    failed.get_or_insert(e);
                }
            }
            Err(_) => {
                task.abort();
                cut_off = true;
            }
        }
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    if cut_off {
        tracing::warn!(
            "TDM0003W background work (a scheduled replication run, expiration or audit) still running when the grace period ended was cut off; the server stops"
        );
    }
    Ok(cut_off)
}

/// Removes activity log records older than the retention at start and then
/// hourly, so refused logons and sessions cannot grow the catalog forever.
async fn actlog_retention(state: Arc<ServerState>, shutdown: CancellationToken) {
    let period = std::time::Duration::from_secs(3600);
    loop {
        let catalog = state.repo.catalog.clone();
        match tokio::task::spawn_blocking(move || actlog::prune(&catalog)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => {
                tracing::info!("{removed} activity log records older than the retention removed");
            }
            Ok(Err(e)) => tracing::error!(cause = %e, "activity log retention failed"),
            Err(e) => tracing::error!(cause = %e, "activity log retention failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// Records, every minute until shutdown, the refusals the activity log's
/// throttle held back from callers that have since stopped (see
/// [`actlog::RefusalThrottle`]); what is left is recorded as the server stops.
async fn held_refusals(state: Arc<ServerState>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(actlog::REFUSAL_WINDOW) => {}
        }
        actlog::record_held_refusals(&state.repo.catalog, &state.refusals, false).await;
    }
}

/// Runs expiration every `expire_interval_hours` until shutdown. A failed run
/// is logged and retried at the next interval.
async fn expiration_schedule(state: Arc<ServerState>, shutdown: CancellationToken) {
    let hours = state.config.expire_interval_hours;
    if hours == 0 {
        return;
    }
    let period = std::time::Duration::from_secs(hours * 3600);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let run_state = state.clone();
        let result =
            tokio::task::spawn_blocking(move || run_state.expire_inventory(model::now_ns())).await;
        match result {
            Ok(Ok(report)) => {
                actlog::record(
                    &state.repo.catalog,
                    ServerMsg::ExpirationDone,
                    "",
                    "",
                    expire::describe(&report, "scheduled"),
                )
                .await;
            }
            Ok(Err(e)) => tracing::error!(cause = %e, "scheduled expiration failed"),
            Err(e) => tracing::error!(cause = %e, "scheduled expiration failed"),
        }
    }
}
