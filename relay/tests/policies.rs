//! Policy events across the cluster (root): a sensor with a tracepoint
//! policy streams its `process_tracepoint` events to the relay like any
//! event; clients filter them by policy name and by event type, and get
//! each exactly once.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod cluster;

use std::time::Duration;

use cluster::Cluster;
use proto::tetragon::GetEventsResponse;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::kprobe_argument::Arg;

/// The unlinked path of a `process_tracepoint` event of policy `policy`.
fn unlinked<'a>(e: &'a GetEventsResponse, policy: &str) -> Option<&'a str> {
    match &e.event {
        Some(Event::ProcessTracepoint(t)) if t.policy_name == policy => match t.args.get(1)?.arg.as_ref()? {
            Arg::StringArg(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn policy_events_reach_relay_clients_filtered_by_policy_and_type_exactly_once() {
    require_root!();
    let mut c = Cluster::new();
    let tag = c.net.id;
    let policy = format!("relay-unlink-{tag}");
    let dir = c.dir.join("unlinked");
    std::fs::create_dir_all(&dir).unwrap();
    let file = c.dir.join("policy.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {policy}\nspec:\n  tracepoints:\n  - subsystem: syscalls\n    event: sys_enter_unlinkat\n    args:\n    - index: 5\n      type: int32\n    - index: 6\n      type: string\n"
        ),
    )
    .unwrap();
    let with_policy = c.add_node("pnode1", 21, &["--tracing-policy", &file.display().to_string()]);
    let without = c.add_node("pnode2", 22, &[]);
    let by_policy = c.watch(&["--policy-names", &policy]);
    let by_type = c.watch(&["-e", "PROCESS_TRACEPOINT"]);
    c.wait_clients(2);

    let path = |name: &str| dir.join(name).display().to_string();
    let markers: Vec<String> = (0..5).map(|i| path(&format!("m{tag}-{i}"))).collect();
    let script: Vec<String> = markers.iter().map(|m| format!("touch {m}; rm {m}")).collect();
    c.run_in(&with_policy, &script.join("; "));
    // Unlinks on the other node: no policy there, nothing reported.
    c.run_in(&without, &format!("touch {0}; rm {0}", path(&format!("other{tag}"))));
    // A last unlink on the policy's node closes the stream: what it sent
    // before has reached the clients once this has.
    let fence = path(&format!("fence{tag}"));
    c.run_in(&with_policy, &format!("touch {fence}; rm {fence}"));
    for w in [&by_policy, &by_type] {
        assert!(
            w.wait(Duration::from_secs(30), |events| events
                .iter()
                .any(|e| unlinked(e, &policy) == Some(fence.as_str()))),
            "the fence never arrived; relay log:\n{}",
            c.relay_log()
        );
    }
    for (what, w) in [("--policy-names", &by_policy), ("-e PROCESS_TRACEPOINT", &by_type)] {
        let events = w.snapshot();
        for m in &markers {
            let hits: Vec<&GetEventsResponse> =
                events.iter().filter(|e| unlinked(e, &policy) == Some(m.as_str())).collect();
            assert_eq!(hits.len(), 1, "{what}: {m} exactly once");
            assert_eq!(hits[0].node_name, "pnode1");
        }
        assert!(
            events.iter().all(|e| matches!(e.event, Some(Event::ProcessTracepoint(_)))),
            "{what}: nothing but the policy's tracepoint events"
        );
        assert!(!events.iter().any(|e| e.node_name == "pnode2"), "{what}: the node without the policy sent none");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
