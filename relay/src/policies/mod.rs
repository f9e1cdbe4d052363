//! Tracing policies for the whole cluster: added once at the relay (with
//! Tetragon's policy RPCs, by an admin certificate), kept in the store
//! across restarts, and sent whole to every sensor over its ingest stream,
//! now and whenever it connects, until deleted. Each sensor answers with
//! what became of each policy there; `ListTracingPolicies` shows that per
//! node, with the policies sensors run from Kubernetes objects
//! (`kubernetes`).
//!
//! On the backbone, the set is kept in a JetStream bucket instead
//! (`backbone::policies`): a change is written there, and every relay's
//! copy follows the bucket, so all ingest relays send the same set.

mod kubernetes;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use proto::tetragon::{TracingPolicyMode, TracingPolicyState, TracingPolicyStatus};
use proto::vigil::relay::v1::policy_outcome::State as Outcome;
use proto::vigil::relay::v1::{ManagedPolicy, PolicyReport, PolicySet};
use serving::api::PolicyControl;
use tokio::sync::watch;
use tonic::Status;

use crate::backbone::policies::{PolicyBucket, Write, WriteError};
use crate::nodes::{NodePolicies, Nodes};
use store::{Store, StoreError};

/// Policies the relay manages at once at most.
pub const MAX_POLICIES: usize = 64;
/// What they may take together (each at most `policy::MAX_POLICY_BYTES`):
/// the whole set goes to a sensor in one message, which takes 16 MiB.
pub const MAX_SET_BYTES: usize = 8 << 20;
/// Bytes of a node's error kept per policy (the rest is cut).
const MAX_ERROR_BYTES: usize = 512;
/// Bytes of policy-set copies on their way to sensors at once: a change
/// reaches thousands of streams together, and each copies the set.
pub const SENDING_BUDGET: usize = 64 << 20;

/// Why a policy change was refused; each maps to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Invalid(#[from] policy::PolicyError),
    #[error(
        "kind: TracingPolicyNamespaced is not distributed by the relay: apply it to Kubernetes (kubectl apply), \
         whose objects every sensor watches; the relay distributes cluster-wide TracingPolicy documents"
    )]
    Namespaced,
    #[error("a policy named {0} is already managed by the relay")]
    Exists(String),
    #[error("no policy named {0} is managed by the relay")]
    NotFound(String),
    #[error("the relay manages {MAX_POLICIES} policies, its limit; delete one first")]
    Full,
    #[error("the relay's policies would take {0} bytes, more than its limit of {MAX_SET_BYTES}")]
    TooLarge(usize),
    #[error("policy {0} has no enforcement action (it is monitor-only)")]
    MonitorOnly(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("policy {0} was changed meanwhile (at another relay); list the policies and try again")]
    Conflict(String),
    #[error("{0}")]
    Backbone(String),
}

impl From<ChangeError> for Status {
    fn from(e: ChangeError) -> Status {
        match &e {
            ChangeError::Invalid(_) | ChangeError::Namespaced => Status::invalid_argument(e.to_string()),
            ChangeError::Exists(_) => Status::already_exists(e.to_string()),
            ChangeError::NotFound(_) => Status::not_found(e.to_string()),
            ChangeError::Full | ChangeError::TooLarge(_) => Status::resource_exhausted(e.to_string()),
            ChangeError::MonitorOnly(_) => Status::failed_precondition(e.to_string()),
            ChangeError::Store(_) => Status::internal(e.to_string()),
            ChangeError::Conflict(_) => Status::aborted(e.to_string()),
            ChangeError::Backbone(_) => Status::unavailable(e.to_string()),
        }
    }
}

/// One managed policy and when it last changed.
#[derive(Clone)]
struct Entry {
    policy: ManagedPolicy,
    /// The generation that last changed it: a node that reported on this
    /// generation or a later one has applied it.
    changed: u64,
    /// It has an enforcement action to switch on and off.
    monitor_only: bool,
    id: u64,
    /// Its revision in the backbone's bucket (0 when kept locally).
    revision: u64,
}

#[derive(Clone)]
struct Managed {
    generation: u64,
    entries: BTreeMap<String, Entry>,
    next_id: u64,
}

