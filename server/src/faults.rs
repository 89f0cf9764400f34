//! Pause points for tests of operations that must survive being killed
//! between their steps (a planned role switch is one). A test starts the
//! server with `TANDEM_FAULT_PAUSE=<point>`; when the server reaches that
//! point it says so in its log and stops there, and the test kills it with
//! SIGKILL at exactly that step. Without the variable a point costs one
//! environment lookup.

use std::time::Duration;

/// The environment variable naming the point to pause at.
pub const PAUSE_ENV: &str = "TANDEM_FAULT_PAUSE";

/// How long a paused server waits to be killed before it goes on.
const PAUSE_LIMIT: Duration = Duration::from_secs(600);

/// Pauses here when `TANDEM_FAULT_PAUSE` names `point`.
pub async fn pause_point(point: &str) {
    if std::env::var(PAUSE_ENV).is_ok_and(|v| v == point) {
        tracing::warn!(
            point,
            "paused at fault point {point} ({PAUSE_ENV}); waiting to be killed"
        );
        tokio::time::sleep(PAUSE_LIMIT).await;
    }
}

/// [`pause_point`] for code on a blocking thread.
pub fn pause_point_blocking(point: &str) {
    if std::env::var(PAUSE_ENV).is_ok_and(|v| v == point) {
        tracing::warn!(
            point,
            "paused at fault point {point} ({PAUSE_ENV}); waiting to be killed"
        );
        std::thread::sleep(PAUSE_LIMIT);
    }
}
