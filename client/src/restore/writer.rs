//! Writing restored files durably without one fsync per file.
//!
//! Each file is written to a temporary name beside its target. Finished files
//! are handed over in batches to a syncer thread, which makes the batch's data
//! durable with one `syncfs` and only then renames each file into place and
//! sets its attributes. So a target name never shows a half-written or
//! not-yet-durable file, even after a power loss, while the disk writes one
//! batch as the next is being written: a journal commit per batch, not per
//! file (fsync per file capped a restore of many small files at the disk's
//! ~3,700 commits a second).

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::mpsc as std_mpsc;

use std::io::Write;

use super::{FileJob, RestoreStats, apply_attrs};
use crate::console::Console;
use crate::error::ExitStatus;
use crate::messages::Msg;

/// Written bytes that close a batch.
const SYNC_BATCH_BYTES: u64 = 64 * 1024 * 1024;
/// Written files that close a batch.
const SYNC_BATCH_FILES: usize = 2048;

/// A written file waiting for its batch's sync.
#[derive(Debug)]
struct Written {
    job: usize,
    tmp: tempfile::NamedTempFile,
}

/// Syncs the file system under `dest`: every written byte there is durable
/// when it returns.
pub(super) fn sync_dest(dest: &Path) -> std::io::Result<()> {
    let dir = std::fs::File::open(dest)?;
    nix::unistd::syncfs(dir.as_fd()).map_err(std::io::Error::from)
}

/// Renames synced files into place; returns (restored, failed).
fn settle_batch(
    batch: Vec<Written>,
    jobs: &[FileJob],
    dest: &Path,
    console: &Console,
) -> (u64, u64) {
    let mut restored = 0;
    let mut failed = 0;
    if let Err(e) = sync_dest(dest) {
        // Nothing of this batch is known durable: none of it is put in place.
        for w in &batch {
            report_failed(console, &jobs[w.job], format!("syncing failed: {e}"));
        }
        return (0, batch.len() as u64);
    }
    for w in batch {
        let job = &jobs[w.job];
        let placed = w
            .tmp
            .persist(&job.target)
            .map(drop)
            .map_err(|e| e.error.to_string())
            .and_then(|()| apply_attrs(&job.target, &job.attrs, false).map_err(|e| e.to_string()));
        match placed {
            Ok(()) => restored += 1,
            Err(e) => {
                report_failed(console, job, e);
                failed += 1;
            }
        }
    }
    (restored, failed)
}

fn report_failed(console: &Console, job: &FileJob, cause: impl std::fmt::Display) {
    console.report(
        &Msg::write_failed(&job.target.to_string_lossy(), cause),
        ExitStatus::Error,
    );
}

/// Writes files as their data arrives, in batches synced by a second thread.
pub(super) struct Writer<'a> {
    jobs: &'a [FileJob],
    console: &'a Console,
    stats: &'a mut RestoreStats,
    current: Option<(usize, tempfile::NamedTempFile)>,
    broken: bool,
    batch: Vec<Written>,
    batch_bytes: u64,
    to_syncer: std_mpsc::SyncSender<Vec<Written>>,
}

impl<'a> Writer<'a> {
    /// Runs `write` with a writer whose batches a syncer thread settles;
    /// returns when every batch is synced and renamed.
    pub(super) fn run(
        jobs: &'a [FileJob],
        dest: &Path,
        console: &'a Console,
        stats: &'a mut RestoreStats,
        write: impl FnOnce(&mut Writer<'_>),
    ) {
        // One batch syncing while the next is written.
        let (to_syncer, batches) = std_mpsc::sync_channel::<Vec<Written>>(1);
        let (restored, failed) = std::thread::scope(|scope| {
            let syncer = scope.spawn(move || {
                let mut totals = (0u64, 0u64);
                for batch in batches {
                    let (r, f) = settle_batch(batch, jobs, dest, console);
                    totals.0 += r;
                    totals.1 += f;
                }
                totals
            });
            let mut writer = Writer {
                jobs,
                console,
                stats,
                current: None,
                broken: false,
                batch: Vec::new(),
                batch_bytes: 0,
                to_syncer,
            };
            write(&mut writer);
            writer.hand_over();
            drop(writer);
            syncer.join().unwrap_or((0, 0))
        });
        stats.restored += restored;
        stats.failed += failed;
    }

    /// A file starts.
    pub(super) fn begin(&mut self, job: usize) {
        self.broken = false;
        let target = &self.jobs[job].target;
        let dir = target.parent().unwrap_or(Path::new("."));
        match tempfile::Builder::new()
            .prefix(".tandem-restore-")
            .tempfile_in(dir)
        {
            Ok(tmp) => self.current = Some((job, tmp)),
            Err(e) => {
                self.fail_write(job, e);
                self.current = None;
                self.broken = true;
            }
        }
    }

    fn fail_write(&mut self, job: usize, cause: impl std::fmt::Display) {
        report_failed(self.console, &self.jobs[job], cause);
        self.stats.failed += 1;
    }

    /// The current file cannot be restored: its data is damaged or missing.
    pub(super) fn failed(&mut self, cause: String) {
        if let Some((job, _tmp)) = self.current.take() {
            let path = self.jobs[job].path.clone();
            self.console
                .report(&Msg::corrupt(&path, cause), ExitStatus::Error);
            self.stats.failed += 1;
        }
        self.broken = true;
    }

    /// The current file's next verified bytes.
    pub(super) fn data(&mut self, raw: &[u8]) {
        if self.broken {
            return;
        }
        let Some((job, tmp)) = self.current.as_mut() else {
            return;
        };
        let job = *job;
        if let Err(e) = tmp.write_all(raw) {
            self.current = None;
            self.broken = true;
            self.fail_write(job, e);
            return;
        }
        self.stats.bytes += raw.len() as u64;
        self.batch_bytes += raw.len() as u64;
    }

    /// The current file is complete: it joins the batch.
    pub(super) fn end(&mut self) {
        let Some((job, tmp)) = self.current.take() else {
            return;
        };
        if self.broken {
            return;
        }
        self.batch.push(Written { job, tmp });
        if self.batch_bytes >= SYNC_BATCH_BYTES || self.batch.len() >= SYNC_BATCH_FILES {
            self.hand_over();
        }
    }

    /// Hands the batch to the syncer (waiting while it syncs the previous).
    fn hand_over(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if let Err(std_mpsc::SendError(batch)) = self.to_syncer.send(batch) {
            for w in batch {
                self.fail_write(w.job, "the syncer thread stopped");
            }
        }
    }
}