impl Managed {
    fn set(&self) -> Arc<PolicySet> {
        Arc::new(PolicySet {
            generation: self.generation,
            policies: self.entries.values().map(|e| e.policy.clone()).collect(),
        })
    }

    fn bytes(&self) -> usize {
        self.entries.values().map(|e| e.policy.yaml.len() + e.policy.name.len()).sum()
    }
}

/// Where the managed set is kept.
enum Keeper {
    /// This relay's own store (a file, or memory).
    Local(Store),
    /// The backbone's bucket, which every relay on it shares; this relay's
    /// copy follows it, and `applied` is the last revision it took.
    Shared { bucket: Box<PolicyBucket>, applied: watch::Sender<u64> },
}

/// A change seen in the backbone's bucket (`backbone::policies`).
#[derive(Debug)]
pub enum BucketChange {
    Put { key: String, value: bytes::Bytes, revision: u64 },
    Delete { key: String, revision: u64 },
}

/// How long a change written to the bucket may take to come back to this
/// relay before the caller is told it is not seen here yet.
const SHARED_APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

static BUCKET_LOG: std::sync::LazyLock<serving::log_limit::LogLimits> =
    std::sync::LazyLock::new(|| serving::log_limit::LogLimits::new(std::time::Duration::from_secs(10)));

pub struct RelayPolicies {
    keeper: Keeper,
    managed: Mutex<Managed>,
    /// The set as sensors get it; each ingest stream watches it.
    set: watch::Sender<Arc<PolicySet>>,
    nodes: Arc<Nodes>,
    /// [`SENDING_BUDGET`], in bytes.
    sending: Arc<tokio::sync::Semaphore>,
}

/// Checks a document for the relay: a policy it can send (cluster-wide).
fn parse(yaml: &str) -> Result<(policy::TracingPolicy, bool), ChangeError> {
    let parsed = policy::parse(yaml)?;
    if parsed.kind == policy::schema::Kind::TracingPolicyNamespaced {
        return Err(ChangeError::Namespaced);
    }
    let monitor_only = policy::select::mode_of(&parsed)? == policy::select::Mode::MonitorOnly;
    Ok((parsed, monitor_only))
}

impl RelayPolicies {
    /// The policies in `store`, ready to send.
    pub fn open(store: Store, nodes: Arc<Nodes>) -> Result<RelayPolicies, StoreError> {
        let contents = store.load()?;
        let mut entries = BTreeMap::new();
        for (id, policy) in contents.policies.into_iter().enumerate() {
            // Checked when added; a document this version no longer takes
            // is still sent, and each node reports its refusal.
            let monitor_only = parse(&policy.yaml).is_ok_and(|(_, m)| m);
            let entry = Entry { changed: contents.generation, monitor_only, id: id as u64 + 1, revision: 0, policy };
            entries.insert(entry.policy.name.clone(), entry);
        }
        let next_id = entries.len() as u64 + 1;
        let managed = Managed { generation: contents.generation, entries, next_id };
        let (set, _) = watch::channel(managed.set());
        let sending = Arc::new(tokio::sync::Semaphore::new(SENDING_BUDGET));
        Ok(RelayPolicies { keeper: Keeper::Local(store), managed: Mutex::new(managed), set, nodes, sending })
    }

    /// Empty until [`PolicyBucket::follow`] brings the bucket's policies
    /// (see [`RelayPolicies::caught_up`]).
    pub fn shared(bucket: PolicyBucket, nodes: Arc<Nodes>) -> RelayPolicies {
        let managed = Managed { generation: 0, entries: BTreeMap::new(), next_id: 1 };
        let (set, _) = watch::channel(managed.set());
        let sending = Arc::new(tokio::sync::Semaphore::new(SENDING_BUDGET));
        let (applied, _) = watch::channel(0);
        RelayPolicies {
            keeper: Keeper::Shared { bucket: Box::new(bucket), applied },
            managed: Mutex::new(managed),
            set,
            nodes,
            sending,
        }
    }

