//! The relay's side of cluster-wide policies, on the wire (no root: a
//! real relay on loopback, sensors speaking the ingest protocol): the set
//! comes after the welcome and again at each change; a sensor's report
//! shows per node, bounded; only an admin certificate changes policies,
//! on the client listener; the store keeps them across a restart.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

#[path = "support/local.rs"]
mod local;

use std::time::Duration;

use local::Relay;
use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::{AddTracingPolicyRequest, DeleteTracingPolicyRequest, ListTracingPoliciesRequest};
use proto::vigil::relay::v1::ingest_client::IngestClient;
use proto::vigil::relay::v1::policy_outcome::State;
use proto::vigil::relay::v1::relay_admin_client::RelayAdminClient;
use proto::vigil::relay::v1::{
    IngestMessage, ListNodesRequest, PolicyOutcome, PolicyReport, PolicySet, ingest_message, ingest_reply,
};
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

const POLICY: &str = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: wire\nspec:\n  \
                      tracepoints:\n  - subsystem: syscalls\n    event: sys_enter_unlinkat\n    args:\n    - index: 6\n      \
                      type: string\n";

/// A sensor speaking the ingest protocol as `node`.
struct FakeSensor {
    tx: mpsc::Sender<IngestMessage>,
    replies: Streaming<proto::vigil::relay::v1::IngestReply>,
}

impl FakeSensor {
    async fn connect(relay: &Relay, node: &str) -> FakeSensor {
        let (tx, rx) = mpsc::channel(4);
        let hello = local::hello(node);
        tx.send(IngestMessage { msg: Some(ingest_message::Msg::Hello(hello)) }).await.unwrap();
        let replies = IngestClient::new(relay.sensor_of(node).await)
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        FakeSensor { tx, replies }
    }

    /// The next policy set the relay sends.
    async fn next_set(&mut self) -> PolicySet {
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(20), self.replies.message())
                .await
                .expect("a policy set within 20 s")
                .unwrap();
            match reply.and_then(|r| r.msg) {
                Some(ingest_reply::Msg::Policies(set)) => return set,
                Some(_) => {}
                None => panic!("the stream ended"),
            }
        }
    }

    async fn report(&self, report: PolicyReport) {
        self.tx.send(IngestMessage { msg: Some(ingest_message::Msg::PolicyReport(report)) }).await.unwrap();
    }
}

async fn connect(relay: &Relay, role: &str) -> FineGuidanceSensorsClient<Channel> {
    FineGuidanceSensorsClient::new(relay.clients().connect_tls(relay.tls(role)).await.unwrap())
}

/// The relay's `info` for policy `wire` once `done` holds (polled: the
/// report travels on its own stream).
async fn info_when(relay: &Relay, done: impl Fn(&str) -> bool) -> proto::tetragon::TracingPolicyStatus {
    let mut client = connect(relay, "client").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = client.list_tracing_policies(ListTracingPoliciesRequest::default()).await.unwrap().into_inner();
        if let Some(p) = list.policies.into_iter().find(|p| p.name == "wire")
            && (done(&p.info) || std::time::Instant::now() > deadline)
        {
            return p;
        }
        assert!(std::time::Instant::now() < deadline, "policy wire never listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_set_travels_on_the_ingest_stream_and_reports_come_back_per_node() {
    let store_dir = std::env::temp_dir().join(format!("vigil-policy-stream-{}", test_support::nonce()));
    std::fs::create_dir_all(&store_dir).unwrap();
    let store = store_dir.join("policies.redb").display().to_string();
    let relay = Relay::start("policy-stream", &["--policy-store", &store]).await;
    let mut s1 = FakeSensor::connect(&relay, "s1").await;
    assert_eq!(s1.next_set().await, PolicySet { generation: 0, policies: vec![] }, "the set follows the welcome");

    // Roles: a client certificate reads, an admin one changes; a sensor
    // certificate is not let onto the client listener at all.
    let add = AddTracingPolicyRequest { yaml: POLICY.into(), domain: String::new() };
    let e = connect(&relay, "client").await.add_tracing_policy(add.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(e.message(), "certificate role client may not use AddTracingPolicy; it needs the admin role");
    let delete = DeleteTracingPolicyRequest { name: "wire".into(), ..Default::default() };
    let e = connect(&relay, "client").await.delete_tracing_policy(delete.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = connect(&relay, "sensor").await.list_tracing_policies(ListTracingPoliciesRequest::default()).await;
    assert_eq!(e.unwrap_err().code(), tonic::Code::PermissionDenied);
    connect(&relay, "admin").await.add_tracing_policy(add.clone()).await.unwrap();

    let set = s1.next_set().await;
    assert_eq!(set.generation, 1);
    assert_eq!(set.policies.len(), 1);
    assert_eq!((set.policies[0].name.as_str(), set.policies[0].yaml.as_str()), ("wire", POLICY));
    assert!(set.policies[0].enabled && !set.policies[0].monitor);
    let p = info_when(&relay, |i| i == "nodes: s1=pending").await;
    assert_eq!(p.info, "nodes: s1=pending", "s1 has not reported yet");

    // A report: kept for the relay's policies only, its error bounded.
    let outcome = |name: &str, state: State, error: String| PolicyOutcome {
        name: name.into(),
        state: state as i32,
        error,
        kernel_memory_bytes: 100,
        events: 3,
        ..Default::default()
    };
    s1.report(PolicyReport {
        generation: 1,
        policies: vec![outcome("wire", State::Enabled, String::new()), outcome("unknown", State::Error, "x".into())],
        ..Default::default()
    })
    .await;
    let p = info_when(&relay, |i| i == "nodes: s1=enabled").await;
    assert_eq!(p.info, "nodes: s1=enabled");
    assert_eq!(p.kernel_memory_bytes, 100);
    assert_eq!(p.stats.and_then(|s| s.action_counters).map(|c| c.post), Some(3));
    let nodes = RelayAdminClient::new(relay.client().await).list_nodes(ListNodesRequest {}).await.unwrap().into_inner();
    assert_eq!(nodes.policy_generation, 1);
    assert_eq!(
        nodes.nodes.iter().map(|n| (n.node_name.as_str(), n.policy_generation)).collect::<Vec<_>>(),
        [("s1", 1)]
    );

    let s2 = FakeSensor::connect(&relay, "s2").await;
    s2.report(PolicyReport {
        generation: 1,
        policies: vec![outcome("wire", State::Error, "é".repeat(10_000))],
        ..Default::default()
    })
    .await;
    let p = info_when(&relay, |i| i.contains("s2=error")).await;
    let error = p.error.strip_prefix("s2: error: ").unwrap();
    assert!(error.len() <= 512 + '…'.len_utf8() && error.ends_with('…'), "bounded: {} bytes", error.len());
    assert!(p.info.starts_with("nodes: s2=error: é"), "errors first: {}", p.info);

    // Across a restart: the store has it, and a sensor gets it again.
    drop((s1, s2));
    relay.stop();
    let dir = relay.dir.clone();
    std::mem::forget(relay);
    let relay = Relay::spawn(dir, &["--policy-store", &store]);
    assert!(relay.serving_within(Duration::from_secs(30)).await, "{}", relay.log());
    let mut s1 = FakeSensor::connect(&relay, "s1").await;
    let set = s1.next_set().await;
    assert_eq!((set.generation, set.policies.len()), (1, 1));
    connect(&relay, "admin").await.delete_tracing_policy(delete).await.unwrap();
    assert_eq!(s1.next_set().await, PolicySet { generation: 2, policies: vec![] });
    let _ = std::fs::remove_dir_all(&store_dir);
}
