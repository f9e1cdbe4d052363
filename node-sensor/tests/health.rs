//! The sensor's grpc.health.v1 service on its plain health port: SERVING
//! (for the sensor and Tetragon's API) while the ring buffer is read,
//! NOT_FOUND for a service it does not serve, NOT_SERVING from shutdown on;
//! that port serves nothing else; a bad address stops start-up naming the
//! flag.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use std::time::Duration;

use common::Sensor;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The port the sensor's log says the health listener took.
fn health_address(sensor: &Sensor) -> String {
    let log = sensor.log();
    let line = log.lines().find(|l| l.contains("listener=health")).expect("the health listener's line");
    let address = line.split("address=").nth(1).unwrap().split_whitespace().next().unwrap();
    format!("http://{address}")
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest { service: service.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_serving_while_the_ring_buffer_is_read_and_not_after_the_stop() {
    require_kernel!();
    let sensor = Sensor::start(&["--health-server-address", "127.0.0.1:0"]).await;
    let channel = tonic::transport::Endpoint::from_shared(health_address(&sensor)).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());

    // The watch goes SERVING once the reader has made a pass.
    let mut watch = health.watch(check("")).await.unwrap().into_inner();
    let serving = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(m) = watch.message().await.unwrap() {
            if m.status == ServingStatus::Serving as i32 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(serving, Ok(true), "never SERVING; log:\n{}", sensor.log());
    let status = |r: tonic_health::pb::HealthCheckResponse| r.status;
    let api = health.check(check("tetragon.FineGuidanceSensors")).await.unwrap().into_inner();
    assert_eq!(status(api), ServingStatus::Serving as i32);
    let unknown = health.check(check("vigil.nonesuch")).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    // Nothing but health on that port.
    let other = proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient::new(channel)
        .get_health(proto::tetragon::GetHealthStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::Unimplemented);

    // SIGTERM: the watch says NOT_SERVING before the port closes.
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(sensor.pid() as i32, libc::SIGTERM) };
    let stopped = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(m)) = watch.message().await {
            if m.status == ServingStatus::NotServing as i32 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(stopped, Ok(true), "no NOT_SERVING at the stop; log:\n{}", sensor.log());
}

#[test]
fn a_bad_health_address_stops_start_up_naming_the_flag() {
    require_kernel!();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("vigil-health-{}", common::nonce()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (address, expected)) in [
        ("unix:///run/health.sock", "not a unix socket"),
        ("6789", "expected host:port or :port"),
        (in_use.as_str(), "Address already in use"),
    ]
    .into_iter()
    .enumerate()
    {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil-sensor"))
            .args(["--server-address", &format!("unix://{}/s{i}.sock", dir.display())])
            .args(["--health-server-address", address])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{address}: started");
        assert!(stderr.contains("health-server-address"), "{address}: names the flag:\n{stderr}");
        assert!(stderr.contains(expected), "{address}: expected {expected:?} in:\n{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
