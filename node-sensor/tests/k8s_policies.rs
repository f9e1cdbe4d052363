//! Tracing policies from Kubernetes (root, real BPF): the sensor watches
//! TracingPolicy and TracingPolicyNamespaced objects on the API test
//! double, loads them, and scopes them in the kernel to the cgroups of the
//! containers they admit: a TracingPolicyNamespaced for one namespace does
//! not fire for a process of a pod in another, pod and container selectors
//! pick pods by labels and containers by name, and a nodeSelector that
//! does not match the node's labels keeps the policy quiet there.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;
mod k8s_api;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Collector, Sensor, fence, nonce, tracepoint_of};
use k8s_api::{ApiServer, NODES, PodCgroup, PodSpec, TRACING_POLICIES, TRACING_POLICIES_NAMESPACED};
use proto::tetragon::kprobe_argument::Arg;
use proto::tetragon::{DeleteTracingPolicyRequest, GetEventsRequest, ListTracingPoliciesRequest, TracingPolicyState};
use serde_json::{Value, json};

// The node name `Sensor::start` gives the sensor.
const NODE: &str = "kt-node";

/// A policy object on `sys_enter_unlinkat` for paths under `dir`, with
/// `extra` spec fields (selectors of the Kubernetes kind).
fn policy(kind: &str, name: &str, namespace: Option<&str>, dir: &str, extra: Value) -> Value {
    let mut spec = json!({
        "tracepoints": [{
            "subsystem": "syscalls", "event": "sys_enter_unlinkat",
            "args": [{"index": 6, "type": "string"}],
            "selectors": [{"matchArgs": [{"index": 6, "operator": "Prefix", "values": [format!("{dir}/")]}]}]
        }]
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    k8s_api::policy_object(kind, name, namespace, spec)
}

/// Per policy, the files under `dir` its events name.
fn seen(c: &Collector, dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in c.events.iter().filter_map(tracepoint_of) {
        let Some(Arg::StringArg(path)) = t.args.first().and_then(|a| a.arg.as_ref()) else { continue };
        if let Some(file) = path.strip_prefix(&format!("{dir}/")) {
            out.entry(t.policy_name.clone()).or_default().insert(file.to_owned());
        }
    }
    out
}

/// The sensor's policies: name → (state, info).
async fn listed(sensor: &Sensor) -> BTreeMap<String, (i32, String)> {
    let list = sensor.client().await.list_tracing_policies(ListTracingPoliciesRequest::default()).await.unwrap();
    list.into_inner().policies.into_iter().map(|p| (p.name, (p.state, p.info))).collect()
}

/// Waits until the sensor's list satisfies `done`.
async fn wait_listed(sensor: &Sensor, what: &str, done: impl Fn(&BTreeMap<String, (i32, String)>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = listed(sensor).await;
        if done(&now) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: the sensor lists {now:#?}; log:\n{}", sensor.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_policies_apply_only_where_their_scope_says() {
    require_kernel!();
    let pods: Vec<(PodCgroup, &str, &str)> = [("alpha", "ledger"), ("beta", "ledger"), ("alpha", "web")]
        .into_iter()
        .filter_map(|(ns, app)| Some((PodCgroup::new(false)?, ns, app)))
        .collect();
    if pods.len() < 3 {
        assert!(std::env::var_os("VIGIL_REQUIRE_ALL").is_none(), "no cgroup2 hierarchy");
        eprintln!("SKIP: no cgroup2 hierarchy");
        return;
    }
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-kp-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let api = ApiServer::start().await;
    for (i, (cg, ns, app)) in pods.iter().enumerate() {
        api.add(PodSpec {
            namespace: ns,
            name: &format!("pod-{i}"),
            uid: &cg.uid,
            node: NODE,
            container_id: &cg.container_id,
            labels: json!({"app": app}),
            owner: None,
        });
    }
    api.apply(NODES, json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": {"zone": "z1"}}}));
    let name = |n: &str| format!("{n}-{run}");
    let policies = [
        (TRACING_POLICIES_NAMESPACED, policy("TracingPolicyNamespaced", &name("ns"), Some("alpha"), &d, json!({}))),
        (
            TRACING_POLICIES,
            policy(
                "TracingPolicy",
                &name("ledger"),
                None,
                &d,
                json!({"podSelector": {"matchLabels": {"app": "ledger"}}}),
            ),
        ),
        (
            TRACING_POLICIES_NAMESPACED,
            policy(
                "TracingPolicyNamespaced",
                &name("ns-ledger"),
                Some("alpha"),
                &d,
                json!({
                    "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["ledger"]}]},
                    "containerSelector": {"matchExpressions": [{"key": "name", "operator": "In", "values": ["spaceship"]}]}
                }),
            ),
        ),
        (
            TRACING_POLICIES,
            policy(
                "TracingPolicy",
                &name("elsewhere"),
                None,
                &d,
                json!({"nodeSelector": {"matchLabels": {"zone": "z2"}}}),
            ),
        ),
        (
            TRACING_POLICIES,
            policy("TracingPolicy", &name("zone"), None, &d, json!({"nodeSelector": {"matchLabels": {"zone": "z1"}}})),
        ),
        (
            TRACING_POLICIES,
            policy(
                "TracingPolicy",
                &name("bad"),
                None,
                &d,
                json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}),
            ),
        ),
    ];
    for (collection, object) in policies {
        api.apply(collection, object);
    }
    let kubeconfig = std::env::temp_dir().join(format!("vigil-kubeconfig-{run}"));
    api.kubeconfig(&kubeconfig);
    let sensor = Sensor::start(&["--enable-k8s-api", "--kubeconfig", &kubeconfig.display().to_string()]).await;

    // Each loads, managed by Kubernetes, and says where it applies; the bad
    // one is refused by the path of its fault.
    let enabled = TracingPolicyState::TpStateEnabled as i32;
    let want: BTreeMap<String, (i32, String)> = [
        ("ns", "applies to 2 containers here"),
        ("ledger", "applies to 2 containers here"),
        ("ns-ledger", "applies to 1 container here"),
        ("elsewhere", "applies to no process here: its nodeSelector does not match this node"),
        ("zone", "applies to every process here"),
    ]
    .into_iter()
    .map(|(n, reach)| (name(n), (enabled, format!("managed by Kubernetes; {reach}"))))
    .collect();
    wait_listed(&sensor, "the Kubernetes policies, scoped", |now| want.iter().all(|(n, w)| now.get(n) == Some(w)))
        .await;
    let log = sensor.log();
    let refusal = log.lines().find(|l| l.contains("managed policy refused") && l.contains(&name("bad"))).unwrap();
    assert!(refusal.contains("spec.podSelector.matchExpressions[0].values"), "{refusal}");
    assert!(!listed(&sensor).await.contains_key(&name("bad")));

    // One file per pod, one from outside any pod.
    let mut c = Collector::subscribe(&sensor, GetEventsRequest::default()).await;
    let files = ["in-alpha-ledger", "in-beta-ledger", "in-alpha-web", "on-host"];
    for f in files {
        std::fs::write(dir.join(f), b"x").unwrap();
    }
    for ((cg, _, _), f) in pods.iter().zip(files) {
        assert!(cg.spawn(&format!("/bin/rm {d}/{f}")).wait().unwrap().success());
    }
    assert!(Command::new("/bin/rm").arg(dir.join("on-host")).status().unwrap().success());
    fence(&mut c, &sensor).await;
    let set = |files: &[&str]| files.iter().map(|f| (*f).to_owned()).collect::<BTreeSet<String>>();
    let expected: BTreeMap<String, BTreeSet<String>> = [
        (name("ns"), set(&["in-alpha-ledger", "in-alpha-web"])),
        (name("ledger"), set(&["in-alpha-ledger", "in-beta-ledger"])),
        (name("ns-ledger"), set(&["in-alpha-ledger"])),
        (name("zone"), set(&files)),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen(&c, &d), expected, "which policy saw which pod's unlink");

    // Managed by Kubernetes: the node's own API does not delete it.
    let refused = sensor
        .client()
        .await
        .delete_tracing_policy(DeleteTracingPolicyRequest {
            name: name("ns"),
            namespace: "alpha".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("managed by Kubernetes; change it there (kubectl)"), "{}", refused.message());

    // Deleted from Kubernetes, it stops; the others go on.
    api.remove(TRACING_POLICIES_NAMESPACED, "alpha", &name("ns"));
    wait_listed(&sensor, "the deleted policy gone", |now| !now.contains_key(&name("ns"))).await;
    let mut c = Collector::subscribe(&sensor, GetEventsRequest::default()).await;
    std::fs::write(dir.join("again"), b"x").unwrap();
    assert!(pods[0].0.spawn(&format!("/bin/rm {d}/again")).wait().unwrap().success());
    fence(&mut c, &sensor).await;
    let again: BTreeMap<String, BTreeSet<String>> =
        [name("ledger"), name("ns-ledger"), name("zone")].into_iter().map(|n| (n, set(&["again"]))).collect();
    assert_eq!(seen(&c, &d), again, "after the namespaced policy's deletion");

    // A pod that leaves takes its cgroup out of the scopes.
    api.delete(&pods[1].0.uid);
    wait_listed(&sensor, "the beta pod out of the ledger scope", |now| {
        now.get(&name("ledger")).is_some_and(|(_, info)| info.ends_with("applies to 1 container here"))
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&kubeconfig);
}