    /// Waits (up to `limit`) until this relay's copy holds the bucket's
    /// revision `revision`; `false` if it did not in time. Start-up waits
    /// so, so that no sensor is sent an empty set first.
    pub async fn caught_up(&self, revision: u64, limit: std::time::Duration) -> bool {
        let Keeper::Shared { applied, .. } = &self.keeper else { return true };
        let mut seen = applied.subscribe();
        matches!(tokio::time::timeout(limit, seen.wait_for(|r| *r >= revision)).await, Ok(Ok(_)))
    }

    /// Takes a change seen in the bucket: this relay's copy, and the set
    /// its sensors get, follow it. A value that is not a policy, or one
    /// past the limits, is skipped and logged (the bucket is the
    /// backbone's, which other clients may write).
    pub fn apply(&self, change: BucketChange) {
        let Keeper::Shared { applied, .. } = &self.keeper else { return };
        let mut managed = self.managed.lock();
        let revision = match change {
            BucketChange::Put { key, value, revision } => {
                match self.bucket_entry(&managed, &key, &value, revision) {
                    Ok(entry) => {
                        if entry.id == managed.next_id {
                            managed.next_id += 1;
                        }
                        managed.entries.insert(key, entry);
                    }
                    Err(why) => {
                        if let Some(n) = BUCKET_LOG.hit(&why) {
                            tracing::warn!(key = %key.chars().take(253).collect::<String>(), why, times = n, "skipped a value in the policy bucket");
                        }
                        managed.entries.remove(&key);
                    }
                }
                revision
            }
            BucketChange::Delete { key, revision } => {
                managed.entries.remove(&key);
                revision
            }
        };
        if revision > managed.generation {
            managed.generation = revision;
        }
        self.set.send_replace(managed.set());
        let generation = managed.generation;
        drop(managed);
        applied.send_if_modified(|a| {
            let newer = generation > *a;
            *a = (*a).max(generation);
            newer
        });
    }

    /// The entry a bucket value makes, or why it makes none.
    fn bucket_entry(&self, managed: &Managed, key: &str, value: &[u8], revision: u64) -> Result<Entry, String> {
        use prost::Message;
        let policy = ManagedPolicy::decode(value).map_err(|_| "not a policy".to_owned())?;
        if policy.name != key {
            return Err("a policy under another name's key".into());
        }
        let replaced = managed.entries.get(key);
        if replaced.is_none() && managed.entries.len() >= MAX_POLICIES {
            return Err(format!("more than {MAX_POLICIES} policies"));
        }
        let bytes = managed.bytes() - replaced.map_or(0, |e| e.policy.yaml.len() + e.policy.name.len())
            + policy.yaml.len()
            + policy.name.len();
        if bytes > MAX_SET_BYTES {
            return Err(format!("the set would take more than {MAX_SET_BYTES} bytes"));
        }
        let monitor_only = parse(&policy.yaml).is_ok_and(|(_, m)| m);
        let id = replaced.map_or(managed.next_id, |e| e.id);
        Ok(Entry { policy, changed: revision, monitor_only, id, revision })
    }

    /// A share of the sending budget for one copy of `set`, held until the
    /// copy is handed to the transport; `None` once the relay is stopping.
    pub async fn sending_share(&self, set: &PolicySet) -> Option<tokio::sync::OwnedSemaphorePermit> {
        use prost::Message;
        let bytes = set.encoded_len().clamp(1, SENDING_BUDGET);
        self.sending.clone().acquire_many_owned(u32::try_from(bytes).unwrap_or(u32::MAX)).await.ok()
    }

    /// The set now, then every change.
    pub fn watch(&self) -> watch::Receiver<Arc<PolicySet>> {
        self.set.subscribe()
    }

    pub fn generation(&self) -> u64 {
        self.managed.lock().generation
    }

    /// Policies managed now.
    pub fn list_len(&self) -> usize {
        self.managed.lock().entries.len()
    }

