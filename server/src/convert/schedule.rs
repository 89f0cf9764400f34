//! Schedules, their next windows and their expected runs, for the wire.

use tandem_proto::pb;

/// A schedule as the console shows it, with its associated nodes.
#[must_use]
pub fn schedule_to_pb(s: &crate::schedule::Schedule, nodes: Vec<String>) -> pb::ScheduleInfo {
    pb::ScheduleInfo {
        name: s.name.clone(),
        action: s.action.to_string(),
        objects: s.objects.clone(),
        start_ns: s.start_ns,
        period_secs: s.period_secs,
        duration_secs: s.duration_secs,
        pre_command: s.pre_command.clone(),
        post_command: s.post_command.clone(),
        nodes,
    }
}

/// An expected run of a schedule for `query event`.
#[must_use]
pub fn event_to_pb(run: &crate::schedule::ExpectedRun) -> pb::ScheduleEvent {
    let reported = run.reported.clone().unwrap_or(crate::schedule::Reported {
        state: String::new(),
        exit_code: 0,
        message: String::new(),
        started_ns: 0,
        ended_ns: 0,
    });
    pb::ScheduleEvent {
        schedule: run.schedule.clone(),
        node: run.node.clone(),
        window_start_ns: run.window.start_ns,
        window_end_ns: run.window.end_ns,
        state: run.state.to_string(),
        started_ns: reported.started_ns,
        ended_ns: reported.ended_ns,
        exit_code: reported.exit_code,
        message: reported.message,
    }
}

/// A schedule's next window for a client.
#[must_use]
pub fn scheduled_run_to_pb(
    s: &crate::schedule::Schedule,
    window: crate::schedule::Window,
) -> pb::ScheduledRun {
    pb::ScheduledRun {
        schedule: s.name.clone(),
        action: s.action.to_string(),
        objects: s.objects.clone(),
        start_ns: window.start_ns,
        end_ns: window.end_ns,
        pre_command: s.pre_command.clone(),
        post_command: s.post_command.clone(),
        period_secs: s.period_secs,
    }
}
