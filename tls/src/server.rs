//! The server side: TLS handshakes on accepted connections, concurrently and
//! bounded, feeding tonic's `serve_with_incoming`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::admission::{Admission, AdmissionLimits, Arrival, Place};
use crate::fingerprint::Fingerprint;
use crate::identity::{IdentityError, ServerIdentity};
use crate::limits::{CallActivity, ConnectionLimits};

/// How long a caller may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handshakes in progress at once. A connection beyond this waits in line
/// for one to end (see [`HANDSHAKE_LINE_WAIT`]), so callers that never finish
/// their handshake cannot stop the server from taking others.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Handshakes in progress at once from one IP address.
pub const MAX_PENDING_PER_ADDRESS: usize = 16;

/// Connections waiting for a handshake place, in all and from one address;
/// one more is closed at once. They hold a descriptor each, nothing more.
/// Many clients behind one NAT address logging on at once must fit.
pub const HANDSHAKE_LINE: usize = 1024;
/// See [`HANDSHAKE_LINE`].
pub const HANDSHAKE_LINE_PER_ADDRESS: usize = 512;

/// How long a connection waits for a handshake place before it is closed.
/// Handshakes take milliseconds, so a line drains fast unless stalled
/// callers hold the places. Kept below a client's default connect budget
/// (1.5 s for all its tries): a caller turned away still has time to try
/// again, and a place in line its client has given up on is soon free.
pub const HANDSHAKE_LINE_WAIT: Duration = Duration::from_secs(1);

/// How long a connection whose handshake is done waits for a place under
/// [`ConnectionLimits`] before it is closed. Its client has proved nothing
/// yet, but the server has proved who it is: a client waiting here sees a
/// slow server, not a dead one, and does not fail over for it.
pub const CONNECTION_LINE_WAIT: Duration = Duration::from_secs(20);

/// Connections that may wait for a place under [`ConnectionLimits`], in
/// all, at most (each holds a descriptor and its TLS state); never more than
/// `max_connections`. One address may fill three quarters of it, and at most
/// three times its `max_per_address`.
pub const CONNECTION_LINE: usize = 512;

/// Who is on the other end of a connection, as request extensions carry it.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The caller's address.
    pub remote: Option<SocketAddr>,
    /// The fingerprint of the certificate the caller proved it holds, if it
    /// presented one (partner servers do).
    pub client_fingerprint: Option<Fingerprint>,
    /// The connection's calls in progress: the server marks each call here,
    /// so that an idle connection can be closed.
    pub activity: Option<Arc<CallActivity>>,
}

/// An accepted connection whose TLS handshake is done. It holds its place
/// under the connection limits until it is dropped, and fails its next read
/// once it has had no call in progress for the idle timeout.
#[derive(Debug)]
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    activity: Arc<CallActivity>,
    idle_timeout: Duration,
    idle_check: Pin<Box<Sleep>>,
    _place: Place,
}

impl TlsConn {
    /// `Err` once the connection has been idle for the timeout. Otherwise
    /// sets the timer to the next moment it could be, and registers the
    /// task's waker with it, so an idle connection is closed even when the
    /// caller sends nothing at all.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.idle_check.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let next = match self.activity.idle_deadline(self.idle_timeout) {
                Some(deadline) if Instant::from_std(deadline) <= now => {
                    tracing::debug!(remote = ?self.info.remote, "idle connection closed");
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no call for {} s: the idle connection is closed",
                            self.idle_timeout.as_secs()
                        ),
                    ));
                }
                Some(deadline) => Instant::from_std(deadline),
                // A call is in progress: look again a timeout later.
                None => now + self.idle_timeout,
            };
            self.idle_check.as_mut().reset(next);
        }
        Ok(())
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_idle(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Runs the TLS handshake on `tcp` within [`HANDSHAKE_TIMEOUT`]; `None`
/// (logged) when it fails or times out.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let _ = tcp.set_nodelay(true);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%remote, cause = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%remote, "TLS handshake timed out");
            None
        }
    }
}

impl TlsConn {
    fn new(
        stream: tokio_rustls::server::TlsStream<TcpStream>,
        remote: SocketAddr,
        place: Place,
        idle_timeout: Duration,
    ) -> Self {
        let client_fingerprint = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|leaf| Fingerprint::of_der(leaf));
        let activity = CallActivity::new();
        TlsConn {
            stream,
            info: PeerInfo {
                remote: Some(remote),
                client_fingerprint,
                activity: Some(activity.clone()),
            },
            activity,
            idle_timeout,
            idle_check: Box::pin(tokio::time::sleep(idle_timeout)),
            _place: place,
        }
    }
}

