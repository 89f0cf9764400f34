//! Bounds on the connections a server holds: how many in all and from one
//! address, and how long one may stay open with no call in progress (TSM's
//! IDLETIMEOUT). Without them, callers that connect and then do nothing
//! (answering keep-alive pings is enough to look alive) hold descriptors and
//! memory for as long as they like.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The limits [`crate::incoming`] applies to established connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, in all; one more is closed at once.
    pub max_connections: usize,
    /// Connections open at once from one IP address (one IPv6 prefix of
    /// `ipv6_prefix` bits, see [`crate::limit_key`]).
    pub max_per_address: usize,
    /// Bits of an IPv6 address that name one caller for the per-address
    /// limits of connections and handshakes (128: each address).
    pub ipv6_prefix: u8,
    /// A connection with no call in progress for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// 1024 connections, 128 from one address (an IPv6 /64), 15 minutes idle (TSM's default
    /// IDLETIMEOUT).
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            max_per_address: 128,
            ipv6_prefix: crate::DEFAULT_IPV6_LIMIT_PREFIX,
            idle_timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// How long a connection may stay open before its first call (or the idle
/// timeout, if shorter). Clients and partners call at once after connecting;
/// a caller that connects and never calls would otherwise hold a slot under
/// the connection caps for the whole idle timeout.
pub const FIRST_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Calls in progress on one connection and when the last one ended. The
/// server's request layer marks each call with [`CallActivity::begin`]; the
/// connection closes itself once it has been idle for the limit.
#[derive(Debug)]
pub struct CallActivity {
    opened: Instant,
    calls: AtomicUsize,
    /// Whether any call has begun.
    called: AtomicBool,
    /// Milliseconds after `opened` when the last call ended (or 0).
    last_end_ms: AtomicU64,
}

/// One call in progress; dropping it ends the call.
#[derive(Debug)]
pub struct CallGuard(Arc<CallActivity>);

impl CallActivity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(CallActivity {
            opened: Instant::now(),
            calls: AtomicUsize::new(0),
            called: AtomicBool::new(false),
            last_end_ms: AtomicU64::new(0),
        })
    }

    /// Marks a call as in progress until the guard is dropped. Hold the
    /// guard for as long as the call's response (a stream, say) lives.
    #[must_use]
    pub fn begin(self: &Arc<Self>) -> CallGuard {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.called.store(true, Ordering::SeqCst);
        CallGuard(self.clone())
    }

    /// When the connection becomes (or became) idle for `limit`: `None`
    /// while a call is in progress; at most [`FIRST_CALL_TIMEOUT`] after it
    /// opened when no call has begun yet.
    pub(crate) fn idle_deadline(&self, limit: Duration) -> Option<Instant> {
        if self.calls.load(Ordering::SeqCst) > 0 {
            return None;
        }
        if !self.called.load(Ordering::SeqCst) {
            return Some(self.opened + limit.min(FIRST_CALL_TIMEOUT));
        }
        let last = Duration::from_millis(self.last_end_ms.load(Ordering::SeqCst));
        Some(self.opened + last + limit)
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let since_open = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_end_ms.fetch_max(since_open, Ordering::SeqCst);
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_with_no_call_in_progress() {
        let activity = CallActivity::new();
        let limit = Duration::from_secs(600);
        let fresh = activity.idle_deadline(limit).expect("idle from the start");
        assert!(
            fresh <= Instant::now() + FIRST_CALL_TIMEOUT,
            "a connection that never called gets the short timeout"
        );
        let call = activity.begin();
        let other = activity.begin();
        assert!(activity.idle_deadline(limit).is_none());
        drop(call);
        assert!(
            activity.idle_deadline(limit).is_none(),
            "one call still runs"
        );
        drop(other);
        let after = activity.idle_deadline(limit).expect("idle again");
        assert!(after >= fresh, "counted from the last call's end");
    }
}
