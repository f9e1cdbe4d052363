//! What clients get: `tetragon.FineGuidanceSensors` (GetEvents with Vigil's
//! history extensions, GetHealth, GetVersion) and `vigil.relay.v1.RelayAdmin`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use proto::Timestamp;
use proto::shared::OutEvent;
use proto::shared::fine_guidance_sensors_server::FineGuidanceSensors;
use proto::tetragon::{
    GetEventsRequest, GetHealthStatusRequest, GetHealthStatusResponse, GetVersionRequest, GetVersionResponse,
    HealthStatus, HealthStatusResult, HealthStatusType,
};
use proto::vigil::relay::v1::relay_admin_server::RelayAdmin;
use proto::vigil::relay::v1::{ListNodesRequest, ListNodesResponse};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::hub::{Hub, Replay};
use crate::merge::MergeCounters;
use crate::nodes::Nodes;

pub const VERSION: &str = concat!("vigil-relay-", env!("CARGO_PKG_VERSION"));

pub struct QueryService {
    pub hub: Arc<Hub>,
    pub nodes: Arc<Nodes>,
    pub merge: Arc<MergeCounters>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<OutEvent, Status>> + Send>>;

#[tonic::async_trait]
impl FineGuidanceSensors for QueryService {
    type GetEventsStream = EventStream;

    async fn get_events(&self, request: Request<GetEventsRequest>) -> Result<Response<EventStream>, Status> {
        let req = request.into_inner();
        let (filter, fields) = events::request_filters(&req).map_err(Status::invalid_argument)?;
        let replay = Replay { since_seconds: req.since_seconds, last: req.last };
        let (past, sub) = self.hub.subscribe(filter, fields, replay, Timestamp::now().unix_nanos());
        Ok(Response::new(Box::pin(sub.into_stream(past).map(Ok))))
    }

    async fn get_health(
        &self,
        _: Request<GetHealthStatusRequest>,
    ) -> Result<Response<GetHealthStatusResponse>, Status> {
        let nodes = self.nodes.status();
        let connected = nodes.iter().filter(|n| n.connected).count();
        Ok(Response::new(GetHealthStatusResponse {
            health_status: vec![HealthStatus {
                event: HealthStatusType::Status as i32,
                status: HealthStatusResult::HealthStatusRunning as i32,
                details: format!(
                    "running; nodes={} connected={connected} clients={} history={} merged={} shared_kernel_copies={} \
                     sent_early={} pending={} client_dropped={}",
                    nodes.len(),
                    self.hub.bus.subscriber_count(),
                    self.hub.history_len(),
                    self.merge.merged.load(Ordering::Relaxed),
                    self.merge.copies.load(Ordering::Relaxed),
                    self.merge.sent_early.load(Ordering::Relaxed),
                    self.merge.pending.load(Ordering::Relaxed),
                    self.hub.bus.stats.dropped.load(Ordering::Relaxed),
                ),
            }],
        }))
    }

    async fn get_version(&self, _: Request<GetVersionRequest>) -> Result<Response<GetVersionResponse>, Status> {
        Ok(Response::new(GetVersionResponse { version: VERSION.to_owned() }))
    }
}

#[tonic::async_trait]
impl RelayAdmin for QueryService {
    async fn list_nodes(&self, _: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(ListNodesResponse {
            nodes: self.nodes.status(),
            clients: self.hub.bus.subscriber_count() as u64,
            events_merged: self.merge.merged.load(Ordering::Relaxed),
            client_dropped: self.hub.bus.stats.dropped.load(Ordering::Relaxed),
            shared_kernel_copies: self.merge.copies.load(Ordering::Relaxed),
            sent_early: self.merge.sent_early.load(Ordering::Relaxed),
            pending: self.merge.pending.load(Ordering::Relaxed),
        }))
    }
}
