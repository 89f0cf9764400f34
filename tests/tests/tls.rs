//! TLS with pinned identities (SPEC 2.5): each way of hijacking a connection,
//! tried with a real impostor process, is refused before any secret leaves.
//! An impostor is a real `tandem-server` with a certificate of its own: had a
//! password reached it, its activity log would show the logon attempt.

use std::time::Duration;

use tandem_tests::*;

/// Node ALICE backed up on PRIMARY and replicated to SECONDARY; the next
/// logon has pushed the failover block, fingerprint included.
fn replicated_with_block() -> (TestServer, TestServer, TestClient, tempfile::TempDir) {
    let (primary, secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("notes.txt"), "quarterly figures\n").unwrap();
    client.json(&["incremental", &path_str(work.path())]);
    let run = replicate(&primary, "alice");
    assert_eq!(run["state"], "completed", "{run}");
    client.json(&["query", "session"]);
    let options = std::fs::read_to_string(&client.options).unwrap();
    assert!(
        options.contains(&format!("fingerprint = \"{}\"", secondary.fingerprint())),
        "the pushed block carries the secondary's fingerprint: {options}"
    );
    (primary, secondary, client, work)
}

fn mentions_alice(actlog: &str) -> bool {
    actlog.to_ascii_uppercase().contains("ALICE")
}

/// Whether any logon (good, bad, unknown node, failover) reached the server.
fn saw_logon(actlog: &str) -> bool {
    ["TDM0400I", "TDM0402W", "TDM0404W", "TDM0406I"]
        .iter()
        .any(|id| actlog.contains(id))
}

#[test]
fn a_primary_with_another_certificate_gets_no_password_and_causes_no_failover() {
    let (mut primary, _secondary, client, _work) = replicated_with_block();
    let pinned = primary.fingerprint();
    let options_before = std::fs::read_to_string(&client.options).unwrap();
    primary.kill();
    let impostor = TestServer::start_on("PRIMARY", primary.addr);
    assert_ne!(impostor.fingerprint(), pinned);

    let out = client.run(&["query", "session"]);
    assert_eq!(code(&out), 12);
    let err = stderr(&out);
    assert!(err.contains("TDM1009E"), "{err}");
    assert!(
        err.contains(&pinned) && err.contains(&impostor.fingerprint()),
        "both fingerprints are named: {err}"
    );
    assert!(err.contains("No failover"), "{err}");
    let log = client.error_log();
    assert!(log.contains("TDM1009E"), "{log}");
    assert!(
        !log.contains("TDM2106I") && !log.contains("TDM2107I"),
        "a wrong certificate is not an outage: {log}"
    );
    assert!(
        !mentions_alice(&impostor.actlog()),
        "the impostor saw a logon: {}",
        impostor.actlog()
    );
    assert_eq!(
        std::fs::read_to_string(&client.options).unwrap(),
        options_before,
        "nothing was planted in the options file"
    );
}

#[test]
fn a_secondary_with_another_certificate_gets_no_password() {
    let (mut primary, mut secondary, client, _work) = replicated_with_block();
    primary.kill();
    secondary.kill();
    let impostor = TestServer::start_on("SECONDARY", secondary.addr);
    impostor.register("alice", "alice-password");

    let out = client.run(&["query", "session"]);
    assert_eq!(code(&out), 12);
    let err = stderr(&out);
    assert!(err.contains("TDM2113E"), "{err}");
    assert!(
        err.contains(&secondary.fingerprint()) && err.contains(&impostor.fingerprint()),
        "{err}"
    );
    let log = client.error_log();
    for id in ["TDM2106I", "TDM2107I", "TDM2113E"] {
        assert!(log.contains(id), "{id} in the error log: {log}");
    }
    let actlog = impostor.actlog();
    assert!(
        !saw_logon(&actlog),
        "no logon reached the impostor: {actlog}"
    );
}

