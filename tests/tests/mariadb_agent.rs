//! The MariaDB agent against real MariaDB 10.11 servers the test starts in
//! its own directories (on Unix sockets, no network) and real Tandem
//! servers: a full backup streamed from `mariadb-dump`, binary logs stored
//! as incrementals, and a point-in-time restore from the secondary in
//! failover, into a fresh server, that shows exactly the rows committed
//! before the target time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tandem_tests::*;

/// A MariaDB server in `dir`, killed (by its own PID) when dropped.
struct Mariadb {
    child: Child,
    socket: PathBuf,
}

impl Mariadb {
    fn start(dir: &Path) -> Self {
        let datadir = dir.join("data");
        let socket = dir.join("sock");
        let install = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .args([
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ])
            .output()
            .expect("mariadb-install-db (is mariadb-server installed?)");
        assert_success(&install, "mariadb-install-db");
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", datadir.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--log-bin={}", datadir.join("binlog").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .args(["--skip-networking", "--server-id=1", "--user=root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Mariadb { child, socket };
        let up = wait_until(Duration::from_secs(60), || {
            server.sql_output("SELECT 1").status.success()
        });
        assert!(
            up,
            "MariaDB did not start: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        server
    }

    fn sql_output(&self, sql: &str) -> Output {
        Command::new("mariadb")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["--batch", "--skip-column-names", "--execute", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn sql(&self, sql: &str) -> String {
        let out = self.sql_output(sql);
        assert_success(&out, sql);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn socket(&self) -> String {
        path_str(&self.socket)
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        stop_child(&mut self.child, nix::sys::signal::Signal::SIGTERM);
    }
}

#[test]
fn a_point_in_time_restore_from_the_secondary_replays_binary_logs_up_to_the_time() {
    let (mut primary, _secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("source")).unwrap();
    let source = Mariadb::start(&work.path().join("source"));
    source.sql("CREATE DATABASE shop; CREATE TABLE shop.orders (n INT PRIMARY KEY) ENGINE=InnoDB");
    source.sql("INSERT INTO shop.orders VALUES (1), (2), (3)");

    let full = client.json(&["backup", "db", "mariadb", "--socket", &source.socket()]);
    assert_eq!(full["backed_up"], 1, "{full}");
    // Rows after the dump, the target time, more rows; binary logs stored.
    source.sql("INSERT INTO shop.orders SELECT seq FROM shop.seq_10_to_100");
    std::thread::sleep(Duration::from_millis(2100));
    let target_ns = now_ns();
    std::thread::sleep(Duration::from_millis(2100));
    source.sql("INSERT INTO shop.orders SELECT seq FROM shop.seq_200_to_300");
    source.sql("DELETE FROM shop.orders WHERE n = 1");
    // `backup db mariadb --binlogs` of this server, run three times below.
    let socket = source.socket();
    let binlogs = [
        "backup",
        "db",
        "mariadb",
        "--binlogs",
        "--socket",
        socket.as_str(),
    ];
    let logs = client.json(&binlogs);
    assert!(
        logs["backed_up"].as_u64().unwrap() >= 1,
        "binary logs stored: {logs}"
    );
    // The log directory is the database user's: a link put in a closed
    // log's place is refused, and nothing of the file it names is stored.
    source.sql("FLUSH BINARY LOGS");
    let listed = source.sql("SHOW BINARY LOGS");
    let closed = listed
        .lines()
        .rev()
        .nth(1)
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_string();
    let log_dir = PathBuf::from(source.sql("SELECT @@log_bin_basename"))
        .parent()
        .unwrap()
        .to_path_buf();
    let secret = work.path().join("secret");
    std::fs::write(&secret, "root's secret\n").unwrap();
    let aside = work.path().join("real-log");
    std::fs::rename(log_dir.join(&closed), &aside).unwrap();
    std::os::unix::fs::symlink(&secret, log_dir.join(&closed)).unwrap();
    let refused = client.run(&binlogs);
    assert_eq!(code(&refused), 12, "{}", stderr(&refused));
    assert!(stderr(&refused).contains(&closed), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("symbolic link"),
        "{}",
        stderr(&refused)
    );
    let stored = client.json(&["query", "db"]);
    assert!(stored.to_string().contains("/binlog/"), "{stored}");
    assert!(
        !stored.to_string().contains(&closed),
        "nothing stored under the linked name: {stored}"
    );
    std::fs::remove_file(log_dir.join(&closed)).unwrap();
    std::fs::rename(&aside, log_dir.join(&closed)).unwrap();
    // Run again: nothing new is closed but the one it rotates, and what
    // was stored is not stored twice.
    let again = client.json(&binlogs);
    assert!(again["unchanged"].as_u64().unwrap() >= 1, "{again}");
    let datadir = source.sql("SELECT @@datadir");
    let listed = client.json(&["query", "db"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "mariadb" && c["path"].as_str().unwrap().contains("/full/")),
        "{listed}"
    );

    let run = replicate(&primary, "alice");
    assert_eq!(run["state"], "completed", "{run}");
    client.json(&["query", "session"]);
    primary.kill();

    // Into a fresh server, from the secondary.
    std::fs::create_dir(work.path().join("target")).unwrap();
    let target = Mariadb::start(&work.path().join("target"));
    let at = tandem_client::output::timefmt::rfc3339(target_ns);
    client.json(&[
        "restore",
        "db",
        "mariadb",
        &datadir,
        "--pitdate",
        &at,
        "--socket",
        &target.socket(),
    ]);
    assert_eq!(
        target.sql("SELECT count(*), min(n), max(n) FROM shop.orders"),
        "94\t1\t100",
        "the dump's rows and those committed before the time, nothing after"
    );
    assert!(client.error_log().contains("TDM2106I"), "failover logged");
    drop(target);

    // Without a time: everything stored replays.
    std::fs::create_dir(work.path().join("latest")).unwrap();
    let latest = Mariadb::start(&work.path().join("latest"));
    client.json(&[
        "restore",
        "db",
        "mariadb",
        &datadir,
        "--socket",
        &latest.socket(),
    ]);
    assert_eq!(
        latest.sql("SELECT count(*), min(n), max(n) FROM shop.orders"),
        "194\t2\t300"
    );

    // A target that holds databases already, or none named: refused with
    // the reason, before anything is loaded.
    let out = client.run(&[
        "restore",
        "db",
        "mariadb",
        &datadir,
        "--socket",
        &latest.socket(),
    ]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already holds 1 database"),
        "{}",
        stderr(&out)
    );
    let out = client.run(&["restore", "db", "mariadb", &datadir]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(stderr(&out).contains("--socket"), "{}", stderr(&out));
}
