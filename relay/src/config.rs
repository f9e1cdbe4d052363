//! vigil-relay flags.

use std::path::PathBuf;

use clap::Parser;
use serving::ServerAddress;
use serving::daemon::LogFormat;

#[derive(Debug, Parser, Clone)]
#[command(name = "vigil-relay", version, about = "Vigil relay: one cluster-wide stream from every node's sensor")]
pub struct Flags {
    /// Listen address for clients (tetragon.FineGuidanceSensors and the admin API).
    #[arg(long, default_value = "0.0.0.0:54330")]
    pub client_address: ServerAddress,
    /// Listen address for sensors (vigil.relay.v1.Ingest).
    #[arg(long, default_value = "0.0.0.0:54331")]
    pub ingest_address: ServerAddress,
    /// Directory with ca.pem, relay.pem and relay-key.pem (`vigil certs generate`).
    /// Clients must present client certificates, sensors sensor certificates.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Serve plaintext without client authentication (tests, loopback only).
    #[arg(long)]
    pub insecure: bool,
    /// How long events wait to be put in time order across nodes.
    #[arg(long, default_value_t = 100)]
    pub reorder_window_ms: u64,
    /// Most events held for reordering; past it the oldest leave early
    /// (counted as sent early). A 100 ms window at 300,000 events/s holds
    /// about 30,000; each held event costs about 2 KB.
    #[arg(long, default_value_t = 200_000)]
    pub max_pending: usize,
    /// Recent events kept for --since/--last queries.
    #[arg(long, default_value_t = 100_000)]
    pub history_size: usize,
    /// Events queued per client before its events are dropped and reported
    /// to it (about 0.2 s at 300,000 events/s; a queued event is a shared
    /// pointer, the event itself is not copied per client).
    #[arg(long, default_value_t = 65_536)]
    pub client_queue_size: usize,
    /// Name on the relay's own notices.
    #[arg(long, default_value = "vigil-relay")]
    pub name: String,
    /// Log filter.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("mTLS is required: pass --tls-dir (see `vigil certs generate`), or --insecure for plaintext")]
    NoTls,
    #[error("--tls-dir and --insecure exclude each other")]
    Both,
}

impl Flags {
    pub fn check(&self) -> Result<(), ConfigError> {
        match (&self.tls_dir, self.insecure) {
            (None, false) => Err(ConfigError::NoTls),
            (Some(_), true) => Err(ConfigError::Both),
            _ => Ok(()),
        }
    }
}
