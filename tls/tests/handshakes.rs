//! The accept loop under callers that never finish their handshake: a
//! connection beyond the per-address cap is closed at once, and once the
//! stalled ones are gone a real client completes its handshake. Open
//! connections are capped per address and in all, and idle ones are closed.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread")]
async fn stalled_handshakes_are_capped_per_address_and_do_not_stop_accepting() {
    let (_dir, identity, addr, mut incoming) =
        capped_listener(tandem_tls::ConnectionLimits::default()).await;

    let mut stalled = Vec::new();
    for _ in 0..tandem_tls::MAX_PENDING_PER_ADDRESS {
        stalled.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Let the accept loop take them all before the next one arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), over.read(&mut byte))
        .await
        .expect("a connection over the cap is closed at once, not left waiting");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed without a byte: {read:?}"
    );

    drop(stalled);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pin = tandem_tls::Trust::Pinned(identity.fingerprint());
    let tls = tandem_tls::ClientTls::new(&pin, None).unwrap();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}")).unwrap();
    let connecting = tokio::spawn(async move { tandem_tls::connect(endpoint, Some(&tls)).await });
    let conn = accepted(&mut incoming).await;
    assert!(
        tonic::transport::server::Connected::connect_info(&conn)
            .client_fingerprint
            .is_none()
    );
    drop(conn);
    let _ = connecting.await;
}

/// A TLS listener on 127.0.0.1 with `limits`: its directory (kept alive),
/// identity, address and stream of established connections.
async fn capped_listener(
    limits: tandem_tls::ConnectionLimits,
) -> (
    tempfile::TempDir,
    tandem_tls::ServerIdentity,
    std::net::SocketAddr,
    tokio_stream::wrappers::ReceiverStream<std::io::Result<tandem_tls::TlsConn>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let identity =
        tandem_tls::ServerIdentity::load_or_create(dir.path(), &["localhost".into()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tandem_tls::incoming(listener, &identity, limits).unwrap();
    (dir, identity, addr, incoming)
}

/// The next established connection, within five seconds.
async fn accepted(
    incoming: &mut tokio_stream::wrappers::ReceiverStream<std::io::Result<tandem_tls::TlsConn>>,
) -> tandem_tls::TlsConn {
    tokio::time::timeout(Duration::from_secs(5), incoming.next())
        .await
        .expect("a connection is accepted")
        .expect("the stream is open")
        .expect("the handshake succeeded")
}

/// A TLS client connection to `addr` pinning `identity`, kept open.
async fn open_tls_channel(
    addr: std::net::SocketAddr,
    identity: &tandem_tls::ServerIdentity,
) -> tokio::task::JoinHandle<()> {
    let pin = tandem_tls::Trust::Pinned(identity.fingerprint());
    let tls = tandem_tls::ClientTls::new(&pin, None).unwrap();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}")).unwrap();
    tokio::spawn(async move {
        // Holds the channel (and so its connection) until aborted.
        let _channel = tandem_tls::connect(endpoint, Some(&tls)).await;
        std::future::pending::<()>().await;
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn open_connections_are_capped_per_address_and_closed_when_idle() {
    let (_dir, identity, addr, mut incoming) = capped_listener(tandem_tls::ConnectionLimits {
        max_connections: 10,
        max_per_address: 2,
        idle_timeout: Duration::from_secs(1),
    })
    .await;

    let clients = [
        open_tls_channel(addr, &identity).await,
        open_tls_channel(addr, &identity).await,
    ];
    let first = accepted(&mut incoming).await;
    let mut second = accepted(&mut incoming).await;

    // A third from the same address is closed at once, before any handshake.
    let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), over.read(&mut byte))
        .await
        .expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // A call in progress keeps a connection open past the idle timeout...
    let activity = tonic::transport::server::Connected::connect_info(&second)
        .activity
        .expect("every connection tracks its calls");
    let call = activity.begin();
    let mut buf = vec![0u8; 4096];
    let busy = tokio::time::timeout(Duration::from_millis(2500), async {
        loop {
            match second.read(&mut buf).await {
                Ok(0) => return "closed".to_string(),
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
    })
    .await;
    assert!(busy.is_err(), "still open while a call runs: {busy:?}");
    // ...and once it has ended, the connection fails its next read.
    drop(call);
    let idle = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match second.read(&mut buf).await {
                Ok(0) => panic!("closed by the client, not for being idle"),
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the idle connection is closed");
    assert_eq!(idle.kind(), std::io::ErrorKind::TimedOut, "{idle}");

    // A dropped connection gives its slot back to the address.
    drop((first, second));
    let _third = open_tls_channel(addr, &identity).await;
    accepted(&mut incoming).await;
    for client in clients {
        client.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn open_connections_are_capped_in_all_whatever_their_address() {
    // The per-address cap is out of reach: only the total can refuse.
    let (_dir, identity, addr, mut incoming) = capped_listener(tandem_tls::ConnectionLimits {
        max_connections: 2,
        max_per_address: 10,
        idle_timeout: Duration::from_secs(60),
    })
    .await;
    let clients = [
        open_tls_channel(addr, &identity).await,
        open_tls_channel(addr, &identity).await,
    ];
    let mut held = vec![accepted(&mut incoming).await, accepted(&mut incoming).await];

    // A third, from another loopback address, is closed at once.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut over = socket.connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), over.read(&mut byte))
        .await
        .expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // One closed connection frees one slot for anyone.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _next = open_tls_channel(addr, &identity).await;
    accepted(&mut incoming).await;
    for client in clients {
        client.abort();
    }
}
