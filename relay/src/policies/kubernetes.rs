//! The policies sensors run from Kubernetes objects (TracingPolicy and
//! TracingPolicyNamespaced), as each reports them: listed at the relay
//! with their state on each node that runs them, so one list shows the
//! cluster. They are changed with `kubectl`, not here. What a node reports
//! is bounded before it is kept, and the list takes at most
//! `MAX_LISTED` of them (a hostile node cannot grow it without end).

use std::collections::BTreeMap;

use proto::tetragon::{TracingPolicyMode, TracingPolicyStatus};
use proto::vigil::relay::v1::PolicyOutcome;

use super::{Tally, outcome_text};
use crate::nodes::NodePolicies;

/// Kubernetes policies kept per node report (a sensor loads at most 256).
const MAX_PER_NODE: usize = 256;
/// Distinct Kubernetes policies listed at most.
const MAX_LISTED: usize = 256;
/// Longest name and namespace taken (Kubernetes' own limits).
const MAX_NAME: usize = 253;
const MAX_NAMESPACE: usize = 63;

/// Keeps what a node reported within bounds: well-formed names, each
/// policy once, at most `MAX_PER_NODE`.
pub fn bound(outcomes: &mut Vec<PolicyOutcome>) {
    outcomes.retain(|o| !o.name.is_empty() && o.name.len() <= MAX_NAME && o.namespace.len() <= MAX_NAMESPACE);
    outcomes.truncate(MAX_PER_NODE);
    outcomes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    outcomes.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
}

/// One list entry per Kubernetes policy some node runs.
pub fn statuses(nodes: &[NodePolicies]) -> Vec<TracingPolicyStatus> {
    let mut by_policy: BTreeMap<(&str, &str), Tally> = BTreeMap::new();
    for node in nodes {
        let Some(report) = &node.report else { continue };
        for o in &report.kubernetes {
            let key = (o.namespace.as_str(), o.name.as_str());
            if !by_policy.contains_key(&key) && by_policy.len() >= MAX_LISTED {
                continue;
            }
            let (state, text) = outcome_text(o, node.connected);
            by_policy.entry(key).or_default().add(&node.node, Some(state), text, o.kernel_memory_bytes, o.events);
        }
    }
    by_policy
        .into_iter()
        .map(|((namespace, name), mut tally)| {
            let (memory, stats) = tally.stats();
            #[allow(deprecated, reason = "Tetragon still fills `enabled`, and tetra reads it")]
            TracingPolicyStatus {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                enabled: true,
                info: format!("managed by Kubernetes; {}", tally.info()),
                error: tally.errors(),
                state: tally.state() as i32,
                kernel_memory_bytes: memory,
                mode: TracingPolicyMode::TpModeEnforce as i32,
                stats: Some(stats),
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proto::tetragon::TracingPolicyState;
    use proto::vigil::relay::v1::PolicyReport;
    use proto::vigil::relay::v1::policy_outcome::State as Outcome;

    use super::*;

    fn outcome(namespace: &str, name: &str, state: Outcome, error: &str) -> PolicyOutcome {
        PolicyOutcome {
            name: name.into(),
            namespace: namespace.into(),
            state: state as i32,
            error: error.into(),
            kernel_memory_bytes: 10,
            events: 2,
        }
    }

    fn node(name: &str, connected: bool, kubernetes: Vec<PolicyOutcome>) -> NodePolicies {
        NodePolicies {
            node: name.into(),
            connected,
            report: Some(Arc::new(PolicyReport { generation: 0, policies: vec![], kubernetes })),
        }
    }

    #[test]
    fn each_policy_lists_the_nodes_that_run_it() {
        let nodes = vec![
            node(
                "a",
                true,
                vec![outcome("", "cluster", Outcome::Enabled, ""), outcome("ns", "p", Outcome::Enabled, "")],
            ),
            node("b", false, vec![outcome("ns", "p", Outcome::Error, "no BTF")]),
            node("c", true, vec![]),
        ];
        let list = statuses(&nodes);
        let got: Vec<(&str, &str, &str, i32, u64)> = list
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str(), s.info.as_str(), s.state, s.kernel_memory_bytes))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "",
                    "cluster",
                    "managed by Kubernetes; nodes: a=enabled",
                    TracingPolicyState::TpStateEnabled as i32,
                    10
                ),
                (
                    "ns",
                    "p",
                    "managed by Kubernetes; nodes: b=error: no BTF (node disconnected), a=enabled",
                    TracingPolicyState::TpStateLoadError as i32,
                    20
                ),
            ]
        );
        assert_eq!(list[1].error, "b: error: no BTF (node disconnected)");
    }

    #[test]
    fn what_a_node_reports_is_bounded() {
        let mut many: Vec<PolicyOutcome> =
            (0..1000).map(|i| outcome("ns", &format!("p{i}"), Outcome::Enabled, "")).collect();
        many.push(outcome("ns", &"x".repeat(300), Outcome::Enabled, ""));
        many.push(outcome("ns", "p1", Outcome::Error, "twice"));
        bound(&mut many);
        assert_eq!(many.len(), MAX_PER_NODE);
        assert!(many.iter().all(|o| o.name.len() <= MAX_NAME));
        // Distinct policies across many nodes are capped too.
        let nodes: Vec<NodePolicies> = (0..4)
            .map(|n| {
                let mut own: Vec<PolicyOutcome> =
                    (0..200).map(|i| outcome("", &format!("n{n}-{i}"), Outcome::Enabled, "")).collect();
                bound(&mut own);
                node(&format!("node{n}"), true, own)
            })
            .collect();
        assert_eq!(statuses(&nodes).len(), MAX_LISTED);
    }
}
