//! Where a scoped policy applies on this node: the containers running here
//! (their pod's namespace and labels, their name and cgroup) and the node's
//! labels, as the Kubernetes watches last saw them. A policy's scope
//! (`policy::scope`) becomes the set of cgroups the kernel checks.

use std::collections::{BTreeMap, BTreeSet};

use node_sensor_common::SCOPE_EVERY_CGROUP;
use policy::scope::Scope;

/// One container running on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedContainer {
    pub namespace: String,
    pub pod_labels: BTreeMap<String, String>,
    /// The container's name in its pod.
    pub name: String,
    /// Its cgroup's id (the cgroup v2 directory's inode number).
    pub cgroup: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub containers: Vec<PlacedContainer>,
    pub node_labels: BTreeMap<String, String>,
}

/// Whether a policy with `scope` is checked against cgroups in the kernel
/// (any selector, or a namespace).
pub fn is_scoped(scope: &Scope) -> bool {
    scope.limits_processes() || scope.nodes.is_some()
}

impl Placement {
    /// The cgroups `scope` admits here: none on a node its `nodeSelector`
    /// refuses; `SCOPE_EVERY_CGROUP` alone when it admits every process;
    /// otherwise the cgroups of the containers it admits.
    pub fn cgroups_of(&self, scope: &Scope) -> BTreeSet<u64> {
        if !scope.admits_node(&self.node_labels) {
            return BTreeSet::new();
        }
        if !scope.limits_processes() {
            return BTreeSet::from([SCOPE_EVERY_CGROUP]);
        }
        self.containers
            .iter()
            .filter(|c| c.cgroup != SCOPE_EVERY_CGROUP && scope.admits(&c.namespace, &c.pod_labels, &c.name))
            .map(|c| c.cgroup)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(yaml_spec: &str, kind: &str) -> Scope {
        let p = policy::parse(&format!(
            "apiVersion: cilium.io/v1alpha1\nkind: {kind}\nmetadata:\n  name: p\n  namespace: a\nspec:\n{yaml_spec}  tracepoints:\n  - subsystem: syscalls\n    event: sys_enter_unlinkat\n"
        ))
        .unwrap();
        Scope::of(&p).unwrap()
    }

    fn placed(namespace: &str, app: &str, name: &str, cgroup: u64) -> PlacedContainer {
        PlacedContainer {
            namespace: namespace.into(),
            pod_labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
            name: name.into(),
            cgroup,
        }
    }

    #[test]
    fn scopes_become_cgroup_sets() {
        let here = Placement {
            containers: vec![
                placed("a", "web", "main", 11),
                placed("a", "db", "main", 12),
                placed("b", "web", "main", 13),
            ],
            node_labels: BTreeMap::from([("zone".to_owned(), "z1".to_owned())]),
        };
        let namespaced = scope("", "TracingPolicyNamespaced");
        assert!(is_scoped(&namespaced));
        assert_eq!(here.cgroups_of(&namespaced), BTreeSet::from([11, 12]));
        let pods = scope("  podSelector:\n    matchLabels: {app: web}\n", "TracingPolicy");
        assert_eq!(here.cgroups_of(&pods), BTreeSet::from([11, 13]));
        let both = scope("  podSelector:\n    matchLabels: {app: web}\n", "TracingPolicyNamespaced");
        assert_eq!(here.cgroups_of(&both), BTreeSet::from([11]));
        let this_zone = scope("  nodeSelector:\n    matchLabels: {zone: z1}\n", "TracingPolicy");
        assert_eq!(here.cgroups_of(&this_zone), BTreeSet::from([SCOPE_EVERY_CGROUP]));
        let other_zone = scope("  nodeSelector:\n    matchLabels: {zone: z2}\n", "TracingPolicy");
        assert!(here.cgroups_of(&other_zone).is_empty());
        let cluster = scope("", "TracingPolicy");
        assert!(!is_scoped(&cluster));
    }
}
