//! Fault points for tests of what must survive a crash or a failing disk.
//!
//! Pause points serve operations that must survive being killed between
//! their steps (a planned role switch is one). A test starts the server with
//! `TANDEM_FAULT_PAUSE=<point>` (or `<point>:<after>`, letting the first
//! `after` passes through); when the server reaches that point it says
//! so in its log and stops there, and the test kills it with SIGKILL at
//! exactly that step. In a client they stand in for a vault's share that
//! stops answering.
//!
//! Fail points stand in for an I/O error no test can cause on demand (a
//! disk that fills up in the middle of a backup): `TANDEM_FAULT_FAIL=
//! <point>:<after>[:<times>]` lets the first `after` passes through and fails
//! the next `times` (all later ones when not given). They work wherever the
//! store runs, so also in a client's local vault.
//!
//! Both variables are read once per process (the points sit on the
//! store's read and write paths, and a test sets them for the whole
//! process it starts); without them a point costs one look at that value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The environment variable naming the point to pause at.
pub const PAUSE_ENV: &str = "TANDEM_FAULT_PAUSE";

/// How long a paused server waits to be killed before it goes on.
const PAUSE_LIMIT: Duration = Duration::from_secs(600);

/// Whether this pass through `point` pauses: `TANDEM_FAULT_PAUSE` names
/// it (`<point>`, or `<point>:<after>` to let the first `after` passes
/// through, for a stop in the middle of a stream).
fn pauses_at(point: &str) -> bool {
    /// Passes through the named point so far (one point is named at a time).
    static PASSES: AtomicU64 = AtomicU64::new(0);
    static SPEC: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let Some(spec) = SPEC.get_or_init(|| std::env::var(PAUSE_ENV).ok()) else {
        return false;
    };
    window(spec, point).is_some_and(|(after, _)| PASSES.fetch_add(1, Ordering::SeqCst) >= after)
}

/// Pauses here when `TANDEM_FAULT_PAUSE` names `point`.
pub async fn pause_point(point: &str) {
    if pauses_at(point) {
        tracing::warn!(
            point,
            "paused at fault point {point} ({PAUSE_ENV}); waiting to be killed"
        );
        tokio::time::sleep(PAUSE_LIMIT).await;
    }
}

/// [`pause_point`] for code on a blocking thread.
pub fn pause_point_blocking(point: &str) {
    if pauses_at(point) {
        tracing::warn!(
            point,
            "paused at fault point {point} ({PAUSE_ENV}); waiting to be killed"
        );
        std::thread::sleep(PAUSE_LIMIT);
    }
}

/// The environment variable naming the point to fail at.
pub const FAIL_ENV: &str = "TANDEM_FAULT_FAIL";

/// Fails with an I/O error naming `point` when `TANDEM_FAULT_FAIL` says so
/// for this pass (see the module documentation).
pub fn fail_point(point: &str) -> std::io::Result<()> {
    /// Passes through the named point so far (one point is named at a time).
    static PASSES: AtomicU64 = AtomicU64::new(0);
    // Read once: the point sits on the store's append path, and the
    // variable is set for the whole process by the test that starts it.
    static SPEC: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let Some(spec) = SPEC.get_or_init(|| std::env::var(FAIL_ENV).ok()) else {
        return Ok(());
    };
    let Some((after, times)) = window(spec, point) else {
        return Ok(());
    };
    let pass = PASSES.fetch_add(1, Ordering::Relaxed);
    if pass < after || pass - after >= times {
        return Ok(());
    }
    tracing::warn!(point, "failing at fault point {point} ({FAIL_ENV})");
    Err(std::io::Error::other(format!(
        "injected failure at {point} ({FAIL_ENV}={spec})"
    )))
}

/// The passes let through, and then paused or failed, that a spec
/// (`<point>[:<after>[:<times>]]`) gives `point`, or `None` when it names
/// another point (or cannot be read).
fn window(spec: &str, point: &str) -> Option<(u64, u64)> {
    let mut parts = spec.split(':');
    if parts.next()? != point {
        return None;
    }
    let after = parts.next().map_or(Some(0), |n| n.parse().ok())?;
    let times = parts.next().map_or(Some(u64::MAX), |n| n.parse().ok())?;
    Some((after, times))
}

#[cfg(test)]
mod tests {
    use super::window;

    #[test]
    fn fail_specs_name_a_point_a_start_and_a_count() {
        assert_eq!(window("disk", "disk"), Some((0, u64::MAX)));
        assert_eq!(window("disk:3", "disk"), Some((3, u64::MAX)));
        assert_eq!(window("disk:3:1", "disk"), Some((3, 1)));
        assert_eq!(window("disk:3", "other"), None);
        assert_eq!(window("disk:x", "disk"), None);
    }
}
