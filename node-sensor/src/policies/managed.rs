//! Policies managed elsewhere for the whole cluster: by relays, and by
//! Kubernetes (TracingPolicy objects). Each source sends its whole set:
//! a relay link (one address a `--relay-address` resolves to) after the
//! welcome and at every change, the Kubernetes watch at every change (as
//! the link `KUBERNETES_LINK`). This loads what is new, unloads managed
//! policies no set lists any more, follows each one's enabled flag and
//! mode, and says what became of each. Replicas of one relay may hold
//! different sets: the sensor runs their union, and where two sources send
//! a policy of one name with different documents, the link opened first
//! wins. Policies added on the node itself are never touched; a managed
//! policy with the same name as one of them is refused here.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use proto::vigil::relay::v1::policy_outcome::State as Outcome;
use proto::vigil::relay::v1::{ManagedPolicy, PolicyOutcome, PolicyReport, PolicySet};

use super::api::SharedPolicies;
use super::{Mode, Origin, PolicyHost, State, display_name, key_of};

/// The link number of the Kubernetes watch's set.
pub const KUBERNETES_LINK: u64 = u64::MAX;

/// (namespace, name): a policy's key in the host.
type Key = (String, String);

/// One policy of a source's set: a relay's are cluster-wide (namespace
/// empty); Kubernetes' `TracingPolicyNamespaced` carry theirs.
#[derive(Debug, Clone)]
pub struct Desired {
    pub namespace: String,
    pub policy: ManagedPolicy,
}

impl Desired {
    fn key(&self) -> Key {
        (self.namespace.clone(), self.policy.name.clone())
    }
}

#[derive(Default)]
struct Sets {
    /// Links open now: a set arriving from one already closed (its apply
    /// raced the close) is not taken.
    open: std::collections::BTreeSet<u64>,
    /// The set each link sent last, by link.
    by_link: BTreeMap<u64, Vec<Desired>>,
    /// The generation of each relay link's last set.
    generations: BTreeMap<u64, u64>,
    /// Managed policies in the host (in any state), by key: their document.
    applied: BTreeMap<Key, String>,
    /// Managed policies this node refused, by key: the document and why
    /// (tried again only when the document changes).
    refused: BTreeMap<Key, (String, String)>,
}

pub struct Managed {
    host: SharedPolicies,
    sets: Mutex<Sets>,
    /// Off with `--ignore-relay-policies`: every relay policy is refused.
    accept: bool,
    kubernetes_changes: tokio::sync::watch::Sender<u64>,
}

/// Why a node with `--ignore-relay-policies` refuses each relay policy.
const IGNORED: &str = "this node takes no tracing policies from relays (--ignore-relay-policies)";

