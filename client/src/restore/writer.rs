//! Writing restored files durably without one fsync per file.
//!
//! Each file is written to a temporary name beside its target, gets its
//! attributes through its open descriptor, and is closed. Finished files are
//! handed over in batches to a syncer thread, which makes the batches of all
//! writers durable with one `syncfs` and only then renames each file into
//! place. So a
//! target name never shows a half-written or not-yet-durable file, even after
//! a power loss, while the disk writes one batch as the next is being written:
//! a journal commit per batch, not per file (fsync per file capped a restore
//! of many small files at the disk's ~3,700 commits a second).
//!
//! Files are dealt out in turn to [`WRITER_THREADS`] writer threads, each
//! writing whole files: creating a file and filling its pages costs the
//! kernel more than decoding the data did, and one thread doing it for every
//! file was the restore's bottleneck. Files of 1 MiB and more are written
//! around the page cache ([`super::direct`]).

use std::ffi::OsString;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::sync::mpsc as std_mpsc;

use rustix::fs::{AtFlags, Mode, OFlags};

use super::budget::{ByteBudget, CloseOnDrop};
use super::dest::DestTree;
use super::direct::{DIRECT_MIN_BYTES, DirectWriter};
use super::fetch::{Fetched, Parcel};
use super::{FileJob, RestoreStats, attrs, make_temp, report_unsets};
use crate::error::ExitStatus;
use crate::output::console::Console;
use crate::output::messages::Msg;

/// Written bytes that close a batch.
const SYNC_BATCH_BYTES: u64 = 64 * 1024 * 1024;
/// Written files that close a batch.
const SYNC_BATCH_FILES: usize = 2048;
/// Threads writing files. Two, for the two cores of the machines we measure
/// on: while one waits for the kernel or the disk, the other writes.
const WRITER_THREADS: usize = 2;
/// Bytes of parcels queued for each writer thread ([`ByteBudget`]). With a
/// bound of two parcels a restore of 80,000 small files took 4.5-4.7 s: the
/// dealer waited 2.6 s for one full writer while the other sat idle for
/// 1.1-1.3 s. With this bound it took 4.3-4.5 s and 6 MiB more memory; 1
/// and 2 MiB gained less, 8 MiB no more for 5-10 MiB more.
const WRITER_QUEUE_BYTES: u64 = 4 * 1024 * 1024;

/// A written and closed file waiting for its batch's sync. Only its name is
/// kept: holding a descriptor per file of a batch ran into the default limit
/// of 1,024 open files, which failed every file of a large restore.
/// (device, inode) of a written file.
pub(super) type Inode = (u64, u64);

#[derive(Debug)]
struct Written {
    job: usize,
    tmp: OsString,
    /// (device, inode) of the written file, so later steps can tell it is
    /// still the same file.
    inode: Inode,
}

/// A file being written under a temporary name in its directory.
#[derive(Debug)]
struct TempFile {
    name: OsString,
    file: File,
}

/// A file that failed for its data while failures were deferred: its job,
/// why, and the chunk at fault (when one is), for a repair and a retry.
#[derive(Debug, Clone)]
pub(super) struct DataFailure {
    pub job: usize,
    pub cause: String,
    pub chunk: Option<tandem_proto::ChunkId>,
    /// See [`Fetched::Failed`].
    pub damaged: bool,
}

/// Removes a temporary file that will not be put in place.
fn discard(dest: &DestTree, job: &FileJob, tmp: &OsString) {
    if let Ok(dir) = dest.dir(&job.placed.parent) {
        let _ = rustix::fs::unlinkat(dir.as_fd(), tmp, AtFlags::empty());
    }
}

/// Syncs a batch, then renames each file into place; returns the jobs put
/// in place (with their inodes) and the count of failures.
fn settle_batch(
    batch: Vec<Written>,
    jobs: &[FileJob],
    dest: &DestTree,
    console: &Console,
) -> (Vec<(usize, Inode)>, u64) {
    if let Err(e) = dest.sync() {
        // Nothing of this batch is known durable: none of it is put in place.
        for w in &batch {
            report_failed(console, dest, &jobs[w.job], format!("syncing failed: {e}"));
            discard(dest, &jobs[w.job], &w.tmp);
        }
        return (Vec::new(), batch.len() as u64);
    }
    let mut restored = Vec::with_capacity(batch.len());
    let mut failed = 0;
    for w in batch {
        let job = &jobs[w.job];
        let renamed = dest.dir(&job.placed.parent).and_then(|dir| {
            rustix::fs::renameat(dir.as_fd(), &w.tmp, dir.as_fd(), &job.placed.name)
                .map_err(std::io::Error::from)
        });
        match renamed {
            Ok(()) => restored.push((w.job, w.inode)),
            Err(e) => {
                report_failed(console, dest, job, e);
                discard(dest, job, &w.tmp);
                failed += 1;
            }
        }
    }
    (restored, failed)
}

