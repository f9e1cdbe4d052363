//! Per-node ingest state: which sensor instance holds the node name, the
//! last sequence taken from it, and the counters `vigil nodes` shows.

use parking_lot::Mutex;
use std::collections::HashMap;

use proto::Timestamp;
use proto::vigil::relay::v1::{NodeStatus, PolicyReport};

#[derive(Debug, Clone, Default)]
struct Node {
    boot_id: String,
    instance_id: String,
    /// Stream currently holding the node, if connected.
    stream: Option<u64>,
    /// Last sequence taken per sensor instance.
    last_seq: HashMap<String, u64>,
    last_seen: Option<Timestamp>,
    events: u64,
    lost: u64,
    duplicates: u64,
    lag_ms: u64,
    /// The connected (or last) sensor's credential is valid for any node.
    any_node: bool,
    oversized: u64,
    /// Events the backbone stored through this relay, and how long the
    /// last batch took to be stored.
    backbone_events: u64,
    backbone_publish_ms: u64,
    /// When its last stream ended (none while connected).
    gone_since: Option<std::time::Instant>,
    /// What its sensor last said of the relay's policies (checked and
    /// bounded by the policies stage).
    policies: Option<std::sync::Arc<PolicyReport>>,
    /// Known from the backbone's stream (a query relay), not a stream here.
    via_backbone: bool,
}

/// One node as the policy list sees it.
pub struct NodePolicies {
    pub node: String,
    pub connected: bool,
    pub report: Option<std::sync::Arc<PolicyReport>>,
}

/// Why a hello may not claim a node. Neither sensor's instance id is ever
/// named: knowing the connected sensor's id is what a second stream needs to
/// pass for it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("node name {node:?} is already connected from another sensor instance; refusing this one")]
    Taken { node: String },
    #[error("the relay holds {limit} connected nodes, its limit (--max-nodes); refusing a new one")]
    Full { limit: usize },
}

/// What a batch amounted to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Intake {
    pub accepted: usize,
    pub duplicates: u64,
    /// Sequence numbers skipped (events the sensor could not keep).
    pub gap: u64,
    pub last_seq: u64,
}

static NOT_TRACKED_LOG: std::sync::LazyLock<serving::log_limit::LogLimit> =
    std::sync::LazyLock::new(|| serving::log_limit::LogLimit::new(std::time::Duration::from_secs(60)));

/// Boot ids numbered at most this many at once; past it, the numbers of
/// boot ids no node holds are forgotten.
const MAX_BOOTS: usize = 65_536;

/// How long a node that went away is remembered by default (its counters
/// in `vigil nodes`, and where its sensor's numbering stood).
pub const DEFAULT_FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Sensor instances whose numbering a node remembers (sensor restarts);
/// past it only the connected one is kept.
const MAX_INSTANCES: usize = 16;

/// Nodes tracked by default: with every field at its limit, the admin
/// reply for them stays under the 4 MiB a default gRPC client accepts.
pub const DEFAULT_MAX_NODES: usize = 5000;

pub struct Nodes {
    nodes: Mutex<HashMap<String, Node>>,
    max_nodes: usize,
    /// A number per kernel boot id, so the merge compares and hashes a
    /// number instead of a string per event. Numbers are never reused.
    boots: Mutex<(HashMap<String, u64>, u64)>,
    forget_after: std::time::Duration,
}

impl Default for Nodes {
    fn default() -> Self {
        Nodes::new(DEFAULT_FORGET_AFTER, DEFAULT_MAX_NODES)
    }
}

impl Nodes {
    /// Nodes gone longer than `forget_after` are forgotten; at most
    /// `max_nodes` are tracked (a gone one makes room for a new one).
    pub fn new(forget_after: std::time::Duration, max_nodes: usize) -> Self {
        Nodes { nodes: Mutex::default(), max_nodes: max_nodes.max(1), boots: Mutex::default(), forget_after }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Node>> {
        self.nodes.lock()
    }

    /// The table with nodes gone too long removed: on the paths that add or
    /// list nodes, not on the per-batch one.
    fn lock_forgetting(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Node>> {
        let mut nodes = self.nodes.lock();
        let after = self.forget_after;
        nodes.retain(|_, n| n.stream.is_some() || n.gone_since.is_none_or(|t| t.elapsed() < after));
        nodes
    }

    /// A stream claims a node name. A second sensor instance may not take a
    /// name another connected instance holds; the same instance may (its
    /// old stream is stale). Returns the last sequence held for the instance.
    pub fn claim(
        &self,
        node: &str,
        boot_id: &str,
        instance: &str,
        stream: u64,
        any_node: bool,
    ) -> Result<u64, ClaimError> {
        let mut nodes = self.lock_forgetting();
        let n = self.room_for(&mut nodes, node).ok_or(ClaimError::Full { limit: self.max_nodes })?;
        if n.stream.is_some() && n.instance_id != instance {
            return Err(ClaimError::Taken { node: node.into() });
        }
        if n.last_seq.len() >= MAX_INSTANCES && !n.last_seq.contains_key(instance) {
            n.last_seq.retain(|i, _| *i == n.instance_id);
        }
        n.stream = Some(stream);
        n.gone_since = None;
        n.any_node = any_node;
        n.boot_id = boot_id.to_owned();
        n.instance_id = instance.to_owned();
        n.last_seen = Some(Timestamp::now());
        Ok(n.last_seq.get(instance).copied().unwrap_or(0))
    }

    /// `node`'s entry, made if there is room: the node gone longest makes
    /// room; with every node connected, there is none.
    fn room_for<'n>(&self, nodes: &'n mut HashMap<String, Node>, node: &str) -> Option<&'n mut Node> {
        if !nodes.contains_key(node) && nodes.len() >= self.max_nodes {
            let oldest = nodes.iter().filter_map(|(name, n)| Some((n.gone_since?, name.clone()))).min()?.1;
            nodes.remove(&oldest);
        }
        Some(nodes.entry(node.to_owned()).or_default())
    }

