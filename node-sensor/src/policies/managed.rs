//! Policies a relay manages for the whole cluster. Each relay link (one
//! address a `--relay-address` resolves to) sends its whole set after the
//! welcome and at every change; this loads what is new, unloads relay
//! policies no set lists any more, follows each one's enabled flag and
//! mode, and says what became of each. Replicas of one relay may hold
//! different sets: the sensor runs their union, and where two send a
//! policy of one name with different documents, the link opened first
//! wins. Policies added on the node itself are never touched; a relay
//! policy with the same name as one of them is refused here.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use proto::vigil::relay::v1::policy_outcome::State as Outcome;
use proto::vigil::relay::v1::{ManagedPolicy, PolicyOutcome, PolicyReport, PolicySet};

use super::api::SharedPolicies;
use super::{Mode, PolicyHost, State, key_of};

/// A relay policy loaded in the host (in any state).
struct Applied {
    yaml: String,
    /// (namespace, name) in the host.
    key: (String, String),
}

#[derive(Default)]
struct Sets {
    /// Links open now: a set arriving from one already closed (its apply
    /// raced the close) is not taken.
    open: std::collections::BTreeSet<u64>,
    /// The set each link sent last, by link.
    by_link: BTreeMap<u64, Vec<ManagedPolicy>>,
    /// Relay policies in the host, by name.
    applied: BTreeMap<String, Applied>,
    /// Relay policies this node refused, by name: the document and why
    /// (tried again only when the document changes).
    refused: BTreeMap<String, (String, String)>,
}

pub struct RelayManaged {
    host: SharedPolicies,
    sets: Mutex<Sets>,
    /// Off with `--ignore-relay-policies`: every relay policy is refused.
    accept: bool,
}

/// Why a node with `--ignore-relay-policies` refuses each relay policy.
const IGNORED: &str = "this node takes no tracing policies from relays (--ignore-relay-policies)";

impl RelayManaged {
    pub fn new(host: SharedPolicies, accept: bool) -> Self {
        RelayManaged { host, sets: Mutex::new(Sets::default()), accept }
    }

    /// Takes `link`'s new set, brings the host in line with every link's,
    /// and reports on the policies of this set.
    pub fn apply(&self, link: u64, set: PolicySet) -> PolicyReport {
        if !self.accept {
            let refused = |p: &ManagedPolicy| PolicyOutcome {
                name: p.name.clone(),
                state: Outcome::Error as i32,
                error: IGNORED.into(),
                ..Default::default()
            };
            return PolicyReport { generation: set.generation, policies: set.policies.iter().map(refused).collect() };
        }
        let mut sets = self.sets.lock();
        if !sets.open.contains(&link) {
            return PolicyReport { generation: set.generation, policies: Vec::new() };
        }
        sets.by_link.insert(link, set.policies);
        let mut host = self.host.0.lock();
        reconcile(&mut sets, &mut host);
        let listed: BTreeMap<(String, String), super::PolicyStatus> =
            host.list().into_iter().map(|p| ((p.namespace.clone(), p.name.clone()), p)).collect();
        let policies = sets.by_link.get(&link).map_or(&[][..], Vec::as_slice);
        let policies = policies
            .iter()
            .map(|p| {
                let mut outcome = PolicyOutcome { name: p.name.clone(), ..Default::default() };
                if let Some((_, why)) = sets.refused.get(&p.name) {
                    outcome.state = Outcome::Error as i32;
                    outcome.error.clone_from(why);
                } else if let Some(status) = sets.applied.get(&p.name).and_then(|a| listed.get(&a.key)) {
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
            })
            .collect();
        PolicyReport { generation: set.generation, policies }
    }

    /// A link opened: its sets count from now on.
    pub fn open(&self, link: u64) {
        self.sets.lock().open.insert(link);
    }

    /// A link closed for good (its relay address went away): its set no
    /// longer counts.
    pub fn forget(&self, link: u64) {
        let mut sets = self.sets.lock();
        sets.open.remove(&link);
        if sets.by_link.remove(&link).is_some() {
            reconcile(&mut sets, &mut self.host.0.lock());
        }
    }
}

/// Loads, unloads and switches relay policies so the host runs the union
/// of every link's set.
fn reconcile(sets: &mut Sets, host: &mut PolicyHost) {
    let mut desired: BTreeMap<String, ManagedPolicy> = BTreeMap::new();
    for set in sets.by_link.values() {
        for p in set {
            desired.entry(p.name.clone()).or_insert_with(|| p.clone());
        }
    }
    let same = |name: &str, yaml: &str| desired.get(name).is_some_and(|p| p.yaml == yaml);
    let gone: Vec<String> = sets.applied.iter().filter(|(n, a)| !same(n, &a.yaml)).map(|(n, _)| n.clone()).collect();
    for name in gone {
        if let Some(a) = sets.applied.remove(&name) {
            match host.delete(&a.key.1, &a.key.0) {
                Ok(()) => tracing::info!(policy = %name, "relay policy removed"),
                Err(e) => tracing::warn!(policy = %name, error = %e, "relay policy was not loaded"),
            }
        }
    }
    sets.refused.retain(|name, (yaml, _)| same(name, yaml));
    for (name, p) in &desired {
        if !sets.applied.contains_key(name) && !sets.refused.contains_key(name) {
            match load(host, p) {
                Ok(key) => {
                    tracing::info!(policy = %name, "relay policy loaded");
                    sets.applied.insert(name.clone(), Applied { yaml: p.yaml.clone(), key });
                }
                Err(why) => {
                    tracing::warn!(policy = %name, error = %why, "relay policy refused on this node");
                    sets.refused.insert(name.clone(), (p.yaml.clone(), why));
                }
            }
        }
        if let Some(a) = sets.applied.get(name) {
            switch(host, &a.key, p);
        }
    }
}

/// Loads one relay policy; its key in the host, or why it was refused.
/// A policy the kernel refused is loaded in the error state (as a local
/// one would be) and reported as such.
fn load(host: &mut PolicyHost, p: &ManagedPolicy) -> Result<(String, String), String> {
    let parsed = policy::parse(&p.yaml).map_err(|e| e.to_string())?;
    if parsed.metadata.name != p.name {
        return Err("metadata.name: not the name the relay sent it under".into());
    }
    let key = key_of(&parsed);
    match host.add_from(parsed, true) {
        Ok(()) | Err(super::HostError::Kernel { .. }) => Ok(key),
        Err(e @ super::HostError::Exists(_)) => Err(format!("{e} on this node, added there and not by the relay")),
        Err(e) => Err(e.to_string()),
    }
}

/// Follows the relay's enabled flag and mode for a loaded policy. A policy
/// in the error state stays there until its document changes.
fn switch(host: &mut PolicyHost, (namespace, name): &(String, String), p: &ManagedPolicy) {
    let Some((state, mode)) = host.state_of(name, namespace) else {
        return;
    };
    let result = match (p.enabled, &state) {
        (true, State::Disabled) => host.enable(name, namespace),
        (false, State::Enabled) => host.disable(name, namespace),
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(policy = %name, error = %e, "relay policy could not be switched");
    }
    let monitor = mode == Mode::Monitor;
    if mode != Mode::MonitorOnly
        && monitor != p.monitor
        && let Err(e) = host.set_mode(name, namespace, p.monitor)
    {
        tracing::warn!(policy = %name, error = %e, "relay policy's mode could not be set");
    }
}
