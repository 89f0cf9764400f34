//! QUERY NODE|ACTLOG|SESSION|ADMIN|STATUS|SERVER|REPLNODE|REPLICATION.

use serde_json::json;
use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::QueryNoun;
use crate::console::connect::Console;
use crate::console::input::parse_time;
use crate::console::render::{
    Format, Row, json_text, json_time, print_items, print_json, print_rows, show_time,
};

/// Runs `query` for `noun`; `secret` is the password read before connecting.
pub(in crate::console) async fn run(
    console: &Console,
    noun: QueryNoun,
    _secret: Option<String>,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        QueryNoun::Schedule { name } => super::schedule::query(console, name, format).await?,
        QueryNoun::Event { node, begin, end } => {
            super::schedule::events(console, node, begin, end, format).await?;
        }
        QueryNoun::Admin => {
            let req = console.request(pb::QueryAdminsRequest {});
            let reply = console.answer(console.client().query_admins(req)).await?;
            print_rows(&reply.admins, format);
        }
        QueryNoun::Node { name } => {
            let req = console.request(pb::QueryNodesRequest {
                name: name.clone().unwrap_or_default(),
            });
            let reply = console.answer(console.client().query_nodes(req)).await?;
            // As TSM: naming a node that is not there is an error, not an
            // empty table a script would take for success.
            if let (Some(name), true) = (name, reply.nodes.is_empty()) {
                return Err(AdminError::NotFound(format!(
                    "no node matches {name:?}; `query node` lists every node"
                )));
            }
            print_rows(&reply.nodes, format);
        }
        QueryNoun::Actlog {
            begin,
            end,
            search,
            node,
            msgno,
            originator,
            limit,
        } => {
            // A time to the second (or a date) means that whole span: the
            // begin at its start, the end through its last nanosecond.
            let begin_ns = begin
                .as_deref()
                .map(parse_time)
                .transpose()?
                .map_or(0, |t| t.first_ns);
            let end_ns = end
                .as_deref()
                .map(parse_time)
                .transpose()?
                .map_or(0, |t| t.last_ns.saturating_add(1));
            if end_ns != 0 && end_ns <= begin_ns {
                return Err(AdminError::Usage(format!(
                    "--end {} is before --begin {}; give an end after the begin",
                    end.unwrap_or_default(),
                    begin.unwrap_or_default()
                )));
            }
            let req = console.request(pb::QueryActlogRequest {
                begin_ns,
                search: search.unwrap_or_default(),
                limit,
                end_ns,
                node: node.unwrap_or_default(),
                msg_id: msgno
                    .or_else(|| originator.map(|o| o.msg_prefix().to_string()))
                    .unwrap_or_default(),
            });
            let reply = console.answer(console.client().query_actlog(req)).await?;
            print_rows(&reply.records, format);
        }
        QueryNoun::Session => {
            let req = console.request(pb::QuerySessionsRequest {});
            let reply = console.answer(console.client().query_sessions(req)).await?;
            print_rows(&reply.sessions, format);
        }
        QueryNoun::Filespace { node } => {
            let req = console.request(pb::QueryNodeFilespacesRequest {
                node: node.unwrap_or_default(),
            });
            let r = console
                .answer(console.client().query_node_filespaces(req))
                .await?;
            print_rows(&r.filespaces, format);
        }
        QueryNoun::Coverage { node, max_age } => {
            let req = console.request(pb::QueryCoverageRequest {
                node: node.unwrap_or_default(),
            });
            let r = console.answer(console.client().query_coverage(req)).await?;
            print_rows(&r.rows, format);
            let gaps = coverage_gaps(&r.rows, max_age.saturating_mul(3600));
            if !gaps.is_empty() {
                return Err(AdminError::Attention(format!(
                    "{} filespace(s) not safely copied to another server: {}; replicate them \
                     (`replicate node NAME`), or enable replication for their nodes \
                     (`update node NAME --replstate enabled`)",
                    gaps.len(),
                    gaps.join(", ")
                )));
            }
        }
        QueryNoun::Server => {
            let req = console.request(pb::QueryServersRequest {});
            let r = console.answer(console.client().query_servers(req)).await?;
            print_rows(&r.servers, format);
        }
        QueryNoun::Stgpool { name } => {
            let req = console.request(pb::QueryStgpoolRequest {
                name: name.unwrap_or_default(),
            });
            let r = console.answer(console.client().query_stgpool(req)).await?;
            print_rows(&r.pools, format);
        }
        QueryNoun::Damaged => {
            let req = console.request(pb::QueryDamagedRequest {});
            let r = console.answer(console.client().query_damaged(req)).await?;
            print_rows(&r.chunks, format);
            if format.for_people() && r.total > r.chunks.len() as u64 {
                println!(
                    "({} of {} shown, the oldest findings first; repair them with `audit pool --fix`)",
                    r.chunks.len(),
                    r.total
                );
            }
        }
        QueryNoun::Occupancy { node } => {
            let req = console.request(pb::QueryOccupancyRequest {
                node: node.unwrap_or_default(),
            });
            let r = console
                .answer(console.client().query_occupancy(req))
                .await?;
            print_rows(&r.filespaces, format);
        }
        QueryNoun::Replnode { name } => {
            let req = console.request(pb::QueryReplNodeRequest { node: name });
            let r = console
                .answer(console.client().query_repl_node(req))
                .await?;
            if format.is_json() {
                let filespaces: Vec<_> = r.filespaces.iter().map(Row::json).collect();
                print_json(&json!({
                    "node": r.node, "target": r.target,
                    "last_replication": json_time(r.last_replication_ns),
                    "filespaces": filespaces,
                }));
            } else {
                if format.for_people() {
                    tandem_client::outln!(
                        "Node {} -> {}, last replication {}",
                        r.node,
                        r.target,
                        show_time(r.last_replication_ns)
                    );
                }
                print_rows(&r.filespaces, format);
            }
        }
        QueryNoun::Replication { name } => {
            let req = console.request(pb::QueryReplicationRequest {
                node: name.unwrap_or_default(),
            });
            let r = console
                .answer(console.client().query_replication(req))
                .await?;
            print_rows(&r.runs, format);
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
                "fingerprint": json_text(&s.fingerprint), "tls": s.tls,
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
                format,
            );
        }
    }
    Ok(())
}

/// The filespaces a coverage report must warn about, as `NODE filespace
/// (why)`: no copy elsewhere, or a copy that misses the last backup and is
/// older than `max_age_secs`.
fn coverage_gaps(rows: &[pb::CoverageRow], max_age_secs: u64) -> Vec<String> {
    rows.iter()
        .filter_map(|r| {
            let why = match r.coverage.as_str() {
                "uncovered" => "no copy".to_string(),
                "behind" if r.copy_age_secs > max_age_secs => {
                    format!("copy {} h old", r.copy_age_secs / 3600)
                }
                _ => return None,
            };
            Some(format!("{} {} ({why})", r.node, r.filespace))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(coverage: &str, age: u64) -> pb::CoverageRow {
        pb::CoverageRow {
            node: "N".into(),
            filespace: "/fs".into(),
            coverage: coverage.into(),
            copy_age_secs: age,
            ..Default::default()
        }
    }

    #[test]
    fn gaps_are_missing_copies_and_stale_lagging_ones() {
        let rows = [
            row("current", 999_999),
            row("behind", 3600),
            row("behind", 7201),
            row("uncovered", 0),
            row("replica", 0),
            row("empty", 0),
        ];
        assert_eq!(
            coverage_gaps(&rows, 7200),
            ["N /fs (copy 2 h old)", "N /fs (no copy)"]
        );
    }
}
