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
    // The fingerprint first: whoever sees listen.addr can pin at once.
    std::fs::write(
        state.config.data_dir.join("fingerprint"),
        format!("{fingerprint}\n"),
    )
    .map_err(setup_err("cannot write fingerprint".into()))?;
    std::fs::write(
        state.config.data_dir.join("listen.addr"),
        format!("{addr}\n"),
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
    let result = if state.config.insecure_plaintext {
        router
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown.clone().cancelled_owned(),
            )
            .await
    } else {
        let incoming =
            tandem_tls::incoming(listener, &state.identity, state.config.connection_limits())
                .map_err(|e| ServerError::FailedPrecondition(format!("TLS identity: {e}")))?;
        router
            .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
            .await
    };
    // Background work ends before the catalog is checkpointed.
    shutdown.cancel();
    scheduler.await?;
    repl_scheduler.await?;
    actlog_pruner.await?;
    db_backups.await?;
    audits.await?;
    if let Some(endpoint) = metrics_endpoint {
        endpoint.await?;
    }
    actlog::record(
        &state.repo.catalog,
        ServerMsg::Stopped,
        "",
        "",
        "server stopped".into(),
    )
    .await;
    let catalog = state.repo.catalog.clone();
    tokio::task::spawn_blocking(move || catalog.checkpoint()).await??;
    result.map_err(|e| ServerError::FailedPrecondition(format!("transport: {e}")))
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
