//! `tandem-server`: the backup server. Flags -> `ServerConfig` -> tracing ->
//! bind -> `tandem_server::run` until SIGINT/SIGTERM. `tandem-server demo` runs
//! the end-to-end walk-through on a temporary directory instead.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem_server::config::{ConfigOverrides, ServerConfig};
use tandem_server::logging::{self, LogFormat, LogRotation, LogSettings};
use tokio_util::sync::CancellationToken;

/// The Tandem backup server.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Configuration keys (--config FILE, or TANDEM_SERVER_<KEY> in the environment): \
data_dir, listen, name, expire_interval_hours, replication_interval_minutes, [policy], \
tls_cert, tls_key, insecure_plaintext, rename, invalid_password_limit, comm_timeout_seconds, \
shutdown_grace_seconds, idle_timeout_seconds, max_connections, ingest_memory_mib, log_file, log_format, log_rotation, log_max_files, \
db_backup_dir, db_backup_interval_hours, db_backup_keep, [pool], metrics_listen, [audit]. \
Defaults and ranges: README, \"Server configuration\". RUST_LOG sets the log level (default info)."
)]
struct Args {
    /// Server configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory [default: ./tandem-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:1500]; port 0 picks a free port,
    /// written to DATA_DIR/listen.addr.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Server name [default: TANDEM].
    #[arg(long)]
    name: Option<String>,
    /// Serve plaintext instead of TLS: development only, loopback addresses only.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Accept --name although the data dir belongs to a server of another name,
    /// and keep the new name.
    #[arg(long)]
    rename: bool,
    /// Log to this file instead of stderr, rolled over daily by default
    /// (log_rotation, log_max_files in the config).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Log lines as text or JSON [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Walk through backup and restore end to end on a temporary directory:
    /// start a server, register a node, back up a sample tree, restore and verify it.
    Demo {
        /// Keep the temporary directory and print where it is.
        #[arg(long)]
        keep: bool,
    },
    /// Put a catalog copy made by `tandem-admin backup db` back in place of
    /// this data dir's catalog (TSM RESTORE DB), with the server stopped:
    /// the current catalog is moved aside, the copy is checked against the
    /// containers, and every replicated node is held for `recover node`
    /// (its replica may hold newer versions).
    RestoreDb {
        /// The catalog copy (`tandem-db-NAME-TIME.sqlite`).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
}

async fn serve(args: Args) -> anyhow::Result<()> {
    // Everything the server creates (catalog, containers, keys, logs) is
    // for its own user only.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let overrides = ConfigOverrides {
        data_dir: args.data_dir,
        listen: args.listen,
        name: args.name,
        insecure_plaintext: args.insecure_plaintext,
        rename: args.rename,
        log_file: args.log_file,
        log_format: args.log_format,
    };
    let config = ServerConfig::load(args.config.as_deref(), &overrides)?;
    logging::init(&config.log_settings(), "info")?;
    tandem_server::descriptors::raise_limit(config.max_connections);
    let listen = config.listen;
    let state = tandem_server::ServerState::open(config)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        name = %state.config.name,
        guid = %state.guid,
        fingerprint = %state.identity.fingerprint(),
        tls = !state.config.insecure_plaintext,
        "server ready"
    );
    let token = CancellationToken::new();
    let signal_token = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        signal_token.cancel();
    });
    tandem_server::run(state, listener, token).await?;
    Ok(())
}

/// `restore-db`: on the data dir the configuration names.
fn restore_db(args: &Args, from: &std::path::Path) -> anyhow::Result<()> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let overrides = ConfigOverrides {
        data_dir: args.data_dir.clone(),
        ..ConfigOverrides::default()
    };
    let config = ServerConfig::load(args.config.as_deref(), &overrides)?;
    let report = tandem_server::dbrestore::restore_db(
        &config.data_dir,
        from,
        config.policy,
        tandem_server::repository::PoolSetup {
            default: &config.pool,
            more: &config.pools,
        },
    )?;
    println!("Catalog restored from {}", from.display());
    if let Some(aside) = &report.kept_aside {
        println!("Replaced catalog kept as {}", aside.display());
    }
    println!("Chunks in place: {}", report.chunks.kept);
    println!(
        "Chunks re-pointed (moved since the copy): {}",
        report.chunks.repointed
    );
    println!(
        "Chunks missing (freed since the copy): {}",
        report.chunks.missing.len()
    );
    println!(
        "Chunks not in the copy (written after it; reclaimed): {}",
        report.chunks.unindexed
    );
    println!(
        "Damaged: {} version(s), {} archive copy(ies)",
        report.damaged.versions, report.damaged.archives
    );
    for path in &report.damaged.sample {
        println!("  damaged: {}", tandem_proto::names::display(path));
    }
    for (node, source) in &report.held {
        println!(
            "TDM0426W node {node} is held for recovery: server {source} may hold versions this catalog lost. \
             Backups and replication of it wait until `tandem-admin recover node {node} --from {source}` has brought them back."
        );
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(cause = %e, "cannot watch SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    // Before the runtime's threads exist, so none gets an arena of its own.
    tandem_os::malloc::limit_arenas(tandem_os::malloc::SERVER_ARENAS);
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => {
            let code = runtime.block_on(run_server());
            // Calls a stop cut off may still hold blocking threads (an S3
            // read, a catalog transaction, each atomic); the process does
            // not wait long for them.
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            code
        }
        Err(e) => {
            eprintln!("tandem-server: cannot start the async runtime: {e}");
            ExitCode::from(12)
        }
    }
}

async fn run_server() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Demo { keep }) => {
            let stderr_only = LogSettings {
                file: None,
                format: LogFormat::Text,
                rotation: LogRotation::Never,
                max_files: 1,
            };
            if let Err(e) = logging::init(&stderr_only, "warn") {
                eprintln!("tandem-server: {e}");
                return ExitCode::from(12);
            }
            tandem_server::demo::run(keep).await
        }
        Some(Command::RestoreDb { ref from }) => match restore_db(&args, from) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tandem-server: {e:#}");
                ExitCode::from(12)
            }
        },
        None => match serve(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tandem-server: {e:#}");
                ExitCode::from(12)
            }
        },
    }
}
