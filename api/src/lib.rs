//! The Hodei control plane as a library: configuration, storage, the HTTP API and the
//! commands of the `hodei` binary. `main.rs` only parses arguments and calls `cli::run`;
//! tests drive the same functions.

pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod db;
pub mod dev;
pub mod embedded_postgres;
pub mod error;
pub mod http;
pub mod key_cache;
pub mod listener;
pub mod loops;
pub mod metrics;
pub mod provider;
pub mod reconcile;
pub mod serve;
pub mod store;
/// Test support (a database per test); built for tests only.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod token_cache;
pub mod worker_tokens;

pub use http::{app, AppState};
