//! Operating-system glue that the client and the server share, kept in one
//! small crate so that the rest of the workspace can forbid `unsafe` code:
//!
//! - [`aligned`]: heap buffers aligned for direct (`O_DIRECT`) I/O, used by
//!   the restore's writer and the server's container appender;
//! - [`malloc`]: glibc arena limits, the one audited `unsafe` call;
//! - [`atomic_file`]: replace a file so that readers and a crash see the old
//!   content or the new, never a mix (options pushed by a server, password
//!   and token files, the server's private files);
//! - [`secret_text`]: parse errors of files that hold secrets, without the
//!   lines of the file they quote;
//! - [`way`]: whether anyone but this user and root could put another
//!   directory in the place of a private one (the client's state
//!   directory, a server's data directory, a vault).

pub mod aligned;
pub mod atomic_file;
pub mod malloc;
pub mod secret_text;
pub mod way;
