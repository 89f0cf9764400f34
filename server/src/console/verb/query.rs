//! QUERY NODE|ACTLOG|SESSION|ADMIN|STATUS|SERVER|REPLNODE|REPLICATION.

use serde_json::json;
use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::QueryNoun;
use crate::console::connect::Console;
use crate::console::input::parse_time;
use crate::console::render::{Row, print_items, print_json, print_rows, show_time};

/// Runs `query` for `noun`; `secret` is the password read before connecting.
pub(in crate::console) async fn run(
    console: &Console,
    noun: QueryNoun,
    _secret: Option<String>,
    as_json: bool,
) -> Result<(), AdminError> {
    match noun {
        QueryNoun::Admin => {
            let req = console.request(pb::QueryAdminsRequest {});
            let reply = console.answer(console.client().query_admins(req)).await?;
            print_rows(&reply.admins, as_json);
        }
        QueryNoun::Node { name } => {
            let req = console.request(pb::QueryNodesRequest {
                name: name.clone().unwrap_or_default(),
            });
            let reply = console.answer(console.client().query_nodes(req)).await?;
            // As TSM: naming a node that is not there is an error, not an
            // empty table a script would take for success.
            if let (Some(name), true) = (name, reply.nodes.is_empty()) {
                return Err(AdminError::Refused(format!(
                    "no node matches {name:?}; `query node` lists every node"
                )));
            }
            print_rows(&reply.nodes, as_json);
        }
        QueryNoun::Actlog {
            begin,
            search,
            limit,
        } => {
            // A begin time to the second includes that whole second.
            let begin_ns = begin
                .as_deref()
                .map(parse_time)
                .transpose()?
                .map_or(0, |t| t.first_ns);
            let req = console.request(pb::QueryActlogRequest {
                begin_ns,
                search: search.unwrap_or_default(),
                limit,
            });
            let reply = console.answer(console.client().query_actlog(req)).await?;
            print_rows(&reply.records, as_json);
        }
        QueryNoun::Session => {
            let req = console.request(pb::QuerySessionsRequest {});
            let reply = console.answer(console.client().query_sessions(req)).await?;
            print_rows(&reply.sessions, as_json);
        }
        QueryNoun::Server => {
            let req = console.request(pb::QueryServersRequest {});
            let r = console.answer(console.client().query_servers(req)).await?;
            print_rows(&r.servers, as_json);
        }
        QueryNoun::Replnode { name } => {
            let req = console.request(pb::QueryReplNodeRequest { node: name });
            let r = console
                .answer(console.client().query_repl_node(req))
                .await?;
            if as_json {
                let filespaces: Vec<_> = r.filespaces.iter().map(Row::json).collect();
                print_json(&json!({
                    "node": r.node, "target": r.target,
                    "last_replication": show_time(r.last_replication_ns),
                    "filespaces": filespaces,
                }));
            } else {
                tandem_client::outln!(
                    "Node {} -> {}, last replication {}",
                    r.node,
                    r.target,
                    show_time(r.last_replication_ns)
                );
                print_rows(&r.filespaces, false);
            }
        }
        QueryNoun::Replication { name } => {
            let req = console.request(pb::QueryReplicationRequest {
                node: name.unwrap_or_default(),
            });
            let r = console
                .answer(console.client().query_replication(req))
                .await?;
            print_rows(&r.runs, as_json);
        }
        QueryNoun::Status => {
            let req = console.request(pb::QueryStatusRequest {});
            let s = console.answer(console.client().query_status(req)).await?;
            let transport = if s.tls {
                "TLS"
            } else {
                "PLAINTEXT (development only)"
            };
            let as_object = json!({
                "server_name": s.server_name, "server_guid": s.server_guid, "data_dir": s.data_dir,
                "chunks": s.chunks, "stored_bytes": s.stored_bytes, "version": s.version,
                "fingerprint": s.fingerprint, "tls": s.tls,
                "actlog_retention_days": s.actlog_retention_days,
            });
            print_items(
                vec![
                    ("Server name", s.server_name),
                    ("Server GUID", s.server_guid),
                    ("Data directory", s.data_dir),
                    ("Chunks", s.chunks.to_string()),
                    ("Stored bytes", s.stored_bytes.to_string()),
                    ("Version", s.version),
                    ("Certificate fingerprint (SHA-256)", s.fingerprint),
                    (
                        "Activity log retention (days)",
                        s.actlog_retention_days.to_string(),
                    ),
                    ("Transport", transport.into()),
                ],
                &as_object,
                as_json,
            );
        }
    }
    Ok(())
}
