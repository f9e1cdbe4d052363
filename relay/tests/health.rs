//! The relay's grpc.health.v1 service on its plain health port: SERVING for
//! the relay and each API it serves (Tetragon's, ingest, admin) once both
//! listeners serve, NOT_FOUND for any other name, NOT_SERVING from the stop
//! on, and NOT_SERVING while its ingest address is taken (it binds once it
//! is free). Needs no root: everything is on loopback.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

#[path = "support/local.rs"]
mod local;

use std::time::Duration;

use local::Relay;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest { service: service.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_per_service_and_says_not_serving_from_the_stop_on() {
    let relay = Relay::start("health", &["--health-server-address", "127.0.0.1:0"]).await;
    let address = relay.daemon.listening("health");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "tetragon.FineGuidanceSensors", "vigil.relay.v1.Ingest", "vigil.relay.v1.RelayAdmin"] {
        let status = health.check(check(service)).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    assert_eq!(health.check(check("grpc.nonesuch")).await.unwrap_err().code(), tonic::Code::NotFound);

    let mut watch = health.watch(check("vigil.relay.v1.Ingest")).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().map(|m| m.status), Some(ServingStatus::Serving as i32));
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(relay.daemon.id() as i32, libc::SIGTERM) };
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message()).await;
    let status = next.ok().and_then(|m| m.ok().flatten()).map(|m| m.status);
    assert_eq!(status, Some(ServingStatus::NotServing as i32), "log:\n{}", relay.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_while_the_ingest_address_is_taken_then_serving_once_it_is_free() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let relay = Relay::spawn(
        local::cert_dir("health-taken"),
        &["--health-server-address", "127.0.0.1:0", "--ingest-address", &port],
    );
    let address = relay.daemon.listening("health");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    // It says why, and stays up, not serving.
    relay
        .daemon
        .wait_for(Duration::from_secs(30), |l| l.contains("address in use; NOT_SERVING").then_some(()))
        .unwrap_or_else(|| panic!("no word of the taken address:\n{}", relay.log()));
    for service in ["", "vigil.relay.v1.Ingest", "tetragon.FineGuidanceSensors"] {
        let status = health.check(check(service)).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::NotServing as i32, "{service:?}");
    }
    assert!(relay.daemon.exited().is_none(), "the relay gave up:\n{}", relay.log());
    // Freed: it binds, serves, and says so.
    let mut watch = health.watch(check("vigil.relay.v1.Ingest")).await.unwrap().into_inner();
    drop(taken);
    let serving = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(m) = watch.message().await.unwrap() {
            if m.status == ServingStatus::Serving as i32 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(serving, Ok(true), "log:\n{}", relay.log());
    assert_eq!(relay.ingest().to_string(), format!("localhost:{}", port.rsplit_once(':').unwrap().1));
}

#[test]
fn without_a_health_service_a_taken_address_stops_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let relay = Relay::spawn(local::cert_dir("taken-no-health"), &["--client-address", &port]);
    let (status, log) = relay.daemon.exit_within(Duration::from_secs(30)).expect("the relay kept running");
    assert!(!status.success());
    assert!(log.contains(&format!("cannot listen on {port}")) && log.contains("in use"), "{log}");
}
