//! Harness for the integration tests: real `tandem-server` processes on
//! 127.0.0.1 ephemeral ports, the real `tandem-admin` and `tandem` binaries,
//! each test with its own temporary directories.
//!
//! `cargo test` does not build other packages' binaries, so [`bin`] runs
//! `cargo build --workspace --bins` once per test process (a no-op when they are
//! current): the tests never run stale binaries.
//!
//! Modules: [`binaries`] (build and locate the programs), [`server`]
//! (`TestServer`, paired servers), [`client`] (`TestClient`, output
//! helpers), [`tree`] (test data and tree comparison), [`proxy`] (a
//! cuttable, recording TCP proxy), [`raw`] (a bare gRPC caller),
//! [`process`] (bounded waits, peak RSS), [`s3`] (an S3 server for pool
//! tests), [`metrics`] (scraping the Prometheus endpoint). Everything is
//! re-exported here.

pub mod binaries;
pub mod client;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod s3;
pub mod server;
pub mod tree;

pub use binaries::bin;
pub use client::{TestClient, assert_success, code, path_str, stderr};
pub use metrics::{metrics_get, metrics_text, sample};
pub use process::{now_ns, peak_rss_kib, run_measured, stop_child, wait_until};
pub use proxy::CutProxy;
pub use raw::{
    StalledBody, grpc_status, raw_backup_client, raw_backup_session, raw_channel, repair_answer,
    wire_chunk, with_session,
};
pub use server::{
    TestServer, container_files, damage_bytes_in, damage_container_bytes, pair, private_tempdir,
    replicate, replicated_alice,
};
pub use tree::{assert_same_tree, make_tree, random_bytes};
