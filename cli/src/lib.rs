//! The `vigil` command line: `getevents` (tetra's flags and output),
//! `status` and `version`.
#![forbid(unsafe_code)]

pub mod args;
pub mod getevents;
pub mod request;