    /// What a query relay took of `node` from the backbone: `events` new
    /// ones (the last `lag_ms` old), `duplicates` skipped, `lost` in loss
    /// notices. The node shows as known through the backbone, gone from
    /// `vigil nodes` after `--forget-nodes-after` without an event.
    pub fn consumed(
        &self,
        node: &str,
        boot_id: Option<&str>,
        events: u64,
        duplicates: u64,
        lost: u64,
        lag_ms: Option<u64>,
    ) {
        // Called per message taken: nodes gone too long are forgotten
        // where they are listed, not here (a full table still makes room).
        let mut nodes = self.lock();
        let Some(n) = self.room_for(&mut nodes, node) else {
            if let Some(times) = NOT_TRACKED_LOG.hit() {
                tracing::warn!(
                    node,
                    limit = self.max_nodes,
                    times,
                    "a node on the backbone is not shown: --max-nodes are tracked"
                );
            }
            return;
        };
        n.via_backbone = true;
        n.gone_since = Some(std::time::Instant::now());
        n.last_seen = Some(Timestamp::now());
        if let Some(boot_id) = boot_id.filter(|b| *b != n.boot_id) {
            n.boot_id = boot_id.to_owned();
        }
        n.events += events;
        n.duplicates += duplicates;
        n.lost += lost;
        if let Some(lag_ms) = lag_ms {
            n.lag_ms = lag_ms;
        }
    }

    pub fn release(&self, node: &str, stream: u64) {
        if let Some(n) = self.lock().get_mut(node)
            && n.stream == Some(stream)
        {
            n.stream = None;
            n.gone_since = Some(std::time::Instant::now());
            n.last_seen = Some(Timestamp::now());
        }
    }

    /// Splits a batch's sequence numbers into new and replayed ones and
    /// records gaps. `seqs` must be increasing; returns which to keep. A
    /// batch that would jump over more than `allowed_gap` numbers is taken
    /// not at all: `Err` with the gap it would make.
    pub fn intake(
        &self,
        node: &str,
        instance: &str,
        seqs: &[u64],
        allowed_gap: u64,
        extra_lost: u64,
        lag_ms: u64,
    ) -> Result<(Vec<bool>, Intake), u64> {
        let mut nodes = self.lock();
        let n = nodes.entry(node.to_owned()).or_default();
        let last = n.last_seq.entry(instance.to_owned()).or_insert(0);
        let gap = gap_after(*last, seqs);
        if gap > allowed_gap {
            return Err(gap);
        }
        let mut keep = Vec::with_capacity(seqs.len());
        let mut intake = Intake::default();
        for &seq in seqs {
            if seq <= *last {
                intake.duplicates += 1;
                keep.push(false);
                continue;
            }
            intake.gap += seq - *last - 1;
            *last = seq;
            intake.accepted += 1;
            keep.push(true);
        }
        intake.last_seq = *last;
        n.events += intake.accepted as u64;
        n.duplicates += intake.duplicates;
        n.lost += intake.gap + extra_lost;
        n.lag_ms = lag_ms;
        n.last_seen = Some(Timestamp::now());
        Ok((keep, intake))
    }

    /// Forgets what was taken of `instance` past `seq` (a batch that could
    /// not be stored), so its sensor's next hello is told to send it again.
    pub fn rewind(&self, node: &str, instance: &str, seq: u64) {
        if let Some(last) = self.lock().get_mut(node).and_then(|n| n.last_seq.get_mut(instance)) {
            *last = (*last).min(seq);
        }
    }

