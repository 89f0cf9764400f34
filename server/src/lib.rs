//! The Tandem backup server.
//!
//! Layers, from the disk up; each uses only those listed before it:
//! - [`model`]: the domain types (nodes, versions, policy, the typed
//!   replication vocabulary); [`error`]: the errors, mapped to gRPC statuses
//!   in one place.
//! - [`catalog`]: the SQLite catalog; every SQL statement lives there.
//! - [`storage`]: append-only chunk containers (data fsynced before it is
//!   indexed); [`pins`]: chunks a session relies on.
//! - [`repository`]: catalog + containers + pins as one library, with chunk
//!   ingest in the durability order; no gRPC. [`expire`] works on it.
//! - [`state`]: `ServerState`, the repository plus what a running server
//!   needs (config, identity, sessions, [`secrets`], the data dir's lock;
//!   [`auth`] for passwords and tokens).
//! - [`convert`]: protobuf <-> domain, validating what callers send.
//! - [`repl`]: node replication by role. Its source and local target use
//!   only the repository; the remote target, runs and `query replnode` use
//!   the server state and the conversions.
//! - [`service`]: the gRPC services (`Backup`, `Admin`, `Replication`), thin.
//! - [`serve`]: the listener, the services and the background schedules.
//! - Beside them: [`faults`] (pause points for kill tests), [`config`]
//!   (defaults < file < env < flags), [`actlog`]
//!   (activity log), [`console`] (`tandem-admin`), [`demo`]
//!   (`tandem-server demo`).
//!
//! A backup flows: the client asks which chunk ids are missing
//! (`FindMissingChunks`), uploads those (`UploadChunks`: verified, appended,
//! fsynced, indexed), then commits the object versions (`CommitObjects`: one
//! SQLite transaction, the acknowledgement).

pub mod actlog;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod console;
pub mod convert;
pub mod coverage;
pub mod dbbackup;
pub mod dbrestore;
pub mod demo;
pub mod descriptors;
pub mod error;
pub mod expire;
pub mod faults;
pub mod local_vault;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod pins;
pub mod repl;
pub mod repository;
pub mod schedule;
pub mod secrets;
pub mod serve;
pub mod service;
pub mod state;
pub mod storage;

pub use serve::run;
pub use state::{FIRST_ADMIN, ServerState};
