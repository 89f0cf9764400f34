//! The accept loop under load and under callers that never finish their
//! handshake: a connection over a cap waits in a bounded line and gets its
//! place when one comes free (a closed connection would look like a dead
//! server to the client); one over the line as well is closed at once, before
//! any handshake. Open connections are capped per address and in all, and
//! idle ones are closed.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_over_the_handshake_cap_waits_for_a_place_and_then_gets_it() {
    let (_dir, identity, addr, mut incoming) =
        capped_listener(tandem_tls::ConnectionLimits::default()).await;

    let mut stalled = Vec::new();
    for _ in 0..tandem_tls::MAX_PENDING_PER_ADDRESS {
        stalled.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Let the accept loop take them all before the next one arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pin = tandem_tls::Trust::Pinned(identity.fingerprint());
    let tls = tandem_tls::ClientTls::new(&pin, None).unwrap();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}")).unwrap();
    let waiting = tokio::spawn(async move { tandem_tls::connect(endpoint, Some(&tls)).await });
    // Well inside its wait in line (HANDSHAKE_LINE_WAIT)...
    nothing_accepted_for(&mut incoming, tandem_tls::HANDSHAKE_LINE_WAIT / 4).await;

    // ...a stalled caller leaves: the waiting client gets its handshake.
    drop(stalled.pop());
    let conn = accepted(&mut incoming).await;
    assert!(
        tonic::transport::server::Connected::connect_info(&conn)
            .client_fingerprint
            .is_none()
    );
    waiting.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_over_the_handshake_line_is_closed_at_once_and_a_waiting_one_after_its_wait() {
    // Over a thousand descriptors in this process (both ends of every
    // connection), more than a common soft limit.
    raise_open_file_limit(4096);
    let (_dir, _identity, addr, _incoming) =
        capped_listener(tandem_tls::ConnectionLimits::default()).await;

    let mut held = Vec::new();
    for _ in 0..tandem_tls::MAX_PENDING_PER_ADDRESS + tandem_tls::HANDSHAKE_LINE_PER_ADDRESS {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Connected after the others, so that it is taken into the line last.
    tokio::time::sleep(Duration::from_millis(300)).await;
    closed_at_once(tokio::net::TcpStream::connect(addr).await.unwrap()).await;

    // The last one in line waits (it is still open well into its wait)...
    let mut last = held.pop().unwrap();
    let mut byte = [0u8; 1];
    let early =
        tokio::time::timeout(tandem_tls::HANDSHAKE_LINE_WAIT / 4, last.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "a caller in line is not closed at once: {early:?}"
    );
    // ...and is closed once its wait is over.
    closed_within(
        &mut last,
        tandem_tls::HANDSHAKE_LINE_WAIT + Duration::from_secs(2),
        "closed after its wait in line",
    )
    .await;
}

/// Raises this process's soft limit on open files to `want` (within the
/// hard limit).
fn raise_open_file_limit(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).unwrap();
    }
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

/// A TLS client connection to `addr` pinning `identity`, kept open until
/// the returned task is aborted. Returns once its handshake is done, so a
/// test knows the server has taken it (into a place or into the line).
async fn open_tls_channel(
    addr: std::net::SocketAddr,
    identity: &tandem_tls::ServerIdentity,
) -> tokio::task::JoinHandle<()> {
    let pin = tandem_tls::Trust::Pinned(identity.fingerprint());
    let tls = tandem_tls::ClientTls::new(&pin, None).unwrap();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}")).unwrap();
    let (connected, done) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let channel = tandem_tls::connect(endpoint, Some(&tls)).await;
        let _ = connected.send(channel.is_ok());
        // Holds the channel (and so its connection) until aborted.
        let _channel = channel;
        std::future::pending::<()>().await;
    });
    let ok = tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("the handshake is done within 5 s")
        .expect("the task reports");
    assert!(ok, "the TLS connection was made");
    task
}

