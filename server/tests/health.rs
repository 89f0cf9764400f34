//! The standard gRPC health service answers for the server's services, over
//! TLS with the server's certificate pinned; a wrong pin is refused in the
//! handshake, and plaintext gets no answer.

use tandem_server::config::{ConfigOverrides, ServerConfig};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_serving_for_backup_and_admin() {
    let dir = tempfile::tempdir().unwrap();
    // The server refuses a data dir other users may enter.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let overrides = ConfigOverrides {
        data_dir: Some(dir.path().to_path_buf()),
        listen: Some("127.0.0.1:0".into()),
        ..ConfigOverrides::default()
    };
    let config = ServerConfig::load(None, &overrides).unwrap();
    let state = tandem_server::ServerState::open(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("https://{addr}");
    let pin = state.identity.fingerprint();
    let token = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(tandem_server::run(state, listener, token.clone()));

    let endpoint = tonic::transport::Endpoint::from_shared(url.clone()).unwrap();
    let pinned = tandem_tls::ClientTls::new(&tandem_tls::Trust::Pinned(pin), None).unwrap();
    let channel = tandem_tls::connect(endpoint.clone(), Some(&pinned))
        .await
        .unwrap();

    let other: tandem_tls::Fingerprint = "AB".repeat(32).parse().unwrap();
    let wrong = tandem_tls::ClientTls::new(&tandem_tls::Trust::Pinned(other), None).unwrap();
    match tandem_tls::connect(endpoint, Some(&wrong)).await {
        Err(tandem_tls::ConnectError::PinMismatch {
            expected,
            presented,
            ..
        }) => {
            assert_eq!(expected, other);
            assert_eq!(presented, pin);
        }
        other => panic!("a wrong pin must be refused with both fingerprints: {other:?}"),
    }
    // Plaintext HTTP/2 to the TLS port gets no gRPC answer.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(5));
    if let Ok(plain) = plain.connect().await {
        let answer = HealthClient::new(plain)
            .check(HealthCheckRequest {
                service: "tandem.v1.Backup".into(),
            })
            .await;
        assert!(answer.is_err(), "plaintext must not be served");
    }
    let mut client = HealthClient::new(channel);
    for service in ["tandem.v1.Backup", "tandem.v1.Admin"] {
        let reply = client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status, ServingStatus::Serving as i32, "{service}");
    }
    token.cancel();
    server.await.unwrap().unwrap();
    assert!(dir.path().join("admin.token").exists());
    let written = std::fs::read_to_string(dir.path().join("fingerprint")).unwrap();
    assert_eq!(written.trim(), pin.to_string());
}