fn report_failed(console: &Console, dest: &DestTree, job: &FileJob, cause: impl std::fmt::Display) {
    console.report(
        &Msg::write_failed(&job.shown(dest), cause),
        ExitStatus::Error,
    );
}

/// Creates a new, empty temporary file in the job's directory (never
/// following a link, never opening an existing file).
fn create_temp(dest: &DestTree, job: &FileJob) -> std::io::Result<TempFile> {
    let dir = dest.dir(&job.placed.parent)?;
    let mut opened = None;
    let name = make_temp(|name| {
        let fd = rustix::fs::openat(
            dir.as_fd(),
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        opened = Some(fd);
        Ok(())
    })?;
    let fd = opened.ok_or_else(|| std::io::Error::other("temporary file not opened"))?;
    Ok(TempFile {
        name,
        file: File::from(fd),
    })
}

/// One writer thread's state: writes its files as their data arrives and
/// hands them to the syncer in batches.
struct Writer<'a> {
    jobs: &'a [FileJob],
    dest: &'a DestTree,
    console: &'a Console,
    stats: RestoreStats,
    /// Data failures are kept here instead of reported (a repair may
    /// follow), when set.
    deferred: Option<Vec<DataFailure>>,
    /// The file being received whose data failed (deferred), so further bad
    /// chunks of it are kept for the same repair.
    failed_job: Option<usize>,
    current: Option<(usize, TempFile)>,
    /// Whether the current file is written directly.
    direct: bool,
    direct_writer: DirectWriter,
    broken: bool,
    /// Bytes of the current file so far, holes included.
    file_bytes: u64,
    batch: Vec<Written>,
    batch_bytes: u64,
    to_syncer: std_mpsc::SyncSender<Vec<Written>>,
}

/// Writes the files whose data `next` yields (parcels, in file order), on
/// [`WRITER_THREADS`] threads whose batches a syncer thread settles; returns
/// when every batch is synced and renamed, with the (device, inode) of each
/// job put in place. With `defer_data_failures`, files whose data is damaged
/// or missing are not reported or counted but returned, for a repair.
pub(super) fn write_files(
    jobs: &[FileJob],
    dest: &DestTree,
    console: &Console,
    stats: &mut RestoreStats,
    defer_data_failures: bool,
    mut next: impl FnMut() -> Option<Parcel>,
) -> (Vec<Option<Inode>>, Vec<DataFailure>) {
    let mut in_place = vec![None; jobs.len()];
    let mut deferred = Vec::new();
    // One set of batches syncing while the next ones are written.
    let (to_syncer, batches) = std_mpsc::sync_channel::<Vec<Written>>(1);
    let budgets: Vec<ByteBudget> = (0..WRITER_THREADS)
        .map(|_| ByteBudget::new(WRITER_QUEUE_BYTES))
        .collect();
    std::thread::scope(|scope| {
        let syncer = scope.spawn(move || {
            let mut totals = (Vec::new(), 0u64);
            while let Ok(mut batch) = batches.recv() {
                // The writers take files in turn, so their batches cover the
                // same directories: settled together, in file order, they
                // take one sync and one look-up of each directory, where
                // settled one by one the second found the directories of
                // the first dropped from the cache and opened them again.
                // So the syncer takes as many batches as there are writers
                // (usually one from each) before it syncs. The wait ends
                // when a writer's next batch fills or when every writer is
                // done; meanwhile the first batch stays under its
                // temporary names, so a crash leaves up to that many more
                // of them, and a failed sync fails the files of all.
                for _ in 1..WRITER_THREADS {
                    match batches.recv() {
                        Ok(more) => batch.extend(more),
                        Err(_) => break,
                    }
                }
                batch.sort_unstable_by_key(|w| w.job);
                let (r, f) = settle_batch(batch, jobs, dest, console);
                totals.0.extend(r);
                totals.1 += f;
            }
            totals
        });
        let mut queues = Vec::with_capacity(WRITER_THREADS);
        let mut writers = Vec::with_capacity(WRITER_THREADS);
        for budget in &budgets {
            // Bounded by `budget`, in bytes.
            let (queue, parcels) = std_mpsc::channel::<Parcel>();
            let mut writer = Writer::new(jobs, dest, console, to_syncer.clone());
            if defer_data_failures {
                writer.deferred = Some(Vec::new());
            }
            writers.push(scope.spawn(move || {
                let _closed_at_exit = CloseOnDrop(budget);
                for parcel in parcels {
                    let bytes = ByteBudget::size_of(&parcel);
                    for message in parcel {
                        writer.handle(message);
                    }
                    budget.give_back(bytes);
                }
                writer.hand_over();
                (writer.stats, writer.deferred.unwrap_or_default())
            }));
            queues.push(queue);
        }
        drop(to_syncer);
        // Each file's messages go to one writer; files go to writers in turn.
        let mut turn = 0;
        let mut current = 0;
        let mut shares: Vec<Parcel> = (0..WRITER_THREADS).map(|_| Vec::new()).collect();
        'parcels: while let Some(parcel) = next() {
            for message in parcel {
                // A file not fetched is a file of its own too.
                if matches!(message, Fetched::Begin(_) | Fetched::Skipped { .. }) {
                    current = turn;
                    turn = (turn + 1) % WRITER_THREADS;
                }
                shares[current].push(message);
            }
            for ((queue, budget), share) in queues.iter().zip(&budgets).zip(&mut shares) {
                if share.is_empty() {
                    continue;
                }
                if !budget.take(ByteBudget::size_of(share))
                    || queue.send(std::mem::take(share)).is_err()
                {
                    break 'parcels; // that writer panicked; reported below
                }
            }
        }
        drop(queues);
        for writer in writers {
            let Ok((written, failures)) = writer.join() else {
                // A bug; the files it held are not restored, and the restore
                // must not end as if they were.
                console.report(
                    &Msg::write_failed(
                        &dest.shown_dest(),
                        "a writer thread stopped unexpectedly; the files it was writing are missing",
                    ),
                    ExitStatus::Error,
                );
                stats.failed += 1;
                continue;
            };
            deferred.extend(failures);
            stats.bytes += written.bytes;
            stats.failed += written.failed;
            stats.attributes_not_set += written.attributes_not_set;
        }
        let (restored, failed) = syncer.join().unwrap_or((Vec::new(), 0));
        stats.restored += restored.len() as u64;
        stats.failed += failed;
        for (job, inode) in restored {
            in_place[job] = Some(inode);
        }
    });
    deferred.sort_by_key(|f| f.job);
    (in_place, deferred)
}

