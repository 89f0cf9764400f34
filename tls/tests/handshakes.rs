//! The accept loop under callers that never finish their handshake: a
//! connection beyond the per-address cap is closed at once, and once the
//! stalled ones are gone a real client completes its handshake.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread")]
async fn stalled_handshakes_are_capped_per_address_and_do_not_stop_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let identity =
        tandem_tls::ServerIdentity::load_or_create(dir.path(), &["localhost".into()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = tandem_tls::incoming(listener, &identity).unwrap();

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
    let conn = tokio::time::timeout(Duration::from_secs(5), incoming.next())
        .await
        .expect("a handshake completes")
        .expect("the stream is open")
        .expect("the handshake succeeded");
    assert!(
        tonic::transport::server::Connected::connect_info(&conn)
            .client_fingerprint
            .is_none()
    );
    drop(conn);
    let _ = connecting.await;
}
