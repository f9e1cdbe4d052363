//! A real `vigil-relay` on loopback with mTLS certificates from
//! `tls::generate`, for tests that need no network namespaces (or root).
//! It binds port 0 and the test reads the ports it got from its log.
#![allow(dead_code, reason = "each test file uses part of it")]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use proto::tetragon::GetHealthStatusRequest;
use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use serving::address::ServerAddress;
use test_support::daemon::Daemon;
use tonic::transport::{Channel, ClientTlsConfig};

pub struct Relay {
    pub daemon: Daemon,
    pub dir: PathBuf,
}

/// A fresh certificate directory, unique per test.
pub fn cert_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-relay-{test}-{}", test_support::nonce()));
    let _ = std::fs::remove_dir_all(&dir);
    tls::generate(&dir, &[], 2).expect("certificates");
    dir
}

/// A test sensor's hello as `node` (boot id and instance named after it).
pub fn hello(node: &str) -> proto::vigil::relay::v1::Hello {
    proto::vigil::relay::v1::Hello {
        node_name: node.into(),
        boot_id: format!("boot-{node}"),
        sensor_version: "test".into(),
        instance_id: format!("{node}-1"),
        replay_buffer_size: 10,
    }
}

/// Where `addr` (a loopback listener) is dialled, by the name on the
/// relay's certificate.
fn by_name(addr: std::net::SocketAddr) -> ServerAddress {
    format!("localhost:{}", addr.port()).parse().expect("address")
}

impl Relay {
    /// Starts the relay on `dir`'s certificates without waiting for it.
    pub fn spawn(dir: PathBuf, extra: &[&str]) -> Relay {
        // The listening lines are logged whatever level the test asks for.
        let level = match extra.iter().position(|a| *a == "--log-level") {
            Some(i) => format!("{},serving::listen=info", extra.get(i + 1).copied().unwrap_or("warn")),
            None => "warn,serving::listen=info".into(),
        };
        let mut skip_next = false;
        let rest: Vec<&str> = extra
            .iter()
            .copied()
            .filter(|a| {
                let keep = !skip_next && *a != "--log-level";
                skip_next = *a == "--log-level";
                keep
            })
            .collect();
        // Port 0 for the listeners a test does not place itself.
        let defaults: Vec<&str> = ["--client-address", "--ingest-address"]
            .into_iter()
            .filter(|flag| !rest.contains(flag))
            .flat_map(|flag| [flag, "127.0.0.1:0"])
            .collect();
        let daemon = Daemon::spawn(
            Command::new(env!("CARGO_BIN_EXE_vigil-relay"))
                .args(["--tls-dir", &dir.display().to_string()])
                .args(defaults)
                .args(["--log-level", &level])
                .args(rest),
        );
        Relay { daemon, dir }
    }

    /// Starts the relay on fresh certificates and waits until it serves.
    pub async fn start(test: &str, extra: &[&str]) -> Relay {
        let relay = Relay::spawn(cert_dir(test), extra);
        assert!(relay.serving_within(Duration::from_secs(30)).await, "relay did not start:\n{}", relay.log());
        relay
    }

    /// The client listener's address (waits for it to be bound).
    pub fn clients(&self) -> ServerAddress {
        by_name(self.daemon.listening("clients"))
    }

    /// The ingest listener's address (waits for it to be bound).
    pub fn ingest(&self) -> ServerAddress {
        by_name(self.daemon.listening("ingest"))
    }

    pub fn tls(&self, role: &str) -> ClientTlsConfig {
        let (cert, key) = (self.dir.join(format!("{role}.pem")), self.dir.join(format!("{role}-key.pem")));
        tls::client_config(&self.dir.join("ca.pem"), &cert, &key, "localhost").expect("client TLS config")
    }

    /// Whether the relay answers a health check within `limit`.
    pub async fn serving_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let clients = self.clients();
        while Instant::now() < deadline {
            if let Ok(ch) = clients.connect_tls(self.tls("client")).await
                && FineGuidanceSensorsClient::new(ch).get_health(GetHealthStatusRequest::default()).await.is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    pub async fn client(&self) -> Channel {
        let clients = self.clients();
        clients.connect_tls(self.tls("client")).await.expect("client connection")
    }

    /// An ingest connection with the any-node sensor credential.
    pub async fn sensor(&self) -> Channel {
        let ingest = self.ingest();
        ingest.connect_tls(self.tls("sensor")).await.expect("sensor connection")
    }

    /// An ingest connection with a credential bound to `node`.
    pub async fn sensor_of(&self, node: &str) -> Channel {
        let dir = self.dir.join("nodes").join(node);
        if !dir.exists() {
            tls::issue_node(&self.dir, node, &[], 2).expect("node credential");
        }
        let config =
            tls::client_config(&dir.join("ca.pem"), &dir.join("sensor.pem"), &dir.join("sensor-key.pem"), "localhost")
                .expect("node TLS config");
        self.ingest().connect_tls(config).await.expect("sensor connection")
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// Stops the relay; what it logged.
    pub fn stop(&self) -> String {
        self.daemon.stop()
    }

    /// Waits (at most `limit`) for the relay to exit; its status and log.
    pub fn exit_within(&self, limit: Duration) -> Option<(std::process::ExitStatus, String)> {
        self.daemon.exit_within(limit)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