impl<'a> Writer<'a> {
    fn new(
        jobs: &'a [FileJob],
        dest: &'a DestTree,
        console: &'a Console,
        to_syncer: std_mpsc::SyncSender<Vec<Written>>,
    ) -> Self {
        Writer {
            jobs,
            dest,
            console,
            stats: RestoreStats::default(),
            deferred: None,
            failed_job: None,
            current: None,
            direct: false,
            direct_writer: DirectWriter::new(),
            broken: false,
            file_bytes: 0,
            batch: Vec::new(),
            batch_bytes: 0,
            to_syncer,
        }
    }

    fn handle(&mut self, message: Fetched) {
        match message {
            Fetched::Begin(job) => self.begin(job),
            Fetched::Data(raw) => self.data(&raw),
            Fetched::End => self.end(),
            Fetched::Failed {
                cause,
                chunk,
                damaged,
            } => self.failed(cause, chunk, damaged),
            Fetched::Skipped { job, cause } => self.not_fetched(job, cause),
        }
    }

    /// A file whose data was not asked for: no file is made; it fails as
    /// one whose data was not read (retried from another source when
    /// failures are deferred).
    fn not_fetched(&mut self, job: usize, cause: String) {
        // Files come whole, one after another: none is open here. Should
        // one be, it is not left behind half written.
        if let Some((open, tmp)) = self.current.take() {
            discard(self.dest, &self.jobs[open], &tmp.name);
            self.stats.bytes = self.stats.bytes.saturating_sub(self.file_bytes);
        }
        self.file_bytes = 0;
        self.broken = false;
        self.failed_job = None;
        match &mut self.deferred {
            Some(deferred) => deferred.push(DataFailure {
                job,
                cause,
                chunk: None,
                damaged: false,
            }),
            None => {
                let path = &self.jobs[job].attrs.path;
                self.console
                    .report(&Msg::data_failed(path, cause, false), ExitStatus::Error);
                self.stats.failed += 1;
            }
        }
    }

    /// A file starts.
    fn begin(&mut self, job: usize) {
        self.broken = false;
        self.failed_job = None;
        self.file_bytes = 0;
        match create_temp(self.dest, &self.jobs[job]) {
            Ok(tmp) => {
                // Holes are skipped by seeking, which direct writes of whole
                // aligned blocks cannot do.
                self.direct = self.jobs[job].size >= DIRECT_MIN_BYTES
                    && !self.jobs[job].sparse
                    && self.direct_writer.begin(&tmp.file);
                self.current = Some((job, tmp));
            }
            Err(e) => {
                self.fail_write(job, e);
                self.current = None;
                self.broken = true;
            }
        }
    }

    fn fail_write(&mut self, job: usize, cause: impl std::fmt::Display) {
        report_failed(self.console, self.dest, &self.jobs[job], cause);
        self.stats.failed += 1;
    }

