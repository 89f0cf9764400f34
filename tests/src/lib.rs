//! Harness for the integration tests: real `tandem-server` processes on
//! 127.0.0.1 ephemeral ports, the real `tandem-admin` and `tandem` binaries,
//! each test with its own temporary directories.
//!
//! `cargo test` does not build other packages' binaries, so [`bin`] runs
//! `cargo build --workspace --bins` once per test process (a no-op when they are
//! current): the tests never run stale binaries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Builds the workspace binaries once per test process, in the profile the
/// tests were built with.
fn build_binaries(profile_dir: &Path) {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "--workspace",
            "--bins",
            "--manifest-path",
        ])
        .arg(&manifest);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
    });
}

/// Path of a workspace binary next to the test executable (`target/<profile>/`),
/// built if needed.
///
/// # Panics
/// When the binary cannot be built.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile> directory");
    build_binaries(dir);
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

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

    /// Starts the server again on the same data directory and address.
    pub fn restart(&mut self) {
        self.kill();
        let listen = self.addr.to_string();
        self.spawn(&listen);
    }

    /// Runs `tandem-admin` against this server with its admin token.
    pub fn admin(&self, args: &[&str]) -> Output {
        Command::new(bin("tandem-admin"))
            .args(["--server", &self.url(), "--token-file"])
            .arg(self.data.path().join("admin.token"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tandem-admin")
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
        let out = here.admin(&[
            "define",
            "server",
            &there.name,
            "--address",
            &there.url(),
            "--fingerprint",
            &there.fingerprint(),
            "--server-password-file",
            file.to_str().expect("utf8"),
        ]);
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
        let text = format!(
            "# test client\nnode_name = \"{node}\"\nserver_name = \"{name}\"\nserver_address = \"{url}\"\n{pin}password = \"{password}\"\nstate_dir = \"{}\"\n",
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
        Command::new(bin("tandem"))
            .arg("--options")
            .arg(&self.options)
            .args(args)
            .env_remove("TANDEM_OPTIONS")
            .stdin(Stdio::null())
            .output()
            .expect("run tandem")
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

    /// The error log's content.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state").join("dsierror.log"))
            .unwrap_or_default()
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

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a small varied tree: nested folders, an empty file, duplicate files,
/// names with spaces and non-ASCII, a symlink, a read-only file, a 3 MiB file.
pub fn make_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    };
    for i in 0..30u64 {
        w(
            &format!("docs/sub {}/file-{i}.txt", i % 3),
            format!("content of file {i}\n")
                .repeat(1 + i as usize * 10)
                .as_bytes(),
        );
    }
    w("empty", b"");
    w("dup/a.bin", &random_bytes(7, 300_000));
    w("dup/b.bin", &random_bytes(7, 300_000));
    w("Grüße/naïve résumé.txt", "unicode\n".as_bytes());
    w("big/large.bin", &random_bytes(11, 3 * 1024 * 1024 + 17));
    w("ro.txt", b"read only\n");
    std::fs::set_permissions(root.join("ro.txt"), std::fs::Permissions::from_mode(0o444))
        .expect("chmod");
    std::os::unix::fs::symlink("docs/sub 1/file-1.txt", root.join("link")).expect("symlink");
    if nix::unistd::geteuid().is_root() {
        // Owners are restored when the client runs as root: give one file a foreign owner.
        std::os::unix::fs::lchown(root.join("ro.txt"), Some(4321), Some(4321)).expect("chown");
    }
    std::fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
}

/// Asserts two trees hold the same entries, bytes, link targets, modes and
/// file mtimes.
pub fn assert_same_tree(a: &Path, b: &Path) {
    use std::os::unix::fs::MetadataExt;
    let list = |root: &Path| {
        let mut v: Vec<PathBuf> = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).expect("read_dir") {
                let p = e.expect("entry").path();
                if std::fs::symlink_metadata(&p).expect("meta").is_dir() {
                    stack.push(p.clone());
                }
                v.push(p.strip_prefix(root).expect("prefix").to_path_buf());
            }
        }
        v.sort();
        v
    };
    let (left, right) = (list(a), list(b));
    assert_eq!(left, right, "the trees list different entries");
    for rel in left {
        let (x, y) = (a.join(&rel), b.join(&rel));
        let (mx, my) = (
            std::fs::symlink_metadata(&x).expect("meta"),
            std::fs::symlink_metadata(&y).expect("meta"),
        );
        assert_eq!(
            mx.file_type().is_symlink(),
            my.file_type().is_symlink(),
            "{}",
            rel.display()
        );
        if mx.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&x).ok(),
                std::fs::read_link(&y).ok(),
                "link {}",
                rel.display()
            );
            continue;
        }
        assert_eq!(mx.mode(), my.mode(), "mode of {}", rel.display());
        assert_eq!(
            (mx.uid(), mx.gid()),
            (my.uid(), my.gid()),
            "owner of {}",
            rel.display()
        );
        if mx.is_file() {
            assert!(
                std::fs::read(&x).expect("read") == std::fs::read(&y).expect("read"),
                "content of {}",
                rel.display()
            );
            assert_eq!(
                (mx.mtime(), mx.mtime_nsec()),
                (my.mtime(), my.mtime_nsec()),
                "mtime of {}",
                rel.display()
            );
        }
    }
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