    /// Takes `instance`'s events through `seq` as taken already (stored
    /// by another relay); returns where its numbering now stands.
    pub fn advance(&self, node: &str, instance: &str, seq: u64) -> u64 {
        let mut nodes = self.lock();
        let n = nodes.entry(node.to_owned()).or_default();
        let last = n.last_seq.entry(instance.to_owned()).or_insert(0);
        *last = (*last).max(seq);
        *last
    }

    /// Counts `events` of `node` the backbone stored, in `took`.
    pub fn published(&self, node: &str, events: u64, took: std::time::Duration) {
        if let Some(n) = self.lock().get_mut(node) {
            n.backbone_events += events;
            n.backbone_publish_ms = took.as_millis() as u64;
        }
    }

    /// Counts events of `node` refused for their size.
    pub fn oversized(&self, node: &str, count: u64) {
        if let Some(n) = self.lock().get_mut(node) {
            n.oversized += count;
        }
    }

    /// The relay's number for a kernel boot id: equal ids, equal numbers.
    pub fn boot_number(&self, boot_id: &str) -> u64 {
        let mut guard = self.boots.lock();
        let (numbers, next) = &mut *guard;
        if let Some(n) = numbers.get(boot_id) {
            return *n;
        }
        if numbers.len() >= MAX_BOOTS {
            let held: std::collections::HashSet<String> = self.lock().values().map(|n| n.boot_id.clone()).collect();
            numbers.retain(|id, _| held.contains(id));
        }
        *next += 1;
        numbers.insert(boot_id.to_owned(), *next);
        *next
    }

    pub fn status(&self) -> Vec<NodeStatus> {
        let nodes = self.lock_forgetting();
        let mut out: Vec<NodeStatus> = nodes
            .iter()
            .map(|(name, n)| NodeStatus {
                node_name: name.clone(),
                connected: n.stream.is_some(),
                last_seen: n.last_seen,
                events: n.events,
                lost: n.lost,
                lag_ms: n.lag_ms,
                boot_id: n.boot_id.clone(),
                last_seq: n.last_seq.get(&n.instance_id).copied().unwrap_or(0),
                duplicates: n.duplicates,
                any_node_credential: n.any_node,
                oversized: n.oversized,
                policy_generation: n.policies.as_ref().map_or(0, |r| r.generation),
                backbone_events: n.backbone_events,
                backbone_publish_ms: n.backbone_publish_ms,
                via_backbone: n.via_backbone && n.stream.is_none(),
            })
            .collect();
        out.sort_by(|a, b| a.node_name.cmp(&b.node_name));
        out
    }

    /// Keeps what the sensor on `stream` reports of the relay's policies,
    /// if that stream still holds `node`.
    pub fn report_policies(&self, node: &str, stream: u64, report: PolicyReport) {
        if let Some(n) = self.lock().get_mut(node)
            && n.stream == Some(stream)
        {
            n.policies = Some(std::sync::Arc::new(report));
        }
    }

