//! Which processes a policy applies to, as Kubernetes names them: a
//! `TracingPolicyNamespaced` only to processes of pods in its namespace;
//! `podSelector` to pods whose labels match, `containerSelector` to
//! containers whose name matches, `nodeSelector` to nodes whose labels
//! match. Selectors are Kubernetes label selectors (`matchLabels` and
//! `matchExpressions` with `In`, `NotIn`, `Exists`, `DoesNotExist`); every
//! term must hold. The sensor turns a scope into the cgroups of the
//! containers it admits, which the kernel checks before anything else.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::PolicyError;
use crate::schema::{Kind, Opaque, TracingPolicy};

/// Terms one selector may hold (`matchLabels` entries and expressions).
const MAX_TERMS: usize = 64;
/// Values one expression may list.
const MAX_VALUES: usize = 256;
/// The one key a `containerSelector` may name (the container's name).
pub const CONTAINER_NAME_KEY: &str = "name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SetOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expression {
    key: String,
    operator: SetOperator,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<Expression>,
}

/// A parsed label selector. Empty, it matches everything (as in
/// Kubernetes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    terms: Vec<(String, SetOperator, Vec<String>)>,
}

impl LabelSelector {
    /// Parses the selector at `path`, checking what Kubernetes checks.
    pub fn parse(value: &Opaque, path: &str) -> Result<LabelSelector, PolicyError> {
        let doc: Document = serde_yaml::from_value(value.clone())
            .map_err(|_| PolicyError::at(path, "not a label selector (matchLabels, matchExpressions)"))?;
        if doc.match_labels.len() + doc.match_expressions.len() > MAX_TERMS {
            return Err(PolicyError::at(path, format!("more than {MAX_TERMS} terms")));
        }
        let mut terms: Vec<_> = doc.match_labels.into_iter().map(|(k, v)| (k, SetOperator::In, vec![v])).collect();
        for (i, e) in doc.match_expressions.into_iter().enumerate() {
            let at = format!("{path}.matchExpressions[{i}]");
            if e.key.is_empty() {
                return Err(PolicyError::at(format!("{at}.key"), "required"));
            }
            match (e.operator, e.values.is_empty()) {
                (SetOperator::In | SetOperator::NotIn, true) => {
                    return Err(PolicyError::at(format!("{at}.values"), "In and NotIn need values"));
                }
                (SetOperator::Exists | SetOperator::DoesNotExist, false) => {
                    return Err(PolicyError::at(format!("{at}.values"), "Exists and DoesNotExist take no values"));
                }
                _ => {}
            }
            if e.values.len() > MAX_VALUES {
                return Err(PolicyError::at(format!("{at}.values"), format!("more than {MAX_VALUES}")));
            }
            terms.push((e.key, e.operator, e.values));
        }
        Ok(LabelSelector { terms })
    }

    /// Whether `labels` satisfy every term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|(key, op, values)| {
            let value = labels.get(key);
            match op {
                SetOperator::In => value.is_some_and(|v| values.contains(v)),
                SetOperator::NotIn => value.is_none_or(|v| !values.contains(v)),
                SetOperator::Exists => value.is_some(),
                SetOperator::DoesNotExist => value.is_none(),
            }
        })
    }

    /// The keys the selector reads.
    fn keys(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(|(k, _, _)| k.as_str())
    }
}

/// Where a policy applies. A policy without any of these applies to every
/// process of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// A `TracingPolicyNamespaced`'s namespace.
    pub namespace: Option<String>,
    pub pods: Option<LabelSelector>,
    pub containers: Option<LabelSelector>,
    pub nodes: Option<LabelSelector>,
}

impl Scope {
    /// The scope `policy` declares, its selectors checked.
    pub fn of(policy: &TracingPolicy) -> Result<Scope, PolicyError> {
        let spec = &policy.spec;
        let selector = |v: &Option<Opaque>, path: &str| v.as_ref().map(|v| LabelSelector::parse(v, path)).transpose();
        let containers = selector(&spec.container_selector, "spec.containerSelector")?;
        if containers.as_ref().is_some_and(|c| c.keys().any(|k| k != CONTAINER_NAME_KEY)) {
            return Err(PolicyError::at(
                "spec.containerSelector",
                format!("only the key {CONTAINER_NAME_KEY:?} (the container's name) is supported"),
            ));
        }
        let namespace = match policy.kind {
            Kind::TracingPolicyNamespaced => match policy.metadata.namespace.as_deref() {
                Some(ns) if !ns.is_empty() => Some(ns.to_owned()),
                _ => return Err(PolicyError::at("metadata.namespace", "a TracingPolicyNamespaced needs one")),
            },
            Kind::TracingPolicy => None,
        };
        Ok(Scope {
            namespace,
            pods: selector(&spec.pod_selector, "spec.podSelector")?,
            containers,
            nodes: selector(&spec.node_selector, "spec.nodeSelector")?,
        })
    }

