//! What clients get: `tetragon.FineGuidanceSensors` (through the serving
//! layer, with Vigil's history extensions) and `vigil.relay.v1.RelayAdmin`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use proto::Timestamp;
use proto::tetragon::GetEventsRequest;
use proto::vigil::relay::v1::relay_admin_server::RelayAdmin;
use proto::vigil::relay::v1::{BackboneStatus, ListNodesRequest, ListNodesResponse};
use serving::api::{EventSource, EventStream};
use tonic::{Request, Response, Status};

use crate::hub::{Hub, Replay};
use crate::merge::MergeCounters;
use crate::nodes::Nodes;
use crate::policies::RelayPolicies;

pub const VERSION: &str = concat!("vigil-relay-", env!("CARGO_PKG_VERSION"));

pub struct QueryService {
    pub hub: Arc<Hub>,
    pub nodes: Arc<Nodes>,
    pub merge: Arc<MergeCounters>,
    /// Events the export file did not get.
    pub export_dropped: Arc<std::sync::atomic::AtomicU64>,
    /// The policies added here for every sensor.
    pub policies: Arc<RelayPolicies>,
    /// With --backbone: its settings, and what the query half took.
    pub backbone: Option<(Arc<crate::backbone::BackboneSettings>, Arc<crate::backbone::consume::ConsumeCounters>)>,
}

impl QueryService {
    /// What `vigil nodes` shows and the metrics export: one source.
    pub fn status(&self) -> ListNodesResponse {
        ListNodesResponse {
            nodes: self.nodes.status(),
            clients: self.hub.bus.client_count() as u64,
            events_merged: self.merge.merged.load(Ordering::Relaxed),
            client_dropped: self.hub.bus.stats.dropped.load(Ordering::Relaxed),
            shared_kernel_copies: self.merge.copies.load(Ordering::Relaxed),
            sent_early: self.merge.sent_early.load(Ordering::Relaxed),
            pending: self.merge.pending.load(Ordering::Relaxed),
            history_events: self.hub.history_len() as u64,
            history_bytes: self.hub.history_bytes() as u64,
            pending_bytes: self.merge.pending_bytes.load(Ordering::Relaxed),
            client_queue_bytes: self.hub.bus.queued_bytes() as u64,
            export_dropped: self.export_dropped.load(Ordering::Relaxed),
            policy_generation: self.policies.generation(),
            backbone: self.backbone.as_ref().map(|(settings, counters)| BackboneStatus {
                url: settings.url.clone(),
                stream: settings.stream.clone(),
                role: format!("{:?}", settings.role).to_lowercase(),
                consumed: counters.events.load(Ordering::Relaxed),
                malformed: counters.malformed.load(Ordering::Relaxed),
                position: counters.position.load(Ordering::Relaxed),
                duplicates: counters.duplicates.load(Ordering::Relaxed),
            }),
        }
    }
}

impl EventSource for QueryService {
    fn version(&self) -> &'static str {
        VERSION
    }

    fn subscribe(&self, req: &GetEventsRequest, filters: events::RequestFilters) -> EventStream {
        let replay = Replay { since_seconds: req.since_seconds, last: req.last };
        let (past, sub) = self.hub.subscribe(filters, replay, Timestamp::now().unix_nanos());
        Box::pin(sub.into_stream(past))
    }

    fn policies(&self) -> Option<&dyn serving::api::PolicyControl> {
        Some(self.policies.as_ref())
    }

    fn health(&self) -> String {
        let nodes = self.nodes.status();
        let connected = nodes.iter().filter(|n| n.connected).count();
        format!(
            "nodes={} connected={connected} clients={} history={} merged={} shared_kernel_copies={} sent_early={} \
             pending={} client_dropped={}",
            nodes.len(),
            self.hub.bus.client_count(),
            self.hub.history_len(),
            self.merge.merged.load(Ordering::Relaxed),
            self.merge.copies.load(Ordering::Relaxed),
            self.merge.sent_early.load(Ordering::Relaxed),
            self.merge.pending.load(Ordering::Relaxed),
            self.hub.bus.stats.dropped.load(Ordering::Relaxed),
        )
    }
}

/// The admin API over the same state.
pub struct AdminService(pub Arc<QueryService>);

#[tonic::async_trait]
impl RelayAdmin for AdminService {
    async fn list_nodes(&self, _: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(self.0.status()))
    }
}