#[test]
fn a_partner_is_proven_by_its_certificate_before_any_secret_is_sent() {
    let (primary, secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("f"), "data").unwrap();
    client.json(&["incremental", &path_str(work.path())]);
    let pw = primary.data.path().join("SECONDARY.serverpw");
    let define = |on: &TestServer, name: &str, at: &TestServer, fp: &str, pw: &std::path::Path| {
        on.define_server(name, &at.url(), fp, pw)
    };

    // The primary pins a certificate the secondary does not have.
    let wrong = primary.fingerprint();
    assert_success(
        &define(&primary, "SECONDARY", &secondary, &wrong, &pw),
        "pin a wrong fingerprint",
    );
    let out = primary.admin(&["replicate", "node", "alice", "--wait"]);
    assert_eq!(code(&out), 12);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        text.contains(&secondary.fingerprint()) && text.contains(&wrong),
        "{text}"
    );
    let target_log = secondary.actlog();
    assert!(
        !target_log.contains("TDM0602W") && !mentions_alice(&target_log),
        "nothing reached the secondary: {target_log}"
    );

    // The secondary pins a certificate the primary does not present.
    assert_success(
        &define(
            &primary,
            "SECONDARY",
            &secondary,
            &secondary.fingerprint(),
            &pw,
        ),
        "pin the right fingerprint",
    );
    let spw = secondary.data.path().join("PRIMARY.serverpw");
    assert_success(
        &define(
            &secondary,
            "PRIMARY",
            &primary,
            &secondary.fingerprint(),
            &spw,
        ),
        "pin a wrong fingerprint on the target",
    );
    let out = primary.admin(&["replicate", "node", "alice", "--wait"]);
    assert_eq!(code(&out), 12);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(text.contains(&primary.fingerprint()), "{text}");
    assert!(secondary.actlog().contains("TDM0602W"));
    assert!(
        !mentions_alice(&secondary.actlog()),
        "no node was prepared: {}",
        secondary.actlog()
    );
}

#[test]
fn a_replica_belongs_to_the_server_that_made_it() {
    let (primary, secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("f"), "alice's data").unwrap();
    client.json(&["incremental", &path_str(work.path())]);
    assert_eq!(replicate(&primary, "alice")["state"], "completed");

    // A third server, a defined partner of the secondary too, replicates
    // a node of the same name.
    let third = TestServer::start("THIRD");
    pair(&third, &secondary, "third-secret-1");
    third.register("alice", "third-password");
    assert_success(
        &third.admin(&["update", "node", "alice", "--replstate", "enabled"]),
        "enable",
    );
    let intruder = TestClient::new(&third, "alice", "third-password");
    intruder.json(&["incremental", &path_str(work.path())]);
    let out = third.admin(&["replicate", "node", "alice", "--wait"]);
    assert_eq!(code(&out), 12);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(text.contains("replica of server PRIMARY"), "{text}");
    // Alice's replica still answers to her password, not the intruder's.
    let on_secondary = TestClient::new(&secondary, "alice", "alice-password");
    let session = on_secondary.json(&["query", "session"]);
    assert_eq!(session["node"], "ALICE", "{session}");
    let stolen = TestClient::new(&secondary, "alice", "third-password");
    assert_eq!(code(&stolen.run(&["query", "session"])), 12);

    // A node of the secondary's own is never turned into a replica.
    secondary.register("bob", "bob-password");
    primary.register("bob", "bob-password");
    assert_success(
        &primary.admin(&["update", "node", "bob", "--replstate", "enabled"]),
        "enable",
    );
    let bob = TestClient::new(&primary, "bob", "bob-password");
    bob.json(&["incremental", &path_str(work.path())]);
    let out = primary.admin(&["replicate", "node", "bob", "--wait"]);
    assert_eq!(code(&out), 12);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(text.contains("node of its own"), "{text}");
}