    /// Every node with its last policy report, by name.
    pub fn policy_reports(&self) -> Vec<NodePolicies> {
        let nodes = self.lock_forgetting();
        let mut out: Vec<NodePolicies> = nodes
            .iter()
            .map(|(name, n)| NodePolicies {
                node: name.clone(),
                connected: n.stream.is_some(),
                report: n.policies.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }
}

/// The numbers increasing `seqs` jump over after `last` (replays skipped).
fn gap_after(mut last: u64, seqs: &[u64]) -> u64 {
    let mut gap = 0u64;
    for &seq in seqs {
        if seq > last {
            gap = gap.saturating_add(seq - last - 1);
            last = seq;
        }
    }
    gap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_instance_per_node_name() {
        let nodes = Nodes::default();
        assert_eq!(nodes.claim("n1", "boot", "inst-a", 1, false), Ok(0));
        let err = nodes.claim("n1", "boot", "inst-b", 2, false).unwrap_err();
        assert!(err.to_string().contains("already connected"), "{err}");
        // the same instance reconnecting replaces its stale stream
        assert_eq!(nodes.claim("n1", "boot", "inst-a", 3, false), Ok(0));
        nodes.release("n1", 1); // stale release does nothing
        assert!(nodes.status()[0].connected);
        nodes.release("n1", 3);
        assert!(!nodes.status()[0].connected);
        assert!(nodes.claim("n1", "boot", "inst-b", 4, false).is_ok(), "free again");
    }

    #[test]
    fn the_node_table_is_bounded() {
        let nodes = Nodes::new(DEFAULT_FORGET_AFTER, 2);
        nodes.claim("a", "b", "i", 1, false).unwrap();
        nodes.claim("b", "b", "j", 2, false).unwrap();
        assert_eq!(nodes.claim("c", "b", "k", 3, false), Err(ClaimError::Full { limit: 2 }), "all connected");
        nodes.release("a", 1);
        assert_eq!(nodes.claim("c", "b", "k", 4, false), Ok(0), "a gone node makes room");
        let mut names: Vec<String> = nodes.status().into_iter().map(|n| n.node_name).collect();
        names.sort();
        assert_eq!(names, ["b", "c"]);
        // A node's sensor restarting again and again: its numberings are
        // bounded too.
        nodes.release("b", 2);
        for k in 0..100u64 {
            let instance = format!("r{k}");
            nodes.claim("b", "b", &instance, 10 + k, false).unwrap();
            nodes.intake("b", &instance, &[1], 0, 0, 0).unwrap();
            nodes.release("b", 10 + k);
        }
        assert!(nodes.lock().get("b").unwrap().last_seq.len() <= MAX_INSTANCES);
    }

    #[test]
    fn the_admin_reply_for_the_most_nodes_fits_a_default_client() {
        use prost::Message;
        let widest = NodeStatus {
            node_name: "n".repeat(253),
            connected: true,
            last_seen: Some(Timestamp { seconds: i64::MAX, nanos: 999_999_999 }),
            events: u64::MAX,
            lost: u64::MAX,
            lag_ms: u64::MAX,
            boot_id: "b".repeat(64),
            last_seq: u64::MAX,
            duplicates: u64::MAX,
            any_node_credential: true,
            oversized: u64::MAX,
            policy_generation: u64::MAX,
            backbone_events: u64::MAX,
            backbone_publish_ms: u64::MAX,
            via_backbone: true,
        };
        let reply = proto::vigil::relay::v1::ListNodesResponse {
            nodes: vec![widest; DEFAULT_MAX_NODES],
            clients: u64::MAX,
            events_merged: u64::MAX,
            client_dropped: u64::MAX,
            shared_kernel_copies: u64::MAX,
            sent_early: u64::MAX,
            pending: u64::MAX,
            history_events: u64::MAX,
            history_bytes: u64::MAX,
            pending_bytes: u64::MAX,
            client_queue_bytes: u64::MAX,
            export_dropped: u64::MAX,
            policy_generation: u64::MAX,
            backbone: Some(proto::vigil::relay::v1::BackboneStatus {
                url: "nats://a-long-server-name.example:4222,".repeat(8),
                stream: "VIGIL_EVENTS".into(),
                role: "both".into(),
                consumed: u64::MAX,
                malformed: u64::MAX,
                position: u64::MAX,
                duplicates: u64::MAX,
            }),
        };
        assert!(reply.encoded_len() < 4 << 20, "{} bytes", reply.encoded_len());
    }

    #[test]
    fn replays_are_dropped_and_gaps_counted() {
        let nodes = Nodes::default();
        nodes.claim("n", "b", "i", 1, false).unwrap();
        let (keep, i) = nodes.intake("n", "i", &[1, 2, 3], 0, 0, 0).unwrap();
        assert_eq!((keep, i.accepted, i.gap), (vec![true, true, true], 3, 0));
        let (keep, i) = nodes.intake("n", "i", &[2, 3, 4, 7], 2, 2, 0).unwrap();
        assert_eq!(keep, vec![false, false, true, true]);
        assert_eq!((i.duplicates, i.gap, i.last_seq), (2, 2, 7));
        let s = &nodes.status()[0];
        assert_eq!((s.events, s.lost, s.duplicates, s.last_seq), (5, 4, 2, 7));
        assert_eq!(nodes.claim("n", "b", "i", 2, false), Ok(7), "resume point");
        assert_eq!(gap_after(7, &[5, 8, 10]), 1, "from 7: 9 is jumped over; 5 is a replay");
        assert_eq!(nodes.intake("n", "i", &[5, 8, 10], 0, 0, 0), Err(1), "past the allowed gap: taken not at all");
        assert_eq!(nodes.status()[0].last_seq, 7);
    }

    #[test]
    fn nodes_gone_long_are_forgotten() {
        let nodes = Nodes::new(std::time::Duration::from_millis(50), DEFAULT_MAX_NODES);
        nodes.claim("stays", "b", "i", 1, false).unwrap();
        nodes.claim("goes", "b", "j", 2, false).unwrap();
        nodes.release("goes", 2);
        assert_eq!(nodes.status().len(), 2, "remembered for a while");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while nodes.status().len() == 2 {
            assert!(std::time::Instant::now() < deadline, "never forgotten");
            std::thread::yield_now();
        }
        let names: Vec<String> = nodes.status().into_iter().map(|n| n.node_name).collect();
        assert_eq!(names, ["stays"], "a connected node is never forgotten");
    }

    #[test]
    fn boot_ids_get_stable_distinct_numbers() {
        let nodes = Nodes::default();
        let a = nodes.boot_number("boot-a");
        let b = nodes.boot_number("boot-b");
        assert_ne!(a, b);
        assert_eq!(nodes.boot_number("boot-a"), a);
    }
}