    /// The current file cannot be restored: its data is damaged or
    /// missing, or was not read (`damaged` false).
    fn failed(&mut self, cause: String, chunk: Option<tandem_proto::ChunkId>, damaged: bool) {
        if let Some((job, tmp)) = self.current.take() {
            discard(self.dest, &self.jobs[job], &tmp.name);
            // Its bytes were not restored (a retry counts them again).
            self.stats.bytes = self.stats.bytes.saturating_sub(self.file_bytes);
            match &mut self.deferred {
                Some(deferred) => {
                    deferred.push(DataFailure {
                        job,
                        cause,
                        chunk,
                        damaged,
                    });
                    self.failed_job = Some(job);
                }
                None => {
                    let path = &self.jobs[job].attrs.path;
                    self.console
                        .report(&Msg::data_failed(path, cause, damaged), ExitStatus::Error);
                    self.stats.failed += 1;
                }
            }
        } else if let (Some(deferred), Some(chunk), Some(job)) =
            (&mut self.deferred, chunk, self.failed_job)
        {
            // A further bad chunk of a file that failed already: repaired
            // in the same round.
            deferred.push(DataFailure {
                job,
                cause,
                chunk: Some(chunk),
                damaged,
            });
        }
        self.broken = true;
    }

    /// Drops the current file after a write error.
    fn abandon(&mut self, job: usize, cause: impl std::fmt::Display) {
        if let Some((_, tmp)) = self.current.take() {
            discard(self.dest, &self.jobs[job], &tmp.name);
        }
        self.broken = true;
        self.fail_write(job, cause);
    }

    /// The current file's next verified bytes.
    fn data(&mut self, raw: &[u8]) {
        if self.broken {
            return;
        }
        let Some((job, tmp)) = self.current.as_mut() else {
            return;
        };
        let job = *job;
        let hole = self.jobs[job].sparse && raw.iter().all(|&b| b == 0);
        let written = if hole {
            // A hole when backed up: left unwritten, so it is one again.
            tmp.file.seek(SeekFrom::Current(raw.len() as i64)).map(drop)
        } else if self.direct {
            self.direct_writer.write(raw)
        } else {
            tmp.file.write_all(raw)
        };
        if let Err(e) = written {
            self.abandon(job, e);
            return;
        }
        self.stats.bytes += raw.len() as u64;
        self.file_bytes += raw.len() as u64;
        if !self.direct {
            // Direct writes are on the disk already: they leave the batch's
            // sync little to do.
            self.batch_bytes += raw.len() as u64;
        }
    }

    /// The current file is complete: it joins the batch.
    fn end(&mut self) {
        let Some((job, tmp)) = self.current.take() else {
            return;
        };
        if self.broken {
            return;
        }
        if self.file_bytes != self.jobs[job].size {
            let path = self.jobs[job].attrs.path.clone();
            let cause = format!(
                "its chunks hold {} bytes but its size is {}",
                self.file_bytes, self.jobs[job].size
            );
            self.console
                .report(&Msg::corrupt(&path, cause), ExitStatus::Error);
            self.stats.failed += 1;
            self.stats.bytes = self.stats.bytes.saturating_sub(self.file_bytes);
            discard(self.dest, &self.jobs[job], &tmp.name);
            return;
        }
        let file = &tmp.file;
        let finished = if self.direct {
            self.direct_writer.finish(file)
        } else if self.jobs[job].sparse {
            // A hole at the end is only a length.
            file.set_len(self.jobs[job].size)
        } else {
            Ok(())
        };
        let attributed = finished
            .and_then(|()| attrs::apply_to_fd(file.as_fd(), &self.jobs[job].attrs, false))
            .and_then(|unsets| Ok((unsets, rustix::fs::fstat(file)?)));
        let inode = match attributed {
            Ok((unsets, st)) => {
                if !unsets.is_empty() {
                    let shown = self.jobs[job].shown(self.dest);
                    report_unsets(self.console, &shown, unsets, &mut self.stats);
                }
                #[allow(clippy::unnecessary_cast)] // stat field types differ by architecture
                let inode = (st.st_dev as u64, st.st_ino as u64);
                inode
            }
            Err(e) => {
                discard(self.dest, &self.jobs[job], &tmp.name);
                self.fail_write(job, e);
                return;
            }
        };
        self.batch.push(Written {
            job,
            tmp: tmp.name,
            inode,
        });
        if self.batch_bytes >= SYNC_BATCH_BYTES || self.batch.len() >= SYNC_BATCH_FILES {
            self.hand_over();
        }
    }

    /// Hands the batch to the syncer (waiting while it syncs the previous
    /// ones).
    fn hand_over(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if let Err(std_mpsc::SendError(batch)) = self.to_syncer.send(batch) {
            for w in batch {
                discard(self.dest, &self.jobs[w.job], &w.tmp);
                self.fail_write(w.job, "the syncer thread stopped");
            }
        }
    }
}
