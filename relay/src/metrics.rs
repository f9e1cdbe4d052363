//! The relay's Prometheus metrics (`--metrics-address`): everything
//! `vigil nodes` shows, read from the same status at each scrape, as
//! `vigil_relay_*`, per node labelled `node`.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use proto::vigil::relay::v1::NodeStatus;

use serving::metrics::encode_value;

use crate::query::QueryService;

struct RelayCollector(Arc<QueryService>);

impl std::fmt::Debug for RelayCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayCollector").finish_non_exhaustive()
    }
}

/// A family of one unlabelled series.
fn scalar(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    value: u64,
) -> Result<(), std::fmt::Error> {
    encode_value(encoder.encode_descriptor(name, help, None, kind)?, kind, value)
}

/// A per-node family: one series per node, its value from `value`.
fn per_node(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    nodes: &[NodeStatus],
    value: impl Fn(&NodeStatus) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for n in nodes {
        let labels = [("node", n.node_name.as_str())];
        encode_value(family.encode_family(&labels)?, kind, value(n))?;
    }
    Ok(())
}

impl Collector for RelayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.status();
        let (counter, gauge) = (MetricType::Counter, MetricType::Gauge);
        for (name, help, kind, value) in [
            ("vigil_relay_clients", "GetEvents clients connected", gauge, s.clients),
            ("vigil_relay_events_merged", "Events merged into the cluster stream", counter, s.events_merged),
            ("vigil_relay_client_dropped", "Events dropped for clients that fell behind", counter, s.client_dropped),
            (
                "vigil_relay_shared_kernel_copies",
                "Copies of one kernel's events from sensors sharing it, collapsed",
                counter,
                s.shared_kernel_copies,
            ),
            ("vigil_relay_sent_early", "Events that left the reorder window early", counter, s.sent_early),
            ("vigil_relay_pending", "Events waiting in the reorder window", gauge, s.pending),
            ("vigil_relay_pending_bytes", "Bytes charged for the reorder window", gauge, s.pending_bytes),
            ("vigil_relay_history_events", "Events kept for --since / --last", gauge, s.history_events),
            ("vigil_relay_history_bytes", "Bytes charged for the history", gauge, s.history_bytes),
            ("vigil_relay_client_queue_bytes", "Bytes queued for clients", gauge, s.client_queue_bytes),
            ("vigil_relay_export_dropped", "Events the export file did not get", counter, s.export_dropped),
            (
                "vigil_relay_policies",
                "Tracing policies the relay sends every sensor",
                gauge,
                self.0.policies.list_len() as u64,
            ),
            ("vigil_relay_policy_generation", "Generation of the relay's policy set", gauge, s.policy_generation),
        ] {
            scalar(&mut encoder, (name, help, kind), value)?;
        }
        let nodes = &s.nodes;
        per_node(
            &mut encoder,
            ("vigil_relay_node_connected", "1 while the node's sensor streams", gauge),
            nodes,
            |n| u64::from(n.connected),
        )?;
        per_node(&mut encoder, ("vigil_relay_node_events", "Events accepted from the node", counter), nodes, |n| {
            n.events
        })?;
        per_node(&mut encoder, ("vigil_relay_node_lost", "Events the node's sensor lost", counter), nodes, |n| n.lost)?;
        per_node(&mut encoder, ("vigil_relay_node_lag_ms", "The node's latest event's lag", gauge), nodes, |n| {
            n.lag_ms
        })?;
        per_node(
            &mut encoder,
            ("vigil_relay_node_duplicates", "Events the node re-sent that were dropped", counter),
            nodes,
            |n| n.duplicates,
        )?;
        per_node(&mut encoder, ("vigil_relay_node_oversized", "Events refused as too large", counter), nodes, |n| {
            n.oversized
        })?;
        per_node(
            &mut encoder,
            ("vigil_relay_node_policy_generation", "Generation of the relay's policy set the node applied", gauge),
            nodes,
            |n| n.policy_generation,
        )?;
        if let Some(b) = &s.backbone {
            per_node(
                &mut encoder,
                (
                    "vigil_relay_node_backbone_events",
                    "The node's events the backbone stored through this relay",
                    counter,
                ),
                nodes,
                |n| n.backbone_events,
            )?;
            per_node(
                &mut encoder,
                ("vigil_relay_node_backbone_publish_ms", "How long the node's last batch took to be stored", gauge),
                nodes,
                |n| n.backbone_publish_ms,
            )?;
            for (name, help, kind, value) in [
                ("vigil_relay_backbone_consumed", "Events taken from the backbone's stream", counter, b.consumed),
                (
                    "vigil_relay_backbone_malformed",
                    "Messages on the stream that were not Vigil events",
                    counter,
                    b.malformed,
                ),
                ("vigil_relay_backbone_position", "Stream sequence of the last message taken", gauge, b.position),
                (
                    "vigil_relay_backbone_duplicates",
                    "Events on the stream skipped as taken before (sent again by a sensor)",
                    counter,
                    b.duplicates,
                ),
            ] {
                scalar(&mut encoder, (name, help, kind), value)?;
            }
        }
        Ok(())
    }
}

/// The registry a scrape answers: the status, each client's queue, the
/// listeners' refusals (`ingest`, `clients`) and the export file's counts.
pub fn registry(
    query: Arc<QueryService>,
    refusals: Vec<(&'static str, Arc<serving::listen::Refusals>)>,
    export: Option<Arc<serving::export::ExportStats>>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(serving::metrics::ClientQueueCollector {
        prefix: "vigil_relay",
        bus: query.hub.bus.clone(),
    }));
    registry.register_collector(Box::new(serving::metrics::RefusalCollector {
        name: "vigil_relay_connections_refused",
        listeners: refusals,
    }));
    if let Some(export) = export {
        registry.register_collector(Box::new(serving::export::ExportCollector(export)));
    }
    registry.register_collector(Box::new(RelayCollector(query)));
    registry
}
