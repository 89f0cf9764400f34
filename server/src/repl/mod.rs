//! Node replication, by role. The engine (`tandem-replication`) decides what
//! to send and in which order; this module gives it its two sides.
//!
//! - [`source`]: [`LocalSource`], a node of a local repository as the source.
//! - [`local_target`]: [`LocalTarget`], a replica node written into a local
//!   repository. The `Replication` service delegates every partner call to
//!   it, and two data directories on one host can replicate through it.
//! - [`remote`]: [`RemoteTarget`], the partner server over gRPC (mutual TLS,
//!   the handshake, protobuf at this edge).
//! - [`runs`]: runs on the source server: checks, one run per node, run
//!   records, the schedule.
//! - [`compare`]: `query replnode`.
//! - [`recover`]: `recover node`, a run turned round: the replica server
//!   sends a node back to its rebuilt source.
//! - [`repair`]: self-repair of damaged chunks from the partner that shares
//!   the node.
//! - [`switch`]: `switch replication`, a planned swap of a node's primary
//!   and replica servers, step by step and safe to re-run.

pub mod compare;
pub mod local_target;
pub mod recover;
pub mod remote;
pub mod repair;
pub mod runs;
pub mod source;
pub mod switch;

pub use compare::compare_node;
pub use local_target::{LocalTarget, ReplicaOf};
pub use remote::{RemoteTarget, SERVER_HEADER};
pub use runs::{StartedRun, replicate_node, rule_of, schedule, start_run};
pub use source::LocalSource;
