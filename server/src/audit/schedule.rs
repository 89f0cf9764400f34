//! Scheduled pool audits (`[audit]` in the server configuration): an audit
//! of the pool runs when the last one ended `interval_hours` ago (at start
//! too, when one is overdue), each reading the next of `slices` slices, so
//! the whole pool is read every `slices` intervals without any one night
//! reading it all.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{AuditOutcome, AuditScope, ReadSubset, audit_pool};
use crate::ServerState;
use crate::catalog::Setting;
use crate::model::now_ns;

/// The longest sleep between looks at the clock: a changed clock or an
/// audit an administrator ran is noticed within this.
const LOOK_EVERY: Duration = Duration::from_secs(600);
/// How soon a due audit looks again while an audit by hand runs.
const BUSY_RETRY: Duration = Duration::from_secs(30);

/// Runs scheduled pool audits until `shutdown`; returns at once when none
/// are configured. A failed audit (the pool not answering) is logged and
/// tried again at the next interval.
pub async fn run(state: Arc<ServerState>, shutdown: CancellationToken) {
    let Some(interval) = state.config.audit.interval() else {
        return;
    };
    let slices = state.config.audit.slices;
    let fix = state.config.audit.fix;
    let interval_ns = i64::try_from(interval.as_nanos()).unwrap_or(i64::MAX);
    // After a failed audit, when to try again (kept in memory only: a
    // failure is not an audit, and the metrics must not say one ran).
    let mut retry_at = 0i64;
    loop {
        let last = last_pool_audit(&state).await;
        let due = last
            .as_ref()
            .map_or(0, |l| l.ended_ns)
            .saturating_add(interval_ns)
            .max(retry_at);
        let now = now_ns();
        // An audit by hand is running: this one waits for it to end (and
        // then takes the slice after it) instead of failing.
        let busy = state.pool_audit.try_lock().is_err();
        if now >= due && !busy {
            let subset = next_slice(last.as_ref(), slices);
            // Shutdown does not wait for a long audit: each group of
            // containers it finished is recorded already.
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                result = audit_pool(&state, AuditScope::Pool(None), subset, fix) => result,
            };
            if let Err(e) = result {
                if state.pool_audit.try_lock().is_err() {
                    // An audit by hand started in between: wait for it.
                    retry_at = now_ns()
                        .saturating_add(i64::try_from(BUSY_RETRY.as_nanos()).unwrap_or(i64::MAX));
                    continue;
                }
                tracing::error!(cause = %e, "scheduled audit of the pool failed; tried again in {} s", interval.as_secs());
                retry_at = now_ns().saturating_add(interval_ns);
            }
            continue;
        }
        let wait = Duration::from_nanos(u64::try_from(due.saturating_sub(now)).unwrap_or(0))
            .min(LOOK_EVERY)
            .max(if busy { BUSY_RETRY } else { Duration::ZERO });
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The last pool audit's outcome, if any.
async fn last_pool_audit(state: &Arc<ServerState>) -> Option<AuditOutcome> {
    let catalog = state.repo.catalog.clone();
    match tokio::task::spawn_blocking(move || AuditOutcome::last(&catalog, Setting::LastPoolAudit))
        .await
    {
        Ok(Ok(last)) => last,
        _ => None,
    }
}

/// The slice the next scheduled audit reads: the one after the last pool
/// audit's (scheduled or by hand) when it read a slice of as many, else
/// the first. So `slices` audits in a row read every chunk once, whatever
/// their timing or a restart between them.
fn next_slice(last: Option<&AuditOutcome>, slices: u32) -> ReadSubset {
    if slices <= 1 {
        return ReadSubset::All;
    }
    let n = match last {
        Some(l) if l.slice_t == slices && (1..=slices).contains(&l.slice_n) => {
            l.slice_n % slices + 1
        }
        _ => 1,
    };
    ReadSubset::Slice { n, t: slices }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(n: u32, t: u32) -> ReadSubset {
        let last = AuditOutcome {
            slice_n: n,
            slice_t: t,
            ..AuditOutcome::default()
        };
        next_slice(Some(&last), 7)
    }

    #[test]
    fn each_audit_takes_the_slice_after_the_last() {
        assert_eq!(next_slice(None, 7), ReadSubset::Slice { n: 1, t: 7 });
        assert_eq!(after(1, 7), ReadSubset::Slice { n: 2, t: 7 });
        assert_eq!(after(7, 7), ReadSubset::Slice { n: 1, t: 7 });
        // A whole audit, or slices of another count: start again.
        assert_eq!(after(0, 0), ReadSubset::Slice { n: 1, t: 7 });
        assert_eq!(after(3, 5), ReadSubset::Slice { n: 1, t: 7 });
        assert_eq!(next_slice(None, 1), ReadSubset::All);
    }
}
