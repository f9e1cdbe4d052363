//! Keeps the policy host's placement (`policies::placement`) in line with
//! Kubernetes: the containers of this node's pods, each with its cgroup's
//! id, and this node's labels. A container's cgroup is found by its id in
//! the cgroup v2 hierarchy (the layouts `crate::cgroup` knows). A container
//! whose cgroup is not there yet (the runtime reports its id before or
//! after creating it) is looked for again every second for a minute (and
//! at every change of the node's pods); until it is found, the scoped
//! policies that admit it do not see its processes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use super::PodIndex;
use crate::policies::api::SharedPolicies;
use crate::policies::placement::{PlacedContainer, Placement};

/// Deepest cgroup directory looked at (kind's nested layout is 7 deep).
const MAX_DEPTH: usize = 10;
/// Most cgroup directories one walk reads.
const MAX_DIRS: usize = 200_000;
/// How soon a container whose cgroup was not found is looked for again,
/// and for how long (a terminated container's id stays in its pod's
/// status, its cgroup gone: it is not looked for every second forever).
const RETRY: Duration = Duration::from_secs(1);
const RETRY_FOR: Duration = Duration::from_secs(60);
/// How often repeated watch errors are logged.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// The first cgroup v2 mount in this process's view, from `mounts` text.
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// The cgroup ids of the containers in `wanted` found under `root`.
pub fn find_cgroups(root: &Path, wanted: &HashSet<&str>) -> HashMap<String, u64> {
    let mut found = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    let mut seen = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if found.len() == wanted.len() || seen >= MAX_DIRS {
                return found;
            }
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            seen += 1;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = crate::cgroup::container_id(&name).filter(|id| wanted.contains(id))
                && let Ok(meta) = entry.metadata()
            {
                found.insert(id.to_owned(), meta.ino());
            }
            if depth + 1 < MAX_DEPTH {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    found
}

/// Follows the node's pods and labels into `host`'s placement, from now
/// until the sensor stops.
pub fn follow(client: Client, node: String, pods: Arc<PodIndex>, host: SharedPolicies) {
    let root = std::fs::read_to_string("/proc/self/mounts").ok().as_deref().and_then(cgroup2_mount);
    if root.is_none() {
        tracing::warn!(
            "no cgroup v2 hierarchy is mounted: scoped tracing policies (TracingPolicyNamespaced, \
            pod and container selectors) will see no process"
        );
    }
    let (labels_tx, mut labels_rx) = tokio::sync::watch::channel(BTreeMap::new());
    tokio::spawn(node_labels(client, node, labels_tx));
    tokio::spawn(async move {
        let mut ids: HashMap<String, u64> = HashMap::new();
        // Containers whose cgroup was not found yet, since when.
        let mut unfound: HashMap<String, Instant> = HashMap::new();
        let mut missing = false;
        loop {
            let retry = async { if missing { tokio::time::sleep(RETRY).await } else { std::future::pending().await } };
            tokio::select! {
                () = pods.changed.notified() => {}
                changed = labels_rx.changed() => if changed.is_err() { return },
                () = retry => {}
            }
            let containers = pods.containers();
            let wanted: HashSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
            ids.retain(|id, _| wanted.contains(id.as_str()));
            let unknown: HashSet<&str> = wanted.iter().copied().filter(|id| !ids.contains_key(*id)).collect();
            if let (Some(root), false) = (&root, unknown.is_empty()) {
                let root = root.clone();
                let owned: Vec<String> = unknown.iter().map(|s| (*s).to_owned()).collect();
                let found = tokio::task::spawn_blocking(move || {
                    find_cgroups(&root, &owned.iter().map(String::as_str).collect())
                })
                .await
                .unwrap_or_default();
                ids.extend(found);
            }
            let now = Instant::now();
            unfound.retain(|id, _| wanted.contains(id.as_str()) && !ids.contains_key(id));
            for id in wanted.iter().filter(|id| !ids.contains_key(**id)) {
                unfound.entry((*id).to_owned()).or_insert(now);
            }
            missing = root.is_some() && unfound.values().any(|since| now.duration_since(*since) < RETRY_FOR);
            let placement = Placement {
                containers: containers
                    .into_iter()
                    .filter_map(|c| {
                        let cgroup = *ids.get(&c.id)?;
                        Some(PlacedContainer { namespace: c.namespace, pod_labels: c.pod_labels, name: c.name, cgroup })
                    })
                    .collect(),
                node_labels: labels_rx.borrow_and_update().clone(),
            };
            let host = host.clone();
            // The host's lock may be held through a policy load.
            let _ = tokio::task::spawn_blocking(move || host.0.lock().set_placement(placement)).await;
        }
    });
}

/// Watches this node's labels (for policies' `nodeSelector`).
async fn node_labels(client: Client, node: String, tx: tokio::sync::watch::Sender<BTreeMap<String, String>>) {
    let api: Api<Node> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut last_log: Option<Instant> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                let labels = n.metadata.labels.unwrap_or_default();
                tx.send_if_modified(|old| {
                    let changed = *old != labels;
                    *old = labels;
                    changed
                });
            }
            Ok(_) => {}
            Err(e) => {
                if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    last_log = Some(Instant::now());
                    tracing::warn!(node = %node, error = %e,
                        "Kubernetes node watch failing; policies' nodeSelector reads the labels last seen");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_container_cgroups_by_id() {
        let root = std::env::temp_dir().join(format!("vigil-cg-{}", std::process::id()));
        let id = "1fb931d2f6e5e4cfdbaf30fdb8e2fdd81320bdb3047ded50120a4f82838209ce";
        let other = "2fb931d2f6e5e4cfdbaf30fdb8e2fdd81320bdb3047ded50120a4f82838209ce";
        let leaf = root.join("kubepods.slice/kubepods-pod1.slice").join(format!("cri-containerd-{id}.scope"));
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::create_dir_all(root.join("kubepods/besteffort/podx").join(other)).unwrap();
        let found = find_cgroups(&root, &HashSet::from([id, other, "3"]));
        assert_eq!(found.get(id), Some(&std::fs::metadata(&leaf).unwrap().ino()));
        assert!(found.contains_key(other));
        assert_eq!(found.len(), 2);
        std::fs::remove_dir_all(&root).unwrap();
        let mounts = "proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(mounts), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }
}
