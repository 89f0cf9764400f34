//! A child program's standard output as a reader that fails unless the
//! program succeeded, so a stream it wrote is stored only when it is whole.

use std::io::Read;
use std::process::{Child, ChildStderr, ChildStdout};
use std::thread::JoinHandle;

/// The most of a child's standard error kept for the error message.
const STDERR_KEEP: usize = 4096;
/// Bytes of a stream's head kept to name it: a base backup's
/// `backup_label` or a dump's binary log position, both within the first
/// few kilobytes.
const HEAD_KEEP: usize = 64 * 1024;

/// The first bytes a [`KeepHead`] passed on.
pub(crate) type Head = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// A reader that keeps the first [`HEAD_KEEP`] bytes it passes on.
pub(crate) struct KeepHead<R> {
    inner: R,
    head: Head,
}

impl<R> KeepHead<R> {
    /// Wraps `inner`; the returned [`Head`] fills as it is read.
    pub(crate) fn new(inner: R) -> (Self, Head) {
        let head = Head::default();
        (
            KeepHead {
                inner,
                head: head.clone(),
            },
            head,
        )
    }
}

impl<R: Read> Read for KeepHead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        let room = HEAD_KEEP.saturating_sub(head.len()).min(n);
        head.extend_from_slice(&buf[..room]);
        Ok(n)
    }
}

/// Reads a child's standard output; at its end, waits for the child and
/// turns a failed exit into a read error naming the program, its exit
/// status and the end of what it wrote to standard error.
pub(crate) struct ChildOutput {
    program: String,
    child: Child,
    stdout: ChildStdout,
    stderr: Option<JoinHandle<String>>,
    done: bool,
}

impl ChildOutput {
    /// Takes over `child`, started with piped standard output and error.
    ///
    /// # Errors
    /// The child's pipes were not set up.
    pub(crate) fn new(program: &str, mut child: Child) -> std::io::Result<Self> {
        let missing = || std::io::Error::other(format!("{program}: its output is not piped"));
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr = child.stderr.take().ok_or_else(missing)?;
        Ok(ChildOutput {
            program: program.to_string(),
            child,
            stdout,
            stderr: Some(std::thread::spawn(move || tail_of(stderr))),
            done: false,
        })
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.done = true;
        let status = self.child.wait()?;
        let said = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        Err(std::io::Error::other(format!(
            "{} failed ({status}): {}",
            self.program,
            said.trim()
        )))
    }
}

impl Read for ChildOutput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.done {
            self.finish()?;
        }
        Ok(n)
    }
}

impl Drop for ChildOutput {
    /// A stream abandoned early (the upload failed) must not leave the
    /// program running: it is ours, so it is killed by its own handle.
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last [`STDERR_KEEP`] bytes of `stderr`, read to its end.
fn tail_of(mut stderr: ChildStderr) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf) {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * STDERR_KEEP {
            kept.drain(..kept.len() - STDERR_KEEP);
        }
    }
    let start = kept.len().saturating_sub(STDERR_KEEP);
    String::from_utf8_lossy(&kept[start..]).into_owned()
}
