//! A real S3 server for the storage-pool tests: `s3s-fs` (an S3 server
//! over a local directory) on a free 127.0.0.1 port, one per test with its
//! own directory and bucket. `.ci/run` installs it; a test that cannot
//! find it fails and says how to install it.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::wait_until;

/// The access key the tests' S3 servers accept.
pub const S3_ACCESS_KEY: &str = "tandemtest";
/// Its secret.
pub const S3_SECRET_KEY: &str = "tandemtest-secret-key";
/// The bucket each test's S3 server holds.
pub const S3_BUCKET: &str = "tandem";

/// Where the `s3s-fs` binary is: `$S3S_FS`, `~/.cargo/bin`, or `PATH`.
fn s3s_fs_binary() -> PathBuf {
    if let Ok(path) = std::env::var("S3S_FS") {
        return PathBuf::from(path);
    }
    if let Some(home) = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    {
        let candidate = home.join("bin/s3s-fs");
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from("s3s-fs")
}

/// A running `s3s-fs` with one bucket.
#[derive(Debug)]
pub struct S3Server {
    /// The directory it serves (the bucket is a directory in it).
    pub root: TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
}

impl S3Server {
    /// Starts an S3 server with an empty bucket [`S3_BUCKET`].
    pub fn start() -> Self {
        let root = tempfile::Builder::new()
            .prefix("tandem-s3-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(root.path().join(S3_BUCKET)).expect("bucket dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = S3Server {
            root,
            port,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("s3s-fs.log"))
            .expect("s3 log");
        let binary = s3s_fs_binary();
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): install it with `cargo install s3s-fs --version 0.14.1 --features binary --locked` (bash .ci/run does)",
                    binary.display()
                )
            });
        self.child = Some(child);
        let port = self.port;
        let up = wait_until(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "s3s-fs did not listen on 127.0.0.1:{port} within 30 s");
    }

    /// Kills the S3 server with SIGKILL (the object store goes down).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `tandem-server` environment for an S3 pool in this bucket, with
    /// containers sealed at `container_mib`.
    pub fn server_env(&self, container_mib: u32) -> Vec<(String, String)> {
        vec![
            ("TANDEM_SERVER_POOL__KIND".into(), "s3".into()),
            ("TANDEM_SERVER_POOL__ENDPOINT".into(), self.endpoint()),
            ("TANDEM_SERVER_POOL__BUCKET".into(), S3_BUCKET.into()),
            ("TANDEM_SERVER_POOL__PREFIX".into(), "srv/".into()),
            (
                "TANDEM_SERVER_POOL__CONTAINER_MIB".into(),
                container_mib.to_string(),
            ),
            ("AWS_ACCESS_KEY_ID".into(), S3_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), S3_SECRET_KEY.into()),
        ]
    }

    /// The container objects in the bucket (their files in the server's
    /// directory), sorted.
    pub fn container_objects(&self) -> Vec<PathBuf> {
        crate::server::container_files(&self.root.path().join(S3_BUCKET).join("srv/containers"))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
