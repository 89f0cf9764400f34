//! `tandem-admin`: the operator's console. All logic lives in `tandem_server::console`.

use std::process::ExitCode;

fn main() -> ExitCode {
    // `tandem-admin query actlog | head -1` ends quietly, before any thread starts.
    tandem_os::sigpipe::end_quietly_on_closed_stdout();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tandem-admin: cannot start (threads or I/O driver): {e}");
            return ExitCode::from(12);
        }
    };
    ExitCode::from(runtime.block_on(tandem_server::console::run(std::env::args_os())))
}
