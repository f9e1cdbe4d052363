//! Policies across the cluster (root): a sensor with a tracepoint policy
//! streams its `process_tracepoint` events to the relay like any event;
//! clients filter them by policy name and by event type, and get each
//! exactly once. A policy added at the relay runs on every sensor, those
//! that connect later and after a relay restart included, until deleted;
//! only an admin certificate may add it.
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

/// A tracepoint policy on unlinkat showing the path (arguments 5 and 6).
fn unlink_policy(name: &str) -> String {
    format!(
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n  tracepoints:\n  - subsystem: syscalls\n    event: sys_enter_unlinkat\n    args:\n    - index: 5\n      type: int32\n    - index: 6\n      type: string\n"
    )
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
    std::fs::write(&file, unlink_policy(&policy)).unwrap();
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

/// The relay's `tracingpolicy list -o json`, as JSON.
fn relay_policies(c: &Cluster) -> serde_json::Value {
    let out = c.cli(&["tracingpolicy", "list", "-o", "json"]);
    assert!(out.status.success(), "list: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until the relay lists `policy` as `state` on every one of `nodes`.
fn wait_policy_on(c: &Cluster, policy: &str, nodes: &[&str], state: &str) {
    wait_policy(c, policy, &format!("{state} on {nodes:?}"), |info| {
        nodes.iter().all(|n| info.split(", ").any(|s| s.trim_start_matches("nodes: ") == format!("{n}={state}")))
    });
}

/// Waits until the relay's per-node `info` of `policy` passes `done`.
fn wait_policy(c: &Cluster, policy: &str, what: &str, done: impl Fn(&str) -> bool) {
    let info_passes = |text: &str| {
        let listed: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let info = listed["policies"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["name"] == policy))
            .and_then(|p| p["info"].as_str())
            .unwrap_or_default();
        done(info)
    };
    if let Err(last) = cluster::wait_output(|| c.cli_cmd(&["tracingpolicy", "list", "-o", "json"]), info_passes) {
        panic!("{policy} never {what}: {last}\nrelay log:\n{}", c.relay_log());
    }
}

/// Waits until every node listed by the relay has applied its latest
/// policy set (`vigil nodes`: each node's POLICIES column equals the
/// relay's policy generation).
fn wait_policies_applied(c: &Cluster, nodes: &[&str]) {
    let applied = |text: &str| {
        let generation = text.split("policy generation: ").nth(1).and_then(|r| r.trim().parse::<u64>().ok());
        let applied = |n: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{n} ")))
                .and_then(|l| l.split_whitespace().nth(7)?.parse::<u64>().ok())
        };
        generation.is_some() && nodes.iter().all(|n| applied(n) == generation)
    };
    if let Err(last) = cluster::wait_output(|| c.cli_cmd(&["nodes"]), applied) {
        panic!("not every node applied the relay's policies: {last}");
    }
}

/// The policies node `name`'s own sensor API lists.
fn local_policies(c: &Cluster, name: &str) -> serde_json::Value {
    let out = c.local_cmd(name, &["tracingpolicy", "list", "-o", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_policy_added_at_the_relay_runs_on_every_sensor_until_deleted_and_across_relay_restarts() {
    require_root!();
    let mut c = Cluster::new();
    let tag = c.net.id;
    let store = c.dir.join("policies.redb").display().to_string();
    c.relay.as_mut().unwrap().kill();
    c.start_relay(&["--policy-store", &store]);
    let policy = format!("cluster-unlink-{tag}");
    let file = c.dir.join("policy.yaml");
    std::fs::write(&file, unlink_policy(&policy)).unwrap();
    let file = file.display().to_string();
    let dir = c.dir.join("unlinked");
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).display().to_string();
    // cp1 has a policy of its own, named as one the relay will send.
    let clash = format!("clash-{tag}");
    let local = c.dir.join("local.yaml");
    std::fs::write(&local, unlink_policy(&clash)).unwrap();
    let local = local.display().to_string();
    let mut nodes: Vec<(String, String)> = Vec::new();
    nodes.push(("cp1".into(), c.add_node("cp1", 41, &["--tracing-policy", &local])));
    nodes.push(("cp2".into(), c.add_node("cp2", 42, &[])));

    // A read-only client may list but not add.
    let certs = c.certs.clone();
    let err = c.client_with(
        &certs.join("ca.pem"),
        &certs.join("client.pem"),
        &certs.join("client-key.pem"),
        &["tracingpolicy", "add", &file],
    );
    assert!(err.contains("certificate role client may not use AddTracingPolicy; it needs the admin role"), "{err}");
    assert_eq!(relay_policies(&c)["policies"].as_array().map_or(0, Vec::len), 0, "nothing was added");

    // An admin adds it (the CLI takes admin.pem from --tls-dir to change
    // policies); a node that connects afterwards gets it too.
    let out = c.cli(&["tracingpolicy", "add", &file]);
    assert!(out.status.success(), "add: {}", String::from_utf8_lossy(&out.stderr));
    nodes.push(("cp3".into(), c.add_node("cp3", 43, &[])));
    let names: Vec<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
    wait_policy_on(&c, &policy, &names, "enabled");
    // A node that takes no relay policies says so.
    c.add_node("cp9", 49, &["--ignore-relay-policies"]);
    wait_policy_on(
        &c,
        &policy,
        &["cp9"],
        "error: this node takes no tracing policies from relays (--ignore-relay-policies)",
    );
    assert_eq!(local_policies(&c, "cp9")["policies"].as_array().map_or(0, Vec::len), 0, "cp9 loaded nothing");
    c.sensors.retain(|(n, _)| n != "cp9");
    let again = c.cli(&["tracingpolicy", "add", &file]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("is already managed by the relay"), "a second add");
    for (name, _) in &nodes {
        let local = local_policies(&c, name);
        let p = local["policies"].as_array().unwrap().iter().find(|p| p["name"] == policy.as_str()).unwrap();
        assert_eq!(p["info"].as_str(), Some("managed by the relay"), "on {name}");
        // The node's own API may not delete what the relay manages.
        let out = c.local_cmd(name, &["tracingpolicy", "delete", &policy]).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stderr).contains("is managed by the relay"), "local delete on {name}");
    }

    let w = c.watch(&[]);
    c.wait_clients(1);
    // Each node: one rm unlinking two files (one process hitting the hook
    // twice: two events, neither a copy of the other).
    let before: Vec<[String; 2]> =
        nodes.iter().map(|(n, _)| [path(&format!("{n}-before1-{tag}")), path(&format!("{n}-before2-{tag}"))]).collect();
    for ((_, ns), [m1, m2]) in nodes.iter().zip(&before) {
        c.run_in(ns, &format!("touch {m1} {m2}; rm {m1} {m2}"));
    }
    for ((name, _), [_, m2]) in nodes.iter().zip(&before) {
        assert!(
            w.wait(Duration::from_secs(30), |e| e.iter().any(|e| unlinked(e, &policy) == Some(m2.as_str()))),
            "{name}'s unlink never arrived; its log:\n{}",
            c.sensors.iter().find(|(n, _)| n == name).map(|(_, d)| d.log_text()).unwrap_or_default()
        );
    }
    let events = w.snapshot();
    for ((name, _), m) in nodes.iter().zip(&before) {
        let hits: Vec<&GetEventsResponse> =
            events.iter().filter(|e| m.iter().any(|m| unlinked(e, &policy) == Some(m.as_str()))).collect();
        assert_eq!(hits.len(), 2, "{m:?} exactly once each");
        assert!(hits.iter().all(|h| &h.node_name == name));
        let pids: Vec<u32> = hits.iter().filter_map(|h| Some(events::subject::process(h)?.pid?.value)).collect();
        assert!(pids.len() == 2 && pids[0] == pids[1], "one rm process: {pids:?}");
    }

    // Disabled and enabled again at the relay: on every node.
    for (verb, state) in [("disable", "disabled"), ("enable", "enabled")] {
        let out = c.cli(&["tracingpolicy", verb, &policy]);
        assert!(out.status.success(), "{verb}: {}", String::from_utf8_lossy(&out.stderr));
        wait_policy_on(&c, &policy, &names, state);
    }

    // A policy that fails on one node (cp1 has its own of that name) is
    // reported there and runs on the others; deleting it at the relay
    // leaves cp1's own.
    let clash_file = c.dir.join("clash.yaml");
    std::fs::write(&clash_file, unlink_policy(&clash)).unwrap();
    let out = c.cli(&["tracingpolicy", "add", &clash_file.display().to_string()]);
    assert!(out.status.success(), "add: {}", String::from_utf8_lossy(&out.stderr));
    wait_policy_on(&c, &clash, &["cp2", "cp3"], "enabled");
    let refused =
        format!("cp1=error: a policy named {clash} is already loaded on this node, added there and not by the relay");
    wait_policy(&c, &clash, "refused on cp1", |info| info.contains(&refused));
    let listed = relay_policies(&c);
    let p = listed["policies"].as_array().unwrap().iter().find(|p| p["name"] == clash.as_str()).unwrap().clone();
    assert!(p["info"].as_str().unwrap().contains(&refused), "{p}");
    assert_eq!(p["state"], "TP_STATE_LOAD_ERROR", "{p}");
    let out = c.cli(&["tracingpolicy", "delete", &clash]);
    assert!(out.status.success(), "delete: {}", String::from_utf8_lossy(&out.stderr));
    wait_policies_applied(&c, &names);
    let own = local_policies(&c, "cp1");
    let p = own["policies"].as_array().unwrap().iter().find(|p| p["name"] == clash.as_str()).unwrap();
    assert!(p["info"].as_str().unwrap_or_default().is_empty(), "cp1's own policy stays its own: {p}");
    assert_eq!(local_policies(&c, "cp2")["policies"].as_array().unwrap().len(), 1, "cp2 dropped the relay's");

    // Deleted: gone from every node, and nothing more is reported.
    let out = c.cli(&["tracingpolicy", "delete", &policy]);
    assert!(out.status.success(), "delete: {}", String::from_utf8_lossy(&out.stderr));
    wait_policies_applied(&c, &names);
    let after: Vec<String> = nodes.iter().map(|(n, _)| path(&format!("{n}-after-{tag}"))).collect();
    for (((name, ns), m), i) in nodes.iter().zip(&after).zip(0..) {
        let local = local_policies(&c, name);
        let left =
            local["policies"].as_array().map_or(0, |all| all.iter().filter(|p| p["name"] == policy.as_str()).count());
        assert_eq!(left, 0, "{name} dropped it");
        c.run_in(ns, &format!("touch {m}; rm {m}"));
        c.settle(ns, &format!("settle-{tag}-{i}"), &[&w]);
    }
    let events = w.snapshot();
    for m in &after {
        assert!(!events.iter().any(|e| unlinked(e, &policy) == Some(m.as_str())), "{m} after the delete");
    }

    // Added again, by a client that is not ours (Tetragon's protos through
    // Python grpcio), then the relay restarts: the store keeps it, and a
    // new node gets it from the restarted relay.
    match test_support::python::python() {
        Some(py) => python_add(&c, &py, &file, &policy),
        None => {
            let out = c.cli(&["tracingpolicy", "add", &file]);
            assert!(out.status.success(), "re-add: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    wait_policy_on(&c, &policy, &names, "enabled");
    c.relay.as_mut().unwrap().kill();
    c.start_relay(&["--policy-store", &store]);
    let ns4 = c.add_node("cp4", 44, &[]);
    let mut all = names.clone();
    all.push("cp4");
    wait_policy_on(&c, &policy, &all, "enabled");
    let w = c.watch(&["--policy-names", &policy]);
    c.wait_clients(1);
    let m = path(&format!("cp4-restarted-{tag}"));
    c.run_in(&ns4, &format!("touch {m}; rm {m}"));
    assert!(
        w.wait(Duration::from_secs(30), |e| e.iter().any(|e| unlinked(e, &policy) == Some(m.as_str()))),
        "the new node's unlink never arrived; relay log:\n{}",
        c.relay_log()
    );
    assert_eq!(w.snapshot().iter().filter(|e| unlinked(e, &policy) == Some(m.as_str())).count(), 1);
}

/// Adds the policy in `file` at the relay with Python grpcio and Tetragon's
/// own stubs: refused with the client certificate, taken with the admin
/// one, then listed with the client one.
fn python_add(c: &Cluster, py: &str, file: &str, policy: &str) {
    let stubs = test_support::python::stubs(
        py,
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto"),
        "relay-policies",
    );
    let script = format!(
        r#"
import grpc, sys
sys.path.insert(0, "{stubs}")
from tetragon import sensors_pb2, sensors_pb2_grpc
def stub(role):
    d = "{certs}"
    creds = grpc.ssl_channel_credentials(open(d + "/ca.pem", "rb").read(), open(d + "/" + role + "-key.pem", "rb").read(), open(d + "/" + role + ".pem", "rb").read())
    return sensors_pb2_grpc.FineGuidanceSensorsStub(grpc.secure_channel("{ip}:54330", creds))
yaml = open("{file}").read()
try:
    stub("client").AddTracingPolicy(sensors_pb2.AddTracingPolicyRequest(yaml=yaml), timeout=10)
    print("client add accepted")
except grpc.RpcError as e:
    print("client:", e.code().name, e.details())
stub("admin").AddTracingPolicy(sensors_pb2.AddTracingPolicyRequest(yaml=yaml), timeout=10)
listed = stub("client").ListTracingPolicies(sensors_pb2.ListTracingPoliciesRequest(), timeout=10).policies
print("listed:", ",".join(p.name for p in listed))
"#,
        stubs = stubs.display(),
        certs = c.certs.display(),
        ip = c.relay_ip,
    );
    let out =
        std::process::Command::new("ip").args(["netns", "exec", &c.client_ns, py, "-c", &script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python client failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains(
            "client: PERMISSION_DENIED certificate role client may not use AddTracingPolicy; it needs the admin role"
        ),
        "{text}"
    );
    assert!(text.contains(&format!("listed: {policy}\n")), "{text}");
    let _ = std::fs::remove_dir_all(stubs);
}
