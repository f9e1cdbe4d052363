//! Kubernetes policies seen through the relay (root: a real sensor): a
//! sensor watching TracingPolicy objects on the Kubernetes API test double
//! reports what became of each to the relay, whose `ListTracingPolicies`
//! shows them per node, next to its own; a deletion in Kubernetes leaves
//! the list, a policy the node refused shows why, by its YAML path.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

#[path = "../../node-sensor/tests/k8s_api/mod.rs"]
mod k8s_api;
#[path = "support/local.rs"]
mod local;

use std::time::{Duration, Instant};

use k8s_api::{ApiServer, TRACING_POLICIES, TRACING_POLICIES_NAMESPACED};
use local::Relay;
use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::{ListTracingPoliciesRequest, TracingPolicyState, TracingPolicyStatus};
use serde_json::{Value, json};

const NODE: &str = "k8s-node";

/// A policy on `sys_enter_unlinkat`, with `extra` spec fields.
fn policy(kind: &str, name: &str, namespace: Option<&str>, extra: Value) -> Value {
    let mut spec = json!({"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_unlinkat"}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    k8s_api::policy_object(kind, name, namespace, spec)
}

async fn listed(relay: &Relay) -> Vec<TracingPolicyStatus> {
    let mut client = FineGuidanceSensorsClient::new(relay.client().await);
    client.list_tracing_policies(ListTracingPoliciesRequest::default()).await.unwrap().into_inner().policies
}

/// Waits until the relay's list satisfies `done`.
async fn wait_listed(
    relay: &Relay,
    what: &str,
    log: impl Fn() -> String,
    done: impl Fn(&[TracingPolicyStatus]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = listed(relay).await;
        if done(&now) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: the relay lists {now:#?}; sensor log:\n{}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_lists_each_nodes_kubernetes_policies() {
    test_support::skip_if!((!test_support::is_root()).then(|| "a real sensor needs root (BPF)".to_owned()));
    let run = test_support::nonce();
    let name = |n: &str| format!("{n}-{run}");
    let api = ApiServer::start().await;
    api.apply(TRACING_POLICIES, policy("TracingPolicy", &name("cluster"), None, json!({})));
    api.apply(TRACING_POLICIES_NAMESPACED, policy("TracingPolicyNamespaced", &name("team"), Some("team-a"), json!({})));
    let bad = json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}});
    api.apply(TRACING_POLICIES, policy("TracingPolicy", &name("bad"), None, bad));
    let relay = Relay::start("k8s-policies", &[]).await;
    let kubeconfig = relay.dir.join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let target = format!("localhost:{}", relay.daemon.listening("ingest").port());
    let sensor_bin = test_support::workspace_bin(env!("CARGO_BIN_EXE_vigil-relay"), "vigil-sensor");
    let socket = relay.dir.join("sensor.sock");
    let sensor = test_support::daemon::Daemon::spawn(
        std::process::Command::new(sensor_bin)
            .args(["--node-name", NODE, "--relay-address", &target])
            .args(["--enable-k8s-api", "--kubeconfig", &kubeconfig.display().to_string()])
            .args(["--server-address", &format!("unix://{}", socket.display())])
            .args(["--tls-dir", &relay.dir.display().to_string()]),
    );
    let log = || format!("{}\nrelay:\n{}", sensor.log(), relay.log());

    let enabled = TracingPolicyState::TpStateEnabled as i32;
    let error = TracingPolicyState::TpStateLoadError as i32;
    let summary = |now: &[TracingPolicyStatus]| -> Vec<(String, String, i32, String)> {
        let mut out: Vec<_> =
            now.iter().map(|p| (p.namespace.clone(), p.name.clone(), p.state, p.info.clone())).collect();
        out.sort();
        out
    };
    let all_three = |now: &[TracingPolicyStatus]| now.len() == 3 && now.iter().all(|p| p.state != 0);
    wait_listed(&relay, "the node's Kubernetes policies", log, all_three).await;
    let now = listed(&relay).await;
    let on_node = format!("managed by Kubernetes; nodes: {NODE}=enabled");
    let bad_status = now.iter().find(|p| p.name == name("bad")).unwrap();
    assert_eq!(bad_status.state, error);
    assert!(
        bad_status.error.starts_with(&format!("{NODE}: error: spec.podSelector.matchExpressions[0].values:")),
        "{}",
        bad_status.error
    );
    let mut want = vec![
        (String::new(), name("cluster"), enabled, on_node.clone()),
        ("team-a".to_owned(), name("team"), enabled, on_node.clone()),
        (String::new(), name("bad"), error, bad_status.info.clone()),
    ];
    want.sort();
    assert_eq!(summary(&now), want);

    // Deleted in Kubernetes: the node reports it gone, and so does the list.
    api.remove(TRACING_POLICIES, "", &name("cluster"));
    wait_listed(&relay, "the deleted policy gone", log, |now| {
        now.len() == 2 && !now.iter().any(|p| p.name == name("cluster"))
    })
    .await;
}
