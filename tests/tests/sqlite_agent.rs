//! The SQLite agent against real servers and real SQLite databases: a copy
//! taken while a writer keeps committing, a point-in-time restore, a
//! restore from the secondary in failover, and the inputs it must refuse.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tandem_tests::*;

/// A WAL-mode database whose every transaction adds one row to each of two
/// tables, so a copy is consistent exactly when both counts agree.
fn create_db(path: &Path) {
    let db = Connection::open(path).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE a(id INTEGER PRIMARY KEY, payload BLOB);
         CREATE TABLE b(id INTEGER PRIMARY KEY, payload BLOB);",
    )
    .unwrap();
}

fn add_rows(db: &Connection, from: i64, count: i64) {
    for i in from..from + count {
        let tx = db.unchecked_transaction().unwrap();
        let payload = random_bytes(i as u64, 2000);
        tx.execute("INSERT INTO a VALUES (?1, ?2)", (i, &payload))
            .unwrap();
        tx.execute("INSERT INTO b VALUES (?1, ?2)", (i, &payload))
            .unwrap();
        tx.commit().unwrap();
    }
}

/// Row counts of both tables, after `PRAGMA integrity_check` passed.
fn checked_counts(path: &Path) -> (i64, i64) {
    let db = Connection::open(path).unwrap();
    let verdict: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(verdict, "ok", "{}", path.display());
    let count = |t: &str| {
        db.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    };
    (count("a"), count("b"))
}

fn rows_now(path: &Path) -> i64 {
    let db = Connection::open(path).unwrap();
    db.query_row("SELECT count(*) FROM a", [], |r| r.get(0))
        .unwrap()
}

fn db_in(dir: &Path) -> PathBuf {
    let path = dir.join("app.db");
    create_db(&path);
    path
}

#[test]
fn a_copy_taken_while_a_writer_commits_restores_consistent_and_by_time() {
    let server = TestServer::start("SERVER");
    server.register("alice", "alice-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    let work = tempfile::tempdir().unwrap();
    let db = db_in(work.path());
    add_rows(&Connection::open(&db).unwrap(), 0, 200);

    // A writer commits as fast as it can for the whole backup.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let conn = Connection::open(&db).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut next = 1_000_000;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                add_rows(&conn, next, 1);
                next += 1;
            }
            next - 1_000_000
        })
    };
    while rows_now(&db) < 300 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = rows_now(&db);
    let backup = client.json(&["backup", "db", "sqlite", &path_str(&db)]);
    let after = rows_now(&db);
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert_eq!(backup["backed_up"], 1, "{backup}");
    assert!(written > 0, "the writer committed during the backup");

    let restored = work.path().join("restored.db");
    client.json(&[
        "restore",
        "db",
        "sqlite",
        &path_str(&db),
        &path_str(&restored),
    ]);
    let (a, b) = checked_counts(&restored);
    assert_eq!(a, b, "a copy from one transaction has as many rows in both");
    assert!(
        (before..=after).contains(&a),
        "{a} rows: between {before} and {after}"
    );

    // A second copy later; --pitdate at the first copy's time brings the
    // first one back, and `query db` lists both with their kind.
    std::thread::sleep(Duration::from_millis(1100));
    add_rows(&Connection::open(&db).unwrap(), 2_000_000, 50);
    client.json(&["backup", "db", "sqlite", &path_str(&db)]);
    let copies = client.json(&["query", "db", "--inactive"]);
    let copies = copies.as_array().unwrap();
    assert_eq!(copies.len(), 2, "{copies:?}");
    assert!(copies.iter().all(|c| c["kind"] == "sqlite"), "{copies:?}");
    let first = copies
        .iter()
        .find(|c| c["state"] == "inactive")
        .expect("the first copy is inactive");
    let first_time = first["backup_time"].as_str().unwrap();
    let by_time = work.path().join("by-time");
    std::fs::create_dir(&by_time).unwrap();
    client.json(&[
        "restore",
        "db",
        "sqlite",
        &path_str(&db),
        &path_str(&by_time),
        "--pitdate",
        first_time,
    ]);
    assert_eq!(checked_counts(&by_time.join("app.db")).0, a);
    let latest = work.path().join("latest.db");
    client.json(&[
        "restore",
        "db",
        "sqlite",
        &path_str(&db),
        &path_str(&latest),
    ]);
    assert_eq!(checked_counts(&latest), (rows_now(&db), rows_now(&db)));
    // Byte for byte what SQLite's own online backup of the (now quiet)
    // database gives.
    let reference = work.path().join("reference.db");
    {
        let source = Connection::open(&db).unwrap();
        let mut copy = Connection::open(&reference).unwrap();
        rusqlite::backup::Backup::new(&source, &mut copy)
            .unwrap()
            .step(-1)
            .unwrap();
    }
    assert!(
        std::fs::read(&latest).unwrap() == std::fs::read(&reference).unwrap(),
        "the restored copy is byte-identical to a consistent snapshot"
    );

    // `query backup` shows the copies too, as sqlite objects.
    let listed = client.json(&["query", "backup", "/@sqlite/*", "--subdir"]);
    assert_eq!(listed[0]["kind"], "sqlite", "{listed}");
    assert_eq!(listed[0]["filespace"], "/@sqlite", "{listed}");
}