    /// A sensor's report, bounded before it is kept: only policies the
    /// relay manages, each named once, errors cut to a few hundred bytes.
    pub fn report(&self, node: &str, stream: u64, mut report: PolicyReport) {
        {
            let managed = self.managed.lock();
            report.policies.retain(|o| managed.entries.contains_key(&o.name));
        }
        report.policies.sort_by(|a, b| a.name.cmp(&b.name));
        report.policies.dedup_by(|a, b| a.name == b.name);
        kubernetes::bound(&mut report.kubernetes);
        for o in report.policies.iter_mut().chain(&mut report.kubernetes) {
            if o.error.len() > MAX_ERROR_BYTES {
                let mut cut = MAX_ERROR_BYTES;
                while !o.error.is_char_boundary(cut) {
                    cut -= 1;
                }
                o.error.truncate(cut);
                o.error.push('…');
            }
        }
        self.nodes.report_policies(node, stream, report);
    }

    /// Applies `change` to the managed set and commits it as the next
    /// generation; sensors get the new set. A change the store refuses
    /// leaves everything as it was. On the backbone, the change is worked
    /// out on a copy and written to the bucket; the answer comes once this
    /// relay's copy has it back.
    async fn change(
        &self,
        change: impl FnOnce(&mut Managed, u64) -> Result<Change, ChangeError>,
    ) -> Result<(), ChangeError> {
        let (bucket, applied) = match &self.keeper {
            Keeper::Local(store) => return self.change_local(store, change),
            Keeper::Shared { bucket, applied } => (bucket, applied),
        };
        let (write, name) = {
            let managed = self.managed.lock();
            let mut copy = managed.clone();
            match change(&mut copy, managed.generation + 1)? {
                Change::Put(name) => {
                    let Some(after) = copy.entries.get(&name) else { return Ok(()) };
                    let write = match managed.entries.get(&name) {
                        Some(before) => Write::Update(after.policy.clone(), before.revision),
                        None => Write::Create(after.policy.clone()),
                    };
                    (write, name)
                }
                Change::Remove(name) => {
                    let revision = managed.entries.get(&name).map_or(0, |e| e.revision);
                    (Write::Delete(name.clone(), revision), name)
                }
                Change::None => return Ok(()),
            }
        };
        let created = matches!(write, Write::Create(_));
        let revision = bucket.write(write).await.map_err(|e| match e {
            WriteError::Conflict if created => ChangeError::Exists(name.clone()),
            WriteError::Conflict => ChangeError::Conflict(name.clone()),
            WriteError::Unavailable(why) => ChangeError::Backbone(why),
        })?;
        let mut seen = applied.subscribe();
        match tokio::time::timeout(SHARED_APPLY_WAIT, seen.wait_for(|r| *r >= revision)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ChangeError::Backbone(format!(
                "the change to {name} is stored in the backbone (revision {revision}) but has not reached this relay                  yet; its sensors get it once it does"
            ))),
        }
    }

    fn change_local(
        &self,
        store: &Store,
        change: impl FnOnce(&mut Managed, u64) -> Result<Change, ChangeError>,
    ) -> Result<(), ChangeError> {
        let mut managed = self.managed.lock();
        let before = managed.clone();
        let generation = managed.generation + 1;
        let stored = match change(&mut managed, generation)? {
            Change::Put(name) => match managed.entries.get(&name) {
                Some(e) => store.put(&e.policy, generation),
                None => Ok(()),
            },
            Change::Remove(name) => store.remove(&name, generation),
            Change::None => return Ok(()),
        };
        if let Err(e) = stored {
            *managed = before;
            return Err(e.into());
        }
        managed.generation = generation;
        self.set.send_replace(managed.set());
        Ok(())
    }

    async fn add_policy(&self, yaml: &str) -> Result<(), ChangeError> {
        let (parsed, monitor_only) = parse(yaml)?;
        let name = parsed.metadata.name;
        self.change(|managed, generation| {
            if managed.entries.contains_key(&name) {
                return Err(ChangeError::Exists(name.clone()));
            }
            if managed.entries.len() >= MAX_POLICIES {
                return Err(ChangeError::Full);
            }
            let bytes = managed.bytes() + yaml.len() + name.len();
            if bytes > MAX_SET_BYTES {
                return Err(ChangeError::TooLarge(bytes));
            }
            let policy = ManagedPolicy { name: name.clone(), yaml: yaml.to_owned(), enabled: true, monitor: false };
            let id = managed.next_id;
            managed.next_id += 1;
            managed.entries.insert(name.clone(), Entry { policy, changed: generation, monitor_only, id, revision: 0 });
            Ok(Change::Put(name.clone()))
        })
        .await
    }

    /// Changes one field of a managed policy.
    async fn update(
        &self,
        name: &str,
        namespace: &str,
        edit: impl FnOnce(&mut Entry) -> Result<bool, ChangeError>,
    ) -> Result<(), ChangeError> {
        self.change(|managed, generation| {
            let entry = managed
                .entries
                .get_mut(name)
                .filter(|_| namespace.is_empty())
                .ok_or_else(|| ChangeError::NotFound(name.to_owned()))?;
            let before = entry.policy.clone();
            if !edit(entry)? {
                return Ok(Change::None);
            }
            if entry.policy == before {
                return Ok(Change::None);
            }
            entry.changed = generation;
            Ok(Change::Put(name.to_owned()))
        })
        .await
    }

    /// Each policy as `ListTracingPolicies` shows it: its state across
    /// the nodes, and node by node in `info`.
    fn statuses(&self) -> Vec<TracingPolicyStatus> {
        let nodes = self.nodes.policy_reports();
        let managed = self.managed.lock();
        let mut all: Vec<TracingPolicyStatus> = managed.entries.values().map(|e| status(e, &nodes)).collect();
        all.extend(kubernetes::statuses(&nodes));
        all
    }
}

