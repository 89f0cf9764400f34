//! The Tandem backup-archive client (`tandem`, TSM `dsmc`).
//!
//! Layout, one folder per part of the work:
//! - [`cli`]: the command line and dispatch; [`options`]: the options file
//!   (config crate) and where it is found.
//! - [`logon`]: the logon decision (pure), carrying it out (primary first with
//!   retries, failover to the replication server, failback), and what a
//!   logon saves (pushed server details, last backups per server).
//! - [`backup`]: walk by directory descriptors, read attributes, chunk and
//!   hash on one thread; compress, upload and commit on another.
//! - [`archive`]: finding, listing and deleting archive copies (TSM
//!   ARCHIVE/RETRIEVE); storing and retrieving them reuse backup and restore.
//! - [`selection`] + [`restore`]: what to restore, where it may go, and
//!   writing it verified; [`query`]: `query backup|filespace|session|options`.
//! - [`output`]: TDM messages to the console and `dsierror.log`, times.
//! - [`names`], [`paths`]: any file name as the catalog's UTF-8 and shown
//!   safely; path rules shared by backup and restore.
//! - [`error`]: `ClientError` and the exit codes (0/4/8/12, as `dsmc`).

pub mod archive;
pub mod backup;
pub mod cli;
pub mod db;
pub mod delete;
pub mod error;
pub mod logon;
pub mod names;
pub mod options;
pub mod output;
pub mod paths;
pub mod query;
pub mod restore;
pub mod schedule;
pub mod selection;
pub mod state_dir;
#[cfg(test)]
mod test_data;
pub mod vault;

pub use cli::run;
pub use error::ExitStatus;
