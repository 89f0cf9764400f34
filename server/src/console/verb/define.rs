//! DEFINE SERVER: a partner server and the password both share.

use serde_json::json;
use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::DefineNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, json_text};

/// Runs `define` for `noun`; `secret` is the password read before connecting.
pub(in crate::console) async fn run(
    console: &Console,
    noun: DefineNoun,
    secret: Option<String>,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        DefineNoun::Schedule {
            name,
            action,
            objects,
            start,
            period,
            duration,
            pre_command,
            post_command,
        } => {
            let spec = super::schedule::Spec {
                name,
                action,
                objects,
                start,
                period,
                duration,
                pre_command: pre_command.unwrap_or_default(),
                post_command: post_command.unwrap_or_default(),
            };
            super::schedule::define(console, spec, format).await?;
        }
        DefineNoun::Association { schedule, nodes } => {
            super::schedule::associate(console, schedule, nodes, false, format).await?;
        }
        DefineNoun::Server {
            name,
            address,
            fingerprint,
            ..
        } => {
            let req = console.request(pb::DefineServerRequest {
                name,
                address,
                password: secret.unwrap_or_default(),
                fingerprint: fingerprint.unwrap_or_default(),
            });
            let s = console.answer(console.client().define_server(req)).await?;
            if format.is_json() {
                tandem_client::outln!(
                    "{}",
                    json!({ "name": s.name, "address": s.address, "fingerprint": json_text(&s.fingerprint) })
                );
            } else if format.for_people() {
                tandem_client::outln!(
                    "TDM0500I server {} defined at {}, certificate fingerprint {}",
                    s.name,
                    s.address,
                    if s.fingerprint.is_empty() {
                        "none (plaintext loopback)"
                    } else {
                        &s.fingerprint
                    }
                );
            }
        }
    }
    Ok(())
}
