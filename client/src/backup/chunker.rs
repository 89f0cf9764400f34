//! Content-defined chunking of a file as it is read, with one copy per chunk.
//!
//! The cut points are fastcdc's (v2020, normalisation level 1): the same bytes
//! give the same chunks as before this module existed, so deduplication against
//! data already stored keeps working. What differs is the buffering. fastcdc's
//! `StreamCDC` allocates a zeroed buffer per file, and after every chunk it
//! shifts the whole rest of its buffer to the front and zero-fills the tail:
//! about four bytes of memory traffic per byte of data, the client's largest
//! cost after compression and hashing (profiled on the benchmark set). Here
//! one buffer of [`BUFFER_BYTES`] serves a whole backup, and the unread tail
//! is moved only when the buffer runs out of room.

use std::io::{ErrorKind, Read};

/// Smallest chunk the chunker cuts (except at the end of a file).
pub const MIN_CHUNK: u32 = 256 * 1024;
/// Average chunk size.
pub const AVG_CHUNK: u32 = 1024 * 1024;
/// Largest chunk; half the ceiling servers accept, so a server could raise
/// its own limit's margin without a client change.
pub const MAX_CHUNK: u32 = 4 * 1024 * 1024;

const _: () = assert!(MAX_CHUNK as usize <= tandem_proto::MAX_RAW_CHUNK_BYTES);

/// Size of the read buffer: two largest chunks. Reads top the unread part up
/// to one window (the largest chunk), and the tail is moved to the front only
/// when less than a window of room is left. Three chunks moved less but cost
/// 4 MiB more of peak memory for no measurable gain.
const BUFFER_BYTES: usize = 2 * MAX_CHUNK as usize;

/// Reads land on addresses aligned to this. The kernel's copy into a buffer
/// that is 16-byte aligned (what the allocator gives) ran 3-4 times slower
/// than into a 64-byte aligned one on this machine kind (1.65 GB read into a
/// reused buffer: 1.2 s of system time against 0.33 s); page alignment also
/// keeps every read a whole number of pages.
const ALIGN: usize = 4096;

fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Splits readers into chunks; reuse one for many files.
#[derive(Debug, Default)]
pub struct Chunker {
    /// [`BUFFER_BYTES`] plus slack to start the working part on a page.
    buf: Vec<u8>,
}

impl Chunker {
    /// Reads `source` to its end and calls `each` with every chunk, in order.
    /// Returns the bytes read, or `None` if `each` returned false (the caller
    /// asked to stop).
    ///
    /// # Errors
    /// Read errors of `source` (interrupted reads are retried).
    pub fn split<R: Read>(
        &mut self,
        mut source: R,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> std::io::Result<Option<u64>> {
        if self.buf.len() != BUFFER_BYTES + ALIGN {
            self.buf = vec![0; BUFFER_BYTES + ALIGN];
        }
        let skew = self.buf.as_ptr().align_offset(ALIGN);
        let buf = &mut self.buf[skew..skew + BUFFER_BYTES];
        let window_bytes = MAX_CHUNK as usize;
        let (mut start, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
        loop {
            if !eof && end - start < window_bytes {
                if buf.len() - start < window_bytes + ALIGN {
                    // Not enough room for a whole window: move the unread tail
                    // (under one window) to the front, ending on a page.
                    let tail = end - start;
                    let to = align_up(tail) - tail;
                    buf.copy_within(start..end, to);
                    (start, end) = (to, to + tail);
                }
                // Top up to one window (rounded to whole pages) only, so what is
                // read is hashed and copied out while still in the CPU's cache.
                let want = align_up(start + window_bytes).min(buf.len());
                while end < want {
                    match source.read(&mut buf[end..want]) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => end += n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if start == end {
                return Ok(Some(total));
            }
            let window = &buf[start..end.min(start + window_bytes)];
            let len = fastcdc::v2020::FastCDC::new(window, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
                .next()
                .map_or(window.len(), |cut| cut.length);
            if !each(&window[..len]) {
                return Ok(None);
            }
            start += len;
            total += len as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::random_bytes as random;

    fn split_all(data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let read = Chunker::default()
            .split(data, |c| {
                out.push(c.to_vec());
                true
            })
            .expect("in-memory read");
        assert_eq!(read, Some(data.len() as u64));
        out
    }

    /// Reads at most `step` bytes per call, like a pipe or a slow disk.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(out.len()).min(self.1);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn cuts_where_fastcdc_cuts_the_whole_buffer() {
        for (len, seed) in [(0, 1), (1000, 2), (300_000, 3), (9 << 20, 4), (21 << 20, 5)] {
            let data = random(len, seed);
            let expected: Vec<Vec<u8>> =
                fastcdc::v2020::FastCDC::new(&data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
                    .map(|c| data[c.offset..c.offset + c.length].to_vec())
                    .collect();
            let got = split_all(&data);
            assert_eq!(got.len(), expected.len(), "{len} bytes");
            assert!(got == expected, "{len} bytes: chunks differ");
        }
    }

    #[test]
    fn short_reads_give_the_same_chunks() {
        let data = random(11 << 20, 6);
        let mut chunks = Vec::new();
        Chunker::default()
            .split(Trickle(&data, 100_003), |c| {
                chunks.push(c.to_vec());
                true
            })
            .expect("read");
        assert!(chunks == split_all(&data));
        assert_eq!(chunks.concat(), data);
    }

    #[test]
    fn one_chunker_serves_many_sources_and_stops_when_asked() {
        let mut chunker = Chunker::default();
        let big = random(10 << 20, 7);
        let mut seen = 0;
        let stopped = chunker
            .split(&big[..], |_| {
                seen += 1;
                seen < 2
            })
            .expect("read");
        assert_eq!(stopped, None);
        assert_eq!(seen, 2);
        let small = random(5000, 8);
        let mut got = Vec::new();
        chunker
            .split(&small[..], |c| {
                got.extend_from_slice(c);
                true
            })
            .expect("read");
        assert_eq!(got, small);
    }

    #[test]
    fn read_errors_are_returned() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk gone"))
            }
        }
        let err = Chunker::default()
            .split(Failing, |_| true)
            .expect_err("the error surfaces");
        assert_eq!(err.to_string(), "disk gone");
    }
}
