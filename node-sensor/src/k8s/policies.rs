//! Watches the TracingPolicy and TracingPolicyNamespaced objects
//! (`cilium.io/v1alpha1`, the CRDs in `deploy/manifests/05-crds.yaml`) and
//! hands the whole set to `policies::managed` at every change, as the
//! Kubernetes source: a policy applied with `kubectl apply` loads on every
//! sensor, a deleted one unloads. Each object is turned back into its
//! document (apiVersion, kind, metadata's name and namespace, spec) and
//! parsed as any policy file is.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use proto::vigil::relay::v1::ManagedPolicy;

use crate::policies::managed::{Desired, KUBERNETES_LINK, Managed};

/// How often repeated watch errors are logged.
const LOG_EVERY: Duration = Duration::from_secs(30);

const KINDS: [(&str, &str); 2] =
    [("TracingPolicy", "tracingpolicies"), ("TracingPolicyNamespaced", "tracingpoliciesnamespaced")];

/// The policy document an object holds.
pub fn document(kind: &str, obj: &DynamicObject) -> String {
    let mut metadata = serde_json::Map::new();
    metadata.insert("name".into(), obj.metadata.name.clone().unwrap_or_default().into());
    if let Some(ns) = &obj.metadata.namespace {
        metadata.insert("namespace".into(), ns.clone().into());
    }
    let doc = serde_json::json!({
        "apiVersion": "cilium.io/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": obj.data.get("spec").cloned().unwrap_or(serde_json::Value::Null),
    });
    // JSON is YAML: the policy parser reads it as it is.
    doc.to_string()
}

/// (kind, namespace, name): one object's place in the set.
type ObjectKey = (usize, String, String);

/// Starts both watches; each change hands the union of both kinds' objects
/// to `managed`.
pub fn watch(client: Client, managed: Arc<Managed>) {
    managed.open(KUBERNETES_LINK);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, BTreeMap<ObjectKey, String>)>(16);
    for (i, (kind, plural)) in KINDS.iter().enumerate() {
        let resource = ApiResource {
            group: "cilium.io".into(),
            version: "v1alpha1".into(),
            api_version: "cilium.io/v1alpha1".into(),
            kind: (*kind).into(),
            plural: (*plural).into(),
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        tokio::spawn(watch_kind(api, i, tx.clone()));
    }
    tokio::spawn(async move {
        let mut by_kind: [BTreeMap<ObjectKey, String>; 2] = Default::default();
        while let Some((kind, objects)) = rx.recv().await {
            if let Some(slot) = by_kind.get_mut(kind) {
                *slot = objects;
            }
            let set: Vec<Desired> = by_kind
                .iter()
                .flatten()
                .map(|((_, namespace, name), yaml)| Desired {
                    namespace: namespace.clone(),
                    policy: ManagedPolicy { name: name.clone(), yaml: yaml.clone(), enabled: true, monitor: false },
                })
                .collect();
            let managed = managed.clone();
            // Loading takes the host's lock and may take seconds.
            let _ = tokio::task::spawn_blocking(move || managed.apply_kubernetes(set)).await;
        }
    });
}

/// Watches one kind; sends its whole set after the first list and after
/// every change.
async fn watch_kind(
    api: Api<DynamicObject>,
    kind_index: usize,
    tx: tokio::sync::mpsc::Sender<(usize, BTreeMap<ObjectKey, String>)>,
) {
    let kind = KINDS[kind_index].0;
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut objects: BTreeMap<ObjectKey, String> = BTreeMap::new();
    // A re-list builds its set apart, then replaces the old one whole.
    let mut relist: Option<BTreeMap<ObjectKey, String>> = None;
    let mut last_log: Option<Instant> = None;
    let key = |o: &DynamicObject| {
        (kind_index, o.metadata.namespace.clone().unwrap_or_default(), o.metadata.name.clone().unwrap_or_default())
    };
    while let Some(event) = stream.next().await {
        let changed = match event {
            Ok(watcher::Event::Init) => {
                relist = Some(BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(o)) => {
                relist.get_or_insert_with(BTreeMap::new).insert(key(&o), document(kind, &o));
                false
            }
            Ok(watcher::Event::InitDone) => {
                objects = relist.take().unwrap_or_default();
                true
            }
            Ok(watcher::Event::Apply(o)) => {
                let doc = document(kind, &o);
                objects.insert(key(&o), doc.clone()).is_none_or(|old| old != doc)
            }
            Ok(watcher::Event::Delete(o)) => objects.remove(&key(&o)).is_some(),
            Err(e) => {
                if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    last_log = Some(Instant::now());
                    tracing::warn!(kind, error = %e,
                        "Kubernetes tracing-policy watch failing (are the CRDs of deploy/manifests/05-crds.yaml \
                         applied?); the policies last seen stay loaded");
                }
                false
            }
        };
        if changed && tx.send((kind_index, objects.clone())).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_become_policy_documents() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicyNamespaced",
            "metadata": {"name": "p", "namespace": "a", "uid": "u", "resourceVersion": "7",
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_unlinkat"}]},
            "status": {"anything": 1}
        }))
        .unwrap();
        let parsed = policy::parse(&document("TracingPolicyNamespaced", &obj)).unwrap();
        assert_eq!((parsed.metadata.name.as_str(), parsed.metadata.namespace.as_deref()), ("p", Some("a")));
        assert_eq!(parsed.spec.tracepoints[0].event, "sys_enter_unlinkat");
    }
}
