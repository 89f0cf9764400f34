//! The local vault tier (seed 001) with real servers killed by SIGKILL:
//! backups that go on while the primary is down and reach it (and the
//! secondary) afterwards with their original times, restores from the vault
//! alone, a wiped vault rebuilt, and a vault that cannot be used.

use std::path::{Path, PathBuf};

use tandem_tests::*;

/// A client of `primary` whose vault is `dir/vault`.
fn with_vault(client: &TestClient, dir: &Path) -> PathBuf {
    let vault = dir.join("vault");
    client.add_options(&format!("vault_dir = \"{}\"\n", vault.display()));
    vault
}

/// Restores all of `src` into `out`, checks it is the same tree and returns
/// the restore's summary.
fn restore_whole_tree(client: &TestClient, src: &Path, out: &Path) -> serde_json::Value {
    let r = client.json(&[
        "restore",
        &format!("{}/*", path_str(src)),
        &path_str(out),
        "--subdir",
    ]);
    assert_eq!(r["failed"], 0, "{r}");
    assert_same_tree(src, out);
    r
}

/// Runs a restore of all of `src` into `out` with `--json`, whatever its
/// outcome, for tests that check warnings and failures.
fn run_restore_json(client: &TestClient, src: &Path, out: &Path) -> std::process::Output {
    client.run(&[
        "--json",
        "restore",
        &format!("{}/*", path_str(src)),
        &path_str(out),
        "--subdir",
    ])
}

/// The client's record of its vault's last pull, in its `state_dir`.
fn pull_record(client: &TestClient) -> PathBuf {
    let state = client.dir.path().join("state");
    std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vault-pulled-"))
        })
        .unwrap_or_else(|| panic!("no pull record in {}", state.display()))
}

fn vault_state(client: &TestClient) -> serde_json::Value {
    client.json(&["query", "vault"])
}

/// The backup time of the active version of `file` the session's server holds.
fn active_backup_time(client: &TestClient, file: &Path) -> String {
    let listed = client.json(&["query", "backup", &path_str(file)]);
    let rows = listed.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{listed}");
    rows[0]["backup_time"].as_str().expect("time").to_string()
}

#[test]
fn a_backup_while_the_primary_is_down_goes_to_the_vault_and_reaches_both_servers_later() {
    let (mut primary, mut secondary, client) = replicated_alice();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    let vault = with_vault(&client, work.path());

    // Normal mode: the backup goes to the primary, then the vault copies it.
    let first = client.json(&["incremental", &path_str(&src)]);
    assert_eq!(first["failed"], 0, "{first}");
    let state = vault_state(&client);
    assert_eq!(state["state"], "synchronized", "{state}");
    assert!(state["versions"].as_u64().unwrap() > 30, "{state}");
    assert!(vault.join("catalog.db").exists());
    // The backup stored its data in the vault as it went: its sync copied
    // version records only.
    let log = client.error_log();
    let synced = log
        .lines()
        .find(|l| l.contains("TDM2123I"))
        .unwrap_or_else(|| panic!("no sync logged: {log}"));
    assert!(
        synced.contains("0 removed, 0 chunk(s) (0 B)")
            && !synced.contains("to the vault 0 version"),
        "{synced}"
    );
    assert_eq!(replicate(&primary, "alice")["state"], "completed");
    client.json(&["query", "session"]); // saves the failover block

    // The primary dies; a changed and a new file are backed up anyway.
    primary.kill();
    std::fs::write(src.join("docs/sub 0/file-0.txt"), b"changed while away\n").unwrap();
    std::fs::write(src.join("new-while-away.txt"), b"written while away\n").unwrap();
    let before = now_ns();
    let offline = client.json(&["incremental", &path_str(&src)]);
    let after = now_ns();
    assert_eq!(offline["failed"], 0, "{offline}");
    // The two files and their directory, whose mtime changed.
    assert_eq!(offline["backed_up"], 3, "{offline}");
    client.assert_logged("TDM2122I");
    let state = vault_state(&client);
    assert_eq!(state["state"], "synchronizing", "{state}");
    assert_eq!(state["versions_to_send"], 3, "{state}");

    // A restore in failover reads the vault beside the read-only secondary
    // and never syncs the vault with it: its own versions wait for the
    // primary.
    let in_failover = run_restore_json(&client, &src, &work.path().join("in-failover"));
    assert_success(&in_failover, "restore in failover");
    assert!(
        !stderr(&in_failover).contains("TDM2124W"),
        "{}",
        stderr(&in_failover)
    );
    let state = vault_state(&client);
    assert_eq!(state["versions_to_send"], 3, "{state}");

    // The primary returns: the next command sends the vault's versions
    // first, so its incremental finds nothing new to store.
    primary.restart();
    let again = client.json(&["incremental", &path_str(&src)]);
    assert_eq!(again["backed_up"], 0, "{again}");
    client.assert_logged("TDM2123I");
    assert_eq!(vault_state(&client)["state"], "synchronized");
    let time = active_backup_time(&client, &src.join("new-while-away.txt"));
    let at = chrono::DateTime::parse_from_rfc3339(&time)
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap();
    assert!(
        (before - 1_000_000_000..=after).contains(&at),
        "the primary keeps the vault's backup time {time}"
    );
    let inactive = client.json(&[
        "query",
        "backup",
        &path_str(&src.join("docs/sub 0/file-0.txt")),
        "--inactive",
    ]);
    assert_eq!(inactive.as_array().unwrap().len(), 2, "{inactive}");

    // Another installation of the node, without the vault, backs up a file
    // the vault never sees.
    let elsewhere = TestClient::new(&primary, "alice", "alice-password");
    std::fs::write(src.join("from-elsewhere.bin"), random_bytes(61, 120_000)).unwrap();
    let other = elsewhere.json(&["incremental", &path_str(&src)]);
    assert_eq!(other["failed"], 0, "{other}");

    // The primary replicates them; the secondary restores them in failover,
    // with the data the vault holds taken from the vault.
    assert_eq!(replicate(&primary, "alice")["state"], "completed");
    primary.kill();
    let out = work.path().join("restored");
    let restored = restore_whole_tree(&client, &src, &out);
    assert!(
        client.logged_ids().contains(&"TDM2108I".to_string()),
        "the restore came from the secondary: {}",
        client.error_log()
    );
    let sources = &restored["sources"];
    assert_eq!(sources["server_files"], 1, "{restored}");
    assert_eq!(sources["server_bytes"], 120_000, "{restored}");
    assert!(sources["vault_files"].as_u64().unwrap() > 10, "{restored}");
    secondary.kill();
}