enum Change {
    Put(String),
    Remove(String),
    None,
}

/// A node's state for one policy, as `info` shows it.
fn node_state(entry: &Entry, node: &NodePolicies) -> (Option<Outcome>, String, u64, u64) {
    let current = node.report.as_ref().filter(|r| r.generation >= entry.changed);
    // `report` sorted them by name.
    let outcome = current.and_then(|r| {
        let at = r.policies.binary_search_by(|o| o.name.as_str().cmp(&entry.policy.name)).ok()?;
        r.policies.get(at)
    });
    let Some(o) = outcome else {
        let why = if node.connected { "pending" } else { "pending (node disconnected)" };
        return (None, why.to_owned(), 0, 0);
    };
    let (state, text) = outcome_text(o, node.connected);
    (Some(state), text, o.kernel_memory_bytes, o.events)
}

/// Bytes of one policy's per-node `info` and of its `error`: the whole
/// list stays under the 4 MiB a default gRPC client takes, with every
/// policy and the most nodes. Past it, the nodes that are not enabled come
/// first and the rest are counted.
const MAX_INFO_BYTES: usize = 48 << 10;
const MAX_ERRORS_BYTES: usize = 8 << 10;

/// Joins `items` with ", " up to `budget` bytes; what does not fit is
/// counted at the end.
fn bounded_join(items: &[String], budget: usize) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if out.len() + item.len() + 2 > budget {
            out.push_str(&format!(", … {} more", items.len() - i));
            break;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(item);
    }
    out
}

/// One policy's states across the nodes, gathered for its list entry.
#[derive(Default)]
pub(crate) struct Tally {
    /// (order, "node=state"): errors, pending and disabled before enabled.
    info: Vec<(u8, String)>,
    errors: Vec<String>,
    pending: usize,
    enabled: usize,
    memory: u64,
    events: u64,
}

impl Tally {
    /// A node's state (`None`: pending), as `text`.
    pub(crate) fn add(&mut self, node: &str, state: Option<Outcome>, text: String, bytes: u64, posted: u64) {
        let order = match state {
            None => {
                self.pending += 1;
                1
            }
            Some(Outcome::Enabled) => {
                self.enabled += 1;
                3
            }
            Some(Outcome::Disabled) => 2,
            Some(_) => {
                self.errors.push(format!("{node}: {text}"));
                0
            }
        };
        self.memory += bytes;
        self.events += posted;
        self.info.push((order, format!("{node}={text}")));
    }

    /// "nodes: …", the ones not enabled first, bounded.
    pub(crate) fn info(&mut self) -> String {
        self.info.sort_by_key(|(order, _)| *order);
        let info: Vec<String> = self.info.iter().map(|(_, s)| s.clone()).collect();
        format!("nodes: {}", if info.is_empty() { "none".to_owned() } else { bounded_join(&info, MAX_INFO_BYTES) })
    }