/// The two admissions every connection passes: a handshake place while its
/// handshake runs, then a place under the [`ConnectionLimits`] for as long as
/// it stays open.
struct Gates {
    handshakes: Arc<Admission>,
    connections: Arc<Admission>,
}

impl Gates {
    fn new(limits: &ConnectionLimits) -> Self {
        Gates {
            handshakes: Admission::new(AdmissionLimits {
                total: MAX_PENDING_HANDSHAKES,
                per_address: MAX_PENDING_PER_ADDRESS,
                waiting_total: HANDSHAKE_LINE,
                waiting_per_address: HANDSHAKE_LINE_PER_ADDRESS,
                ipv6_prefix: limits.ipv6_prefix,
            }),
            connections: Admission::new(AdmissionLimits {
                total: limits.max_connections,
                per_address: limits.max_per_address,
                waiting_total: connection_line(limits),
                waiting_per_address: (connection_line(limits) * 3 / 4)
                    .max(1)
                    .min(limits.max_per_address.saturating_mul(3)),
                ipv6_prefix: limits.ipv6_prefix,
            }),
        }
    }
}

/// How many connections may wait for a place under `limits`.
fn connection_line(limits: &ConnectionLimits) -> usize {
    CONNECTION_LINE.min(limits.max_connections)
}

/// Takes one accepted connection through both admissions and the handshake;
/// `None` (logged) when it is turned away or its handshake fails.
async fn admit(
    gates: Arc<Gates>,
    handshake_arrival: Arrival,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    idle_timeout: Duration,
) -> Option<TlsConn> {
    let handshake_place = match handshake_arrival.place_within(HANDSHAKE_LINE_WAIT).await {
        Ok(place) => place,
        Err(why) => {
            tracing::debug!(%remote, "no handshake place: {why}; connection closed");
            return None;
        }
    };
    // Turned away before the handshake when even the line is full, so a
    // flood costs no handshakes.
    let connection_arrival = match gates.connections.arrive(remote.ip()) {
        Ok(arrival) => arrival,
        Err(why) => {
            tracing::debug!(%remote, "no connection place: {why}; connection closed");
            return None;
        }
    };
    let stream = handshake(acceptor, tcp, remote).await?;
    drop(handshake_place);
    match connection_arrival.place_within(CONNECTION_LINE_WAIT).await {
        Ok(place) => Some(TlsConn::new(stream, remote, place, idle_timeout)),
        Err(why) => {
            tracing::debug!(%remote, "no connection place: {why}; connection closed");
            None
        }
    }
}

/// Accepts connections on `listener` and yields those whose TLS handshake
/// with `identity` completed. Each connection is taken through in its own
/// task. It first needs one of [`MAX_PENDING_HANDSHAKES`] handshake places
/// ([`MAX_PENDING_PER_ADDRESS`] from one address), then, for as long as it
/// stays open, a place under `limits`. Where no place is free it waits in a
/// bounded line ([`HANDSHAKE_LINE_WAIT`], [`CONNECTION_LINE_WAIT`]) rather
/// than being closed at once, so that a full server does not look like a
/// dead one; it is closed at once only when the line is full too. The
/// handshake runs within [`HANDSHAKE_TIMEOUT`]; an open connection is closed
/// once idle for `limits.idle_timeout`. The accept loop ends when the
/// stream is dropped.
///
/// # Errors
/// [`IdentityError`] when the identity cannot make a TLS configuration.
pub fn incoming(
    listener: TcpListener,
    identity: &ServerIdentity,
    limits: ConnectionLimits,
) -> Result<ReceiverStream<io::Result<TlsConn>>, IdentityError> {
    let acceptor = TlsAcceptor::from(identity.server_config()?);
    let (ready, stream) = mpsc::channel::<io::Result<TlsConn>>(64);
    let gates = Arc::new(Gates::new(&limits));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = ready.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: pause, then go on.
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Checked here, before a task is spawned: a connection over even
            // the line's bound costs nothing more than the accept.
            let arrival = match gates.handshakes.arrive(remote.ip()) {
                Ok(arrival) => arrival,
                Err(why) => {
                    tracing::debug!(%remote, "no handshake place: {why}; connection closed");
                    drop(tcp);
                    continue;
                }
            };
            let (acceptor, ready, gates) = (acceptor.clone(), ready.clone(), gates.clone());
            tokio::spawn(async move {
                let conn = admit(gates, arrival, acceptor, tcp, remote, limits.idle_timeout).await;
                if let Some(conn) = conn {
                    let _ = ready.send(Ok(conn)).await;
                }
            });
        }
    });
    Ok(ReceiverStream::new(stream))
}
