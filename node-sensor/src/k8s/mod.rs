//! Kubernetes identity: a watch on the pods of this node (field selector on
//! spec.nodeName) keeps an index from container id to pod, which the
//! pipeline uses to put `pod` on events. The kube watcher lists, watches,
//! re-lists after `410 Gone` and backs off while the API server is down;
//! the sensor keeps producing events (without pod data) meanwhile.
//!
//! `placement` follows where scoped policies apply (this node's containers
//! and labels); `policies` watches the TracingPolicy objects.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod as K8sPod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use proto::tetragon::{Container, Image, Pod};

use crate::cgroup;

pub mod placement;
pub mod policies;

/// Longest start-up wait for the first complete pod list.
const INITIAL_SYNC: Duration = Duration::from_secs(5);
/// How often repeated watch errors are logged.
const LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct PodIndex {
    /// Copy pod annotations onto events (`--k8s-pod-annotations`).
    pub annotations: bool,
    /// Keyed by the 31-character container id prefix (the `docker` field).
    by_container: RwLock<HashMap<String, Pod>>,
    /// Container keys per pod uid, to drop a deleted pod's entries.
    by_pod: RwLock<HashMap<String, Vec<String>>>,
    pub watch_errors: AtomicU64,
    pub pods: AtomicU64,
    /// Woken at every change (`placement` follows it).
    pub changed: tokio::sync::Notify,
}

/// One container of a pod on this node, as scopes read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerOfPod {
    pub namespace: String,
    pub pod_labels: BTreeMap<String, String>,
    pub name: String,
    /// The runtime's id (64 hex digits), without the `runtime://` prefix.
    pub id: String,
}

/// (workload, kind) from the pod's controller, as Tetragon names them: a
/// ReplicaSet carrying the pod-template-hash is its Deployment's; a Job
/// named `<name>-<schedule minutes>` is its CronJob's; no controller is the
/// bare Pod itself.
pub fn workload(pod: &K8sPod) -> (String, String) {
    let meta = &pod.metadata;
    let labels = meta.labels.clone().unwrap_or_default();
    let owner = meta.owner_references.as_ref().and_then(|o| o.iter().find(|o| o.controller == Some(true)));
    let Some(owner) = owner else {
        return (meta.name.clone().unwrap_or_default(), "Pod".into());
    };
    match owner.kind.as_str() {
        "ReplicaSet" => match labels.get("pod-template-hash") {
            Some(hash) if owner.name.ends_with(&format!("-{hash}")) => {
                (owner.name[..owner.name.len() - hash.len() - 1].to_owned(), "Deployment".into())
            }
            _ => (owner.name.clone(), "ReplicaSet".into()),
        },
        "Job" => match owner.name.rsplit_once('-') {
            Some((base, t)) if t.len() >= 8 && t.bytes().all(|b| b.is_ascii_digit()) => {
                (base.to_owned(), "CronJob".into())
            }
            _ => (owner.name.clone(), "Job".into()),
        },
        kind => (owner.name.clone(), kind.to_owned()),
    }
}

/// One `Pod` message per container of the pod: (docker-prefix key, message).
pub fn pod_entries(pod: &K8sPod, annotations: bool) -> Vec<(String, Pod)> {
    let meta = &pod.metadata;
    let (workload, workload_kind) = workload(pod);
    let labels: BTreeMap<String, String> = meta.labels.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let statuses = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .chain(status.init_container_statuses.unwrap_or_default());
    let mut out = Vec::new();
    for c in statuses {
        let Some(full) = c.container_id.clone() else { continue };
        let id = full.split_once("://").map_or(full.as_str(), |(_, id)| id);
        let start = c.state.as_ref().and_then(|s| s.running.as_ref()).and_then(|r| r.started_at.as_ref());
        let start_time = start.and_then(|t| proto::Timestamp::parse_rfc3339(&t.0.to_string()).ok());
        out.push((
            cgroup::docker_field(id).to_owned(),
            Pod {
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
                uid: meta.uid.clone().unwrap_or_default(),
                container: Some(Container {
                    id: full.clone(),
                    name: c.name.clone(),
                    image: Some(Image { id: c.image_id.clone(), name: c.image.clone() }),
                    start_time,
                    pid: None,
                    maybe_exec_probe: false,
                    security_context: None,
                }),
                pod_labels: labels.clone(),
                workload: workload.clone(),
                workload_kind: workload_kind.clone(),
                pod_annotations: if annotations {
                    meta.annotations.clone().unwrap_or_default()
                } else {
                    BTreeMap::new()
                },
            },
        ));
    }
    out
}

