//! Serving, once, for both daemons: where they listen and how (TCP, unix
//! socket, or mTLS whose certificates rotate without closing the listener),
//! Tetragon's `GetEvents`/`GetHealth`/`GetVersion` over any event source,
//! and the process around them (logging, signals, runtime, exit codes).
//! The sensor's and the relay's `main.rs` only wire their stages to it.
#![forbid(unsafe_code)]

pub mod address;
pub mod api;
pub mod connections;
pub mod daemon;
pub mod export;
pub mod export_file;
pub mod export_filter;
pub mod health;
pub mod listen;
pub mod log_limit;
pub mod metrics;
pub mod rate_limit;
pub mod settings;

pub use address::{AddressError, ServerAddress};
