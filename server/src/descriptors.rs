//! The file-descriptor limit the server needs for its connection limits.
//!
//! Every connection, waiting or open, holds a descriptor. Many systems start
//! services with a soft limit of 1024, below what the default limits allow;
//! past it `accept` fails, new connections sit unanswered in the kernel's
//! backlog, and clients time out and fail over from a server that is only
//! full. So the server raises its soft limit (up to the hard one) at start
//! and says so when even the hard limit is too low.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for everything but connections: the catalog and its
/// WAL, containers being written and read, logs, the metrics port.
const FOR_FILES: u64 = 512;

/// The descriptors the server may need with `max_connections`: open
/// connections and those waiting in line for a place (a handshake in
/// progress holds one or the other), and those waiting for a handshake.
pub fn needed(max_connections: usize) -> u64 {
    let connections = max_connections + tandem_tls::CONNECTION_LINE.min(max_connections);
    u64::try_from(connections + tandem_tls::HANDSHAKE_LINE).unwrap_or(u64::MAX) + FOR_FILES
}

/// Raises the soft limit on open descriptors to what `max_connections`
/// needs, within the hard limit; logs what it did, and warns when the hard
/// limit is too low.
pub fn raise_limit(max_connections: usize) {
    let want = needed(max_connections);
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot read the open-file limit");
            return;
        }
    };
    if soft >= want {
        return;
    }
    let new_soft = want.min(hard);
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, new_soft, hard) {
        tracing::warn!(cause = %e, soft, hard, want, "cannot raise the open-file limit");
        return;
    }
    if new_soft < want {
        tracing::warn!(
            limit = new_soft,
            want,
            "the open-file limit is below what max_connections needs: raise the hard limit (LimitNOFILE= in a systemd unit, ulimit -Hn) or lower max_connections"
        );
    } else {
        tracing::info!(
            from = soft,
            to = new_soft,
            "open-file limit raised for max_connections"
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_line_counts_only_up_to_max_connections() {
        assert_eq!(super::needed(1024), 1024 + 512 + 1024 + 512);
        assert_eq!(super::needed(10), 10 + 10 + 1024 + 512);
    }
}
