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

/// Runs scheduled pool audits until `shutdown`; returns at once when none
/// are configured. A failed audit (the pool not answering) is logged and
/// tried again at the next interval.
pub async fn run(state: Arc<ServerState>, shutdown: CancellationToken) {
    let Some(interval) = state.config.audit.interval() else {
        return;
    };
    let slices = state.config.audit.slices;
    let fix = state.config.audit.fix;
    loop {
        let last_end = last_pool_audit_end(&state).await;
        let due = last_end.saturating_add(i64::try_from(interval.as_nanos()).unwrap_or(i64::MAX));
        let now = now_ns();
        if now >= due {
            let subset = slice_for(now, interval, slices);
            // Shutdown does not wait for a long audit: what it read so far
            // changed nothing but damage records, each written whole.
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                result = audit_pool(&state, AuditScope::Pool, subset, fix) => result,
            };
            if let Err(e) = result {
                tracing::error!(cause = %e, "scheduled audit of the pool failed");
                // Counted as done, so a pool that is down is not read in
                // a tight loop; the next interval tries again.
                AuditOutcome {
                    ended_ns: now_ns(),
                    scope: "pool".into(),
                    subset: subset.describe(),
                    ..AuditOutcome::default()
                }
                .remember(&state)
                .await;
            }
            continue;
        }
        let wait = Duration::from_nanos(u64::try_from(due - now).unwrap_or(0)).min(LOOK_EVERY);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// When the last pool audit ended (0: never).
async fn last_pool_audit_end(state: &Arc<ServerState>) -> i64 {
    let catalog = state.repo.catalog.clone();
    match tokio::task::spawn_blocking(move || AuditOutcome::last(&catalog, Setting::LastPoolAudit))
        .await
    {
        Ok(Ok(last)) => last.map_or(0, |l| l.ended_ns),
        _ => 0,
    }
}

/// The slice an audit at `now_ns` reads: the number of intervals since
/// the epoch picks it, so consecutive audits take consecutive slices
/// without keeping a counter.
fn slice_for(now_ns: i64, interval: Duration, slices: u32) -> ReadSubset {
    if slices <= 1 {
        return ReadSubset::All;
    }
    let period = interval.as_nanos().max(1);
    let index = u128::try_from(now_ns.max(0)).unwrap_or(0) / period;
    let n = u32::try_from(index % u128::from(slices)).unwrap_or(0) + 1;
    ReadSubset::Slice { n, t: slices }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_intervals_take_consecutive_slices() {
        let day = Duration::from_secs(86_400);
        let day_ns = 86_400_000_000_000i64;
        let mut seen: Vec<u32> = (0..7)
            .map(
                |d| match slice_for(1_700_000_000_000_000_000 + d * day_ns, day, 7) {
                    ReadSubset::Slice { n, t: 7 } => n,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(slice_for(5, day, 1), ReadSubset::All);
    }
}
