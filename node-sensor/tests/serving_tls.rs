//! The sensor's own API off loopback: refused without mTLS or an explicit
//! --insecure; with --tls-dir it is served with the sensor certificate and
//! only client-role certificates get in (the relay's rule), and events flow
//! over it. Real sensor, real BPF, real TLS; root.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::{GetEventsRequest, GetHealthStatusRequest};
use serving::address::ServerAddress;
use tonic::Code;

struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Running {
    fn start(args: &[&str], log: std::path::PathBuf) -> Running {
        let child = Command::new(env!("CARGO_BIN_EXE_vigil-sensor"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start vigil-sensor");
        Running { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// The port the API listener bound (the sensor is given port 0 and
    /// logs what it got).
    fn port(&self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            let port = log.lines().filter(|l| l.contains("listening") && l.contains("listener=api ")).find_map(|l| {
                l.split_whitespace().find_map(|w| w.strip_prefix("address=")?.parse::<std::net::SocketAddr>().ok())
            });
            if let Some(a) = port {
                return a.port();
            }
            assert!(Instant::now() < deadline, "the API listener never came up; log:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn health(address: &ServerAddress, tls: Option<tonic::transport::ClientTlsConfig>) -> Result<(), tonic::Status> {
    let channel = match tls {
        Some(tls) => address.connect_tls(tls).await,
        None => address.connect().await,
    }
    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    FineGuidanceSensorsClient::new(channel).get_health(GetHealthStatusRequest::default()).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_api_needs_mtls_and_a_client_certificate() {
    require_kernel!();
    let dir = std::env::temp_dir().join(format!("vigil-serving-tls-{}", common::nonce()));
    tls::generate(&dir, &[], 2).expect("certificates");
    let certs = dir.display().to_string();
    let tls_as = |role: &str| {
        let (cert, key) = (dir.join(format!("{role}.pem")), dir.join(format!("{role}-key.pem")));
        tls::client_config(&dir.join("ca.pem"), &cert, &key, "localhost").expect("client TLS config")
    };

    // Neither mTLS nor --insecure: refused at start, naming the choice.
    let out = Command::new(env!("CARGO_BIN_EXE_vigil-sensor"))
        .args(["--server-address", "0.0.0.0:0"])
        .output()
        .expect("run vigil-sensor");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("server-address") && err.contains("--tls-dir") && err.contains("--insecure"), "{err}");

    // mTLS with the sensor certificate.
    let mut sensor = Running::start(
        &["--server-address", "0.0.0.0:0", "--tls-dir", &certs, "--node-name", "tls-node"],
        dir.join("sensor.log"),
    );
    let port = sensor.port();
    let address: ServerAddress = format!("localhost:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while health(&address, Some(tls_as("client"))).await.is_err() {
        assert!(Instant::now() < deadline, "sensor never served over mTLS; log:\n{}", sensor.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sensor.log().contains("serving the API with mTLS"), "{}", sensor.log());

    // Events flow to a client-role certificate.
    let channel = address.connect_tls(tls_as("client")).await.unwrap();
    let mut events = FineGuidanceSensorsClient::new(channel)
        .get_events(GetEventsRequest::default())
        .await
        .expect("GetEvents over mTLS")
        .into_inner();
    // The response came once the subscription was registered: no wait.
    let marker = format!("tls-marker-{}", common::nonce());
    assert!(Command::new("/bin/true").arg(&marker).status().unwrap().success());
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(e) = events.message().await.expect("stream") {
            if let Some(Event::ProcessExec(x)) = &e.event
                && x.process.as_ref().is_some_and(|p| p.binary == "/bin/true" && p.arguments == marker)
            {
                return e.node_name;
            }
        }
        String::new()
    })
    .await
    .expect("marker exec arrived over mTLS");
    assert_eq!(found, "tls-node");

    // A sensor-role certificate is not a client; no certificate, no TLS.
    let refused = health(&address, Some(tls_as("sensor"))).await.expect_err("sensor role refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("certificate role sensor may not use this listener; it needs the client or admin role"),
        "{refused:?}"
    );
    // Changing policies takes an admin certificate: a client one is
    // refused before the document is read; an admin one gets as far as
    // the document (an empty one, refused for what it is).
    let add = proto::tetragon::AddTracingPolicyRequest { yaml: String::new(), domain: String::new() };
    let mut client = FineGuidanceSensorsClient::new(address.connect_tls(tls_as("client")).await.unwrap());
    let refused = client.add_tracing_policy(add.clone()).await.expect_err("client role may not add");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(refused.message(), "certificate role client may not use AddTracingPolicy; it needs the admin role");
    let mut admin = FineGuidanceSensorsClient::new(address.connect_tls(tls_as("admin")).await.unwrap());
    let refused = admin.add_tracing_policy(add).await.expect_err("an empty document");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(health(&address, None).await.is_err(), "plaintext must not get in");

    // Replaced certificate files are taken without a restart: a new name
    // (same CA) works once the sensor has re-read them.
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(dir.join("ca-key.pem")).unwrap();
    let rotated = "sensor-rotated.vigil.test";
    let (cert, key) = tls::leaf_from_ca(&ca_pem, &ca_key, tls::Role::Sensor, &[rotated.into()], -1, 2).unwrap();
    // Key first: the half-written pair in between must not take effect.
    std::fs::write(dir.join("sensor-key.pem"), key).unwrap();
    std::fs::write(dir.join("sensor.pem"), cert).unwrap();
    let client_for = |name: &str| {
        tls::client_config(&dir.join("ca.pem"), &dir.join("client.pem"), &dir.join("client-key.pem"), name).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while health(&address, Some(client_for(rotated))).await.is_err() {
        assert!(Instant::now() < deadline, "rotated certificate not served; log:\n{}", sensor.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(health(&address, Some(client_for("localhost"))).await.is_err(), "the old name is gone");
    assert!(sensor.log().contains("certificate files changed; serving with the new ones"), "{}", sensor.log());
    assert!(sensor.child.try_wait().unwrap().is_none(), "same process, no restart");

    // --insecure: plaintext off loopback, with a warning.
    let plain = Running::start(
        &["--server-address", "0.0.0.0:0", "--insecure", "--node-name", "plain-node"],
        dir.join("plain.log"),
    );
    let port = plain.port();
    let address: ServerAddress = format!("localhost:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while health(&address, None).await.is_err() {
        assert!(Instant::now() < deadline, "--insecure sensor never served; log:\n{}", plain.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(plain.log().contains("--insecure: serving the API in plaintext"), "{}", plain.log());
    drop((sensor, plain));
    let _ = std::fs::remove_dir_all(&dir);
}
