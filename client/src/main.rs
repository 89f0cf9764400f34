//! `tandem`: the backup-archive client. All logic lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    tandem_os::malloc::limit_arenas(tandem_os::malloc::CLIENT_ARENAS);
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
            return ExitCode::from(tandem_client::error::ExitStatus::Error.code());
        }
    };
    ExitCode::from(
        runtime
            .block_on(tandem_client::run(std::env::args_os()))
            .code(),
    )
}
