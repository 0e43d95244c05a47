//! hearth's integration tests, in one binary: one link after a change in `src/` instead of
//! one per file, and every test in one parallel pool. A module per topic; `cargo test NAME`
//! finds a test by any part of its path (`fault_tolerance::sqlite::crash_...`).
//!
//! Tests share this process, so none may change process-wide state: configuration goes to
//! each server explicitly, never through `std::env::set_var`, and each test has its own
//! ports, data directories and PostgreSQL databases. `tests/access_logs.rs` is a binary of
//! its own because it installs the process-wide tracing subscriber.

#[macro_use]
mod common;

mod access_control;
mod access_sccache;
mod bad_input;
mod blob_store;
mod cli;
mod content_meaning;
mod deploy_files;
mod e2e_ccache;
mod e2e_sccache;
mod fault_tolerance;
mod gc;
mod meta_store;
mod observability;
mod prometheus_dashboard;
mod s3_storage;
mod smoke;
mod stats_and_shutdown;
mod storage;
mod webdav_protocol;
