//! TLS for every Tandem connection (SPEC 2.5).
//!
//! - [`Fingerprint`]: a certificate's SHA-256, written as `openssl x509
//!   -fingerprint -sha256` prints it. It is how clients, consoles and partner
//!   servers recognise a server: pinned, never learned on first use.
//! - [`ServerIdentity`]: a server's certificate and key, created self-signed in
//!   the data directory on first start or read from the operator's own files.
//! - [`ClientTls`] and [`connect`]: a tonic channel whose TLS handshake checks
//!   the server against a pin (or a CA) before any request, and so before any
//!   credential, is sent. A mismatch is reported with both fingerprints.
//! - [`incoming`]: the server side. Handshakes run concurrently, time out,
//!   and are capped in all and per address, so slow or silent callers cannot
//!   stall the others; open connections are capped the same way and closed
//!   when idle ([`ConnectionLimits`]). A caller over a cap waits in a bounded
//!   line instead of being closed at once: to a client, a closed connection
//!   means "down", and "down" means failover. A client may
//!   present a certificate (partner servers do, for mutual TLS); its
//!   fingerprint reaches the services as [`PeerInfo`].

mod admission;
mod caller;
mod client;
mod fingerprint;
mod identity;
mod limits;
mod server;
mod verify;

pub use caller::{DEFAULT_IPV6_LIMIT_PREFIX, limit_key};
pub use client::{ClientTls, ConnectError, Trust, connect, is_loopback_url, parse_url_scheme};
pub use fingerprint::{Fingerprint, FingerprintError};
pub use identity::{IdentityError, ServerIdentity};
pub use limits::{CallActivity, CallGuard, ConnectionLimits, FIRST_CALL_TIMEOUT};
pub use server::{
    CONNECTION_LINE, CONNECTION_LINE_WAIT, HANDSHAKE_LINE, HANDSHAKE_LINE_PER_ADDRESS,
    HANDSHAKE_LINE_WAIT, HANDSHAKE_TIMEOUT, MAX_PENDING_HANDSHAKES, MAX_PENDING_PER_ADDRESS,
    PeerInfo, TlsConn, incoming,
};

/// The crypto provider every config uses: rustls on *ring*.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// ALPN for gRPC: HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";
