//! `tandem-admin`: the operator's console. All logic lives in `tandem_server::console`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    ExitCode::from(tandem_server::console::run(std::env::args_os()).await)
}
