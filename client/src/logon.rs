//! Logon, failover and failback, and what a logon leaves behind.
//!
//! - [`failover`]: the decision, pure: primary first, the replication server
//!   when the primary cannot be reached, back to the primary when it returns
//!   (tests named after SPEC rows).
//! - [`session`]: carries the decision out over the network: retries with
//!   backoff, certificate checks, the session a command works in.
//! - [`options_push`]: the replication server's details the primary pushes
//!   at logon, saved in the options file.
//! - [`nrtable`]: the last acknowledged backup per server and filespace.
//! - [`currency`]: whether a failover server's replica is as current as the
//!   last backup (warnings at failover restore).

pub(crate) mod busy;
pub mod currency;
pub mod failover;
pub mod nrtable;
pub mod options_push;
pub mod session;
