//! vigil-relay: one cluster-wide stream from every node's sensor.
//!
//! `ingest` takes sequence-numbered batches from sensors (mTLS, sensor
//! role), acknowledges them and feeds `merge`, which orders events by time
//! within a bounded window and drops duplicates (replays by sequence,
//! shared-kernel copies by boot id, process start, pid and kind). Merged
//! events go to `hub`: a bounded `history` ring and the shared bounded
//! fan-out bus; `query` serves Tetragon's API and the admin API to clients
//! (client or admin role). `nodes` keeps per-node status. `policies` holds
//! the tracing policies added at the relay, which every sensor's ingest
//! stream carries to it. With `--backbone`, `backbone` puts NATS
//! JetStream between ingest and merge, so relays split the work.
#![forbid(unsafe_code)]

pub mod backbone;
pub mod config;
pub mod hub;
pub mod ingest;
pub mod merge;
pub mod metrics;
pub mod nodes;
pub mod policies;
pub mod query;
pub mod token_review;