#[tokio::test(flavor = "multi_thread")]
async fn open_connections_are_capped_per_address_and_closed_when_idle() {
    let (_dir, identity, addr, mut incoming) = capped_listener(tandem_tls::ConnectionLimits {
        max_connections: 10,
        max_per_address: 2,
        ipv6_prefix: tandem_tls::DEFAULT_IPV6_LIMIT_PREFIX,
        idle_timeout: Duration::from_secs(1),
    })
    .await;

    let clients = [
        open_tls_channel(addr, &identity).await,
        open_tls_channel(addr, &identity).await,
    ];
    let first = accepted(&mut incoming).await;
    let mut second = accepted(&mut incoming).await;

    // Six more from the same address finish their handshakes and wait in
    // line (an address may have three times its cap waiting)...
    let mut waiting = Vec::new();
    for _ in 0..6 {
        waiting.push(open_tls_channel(addr, &identity).await);
    }
    nothing_accepted_for(&mut incoming, Duration::from_millis(500)).await;
    // ...and one more, over the address's share of the line, is closed at
    // once, before its handshake.
    closed_at_once(tokio::net::TcpStream::connect(addr).await.unwrap()).await;

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

    // Dropped connections give their places back to the waiting ones.
    drop((first, second));
    let _let_in = [accepted(&mut incoming).await, accepted(&mut incoming).await];
    nothing_accepted_for(&mut incoming, Duration::from_millis(300)).await;
    for client in clients.into_iter().chain(waiting) {
        client.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn open_connections_are_capped_in_all_whatever_their_address() {
    // The per-address cap is out of reach: only the total can refuse.
    let (_dir, identity, addr, mut incoming) = capped_listener(tandem_tls::ConnectionLimits {
        max_connections: 2,
        max_per_address: 10,
        ipv6_prefix: tandem_tls::DEFAULT_IPV6_LIMIT_PREFIX,
        idle_timeout: Duration::from_secs(60),
    })
    .await;
    let clients = [
        open_tls_channel(addr, &identity).await,
        open_tls_channel(addr, &identity).await,
    ];
    let mut held = vec![accepted(&mut incoming).await, accepted(&mut incoming).await];

    // A third waits in line, and so does a caller from another loopback
    // address (its handshake stalled: it holds its place in line all the
    // same); the line is as long as the cap in all...
    let third = open_tls_channel(addr, &identity).await;
    let _fourth = connect_from("127.0.0.2", addr).await;
    nothing_accepted_for(&mut incoming, Duration::from_millis(500)).await;
    // ...so a fifth, from yet another address, is closed at once...
    closed_at_once(connect_from("127.0.0.3", addr).await).await;

    // ...and one closed connection lets the waiting client in.
    held.pop();
    held.push(accepted(&mut incoming).await);
    for client in clients.into_iter().chain([third]) {
        client.abort();
    }
}

/// A plain TCP connection to `addr` from the loopback address `from` (the
/// caps count per address).
async fn connect_from(from: &str, addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Fails if `incoming` yields a connection within `wait`.
async fn nothing_accepted_for(
    incoming: &mut tokio_stream::wrappers::ReceiverStream<std::io::Result<tandem_tls::TlsConn>>,
    wait: Duration,
) {
    let next = tokio::time::timeout(wait, incoming.next()).await;
    assert!(next.is_err(), "a connection over the cap was let in");
}

/// Fails unless the server closes `stream`, a connection over the line,
/// at once.
async fn closed_at_once(mut stream: tokio::net::TcpStream) {
    closed_within(
        &mut stream,
        Duration::from_secs(2),
        "over the line: closed at once",
    )
    .await;
}

/// Fails unless the server closes `stream` (without sending a byte) within
/// `wait`.
async fn closed_within(stream: &mut tokio::net::TcpStream, wait: Duration, what: &str) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(wait, stream.read(&mut byte))
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after {wait:?}"));
    assert!(matches!(read, Ok(0) | Err(_)), "{what}: {read:?}");
}
