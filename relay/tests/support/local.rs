//! A real `vigil-relay` on loopback with mTLS certificates from
//! `tls::generate`, for tests that need no network namespaces (or root).
#![allow(dead_code)] // each test file uses part of it

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::tetragon::GetHealthStatusRequest;
use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::transport::ServerAddress;
use tonic::transport::{Channel, ClientTlsConfig};

pub struct Relay {
    pub child: Child,
    pub dir: PathBuf,
    pub clients: ServerAddress,
    pub ingest: ServerAddress,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A fresh certificate directory, unique per test.
pub fn cert_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-relay-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tls::generate(&dir, &[], 2).expect("certificates");
    dir
}

impl Relay {
    /// Starts the relay on `dir`'s certificates without waiting for it;
    /// its stderr is captured.
    pub fn spawn(dir: PathBuf, extra: &[&str]) -> Relay {
        let (client_port, ingest_port) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_vigil-relay"))
            .args(["--tls-dir", &dir.display().to_string()])
            .args(["--client-address", &format!("127.0.0.1:{client_port}")])
            .args(["--ingest-address", &format!("127.0.0.1:{ingest_port}")])
            .args(if extra.contains(&"--log-level") { &[][..] } else { &["--log-level", "warn"][..] })
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vigil-relay");
        Relay {
            child,
            dir,
            clients: format!("localhost:{client_port}").parse().expect("address"),
            ingest: format!("localhost:{ingest_port}").parse().expect("address"),
        }
    }

    /// Starts the relay on fresh certificates and waits until it serves.
    pub async fn start(test: &str, extra: &[&str]) -> Relay {
        let relay = Relay::spawn(cert_dir(test), extra);
        assert!(relay.serving_within(Duration::from_secs(20)).await, "relay did not start");
        relay
    }

    pub fn tls(&self, role: &str) -> ClientTlsConfig {
        let (cert, key) = (self.dir.join(format!("{role}.pem")), self.dir.join(format!("{role}-key.pem")));
        tls::client_config(&self.dir.join("ca.pem"), &cert, &key, "localhost").expect("client TLS config")
    }

    /// Whether the relay answers a health check within `limit`.
    pub async fn serving_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(ch) = self.clients.connect_tls(self.tls("client")).await
                && FineGuidanceSensorsClient::new(ch).get_health(GetHealthStatusRequest::default()).await.is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub async fn client(&self) -> Channel {
        self.clients.connect_tls(self.tls("client")).await.expect("client connection")
    }

    pub async fn sensor(&self) -> Channel {
        self.ingest.connect_tls(self.tls("sensor")).await.expect("sensor connection")
    }

    /// Stops the relay; what it logged.
    pub fn stop(&mut self) -> String {
        let _ = self.child.kill();
        self.exit_within(Duration::from_secs(10)).map(|(_, log)| log).unwrap_or_default()
    }

    /// Waits (at most `limit`) for the relay to exit; its status and stderr.
    pub fn exit_within(&mut self, limit: Duration) -> Option<(std::process::ExitStatus, String)> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
                }
                return Some((status, err));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
