//! `tandem-admin`, the operator's console (TSM `dsmadmc`): TSM verbs as clap
//! subcommands, readable tables, `--json` for scripts.
//!
//! - [`cli`]: the command line (global options, verbs and their nouns).
//! - `input`: secrets and confirmations (read before connecting), times.
//! - `connect`: the server checked by its certificate, then the credentials.
//! - `verb/`: one handler per verb (`register`, `update`, `remove`,
//!   `query`, `define`, `set`, `replicate`, `expire`, `delete`, `rotate`,
//!   `lock`/`unlock`, `ping`, `cancel`).
//! - `render`: one row type per listing, printed as a table, a list, CSV,
//!   TSV or JSON.

pub mod cli;
mod connect;
mod input;
pub mod render;
mod verb;

use std::ffi::OsString;

use clap::Parser;
use tandem_client::output::parse_errors;

pub use cli::AdminCli;
use cli::{DefineNoun, DeleteNoun, RegisterNoun, UpdateNoun, Verb};
use connect::Console;
use input::{confirm, read_secret};
use render::Format;

/// A console failure: what went wrong and what to do. Each kind has its
/// own message id, so a script can tell a typo from a refusal or an outage.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    /// A bad command line or local file; nothing was sent (TDM0510E).
    #[error("{0}")]
    Usage(String),
    /// No server answered (TDM0511E).
    #[error("cannot reach server at {address}: {cause}; check --server and that the server runs")]
    Unreachable { address: String, cause: String },
    /// The server refused the caller's credentials (TDM0512E).
    #[error("{0}")]
    Denied(String),
    /// What the command names does not exist (TDM0513E).
    #[error("{0}")]
    NotFound(String),
    /// The server refused the request as it stands (TDM0514E).
    #[error("{0}")]
    Refused(String),
    /// The server failed while carrying it out (TDM0515E).
    #[error("{0}")]
    Failed(String),
    /// The command did its work and found something an operator must act
    /// on (TDM0516W); it exits 8, not 12.
    #[error("{0}")]
    Attention(String),
    /// An audit found stored data damaged that it did not repair
    /// (TDM0517W); it exits 8.
    #[error("{0}")]
    Damage(String),
    /// Scheduled runs in the range asked about failed or were missed
    /// (TDM0518W); it exits 8.
    #[error("{0}")]
    EventsFailed(String),
}

impl AdminError {
    /// The message id it is reported with.
    fn message_id(&self) -> &'static str {
        match self {
            AdminError::Usage(_) => "TDM0510E",
            AdminError::Unreachable { .. } => "TDM0511E",
            AdminError::Denied(_) => "TDM0512E",
            AdminError::NotFound(_) => "TDM0513E",
            AdminError::Refused(_) => "TDM0514E",
            AdminError::Failed(_) => "TDM0515E",
            AdminError::Attention(_) => "TDM0516W",
            AdminError::Damage(_) => "TDM0517W",
            AdminError::EventsFailed(_) => "TDM0518W",
        }
    }

    /// The exit code: 8 for a warning, 12 for an error.
    fn exit_code(&self) -> u8 {
        match self {
            AdminError::Attention(_) | AdminError::Damage(_) | AdminError::EventsFailed(_) => 8,
            _ => 12,
        }
    }

    /// Reports it on stderr: `ID text`, or with `--json` one JSON object
    /// (`{"error": {"id", "message"}}`) a script can parse.
    fn report(&self, as_json: bool) {
        if as_json {
            // A warning is keyed as the client keys its warnings.
            let key = match self {
                AdminError::Attention(_) | AdminError::Damage(_) | AdminError::EventsFailed(_) => {
                    "warning"
                }
                _ => "error",
            };
            let doc = serde_json::json!({
                key: { "id": self.message_id(), "message": self.to_string() }
            });
            eprintln!("{doc}");
        } else {
            // The text may quote a partner's or the server's words: their
            // escape sequences are shown, not obeyed.
            eprintln!(
                "{} {}",
                self.message_id(),
                tandem_client::output::messages::without_controls(&self.to_string(), true)
            );
        }
    }
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
        Verb::Update(UpdateNoun::Server {
            server_password_file: Some(f),
            ..
        }) => Some(read_secret(Some(f), "server password")?),
        Verb::Delete(DeleteNoun::Filespace {
            node,
            name,
            yes: false,
        }) => {
            confirm(&format!(
                "Delete filespace {name} of node {} with all its versions and archive copies? This cannot be undone. Type yes: ",
                node.to_ascii_uppercase()
            ))?;
            None
        }
        _ => None,
    };
    let console = Console::connect(&cli).await?;
    let json = if cli.json { Format::Json } else { cli.format };
    let console = &console;
    match cli.command {
        Verb::Register(noun) => verb::register::run(console, noun, secret, json).await,
        Verb::Update(noun) => verb::update::run(console, noun, secret, json).await,
        Verb::Remove(noun) => verb::remove::run(console, noun, secret, json).await,
        Verb::Lock(noun) => verb::lock::run(console, noun, true, json).await,
        Verb::Unlock(noun) => verb::lock::run(console, noun, false, json).await,
        Verb::Query(noun) => verb::query::run(console, noun, secret, json).await,
        Verb::Expire(noun) => verb::expire::run(console, noun, secret, json).await,
        Verb::Delete(noun) => verb::delete::run(console, noun, secret, json).await,
        Verb::Define(noun) => verb::define::run(console, noun, secret, json).await,
        Verb::Set(noun) => verb::set::run(console, noun, secret, json).await,
        Verb::Replicate(noun) => verb::replicate::run(console, noun, secret, json).await,
        Verb::Rotate(noun) => verb::rotate::run(console, noun, secret, json).await,
        Verb::Ping(noun) => verb::ping::run(console, noun, json).await,
        Verb::Cancel(noun) => verb::cancel::run(console, noun, json).await,
        Verb::Backup(noun) => verb::backup::run(console, noun, json).await,
        Verb::Recover(noun) => verb::recover::run(console, noun, json).await,
        Verb::Switch(noun) => verb::switch::run(console, noun, json).await,
        Verb::Audit(noun) => verb::audit::run(console, noun, json).await,
        Verb::Move(noun) => verb::move_data::run(console, noun, json).await,
    }
}

/// Runs the console with `args` (including the program name); returns the exit code.
pub async fn run<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match AdminCli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) if e.use_stderr() && parse_errors::asks_for_json(&args) => {
            // A script that asked for JSON gets its parse errors as JSON too.
            AdminError::Usage(parse_errors::plain_message(&e)).report(true);
            return 12;
        }
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 12 } else { 0 };
        }
    };
    let as_json = cli.json || cli.format == Format::Json;
    match execute(cli).await {
        Ok(()) => 0,
        Err(e) => {
            e.report(as_json);
            e.exit_code()
        }
    }
}