    /// Whether the policy is limited to some containers (and so to their
    /// cgroups), rather than every process of the node.
    pub fn limits_processes(&self) -> bool {
        self.namespace.is_some() || self.pods.is_some() || self.containers.is_some()
    }

    /// Whether the policy applies on a node with these labels.
    pub fn admits_node(&self, labels: &BTreeMap<String, String>) -> bool {
        self.nodes.as_ref().is_none_or(|s| s.matches(labels))
    }

    /// Whether the policy applies to container `container` of a pod in
    /// `namespace` with `labels`.
    pub fn admits(&self, namespace: &str, labels: &BTreeMap<String, String>, container: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.pods.as_ref().is_none_or(|s| s.matches(labels))
            && self
                .containers
                .as_ref()
                .is_none_or(|s| s.matches(&BTreeMap::from([(CONTAINER_NAME_KEY.to_owned(), container.to_owned())])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(kind: &str, namespace: &str, spec_extra: &str) -> Result<TracingPolicy, PolicyError> {
        crate::parse(&format!(
            "apiVersion: cilium.io/v1alpha1\nkind: {kind}\nmetadata:\n  name: p\n{namespace}spec:\n{spec_extra}  tracepoints:\n  - subsystem: syscalls\n    event: sys_enter_unlinkat\n"
        ))
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn namespaced_policies_apply_only_in_their_namespace() {
        let p = policy("TracingPolicyNamespaced", "  namespace: a\n", "").unwrap();
        let s = Scope::of(&p).unwrap();
        assert!(s.limits_processes());
        assert!(s.admits("a", &labels(&[]), "main"));
        assert!(!s.admits("b", &labels(&[]), "main"));
        let e = policy("TracingPolicyNamespaced", "", "").unwrap_err();
        assert_eq!(e.path, "metadata.namespace");
        let cluster = Scope::of(&policy("TracingPolicy", "", "").unwrap()).unwrap();
        assert!(!cluster.limits_processes());
        assert!(cluster.admits("b", &labels(&[]), "x"));
    }

    #[test]
    fn selectors_match_as_kubernetes_label_selectors_do() {
        let spec = "  podSelector:\n    matchLabels: {app: ledger}\n    matchExpressions:\n    - {key: tier, operator: NotIn, values: [test]}\n    - {key: owner, operator: Exists}\n  containerSelector:\n    matchExpressions:\n    - {key: name, operator: In, values: [main, sidecar]}\n";
        let s = Scope::of(&policy("TracingPolicy", "", spec).unwrap()).unwrap();
        let good = labels(&[("app", "ledger"), ("owner", "x")]);
        assert!(s.admits("any", &good, "main"));
        assert!(!s.admits("any", &good, "init"), "container name not listed");
        assert!(!s.admits("any", &labels(&[("app", "ledger")]), "main"), "owner missing");
        assert!(!s.admits("any", &labels(&[("app", "ledger"), ("owner", "x"), ("tier", "test")]), "main"));
        assert!(!s.admits("any", &labels(&[("app", "web"), ("owner", "x")]), "main"));
        let nodes = "  nodeSelector:\n    matchExpressions:\n    - {key: gpu, operator: DoesNotExist}\n";
        let s = Scope::of(&policy("TracingPolicy", "", nodes).unwrap()).unwrap();
        assert!(!s.limits_processes(), "a node selector picks nodes, not processes");
        assert!(s.admits_node(&labels(&[("zone", "a")])));
        assert!(!s.admits_node(&labels(&[("gpu", "yes")])));
    }

    #[test]
    fn bad_selectors_are_refused_by_path() {
        let cases = [
            (
                "  podSelector:\n    matchExpressions:\n    - {key: a, operator: In}\n",
                "spec.podSelector.matchExpressions[0].values",
            ),
            (
                "  podSelector:\n    matchExpressions:\n    - {key: a, operator: Exists, values: [x]}\n",
                "spec.podSelector.matchExpressions[0].values",
            ),
            (
                "  podSelector:\n    matchExpressions:\n    - {key: a, operator: Near, values: [x]}\n",
                "spec.podSelector",
            ),
            ("  podSelector:\n    matchLabelz: {a: b}\n", "spec.podSelector"),
            ("  containerSelector:\n    matchLabels: {image: x}\n", "spec.containerSelector"),
            ("  nodeSelector: [1]\n", "spec.nodeSelector"),
        ];
        for (spec, path) in cases {
            let e = policy("TracingPolicy", "", spec).unwrap_err();
            assert_eq!(e.path, path, "{spec}: {e}");
        }
    }
}
