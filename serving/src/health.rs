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

/// `--health-server-address` as Tetragon takes it: `host:port`, or
/// `:port` for every interface; no unix socket (Kubernetes probes a port).
pub fn parse_address(s: &str) -> Result<ServerAddress, String> {
    let full = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_owned() };
    match full.parse::<ServerAddress>() {
        Ok(a @ ServerAddress::Tcp(_)) => Ok(a),
        Ok(ServerAddress::Unix(_)) => {
            Err("takes host:port or :port, not a unix socket (Kubernetes probes a port)".into())
        }
        Err(_) => Err("expected host:port or :port".into()),
    }
}

/// What a daemon reports; clones report to the same service.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: &'static [&'static str],
}

impl Health {
    /// A health service for `services` (besides `""`), NOT_SERVING, and
    /// the listener that answers for it, bound at `address` (from
    /// [`parse_address`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_tetragon_takes_them() {
        assert_eq!(parse_address(":6789"), Ok(ServerAddress::Tcp("0.0.0.0:6789".into())));
        assert_eq!(parse_address("127.0.0.1:0"), Ok(ServerAddress::Tcp("127.0.0.1:0".into())));
        assert!(parse_address("unix:///run/h.sock").unwrap_err().contains("not a unix socket"));
        assert_eq!(parse_address("6789"), Err("expected host:port or :port".into()));
    }
}
