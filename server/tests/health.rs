//! The standard gRPC health service answers for the server's services.

use tandem_server::config::{ConfigOverrides, ServerConfig};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_serving_for_backup_and_admin() {
    let dir = tempfile::tempdir().unwrap();
    let overrides = ConfigOverrides {
        data_dir: Some(dir.path().to_path_buf()),
        listen: Some("127.0.0.1:0".into()),
        name: None,
    };
    let config = ServerConfig::load(None, &overrides).unwrap();
    let state = tandem_server::ServerState::open(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let token = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(tandem_server::run(state, listener, token.clone()));

    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
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
}
