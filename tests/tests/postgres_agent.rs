//! The PostgreSQL agent against a real PostgreSQL 15 cluster the test
//! creates (as the `postgres` user, since PostgreSQL refuses root) and real
//! Tandem servers: a base backup streamed from `pg_basebackup`, WAL
//! archived by `archive_command = 'tandem archive-wal %p'`, and a
//! point-in-time restore from the secondary in failover that shows exactly
//! the rows committed before the target time.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tandem_tests::*;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// `program args...` run as the `postgres` user, with PostgreSQL's
/// programs first on PATH.
fn as_postgres(program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program)
        .args(args)
        .env(
            "PATH",
            format!("{PG_BIN}:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .stdin(Stdio::null());
    command
}

fn pg(program: &str) -> PathBuf {
    Path::new(PG_BIN).join(program)
}

fn chown_to_postgres(path: &Path) {
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "chown {}", path.display());
}

fn run_ok(mut command: Command, what: &str) -> Output {
    let out = command.output().unwrap();
    assert_success(&out, what);
    out
}

/// A PostgreSQL server on a Unix socket only, killed (by its own PID) when
/// dropped.
struct Postgres {
    child: Child,
    socket: PathBuf,
}

impl Postgres {
    fn start(pgdata: &Path, socket: &Path) -> Self {
        let child = as_postgres(&pg("postgres"), &["-D", pgdata.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(pgdata.with_extension("log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let server = Postgres {
            child,
            socket: socket.to_path_buf(),
        };
        let up = wait_until(Duration::from_secs(60), || {
            server
                .sql_output("SELECT 1")
                .is_ok_and(|o| o.status.success())
        });
        assert!(
            up,
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(pgdata.with_extension("log")).unwrap_or_default()
        );
        server
    }

    fn sql_output(&self, sql: &str) -> std::io::Result<Output> {
        as_postgres(
            &pg("psql"),
            &[
                "-h",
                self.socket.to_str().unwrap(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        )
        .output()
    }

    fn sql(&self, sql: &str) -> String {
        let out = self.sql_output(sql).unwrap();
        assert_success(&out, sql);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Switches to a new WAL segment and waits until the finished one is
    /// archived.
    fn archive_now(&self) {
        let segment = self.sql("SELECT pg_walfile_name(pg_switch_wal())");
        let archived = wait_until(Duration::from_secs(60), || {
            self.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") >= segment
        });
        assert!(
            archived,
            "{segment} not archived: {}",
            self.sql("SELECT * FROM pg_stat_archiver")
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop_child(&mut self.child, nix::sys::signal::Signal::SIGINT);
    }
}

/// `tandem --options FILE args...` as the `postgres` user.
fn tandem(client: &TestClient, args: &[&str]) -> Command {
    let mut all = vec!["--options", client.options.to_str().unwrap()];
    all.extend_from_slice(args);
    as_postgres(&bin("tandem"), &all)
}

#[test]
fn a_point_in_time_restore_from_the_secondary_shows_exactly_the_rows_before_the_time() {
    let (mut primary, _secondary, client) = replicated_alice();
    chown_to_postgres(client.dir.path());
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_to_postgres(work.path());
    let pgdata = work.path().join("pgdata");
    let socket = work.path().join("sock");
    std::fs::create_dir(&socket).unwrap();
    chown_to_postgres(&socket);
    run_ok(
        as_postgres(
            &pg("initdb"),
            &[
                "-D",
                pgdata.to_str().unwrap(),
                "--auth=trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        ),
        "initdb",
    );
    let archive_command = format!(
        "{} --options {} --quiet archive-wal %p",
        bin("tandem").display(),
        client.options.display()
    );
    let settings = format!(
        "\nlisten_addresses = ''\nunix_socket_directories = '{}'\nwal_level = replica\narchive_mode = on\narchive_command = '{archive_command}'\nfsync = off\n",
        socket.display()
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(pgdata.join("postgresql.conf"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, settings.as_bytes()))
        .unwrap();

    let db = Postgres::start(&pgdata, &socket);
    db.sql("CREATE TABLE t (n integer)");
    let mut backup = tandem(
        &client,
        &[
            "--json",
            "backup",
            "db",
            "postgres",
            pgdata.to_str().unwrap(),
        ],
    );
    backup.env("PGHOST", &socket).env("PGUSER", "postgres");
    let out = run_ok(backup, "backup db postgres");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["backed_up"], 1, "{summary}");

    // First batch, archived; the target time; the second batch, archived.
    db.sql("INSERT INTO t SELECT generate_series(1, 100)");
    db.archive_now();
    std::thread::sleep(Duration::from_millis(1500));
    let target_ns = now_ns();
    std::thread::sleep(Duration::from_millis(1500));
    db.sql("INSERT INTO t SELECT generate_series(101, 250)");
    db.archive_now();

    // The same segment archived again (PostgreSQL retries after a crash)
    // succeeds without a second version; a different file under a stored
    // name fails, so PostgreSQL keeps it.
    let last = db.sql("SELECT last_archived_wal FROM pg_stat_archiver");
    let again = pgdata.join("pg_wal").join(&last);
    assert!(again.exists(), "{last} is still in pg_wal");
    let mut retry = tandem(&client, &["archive-wal", again.to_str().unwrap()]);
    retry.current_dir(&pgdata);
    let out = run_ok(retry, "archive-wal again");
    assert!(stderr(&out).contains("TDM1063I"), "{}", stderr(&out));
    let forged = work.path().join("forged");
    std::fs::create_dir(&forged).unwrap();
    let fake = forged.join(&last);
    std::fs::write(&fake, b"not the same WAL").unwrap();
    chown_to_postgres(&forged);
    let mut differ = tandem(
        &client,
        &[
            "archive-wal",
            "--pgdata",
            pgdata.to_str().unwrap(),
            fake.to_str().unwrap(),
        ],
    );
    differ.current_dir(&pgdata);
    let out = differ.output().unwrap();
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );

    // A second base backup keeping one: the first, and the WAL older than
    // the second's start, become inactive (and stay restorable until the
    // node's policy expires them).
    let mut second = tandem(
        &client,
        &[
            "backup",
            "db",
            "postgres",
            pgdata.to_str().unwrap(),
            "--keep",
            "1",
        ],
    );
    second.env("PGHOST", &socket).env("PGUSER", "postgres");
    let out = run_ok(second, "second backup db postgres");
    assert!(stderr(&out).contains("TDM1066I"), "{}", stderr(&out));
    drop(db);
    let out = run_ok(
        tandem(&client, &["--json", "query", "db", "--inactive"]),
        "query db",
    );
    let copies: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let state_of = |kind: &str| -> Vec<String> {
        copies
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["path"].as_str().unwrap().contains(kind))
            .map(|c| c["state"].as_str().unwrap().to_string())
            .collect()
    };
    let mut bases = state_of("/base/");
    bases.sort();
    assert_eq!(bases, ["active", "inactive"], "{copies}");
    assert!(
        state_of("/wal/").contains(&"inactive".to_string()),
        "{copies}"
    );
    assert!(
        state_of("/wal/").contains(&"active".to_string()),
        "{copies}"
    );
    assert!(
        copies
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["kind"] == "postgres"),
        "{copies}"
    );

    // Replicated, then the primary is gone: the restore, and every WAL
    // fetch PostgreSQL makes during recovery, come from the secondary.
    let run = replicate(&primary, "alice");
    assert_eq!(run["state"], "completed", "{run}");
    run_ok(tandem(&client, &["query", "session"]), "query session");
    primary.kill();

    let restored = work.path().join("restored");
    let at = tandem_client::output::timefmt::rfc3339(target_ns);
    run_ok(
        tandem(
            &client,
            &[
                "restore",
                "db",
                "postgres",
                pgdata.to_str().unwrap(),
                restored.to_str().unwrap(),
                "--pitdate",
                &at,
            ],
        ),
        "restore db postgres",
    );
    assert!(restored.join("recovery.signal").exists());
    // The restored cluster archives elsewhere and listens on its own socket.
    let socket2 = work.path().join("sock2");
    std::fs::create_dir(&socket2).unwrap();
    chown_to_postgres(&socket2);
    std::fs::OpenOptions::new()
        .append(true)
        .open(restored.join("postgresql.auto.conf"))
        .and_then(|mut f| {
            std::io::Write::write_all(
                &mut f,
                format!(
                    "unix_socket_directories = '{}'\narchive_mode = off\n",
                    socket2.display()
                )
                .as_bytes(),
            )
        })
        .unwrap();
    let back = Postgres::start(&restored, &socket2);
    let promoted = wait_until(Duration::from_secs(120), || {
        back.sql_output("SELECT pg_is_in_recovery()")
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "f")
    });
    assert!(promoted, "recovery did not end");
    assert_eq!(back.sql("SELECT count(*), max(n) FROM t"), "100|100");
    assert!(client.error_log().contains("TDM2106I"), "failover logged");

    // As root, with an options file only root can read: the directory is
    // handed to the cluster's owner, and the restore warns that the
    // restore_command it wrote could not read its options (TDM1070W).
    // Root keeps its state apart: a state directory of the postgres user's
    // is not one root may use (TDM1073E), as that user could plant links in it.
    let root_options = work.path().join("root-options.toml");
    let text = std::fs::read_to_string(&client.options).unwrap();
    let root_state = tempfile::tempdir().unwrap();
    let text: String = text
        .lines()
        .map(|line| {
            if line.starts_with("state_dir") {
                format!("state_dir = \"{}\"\n", root_state.path().display())
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert!(
        text.contains(&root_state.path().display().to_string()),
        "{text}"
    );
    std::fs::write(&root_options, text).unwrap();
    std::os::unix::fs::chown(&root_options, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&root_options, std::fs::Permissions::from_mode(0o600)).unwrap();
    let as_root = work.path().join("restored-by-root");
    let out = Command::new(bin("tandem"))
        .arg("--options")
        .arg(&root_options)
        .args([
            "restore",
            "db",
            "postgres",
            pgdata.to_str().unwrap(),
            as_root.to_str().unwrap(),
        ])
        .env(
            "PATH",
            format!("{PG_BIN}:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .unwrap();
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(stderr(&out).contains("TDM1070W"), "{}", stderr(&out));
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&as_root).unwrap());
    let postgres_uid =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(pgdata.join("PG_VERSION")).unwrap());
    assert_eq!(
        owner, postgres_uid,
        "the restored directory belongs to the cluster's owner"
    );

    // restore-wal speaks PostgreSQL's exit codes: 4 for a file that is not
    // stored (recovery ends there normally), 126 for anything else, so a
    // failure stops recovery instead of ending it early.
    let missing = work.path().join("missing-wal");
    let out = tandem(
        &client,
        &[
            "restore-wal",
            "--pgdata",
            pgdata.to_str().unwrap(),
            "0000000100000000000000FF",
            missing.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(!missing.exists());
    let out = tandem(
        &client,
        &[
            "restore-wal",
            "--pgdata",
            pgdata.to_str().unwrap(),
            "../../etc/passwd",
            missing.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 126, "{}", stderr(&out));
    // Not a data directory: refused before anything is started.
    let out = tandem(
        &client,
        &["backup", "db", "postgres", work.path().to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a PostgreSQL data directory"),
        "{}",
        stderr(&out)
    );
}
