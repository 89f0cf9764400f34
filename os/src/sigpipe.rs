//! Standard output closed by its reader (`tandem-admin query actlog | head -1`).

/// Lets a closed output pipe end the program as it ends `cat` or `ls`: by
/// SIGPIPE, quietly. Rust ignores SIGPIPE, so a write to a closed pipe fails
/// instead, and `println!` turns that failure into a panic with a stack
/// trace. Call first thing in `main` of a command-line program; network
/// sockets are unaffected (the standard library sends with `MSG_NOSIGNAL`),
/// so a server that goes away is still reported as an error.
#[allow(unsafe_code)]
pub fn end_quietly_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: signal() with SIG_DFL installs no handler code; it only
    // restores the default disposition, before other threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
