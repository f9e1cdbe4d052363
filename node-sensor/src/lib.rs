//! vigil-sensor: eBPF process-lifecycle sensor.
//!
//! Data flows one way through the modules: `loader` (BPF programs and ring
//! buffer) → `decode` (bytes to records) → `cache` (process table,
//! exec_id/parent links) → `builder` (records to Tetragon events, with
//! `cgroup` for container ids) → `bus` (bounded per-subscriber fan-out) →
//! `server` (gRPC). `procfs` seeds the cache with processes that predate
//! the sensor.

pub mod btf_offsets;
pub mod builder;
pub mod cache;
pub mod cgroup;
pub mod config;
pub mod decode;
pub mod export;
pub mod flags;
pub mod k8s;
pub mod loader;
pub mod pipeline;
pub mod privileges;
pub mod procfs;
pub mod server;
pub mod stats;
pub mod uplink;
