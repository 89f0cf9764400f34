//! The server side: TLS handshakes on accepted connections, concurrently and
//! bounded, feeding tonic's `serve_with_incoming`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::fingerprint::Fingerprint;
use crate::identity::{IdentityError, ServerIdentity};

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
}

/// An accepted connection whose TLS handshake is done.
#[derive(Debug)]
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
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

async fn handshake(acceptor: TlsAcceptor, tcp: TcpStream, remote: SocketAddr) -> Option<TlsConn> {
    let _ = tcp.set_nodelay(true);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let client_fingerprint = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|leaf| Fingerprint::of_der(leaf));
            Some(TlsConn {
                stream,
                info: PeerInfo {
                    remote: Some(remote),
                    client_fingerprint,
                },
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

/// Handshakes in progress, in all and per caller address.
#[derive(Debug, Default)]
struct Pending {
    by_address: std::sync::Mutex<HashMap<IpAddr, usize>>,
}

/// A claim on one handshake slot of an address, given back when dropped.
struct AddressSlot {
    pending: Arc<Pending>,
    address: IpAddr,
}

impl Pending {
    fn claim(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        let mut map = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(address).or_default();
        if *count >= MAX_PENDING_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            pending: self.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self
            .pending
            .by_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.address);
            }
        }
    }
}

/// Accepts connections on `listener` and yields those whose TLS handshake
/// with `identity` completed. Each handshake runs in its own task, within
/// [`HANDSHAKE_TIMEOUT`]; beyond [`MAX_PENDING_HANDSHAKES`] in all or
/// [`MAX_PENDING_PER_ADDRESS`] from one address, a new connection is closed
/// at once. The accept loop ends when the stream is dropped.
///
/// # Errors
/// [`IdentityError`] when the identity cannot make a TLS configuration.
pub fn incoming(
    listener: TcpListener,
    identity: &ServerIdentity,
) -> Result<ReceiverStream<io::Result<TlsConn>>, IdentityError> {
    let acceptor = TlsAcceptor::from(identity.server_config()?);
    let (ready, stream) = mpsc::channel::<io::Result<TlsConn>>(64);
    let slots = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let pending = Arc::new(Pending::default());
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
            let (Ok(slot), Some(address_slot)) = (
                slots.clone().try_acquire_owned(),
                pending.claim(remote.ip()),
            ) else {
                tracing::debug!(%remote, "too many TLS handshakes in progress; connection closed");
                drop(tcp);
                continue;
            };
            let acceptor = acceptor.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                let conn = handshake(acceptor, tcp, remote).await;
                drop((slot, address_slot));
                if let Some(conn) = conn {
                    let _ = ready.send(Ok(conn)).await;
                }
            });
        }
    });
    Ok(ReceiverStream::new(stream))
}
