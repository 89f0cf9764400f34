//! DEFINE/DELETE/QUERY SCHEDULE, DEFINE/DELETE ASSOCIATION, QUERY EVENT:
//! client schedules, run by each node's `tandem schedule`.

use serde_json::json;
use tandem_proto::pb;

use crate::console::AdminError;
use crate::console::connect::Console;
use crate::console::input::parse_time;
use crate::console::render::{Format, print_json, print_rows};
use crate::schedule::parse_span;

/// A schedule as typed on the command line.
pub(in crate::console) struct Spec {
    pub name: String,
    pub action: String,
    pub objects: Vec<String>,
    pub start: Option<String>,
    pub period: String,
    pub duration: String,
    pub pre_command: String,
    pub post_command: String,
}

const NS: i64 = 1_000_000_000;

/// `define schedule`.
pub(in crate::console) async fn define(
    console: &Console,
    spec: Spec,
    format: Format,
) -> Result<(), AdminError> {
    let period_secs =
        parse_span(&spec.period).map_err(|e| AdminError::Usage(format!("--period {e}")))?;
    let duration_secs =
        parse_span(&spec.duration).map_err(|e| AdminError::Usage(format!("--duration {e}")))?;
    let start_ns = match spec.start.as_deref() {
        Some(text) => parse_time(text)?.first_ns,
        None => crate::model::now_ns(),
    };
    let req = console.request(pb::ScheduleInfo {
        name: spec.name,
        action: spec.action,
        objects: spec.objects,
        start_ns,
        period_secs,
        duration_secs,
        pre_command: spec.pre_command,
        post_command: spec.post_command,
        nodes: Vec::new(),
    });
    let s = console
        .answer(console.client().define_schedule(req))
        .await?;
    if format.is_json() {
        print_rows(&[s], format);
    } else if format.for_people() {
        tandem_client::outln!(
            "TDM0500I schedule {} defined: {} of {}, first window {}",
            s.name,
            s.action,
            s.objects.join(" "),
            tandem_client::output::timefmt::show(s.start_ns)
        );
    }
    Ok(())
}

/// `define association` (or with `remove`, `delete association`).
pub(in crate::console) async fn associate(
    console: &Console,
    schedule: String,
    nodes: Vec<String>,
    remove: bool,
    format: Format,
) -> Result<(), AdminError> {
    let req = console.request(pb::AssociationRequest {
        schedule: schedule.clone(),
        nodes: nodes.clone(),
    });
    let mut client = console.client();
    let r = if remove {
        console.answer(client.delete_association(req)).await?
    } else {
        console.answer(client.define_association(req)).await?
    };
    let schedule = schedule.to_ascii_uppercase();
    if format.is_json() {
        print_json(&json!({ "schedule": schedule, "changed": r.changed }));
    } else if format.for_people() {
        let what = if remove { "ended" } else { "made" };
        tandem_client::outln!(
            "TDM0500I {} association(s) of schedule {schedule} {what} ({})",
            r.changed,
            nodes.join(", ").to_ascii_uppercase()
        );
    }
    Ok(())
}

/// `delete schedule`.
pub(in crate::console) async fn delete(
    console: &Console,
    name: String,
    format: Format,
) -> Result<(), AdminError> {
    let req = console.request(pb::DeleteScheduleRequest { name: name.clone() });
    let r = console
        .answer(console.client().delete_schedule(req))
        .await?;
    let name = name.to_ascii_uppercase();
    if format.is_json() {
        print_json(&json!({ "schedule": name, "deleted": true, "associations": r.associations }));
    } else if format.for_people() {
        tandem_client::outln!(
            "TDM0500I schedule {name} deleted with {} association(s)",
            r.associations
        );
    }
    Ok(())
}

/// `query schedule`.
pub(in crate::console) async fn query(
    console: &Console,
    name: Option<String>,
    format: Format,
) -> Result<(), AdminError> {
    let asked = name.clone().unwrap_or_default();
    let req = console.request(pb::QuerySchedulesRequest { name: asked });
    let r = console
        .answer(console.client().query_schedules(req))
        .await?;
    if let Some(name) = name
        && r.schedules.is_empty()
    {
        return Err(AdminError::NotFound(format!(
            "schedule {} is not defined",
            name.to_ascii_uppercase()
        )));
    }
    print_rows(&r.schedules, format);
    Ok(())
}

/// `query event`: exits 8 (TDM0518W) when a run in the range failed or
/// was missed.
pub(in crate::console) async fn events(
    console: &Console,
    node: Option<String>,
    begin: Option<String>,
    end: Option<String>,
    format: Format,
) -> Result<(), AdminError> {
    let now = crate::model::now_ns();
    let begin_ns = match begin.as_deref() {
        Some(text) => parse_time(text)?.first_ns,
        None => now - 24 * 3600 * NS,
    };
    let end_ns = match end.as_deref() {
        Some(text) => parse_time(text)?.last_ns,
        None => now + 24 * 3600 * NS,
    };
    if end_ns < begin_ns {
        return Err(AdminError::Usage(
            "--end is before --begin; give an end after the begin".into(),
        ));
    }
    let req = console.request(pb::QueryEventsRequest {
        begin_ns,
        end_ns,
        node: node.unwrap_or_default(),
    });
    let r = console.answer(console.client().query_events(req)).await?;
    print_rows(&r.events, format);
    let bad: Vec<String> = r
        .events
        .iter()
        .filter(|e| e.state == "failed" || e.state == "missed")
        .map(|e| {
            format!(
                "{} {} at {}: {}",
                e.schedule,
                e.node,
                tandem_client::output::timefmt::show(e.window_start_ns),
                e.state
            )
        })
        .collect();
    if r.truncated {
        return Err(AdminError::EventsFailed(format!(
            "more than {} scheduled runs fall in the range; the soonest are listed{}. Narrow it with --begin and --end",
            r.events.len(),
            if bad.is_empty() {
                String::new()
            } else {
                format!(", {} of them failed or missed", bad.len())
            }
        )));
    }
    if !bad.is_empty() {
        return Err(AdminError::EventsFailed(format!(
            "{} scheduled run(s) failed or were missed: {}",
            bad.len(),
            bad.join("; ")
        )));
    }
    Ok(())
}
