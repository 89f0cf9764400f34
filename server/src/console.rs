//! `tandem-admin`, the operator's console (TSM `dsmadmc`): TSM verbs as clap
//! subcommands, readable tables, `--json` for scripts.
//!
//! - [`cli`]: the command line (global options, verbs and their nouns).
//! - `input`: secrets and confirmations (read before connecting), times.
//! - `connect`: the server checked by its certificate, then the credentials.
//! - `verb/`: one handler per verb (`register`, `update`, `remove`,
//!   `query`, `define`, `set`, `replicate`, `expire`, `delete`, `rotate`).
//! - `render`: one row type per listing, printed as a table or as JSON.

pub mod cli;
mod connect;
mod input;
mod render;
mod verb;

use std::ffi::OsString;

use clap::Parser;

pub use cli::AdminCli;
use cli::{DefineNoun, DeleteNoun, RegisterNoun, UpdateNoun, Verb};
use connect::Console;
use input::{confirm, read_secret};

/// A console failure: what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach server at {address}: {cause}; check --server and that the server runs")]
    Unreachable { address: String, cause: String },
    #[error("{0}")]
    Refused(String),
}

async fn execute(cli: AdminCli) -> Result<(), AdminError> {
    // Read local inputs first: a bad password file should not cost a connection.
    let secret = match &cli.command {
        Verb::Register(RegisterNoun::Node { password_file, .. }) => {
            Some(read_secret(password_file.as_deref(), "password")?)
        }
        Verb::Update(UpdateNoun::Node {
            password_file: Some(f),
            ..
        }) => Some(read_secret(Some(f), "password")?),
        Verb::Register(RegisterNoun::Admin { password_file, .. }) => {
            Some(read_secret(password_file.as_deref(), "password")?)
        }
        Verb::Update(UpdateNoun::Admin {
            password_file: Some(f),
            ..
        }) => Some(read_secret(Some(f), "password")?),
        Verb::Define(DefineNoun::Server {
            server_password_file,
            ..
        }) => Some(read_secret(Some(server_password_file), "server password")?),
        Verb::Delete(DeleteNoun::Filespace {
            node,
            name,
            yes: false,
        }) => {
            confirm(&format!(
                "Delete filespace {name} of node {} with all its versions? This cannot be undone. Type yes: ",
                node.to_ascii_uppercase()
            ))?;
            None
        }
        _ => None,
    };
    let console = Console::connect(&cli).await?;
    let json = cli.json;
    let console = &console;
    match cli.command {
        Verb::Register(noun) => verb::register::run(console, noun, secret, json).await,
        Verb::Update(noun) => verb::update::run(console, noun, secret, json).await,
        Verb::Remove(noun) => verb::remove::run(console, noun, secret, json).await,
        Verb::Query(noun) => verb::query::run(console, noun, secret, json).await,
        Verb::Expire(noun) => verb::expire::run(console, noun, secret, json).await,
        Verb::Delete(noun) => verb::delete::run(console, noun, secret, json).await,
        Verb::Define(noun) => verb::define::run(console, noun, secret, json).await,
        Verb::Set(noun) => verb::set::run(console, noun, secret, json).await,
        Verb::Replicate(noun) => verb::replicate::run(console, noun, secret, json).await,
        Verb::Rotate(noun) => verb::rotate::run(console, noun, secret, json).await,
    }
}

/// Runs the console with `args` (including the program name); returns the exit code.
pub async fn run<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match AdminCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 12 } else { 0 };
        }
    };
    match execute(cli).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("TDM0510E {e}");
            12
        }
    }
}
