//! Central scheduling (issue 24 part 1): schedules and associations defined
//! on the server, a real `tandem schedule` process running them, and `query
//! event` telling each expected run's outcome: completed, failed (a failing
//! pre-command, with its exit code), missed (no client in the window),
//! future. The scheduler survives a server restart, and runs during a
//! primary outage are reported once the primary is back.

use std::process::{Child, Stdio};
use std::time::Duration;

use tandem_tests::*;

/// A running `tandem schedule`, killed when dropped.
struct Scheduler {
    child: Child,
    log: std::path::PathBuf,
}

impl Scheduler {
    fn start(client: &TestClient) -> Self {
        let log = client.dir.path().join("scheduler.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = client
            .command(&["schedule"])
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        Scheduler { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn at(ns: i64) -> String {
    tandem_client::output::timefmt::rfc3339(ns)
}

/// `query event --json` rows from two minutes ago to ten seconds ahead (the
/// command exits 8 when a run failed or was missed; the rows are printed
/// all the same).
fn events(server: &TestServer) -> Vec<serde_json::Value> {
    let begin = at(now_ns() - 120_000_000_000);
    let end = at(now_ns() + 10_000_000_000);
    let out = server.admin(&["--json", "query", "event", "--begin", &begin, "--end", &end]);
    let code = code(&out);
    assert!(code == 0 || code == 8, "query event: {}", stderr(&out));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn count(events: &[serde_json::Value], schedule: &str, state: &str) -> usize {
    events
        .iter()
        .filter(|e| e["schedule"] == schedule && e["state"] == state)
        .count()
}

fn define(server: &TestServer, args: &[&str]) {
    let mut all = vec!["define", "schedule"];
    all.extend_from_slice(args);
    assert_success(&server.admin(&all), &all.join(" "));
}

fn associate(server: &TestServer, schedule: &str, node: &str) {
    assert_success(
        &server.admin(&["define", "association", schedule, node]),
        "define association",
    );
}

#[test]
fn scheduled_runs_happen_on_time_and_every_outcome_is_an_event() {
    let mut server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    // This host lets the server's commands run; bob's (below) does not.
    client.add_options("schedule_commands = true\n");
    server.register("bob", "bob-password");
    let bob = TestClient::new(&server, "bob", "bob-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    let marker = work.path().join("command-ran");
    define(
        &server,
        &[
            "every3",
            "--objects",
            &path_str(&src),
            "--period",
            "3s",
            "--duration",
            "2s",
        ],
    );
    define(
        &server,
        &[
            "badpre",
            "--objects",
            &path_str(&src),
            "--period",
            "3s",
            "--duration",
            "2s",
            "--pre-command",
            "echo not today >&2; exit 3",
        ],
    );
    define(
        &server,
        &[
            "cmd",
            "--action",
            "command",
            "--objects",
            &format!("touch '{}'", path_str(&marker)),
            "--period",
            "once",
            "--duration",
            "30s",
        ],
    );
    // A window that closed a minute ago, before any client ran.
    let past = at(now_ns() - 60_000_000_000);
    define(
        &server,
        &[
            "gone",
            "--objects",
            "/nowhere",
            "--start",
            &past,
            "--period",
            "once",
            "--duration",
            "10s",
        ],
    );
    define(
        &server,
        &[
            "badpost",
            "--objects",
            &path_str(&src),
            "--period",
            "3s",
            "--duration",
            "2s",
            "--post-command",
            "echo cleanup broke >&2; exit 5",
        ],
    );
    // A database agent's backup on a schedule: a real SQLite database.
    let db = work.path().join("app.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);")
        .unwrap();
    define(
        &server,
        &[
            "dbs",
            "--action",
            "db-backup",
            "--objects",
            &format!("sqlite:{}", path_str(&db)),
            "--period",
            "3s",
            "--duration",
            "2s",
        ],
    );
    for schedule in ["every3", "badpre", "cmd", "gone", "badpost", "dbs"] {
        associate(&server, schedule, "alice");
    }
    associate(&server, "badpre", "bob");
    // The client sees its schedule before the scheduler runs.
    let next = client.json(&["query", "schedule"]);
    let names: Vec<&str> = next
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["schedule"].as_str())
        .collect();
    assert!(
        names.contains(&"EVERY3") && names.contains(&"CMD"),
        "{next}"
    );
    assert!(
        !names.contains(&"GONE"),
        "a closed one-time window is not next: {next}"
    );

    let scheduler = Scheduler::start(&client);
    let _bobs = Scheduler::start(&bob);
    let ran = wait_until(Duration::from_secs(60), || {
        let e = events(&server);
        count(&e, "EVERY3", "completed") >= 1
            && count(&e, "BADPRE", "failed") >= 2
            && count(&e, "CMD", "completed") == 1
            && count(&e, "BADPOST", "failed") >= 1
            && count(&e, "DBS", "completed") >= 1
    });
    assert!(ran, "{:?}\n{}", events(&server), scheduler.output());
    let e = events(&server);
    let bad = e
        .iter()
        .find(|e| e["schedule"] == "BADPRE" && e["node"] == "ALICE" && e["state"] == "failed")
        .unwrap();
    assert_eq!(bad["exit_code"], 3, "{bad}");
    assert!(
        bad["message"].as_str().unwrap().contains("not today"),
        "{bad}"
    );
    // Bob's host does not run the server's commands: not even the
    // pre-command ran, and the event says why.
    let refused = e
        .iter()
        .find(|e| e["schedule"] == "BADPRE" && e["node"] == "BOB" && e["state"] == "failed")
        .unwrap();
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("schedule_commands"),
        "{refused}"
    );
    assert_eq!(count(&e, "GONE", "missed"), 1, "{e:?}");
    // The action ran (exit 0); the failing post-command failed the run.
    let post = e
        .iter()
        .find(|e| e["schedule"] == "BADPOST" && e["state"] == "failed")
        .unwrap();
    assert_eq!(post["exit_code"], 0, "{post}");
    assert!(
        post["message"]
            .as_str()
            .unwrap()
            .contains("post-command exited 5: cleanup broke"),
        "{post}"
    );
    // Each run started inside its window (same format and offset: the
    // texts compare as the times do).
    for run in e.iter().filter(|e| e["state"] == "completed") {
        let started = run["started"].as_str().unwrap();
        assert!(
            run["window_start"].as_str().unwrap() <= started
                && started <= run["window_end"].as_str().unwrap(),
            "{run}"
        );
    }
    assert!(count(&e, "EVERY3", "future") >= 1, "{e:?}");
    assert!(marker.exists(), "the command schedule ran");
    // The backup happened: the tree is stored.
    let stored = client.json(&[
        "query",
        "backup",
        &format!("{}/*", path_str(&src)),
        "--subdir",
    ]);
    assert!(stored.as_array().unwrap().len() > 10, "{stored}");
    let copies = client.json(&["query", "db"]);
    assert_eq!(copies[0]["kind"], "sqlite", "{copies}");
    // A failed or missed run makes `query event` exit 8 (TDM0518W).
    let out = server.admin(&["query", "event", "alice"]);
    assert_eq!(code(&out), 8);
    assert!(stderr(&out).contains("TDM0518W"), "{}", stderr(&out));
    assert!(server.actlog().contains("TDM0432I"));
    assert!(server.actlog().contains("TDM0433W"));

    // The server restarts; the scheduler goes on by itself.
    let before = count(&events(&server), "EVERY3", "completed");
    server.restart();
    let went_on = wait_until(Duration::from_secs(60), || {
        count(&events(&server), "EVERY3", "completed") >= before + 2
    });
    assert!(went_on, "{:?}\n{}", events(&server), scheduler.output());

    // Schedules are listed and deleted with their associations.
    let listed = server.admin_json(&["query", "schedule", "every3"]);
    assert_eq!(listed[0]["nodes"][0], "ALICE", "{listed}");
    assert_success(&server.admin(&["delete", "schedule", "every3"]), "delete");
    let gone = server.admin(&["query", "schedule", "every3"]);
    assert_ne!(code(&gone), 0);
}

#[test]
fn runs_during_a_primary_outage_are_reported_when_it_returns() {
    let (mut primary, _secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    client.json(&["incremental", &path_str(&src)]);
    let run = replicate(&primary, "ALICE");
    assert_eq!(run["state"], "completed", "{run}");
    // This logon saves the pushed replication server: failover is possible.
    client.json(&["query", "filespace"]);
    define(
        &primary,
        &[
            "every3",
            "--objects",
            &path_str(&src),
            "--period",
            "3s",
            "--duration",
            "2s",
        ],
    );
    associate(&primary, "every3", "alice");
    let scheduler = Scheduler::start(&client);
    let first = wait_until(Duration::from_secs(60), || {
        count(&events(&primary), "EVERY3", "completed") >= 1
    });
    assert!(first, "{}", scheduler.output());

    // The primary goes down: the scheduler keeps the schedule it had; the
    // backup fails over, is refused there (read-only), and the outcome is
    // kept until the primary answers again.
    primary.kill();
    let pending = client.dir.path().join("state").join("schedule-events.json");
    let kept = wait_until(Duration::from_secs(60), || {
        std::fs::read_to_string(&pending).is_ok_and(|t| t.contains("failed"))
    });
    assert!(kept, "{}", scheduler.output());
    primary.restart();
    // The scheduler asks again once a minute: up to a minute passes before
    // it sees the primary back, and a loaded machine adds to that.
    let reported = wait_until(Duration::from_secs(180), || {
        events(&primary).iter().any(|e| {
            e["schedule"] == "EVERY3"
                && e["state"] == "failed"
                && e["message"].as_str().unwrap_or("").contains("TDM2110E")
        })
    });
    assert!(reported, "{:?}\n{}", events(&primary), scheduler.output());
    assert!(
        scheduler.output().contains("TDM1055I"),
        "{}",
        scheduler.output()
    );
    assert!(
        client.error_log().contains("TDM2108I"),
        "the run failed over"
    );
}

#[test]
fn bad_schedules_and_associations_are_refused_clearly() {
    let server = TestServer::start("PRIMARY");
    server.register("alice", "alice-password");
    for (args, expect) in [
        (vec!["s1", "--objects", "relative/path"], "absolute"),
        (
            vec![
                "s1",
                "--objects",
                "/data",
                "--period",
                "1h",
                "--duration",
                "2h",
            ],
            "overlap",
        ),
        (vec!["s1", "--objects", "/data", "--period", "5y"], "unit"),
        (
            vec!["s1", "--objects", "/data", "--start", "yesterday-ish"],
            "",
        ),
        (vec!["bad name", "--objects", "/data"], "letters"),
        (
            vec![
                "s1",
                "--action",
                "command",
                "--objects",
                "a",
                "--objects",
                "b",
            ],
            "one --objects",
        ),
        (
            vec!["s1", "--action", "db-backup", "--objects", "/srv/app.db"],
            "KIND:/absolute/path",
        ),
        (
            vec!["s1", "--action", "db-backup", "--objects", "oracle:/db"],
            "kinds: sqlite, postgres",
        ),
        (
            vec![
                "s1",
                "--action",
                "db-backup",
                "--objects",
                "sqlite:/a.db",
                "--objects",
                "postgres:/pg",
            ],
            "one kind",
        ),
        (
            vec![
                "s1",
                "--action",
                "db-backup",
                "--objects",
                "postgres:/pg1",
                "--objects",
                "postgres:/pg2",
            ],
            "one cluster",
        ),
    ] {
        let mut all = vec!["define", "schedule"];
        all.extend_from_slice(&args);
        let out = server.admin(&all);
        assert_ne!(code(&out), 0, "{args:?} was accepted");
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
    define(&server, &["s1", "--objects", "/data"]);
    let again = server.admin(&["define", "schedule", "s1", "--objects", "/data"]);
    assert!(
        stderr(&again).contains("defined already"),
        "{}",
        stderr(&again)
    );
    let nobody = server.admin(&["define", "association", "s1", "nobody"]);
    assert_ne!(code(&nobody), 0);
    let nothing = server.admin(&["define", "association", "nosuch", "alice"]);
    assert!(
        stderr(&nothing).contains("not defined"),
        "{}",
        stderr(&nothing)
    );
    let client = TestClient::new(&server, "alice", "alice-password");
    let none = client.json(&["query", "schedule"]);
    assert_eq!(none.as_array().unwrap().len(), 0);
    // A client may report only windows of its own schedules that opened:
    // it cannot fill the event table with runs of its own invention.
    server.register("bob", "bob-password");
    associate(&server, "s1", "alice");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use tandem_proto::pb;
        use tandem_tests::raw::{raw_backup_session, with_session};
        let report = |schedule: &str, window: i64, state: &str, message: String| {
            pb::ReportScheduleEventRequest {
                schedule: schedule.into(),
                window_start_ns: window,
                state: state.into(),
                exit_code: 0,
                message,
                started_ns: 0,
                ended_ns: 0,
            }
        };
        let (mut bob, token) = raw_backup_session(&server, "bob", "bob-password").await;
        let refused = bob
            .report_schedule_event(with_session(
                &token,
                report("S1", 1, "completed", String::new()),
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
        let (mut alice, token) = raw_backup_session(&server, "alice", "alice-password").await;
        let runs = alice
            .query_schedule(with_session(&token, pb::QueryScheduleRequest {}))
            .await
            .unwrap()
            .into_inner()
            .runs;
        let start = runs[0].start_ns;
        for (window, state, message, code) in [
            (
                start + 1,
                "completed",
                String::new(),
                tonic::Code::InvalidArgument,
            ),
            (
                start + 86_400_000_000_000,
                "completed",
                String::new(),
                tonic::Code::InvalidArgument,
            ),
            (
                start,
                "exploded",
                String::new(),
                tonic::Code::InvalidArgument,
            ),
            (
                start,
                "completed",
                "x".repeat(5000),
                tonic::Code::InvalidArgument,
            ),
        ] {
            let err = alice
                .report_schedule_event(with_session(&token, report("S1", window, state, message)))
                .await
                .unwrap_err();
            assert_eq!(err.code(), code, "{window} {state}: {err:?}");
        }
        // A name no schedule can have is refused before any lookup: no
        // megabytes or control characters reach the log or the answer.
        for name in [
            "S".repeat(1 << 20),
            "S1\nTDM0000E forged".into(),
            String::new(),
        ] {
            let err = alice
                .report_schedule_event(with_session(
                    &token,
                    report(&name, start, "completed", String::new()),
                ))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
            assert!(err.message().len() < 300, "{}", err.message().len());
        }
        alice
            .report_schedule_event(with_session(
                &token,
                report("S1", start, "completed", "ok".into()),
            ))
            .await
            .expect("a real window");
    });
}
