//! The standard gRPC health service (`grpc.health.v1.Health`) on a plain
//! TCP listener of its own (`--health-server-address`, Tetragon's flag),
//! for Kubernetes' native gRPC probes, which speak no TLS. It answers per
//! service name: `""` for the daemon as a whole and each API service it
//! serves; any other name is `NOT_FOUND`. A daemon starts NOT_SERVING, says
//! SERVING once it does its job, and NOT_SERVING again when it stops.

use std::net::SocketAddr;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::address::ServerAddress;
use crate::listen::{ListenError, Listener, server};

/// Tetragon's API, as the health service names it.
pub const TETRAGON_SERVICE: &str = proto::tetragon::fine_guidance_sensors_server::SERVICE_NAME;

/// What a daemon reports; clones report to the same service.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: &'static [&'static str],
}

impl Health {
    /// A health service for `services` (besides `""`), NOT_SERVING, and
    /// the listener that answers for it, bound at `address` (from
    /// [`ServerAddress::parse_port`]).
    pub async fn bind(
        address: &ServerAddress,
        services: &'static [&'static str],
    ) -> Result<(Health, HealthListener), ListenError> {
        let listener = Listener::bind("health", address, None).await?;
        let (reporter, service) = tonic_health::server::health_reporter();
        let health = Health { reporter, services };
        health.set(false).await;
        let router = server().add_service(service);
        Ok((health, HealthListener { listener, router }))
    }

    /// The daemon and every service it named: serving or not.
    pub async fn set(&self, serving: bool) {
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in std::iter::once("").chain(self.services.iter().copied()) {
            self.reporter.set_service_status(name, status).await;
        }
        tracing::info!(serving, "health");
    }
}

/// The bound health listener, to serve until shutdown.
pub struct HealthListener {
    listener: Listener,
    router: crate::listen::Router,
}

impl HealthListener {
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn serve(self, shutdown: watch::Receiver<bool>) -> Result<(), ListenError> {
        self.listener.serve(self.router, shutdown).await
    }
}
