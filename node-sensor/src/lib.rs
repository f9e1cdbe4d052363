//! vigil-sensor: eBPF process-lifecycle sensor.
//!
//! Data flows one way, one module per stage:
//!
//! `loader` (BPF programs and ring buffer; offsets from `btf_offsets`) →
//! `decode` (bytes to records) → `cache` (process table, exec_id and
//! parent links) → `convert` (records to Tetragon events, with `cgroup` for
//! container ids, `flags`, `privileges`, `clock`) → `netns_filter`
//! (`--only-own-netns`) → `pod_stage` (pod data from the `k8s` watch) →
//! the bus → `server` (Tetragon's gRPC API), `export` (JSON lines file) and
//! `uplink` (relays). `pipeline` runs the stages from decode to the bus;
//! `procfs` seeds the cache with processes that predate the sensor, and
//! `startup` keeps records queued during that walk from repeating it;
//! `stats` holds every counter; `config` the settings; `dump` carries
//! `GetDebug`'s process-cache dumps from the API to the pipeline.

pub mod btf_offsets;
pub mod cache;
pub mod cgroup;
pub mod clock;
pub mod config;
pub mod convert;
pub mod decode;
pub mod dump;
pub mod exec_times;
pub mod flags;
pub mod health;
pub mod k8s;
pub mod loader;
pub mod losses;
pub mod metrics;
pub mod mounts;
pub mod netns_filter;
pub mod pipeline;
pub mod pod_stage;
pub mod policies;
pub mod privileges;
pub mod procfs;
pub mod server;
pub mod startup;
pub mod stats;
pub mod tracefs;
pub mod uplink;
