//! Heap buffers aligned for direct (`O_DIRECT`) I/O, shared by the restore's
//! writer and the server's container appender.

/// Alignment of buffer address, file offset and length for direct I/O: the
/// largest logical block size of common disks.
pub const DIRECT_IO_ALIGN: usize = 4096;

/// A zeroed buffer of a fixed length whose first byte sits on a
/// [`DIRECT_IO_ALIGN`] boundary. A `Vec` one alignment longer than needed is
/// allocated and the aligned region is used, so no unsafe allocation code is
/// needed.
#[derive(Debug)]
pub struct AlignedBuf {
    buf: Vec<u8>,
    /// Where the aligned region starts in `buf`.
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A buffer of `len` bytes; `None` when the allocation cannot be aligned
    /// (callers then do not write directly).
    pub fn new(len: usize) -> Option<Self> {
        let buf = vec![0u8; len + DIRECT_IO_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_IO_ALIGN);
        (start < DIRECT_IO_ALIGN).then_some(AlignedBuf { buf, start, len })
    }

    /// The aligned region.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// The aligned region, to fill.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_is_aligned_and_of_the_asked_length() {
        for len in [0, 1, 4096, 5000, 1 << 20] {
            let mut b = AlignedBuf::new(len).unwrap();
            assert_eq!(b.as_slice().len(), len);
            assert_eq!(b.as_mut_slice().as_ptr() as usize % DIRECT_IO_ALIGN, 0);
        }
    }
}
