//! `tandem`: the backup-archive client. All logic lives in the client
//! library; this binary adds the local vault tier (the server's store,
//! opened in this process) to it.

use std::process::ExitCode;

fn main() -> ExitCode {
    tandem_os::malloc::limit_arenas(tandem_os::malloc::CLIENT_ARENAS);
    // For PostgreSQL's restore_command every failure must stop recovery
    // (a code above 125): a panic's 101 would read as "not in the archive".
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let failure = if tandem_client::cli::runs_restore_wal(&args) {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            std::process::exit(i32::from(
                tandem_client::error::ExitStatus::RecoveryMustStop.code(),
            ));
        }));
        tandem_client::error::ExitStatus::RecoveryMustStop
    } else {
        tandem_client::error::ExitStatus::Error
    };
    tandem_client::vault::install(Box::new(tandem_vault::LocalVault));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tandem: cannot start (threads or I/O driver): {e}");
            return ExitCode::from(failure.code());
        }
    };
    let status = runtime.block_on(tandem_client::run(args));
    // Work the command waited for is done. What may be left is a look at a
    // vault whose network share stopped answering, blocked in the kernel
    // and given up on: the command ends without waiting for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    ExitCode::from(status.code())
}
