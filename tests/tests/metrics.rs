//! The Prometheus endpoint and scheduled pool audits (issue 25): a
//! monitoring system scrapes `GET /metrics` over HTTPS with the server's own
//! certificate as its CA and the bearer token from DATA_DIR/metrics.token
//! (curl here, as an operator checks it); scheduled audits read the pool
//! slice by slice and what they find shows in the metrics.

use std::process::Command;
use std::time::{Duration, Instant};

use tandem_tests::*;

#[test]
fn scrapers_need_the_token_and_see_sessions_nodes_pool_and_scheduled_audits() {
    let server = TestServer::start_with(
        "METRICS",
        &[
            ("TANDEM_SERVER_METRICS_LISTEN", "127.0.0.1:0"),
            // An audit every 3.6 s, each reading one of two slices.
            ("TANDEM_SERVER_AUDIT__INTERVAL_HOURS", "0.001"),
            ("TANDEM_SERVER_AUDIT__SLICES", "2"),
        ],
    );
    let token_file = server.data.path().join("metrics.token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token is private");

    // Nothing without the token, nothing with a wrong one, nothing but
    // /metrics.
    let (status, body) = metrics_get(&server, "/metrics", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("metrics.token"), "{body}");
    assert!(!body.contains("tandem_"), "{body}");
    let (status, _) = metrics_get(&server, "/metrics", Some("0123456789abcdef"));
    assert_eq!(status, 401);
    let (status, _) = metrics_get(&server, "/admin", Some(token));
    assert_eq!(status, 404);

    server.register("alice", "node-password");
    let client = TestClient::new(&server, "alice", "node-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let victim = random_bytes(41, 300_000);
    std::fs::write(src.join("victim.bin"), &victim).unwrap();
    std::fs::write(src.join("other.bin"), random_bytes(42, 200_000)).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    let out = client.run(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&work.path().join("out")),
    ]);
    assert_success(&out, "restore");

    let (status, text) = metrics_get(&server, "/metrics", Some(token));
    assert_eq!(status, 200, "{text}");
    assert!(
        text.ends_with("# EOF\n") || text.ends_with("# EOF"),
        "OpenMetrics text: {text}"
    );
    assert!(
        text.contains("tandem_server_info{name=\"METRICS\""),
        "{text}"
    );
    let received = sample(&text, "tandem_backup_received_bytes_total").unwrap();
    assert!(received >= 400_000.0, "{text}");
    let sent = sample(&text, "tandem_restore_sent_bytes_total").unwrap();
    assert!(sent >= 400_000.0, "{text}");
    assert!(
        sample(&text, "tandem_sessions_opened_total").unwrap() >= 2.0,
        "{text}"
    );
    let backed_up = sample(
        &text,
        "tandem_node_last_backup_timestamp_seconds{node=\"ALICE\"}",
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 600.0..=now + 60.0).contains(&backed_up),
        "{backed_up} vs {now}"
    );
    assert!(
        text.contains("tandem_pool_info{pool=\"DEFAULT\",kind=\"local\""),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "tandem_pool_stored_bytes{pool=\"DEFAULT\",place=\"local\"}"
        )
        .unwrap()
            >= 400_000.0,
        "{text}"
    );
    assert_eq!(sample(&text, "tandem_damaged_chunks"), Some(0.0), "{text}");

    // A chunk damaged behind the server's back: the scheduled audits find
    // it (one of the two slices holds it), the metrics say so.
    server.damage_stored_bytes(&victim[100_000..100_064]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let text = loop {
        let (_, text) = metrics_get(&server, "/metrics", Some(token));
        if sample(&text, "tandem_damaged_chunks").unwrap_or(0.0) >= 1.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled audit found the damage: {}",
            server.actlog()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        sample(
            &text,
            "tandem_audit_last_end_timestamp_seconds{kind=\"pool\"}"
        )
        .unwrap()
            > now - 600.0,
        "{text}"
    );
    // Consecutive scheduled audits take consecutive slices.
    let rotated = wait_until(Duration::from_secs(60), || {
        let log = server.actlog();
        log.contains("read and verified (1/2)") && log.contains("read and verified (2/2)")
    });
    let log = server.actlog();
    assert!(rotated && log.contains("TDM0431W"), "{log}");
    assert!(
        log.contains("victim.bin"),
        "the scheduled audit names the file: {log}"
    );
    let damaged = server.admin_json(&["query", "damaged"]);
    assert_eq!(damaged.as_array().map(Vec::len), Some(1), "{damaged}");
}

#[test]
fn idle_connections_from_one_address_cannot_lock_scrapers_out_for_long() {
    let server = TestServer::start_with(
        "METRICS4",
        &[("TANDEM_SERVER_METRICS_LISTEN", "127.0.0.1:0")],
    );
    let token = std::fs::read_to_string(server.data.path().join("metrics.token")).unwrap();
    let addr = std::fs::read_to_string(server.data.path().join("metrics.addr")).unwrap();
    // Four connections that never start their handshake fill this
    // address's share; the next is closed at once.
    let idle: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(addr.trim()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let refused = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-k", "https://"])
        .arg(addr.trim())
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a fifth connection is refused");
    // They are cut after the 5 s handshake deadline; scrapes work again.
    let back = wait_until(Duration::from_secs(30), || {
        let (status, _) = metrics_get(&server, "/metrics", Some(token.trim()));
        status == 200
    });
    assert!(back, "the idle connections were never cut");
    drop(idle);
}

#[test]
fn a_wrong_metrics_address_stops_the_start_with_the_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = TestServer::try_start_with(
        "METRICS2",
        &[("TANDEM_SERVER_METRICS_LISTEN", &format!("127.0.0.1:{port}"))],
    );
    assert!(
        out.contains("metrics_listen") && out.contains(&port.to_string()),
        "{out}"
    );
    let out = TestServer::try_start_with("METRICS3", &[("TANDEM_SERVER_AUDIT__SLICES", "0")]);
    assert!(out.contains("audit.slices 0"), "{out}");
}
