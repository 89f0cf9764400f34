//! Data for unit tests.

use rand::{RngCore, SeedableRng};

/// `len` pseudo-random bytes, the same for the same `seed`.
pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}