#[test]
fn with_every_server_down_a_restore_comes_from_the_vault_alone() {
    let mut primary = TestServer::start("PRIMARY");
    primary.register("bob", "bob-password");
    let client = TestClient::new(&primary, "bob", "bob-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    with_vault(&client, work.path());
    client.json(&["incremental", &path_str(&src)]);

    primary.kill();
    let out = work.path().join("restored");
    restore_whole_tree(&client, &src, &out);
    client.assert_logged("TDM2121W");
    // Reads work on the vault alone too; writes the vault cannot take are
    // refused with a clear message.
    let listed = client.json(&["query", "backup", &path_str(&src.join("empty"))]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let refused = client.run(&["set", "password", "bob-password", "new-password-1"]);
    assert_eq!(code(&refused), 12, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("needs the server"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn a_wiped_vault_is_rebuilt_from_the_primary_and_then_serves_restores() {
    let mut primary = TestServer::start("PRIMARY");
    primary.register("carol", "carol-password");
    let client = TestClient::new(&primary, "carol", "carol-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    client.json(&["incremental", &path_str(&src)]);

    // A vault added later (or wiped) is filled by the next backup's sync.
    let vault = with_vault(&client, work.path());
    let r = client.json(&["incremental", &path_str(&src)]);
    assert_eq!(r["backed_up"], 0, "{r}");
    assert_eq!(vault_state(&client)["state"], "synchronized");
    std::fs::remove_dir_all(&vault).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    assert_eq!(vault_state(&client)["state"], "synchronized");

    // With the primary up, a synchronized vault serves the restore.
    let out = work.path().join("from-vault");
    let restore = run_restore_json(&client, &src, &out);
    assert_success(&restore, "restore");
    assert!(
        stderr(&restore).contains("TDM2126I"),
        "{}",
        stderr(&restore)
    );
    assert_same_tree(&src, &out);

    // Deleted on the server, deleted in the vault at the next sync.
    let doomed = src.join("dup/a.bin");
    client.json(&[
        "delete",
        "backup",
        &path_str(&doomed),
        "--deltype",
        "all",
        "--yes",
    ]);
    primary.kill();
    let listed = client.run(&["query", "backup", &path_str(&doomed), "--inactive"]);
    assert_eq!(code(&listed), 4, "{}", stderr(&listed));
    assert!(
        stderr(&listed).contains("TDM2121W") && stderr(&listed).contains("TDM1024W"),
        "the vault no longer holds it: {}",
        stderr(&listed)
    );
}

#[test]
fn a_vault_that_cannot_be_created_leaves_backups_to_the_server() {
    let mut primary = TestServer::start("PRIMARY");
    primary.register("dave", "dave-password");
    let client = TestClient::new(&primary, "dave", "dave-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    // A regular file where the vault's parent directory should be: even
    // root cannot create a directory below it.
    let blocker = work.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    client.add_options(&format!(
        "vault_dir = \"{}\"\n",
        blocker.join("vault").display()
    ));

    let out = client.run(&["--json", "incremental", &path_str(&src)]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(stderr(&out).contains("TDM2125W"), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["backed_up"].as_u64().unwrap() > 30, "{summary}");

    // With the server down too, the vault is needed: a clear error.
    primary.kill();
    let down = client.run(&["incremental", &path_str(&src)]);
    assert_eq!(code(&down), 12, "{}", stderr(&down));
    assert!(
        stderr(&down).contains("TDM2120E") && stderr(&down).contains("not-a-dir"),
        "{}",
        stderr(&down)
    );

    // Told to wait for a tier, a command gives up with the same error when
    // its time is up...
    let gave_up = client
        .command(&["incremental", &path_str(&src)])
        .env("TANDEM_TIER_WAIT_SECONDS", "1")
        .output()
        .expect("run tandem");
    assert_eq!(code(&gave_up), 12, "{}", stderr(&gave_up));
    assert!(
        stderr(&gave_up).contains("TDM2136I") && stderr(&gave_up).contains("TDM2120E"),
        "{}",
        stderr(&gave_up)
    );
    // ... and goes on as soon as the server is back.
    let waiting = client
        .command(&["--json", "incremental", &path_str(&src)])
        .env("TANDEM_TIER_WAIT_SECONDS", "120")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tandem");
    assert!(
        wait_until(std::time::Duration::from_secs(60), || {
            client.error_log().matches("TDM2136I").count() >= 2
        }),
        "the second command never said it waits: {}",
        client.error_log()
    );
    primary.restart();
    let done = waiting.wait_with_output().expect("waiting command");
    // Exit 8: the vault is still unusable (TDM2125W); the server took it.
    assert_eq!(code(&done), 8, "{}", stderr(&done));
    let summary: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(stderr(&done).contains("TDM2125W"), "{}", stderr(&done));
}

/// Runs a backup of `src` that must go to the server alone because the vault
/// is refused, with `why` in the warning.
fn backup_refusing_the_vault(client: &TestClient, src: &Path, why: &str) {
    // Something new to back up, so the vault is written to (and opened).
    let name: String = why
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    std::fs::write(src.join(format!("new-{name}")), why).unwrap();
    let out = client.run(&["--json", "incremental", &path_str(src)]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("TDM2125W") && stderr(&out).contains(why),
        "{}",
        stderr(&out)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
}

#[test]
fn a_vault_directory_with_planted_links_or_of_another_user_is_refused_and_nothing_outside_changes()
{
    let primary = TestServer::start("PRIMARY");
    primary.register("dave", "dave-password");
    let client = TestClient::new(&primary, "dave", "dave-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    let vault = with_vault(&client, work.path());
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    let precious = work.path().join("precious");
    std::fs::write(&precious, b"not the vault's").unwrap();

    // The lock file replaced by a link: opening the vault would cut and
    // overwrite whatever it points at.
    let lock = vault.join("lock");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&precious, &lock).unwrap();
    backup_refusing_the_vault(&client, &src, "lock");
    assert_eq!(std::fs::read(&precious).unwrap(), b"not the vault's");
    std::fs::remove_file(&lock).unwrap();

    // A container that is a link: start-up cuts containers back to their
    // indexed end (0 for one the catalog does not know).
    let container = vault.join("containers").join("99999999.tdc");
    std::os::unix::fs::symlink(&precious, &container).unwrap();
    backup_refusing_the_vault(&client, &src, "99999999.tdc");
    assert_eq!(std::fs::read(&precious).unwrap(), b"not the vault's");
    std::fs::remove_file(&container).unwrap();

    // A FIFO under a container's name: the open would wait for a writer
    // for ever. It is refused at once.
    nix::unistd::mkfifo(&container, nix::sys::stat::Mode::S_IRWXU).unwrap();
    backup_refusing_the_vault(&client, &src, "not a regular file");
    std::fs::remove_file(&container).unwrap();

    // The containers directory itself replaced by a link to another one:
    // start-up would cut, and compaction remove, the files there.
    let elsewhere = work.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let outside = elsewhere.join("00000001.tdc");
    std::fs::write(&outside, b"someone else's file").unwrap();
    let containers = vault.join("containers");
    std::fs::rename(&containers, work.path().join("containers-moved")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &containers).unwrap();
    backup_refusing_the_vault(&client, &src, "is a symbolic link");
    assert_eq!(std::fs::read(&outside).unwrap(), b"someone else's file");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 1);
    std::fs::remove_file(&containers).unwrap();
    std::fs::rename(work.path().join("containers-moved"), &containers).unwrap();
    // Nothing of TLS is kept in a vault, so nothing is read or written there.
    assert!(!vault.join("tls").exists());
    // The vault missed two backups of `src`, and the server's version limit
    // dropped the directory's version the vault holds as active: the sync
    // makes the vault follow (no TDM2129W "the server no longer holds").
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");

    // A vault directory that belongs to another user, who could plant such
    // links at any time (root can hand it over; others cannot test this).
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(&vault, Some(65534), Some(65534)).unwrap();
        backup_refusing_the_vault(&client, &src, "belongs to uid 65534");
        std::os::unix::fs::chown(&vault, Some(0), Some(0)).unwrap();
        assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    }
    // One whose parent others may write: they could put another vault in
    // its place, one whose versions a restore would then believe.
    use std::os::unix::fs::PermissionsExt;
    let parent = vault.parent().unwrap();
    let mode = std::fs::metadata(parent).unwrap().permissions().mode();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o777)).unwrap();
    backup_refusing_the_vault(
        &client,
        &src,
        &format!("run `chmod go-w {}`", parent.display()),
    );
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode)).unwrap();
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
}

/// The names and contents of the client's records in `dir` (all its files
/// but the error log, which says why they were left alone), sorted.
fn records_in(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.ends_with("dsierror.log"))
        .map(|p| {
            (
                p.file_name().unwrap().to_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// A primary, its node dave with a local vault, and a tree (in the
/// returned directory) backed up once to both.
fn dave_backed_up_with_a_vault() -> (TestServer, TestClient, tempfile::TempDir, PathBuf) {
    let primary = TestServer::start("PRIMARY");
    primary.register("dave", "dave-password");
    let client = TestClient::new(&primary, "dave", "dave-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    with_vault(&client, work.path());
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    (primary, client, work, src)
}

/// With every server down, `file` (holding "new") comes back from the
/// vault alone into a directory below `work`.
fn assert_restored_from_the_vault_alone(client: &TestClient, file: &Path, work: &Path) {
    let restored = work.join("from-vault");
    let out = client.run(&[
        "restore",
        &path_str(file),
        &format!("{}/", path_str(&restored)),
    ]);
    assert!(stderr(&out).contains("TDM2121W"), "{}", stderr(&out));
    let name = file.file_name().unwrap();
    assert_eq!(std::fs::read(restored.join(name)).unwrap(), b"new");
}

#[test]
fn a_state_directory_others_may_write_is_not_trusted_and_backups_go_to_the_server() {
    use std::os::unix::fs::PermissionsExt;
    let (mut primary, client, work, src) = dave_backed_up_with_a_vault();
    let state = client.dir.path().join("state");
    let chmod = |mode| std::fs::set_permissions(&state, std::fs::Permissions::from_mode(mode));

    // Anyone may now write the records that decide what the vault may send
    // and whether another installation wrote it: none of them is read or
    // written, the vault is not used, and the backup reaches the server.
    chmod(0o777).unwrap();
    let before = records_in(&state);
    std::fs::write(src.join("new-while-open"), b"new").unwrap();
    let out = client.run(&["--json", "incremental", &path_str(&src)]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("TDM2125W") && err.contains("mode 0777") && err.contains("chmod go-w"),
        "{err}"
    );
    assert!(
        err.contains("TDM1042W"),
        "the replication table is not updated: {err}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(summary["backed_up"].as_u64().unwrap() >= 1, "{summary}");
    let after = records_in(&state);
    assert!(
        after == before,
        "records in the state directory changed: {:?} became {:?}",
        before.iter().map(|(n, b)| (n, b.len())).collect::<Vec<_>>(),
        after.iter().map(|(n, b)| (n, b.len())).collect::<Vec<_>>()
    );
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o777,
        "the client does not change the mode behind the administrator's back"
    );

    // The scheduler, whose cache says which commands to run, does not start.
    let sched = client.run(&["schedule"]);
    assert_eq!(code(&sched), 12, "{}", stderr(&sched));
    assert!(
        stderr(&sched).contains("TDM1073E") && stderr(&sched).contains("chmod go-w"),
        "{}",
        stderr(&sched)
    );

    // Closed, but below a parent others may write (they could rename it
    // away and put their own in its place): refused the same way.
    chmod(0o700).unwrap();
    let parent = client.dir.path();
    let parent_mode = std::fs::metadata(parent).unwrap().permissions().mode() & 0o7777;
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sched = client.run(&["schedule"]);
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(parent_mode)).unwrap();
    assert_eq!(code(&sched), 12, "{}", stderr(&sched));
    assert!(
        stderr(&sched).contains("TDM1073E")
            && stderr(&sched).contains("a parent of the state directory"),
        "{}",
        stderr(&sched)
    );

    // Once fixed, the vault catches up with what it missed: with the
    // server gone, the file backed up meanwhile comes back from it alone.
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    assert_eq!(vault_state(&client)["state"], "synchronized");
    primary.kill();
    assert_restored_from_the_vault_alone(&client, &src.join("new-while-open"), work.path());
}

#[test]
fn a_vault_whose_share_stops_answering_is_left_out_and_the_backup_goes_to_the_server() {
    let (mut primary, client, work, src) = dave_backed_up_with_a_vault();
    client.add_options("vault_timeout_seconds = 2\n");

    // The vault's file system stops answering: opening it blocks (a fault
    // point that waits ten minutes). The command goes on with the server,
    // and ends without waiting for the blocked look.
    std::fs::write(src.join("new-while-hung"), b"new").unwrap();
    let out = client
        .command(&["--json", "incremental", &path_str(&src)])
        .env("TANDEM_FAULT_PAUSE", "vault-open")
        .output()
        .expect("run tandem");
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("TDM2125W") && stderr(&out).contains("did not answer within 2 s"),
        "{}",
        stderr(&out)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(summary["backed_up"].as_u64().unwrap() >= 1, "{summary}");

    // Answering again, the vault catches up: with the server gone, the file
    // backed up during the outage comes back from the vault alone.
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    primary.kill();
    assert_restored_from_the_vault_alone(&client, &src.join("new-while-hung"), work.path());
}

#[test]
fn a_vault_share_that_stops_answering_during_a_backup_or_its_sync_is_given_up_and_catches_up_later()
{
    let (mut primary, client, work, src) = dave_backed_up_with_a_vault();
    client.add_options("vault_timeout_seconds = 2\n");

    // The vault opens, then its share stops answering: first as the backup
    // stores its copy of the new data there, then, in the next backup, as
    // the sync stores the versions it pulled (fault points that block for
    // ten minutes). Each backup completes on the server without waiting
    // for the blocked store (no sync, no logoff), says so, and leaves the
    // vault marked as behind.
    for (point, file, doing) in [
        (
            "vault-store",
            "new-while-hung",
            "while storing a copy of this backup's data",
        ),
        (
            "vault-pull-store",
            "new-while-sync-hung",
            "while storing synchronised versions",
        ),
    ] {
        std::fs::write(src.join(file), b"new").unwrap();
        let started = std::time::Instant::now();
        let out = client
            .command(&["--json", "incremental", &path_str(&src)])
            .env("TANDEM_FAULT_PAUSE", point)
            .output()
            .expect("run tandem");
        // Not a speed check: the blocked store ends only after ten minutes.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(300),
            "the command waited for the blocked store ({point})"
        );
        assert_eq!(code(&out), 8, "{point}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("TDM2125W") && err.contains(&format!("did not answer within 2 s {doing}")),
            "{point}: {err}"
        );
        assert!(
            !err.contains("TDM2123I"),
            "{point}: no sync completed: {err}"
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["failed"], 0, "{summary}");
        assert!(summary["backed_up"].as_u64().unwrap() >= 1, "{summary}");
        assert!(client.error_log().contains(doing));
        assert_eq!(
            vault_state(&client)["state"],
            "synchronizing",
            "{point}: the vault must not claim to be in sync"
        );
    }

    // Answering again, the next backup's sync brings the vault what it
    // missed: with the server gone, both files come back from it alone.
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    assert_eq!(vault_state(&client)["state"], "synchronized");
    primary.kill();
    assert_restored_from_the_vault_alone(&client, &src.join("new-while-hung"), work.path());
    assert_restored_from_the_vault_alone(&client, &src.join("new-while-sync-hung"), work.path());
}

/// Runs `args` with the vault paused for ten minutes at fault point
/// `point` (a share that stops answering); checks the command did not wait
/// for it and returns its output.
fn run_with_vault_hung_at(client: &TestClient, point: &str, args: &[&str]) -> std::process::Output {
    let started = std::time::Instant::now();
    let out = client
        .command(args)
        .env("TANDEM_FAULT_PAUSE", point)
        .output()
        .expect("run tandem");
    // Not a speed check: the paused call ends only after ten minutes.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(300),
        "{args:?} waited for the vault paused at {point}"
    );
    out
}

fn run_with_vault_reads_hung(client: &TestClient, args: &[&str]) -> std::process::Output {
    run_with_vault_hung_at(client, "read-chunks", args)
}

#[test]
fn a_vault_share_that_stops_answering_during_a_restore_or_a_push_is_given_up() {
    let (mut primary, client, work, src) = dave_backed_up_with_a_vault();
    client.add_options("vault_timeout_seconds = 2\n");
    let stops = "did not answer within 2 s while reading stored data";

    // Beside the server, the share stops in the middle of the vault's
    // answer: what the vault sent is kept, the rest comes from the server,
    // byte for byte, nothing is half restored, and the command says why.
    std::fs::create_dir_all(src.join("bulk")).unwrap();
    for i in 0..3u64 {
        let data = random_bytes(950 + i, 8 << 20);
        std::fs::write(src.join(format!("bulk/part{i}.bin")), data).unwrap();
    }
    assert_success(&client.run(&["incremental", &path_str(&src)]), "backup");
    let out = work.path().join("restored-when-hung-mid-way");
    let restore = run_with_vault_hung_at(
        &client,
        "read-chunks:1",
        &[
            "--json",
            "restore",
            &format!("{}/*", path_str(&src)),
            &path_str(&out),
            "--subdir",
        ],
    );
    let err = stderr(&restore);
    assert_eq!(code(&restore), 8, "{err}");
    assert!(
        err.contains("TDM2131W") && err.contains("TDM2125W") && err.contains(stops),
        "{err}"
    );
    let stats: serde_json::Value = serde_json::from_slice(&restore.stdout).unwrap();
    assert_eq!(stats["failed"], 0, "{stats}");
    assert!(
        stats["sources"]["vault_bytes"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(
        stats["sources"]["server_bytes"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert_same_tree(&src, &out);
    client.assert_logged("TDM2125W");

    // With the server down the vault is all there is: the restore ends,
    // naming why each file could not be restored, instead of waiting.
    primary.kill();
    let alone = run_with_vault_reads_hung(
        &client,
        &[
            "restore",
            &format!("{}/*", path_str(&src)),
            &path_str(&work.path().join("alone-while-hung")),
            "--subdir",
        ],
    );
    let err = stderr(&alone);
    assert_ne!(code(&alone), 0, "{err}");
    assert!(err.contains("TDM2121W") && err.contains(stops), "{err}");

    // A backup into the vault alone whose store stops answering ends,
    // saying so, instead of waiting.
    std::fs::write(src.join("new-while-away"), b"new").unwrap();
    let upload = run_with_vault_hung_at(&client, "store-upload", &["incremental", &path_str(&src)]);
    let err = stderr(&upload);
    assert_ne!(code(&upload), 0, "{err}");
    assert!(
        err.contains("did not answer within 2 s while storing uploaded data"),
        "{err}"
    );

    // A backup while the server is down goes to the vault; the push of
    // it, when the server is back, stops with the vault's reads and is
    // done by the next command.
    assert_success(
        &client.run(&["incremental", &path_str(&src)]),
        "the backup into the vault alone",
    );
    primary.restart();
    let pushed_while_hung = run_with_vault_reads_hung(&client, &["query", "filespace"]);
    let err = stderr(&pushed_while_hung);
    assert_eq!(code(&pushed_while_hung), 8, "{err}");
    assert!(err.contains("TDM2125W") && err.contains(stops), "{err}");
    assert_success(&client.run(&["query", "filespace"]), "the next command");
    assert_eq!(vault_state(&client)["state"], "synchronized");
    let without_vault = TestClient::new(&primary, "dave", "dave-password");
    let from_server = work.path().join("from-server");
    assert_success(
        &without_vault.run(&[
            "restore",
            &path_str(&src.join("new-while-away")),
            &format!("{}/", path_str(&from_server)),
        ]),
        "restore of the pushed file from the server",
    );
    assert_eq!(
        std::fs::read(from_server.join("new-while-away")).unwrap(),
        b"new"
    );
}

#[test]
fn a_second_installation_on_the_same_node_and_vault_is_stopped_until_accepted() {
    let mut primary = TestServer::start("PRIMARY");
    primary.register("erin", "erin-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    let first = TestClient::new(&primary, "erin", "erin-password");
    let second = TestClient::new(&primary, "erin", "erin-password");
    let vault = with_vault(&first, work.path());
    second.add_options(&format!("vault_dir = \"{}\"\n", vault.display()));
    first.json(&["incremental", &path_str(&src)]);

    // The second machine finds a vault it never wrote: it stops, writes
    // nothing, and says what to do.
    let stopped = second.run(&["incremental", &path_str(&src)]);
    assert_eq!(code(&stopped), 12, "{}", stderr(&stopped));
    assert!(
        stderr(&stopped).contains("TDM2127E") && stderr(&stopped).contains("set vault --accept"),
        "{}",
        stderr(&stopped)
    );
    assert!(second.error_log().contains("TDM2127E"));
    let state = second.json(&["query", "vault"]);
    assert_eq!(state["second_installation"], true, "{state}");

    // Accepted, it works; now the first machine is the one that stops.
    let accepted = second.run(&["set", "vault", "--accept"]);
    assert_success(&accepted, "set vault --accept");
    assert!(
        stderr(&accepted).contains("revision"),
        "{}",
        stderr(&accepted)
    );
    assert!(second.error_log().contains("TDM2128I"));
    std::fs::write(src.join("from-second.txt"), b"second machine\n").unwrap();
    let r = second.json(&["incremental", &path_str(&src)]);
    assert_eq!(r["failed"], 0, "{r}");
    let again = first.run(&["incremental", &path_str(&src)]);
    assert_eq!(code(&again), 12, "{}", stderr(&again));
    assert!(stderr(&again).contains("TDM2127E"), "{}", stderr(&again));
    primary.kill();
}

#[test]
fn versions_planted_in_the_vault_reach_the_server_only_when_the_operator_vouches_for_them() {
    let mut primary = TestServer::start("PRIMARY");
    primary.register("judy", "judy-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    let client = TestClient::new(&primary, "judy", "judy-password");
    let vault = with_vault(&client, work.path());
    client.json(&["incremental", &path_str(&src)]);
    assert_eq!(vault_state(&client)["state"], "synchronized");

    // Someone else who can write the vault directory (here another
    // installation of the node, with the primary down) puts a version there.
    let planter = TestClient::new(&primary, "judy", "judy-password");
    planter.add_options(&format!("vault_dir = \"{}\"\n", vault.display()));
    assert_success(&planter.run(&["set", "vault", "--accept"]), "accept");
    primary.kill();
    let planted = work.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    std::fs::write(planted.join("payload.sh"), b"#!/bin/sh\necho planted\n").unwrap();
    let into_vault = planter.run(&["incremental", &path_str(&planted)]);
    assert_success(&into_vault, "the planter's backup into the vault alone");

    // The client is stopped (second installation); an operator who does not
    // look closely accepts. Still, nothing it did not write is sent.
    primary.restart();
    let stopped = client.run(&["incremental", &path_str(&src)]);
    assert_eq!(code(&stopped), 12, "{}", stderr(&stopped));
    assert_success(&client.run(&["set", "vault", "--accept"]), "accept");
    let state = vault_state(&client);
    assert!(
        state["versions_unvouched"].as_u64().unwrap() >= 1,
        "{state}"
    );
    assert_eq!(state["versions_to_send"], 0, "{state}");
    let next = client.run(&["incremental", &path_str(&src)]);
    assert_eq!(code(&next), 8, "{}", stderr(&next));
    assert!(stderr(&next).contains("TDM2137W"), "{}", stderr(&next));
    client.assert_logged("TDM2137W");
    let on_server = client.run(&["query", "backup", &path_str(&planted.join("payload.sh"))]);
    assert!(
        !String::from_utf8_lossy(&on_server.stdout).contains("payload.sh"),
        "a planted version reached the server: {}",
        String::from_utf8_lossy(&on_server.stdout)
    );
    // It stays in the vault, reported again at the next sync.
    let again = client.run(&["incremental", &path_str(&src)]);
    assert!(stderr(&again).contains("TDM2137W"), "{}", stderr(&again));

    // The operator checks and vouches for the vault's versions: they go.
    assert_success(&client.run(&["set", "vault", "--resend"]), "resend");
    let sent = client.run(&["incremental", &path_str(&src)]);
    assert_success(&sent, "incremental after --resend");
    assert!(!stderr(&sent).contains("TDM2137W"), "{}", stderr(&sent));
    let on_server = client.json(&["query", "backup", &path_str(&planted.join("payload.sh"))]);
    assert_eq!(on_server.as_array().unwrap().len(), 1, "{on_server}");
    let state = vault_state(&client);
    assert_eq!(state["versions_unvouched"], 0, "{state}");
    assert_eq!(state["state"], "synchronized", "{state}");
    primary.kill();
}

/// Rows of the server's (or vault's) catalog at `dir`: (name, mode, backup time).
fn catalog_rows(dir: &Path, name: &str) -> Vec<(u32, i64)> {
    let catalog = rusqlite::Connection::open(dir.join("catalog.db")).unwrap();
    let mut stmt = catalog
        .prepare("SELECT mode, backup_ns FROM objects WHERE name = ?1 ORDER BY backup_ns")
        .unwrap();
    stmt.query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn versions_changed_or_planted_in_the_vault_catalog_never_reach_the_server() {
    let mut primary = TestServer::start("PRIMARY");
    primary.register("kate", "kate-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    let client = TestClient::new(&primary, "kate", "kate-password");
    let vault = with_vault(&client, work.path());
    client.json(&["incremental", &path_str(&src)]);

    // Backups to the vault alone while the primary is down.
    primary.kill();
    std::fs::write(src.join("ours.txt"), b"backed up while away\n").unwrap();
    std::fs::write(src.join("tampered.sh"), b"#!/bin/sh\necho ours\n").unwrap();
    let offline = client.json(&["incremental", &path_str(&src)]);
    assert_eq!(offline["failed"], 0, "{offline}");

    // Whoever can write the vault changes one of our versions (setuid) and
    // plants another beside it, in the vault's catalog itself.
    {
        let catalog = rusqlite::Connection::open(vault.join("catalog.db")).unwrap();
        let changed = catalog
            .execute(
                "UPDATE objects SET mode = mode | 2048 WHERE name = 'tampered.sh' AND active = 1",
                [],
            )
            .unwrap();
        assert_eq!(changed, 1);
        let planted = catalog
            .execute(
                "INSERT INTO objects (object_id, filespace_id, dir_id, name, kind, size, mode,
                   mtime_ns, uid, gid, link_target, backup_ns, active, deactivated_ns, expiring,
                   manifest, extra)
                 SELECT randomblob(16), filespace_id, dir_id, 'planted.sh', kind, size, mode,
                   mtime_ns, uid, gid, link_target, backup_ns, 1, 0, 0, manifest, extra
                 FROM objects WHERE name = 'ours.txt' AND active = 1",
                [],
            )
            .unwrap();
        assert_eq!(planted, 1);
        // A copy of one of ours under a new id, a moment later: an extra
        // version of ours.txt on the server would push its history out.
        let copied = catalog
            .execute(
                "INSERT INTO objects (object_id, filespace_id, dir_id, name, kind, size, mode,
                   mtime_ns, uid, gid, link_target, backup_ns, active, deactivated_ns, expiring,
                   manifest, extra)
                 SELECT randomblob(16), filespace_id, dir_id, name, kind, size, mode,
                   mtime_ns, uid, gid, link_target, backup_ns + 1000, 0, backup_ns + 2000, 0,
                   manifest, extra
                 FROM objects WHERE name = 'ours.txt' AND active = 1",
                [],
            )
            .unwrap();
        assert_eq!(copied, 1);
    }
    // Another backup to the vault alone makes the planted version inactive
    // (no such file here): that records its id as changed by this client,
    // which must not vouch for its content.
    let again = client.json(&["incremental", &path_str(&src)]);
    assert_eq!(again["failed"], 0, "{again}");
    let state = vault_state(&client);
    assert_eq!(state["versions_unvouched"], 3, "{state}");

    let back = now_ns();
    primary.restart();
    let next = client.run(&["incremental", &path_str(&src)]);
    assert_eq!(code(&next), 8, "{}", stderr(&next));
    assert!(stderr(&next).contains("TDM2137W"), "{}", stderr(&next));
    // Ours arrived with its time from the vault. The changed one did not:
    // the second backup to the vault found its attributes differing from
    // the file's and stored it again, and only that version arrived. The
    // planted one and the copy are nowhere on the server. All three stay in
    // the vault, counted, until the operator decides.
    let server = primary.data_dir();
    let ours = catalog_rows(server, "ours.txt");
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert!(ours[0].1 < back, "{ours:?}");
    let tampered = catalog_rows(server, "tampered.sh");
    assert_eq!(tampered.len(), 1, "{tampered:?}");
    assert_eq!(tampered[0].0 & 0o4000, 0, "{tampered:?}");
    assert!(catalog_rows(server, "planted.sh").is_empty());
    let in_vault = catalog_rows(&vault, "tampered.sh");
    assert!(
        in_vault.iter().any(|(mode, _)| mode & 0o4000 != 0),
        "{in_vault:?}"
    );
    assert_eq!(catalog_rows(&vault, "ours.txt").len(), 2);
    assert_eq!(vault_state(&client)["versions_unvouched"], 3);
    assert!(catalog_rows(server, "planted.sh").is_empty());
    primary.kill();
}

#[test]
fn an_earlier_clients_record_in_the_vault_is_noted_not_taken_and_its_offline_backups_wait_for_the_operator()
 {
    let mut primary = TestServer::start("PRIMARY");
    primary.register("liam", "liam-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    let client = TestClient::new(&primary, "liam", "liam-password");
    let vault = with_vault(&client, work.path());
    client.json(&["incremental", &path_str(&src)]);
    primary.kill();
    let away = now_ns();
    std::fs::write(
        src.join("while-away.txt"),
        b"backed up to the vault alone\n",
    )
    .unwrap();
    client.json(&["incremental", &path_str(&src)]);

    // As an earlier client left things: no records in state_dir, its record
    // of the last pull in the vault directory (the versions from before).
    let record = pull_record(&client);
    let server_guid = std::fs::read(&record).unwrap()[8..24].to_vec();
    for entry in std::fs::read_dir(client.dir.path().join("state")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("vault-own-") || name.starts_with("vault-pulled-") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let catalog = rusqlite::Connection::open(vault.join("catalog.db")).unwrap();
    let mut legacy = b"TDMPULL1".to_vec();
    legacy.extend_from_slice(&server_guid);
    let mut stmt = catalog
        .prepare("SELECT object_id FROM objects WHERE backup_ns < ?1")
        .unwrap();
    for id in stmt.query_map([away], |r| r.get::<_, Vec<u8>>(0)).unwrap() {
        legacy.extend_from_slice(&id.unwrap());
    }
    drop(stmt);
    drop(catalog);
    std::fs::write(vault.join("pulled-ids.bin"), &legacy).unwrap();

    primary.restart();
    // The record is the vault's word: noted, not taken. The backup made
    // alone waits in the vault, counted, until the operator vouches for it.
    // (The file goes locally, or this backup would store it anew.)
    std::fs::remove_file(src.join("while-away.txt")).unwrap();
    let next = client.run(&["incremental", &path_str(&src)]);
    assert_eq!(code(&next), 8, "{}", stderr(&next));
    assert!(stderr(&next).contains("TDM2139W"), "{}", stderr(&next));
    assert!(stderr(&next).contains("TDM2137W"), "{}", stderr(&next));
    client.assert_logged("TDM2139W");
    assert!(catalog_rows(primary.data_dir(), "while-away.txt").is_empty());
    let waiting = vault_state(&client);
    assert!(
        waiting["versions_unvouched"].as_u64().unwrap() >= 1,
        "{waiting}"
    );

    assert_success(
        &client.run(&["set", "vault", "--resend"]),
        "set vault --resend",
    );
    assert!(!vault.join("pulled-ids.bin").exists());
    let sent = client.run(&["incremental", &path_str(&src)]);
    assert_success(&sent, "the command after --resend");
    let there = catalog_rows(primary.data_dir(), "while-away.txt");
    assert_eq!(there.len(), 1, "{there:?}");
    assert!(there[0].1 < now_ns() && there[0].1 > away, "{there:?}");
    let state = vault_state(&client);
    assert_eq!(state["state"], "synchronized", "{state}");
    assert_eq!(state["versions_unvouched"], 0, "{state}");
    primary.kill();
}

#[test]
fn a_vault_put_in_place_of_ours_cannot_pass_its_versions_off_as_an_earlier_clients() {
    let mut primary = TestServer::start("PRIMARY");
    primary.register("mona", "mona-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    let client = TestClient::new(&primary, "mona", "mona-password");
    let vault = with_vault(&client, work.path());
    client.json(&["incremental", &path_str(&src)]);

    // Whoever can write the vault's directory builds a vault of their own
    // for the node (a GUID of its own), with a file the server never had,
    // then makes it look new (revision 0) and adds an earlier client's
    // record of pulls that names none of its versions.
    let elsewhere = tempfile::tempdir().unwrap();
    let planted_src = elsewhere.path().join("src");
    std::fs::create_dir_all(&planted_src).unwrap();
    std::fs::write(planted_src.join("planted.sh"), b"#!/bin/sh\nid\n").unwrap();
    let other = TestClient::new(&primary, "mona", "mona-password");
    let fake = with_vault(&other, elsewhere.path());
    primary.kill();
    other.json(&["incremental", &path_str(&planted_src)]);
    assert_eq!(catalog_rows(&fake, "planted.sh").len(), 1);
    let state_file = fake.join("sync-state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    state["revision"] = 0.into();
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
    let mut legacy = b"TDMPULL1".to_vec();
    legacy.extend_from_slice(&[7u8; 16]);
    std::fs::write(fake.join("pulled-ids.bin"), &legacy).unwrap();
    std::fs::rename(&vault, work.path().join("vault-moved")).unwrap();
    std::fs::rename(&fake, &vault).unwrap();

    primary.restart();
    // The backup writes to the vault too (a new file), which once made this
    // client record the vault as one it writes to before the sync ran.
    std::fs::write(src.join("new-today.txt"), b"written after the swap\n").unwrap();
    let next = client.run(&["incremental", &path_str(&src)]);
    assert_eq!(code(&next), 8, "{}", stderr(&next));
    assert!(stderr(&next).contains("TDM2139W"), "{}", stderr(&next));
    assert!(stderr(&next).contains("TDM2137W"), "{}", stderr(&next));
    client.assert_logged("TDM2139W");
    assert!(catalog_rows(primary.data_dir(), "planted.sh").is_empty());
    assert_eq!(catalog_rows(primary.data_dir(), "new-today.txt").len(), 1);
    // From then on only this client's records count: the planted version
    // is still counted and never sent.
    let again = client.run(&["incremental", &path_str(&src)]);
    assert_eq!(code(&again), 8, "{}", stderr(&again));
    assert!(stderr(&again).contains("TDM2137W"), "{}", stderr(&again));
    assert!(catalog_rows(primary.data_dir(), "planted.sh").is_empty());
    primary.kill();
}

/// Starts `args`, lets it run for `after`, then SIGKILLs it (if it still
/// runs) and reaps it.
fn kill_after(client: &TestClient, args: &[&str], after: std::time::Duration) {
    let mut child = client
        .command(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tandem");
    std::thread::sleep(after);
    stop_child(&mut child, nix::sys::signal::Signal::SIGKILL);
}

#[test]
fn clients_killed_during_syncs_and_vault_writes_lose_nothing_and_the_tiers_converge() {
    let mut primary = TestServer::start("PRIMARY");
    primary.register("frank", "frank-password");
    let client = TestClient::new(&primary, "frank", "frank-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    for i in 0..4u64 {
        std::fs::write(
            src.join(format!("big/part-{i}.bin")),
            random_bytes(100 + i, 12 * 1024 * 1024),
        )
        .unwrap();
    }
    with_vault(&client, work.path());
    let backup = ["incremental", &path_str(&src)];

    // Killed at points through the backup and the vault's pull.
    for ms in [150u64, 500, 1200, 2500] {
        kill_after(&client, &backup, std::time::Duration::from_millis(ms));
    }
    client.json(&backup);
    assert_eq!(vault_state(&client)["state"], "synchronized");

    // Killed while backing up into the vault alone.
    primary.kill();
    for i in 0..2u64 {
        std::fs::write(
            src.join(format!("big/away-{i}.bin")),
            random_bytes(200 + i, 12 * 1024 * 1024),
        )
        .unwrap();
    }
    for ms in [200u64, 700] {
        kill_after(&client, &backup, std::time::Duration::from_millis(ms));
    }
    client.json(&backup);

    // The primary returns; killed while the vault's versions go to it.
    primary.restart();
    kill_after(&client, &backup, std::time::Duration::from_millis(400));
    let settled = client.json(&backup);
    assert_eq!(settled["failed"], 0, "{settled}");
    assert_eq!(vault_state(&client)["state"], "synchronized");

    // Both tiers hold the whole tree: the primary restores it…
    let from_primary = work.path().join("from-primary");
    restore_whole_tree(&client, &src, &from_primary);
    // …and so does the vault alone.
    primary.kill();
    let from_vault = work.path().join("from-vault");
    restore_whole_tree(&client, &src, &from_vault);
}

#[test]
fn versions_the_server_lost_are_kept_in_the_vault_and_can_be_sent_back() {
    let mut primary = TestServer::start("PRIMARY");
    primary.register("gina", "gina-password");
    let client = TestClient::new(&primary, "gina", "gina-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    with_vault(&client, work.path());
    client.json(&["incremental", &path_str(&src)]);
    let spaces = client.json(&["query", "filespace"]);
    let filespace = spaces[0]["name"].as_str().expect("filespace").to_string();

    // The server loses the node's data (an operator's deletion stands in
    // for a catalog restored from an older copy): the vault keeps it.
    let gone = primary.admin_json(&["delete", "filespace", "gina", &filespace, "--yes"]);
    assert!(gone["versions_deleted"].as_u64().unwrap() > 30, "{gone}");
    let out = client.run(&["incremental", &path_str(&src.join("empty"))]);
    assert_eq!(code(&out), 8, "{}", stderr(&out));
    assert!(stderr(&out).contains("TDM2129W"), "{}", stderr(&out));

    // Sent back on request, before the next command reaches the server.
    let resend = client.run(&["set", "vault", "--resend"]);
    assert_success(&resend, "set vault --resend");
    let out = work.path().join("restored");
    restore_whole_tree(&client, &src, &out);
    primary.kill();
}

#[test]
fn a_restore_takes_what_the_vault_holds_from_it_and_the_rest_from_the_server() {
    let primary = TestServer::start("PRIMARY");
    primary.register("erin", "erin-password");
    let client = TestClient::new(&primary, "erin", "erin-password");
    let work = tempfile::tempdir().unwrap();
    let vault = with_vault(&client, work.path());
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("old")).unwrap();
    std::fs::create_dir_all(src.join("new")).unwrap();
    let kept = random_bytes(31, 300_000);
    let damaged = random_bytes(32, 200_000);
    std::fs::write(src.join("old/kept.bin"), &kept).unwrap();
    std::fs::write(src.join("old/damaged.bin"), &damaged).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    assert_eq!(vault_state(&client)["state"], "synchronized");

    // Another installation of the node without the vault backs up a file
    // the vault never sees.
    let elsewhere = TestClient::new(&primary, "erin", "erin-password");
    let fresh = random_bytes(33, 250_000);
    std::fs::write(src.join("new/fresh.bin"), &fresh).unwrap();
    elsewhere.json(&["incremental", &path_str(&src)]);
    // And a chunk in the vault goes bad behind its back.
    damage_container_bytes(&vault, &damaged[100_000..100_064]);

    let out = work.path().join("out");
    let restore = run_restore_json(&client, &src, &out);
    let err = stderr(&restore);
    assert_eq!(
        code(&restore),
        8,
        "a warning for the damaged vault chunk: {err}"
    );
    assert!(err.contains("TDM2126I"), "{err}");
    assert!(
        err.contains("TDM2131W") && err.contains("1 file(s)"),
        "the damaged vault chunk is named and its file comes from the server: {err}"
    );
    let stats: serde_json::Value =
        serde_json::from_slice(&restore.stdout).expect("restore summary");
    assert_eq!(stats["failed"], 0, "{stats}");
    assert_eq!(stats["sources"]["vault_files"], 1, "{stats}");
    assert_eq!(stats["sources"]["vault_bytes"], 300_000, "{stats}");
    assert_eq!(stats["sources"]["server_files"], 2, "{stats}");
    assert_eq!(stats["sources"]["server_bytes"], 450_000, "{stats}");
    assert_same_tree(&src, &out);
    client.assert_logged("TDM2131W");
    // The vault's damaged chunk was replaced with the server's copy.
    assert!(err.contains("TDM2134I"), "{err}");
    client.assert_logged("TDM2134I");

    // The next restore takes the repaired file from the vault, and the
    // summary says where the data came from.
    let out2 = work.path().join("out2");
    let text = client.run(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&out2),
        "--subdir",
    ]);
    assert_success(&text, "restore after the vault's repair");
    assert!(!stderr(&text).contains("TDM2131W"), "{}", stderr(&text));
    let shown = String::from_utf8_lossy(&text.stdout);
    assert!(
        shown.contains("Data from the local vault") && shown.contains("Data from the server"),
        "{shown}"
    );
    assert_same_tree(&src, &out2);
    let third = client.json(&[
        "restore",
        &format!("{}/*", path_str(&src)),
        &path_str(&work.path().join("out3")),
        "--subdir",
    ]);
    assert_eq!(third["sources"]["vault_files"], 2, "{third}");
    assert_eq!(third["sources"]["server_files"], 1, "{third}");
}

/// Bytes in the containers of the store at `dir`.
fn stored_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("containers"))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_write_stops_a_sync_in_progress_and_a_later_sync_completes_it() {
    let mut primary = TestServer::start("PRIMARY");
    primary.register("gina", "gina-password");
    let client = TestClient::new(&primary, "gina", "gina-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..16u64 {
        std::fs::write(
            src.join(format!("part-{i}.bin")),
            random_bytes(200 + i, 16 * 1024 * 1024),
        )
        .unwrap();
    }
    client.json(&["incremental", &path_str(&src)]);

    // A vault added now is filled by the next command's sync: a long pull.
    let vault = with_vault(&client, work.path());
    let syncing = client
        .command(&["incremental", &path_str(&src)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tandem");
    assert!(
        wait_until(std::time::Duration::from_secs(120), || {
            stored_bytes(&vault) > 8 * 1024 * 1024
        }),
        "the pull into the new vault never got going"
    );

    // A backup while that sync runs: the sync steps aside and the backup
    // writes to both tiers.
    let later = work.path().join("later");
    std::fs::create_dir_all(&later).unwrap();
    std::fs::write(later.join("new.bin"), random_bytes(299, 100_000)).unwrap();
    let backup = client.run(&["incremental", &path_str(&later)]);
    assert_success(&backup, "backup during a sync");
    let err = stderr(&backup);
    assert!(!err.contains("TDM2125W"), "the vault was used: {err}");
    let first = syncing.wait_with_output().expect("first command");
    assert_success(&first, "the command whose sync stepped aside");
    assert!(stderr(&first).contains("TDM2132I"), "{}", stderr(&first));
    client.assert_logged("TDM2132I");

    // The backup's own sync went on from where the first stopped.
    assert_eq!(vault_state(&client)["state"], "synchronized");

    // A request left by a waiter that died stops no later sync.
    std::fs::write(vault.join("write-waiting"), b"").unwrap();
    std::fs::write(later.join("newer.bin"), random_bytes(298, 50_000)).unwrap();
    let again = client.run(&["incremental", &path_str(&later)]);
    assert_success(&again, "backup after a stale request");
    assert!(!stderr(&again).contains("TDM2132I"), "{}", stderr(&again));
    assert_eq!(vault_state(&client)["state"], "synchronized");
    primary.kill();
    restore_whole_tree(&client, &src, &work.path().join("out-src"));
    restore_whole_tree(&client, &later, &work.path().join("out-later"));
}

#[test]
fn the_space_of_versions_removed_from_the_vault_is_given_back() {
    let mut primary = TestServer::start("PRIMARY");
    primary.register("hank", "hank-password");
    let client = TestClient::new(&primary, "hank", "hank-password");
    let work = tempfile::tempdir().unwrap();
    let vault = with_vault(&client, work.path());
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), random_bytes(41, 8 * 1024 * 1024)).unwrap();
    std::fs::write(src.join("keep.bin"), random_bytes(42, 300_000)).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    // A second backup seals the container the first one filled.
    std::fs::write(src.join("later.bin"), random_bytes(43, 200_000)).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    let before = stored_bytes(&vault);
    assert!(before > 8 * 1024 * 1024, "{before}");

    let deleted = client.run(&[
        "delete",
        "backup",
        &path_str(&src.join("big.bin")),
        "--deltype",
        "all",
        "--yes",
    ]);
    assert_success(&deleted, "delete backup");
    assert!(
        stderr(&deleted).contains("TDM2133I"),
        "{}",
        stderr(&deleted)
    );
    let after = stored_bytes(&vault);
    assert!(
        after + 7 * 1024 * 1024 < before,
        "the vault gave back the deleted file's space: {before} -> {after}"
    );
    client.assert_logged("TDM2133I");

    // What is left is whole: restored from the vault alone.
    primary.kill();
    std::fs::remove_file(src.join("big.bin")).unwrap();
    restore_whole_tree(&client, &src, &work.path().join("out"));
}

#[test]
fn a_pull_frees_the_space_of_deleted_versions_and_a_lost_pull_record_resends_nothing() {
    let primary = TestServer::start("PRIMARY");
    primary.register("ivan", "ivan-password");
    let client = TestClient::new(&primary, "ivan", "ivan-password");
    let work = tempfile::tempdir().unwrap();
    let vault = with_vault(&client, work.path());
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let big = src.join("big.bin");
    std::fs::write(&big, random_bytes(51, 8 * 1024 * 1024)).unwrap();
    std::fs::write(src.join("keep.bin"), random_bytes(52, 300_000)).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    // Data stored after it, which a compaction keeps.
    std::fs::write(src.join("later.bin"), random_bytes(53, 200_000)).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    let before = stored_bytes(&vault);
    assert!(before > 8 * 1024 * 1024, "{before}");

    // The big file shrinks, so its big version is inactive; another
    // installation of the node deletes the inactive versions on the
    // server, and the next sync removes it from the vault and gives its
    // space back. (An *active* version the server drops is kept: TDM2129W.)
    std::fs::write(&big, b"small now\n").unwrap();
    client.json(&["incremental", &path_str(&src)]);
    let elsewhere = TestClient::new(&primary, "ivan", "ivan-password");
    let deleted = elsewhere.run(&[
        "delete",
        "backup",
        &path_str(&big),
        "--deltype",
        "inactive",
        "--yes",
    ]);
    assert_success(&deleted, "delete backup elsewhere");
    std::fs::write(src.join("newest.bin"), random_bytes(54, 1000)).unwrap();
    let next = client.run(&["incremental", &path_str(&src)]);
    assert_success(&next, "incremental after the deletion");
    assert!(stderr(&next).contains("TDM2133I"), "{}", stderr(&next));
    let after = stored_bytes(&vault);
    assert!(
        after + 7 * 1024 * 1024 < before,
        "the pull gave back the deleted file's space: {before} -> {after}"
    );

    // The client's record of the last pull is lost: the sync has nothing it
    // can vouch for to send (and the server lacks nothing the vault holds),
    // pulls again and records the pull. The deleted file is not sent back.
    let all = format!("{}/*", path_str(&src));
    let listed = client.json(&["query", "backup", &all, "--inactive"]);
    let logged_before = client.error_log().lines().count();
    let record = pull_record(&client);
    std::fs::remove_file(&record).unwrap();
    let again = client.run(&["incremental", &path_str(&src)]);
    assert_success(&again, "incremental without the pull record");
    let log = client.error_log();
    let new_lines: Vec<&str> = log.lines().skip(logged_before).collect();
    // A sync that moves nothing logs nothing.
    assert!(
        !new_lines.iter().any(|l| l.contains("TDM2123I")),
        "{new_lines:?}"
    );
    assert!(record.exists());
    assert_eq!(vault_state(&client)["state"], "synchronized");
    assert_eq!(
        client.json(&["query", "backup", &all, "--inactive"]),
        listed
    );
    let big_versions = client.json(&["query", "backup", &path_str(&big), "--inactive"]);
    assert_eq!(big_versions.as_array().unwrap().len(), 1, "{big_versions}");

    // What is left is whole: restored from the vault alone.
    drop(primary);
    restore_whole_tree(&client, &src, &work.path().join("out"));
}

#[test]
fn a_chunk_damaged_in_the_vault_and_on_the_server_is_named_and_nothing_half_restored() {
    let primary = TestServer::start("PRIMARY");
    primary.register("hank", "hank-password");
    let client = TestClient::new(&primary, "hank", "hank-password");
    let work = tempfile::tempdir().unwrap();
    let vault = with_vault(&client, work.path());
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let whole = random_bytes(41, 200_000);
    let broken = random_bytes(42, 200_000);
    std::fs::write(src.join("whole.bin"), &whole).unwrap();
    std::fs::write(src.join("broken.bin"), &broken).unwrap();
    client.json(&["incremental", &path_str(&src)]);
    assert_eq!(vault_state(&client)["state"], "synchronized");
    // The same chunk goes bad in both tiers.
    damage_container_bytes(&vault, &broken[100_000..100_064]);
    damage_container_bytes(primary.data.path(), &broken[100_000..100_064]);

    let out = work.path().join("out");
    let restore = run_restore_json(&client, &src, &out);
    let err = stderr(&restore);
    assert_eq!(code(&restore), 12, "the file no tier can give fails: {err}");
    assert!(err.contains("TDM2131W"), "the vault's copy is named: {err}");
    assert!(
        err.contains("TDM1020E") && err.contains("broken.bin"),
        "the file that cannot be restored is named: {err}"
    );
    assert!(
        err.contains("TDM2135W"),
        "the repair from the server fails and says so: {err}"
    );
    let stats: serde_json::Value =
        serde_json::from_slice(&restore.stdout).expect("restore summary");
    assert_eq!(stats["failed"], 1, "{stats}");
    assert_eq!(stats["sources"]["vault_files"], 1, "{stats}");
    assert_eq!(std::fs::read(out.join("whole.bin")).unwrap(), whole);
    assert!(
        !out.join("broken.bin").exists(),
        "no half-restored file is left in place"
    );
    let logged = client.logged_ids();
    assert!(
        logged.contains(&"TDM2131W".to_string()) && logged.contains(&"TDM2135W".to_string()),
        "{logged:?}"
    );
}

#[test]
fn a_refused_logon_creates_no_vault_and_leaves_an_existing_one_as_it_was() {
    let primary = TestServer::start("PRIMARY");
    primary.register("ivy", "ivy-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree(&src);
    // The vault is opened while the logon runs, but only one that exists:
    // a command the server refuses creates none.
    let refused = TestClient::new(&primary, "ivy", "not-the-password");
    let vault = with_vault(&refused, work.path());
    let out = refused.run(&["incremental", &path_str(&src)]);
    assert_ne!(code(&out), 0, "{}", stderr(&out));
    assert!(!vault.exists(), "a refused logon created the vault");

    let client = TestClient::new(&primary, "ivy", "ivy-password");
    with_vault(&client, work.path());
    client.json(&["incremental", &path_str(&src)]);
    assert_eq!(vault_state(&client)["state"], "synchronized");
    // Refused again, now with the vault there: it is left as it was, with
    // no request to a sync left behind.
    let again = refused.run(&["incremental", &path_str(&src)]);
    assert_ne!(code(&again), 0, "{}", stderr(&again));
    assert!(!vault.join("write-waiting").exists());
    std::fs::write(src.join("later.txt"), b"after the refused logons").unwrap();
    let next = client.json(&["incremental", &path_str(&src)]);
    assert_eq!(
        next["backed_up"], 2,
        "the new file and its directory: {next}"
    );
    assert_eq!(vault_state(&client)["state"], "synchronized");
    restore_whole_tree(&client, &src, &work.path().join("out"));
}

/// `make_tree` plus 40 MiB in five files, so a backup writes the vault in
/// several groups and a fault can land in the middle of it.
fn make_tree_with_bulk(src: &Path) {
    make_tree(src);
    std::fs::create_dir_all(src.join("bulk")).unwrap();
    for i in 0..5u64 {
        std::fs::write(
            src.join(format!("bulk/part{i}.bin")),
            random_bytes(900 + i, 8 << 20),
        )
        .unwrap();
    }
}

/// Runs `args` with the vault's container writes failing from the
/// `after`+1-th on, `times` times (`None`: every one).
fn run_with_failing_vault(
    client: &TestClient,
    args: &[&str],
    after: u32,
    times: Option<u32>,
) -> std::process::Output {
    let spec = match times {
        Some(times) => format!("container-write:{after}:{times}"),
        None => format!("container-write:{after}"),
    };
    client
        .command(args)
        .env("TANDEM_FAULT_FAIL", spec)
        .output()
        .expect("run tandem")
}

#[test]
fn a_vault_write_failing_mid_backup_leaves_the_server_complete_and_the_vault_catches_up() {
    let mut primary = TestServer::start("PRIMARY");
    primary.register("erin", "erin-password");
    let client = TestClient::new(&primary, "erin", "erin-password");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    make_tree_with_bulk(&src);
    let vault = with_vault(&client, work.path());

    // One write fails in the middle of the backup's copy: the copy stops,
    // says why, and the sync after the backup brings what it missed.
    let once = run_with_failing_vault(
        &client,
        &["--json", "incremental", &path_str(&src)],
        2,
        Some(1),
    );
    assert_success(&once, "backup with one failed vault write");
    assert!(
        stderr(&once).contains("did not take this backup's data")
            && stderr(&once).contains("injected failure")
            && stderr(&once).contains("TDM2123I"),
        "{}",
        stderr(&once)
    );
    assert_eq!(vault_state(&client)["state"], "synchronized");

    // The vault's disk keeps failing: the backup still completes on the
    // server, the failed sync is named, and the vault is marked failed.
    std::fs::write(src.join("bulk/new.bin"), random_bytes(950, 12 << 20)).unwrap();
    let failing = run_with_failing_vault(
        &client,
        &["--json", "incremental", &path_str(&src)],
        0,
        None,
    );
    assert_eq!(code(&failing), 8, "{}", stderr(&failing));
    let summary: serde_json::Value = serde_json::from_slice(&failing.stdout).unwrap();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(summary["backed_up"].as_u64().unwrap() >= 1, "{summary}");
    // The failure is named as the vault's, with its directory, not the server's.
    let warned = stderr(&failing);
    let sync_failed = warned
        .lines()
        .find(|l| l.contains("TDM2124W"))
        .unwrap_or_else(|| panic!("no TDM2124W: {warned}"));
    assert!(
        sync_failed.contains("injected failure")
            && sync_failed.contains(&format!("vault {}", path_str(&vault)))
            && !sync_failed.contains("failed on the server"),
        "{sync_failed}"
    );
    client.assert_logged("TDM2124W");
    let state = vault_state(&client);
    assert_eq!(state["state"], "failed", "{state}");

    // The disk works again: the next command syncs, and the vault alone
    // then restores everything byte for byte.
    let next = client.run(&["query", "filespace"]);
    assert_success(&next, "query after the disk recovered");
    assert!(stderr(&next).contains("TDM2123I"), "{}", stderr(&next));
    assert_eq!(vault_state(&client)["state"], "synchronized");
    primary.kill();
    let out = work.path().join("restored");
    let restored = restore_whole_tree(&client, &src, &out);
    assert_eq!(restored["failed"], 0, "{restored}");
}

#[test]
fn a_command_after_which_nothing_changed_on_the_server_moves_nothing_and_lists_nothing() {
    let primary = TestServer::start("PRIMARY");
    primary.register("olga", "olga-password");
    let client = TestClient::new(&primary, "olga", "olga-password");
    let work = tempfile::tempdir().unwrap();
    with_vault(&client, work.path());
    let src = work.path().join("src");
    make_tree(&src);
    client.json(&["incremental", &path_str(&src)]);
    // The file gets a second version, so it has an inactive one.
    let file = src.join("docs/sub 0/file-3.txt");
    std::fs::write(&file, b"changed\n").unwrap();
    client.json(&["incremental", &path_str(&src)]);
    let record = pull_record(&client);
    // Every pull writes the record anew (its inode may be reused, its
    // modification time is new).
    let written = |path: &Path| std::fs::metadata(path).unwrap().modified().unwrap();
    let pulled_at = written(&record);
    let matched = std::fs::read_dir(client.dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("vault-match-"))
        .expect("a clean sync records where the vault matched the server");

    // An incremental that changes nothing on the server: its sync asks for
    // the node's change token only, and the pull's record is not written
    // again (every pull replaces it whole).
    client.json(&["incremental", &path_str(&src)]);
    assert_eq!(written(&record), pulled_at, "no pull ran");
    assert_eq!(vault_state(&client)["state"], "synchronized");

    // Another installation of the node deletes the file's inactive version
    // on the server: the token changes, and the next sync pulls that.
    let elsewhere = TestClient::new(&primary, "olga", "olga-password");
    assert_success(
        &elsewhere.run(&[
            "delete",
            "backup",
            &path_str(&file),
            "--deltype",
            "inactive",
            "--yes",
        ]),
        "delete backup elsewhere",
    );
    let logged = client.error_log().lines().count();
    client.json(&["incremental", &path_str(&src)]);
    let pulled_again = written(&record);
    assert_ne!(pulled_again, pulled_at, "a pull ran");
    let log = client.error_log();
    let synced: Vec<&str> = log
        .lines()
        .skip(logged)
        .filter(|l| l.contains("TDM2123I"))
        .collect();
    assert!(
        synced.len() == 1 && synced[0].contains("1 removed"),
        "{log}"
    );
    assert!(matched.exists(), "recorded again after the clean pull");
    client.json(&["incremental", &path_str(&src)]);
    assert_eq!(written(&record), pulled_again, "nothing changed since");

    // The vault, alone, holds the file's one version left, as the server.
    drop(primary);
    let listed = client.json(&["query", "backup", &path_str(&file), "--inactive"]);
    assert_eq!(listed.as_array().expect("rows").len(), 1, "{listed}");
}
