//! Standard output for results. A reader that stops early
//! (`tandem-admin query actlog | head -1`) closes the pipe; `println!` would
//! then panic with a stack trace. Writing through [`line`] instead ends the
//! program quietly and successfully, as ripgrep does, and any other write
//! failure (a full disk behind a redirection) is reported and fails it.
//! SIGPIPE itself stays ignored: its default would also kill the program
//! silently when a server resets a connection mid-transfer (vectored socket
//! writes raise it), and that must stay a reported error.

use std::io::Write;

/// Writes `args` and a newline to standard output (see the module doc for
/// what happens when it cannot).
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written.map_err(unless_reader_gone) {
        eprintln!("cannot write to standard output: {e}");
        std::process::exit(12);
    }
}

/// A failed write to standard output: when its reader has gone, the program
/// ends here, quietly and successfully; any other error is handed back.
pub fn unless_reader_gone(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    e
}

/// `println!` for results, through [`line`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::stdout::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::stdout::line(format_args!($($arg)*))
    };
}
