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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::fingerprint::Fingerprint;
use crate::identity::{IdentityError, ServerIdentity};
use crate::limits::{AddressCounts, AddressSlot, CallActivity, ConnectionLimits};

/// How long a caller may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handshakes in progress at once. A connection beyond this is closed at
/// once rather than left waiting, so callers that never finish their
/// handshake cannot stop the server from accepting others.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Handshakes in progress at once from one IP address.
pub const MAX_PENDING_PER_ADDRESS: usize = 16;

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

/// An accepted connection whose TLS handshake is done. It holds its slots
/// under the connection limits until it is dropped, and fails its next read
/// once it has had no call in progress for the idle timeout.
#[derive(Debug)]
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    activity: Arc<CallActivity>,
    idle_timeout: Duration,
    idle_check: Pin<Box<Sleep>>,
    _slots: (OwnedSemaphorePermit, AddressSlot),
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

/// A connection's claims under the limits while its handshake runs: the
/// handshake slots go back when it ends, the connection slots live on in the
/// [`TlsConn`].
struct Claims {
    handshake: (OwnedSemaphorePermit, AddressSlot),
    connection: (OwnedSemaphorePermit, AddressSlot),
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    claims: Claims,
    idle_timeout: Duration,
) -> Option<TlsConn> {
    let _ = tcp.set_nodelay(true);
    let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
    drop(claims.handshake);
    match result {
        Ok(Ok(stream)) => {
            let client_fingerprint = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|leaf| Fingerprint::of_der(leaf));
            let activity = CallActivity::new();
            Some(TlsConn {
                stream,
                info: PeerInfo {
                    remote: Some(remote),
                    client_fingerprint,
                    activity: Some(activity.clone()),
                },
                activity,
                idle_timeout,
                idle_check: Box::pin(tokio::time::sleep(idle_timeout)),
                _slots: claims.connection,
            })
        }
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

/// Slots in all and per address, for handshakes and for connections.
struct Slots {
    handshakes: Arc<Semaphore>,
    handshakes_by_address: Arc<AddressCounts>,
    connections: Arc<Semaphore>,
    connections_by_address: Arc<AddressCounts>,
}

impl Slots {
    fn new(limits: &ConnectionLimits) -> Self {
        Slots {
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            handshakes_by_address: AddressCounts::new(MAX_PENDING_PER_ADDRESS),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            connections_by_address: AddressCounts::new(limits.max_per_address),
        }
    }

    /// All four claims for a caller at `remote`, or why not.
    fn claim(&self, remote: SocketAddr) -> Result<Claims, &'static str> {
        let connection = (
            self.connections
                .clone()
                .try_acquire_owned()
                .map_err(|_| "the server holds its maximum of connections")?,
            self.connections_by_address
                .claim(remote.ip())
                .ok_or("this address holds its maximum of connections")?,
        );
        let handshake = (
            self.handshakes
                .clone()
                .try_acquire_owned()
                .map_err(|_| "too many TLS handshakes in progress")?,
            self.handshakes_by_address
                .claim(remote.ip())
                .ok_or("too many TLS handshakes in progress from this address")?,
        );
        Ok(Claims {
            handshake,
            connection,
        })
    }
}

/// Accepts connections on `listener` and yields those whose TLS handshake
/// with `identity` completed. Each handshake runs in its own task, within
/// [`HANDSHAKE_TIMEOUT`]. A new connection is closed at once when it would
/// go beyond [`MAX_PENDING_HANDSHAKES`] handshakes in all or
/// [`MAX_PENDING_PER_ADDRESS`] from one address, or beyond the `limits` on
/// open connections; an open one is closed once idle for
/// `limits.idle_timeout`. The accept loop ends when the stream is dropped.
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
    let slots = Slots::new(&limits);
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
            let claims = match slots.claim(remote) {
                Ok(claims) => claims,
                Err(why) => {
                    tracing::debug!(%remote, "{why}; connection closed");
                    drop(tcp);
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                let conn = handshake(acceptor, tcp, remote, claims, limits.idle_timeout).await;
                if let Some(conn) = conn {
                    let _ = ready.send(Ok(conn)).await;
                }
            });
        }
    });
    Ok(ReceiverStream::new(stream))
}
