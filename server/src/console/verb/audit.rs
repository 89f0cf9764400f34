//! AUDIT NODE, AUDIT POOL and AUDIT CONTAINER: read and verify stored
//! chunks, and repair; exit 8 (TDM0517W) when damage remains.

use std::future::Future;

use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::cli::AuditNoun;
use crate::console::connect::Console;
use crate::console::render::{Format, print_rows};

/// Runs `audit` for `noun`.
pub(in crate::console) async fn run(
    console: &Console,
    noun: AuditNoun,
    format: Format,
) -> Result<(), AdminError> {
    match noun {
        AuditNoun::Node {
            name,
            fix,
            read_data_subset,
        } => {
            let req = console.request(pb::AuditNodesRequest {
                node: name.clone().unwrap_or_default(),
                fix,
                read_data_subset: read_data_subset.unwrap_or_default(),
            });
            let mut client = console.client();
            let what = format!(
                "reading and verifying the stored chunks of {}",
                name.as_deref()
                    .map_or("every node".to_string(), str::to_ascii_uppercase)
            );
            let r = with_spinner(format, what, console.answer(client.audit_nodes(req))).await?;
            print_rows(&r.nodes, format);
            let damaged: Vec<String> = r
                .nodes
                .iter()
                .filter(|n| n.unrepaired > 0)
                .map(|n| format!("{} ({} chunk(s))", n.node, n.unrepaired))
                .collect();
            let files: Vec<String> = r.nodes.iter().flat_map(|n| n.files.clone()).collect();
            damage_outcome(&damaged, &files, fix, "audit node --fix")?;
        }
        AuditNoun::Pool {
            name,
            fix,
            read_data_subset,
        } => {
            let scope = PoolScope::Pool(name);
            pool(console, scope, fix, read_data_subset, format).await?;
        }
        AuditNoun::Container {
            number,
            fix,
            read_data_subset,
        } => {
            let scope = PoolScope::Container(number);
            pool(console, scope, fix, read_data_subset, format).await?;
        }
    }
    Ok(())
}

/// What AUDIT POOL or AUDIT CONTAINER reads.
enum PoolScope {
    /// One storage pool by name, or every pool.
    Pool(Option<String>),
    /// One container.
    Container(u32),
}

/// AUDIT POOL [NAME] or AUDIT CONTAINER.
async fn pool(
    console: &Console,
    scope: PoolScope,
    fix: bool,
    read_data_subset: Option<String>,
    format: Format,
) -> Result<(), AdminError> {
    let (container, pool_name) = match &scope {
        PoolScope::Pool(name) => (None, name.clone().unwrap_or_default()),
        PoolScope::Container(n) => (Some(*n), String::new()),
    };
    let req = console.request(pb::AuditPoolRequest {
        container,
        fix,
        read_data_subset: read_data_subset.unwrap_or_default(),
        pool: pool_name,
    });
    let mut client = console.client();
    let what = match &scope {
        PoolScope::Container(n) => format!("reading and verifying every chunk of container {n}"),
        PoolScope::Pool(Some(name)) => format!(
            "reading and verifying every chunk in storage pool {}",
            name.to_ascii_uppercase()
        ),
        PoolScope::Pool(None) => {
            "reading and verifying every chunk in the storage pools".to_string()
        }
    };
    let r = with_spinner(format, what, console.answer(client.audit_pool(req))).await?;
    print_rows(std::slice::from_ref(&r), format);
    let damaged = if r.unrepaired > 0 {
        vec![format!("the {} ({} chunk(s))", r.scope, r.unrepaired)]
    } else {
        Vec::new()
    };
    let again = match &scope {
        PoolScope::Container(n) => format!("audit container {n} --fix"),
        PoolScope::Pool(Some(name)) => format!("audit pool {name} --fix"),
        PoolScope::Pool(None) => "audit pool --fix".to_string(),
    };
    damage_outcome(&damaged, &r.files, fix, &again)
}

/// Awaits `call` behind a spinner saying `what` when a person is watching.
pub(super) async fn with_spinner<T>(
    format: Format,
    what: String,
    call: impl Future<Output = Result<T, AdminError>>,
) -> Result<T, AdminError> {
    if !format.for_people() {
        return call.await;
    }
    let bar = tandem_client::output::console::spinner();
    bar.set_message(what);
    let answer = call.await;
    bar.finish_and_clear();
    answer
}

/// Exit 8 (TDM0517W) naming what is damaged and what to do, when anything is.
fn damage_outcome(
    damaged: &[String],
    files: &[String],
    fix: bool,
    repair: &str,
) -> Result<(), AdminError> {
    if damaged.is_empty() {
        return Ok(());
    }
    let files = if files.is_empty() {
        String::new()
    } else {
        format!("; files using it include {}", files.join(", "))
    };
    Err(AdminError::Damage(format!(
        "stored data is damaged or missing for {}{files}; {}",
        damaged.join(", "),
        if fix {
            "see the reason above, `query damaged` and `query actlog --msgno TDM0429`; restores of those files fail"
                .to_string()
        } else {
            format!(
                "run `{repair}` to repair it from another storage pool or the replication partner; `query damaged` lists it"
            )
        }
    )))
}
