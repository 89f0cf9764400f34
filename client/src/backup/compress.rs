//! Chunk compression: zstd, except for data that will not compress.
//!
//! Half of a typical backup can be data that is already compressed or
//! encrypted (media, archives, databases with compressed pages). zstd finds
//! that out itself, but only after running its match finder over every byte:
//! on random data that is ~0.7 s of CPU per GB on this machine kind, time the
//! two cores need for the data that does compress. As in Borg's `auto` mode,
//! a cheap test decides first: when samples taken every 128 KiB across a chunk
//! all have the byte statistics of random data, the chunk is stored in
//! a zstd frame made of raw blocks, which every zstd decoder (the server's
//! verification, the restore) reads like any other frame. zstd would have
//! stored such data raw as well, so nothing is lost but a small chance: data
//! of random-looking bytes that repeats within one chunk stays uncompressed.

use std::cell::RefCell;

/// zstd level. Measured on the benchmark data in 1 MiB blocks (zstd -b): level 3
/// compresses text 5.6x at 306 MB/s and decompresses it at 859 MB/s; level 1 gives
/// 5.4x at 320 MB/s and 763 MB/s. Level 3 stores less and verifies/restores faster
/// for about 5% more compression time.
const ZSTD_LEVEL: i32 = 3;

/// Bytes per sample for the randomness test.
const SAMPLE_BYTES: usize = 4096;
/// One sample per this many bytes (3% of the data is looked at). With three
/// samples per chunk, chunks that mixed random and text parts were stored raw
/// and the benchmark set grew by 2.5 MiB.
const SAMPLE_STRIDE: usize = 128 * 1024;
/// Order-0 entropy (bits per byte) above which a sample counts as random. A
/// 4 KiB sample of truly random bytes measures about 7.95; text about 4.5;
/// zstd gains under 1% on data above 7.9.
const RANDOM_ENTROPY_BITS: f64 = 7.9;

/// zstd's frame magic number.
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// Largest zstd block.
const MAX_BLOCK: usize = 128 * 1024;

thread_local! {
    /// One compression context per blocking thread, reused across chunks
    /// (making one per chunk showed in the profile).
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { RefCell::new(None) };
}

/// Compresses one chunk into a zstd frame.
///
/// # Errors
/// zstd failures (out of memory).
pub fn compress_chunk(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    if looks_random(raw) {
        return Ok(raw_frame(raw));
    }
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if let Some(compressor) = slot.as_mut() {
            return compressor.compress(raw);
        }
        slot.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?)
            .compress(raw)
    })
}

/// Whether `data` looks like random bytes throughout: one sample at the start
/// of every [`SAMPLE_STRIDE`] bytes and one at the very end, all random.
/// Chunks shorter than three samples are always compressed.
fn looks_random(data: &[u8]) -> bool {
    if data.len() < 3 * SAMPLE_BYTES {
        return false;
    }
    let last = data.len() - SAMPLE_BYTES;
    (0..last)
        .step_by(SAMPLE_STRIDE)
        .chain([last])
        .all(|at| entropy_bits(&data[at..at + SAMPLE_BYTES]) > RANDOM_ENTROPY_BITS)
}

/// Order-0 Shannon entropy of `sample`, in bits per byte.
fn entropy_bits(sample: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in sample {
        counts[usize::from(b)] += 1;
    }
    let n = sample.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// `data` as one zstd frame of raw (stored) blocks: single segment, with the
/// content size, no checksum (the chunk id is the checksum).
fn raw_frame(data: &[u8]) -> Vec<u8> {
    let blocks = data.len().div_ceil(MAX_BLOCK).max(1);
    let mut frame = Vec::with_capacity(data.len() + 9 + 3 * blocks);
    frame.extend_from_slice(&ZSTD_MAGIC.to_le_bytes());
    // Frame header descriptor: content size in 4 bytes (flag 2), single
    // segment (so no window descriptor), no checksum, no dictionary. Chunks
    // are at most 8 MiB, well inside 4 bytes.
    frame.push(0b1010_0000);
    frame.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let mut pieces = data.chunks(MAX_BLOCK).peekable();
    if data.is_empty() {
        frame.extend_from_slice(&block_header(0, true));
    }
    while let Some(piece) = pieces.next() {
        frame.extend_from_slice(&block_header(piece.len(), pieces.peek().is_none()));
        frame.extend_from_slice(piece);
    }
    frame
}

/// A raw block's 3-byte header: last-block bit, type 0 (raw), size.
fn block_header(len: usize, last: bool) -> [u8; 3] {
    let value = ((len as u32) << 3) | u32::from(last);
    let bytes = value.to_le_bytes();
    [bytes[0], bytes[1], bytes[2]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::random_bytes as random;

    fn text(len: usize) -> Vec<u8> {
        b"backup restore node replica server client filespace version "
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    }

    #[test]
    fn raw_frames_decode_with_zstd_to_the_same_bytes() {
        for len in [
            0,
            1,
            MAX_BLOCK - 1,
            MAX_BLOCK,
            MAX_BLOCK + 1,
            3 * MAX_BLOCK,
            4 << 20,
        ] {
            let data = random(len, len as u64);
            let frame = raw_frame(&data);
            let back = zstd::bulk::decompress(&frame, len.max(1)).expect("valid zstd frame");
            assert!(back == data, "{len} bytes");
        }
    }

    #[test]
    fn random_data_is_stored_raw_and_text_is_compressed() {
        let noise = random(1 << 20, 1);
        let stored = compress_chunk(&noise).unwrap();
        assert_eq!(stored, raw_frame(&noise));

        let prose = text(1 << 20);
        let packed = compress_chunk(&prose).unwrap();
        assert!(packed.len() < prose.len() / 10);
        assert_eq!(zstd::bulk::decompress(&packed, prose.len()).unwrap(), prose);
    }

    #[test]
    fn a_chunk_random_only_in_part_is_compressed() {
        // Random start, text after: the later samples are not random.
        let mut mixed = random(300 * 1024, 2);
        mixed.extend(text(700 * 1024));
        assert!(!looks_random(&mixed));
        let packed = compress_chunk(&mixed).unwrap();
        assert!(packed.len() < mixed.len() / 2);
        assert_eq!(zstd::bulk::decompress(&packed, mixed.len()).unwrap(), mixed);
    }

    #[test]
    fn a_short_text_run_inside_random_data_is_noticed() {
        let mut mixed = random(1 << 20, 5);
        let run = text(140 * 1024);
        mixed[400_000..400_000 + run.len()].copy_from_slice(&run);
        assert!(!looks_random(&mixed));
    }

    #[test]
    fn small_and_uniform_chunks_are_compressed() {
        assert!(!looks_random(&random(3 * SAMPLE_BYTES - 1, 3)));
        assert!(!looks_random(&vec![0u8; 1 << 20]));
        assert!(entropy_bits(&random(SAMPLE_BYTES, 4)) > RANDOM_ENTROPY_BITS);
        assert!(entropy_bits(&text(SAMPLE_BYTES)) < 5.0);
    }
}