/// Polls `check` every 20 ms until it is true or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Peak resident memory (`VmHWM`, KiB) of a running process, from /proc.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs `cmd` to completion while sampling its peak RSS every 20 ms; returns
/// the output and the last peak seen (KiB). `VmHWM` only grows, so the last
/// sample is the peak up to at most 20 ms before exit.
pub fn run_measured(mut cmd: Command) -> (Output, u64) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kib) = peak_rss_kib(pid) {
                    peak = peak.max(kib);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let out = child.wait_with_output().expect("wait");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, sampler.join().expect("sampler"))
}

/// A TCP proxy on 127.0.0.1 in front of a server, whose connections a test can
/// cut mid-stream (a network failure between two servers). Its accept loop
/// stops when the proxy is dropped, and after ten minutes at the latest.
#[derive(Debug)]
pub struct CutProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    captured: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>,
}

/// At most this much is kept by a recording proxy.
const MAX_CAPTURE_BYTES: usize = 256 << 20;

/// Copies `from` to `to` until either side ends, keeping a copy of the bytes
/// in `capture` when there is one.
fn relay(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    capture: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>,
) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(capture) = &capture {
            let mut kept = capture.lock().expect("capture");
            if kept.len() + n <= MAX_CAPTURE_BYTES {
                kept.extend_from_slice(&buf[..n]);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

impl CutProxy {
    /// Starts forwarding to `target`.
    pub fn start(target: SocketAddr) -> Self {
        Self::start_with(target, None)
    }

    /// Starts forwarding to `target`, keeping every byte that passes in
    /// either direction (a wire capture).
    pub fn recording(target: SocketAddr) -> Self {
        Self::start_with(target, Some(std::sync::Arc::default()))
    }

    /// The bytes seen so far in both directions (empty unless recording).
    pub fn captured(&self) -> Vec<u8> {
        self.captured
            .as_ref()
            .map(|c| c.lock().expect("capture").clone())
            .unwrap_or_default()
    }

    fn start_with(
        target: SocketAddr,
        captured: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>,
    ) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, s, k, rec) = (cut.clone(), stop.clone(), conns.clone(), captured.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((client, _)) if !c.load(Ordering::Relaxed) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = std::net::TcpStream::connect(target) else {
                            continue;
                        };
                        let pairs = [
                            (client.try_clone(), server.try_clone()),
                            (server.try_clone(), client.try_clone()),
                        ];
                        for (from, to) in pairs {
                            if let (Ok(from), Ok(to)) = (from, to) {
                                let rec = rec.clone();
                                std::thread::spawn(move || relay(from, to, rec));
                            }
                        }
                        let mut held = k.lock().expect("conns");
                        held.push(client);
                        held.push(server);
                    }
                    Ok((refused, _)) => drop(refused),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        CutProxy {
            addr,
            cut,
            stop,
            conns,
            captured,
        }
    }

    /// Cuts every open connection and refuses new ones until [`CutProxy::heal`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.cut();
    }
}

/// A gRPC `Backup` client of `server` with no client program in between, as a
/// hostile caller would use; it pins the server's certificate.
pub async fn raw_backup_client(
    server: &TestServer,
) -> tandem_proto::pb::backup_client::BackupClient<tonic::transport::Channel> {
    let pin = tandem_tls::Trust::Pinned(server.fingerprint().parse().expect("fingerprint"));
    let tls = tandem_tls::ClientTls::new(&pin, None).expect("client TLS");
    let endpoint = tonic::transport::Endpoint::from_shared(server.url()).expect("url");
    let channel = tandem_tls::connect(endpoint, Some(&tls))
        .await
        .expect("connect");
    tandem_proto::pb::backup_client::BackupClient::new(channel)
}

/// `raw` as an honest upload: its BLAKE3 id and one zstd frame.
pub fn wire_chunk(raw: &[u8]) -> tandem_proto::pb::Chunk {
    tandem_proto::pb::Chunk {
        id: tandem_proto::ChunkId::of(raw).as_slice().to_vec(),
        data: zstd::bulk::compress(raw, 1).expect("zstd").into(),
        raw_len: raw.len() as u64,
    }
}

/// A raw client logged on as `node`, and its session token.
pub async fn raw_backup_session(
    server: &TestServer,
    node: &str,
    password: &str,
) -> (
    tandem_proto::pb::backup_client::BackupClient<tonic::transport::Channel>,
    String,
) {
    let mut client = raw_backup_client(server).await;
    let token = client
        .logon(tandem_proto::pb::LogonRequest {
            node: node.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .expect("logon")
        .into_inner()
        .session_token;
    (client, token)
}

/// `message` as a request of the session `token`.
pub fn with_session<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        tandem_proto::SESSION_HEADER,
        token.parse().expect("ascii token"),
    );
    request
}
