//! `tetragon.FineGuidanceSensors` over gRPC: GetEvents (filtered live
//! stream), GetHealth and GetVersion.

use std::pin::Pin;
use std::sync::Arc;

use proto::shared::OutEvent;
use proto::shared::fine_guidance_sensors_server::FineGuidanceSensors;
use proto::tetragon::{
    GetEventsRequest, GetHealthStatusRequest, GetHealthStatusResponse, GetVersionRequest, GetVersionResponse,
    HealthStatus, HealthStatusResult, HealthStatusType,
};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::stats::SensorStats;
use events::bus::EventBus;

pub const VERSION: &str = concat!("vigil-", env!("CARGO_PKG_VERSION"));

#[derive(Clone)]
pub struct Service {
    pub bus: EventBus,
    pub stats: Arc<SensorStats>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<OutEvent, Status>> + Send>>;

#[tonic::async_trait]
impl FineGuidanceSensors for Service {
    type GetEventsStream = EventStream;

    async fn get_events(&self, request: Request<GetEventsRequest>) -> Result<Response<Self::GetEventsStream>, Status> {
        let req = request.into_inner();
        let (filter, fields) = events::request_filters(&req).map_err(Status::invalid_argument)?;
        let sub = self.bus.subscribe(filter, fields);
        tracing::info!(subscribers = self.bus.subscriber_count(), "GetEvents subscriber connected");
        Ok(Response::new(Box::pin(sub.map(Ok))))
    }

    async fn get_health(
        &self,
        _: Request<GetHealthStatusRequest>,
    ) -> Result<Response<GetHealthStatusResponse>, Status> {
        let s = self.stats.snapshot(&self.bus);
        Ok(Response::new(GetHealthStatusResponse {
            health_status: vec![HealthStatus {
                event: HealthStatusType::Status as i32,
                status: HealthStatusResult::HealthStatusRunning as i32,
                details: format!("running; {s}"),
            }],
        }))
    }

    async fn get_version(&self, _: Request<GetVersionRequest>) -> Result<Response<GetVersionResponse>, Status> {
        Ok(Response::new(GetVersionResponse { version: VERSION.to_owned() }))
    }
}

/// How often the certificate files of a TLS listener are checked.
const CERT_POLL: std::time::Duration = std::time::Duration::from_secs(2);
/// How long start-up waits for certificate files that exist but do not load.
const START_CERT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn router(
    service: Service,
    tls: Option<&tonic::transport::ServerTlsConfig>,
) -> Result<tonic::transport::server::Router, tonic::transport::Error> {
    use proto::shared::fine_guidance_sensors_server::FineGuidanceSensorsServer;
    let svc = tonic::service::interceptor::InterceptedService::new(
        FineGuidanceSensorsServer::new(service).max_decoding_message_size(4 << 20),
        tls::auth::require(tls::Role::Client, tls.is_some()),
    );
    let mut builder =
        tonic::transport::Server::builder().http2_keepalive_interval(Some(std::time::Duration::from_secs(30)));
    if let Some(cfg) = tls {
        builder = builder.tls_config(cfg.clone())?;
    }
    Ok(builder.add_service(svc))
}

/// Serves the API on `address` until `shutdown` fires. A stale unix socket
/// file is replaced.
///
/// With `tls` (a TCP address off loopback), clients must present a
/// certificate of the client role (the relay's rule for its client
/// listener), and replaced certificate files are taken without a restart:
/// the listener is bound again with them, while open streams keep theirs.
pub async fn serve(
    address: &proto::transport::ServerAddress,
    service: Service,
    tls: Option<tls::reload::ServerFiles>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), proto::transport::AddressError> {
    use proto::transport::{AddressError, ServerAddress};

    let listen_err = |source| AddressError::Listen { address: address.to_string(), source };
    let other = |e: &dyn std::fmt::Display| listen_err(std::io::Error::other(e.to_string()));
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    match address {
        ServerAddress::Unix(path) => {
            if path.exists() {
                std::fs::remove_file(path).map_err(listen_err)?;
            }
            let listener = tokio::net::UnixListener::bind(path).map_err(listen_err)?;
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            router(service, None)
                .map_err(|e| other(&e))?
                .serve_with_incoming_shutdown(incoming, stop(shutdown))
                .await
                .map_err(|e| other(&e))
        }
        ServerAddress::Tcp(a) => {
            let mut cfg = match &tls {
                Some(files) => Some(files.load_at_start(START_CERT_WAIT).await.map_err(|e| other(&e))?),
                None => None,
            };
            let mut reload = None;
            if let Some(files) = tls {
                let (tx, rx) = tokio::sync::watch::channel(None);
                tokio::spawn(files.watch(CERT_POLL, tx));
                reload = Some(rx);
            }
            loop {
                let listener =
                    proto::transport::bind_tcp(a, std::time::Duration::from_secs(10)).await.map_err(listen_err)?;
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let (done_tx, done_rx) = tokio::sync::watch::channel(false);
                let serving = tokio::spawn(
                    router(service.clone(), cfg.as_ref())
                        .map_err(|e| other(&e))?
                        .serve_with_incoming_shutdown(incoming, stop(done_rx)),
                );
                let next = async {
                    match reload.as_mut() {
                        Some(rx) => rx.changed().await.ok().and_then(|()| rx.borrow_and_update().clone()),
                        None => std::future::pending().await,
                    }
                };
                let reloaded = tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => None,
                    c = next => c,
                };
                // Stop accepting; open streams keep their connection.
                let _ = done_tx.send(true);
                match reloaded {
                    Some(new) => cfg = Some(new),
                    None => {
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), serving).await;
                        return Ok(());
                    }
                }
            }
        }
    }
}
