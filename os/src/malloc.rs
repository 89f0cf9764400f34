//! Allocator settings for the client and server processes.
//!
//! glibc gives threads their own malloc arenas (up to eight per core), and
//! memory freed in one arena is not reused by threads allocating from another.
//! Backup, restore and replication move multi-MiB buffers between threads
//! (scanner, compression and verification threads, the transport), so each
//! arena ends up caching its own few MiB.

/// Arenas the client may create. Measured on the 1.7 GB benchmark, three
/// alternating full backups each: the default peaks at 130-137 MiB (median
/// 9.36 s), two arenas at 96-97 MiB (9.91 s), four at 101-110 MiB (9.35 s).
/// Two keep the client well under restic's ~120 MiB.
pub const CLIENT_ARENAS: i32 = 2;

/// Arenas the server may create. A first replication of the benchmark node
/// took the source server to 358-448 MiB with the default, 225-256 MiB with
/// four and 209 MiB with two (replication 3.9-4.3 s in every case). Two
/// slowed the server's side of a full backup by ~5% (5.52-5.59 against
/// 5.20-5.36 s); four did not measurably.
pub const SERVER_ARENAS: i32 = 4;

/// Caps glibc's malloc arenas at `max`. Call first thing in `main`, before
/// any thread starts. Does nothing on other C libraries.
#[allow(unsafe_code)]
pub fn limit_arenas(max: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers, touches only the allocator's own
    // settings, and is called before other threads exist. A refused setting
    // (return 0) leaves the default in place, which is merely slower to shrink.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, max);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = max;
}
