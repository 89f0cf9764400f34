//! The Tandem backup-archive client (`tandem`, TSM `dsmc`).
//!
//! Layout:
//! - [`cli`]: the command line and dispatch.
//! - [`options`]: the options file (config crate) and where it is found.
//! - [`failover`] + [`session`]: the logon decision (pure) and the code that carries it out:
//!   primary first with retries, failover to the replication server, failback.
//! - [`walk`] + [`scan`] + [`meta`] + [`backup`]: walk by directory descriptors, read attributes
//!   and chunk on one thread, upload and commit on another.
//! - [`names`]: any file name as the catalog's UTF-8, and shown safely.
//! - [`selection`] + [`restore`]: what to restore, where it may go, and writing it verified.
//! - [`query`]: `query backup|filespace|session|options`.
//! - [`options_push`] + [`nrtable`]: the replication server pushed at logon, saved in the
//!   options file; the last acknowledged backup per server and filespace.
//! - [`messages`], [`console`], [`error_log`]: TDM messages to the console and `dsierror.log`.
//! - [`error`]: `ClientError` and the exit codes (0/4/8/12, as `dsmc`).

pub mod backup;
pub mod chunker;
pub mod cli;
pub mod compress;
pub mod console;
pub mod currency;
pub mod error;
pub mod error_log;
pub mod failover;
pub mod inventory;
pub mod messages;
pub mod meta;
pub mod names;
pub mod nrtable;
pub mod options;
pub mod options_push;
pub mod paths;
pub mod query;
pub mod restore;
pub mod scan;
pub mod selection;
pub mod session;
#[cfg(test)]
mod test_data;
pub mod timefmt;
pub mod walk;

pub use cli::run;
pub use error::ExitStatus;
