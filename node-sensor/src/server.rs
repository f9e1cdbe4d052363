//! What the sensor serves through Tetragon's API: its bus, live.

use std::sync::Arc;

use events::bus::EventBus;
use proto::tetragon::{DumpProcessCacheReqArgs, GetEventsRequest};
use serving::api::{DumpFuture, EventSource, EventStream, PolicyControl};
use serving::listen::{ListenError, Listener};
use tokio::sync::watch;

use crate::dump::Dumps;
use crate::policies::api::SharedPolicies;
use crate::stats::SensorStats;

pub const VERSION: &str = concat!("vigil-", env!("CARGO_PKG_VERSION"));

pub struct SensorApi {
    pub bus: EventBus,
    pub stats: Arc<SensorStats>,
    pub dumps: Dumps,
    pub policies: SharedPolicies,
}

impl EventSource for SensorApi {
    fn version(&self) -> &'static str {
        VERSION
    }

    fn subscribe(&self, _: &GetEventsRequest, filters: events::RequestFilters) -> EventStream {
        let sub = self.bus.subscribe(filters);
        tracing::info!(subscribers = self.bus.subscriber_count(), "GetEvents subscriber connected");
        Box::pin(sub)
    }

    fn health(&self) -> String {
        self.stats.snapshot(&self.bus).to_string()
    }

    fn dump_process_cache(&self, args: DumpProcessCacheReqArgs) -> Option<DumpFuture> {
        Some(self.dumps.request(args))
    }

    fn policies(&self) -> Option<&dyn PolicyControl> {
        Some(&self.policies)
    }
}

/// Serves the API on `listener` until `shutdown`. On an mTLS listener
/// (off loopback), only client-role certificates are admitted.
pub async fn serve(listener: Listener, api: SensorApi, shutdown: watch::Receiver<bool>) -> Result<(), ListenError> {
    let require_role = listener.is_tls();
    let router = serving::listen::server().add_service(serving::api::tetragon_service(Arc::new(api), require_role));
    listener.serve(router, shutdown).await
}