#[test]
fn no_secret_crosses_the_wire_in_clear() {
    let (primary, secondary, _client) = replicated_alice();
    let to_primary = CutProxy::recording(primary.addr);
    let to_secondary = CutProxy::recording(secondary.addr);
    let via_proxy = TestClient::at(
        "PRIMARY",
        &format!("https://{}", to_primary.addr),
        &primary.fingerprint(),
        "alice",
        "alice-password",
    );
    let marker = "PLAINTEXT-MARKER-7f3a9c";
    let work = tempfile::tempdir().unwrap();
    // The marker sits among incompressible bytes, so it would cross the
    // wire verbatim (as a zstd literal) were the connection not encrypted.
    let mut content = random_bytes(7, 200_000);
    content.extend_from_slice(marker.as_bytes());
    content.extend_from_slice(&random_bytes(8, 200_000));
    std::fs::write(work.path().join("secret.txt"), content).unwrap();
    via_proxy.json(&["incremental", &path_str(work.path())]);
    let out = via_proxy.dir.path().join("restored");
    via_proxy.json(&[
        "restore",
        &format!("{}/*", path_str(work.path())),
        &path_str(&out),
    ]);
    // The console and the replication run go through the proxies too.
    let admin = std::process::Command::new(bin("tandem-admin"))
        .args(["--server", &format!("https://{}", to_primary.addr)])
        .args(["--fingerprint", &primary.fingerprint(), "--token-file"])
        .arg(primary.data.path().join("admin.token"))
        .args(["query", "status"])
        .output()
        .unwrap();
    assert_success(&admin, "query status through the proxy");
    let pw = primary.data.path().join("SECONDARY.serverpw");
    assert_success(
        &primary.define_server(
            "SECONDARY",
            &format!("https://{}", to_secondary.addr),
            &secondary.fingerprint(),
            &pw,
        ),
        "route replication through the proxy",
    );
    assert_eq!(replicate(&primary, "alice")["state"], "completed");

    let token = std::fs::read_to_string(primary.data.path().join("admin.token")).unwrap();
    let wire = [to_primary.captured(), to_secondary.captured()];
    assert!(
        wire[0].len() > 400_000 && wire[1].len() > 400_000,
        "the capture saw the traffic: {} and {} bytes",
        wire[0].len(),
        wire[1].len()
    );
    for (what, secret) in [
        ("the file's content", marker),
        ("the node password", "alice-password"),
        ("the server password", "shared-secret-1"),
        ("the admin token", token.trim()),
        ("a password hash", "$argon2id$"),
        ("a node name", "ALICE"),
    ] {
        for bytes in &wire {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{what} crossed the wire in clear"
            );
        }
    }
    // Every connection starts with a TLS handshake record.
    assert_eq!(wire[0][0], 0x16, "TLS handshake record");
}

