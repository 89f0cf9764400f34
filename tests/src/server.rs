//! A real `tandem-server` per test: its own private data directory, an
//! ephemeral 127.0.0.1 port, the admin console pointed at it, restarts and
//! SIGKILL; and pairs of servers set up for replication.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{TestClient, assert_success, bin, wait_until};

/// A temporary directory only its owner may enter (mode 0700), as the server
/// requires of its data dir.
pub fn private_tempdir() -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("tandem-srv-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod 700");
    dir
}

/// A running `tandem-server` with its own data directory.
#[derive(Debug)]
pub struct TestServer {
    /// Server name.
    pub name: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// The data directory (kept across restarts).
    pub data: TempDir,
    child: Option<Child>,
    /// Extra environment (`TANDEM_SERVER_*` settings), kept across restarts.
    env: Vec<(String, String)>,
}

fn wait_for_addr(file: &Path, child: &mut Child, log: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(addr) = text.trim().parse()
        {
            return addr;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "tandem-server exited with {status} before listening:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "tandem-server did not start within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl TestServer {
    /// Starts a server named `name` on 127.0.0.1 with a free port.
    pub fn start(name: &str) -> Self {
        Self::start_with(name, &[])
    }

    /// Starts a server with settings in its environment, e.g.
    /// `("TANDEM_SERVER_COMM_TIMEOUT_SECONDS", "2")`.
    pub fn start_with(name: &str, env: &[(&str, &str)]) -> Self {
        let data = private_tempdir();
        let mut server = TestServer {
            name: name.to_string(),
            addr: "127.0.0.1:0".parse().expect("addr"),
            data,
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        server.spawn("127.0.0.1:0");
        server
    }

    /// Runs a server that is expected to refuse to start with `env`;
    /// returns what it printed, and its exit status, once it has exited
    /// (within 60 s).
    pub fn try_start_with(name: &str, env: &[(&str, &str)]) -> String {
        let data = private_tempdir();
        Self::try_start_in(data.path(), name, env)
    }

    /// Like [`Self::try_start_with`], on an existing data directory (a
    /// stopped server's).
    pub fn try_start_in(data_dir: &Path, name: &str, env: &[(&str, &str)]) -> String {
        let mut child = Command::new(bin("tandem-server"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--name", name])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tandem-server");
        let exited = wait_until(Duration::from_secs(60), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tandem-server started although it should have refused");
        }
        let out = child.wait_with_output().expect("server output");
        assert!(!out.status.success(), "a refused start exits non-zero");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Starts a server named `name` on `listen` (an impostor taking over a
    /// stopped server's address, for instance).
    pub fn start_on(name: &str, listen: SocketAddr) -> Self {
        let data = private_tempdir();
        let mut server = TestServer {
            name: name.to_string(),
            addr: listen,
            data,
            child: None,
            env: Vec::new(),
        };
        // The old owner's socket may linger a moment after SIGKILL.
        let free = wait_until(Duration::from_secs(10), || {
            std::net::TcpListener::bind(listen).is_ok()
        });
        assert!(free, "{listen} did not become free");
        server.spawn(&listen.to_string());
        server
    }

    /// The activity log as `query actlog` prints it.
    pub fn actlog(&self) -> String {
        String::from_utf8_lossy(&self.admin(&["query", "actlog"]).stdout).into_owned()
    }

    fn spawn(&mut self, listen: &str) {
        let addr_file = self.data.path().join("listen.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log_path = self.data.path().join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("server log");
        let mut child = Command::new(bin("tandem-server"))
            .arg("--data-dir")
            .arg(self.data.path())
            .args(["--listen", listen, "--name", &self.name])
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn tandem-server");
        self.addr = wait_for_addr(&addr_file, &mut child, &log_path);
        self.child = Some(child);
    }

    /// The URL clients use.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The server's certificate fingerprint, as it wrote it beside
    /// `listen.addr` (what clients, consoles and partners pin).
    pub fn fingerprint(&self) -> String {
        std::fs::read_to_string(self.data.path().join("fingerprint"))
            .expect("DATA_DIR/fingerprint")
            .trim()
            .to_string()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL (a crash, or "primary down") and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGTERM and waits (bounded) for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Starts the server again on the same data directory and address.
    pub fn restart(&mut self) {
        self.kill();
        let listen = self.addr.to_string();
        self.spawn(&listen);
    }

    /// Starts the server again like [`Self::restart`], with `env` as its
    /// environment settings from now on (none: the defaults).
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.restart();
    }

    /// Waits (at most 60 s) until the server's log contains `text`.
    pub fn wait_for_log(&self, text: &str) {
        let seen = wait_until(Duration::from_secs(60), || self.log().contains(text));
        assert!(
            seen,
            "server {} never logged {text:?}:\n{}",
            self.name,
            self.log()
        );
    }

    /// Runs `tandem-admin` against this server with its admin token.
    pub fn admin(&self, args: &[&str]) -> Output {
        self.admin_command(args).output().expect("run tandem-admin")
    }

    /// Runs `tandem-admin ARGS` against this server with the token in
    /// `token_file` (a wrong one, say), pinning the server's certificate.
    pub fn admin_with_token(&self, token_file: &Path, args: &[&str]) -> Output {
        Command::new(bin("tandem-admin"))
            .args(["--server", &self.url(), "--token-file"])
            .arg(token_file)
            .args(["--fingerprint", &self.fingerprint()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tandem-admin")
    }

    /// `tandem-admin` against this server with its admin token, not started
    /// (for a test that stops it midway).
    pub fn admin_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin("tandem-admin"));
        command
            .args(["--server", &self.url(), "--token-file"])
            .arg(self.data.path().join("admin.token"))
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs `tandem-admin --json ARGS` here, asserts it succeeded and
    /// returns its JSON output.
    pub fn admin_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.admin(&all);
        assert_success(&out, &args.join(" "));
        serde_json::from_slice(&out.stdout).expect("tandem-admin --json output")
    }

    /// Runs `tandem-server restore-db --from COPY` on this server's data
    /// dir, with the settings it runs with (the server must be stopped for
    /// it to succeed).
    pub fn restore_db(&self, copy: &str) -> Output {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.restore_db_with(copy, &env)
    }

    /// [`Self::restore_db`] with `env` as the settings instead.
    pub fn restore_db_with(&self, copy: &str, env: &[(&str, &str)]) -> Output {
        Command::new(bin("tandem-server"))
            .arg("--data-dir")
            .arg(self.data.path())
            .args(["restore-db", "--from", copy])
            .envs(env.iter().copied())
            .output()
            .expect("run tandem-server restore-db")
    }

    /// Flips one byte inside `needle` where it is stored in a container,
    /// as a failing disk would (random data is stored verbatim in zstd's
    /// raw blocks, so a window of a random file is found as it is).
    pub fn damage_stored_bytes(&self, needle: &[u8]) {
        damage_container_bytes(self.data.path(), needle);
    }

    /// Registers `node` with `password`.
    pub fn register(&self, node: &str, password: &str) {
        let pw = self.data.path().join(format!("{node}.pw"));
        std::fs::write(&pw, format!("{password}\n")).expect("password file");
        let out = self.admin(&[
            "register",
            "node",
            node,
            "--password-file",
            pw.to_str().expect("utf8"),
        ]);
        assert_success(&out, "register node");
    }

    /// The container files of the chunk store.
    pub fn containers(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.data.path().join("containers"))
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Total size of the container files.
    pub fn container_bytes(&self) -> u64 {
        self.containers()
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("server.log")).unwrap_or_default()
    }

    /// Runs `define server NAME --address URL --fingerprint FP
    /// --server-password-file FILE` here: every pairing, and every test that
    /// points a partner somewhere else (a proxy, a wrong pin, a wrong
    /// password), goes through this one call.
    pub fn define_server(
        &self,
        name: &str,
        address: &str,
        fingerprint: &str,
        password_file: &Path,
    ) -> Output {
        self.admin(&[
            "define",
            "server",
            name,
            "--address",
            address,
            "--fingerprint",
            fingerprint,
            "--server-password-file",
            password_file.to_str().expect("utf8"),
        ])
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes `primary` replicate to `secondary`: each defines the other with a
/// shared password, the primary names the secondary its replication server.
pub fn pair(primary: &TestServer, secondary: &TestServer, password: &str) {
    for (here, there) in [(primary, secondary), (secondary, primary)] {
        let file = here.data.path().join(format!("{}.serverpw", there.name));
        std::fs::write(&file, format!("{password}\n")).expect("password file");
        let out = here.define_server(&there.name, &there.url(), &there.fingerprint(), &file);
        assert_success(&out, "define server");
    }
    assert_success(
        &primary.admin(&["set", "replserver", &secondary.name]),
        "set replserver",
    );
}

/// Runs `replicate node NODE --wait --json` on `server` and returns the run.
pub fn replicate(server: &TestServer, node: &str) -> serde_json::Value {
    let out = server.admin(&["--json", "replicate", "node", node, "--wait"]);
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "replicate node {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    runs[0].clone()
}

/// A primary and a secondary paired with a shared password, node `alice`
/// (password `alice-password`) registered on the primary with replication
/// enabled, and a client of it.
pub fn replicated_alice() -> (TestServer, TestServer, TestClient) {
    let primary = TestServer::start("PRIMARY");
    let secondary = TestServer::start("SECONDARY");
    pair(&primary, &secondary, "shared-secret-1");
    primary.register("alice", "alice-password");
    assert_success(
        &primary.admin(&["update", "node", "alice", "--replstate", "enabled"]),
        "enable replication",
    );
    let client = TestClient::new(&primary, "alice", "alice-password");
    (primary, secondary, client)
}

/// Flips a byte in the middle of `needle` where it is stored in a container
/// of the store at `data_dir` (a server's data directory or a local vault).
/// Panics when no container holds `needle`.
pub fn damage_container_bytes(data_dir: &Path, needle: &[u8]) {
    damage_bytes_in(&data_dir.join("containers"), needle);
}

/// Container files (`.tdc`) directly under `dir`, sorted (none when it
/// cannot be read).
pub fn container_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "tdc"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// As [`damage_container_bytes`], in the containers directly under `dir`
/// (a storage pool's directory).
pub fn damage_bytes_in(dir: &Path, needle: &[u8]) {
    let mut containers: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    containers.sort();
    for container in containers {
        let mut data = std::fs::read(&container).expect("read container");
        if let Some(at) = data.windows(needle.len()).position(|w| w == needle) {
            data[at + needle.len() / 2] ^= 0xff;
            std::fs::write(&container, &data).expect("write container");
            return;
        }
    }
    panic!("the bytes to damage are in no container");
}