#[test]
fn a_restore_in_failover_comes_from_the_secondary_and_a_backup_is_refused() {
    let (mut primary, _secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    let db = db_in(work.path());
    add_rows(&Connection::open(&db).unwrap(), 0, 120);
    client.json(&["backup", "db", "sqlite", &path_str(&db)]);
    let run = replicate(&primary, "alice");
    assert_eq!(run["state"], "completed", "{run}");
    client.json(&["query", "session"]);
    primary.kill();

    let restored = work.path().join("from-secondary.db");
    client.json(&[
        "restore",
        "db",
        "sqlite",
        &path_str(&db),
        &path_str(&restored),
    ]);
    assert_eq!(checked_counts(&restored), (120, 120));
    assert!(client.error_log().contains("TDM2106I"), "failover logged");

    let out = client.run(&["backup", "db", "sqlite", &path_str(&db)]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(stderr(&out).contains("TDM2110E"), "{}", stderr(&out));
}

#[test]
fn bad_inputs_get_clear_errors_and_change_nothing() {
    let server = TestServer::start("SERVER");
    server.register("alice", "alice-password");
    let client = TestClient::new(&server, "alice", "alice-password");
    let work = tempfile::tempdir().unwrap();

    // Not a database, not there, a directory.
    let text = work.path().join("notes.txt");
    std::fs::write(&text, "not a database, just text that is long enough").unwrap();
    let missing = work.path().join("missing.db");
    for (path, says) in [
        (&text, "cannot be read as a SQLite database"),
        (&missing, "name an existing database file"),
        (&work.path().to_path_buf(), "not a regular file"),
    ] {
        let out = client.run(&["backup", "db", "sqlite", &path_str(path)]);
        assert_eq!(code(&out), 12, "{}", stderr(&out));
        assert!(stderr(&out).contains("TDM1062E"), "{}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
    assert!(!missing.exists(), "a missing database is not created");

    // One bad database does not stop the others: the good one is stored,
    // the bad one named, exit 12.
    let good = work.path().join("good.db");
    create_db(&good);
    add_rows(&Connection::open(&good).unwrap(), 0, 10);
    let out = client.run(&[
        "--json",
        "backup",
        "db",
        "sqlite",
        &path_str(&text),
        &path_str(&good),
    ]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["backed_up"], 1, "{summary}");
    assert_eq!(summary["failed"], 1, "{summary}");
    // The staging area is the user's alone: a copy is the whole database.
    let staging = client.dir.path().join("state").join("staging");
    let mode = std::fs::metadata(&staging).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "staging is {mode:o}");
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "nothing left staged"
    );

    // Nothing stored under that name.
    let out = client.run(&["restore", "db", "sqlite", &path_str(&missing)]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(stderr(&out).contains("no sqlite copy"), "{}", stderr(&out));
    assert!(!missing.exists());

    // An existing file is kept without --replace; with it, the stale WAL
    // beside it goes too (SQLite would replay it into the restored copy).
    let db = db_in(work.path());
    add_rows(&Connection::open(&db).unwrap(), 0, 30);
    client.json(&["backup", "db", "sqlite", &path_str(&db)]);
    let other = work.path().join("other.db");
    std::fs::write(&other, b"precious").unwrap();
    let out = client.run(&["restore", "db", "sqlite", &path_str(&db), &path_str(&other)]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(stderr(&out).contains("--replace"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&other).unwrap(), b"precious");
    let leftovers: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".tandem-restore")
        })
        .collect();
    assert!(leftovers.is_empty(), "no staging directory is left behind");

    // A lone -wal where the database would go belongs to some database too.
    let lone = work.path().join("lone");
    std::fs::create_dir(&lone).unwrap();
    std::fs::write(lone.join("app.db-wal"), b"someone's log").unwrap();
    let out = client.run(&["restore", "db", "sqlite", &path_str(&db), &path_str(&lone)]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("app.db-wal exists"),
        "{}",
        stderr(&out)
    );
    assert!(!lone.join("app.db").exists());
    // A trailing slash names a directory, which must exist.
    let out = client.run(&[
        "restore",
        "db",
        "sqlite",
        &path_str(&db),
        &format!("{}/", path_str(&work.path().join("nodir"))),
    ]);
    assert_eq!(code(&out), 12, "{}", stderr(&out));
    assert!(stderr(&out).contains("trailing /"), "{}", stderr(&out));

    std::fs::write(work.path().join("other.db-wal"), b"stale").unwrap();
    client.json(&[
        "restore",
        "db",
        "sqlite",
        &path_str(&db),
        &path_str(&other),
        "--replace",
    ]);
    assert!(!work.path().join("other.db-wal").exists());
    assert_eq!(checked_counts(&other), (30, 30));

    // `restore` with nothing named says what to name.
    let out = client.run(&["restore"]);
    assert_ne!(code(&out), 0);
}
