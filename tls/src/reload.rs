//! A server's certificate files, loaded with every check TLS will make,
//! and watched so servers take replaced files without a restart: the new
//! settings are handed to the listener, which uses them for every handshake
//! after that (the listener itself is never closed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use tokio::sync::watch;

use crate::{CertFiles, Role, TlsError, server_config};

/// How often certificate files are checked for changes.
pub const POLL: Duration = Duration::from_secs(2);
/// How long start-up waits for certificate files that exist but do not load
/// (a rotation caught half-written).
pub const START_WAIT: Duration = Duration::from_secs(10);

/// The CA, certificate and key a server of one role presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerFiles {
    /// `ca.pem`, `<role>.pem` and `<role>-key.pem` in `dir`.
    pub fn in_dir(dir: &Path, role: Role) -> Self {
        ServerFiles {
            ca: dir.join(CertFiles::CA),
            cert: dir.join(CertFiles::cert(role)),
            key: dir.join(CertFiles::key(role)),
        }
    }

    /// The server settings, checked as the TLS layer will check them: a
    /// key that does not belong to the certificate is an error here, not a
    /// failed handshake later.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        server_config(&self.ca, &self.cert, &self.key)
    }

    /// Modification times (None for a missing file).
    pub fn stamp(&self) -> Vec<Option<SystemTime>> {
        [&self.ca, &self.cert, &self.key].iter().map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok()).collect()
    }

    /// Whether every file exists (a set being rewritten, not a wrong path).
    pub fn all_present(&self) -> bool {
        self.stamp().iter().all(Option::is_some)
    }

    /// Loads at start-up, allowing for a rotation caught half-written:
    /// while every file exists, retries for up to `wait` before giving up.
    /// A missing file fails at once.
    pub async fn load_at_start(&self, wait: Duration) -> Result<Arc<ServerConfig>, TlsError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut warned = false;
        loop {
            match self.load() {
                Ok(cfg) => return Ok(cfg),
                Err(e) if self.all_present() && tokio::time::Instant::now() < deadline => {
                    if !warned {
                        tracing::warn!(error = %e, "certificates do not load; retrying in case they are being rewritten");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Polls the files every `poll`; when they change and load, sends the
    /// new settings on `reload`. A changed set that does not load is logged
    /// and the server keeps the old one. Ends when `reload` has no receiver.
    pub async fn watch(self, poll: Duration, reload: watch::Sender<Arc<ServerConfig>>) {
        let mut seen = self.stamp();
        loop {
            tokio::time::sleep(poll).await;
            if reload.is_closed() {
                return;
            }
            let now = self.stamp();
            if now == seen {
                continue;
            }
            seen = now;
            match self.load() {
                Ok(cfg) => {
                    tracing::info!(cert = %self.cert.display(), "certificate files changed; serving with the new ones");
                    let _ = reload.send(cfg);
                }
                Err(e) => {
                    tracing::error!(error = %e, "certificate files changed but do not load; keeping the old ones")
                }
            }
        }
    }
}
