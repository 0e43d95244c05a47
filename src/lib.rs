//! hearth: a self-hosted, team-shared compilation cache server for sccache and ccache.
//!
//! Data flows top to bottom, never back up:
//!
//! ```text
//!  http (webdav front-end)      parse, authorize, render errors
//!        │  namespace + key + body stream
//!  cache (core)                 get / put / head / delete, dedup, stats hooks
//!        │                            │
//!  blob (local fs)              meta (sqlite · postgres)
//!        │  bytes as they stream in
//!  meaning                      what an sccache or ccache entry holds, not how it is laid out
//! ```
//!
//! Side tasks share one shutdown token: the stats flusher ([`stats`]), the entry change feed
//! ([`feed`]), garbage collection ([`gc`]) and the HTTP server.

pub mod access;
pub mod admin;
pub mod auth;
pub mod blob;
pub mod cache;
pub mod cli;
pub mod config;
pub mod error;
pub mod feed;
pub mod gc;
pub mod healthcheck;
pub mod hot;
pub mod http;
pub mod meaning;
pub mod meta;
pub mod metrics;
pub mod path;
pub mod reconcile;
pub mod report;
pub mod server;
pub mod size;
pub mod stats;
pub mod telemetry;
pub mod time;

pub use error::{Error, Result};