    /// The state across the nodes of a policy that should be enabled.
    pub(crate) fn state(&self) -> TracingPolicyState {
        if !self.errors.is_empty() {
            TracingPolicyState::TpStateLoadError
        } else if self.pending > 0 {
            TracingPolicyState::TpStateLoading
        } else {
            TracingPolicyState::TpStateEnabled
        }
    }

    pub(crate) fn errors(&self) -> String {
        bounded_join(&self.errors, MAX_ERRORS_BYTES)
    }

    /// Kernel memory and events, summed over the nodes.
    pub(crate) fn stats(&self) -> (u64, proto::tetragon::TracingPolicyStats) {
        let stats = proto::tetragon::TracingPolicyStats {
            action_counters: Some(proto::tetragon::TracingPolicyActionCounters {
                post: self.events,
                ..Default::default()
            }),
            ..Default::default()
        };
        (self.memory, stats)
    }
}

/// A node's outcome as its state and words.
pub(crate) fn outcome_text(o: &proto::vigil::relay::v1::PolicyOutcome, connected: bool) -> (Outcome, String) {
    let state = Outcome::try_from(o.state).unwrap_or(Outcome::Unspecified);
    let mut text = match state {
        Outcome::Enabled => "enabled".to_owned(),
        Outcome::Disabled => "disabled".to_owned(),
        Outcome::Error | Outcome::Unspecified => format!("error: {}", o.error),
    };
    if !connected {
        text.push_str(" (node disconnected)");
    }
    (state, text)
}

