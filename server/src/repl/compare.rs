//! `query replnode`: what the rule selects of a node here against what its
//! replica holds on the replication server, per filespace.

use std::collections::BTreeMap;
use std::sync::Arc;

use tandem_proto::pb;
use tandem_replication::ReplicationRule;

use super::remote::connect;
use super::runs::{replication_server, rule_of};
use crate::ServerState;
use crate::error::ServerError;

/// `query replnode`: per filespace, versions and bytes on this server (as the
/// rule selects them) and on the replication server.
///
/// # Errors
/// Node or replication server unknown; the target unreachable.
pub async fn compare_node(
    state: Arc<ServerState>,
    node: String,
) -> Result<pb::QueryReplNodeResponse, ServerError> {
    let check = state.clone();
    let lookup = node.clone();
    let (node_rec, partner, local) = tokio::task::spawn_blocking(move || {
        let node_rec = check.repo.registered_node(&lookup)?;
        let partner = replication_server(&check)?;
        let local = check.repo.catalog.version_states(node_rec.id)?;
        Ok::<_, ServerError>((node_rec, partner, local))
    })
    .await??;
    let rule = rule_of(&node_rec);
    let mut table: BTreeMap<String, pb::ReplFilespace> = BTreeMap::new();
    for (fs, v) in local {
        if rule == ReplicationRule::None || (rule == ReplicationRule::ActiveData && !v.active) {
            continue;
        }
        let row = row_of(&mut table, fs);
        row.source_objects += 1;
        row.source_bytes += v.size;
    }
    let target = connect(&state, &partner, &node).await?;
    let held = target.held_versions().await;
    target.bye().await;
    // A replica the partner has not been asked to create yet holds nothing.
    // Any other refusal (a node of the partner's own by that name, another
    // server's replica) is reported: showing zero there would hide it.
    let held = match held {
        Ok(held) => held,
        Err(status) if status.code() == tonic::Code::NotFound => Vec::new(),
        Err(status) => {
            return Err(ServerError::FailedPrecondition(format!(
                "target: {}",
                status.message()
            )));
        }
    };
    for (filespace, v) in held {
        let row = row_of(&mut table, filespace);
        row.target_objects += 1;
        row.target_bytes += v.size;
    }
    Ok(pb::QueryReplNodeResponse {
        node,
        target: partner.name,
        filespaces: table.into_values().collect(),
        last_replication_ns: node_rec.last_repl_ns,
    })
}

/// The table row of `filespace`, added empty on first use.
fn row_of(
    table: &mut BTreeMap<String, pb::ReplFilespace>,
    filespace: String,
) -> &mut pb::ReplFilespace {
    table
        .entry(filespace.clone())
        .or_insert_with(|| pb::ReplFilespace {
            name: filespace,
            ..Default::default()
        })
}
