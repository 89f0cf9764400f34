//! Activity-log integrity (issue 18, finding 5): what clients send is cut
//! and escaped before it reaches the log, a failover record cannot be made
//! up by any node, and records older than the retention go away.

use tandem_proto::pb;
use tandem_tests::*;

const DAY_NS: i64 = 86_400 * 1_000_000_000;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn client_supplied_text_is_cut_and_escaped_and_failover_claims_are_checked() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let mut raw = raw_backup_client(&server).await;

    // A client version as long as a logon may carry (64 KiB before
    // authentication), with a forged log line and a terminal escape.
    let huge = format!("1.0\nTDM0406I forged\x1b[31m{}", "x".repeat(60 << 10));
    raw.logon(pb::LogonRequest {
        node: "alice".into(),
        password: "alice-password".into(),
        client_version: huge,
        failover: true,
        primary_server: "MADE-UP".into(),
    })
    .await
    .unwrap();

    // A huge node name is not echoed back.
    let refused = raw
        .logon(pb::LogonRequest {
            node: "n".repeat(60 << 10),
            password: "whatever-password".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().len() < 512,
        "{} bytes",
        refused.message().len()
    );

    let out = server.admin(&["--json", "query", "actlog", "--limit", "5"]);
    assert_success(&out, "query actlog after a 60 KiB client version");
    let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let claimed = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["message"]
                .as_str()
                .unwrap()
                .contains("says it failed over")
        })
        .unwrap_or_else(|| panic!("no record of the claim: {records}"));
    // ALICE is no replica here: the claim is recorded as unconfirmed.
    assert_eq!(claimed["id"], "TDM0407W", "{claimed}");
    let text = claimed["message"].as_str().unwrap();
    assert!(text.len() < 1024, "{} bytes kept", text.len());
    assert!(
        !text.contains('\n') && !text.contains('\x1b'),
        "raw control characters: {text:?}"
    );
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["id"] != "TDM0406I"),
        "{records}"
    );
    let printed = String::from_utf8_lossy(&server.admin(&["query", "actlog"]).stdout).into_owned();
    assert!(
        !printed.contains('\x1b') && !printed.contains("\nTDM0406I"),
        "{printed:?}"
    );
}

#[test]
fn records_older_than_the_retention_are_removed() {
    let mut server = TestServer::start("PRIMARY");
    server.stop();
    let catalog = rusqlite::Connection::open(server.data.path().join("catalog.db")).unwrap();
    for (days, text) in [(40, "forty days old"), (10, "ten days old")] {
        catalog
            .execute(
                "INSERT INTO actlog (time_ns, msg_id, message) VALUES (?1, 'TDM0001I', ?2)",
                rusqlite::params![now_ns() - days * DAY_NS, text],
            )
            .unwrap();
    }
    drop(catalog);
    // The default retention, 30 days, applies at start.
    server.restart();
    assert!(
        wait_until(std::time::Duration::from_secs(10), || !server
            .actlog()
            .contains("forty days old")),
        "{}",
        server.actlog()
    );
    assert!(server.actlog().contains("ten days old"));

    let out = server.admin(&["set", "actlogretention", "5"]);
    assert_success(&out, "set actlogretention");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 older records removed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!server.actlog().contains("ten days old"));
    let status: serde_json::Value =
        serde_json::from_slice(&server.admin(&["--json", "query", "status"]).stdout).unwrap();
    assert_eq!(status["actlog_retention_days"], 5);

    let refused = server.admin(&["set", "actlogretention", "0"]);
    assert_ne!(code(&refused), 0);
    assert!(
        stderr(&refused).contains("give 1 to 9999 days"),
        "{}",
        stderr(&refused)
    );
}

/// Refusals of callers that proved nothing are recorded once a minute per
/// address, the rest counted; a caller that stops within the minute still
/// has every refusal counted, at the latest when the server stops.
#[test]
fn refusals_held_back_are_counted_when_the_server_stops() {
    let mut server = TestServer::start("PRIMARY");
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "0000\n").unwrap();
    for _ in 0..4 {
        let out = server.admin_with_token(&wrong, &["query", "node"]);
        assert_eq!(code(&out), 12, "{}", stderr(&out));
    }
    let before = server.actlog();
    assert_eq!(before.matches("TDM0501W").count(), 1, "{before}");
    assert!(!before.contains("held back"), "{before}");

    assert!(server.stop().success());
    server.restart();
    let after = server.actlog();
    assert_eq!(after.matches("TDM0501W").count(), 2, "{after}");
    assert!(
        after.contains("3 more refusals like the one recorded from this address at"),
        "{after}"
    );
}