#[test]
fn plaintext_stays_on_loopback_and_needs_the_server_to_ask_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = dir.path().join("tandem.toml");
    std::fs::write(
        &options,
        "node_name = \"x\"\nserver_address = \"http://10.0.0.1:1500\"\npassword = \"password1\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin("tandem"))
        .args(["--options", &path_str(&options), "query", "session"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 12);
    assert!(
        stderr(&out).contains("only to a loopback"),
        "{}",
        stderr(&out)
    );

    std::fs::write(
        &options,
        "node_name = \"x\"\nserver_address = \"https://10.0.0.1:1500\"\npassword = \"password1\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin("tandem"))
        .args(["--options", &path_str(&options), "query", "session"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 12);
    assert!(
        stderr(&out).contains("TDM1001E") && stderr(&out).contains("server_fingerprint"),
        "no trust on first use: {}",
        stderr(&out)
    );

    let out = std::process::Command::new(bin("tandem-admin"))
        .args(["--server", "http://10.0.0.1:1500", "query", "status"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("loopback"), "{}", stderr(&out));

    let out = std::process::Command::new(bin("tandem-admin"))
        .args([
            "--server",
            "http://127.0.0.1:1500",
            "--fingerprint",
            &"AB".repeat(32),
        ])
        .args(["query", "status"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 12);
    assert!(
        stderr(&out).contains("cannot check"),
        "a pin is never dropped: {}",
        stderr(&out)
    );

    let out = std::process::Command::new(bin("tandem-server"))
        .args([
            "--listen",
            "0.0.0.0:0",
            "--insecure-plaintext",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("loopback"), "{}", stderr(&out));

    let server = TestServer::start("PRIMARY");
    let pw = server.data.path().join("x.pw");
    std::fs::write(&pw, "shared-secret-1\n").unwrap();
    let out = server.admin(&[
        "define",
        "server",
        "OTHER",
        "--address",
        "http://10.0.0.1:1500",
        "--server-password-file",
        &path_str(&pw),
    ]);
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("loopback"), "{}", stderr(&out));
    let out = server.admin(&[
        "define",
        "server",
        "OTHER",
        "--address",
        "https://10.0.0.1:1500",
        "--server-password-file",
        &path_str(&pw),
    ]);
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("--fingerprint"), "{}", stderr(&out));

    // A client that speaks plaintext to the TLS server gets nowhere, and
    // that is an unreachable server, not a refusal by it.
    server.register("alice", "alice-password");
    let plain = TestClient::at(
        "PRIMARY",
        &format!("http://{}", server.addr),
        "",
        "alice",
        "alice-password",
    );
    plain.add_options("logon_retries = 1\n");
    let out = plain.run(&["query", "session"]);
    assert_eq!(code(&out), 12);
    assert!(!saw_logon(&server.actlog()), "{}", server.actlog());
}

#[test]
fn a_development_server_serves_plaintext_on_loopback_when_asked() {
    let data = private_tempdir();
    let mut child = std::process::Command::new(bin("tandem-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-plaintext",
            "--data-dir",
        ])
        .arg(data.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr_file = data.path().join("listen.addr");
    let up = wait_until(Duration::from_secs(60), || addr_file.exists());
    let addr = std::fs::read_to_string(&addr_file).unwrap_or_default();
    let url = format!("http://{}", addr.trim());
    let admin = |args: &[&str]| {
        std::process::Command::new(bin("tandem-admin"))
            .args(["--server", &url, "--token-file"])
            .arg(data.path().join("admin.token"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let status = admin(&["--json", "query", "status"]);
    let pw = data.path().join("pw");
    std::fs::write(&pw, "dev-password\n").unwrap();
    let register = admin(&["register", "node", "dev", "--password-file", &path_str(&pw)]);
    let client = TestClient::at("TANDEM", &url, "", "dev", "dev-password");
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("f"), "x").unwrap();
    let backup = client.run(&["--json", "incremental", &path_str(work.path())]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "the plaintext server did not start");
    assert_success(&status, "query status");
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["tls"], false, "{v}");
    assert_success(&register, "register");
    assert_success(&backup, "backup over plaintext loopback");
}

/// Runs openssl with `args` in `dir`; panics with its stderr on failure.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
}

/// A CA and a server certificate for `localhost` it issued, made with openssl
/// as an operator would: `ca.pem`, `server.pem`, `server.key` in `dir`.
fn organisation_ca(dir: &std::path::Path, ca: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj",
    ]);
    let subject = format!("/CN={ca}");
    args.push(&subject);
    openssl(dir, &args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &args);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "30",
            "-extfile",
            "ext",
        ],
    );
}

#[test]
fn an_organisation_ca_is_trusted_through_ca_file() {
    let pki = tempfile::tempdir().unwrap();
    organisation_ca(pki.path(), "Example Backup CA");
    let other = tempfile::tempdir().unwrap();
    organisation_ca(other.path(), "Someone Else's CA");
    let data = private_tempdir();
    let mut child = std::process::Command::new(bin("tandem-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("TANDEM_SERVER_TLS_CERT", pki.path().join("server.pem"))
        .env("TANDEM_SERVER_TLS_KEY", pki.path().join("server.key"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr_file = data.path().join("listen.addr");
    let up = wait_until(Duration::from_secs(60), || addr_file.exists());
    let port = std::fs::read_to_string(&addr_file)
        .unwrap_or_default()
        .trim()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let url = format!("https://localhost:{port}");
    let ca = pki.path().join("ca.pem");
    let admin = std::process::Command::new(bin("tandem-admin"))
        .args([
            "--server",
            &url,
            "--ca-file",
            &path_str(&ca),
            "--token-file",
        ])
        .arg(data.path().join("admin.token"))
        .args(["register", "node", "carol"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut admin| {
            use std::io::Write;
            admin.stdin.take().unwrap().write_all(b"carol-password\n")?;
            admin.wait_with_output()
        })
        .unwrap();
    let openssl_says = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pki.path().join("server.pem"))
        .output()
        .unwrap();
    let client = |ca_file: &std::path::Path, url: &str| {
        let c = TestClient::at("TANDEM", url, "", "carol", "carol-password");
        c.add_options(&format!("ca_file = \"{}\"\n", path_str(ca_file)));
        c.run(&["query", "session"])
    };
    let trusted = client(&ca, &url);
    let foreign = client(&other.path().join("ca.pem"), &url);
    let wrong_name = client(&ca, &format!("https://127.0.0.1:{port}"));
    let _ = child.kill();
    let _ = child.wait();

    assert!(
        up,
        "the server did not start with the operator's certificate"
    );
    assert_success(&admin, "register through --ca-file");
    let fingerprint = std::fs::read_to_string(data.path().join("fingerprint")).unwrap();
    let printed = String::from_utf8_lossy(&openssl_says.stdout);
    assert!(
        printed.trim().ends_with(fingerprint.trim()),
        "DATA_DIR/fingerprint is what openssl prints: {printed} / {fingerprint}"
    );
    assert_success(&trusted, "logon through ca_file");
    for (what, out) in [
        ("another CA", foreign),
        ("a name not in the certificate", wrong_name),
    ] {
        assert_eq!(code(&out), 12, "{what}");
        assert!(
            stderr(&out).contains("TDM1009E"),
            "{what}: {}",
            stderr(&out)
        );
    }
}

mod wire {
    //! Calls made with the published protocol, as a hostile partner would.

    use tandem_proto::pb::{
        self, backup_client::BackupClient, replication_client::ReplicationClient,
    };
    use tandem_tests::*;
    use tonic::metadata::MetadataValue;

    fn with<T>(
        mut request: tonic::Request<T>,
        headers: &[(&'static str, &str)],
    ) -> tonic::Request<T> {
        for (key, value) in headers {
            request
                .metadata_mut()
                .insert(*key, MetadataValue::try_from(*value).unwrap());
        }
        request
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_session_token_works_only_on_its_own_service_and_partners_show_their_certificate() {
        let server = TestServer::start("SECONDARY");
        server.register("alice", "alice-password");
        // A partner FAKE, defined with the certificate this test holds.
        let keys = tempfile::tempdir().unwrap();
        let identity =
            tandem_tls::ServerIdentity::load_or_create(keys.path(), &["fake".into()]).unwrap();
        let pw = server.data.path().join("fake.pw");
        std::fs::write(&pw, "fake-secret-1\n").unwrap();
        assert_success(
            &server.define_server(
                "FAKE",
                "https://127.0.0.1:9",
                &identity.fingerprint().to_string(),
                &pw,
            ),
            "define FAKE",
        );
        let pin = tandem_tls::Trust::Pinned(server.fingerprint().parse().unwrap());
        let endpoint = tonic::transport::Endpoint::from_shared(server.url()).unwrap();
        let creds = [
            ("authorization", "Bearer fake-secret-1"),
            ("x-tandem-server", "FAKE"),
        ];
        let hello = pb::HelloRequest {
            source_name: "FAKE".into(),
            source_guid: String::new(),
            nonce: vec![0; 32],
            protocol_version: tandem_proto::REPLICATION_PROTOCOL,
        };

        // Without a client certificate the password is not enough.
        let anonymous = tandem_tls::ClientTls::new(&pin, None).unwrap();
        let channel = tandem_tls::connect(endpoint.clone(), Some(&anonymous))
            .await
            .unwrap();
        let refused = ReplicationClient::new(channel)
            .hello(with(tonic::Request::new(hello.clone()), &creds))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(
            refused.message().contains("no client certificate"),
            "{refused:?}"
        );

        // With it, a replication session opens, and is good for nothing else.
        let mutual = tandem_tls::ClientTls::new(&pin, Some(&identity)).unwrap();
        let channel = tandem_tls::connect(endpoint, Some(&mutual)).await.unwrap();
        let mut replication = ReplicationClient::new(channel.clone());
        let mut backup = BackupClient::new(channel);
        // A partner on another release (an older one sends no version) is
        // refused before any data moves, with both versions named.
        let older = pb::HelloRequest {
            protocol_version: 0,
            ..hello.clone()
        };
        let refused = replication
            .hello(with(tonic::Request::new(older), &creds))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(
            refused
                .message()
                .contains("speaks replication protocol 0 and this server (SECONDARY) speaks 1"),
            "{refused:?}"
        );
        assert!(server.actlog().contains("replication protocol 0"));
        let session = replication
            .hello(with(tonic::Request::new(hello), &creds))
            .await
            .unwrap()
            .into_inner()
            .session_token;
        let as_node = backup
            .query_filespaces(with(
                tonic::Request::new(pb::QueryFilespacesRequest::default()),
                &[(tandem_proto::SESSION_HEADER, &session)],
            ))
            .await
            .unwrap_err();
        assert_eq!(as_node.code(), tonic::Code::Unauthenticated);
        assert!(
            as_node.message().contains("replication session"),
            "{as_node:?}"
        );

        // A node's token is refused on the Replication service.
        let logon = backup
            .logon(pb::LogonRequest {
                node: "alice".into(),
                password: "alice-password".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut headers = creds.to_vec();
        headers.push((tandem_proto::SESSION_HEADER, &logon.session_token));
        let as_partner = replication
            .prepare_node(with(
                tonic::Request::new(pb::PrepareNodeRequest {
                    node: "mallory".into(),
                    password_hash: "x".into(),
                    locked: false,
                }),
                &headers,
            ))
            .await
            .unwrap_err();
        assert_eq!(as_partner.code(), tonic::Code::Unauthenticated);
        assert!(
            as_partner.message().contains("node session"),
            "{as_partner:?}"
        );

        // Its own session may not turn the local node ALICE into a replica.
        let headers = [
            creds[0],
            creds[1],
            (tandem_proto::SESSION_HEADER, session.as_str()),
        ];
        let takeover = replication
            .prepare_node(with(
                tonic::Request::new(pb::PrepareNodeRequest {
                    node: "alice".into(),
                    password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into(),
                    locked: false,
                }),
                &headers,
            ))
            .await
            .unwrap_err();
        assert_eq!(takeover.code(), tonic::Code::FailedPrecondition);
        assert!(
            takeover.message().contains("node of its own"),
            "{takeover:?}"
        );
        let on_server = TestClient::new(&server, "alice", "alice-password");
        on_server.json(&["query", "session"]);

        // Its own replica takes uploads, one node per stream: a stream that
        // switches to another node (here the local ALICE) is refused.
        replication
            .prepare_node(with(
                tonic::Request::new(pb::PrepareNodeRequest {
                    node: "fakenode".into(),
                    password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into(),
                    locked: false,
                }),
                &headers,
            ))
            .await
            .expect("a replica of its own");
        let messages = vec![
            pb::ReplicaChunksRequest {
                node: "fakenode".into(),
                chunks: vec![wire_chunk(b"for the replica")],
            },
            pb::ReplicaChunksRequest {
                node: "ALICE".into(),
                chunks: vec![wire_chunk(b"for alice")],
            },
        ];
        let switched = replication
            .upload_chunks(with(
                tonic::Request::new(tonic::codegen::tokio_stream::iter(messages)),
                &headers,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            switched.code(),
            tonic::Code::InvalidArgument,
            "{switched:?}"
        );
        assert!(
            switched.message().contains("send one stream per node"),
            "{switched:?}"
        );
    }
}

/// A development server with `--insecure-plaintext` on a free loopback port.
struct PlaintextServer {
    child: std::process::Child,
    data: tempfile::TempDir,
    url: String,
    name: &'static str,
}

impl PlaintextServer {
    fn start(name: &'static str) -> Self {
        let data = private_tempdir();
        let child = std::process::Command::new(bin("tandem-server"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--insecure-plaintext",
                "--name",
                name,
            ])
            .arg("--data-dir")
            .arg(data.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr_file = data.path().join("listen.addr");
        assert!(wait_until(Duration::from_secs(60), || addr_file.exists()));
        let url = format!(
            "http://{}",
            std::fs::read_to_string(&addr_file).unwrap().trim()
        );
        PlaintextServer {
            child,
            data,
            url,
            name,
        }
    }

    fn admin(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(bin("tandem-admin"))
            .args(["--server", &self.url, "--token-file"])
            .arg(self.data.path().join("admin.token"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for PlaintextServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_unauthenticated_primary_cannot_plant_a_failover_block() {
    let primary = PlaintextServer::start("PRIMARY");
    let secondary = PlaintextServer::start("SECONDARY");
    let pw = primary.data.path().join("spw");
    std::fs::write(&pw, "shared-secret-1\n").unwrap();
    for (here, there) in [(&primary, &secondary), (&secondary, &primary)] {
        assert_success(
            &here.admin(&[
                "define",
                "server",
                there.name,
                "--address",
                &there.url,
                "--server-password-file",
                &path_str(&pw),
            ]),
            "define a plaintext partner",
        );
    }
    assert_success(&primary.admin(&["set", "replserver", "SECONDARY"]), "set");
    let npw = primary.data.path().join("npw");
    std::fs::write(&npw, "alice-password\n").unwrap();
    assert_success(
        &primary.admin(&[
            "register",
            "node",
            "alice",
            "--password-file",
            &path_str(&npw),
        ]),
        "register",
    );
    assert_success(
        &primary.admin(&["update", "node", "alice", "--replstate", "enabled"]),
        "enable",
    );
    let client = TestClient::at("PRIMARY", &primary.url, "", "alice", "alice-password");
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("f"), "x").unwrap();
    client.json(&["incremental", &path_str(work.path())]);
    assert_success(
        &primary.admin(&["replicate", "node", "alice", "--wait"]),
        "replicate in plaintext",
    );
    let out = client.run(&["query", "session"]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(stderr(&out).contains("TDM1043W"), "{}", stderr(&out));
    let options = std::fs::read_to_string(&client.options).unwrap();
    assert!(
        !options.contains("my_replication_server"),
        "nothing was planted: {options}"
    );
}
