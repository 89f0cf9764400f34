//! The server side: TLS handshakes on accepted connections, concurrently and
//! bounded, feeding tonic's `serve_with_incoming`.

use std::io;
use std::net::SocketAddr;
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
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; further connections wait to be accepted.
/// Bounds what callers that never finish their handshake can hold.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

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

/// Accepts connections on `listener` and yields those whose TLS handshake
/// with `identity` completed. Each handshake runs in its own task, at most
/// [`MAX_PENDING_HANDSHAKES`] at a time, each within [`HANDSHAKE_TIMEOUT`].
/// The accept loop ends when the stream is dropped.
///
/// # Errors
/// [`IdentityError`] when the identity cannot make a TLS configuration.
pub fn incoming(
    listener: TcpListener,
    identity: &ServerIdentity,
) -> Result<ReceiverStream<io::Result<TlsConn>>, IdentityError> {
    let acceptor = TlsAcceptor::from(identity.server_config()?);
    let (ready, stream) = mpsc::channel::<io::Result<TlsConn>>(64);
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = pending.clone().acquire_owned().await else {
                return;
            };
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
            let acceptor = acceptor.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                if let Some(conn) = handshake(acceptor, tcp, remote).await {
                    drop(permit);
                    let _ = ready.send(Ok(conn)).await;
                }
            });
        }
    });
    Ok(ReceiverStream::new(stream))
}