impl Managed {
    /// `accept`: whether relays' sets are taken (the Kubernetes watch's
    /// are, once `open(KUBERNETES_LINK)`).
    pub fn new(host: SharedPolicies, accept: bool) -> Self {
        Managed {
            host,
            sets: Mutex::new(Sets::default()),
            accept,
            kubernetes_changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Takes the Kubernetes watch's whole set. What became of each policy
    /// is in the host's list and the log.
    pub fn apply_kubernetes(&self, set: Vec<Desired>) {
        // The host's lock before the sets', everywhere.
        let mut host = self.host.0.lock();
        let mut sets = self.sets.lock();
        if !sets.open.contains(&KUBERNETES_LINK) {
            return;
        }
        sets.by_link.insert(KUBERNETES_LINK, set);
        reconcile(&mut sets, &mut host, self.accept);
        drop((sets, host));
        self.kubernetes_changes.send_modify(|n| *n += 1);
    }

    /// Takes relay `link`'s new set, brings the host in line with every
    /// link's, and reports on the policies of this set (and on the
    /// Kubernetes ones).
    pub fn apply(&self, link: u64, set: PolicySet) -> PolicyReport {
        // The host's lock before the sets', everywhere.
        let mut host = self.host.0.lock();
        let mut sets = self.sets.lock();
        if !sets.open.contains(&link) {
            return PolicyReport { generation: set.generation, ..Default::default() };
        }
        let desired = set.policies.into_iter().map(|policy| Desired { namespace: String::new(), policy }).collect();
        sets.by_link.insert(link, desired);
        sets.generations.insert(link, set.generation);
        reconcile(&mut sets, &mut host, self.accept);
        report(&sets, &host, link, self.accept)
    }

    /// What relay `link` is told now: its last set's outcomes and the
    /// Kubernetes policies' (sent again when the latter change).
    pub fn report(&self, link: u64) -> PolicyReport {
        let host = self.host.0.lock();
        let sets = self.sets.lock();
        report(&sets, &host, link, self.accept)
    }

    /// Bumped whenever the Kubernetes set was applied: links send a fresh
    /// report.
    pub fn kubernetes_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.kubernetes_changes.subscribe()
    }

    /// A link opened: its sets count from now on.
    pub fn open(&self, link: u64) {
        self.sets.lock().open.insert(link);
    }

    /// A link closed for good (its relay address went away): its set no
    /// longer counts.
    pub fn forget(&self, link: u64) {
        let mut host = self.host.0.lock();
        let mut sets = self.sets.lock();
        sets.open.remove(&link);
        sets.generations.remove(&link);
        if sets.by_link.remove(&link).is_some() {
            reconcile(&mut sets, &mut host, self.accept);
        }
    }
}

/// The outcome of a policy in the host, or of one refused before it.
fn outcome_of(key: &Key, sets: &Sets, listed: Option<&super::PolicyStatus>) -> PolicyOutcome {
    let mut outcome = PolicyOutcome { name: key.1.clone(), ..Default::default() };
    if let Some((_, why)) = sets.refused.get(key) {
        outcome.state = Outcome::Error as i32;
        outcome.error.clone_from(why);
    } else if let Some(status) = listed.filter(|_| sets.applied.contains_key(key)) {
        let (state, error) = match &status.state {
            State::Enabled => (Outcome::Enabled, String::new()),
            State::Disabled => (Outcome::Disabled, String::new()),
            State::Error(why) => (Outcome::Error, why.clone()),
        };
        outcome.state = state as i32;
        outcome.error = error;
        outcome.kernel_memory_bytes = status.kernel_memory_bytes;
        outcome.events = status.events;
    }
    outcome
}

/// Relay `link`'s report: its last set's outcomes (each refused when this
/// node takes no relay policies), and the Kubernetes policies'.
fn report(sets: &Sets, host: &PolicyHost, link: u64, accept: bool) -> PolicyReport {
    let listed: BTreeMap<Key, super::PolicyStatus> =
        host.list().into_iter().map(|p| ((p.namespace.clone(), p.name.clone()), p)).collect();
    let policies = sets.by_link.get(&link).map_or(&[][..], Vec::as_slice);
    let outcome = |d: &Desired| {
        if accept {
            outcome_of(&d.key(), sets, listed.get(&d.key()))
        } else {
            PolicyOutcome {
                name: d.policy.name.clone(),
                state: Outcome::Error as i32,
                error: IGNORED.into(),
                ..Default::default()
            }
        }
    };
    PolicyReport {
        generation: sets.generations.get(&link).copied().unwrap_or_default(),
        policies: policies.iter().map(outcome).collect(),
        kubernetes: kubernetes_of(sets, &listed),
    }
}

/// Each policy of the Kubernetes set: what became of it here.
fn kubernetes_of(sets: &Sets, listed: &BTreeMap<Key, super::PolicyStatus>) -> Vec<PolicyOutcome> {
    let set = sets.by_link.get(&KUBERNETES_LINK).map_or(&[][..], Vec::as_slice);
    set.iter()
        .map(|d| {
            let key = d.key();
            // A policy of this name another source loaded first is this
            // set's only if Kubernetes sent it.
            let ours = listed.get(&key).filter(|p| p.origin == Origin::Kubernetes);
            let mut outcome = outcome_of(&key, sets, ours);
            if ours.is_none() && outcome.state == Outcome::Unspecified as i32 {
                outcome.state = Outcome::Error as i32;
                outcome.error = "a policy of this name from another source runs here".into();
            }
            outcome.namespace = key.0;
            outcome
        })
        .collect()
}

/// Loads, unloads and switches managed policies so the host runs the
/// union of every link's set (relay links' only if it `accept`s them).
fn reconcile(sets: &mut Sets, host: &mut PolicyHost, accept: bool) {
    let mut desired: BTreeMap<Key, (&ManagedPolicy, Origin)> = BTreeMap::new();
    for (link, set) in &sets.by_link {
        let origin = if *link == KUBERNETES_LINK { Origin::Kubernetes } else { Origin::Relay };
        if origin == Origin::Relay && !accept {
            continue;
        }
        for d in set {
            desired.entry(d.key()).or_insert((&d.policy, origin));
        }
    }
    let same = |key: &Key, yaml: &str| desired.get(key).is_some_and(|(p, _)| p.yaml == yaml);
    let gone: Vec<Key> = sets.applied.iter().filter(|(k, yaml)| !same(k, yaml)).map(|(k, _)| k.clone()).collect();
    for key in gone {
        sets.applied.remove(&key);
        let policy = display_name(&key);
        match host.delete(&key.1, &key.0) {
            Ok(()) => tracing::info!(%policy, "managed policy removed"),
            Err(e) => tracing::warn!(%policy, error = %e, "managed policy was not loaded"),
        }
    }
    sets.refused.retain(|key, (yaml, _)| same(key, yaml));
    for (key, (p, origin)) in &desired {
        let policy = display_name(key);
        if !sets.applied.contains_key(key) && !sets.refused.contains_key(key) {
            match load(host, key, p, *origin) {
                Ok(()) => {
                    tracing::info!(%policy, from = %origin, "managed policy loaded");
                    sets.applied.insert(key.clone(), p.yaml.clone());
                }
                Err(why) => {
                    tracing::warn!(%policy, from = %origin, error = %why, "managed policy refused on this node");
                    sets.refused.insert(key.clone(), (p.yaml.clone(), why));
                }
            }
        }
        if sets.applied.contains_key(key) {
            switch(host, key, p);
        }
    }
}

/// Loads one managed policy under `key`, or says why it was refused. A
/// policy the kernel refused is loaded in the error state (as a local one
/// would be) and reported as such.
fn load(host: &mut PolicyHost, key: &Key, p: &ManagedPolicy, origin: Origin) -> Result<(), String> {
    let parsed = policy::parse(&p.yaml).map_err(|e| e.to_string())?;
    if key_of(&parsed) != *key {
        return Err(format!("metadata: not the name {origin} sent it under"));
    }
    match host.add_from(parsed, origin) {
        Ok(()) | Err(super::HostError::Kernel { .. }) => Ok(()),
        Err(e @ super::HostError::Exists(_)) => Err(format!("{e} on this node, added there and not by {origin}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Follows a managed policy's enabled flag and mode. A policy in the
/// error state stays there until its document changes.
fn switch(host: &mut PolicyHost, (namespace, name): &Key, p: &ManagedPolicy) {
    let Some((state, mode)) = host.state_of(name, namespace) else {
        return;
    };
    let result = match (p.enabled, &state) {
        (true, State::Disabled) => host.enable(name, namespace),
        (false, State::Enabled) => host.disable(name, namespace),
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(policy = %name, error = %e, "managed policy could not be switched");
    }
    let monitor = mode == Mode::Monitor;
    if mode != Mode::MonitorOnly
        && monitor != p.monitor
        && let Err(e) = host.set_mode(name, namespace, p.monitor)
    {
        tracing::warn!(policy = %name, error = %e, "managed policy's mode could not be set");
    }
}
