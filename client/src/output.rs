//! What the client tells its user and its auditors.
//!
//! - [`messages`]: every TDM message the client prints, with its id.
//! - [`console`]: messages and progress on the terminal, or JSON.
//! - [`error_log`]: `dsierror.log`, where failover and failback are recorded.
//! - [`timefmt`]: times parsed from the command line and shown in tables.
//! - [`stdout`]: results on standard output, ending quietly when the reader goes.
//! - [`parse_errors`]: command-line errors as one line, or JSON when asked.

pub mod console;
pub mod error_log;
pub mod messages;
pub mod parse_errors;
pub mod stdout;
pub mod timefmt;