fn status(entry: &Entry, nodes: &[NodePolicies]) -> TracingPolicyStatus {
    let mut tally = Tally::default();
    for node in nodes {
        let (state, text, bytes, posted) = node_state(entry, node);
        tally.add(&node.node, state, text, bytes, posted);
    }
    let state = if entry.policy.enabled { tally.state() } else { TracingPolicyState::TpStateDisabled };
    let mode = if entry.monitor_only {
        TracingPolicyMode::TpModeMonitorOnly
    } else if entry.policy.monitor {
        TracingPolicyMode::TpModeMonitor
    } else {
        TracingPolicyMode::TpModeEnforce
    };
    let (memory, stats) = tally.stats();
    #[allow(deprecated, reason = "Tetragon still fills `enabled`, and tetra reads it")]
    TracingPolicyStatus {
        id: entry.id,
        name: entry.policy.name.clone(),
        enabled: entry.policy.enabled && tally.enabled > 0,
        info: tally.info(),
        error: tally.errors(),
        state: state as i32,
        kernel_memory_bytes: memory,
        mode: mode as i32,
        stats: Some(stats),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl PolicyControl for RelayPolicies {
    async fn add(&self, yaml: &str) -> Result<(), Status> {
        let result = self.add_policy(yaml).await;
        match &result {
            Ok(()) => tracing::info!(generation = self.generation(), "tracing policy added for every sensor"),
            Err(e) => tracing::warn!(error = %e, "tracing policy refused"),
        }
        result.map_err(Status::from)
    }

    async fn delete(&self, name: &str, namespace: &str) -> Result<(), Status> {
        self.change(|managed, _| {
            if !namespace.is_empty() || managed.entries.remove(name).is_none() {
                return Err(ChangeError::NotFound(name.to_owned()));
            }
            Ok(Change::Remove(name.to_owned()))
        })
        .await
        .map_err(Status::from)
    }

    async fn set_enabled(&self, name: &str, namespace: &str, enabled: bool) -> Result<(), Status> {
        self.update(name, namespace, |e| {
            e.policy.enabled = enabled;
            Ok(true)
        })
        .await
        .map_err(Status::from)
    }

    async fn set_mode(&self, name: &str, namespace: &str, monitor: bool) -> Result<(), Status> {
        self.update(name, namespace, |e| {
            if e.monitor_only {
                return if monitor { Ok(false) } else { Err(ChangeError::MonitorOnly(name.to_owned())) };
            }
            e.policy.monitor = monitor;
            Ok(true)
        })
        .await
        .map_err(Status::from)
    }

    async fn list(&self) -> Result<Vec<TracingPolicyStatus>, Status> {
        Ok(self.statuses())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::vigil::relay::v1::PolicyOutcome;

    fn entry(name: &str) -> Entry {
        let policy = ManagedPolicy { name: name.into(), yaml: String::new(), enabled: true, monitor: false };
        Entry { policy, changed: 2, monitor_only: true, id: 1, revision: 0 }
    }

    fn node(name: &str, connected: bool, generation: u64, outcome: Option<(&str, Outcome, &str)>) -> NodePolicies {
        let policies = outcome
            .map(|(policy, state, error)| PolicyOutcome {
                name: policy.into(),
                state: state as i32,
                error: error.into(),
                kernel_memory_bytes: 10,
                events: 5,
                ..Default::default()
            })
            .into_iter()
            .collect();
        NodePolicies {
            node: name.into(),
            connected,
            report: Some(Arc::new(PolicyReport { generation, policies, ..Default::default() })),
        }
    }

    #[test]
    fn each_node_is_shown_with_what_it_reported_on_the_current_set() {
        let nodes = vec![
            node("a", true, 2, Some(("p", Outcome::Enabled, ""))),
            node("b", true, 1, Some(("p", Outcome::Enabled, ""))),
            node("c", true, 3, Some(("p", Outcome::Error, "no such function"))),
            node("d", false, 1, None),
            node("e", false, 2, Some(("p", Outcome::Enabled, ""))),
        ];
        let s = status(&entry("p"), &nodes);
        assert_eq!(
            s.info,
            "nodes: c=error: no such function, b=pending, d=pending (node disconnected), a=enabled, \
             e=enabled (node disconnected)"
        );
        assert_eq!(s.error, "c: error: no such function");
        assert_eq!(s.state, TracingPolicyState::TpStateLoadError as i32);
        assert_eq!(s.kernel_memory_bytes, 30, "what the nodes that reported hold");
    }

    fn policy_yaml(name: &str, kind: &str, action: &str) -> String {
        format!(
            "apiVersion: cilium.io/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: a\nspec:\n  tracepoints:\n  - \
             subsystem: syscalls\n    event: sys_enter_unlinkat\n    args:\n    - index: 6\n      type: string\n    \
             selectors:\n    - matchActions:\n      - action: {action}\n"
        )
    }

    fn relay_policies() -> RelayPolicies {
        RelayPolicies::open(Store::open(None).unwrap(), Arc::new(Nodes::default())).unwrap()
    }

    #[tokio::test]
    async fn changes_are_checked_numbered_and_sent() {
        let p = relay_policies();
        let mut set = p.watch();
        assert_eq!(set.borrow_and_update().generation, 0);
        p.add(&policy_yaml("kill", "TracingPolicy", "Sigkill")).await.unwrap();
        p.add(&policy_yaml("post", "TracingPolicy", "Post")).await.unwrap();
        assert!(set.has_changed().unwrap());
        let sent = set.borrow_and_update().clone();
        assert_eq!(sent.generation, 2);
        let names: Vec<&str> = sent.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["kill", "post"]);

        // Refusals name the problem and change nothing.
        let refused = |r: Result<(), Status>| r.unwrap_err();
        let e = refused(p.add(&policy_yaml("kill", "TracingPolicy", "Post")).await);
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::AlreadyExists, "a policy named kill is already managed by the relay")
        );
        let e = refused(p.add(&policy_yaml("ns", "TracingPolicyNamespaced", "Post")).await);
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("kind: TracingPolicyNamespaced is not distributed"), "{}", e.message());
        let e = refused(p.add("kind: TracingPolicy\nspec: {}\n").await);
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = refused(p.add(&policy_yaml("geturl", "TracingPolicy", "GetUrl")).await);
        assert!(e.message().contains("GetUrl"), "{}", e.message());
        let e = refused(p.delete("nope", "").await);
        assert_eq!((e.code(), e.message()), (tonic::Code::NotFound, "no policy named nope is managed by the relay"));
        let e = refused(p.delete("kill", "default").await);
        assert_eq!(e.code(), tonic::Code::NotFound, "relay policies have no namespace");
        let e = refused(p.set_mode("post", "", false).await);
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
        assert!(!set.has_changed().unwrap(), "nothing was sent");
        assert_eq!(p.generation(), 2);

        // Switches: each a new generation; one that changes nothing is none.
        p.set_mode("kill", "", true).await.unwrap();
        p.set_enabled("post", "", false).await.unwrap();
        p.set_enabled("post", "", false).await.unwrap();
        p.set_mode("post", "", true).await.unwrap();
        let sent = set.borrow_and_update().clone();
        assert_eq!(sent.generation, 4);
        assert!(sent.policies[0].monitor && !sent.policies[1].enabled);
        let list = p.list().await.unwrap();
        let modes: Vec<(String, i32, i32)> = list.iter().map(|s| (s.name.clone(), s.state, s.mode)).collect();
        assert_eq!(
            modes,
            vec![
                ("kill".into(), TracingPolicyState::TpStateEnabled as i32, TracingPolicyMode::TpModeMonitor as i32),
                (
                    "post".into(),
                    TracingPolicyState::TpStateDisabled as i32,
                    TracingPolicyMode::TpModeMonitorOnly as i32
                ),
            ],
            "no node yet: nothing pending, nothing failed"
        );
        assert_eq!(list[0].info, "nodes: none");
        p.delete("kill", "").await.unwrap();
        assert_eq!(set.borrow_and_update().policies.len(), 1);
        assert_eq!(p.generation(), 5);
    }

    #[tokio::test]
    async fn copies_of_the_set_on_their_way_are_bounded_in_bytes() {
        let p = relay_policies();
        let big = ManagedPolicy { name: "big".into(), yaml: "x".repeat(SENDING_BUDGET / 3), ..Default::default() };
        let set = PolicySet { generation: 1, policies: vec![big] };
        let (a, b) = (p.sending_share(&set).await.unwrap(), p.sending_share(&set).await.unwrap());
        let wait = std::time::Duration::from_millis(100);
        assert!(tokio::time::timeout(wait, p.sending_share(&set)).await.is_err(), "a third copy waits");
        drop(a);
        let soon = std::time::Duration::from_secs(10);
        assert!(tokio::time::timeout(soon, p.sending_share(&set)).await.is_ok(), "and goes once one was sent");
        drop(b);
    }

    #[tokio::test]
    async fn the_set_is_bounded_in_count_and_bytes() {
        let p = relay_policies();
        for i in 0..MAX_POLICIES {
            p.add(&policy_yaml(&format!("p{i}"), "TracingPolicy", "Post")).await.unwrap();
        }
        let e = p.add(&policy_yaml("one-more", "TracingPolicy", "Post")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        let p = relay_policies();
        // Large documents (a comment fills them) run into the byte limit.
        let filler = format!("# {}\n", "x".repeat(policy::MAX_POLICY_BYTES - 1024));
        let mut added = 0;
        let e = loop {
            match p.add(&format!("{filler}{}", policy_yaml(&format!("big{added}"), "TracingPolicy", "Post"))).await {
                Ok(()) => added += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(added, MAX_SET_BYTES / policy::MAX_POLICY_BYTES, "each a little under 1 MiB");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("more than its limit of 8388608"), "{}", e.message());
    }

    #[test]
    fn the_list_for_every_policy_and_the_most_nodes_fits_a_default_client() {
        use prost::Message;
        let why = "x".repeat(MAX_ERROR_BYTES);
        let name = "p".repeat(253);
        let nodes: Vec<NodePolicies> = (0..crate::nodes::DEFAULT_MAX_NODES)
            .map(|i| node(&format!("{i:0>253}"), true, 2, Some((name.as_str(), Outcome::Error, why.as_str()))))
            .collect();
        let policies: Vec<TracingPolicyStatus> = (0..MAX_POLICIES).map(|_| status(&entry(&name), &nodes)).collect();
        let reply = proto::tetragon::ListTracingPoliciesResponse { policies };
        assert!(reply.encoded_len() < 4 << 20, "{} bytes", reply.encoded_len());
        assert!(reply.policies[0].info.ends_with("more"), "cut and counted");
        assert!(reply.policies[0].error.ends_with("more"), "cut and counted");
    }
}
