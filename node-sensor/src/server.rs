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

/// Serves the API on `address` until `shutdown` fires. A stale unix socket
/// file is replaced.
///
/// With `tls`, clients must present a certificate of the client role (the
/// relay's rule for its client listener).
pub async fn serve(
    address: &proto::transport::ServerAddress,
    service: Service,
    tls: Option<tonic::transport::ServerTlsConfig>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), proto::transport::AddressError> {
    use proto::shared::fine_guidance_sensors_server::FineGuidanceSensorsServer;
    use proto::transport::{AddressError, ServerAddress};

    let listen_err = |source| AddressError::Listen { address: address.to_string(), source };
    let svc = tonic::service::interceptor::InterceptedService::new(
        FineGuidanceSensorsServer::new(service).max_decoding_message_size(4 << 20),
        tls::auth::require(tls::Role::Client, tls.is_some()),
    );
    let mut builder =
        tonic::transport::Server::builder().http2_keepalive_interval(Some(std::time::Duration::from_secs(30)));
    if let Some(cfg) = tls {
        builder = builder.tls_config(cfg).map_err(|e| listen_err(std::io::Error::other(e)))?;
    }
    let router = builder.add_service(svc);
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    match address {
        ServerAddress::Tcp(a) => {
            let listener = tokio::net::TcpListener::bind(a).await.map_err(listen_err)?;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            router.serve_with_incoming_shutdown(incoming, stop).await.map_err(|e| listen_err(std::io::Error::other(e)))
        }
        ServerAddress::Unix(path) => {
            if path.exists() {
                std::fs::remove_file(path).map_err(listen_err)?;
            }
            let listener = tokio::net::UnixListener::bind(path).map_err(listen_err)?;
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            router.serve_with_incoming_shutdown(incoming, stop).await.map_err(|e| listen_err(std::io::Error::other(e)))
        }
    }
}
