//! The `vigil` command line: `getevents` (tetra's flags and output),
//! `status`, `version`, `nodes` (relay) and `certs generate`.
#![forbid(unsafe_code)]

pub mod args;
pub mod getevents;
pub mod request;
pub mod target;
pub mod tracingpolicy;