impl PodIndex {
    pub fn lookup(&self, docker: &str) -> Option<Pod> {
        self.by_container.read().get(docker).cloned()
    }

    /// Every container of the node's pods that has an id.
    pub fn containers(&self) -> Vec<ContainerOfPod> {
        self.by_container
            .read()
            .values()
            .filter_map(|pod| {
                let c = pod.container.as_ref()?;
                let id = c.id.split_once("://").map_or(c.id.as_str(), |(_, id)| id);
                Some(ContainerOfPod {
                    namespace: pod.namespace.clone(),
                    pod_labels: pod.pod_labels.clone(),
                    name: c.name.clone(),
                    id: id.to_owned(),
                })
            })
            .collect()
    }

    pub fn upsert(&self, pod: &K8sPod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let entries = pod_entries(pod, self.annotations);
        let (mut by_c, mut by_p) = (self.by_container.write(), self.by_pod.write());
        for old in by_p.remove(&uid).unwrap_or_default() {
            by_c.remove(&old);
        }
        let keys = entries.iter().map(|(k, _)| k.clone()).collect();
        by_c.extend(entries);
        by_p.insert(uid, keys);
        self.pods.store(by_p.len() as u64, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// A deleted pod leaves the index; processes already running keep the
    /// identity the cache recorded for them.
    pub fn remove(&self, pod: &K8sPod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (mut by_c, mut by_p) = (self.by_container.write(), self.by_pod.write());
        for old in by_p.remove(&uid).unwrap_or_default() {
            by_c.remove(&old);
        }
        self.pods.store(by_p.len() as u64, Ordering::Relaxed);
        self.changed.notify_one();
    }
}

/// The pid of `pid` inside its own pid namespace (last `NSpid` field).
pub fn pid_in_container(procfs: &std::path::Path, pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(procfs.join(pid.to_string()).join("status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().last()?.parse().ok()
}

/// Where the API server is.
pub enum ApiSource {
    InCluster,
    Kubeconfig(std::path::PathBuf),
}

/// Why the pod watch could not start. Each cause is in the message once
/// (not also as a `source`, so a printed chain does not repeat it).
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("in-cluster Kubernetes credentials: {0}")]
    InCluster(String),
    #[error("--kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("Kubernetes client: {0}")]
    Client(String),
}

/// A client of the API server `source` names.
pub async fn client(source: &ApiSource) -> Result<Client, K8sError> {
    let config = match source {
        ApiSource::InCluster => kube::Config::incluster().map_err(|e| K8sError::InCluster(e.to_string()))?,
        ApiSource::Kubeconfig(path) => {
            let bad = |reason: String| K8sError::Kubeconfig { path: path.display().to_string(), reason };
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| bad(e.to_string()))?
        }
    };
    Client::try_from(config).map_err(|e| K8sError::Client(e.to_string()))
}

/// Starts watching the pods of `node`; returns the index it keeps.
pub async fn start(
    client: Client,
    node: &str,
    annotations: bool,
    stats: Arc<crate::stats::SensorStats>,
) -> Arc<PodIndex> {
    let index = Arc::new(PodIndex { annotations, ..Default::default() });
    let api: Api<K8sPod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let idx = index.clone();
    let node = node.to_owned();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel::<()>();
    let mut synced_tx = Some(synced_tx);
    tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        let mut last_log: Option<Instant> = None;
        while let Some(event) = stream.next().await {
            let failed = event.is_err();
            match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => idx.upsert(&pod),
                Ok(watcher::Event::Delete(pod)) => idx.remove(&pod),
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = synced_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(watcher::Event::Init) => {}
                Err(e) => {
                    idx.watch_errors.fetch_add(1, Ordering::Relaxed);
                    if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                        last_log = Some(Instant::now());
                        tracing::warn!(node = %node, error = %e, total = idx.watch_errors.load(Ordering::Relaxed),
                            "Kubernetes pod watch failing; events go out without pod data until it recovers");
                    }
                }
            }
            // The index's counts, where health and logs read them.
            stats.k8s_pods.store(idx.pods.load(Ordering::Relaxed), Ordering::Relaxed);
            if failed {
                stats.k8s_watch_errors.store(idx.watch_errors.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    });
    // Start with the node's pods known, so processes of running containers
    // are not held for their pods; a slow or absent API delays start-up by
    // at most INITIAL_SYNC, after which the watch catches up in the background.
    if tokio::time::timeout(INITIAL_SYNC, synced_rx).await.is_err() {
        tracing::warn!("initial pod list not complete after {INITIAL_SYNC:?}; continuing, pod data will follow");
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> K8sPod {
        serde_json::from_value(json).unwrap()
    }

    fn owned(kind: &str, name: &str, hash: Option<&str>) -> K8sPod {
        let mut labels = serde_json::Map::new();
        if let Some(h) = hash {
            labels.insert("pod-template-hash".into(), h.into());
        }
        pod(serde_json::json!({
            "metadata": {"name": "p-1", "namespace": "ns", "labels": labels,
              "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}]}
        }))
    }

    #[test]
    fn own_pid_in_its_namespace() {
        // Not in a container: the innermost pid is the pid itself.
        assert_eq!(pid_in_container(std::path::Path::new("/proc"), std::process::id()), Some(std::process::id()));
    }

    #[test]
    fn workload_for_each_owner_kind() {
        assert_eq!(
            workload(&owned("ReplicaSet", "deathstar-54bb8475cc", Some("54bb8475cc"))),
            ("deathstar".into(), "Deployment".into())
        );
        assert_eq!(workload(&owned("ReplicaSet", "plain-rs", None)), ("plain-rs".into(), "ReplicaSet".into()));
        assert_eq!(workload(&owned("StatefulSet", "db", None)), ("db".into(), "StatefulSet".into()));
        assert_eq!(workload(&owned("DaemonSet", "agent", None)), ("agent".into(), "DaemonSet".into()));
        assert_eq!(workload(&owned("Job", "migrate", None)), ("migrate".into(), "Job".into()));
        assert_eq!(workload(&owned("Job", "backup-28891440", None)), ("backup".into(), "CronJob".into()));
        let bare = pod(serde_json::json!({"metadata": {"name": "xwing", "namespace": "default"}}));
        assert_eq!(workload(&bare), ("xwing".into(), "Pod".into()));
    }

    #[test]
    fn containers_index_by_docker_prefix() {
        let id = "1fb931d2f6e5e4cfdbaf30fdb8e2fdd81320bdb3047ded50120a4f82838209ce";
        let p = pod(serde_json::json!({
            "metadata": {"name": "xwing", "namespace": "default", "uid": "u1", "labels": {"org": "alliance"}, "annotations": {"a": "b"}},
            "status": {"containerStatuses": [{"name": "spaceship", "containerID": format!("containerd://{id}"),
              "image": "docker.io/tgraf/netperf:latest", "imageID": "docker.io/tgraf/netperf@sha256:8e86",
              "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2022-05-11T10:07:33Z"}}}]}
        }));
        let index = PodIndex::default();
        index.upsert(&p);
        assert!(index.lookup(&id[..31]).unwrap().pod_annotations.is_empty(), "annotations only when asked");
        let with = PodIndex { annotations: true, ..Default::default() };
        with.upsert(&p);
        assert_eq!(with.lookup(&id[..31]).unwrap().pod_annotations.get("a").map(String::as_str), Some("b"));
        let got = index.lookup(&id[..31]).expect("indexed");
        assert_eq!(
            (got.namespace.as_str(), got.name.as_str(), got.workload_kind.as_str()),
            ("default", "xwing", "Pod")
        );
        let c = got.container.unwrap();
        assert_eq!(c.id, format!("containerd://{id}"));
        assert_eq!(c.name, "spaceship");
        assert_eq!(c.start_time.unwrap().to_protojson(), "2022-05-11T10:07:33Z");
        index.remove(&p);
        assert!(index.lookup(&id[..31]).is_none());
    }
}
