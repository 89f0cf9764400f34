//! The real `tandem` client program with its own options file, state
//! directory and error log, and helpers to read what a command printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

use crate::{TestServer, bin};

/// A client with its own options file, state directory and error log.
#[derive(Debug)]
pub struct TestClient {
    /// Directory holding the options file and state.
    pub dir: TempDir,
    /// The options file.
    pub options: PathBuf,
}

impl TestClient {
    /// A client of `server` logging on as `node`, pinning its certificate.
    pub fn new(server: &TestServer, node: &str, password: &str) -> Self {
        Self::at(
            &server.name,
            &server.url(),
            &server.fingerprint(),
            node,
            password,
        )
    }

    /// A client of the server named `name` at `url`, pinning `fingerprint`
    /// (none when empty).
    pub fn at(name: &str, url: &str, fingerprint: &str, node: &str, password: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tandem-cli-")
            .tempdir()
            .expect("temp dir");
        let options = dir.path().join("tandem.toml");
        let pin = if fingerprint.is_empty() {
            String::new()
        } else {
            format!("server_fingerprint = \"{fingerprint}\"\n")
        };
        // The product's 1.5 s logon budget is for an idle server; on a
        // two-core machine running a dozen servers at once a logon (a
        // password hash) can take longer, and a refused or killed primary
        // still fails at once.
        let text = format!(
            "# test client\nnode_name = \"{node}\"\nserver_name = \"{name}\"\nserver_address = \"{url}\"\n{pin}password = \"{password}\"\nstate_dir = \"{}\"\nconnect_timeout_ms = 10000\n",
            dir.path().join("state").display()
        );
        std::fs::write(&options, text).expect("options file");
        // It holds the password: the owner's alone, as the client asks.
        std::fs::set_permissions(
            &options,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod options file");
        TestClient { dir, options }
    }

    /// Adds top-level lines to the options file, after its first line, so
    /// they stay top-level keys even when tables follow (as a user would).
    pub fn add_options(&self, lines: &str) {
        let text = std::fs::read_to_string(&self.options).expect("options");
        let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
        std::fs::write(&self.options, format!("{first}\n{lines}{rest}")).expect("options");
    }

    /// Runs `tandem --options FILE args...`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run tandem")
    }

    /// `tandem --options FILE args...`, not started (for a test that
    /// handles its output itself).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin("tandem"));
        command
            .arg("--options")
            .arg(&self.options)
            .args(args)
            .env_remove("TANDEM_OPTIONS")
            .stdin(Stdio::null());
        command
    }

    /// Runs with `--json`, asserts success, and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert_success(&out, &args.join(" "));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Restores everything under `src` into `to` (`--subdir`), asserts
    /// that no file failed and that `to` is byte-identical to `src`.
    pub fn restore_same(&self, src: &Path, to: &Path) {
        let restored = self.json(&[
            "restore",
            &format!("{}/*", path_str(src)),
            &path_str(to),
            "--subdir",
        ]);
        assert_eq!(restored["failed"], 0, "{restored}");
        crate::assert_same_tree(src, to);
    }

    /// Restores everything directly under `src` into `to`, expecting some
    /// of it to fail (exit 12); returns the client's stderr.
    pub fn restore_failing(&self, src: &Path, to: &Path) -> String {
        let out = self.run(&["restore", &format!("{}/*", path_str(src)), &path_str(to)]);
        assert_eq!(crate::code(&out), 12, "{}", crate::stderr(&out));
        crate::stderr(&out)
    }

    /// Runs `restore SOURCE DEST` into a fresh DEST each time until it
    /// succeeds, for at most 60 s: an object store that is back is asked
    /// again only after a few seconds. Panics when no run succeeded.
    pub fn restore_once_answered(&self, source: &str, dest: &Path) {
        let back = crate::wait_until(std::time::Duration::from_secs(60), || {
            let _ = std::fs::remove_dir_all(dest);
            self.run(&["restore", source, &path_str(dest)])
                .status
                .success()
        });
        assert!(back, "no restore of {source} succeeded within 60 s");
    }

    /// The error log's content.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state").join("dsierror.log"))
            .unwrap_or_default()
    }

    /// The message ids in the error log, in order.
    pub fn logged_ids(&self) -> Vec<String> {
        self.error_log()
            .lines()
            .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
            .collect()
    }

    /// Asserts that message `id` is in the error log, printing the log
    /// otherwise.
    pub fn assert_logged(&self, id: &str) {
        assert!(
            self.logged_ids().iter().any(|logged| logged == id),
            "{id} is not in the error log:\n{}",
            self.error_log()
        );
    }
}

/// Asserts exit code 0, printing stdout and stderr otherwise.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A path as `&str`-friendly text for command arguments.
pub fn path_str(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_string()
}

/// The exit code (panics on death by signal).
pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
