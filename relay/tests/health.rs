//! The relay's grpc.health.v1 service on its plain health port: SERVING for
//! the relay and each API it serves (Tetragon's, ingest, admin) once both
//! listeners serve, NOT_FOUND for any other name, NOT_SERVING from the stop
//! on. Needs no root: everything is on loopback.
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
