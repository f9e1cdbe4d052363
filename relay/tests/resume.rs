//! Cluster tests (root): a `vigil getevents --reconnect` client stays on
//! while its relay restarts, or while it moves to another replica, and gets
//! every event exactly once: nothing twice, nothing missed, nothing from
//! before it started.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod cluster;

use std::process::{Child, Command};
use std::time::Duration;

use cluster::{
    Cluster, Watcher, assert_exactly_once, full, marked, replica_certificate, start_replicated_sensor, workload,
};

/// 60 markers, 50 ms apart, run in `ns` in the background.
fn paced_workload(ns: &str, prefix: &str) -> Child {
    let script = format!("i=0; while [ $i -lt 60 ]; do /bin/true {prefix}-$i; sleep 0.05; i=$((i+1)); done");
    Command::new("ip").args(["netns", "exec", ns, "/bin/sh", "-c", &script]).spawn().unwrap()
}

/// Runs `prefix`'s markers and waits until the relay has them in history,
/// before any client of the test connects.
fn earlier_events(c: &Cluster, ns: &str, prefix: &str) {
    c.run_in(ns, &workload(prefix, 10));
    let probe = c.watch(&["--since", "1h"]);
    assert!(probe.wait(Duration::from_secs(30), |e| full(e, prefix, 10)), "relay log:\n{}", c.relay_log());
}

#[test]
fn a_reconnecting_client_resumes_exactly_once_across_a_relay_restart() {
    require_root!();
    let mut c = Cluster::new();
    let ns = c.add_node("rs", 10, &[]);
    let tag = c.net.id;
    // Still in the sensor's replay buffer: re-sent to the restarted relay,
    // and so in its history, but older than anything the client had.
    let before = format!("b{tag}");
    earlier_events(&c, &ns, &before);
    let client = c.watch(&["--reconnect"]);
    c.wait_clients(1);
    let during = format!("d{tag}");
    let mut work = paced_workload(&ns, &during);
    assert!(client.wait(Duration::from_secs(30), |e| marked(e, &format!("{during}-")).len() >= 10));
    c.relay.as_mut().unwrap().kill();
    c.start_relay(&[]);
    assert!(work.wait().unwrap().success());
    c.settle(&ns, &format!("z{tag}"), &[&client]);
    let events = client.snapshot();
    assert_exactly_once(&events, &during, 60, "rs");
    assert!(marked(&events, &format!("{before}-")).is_empty(), "events from before the client started reached it");
}

#[test]
fn a_reconnecting_client_resumes_exactly_once_on_another_replica() {
    require_root!();
    let mut c = Cluster::new();
    let (sensor_ns, _) = c.net.host("mv", 10);
    let second_ip = replica_certificate(&c, "relays.vigil.test");
    let (_rns, _, _second) = c.add_replica(3, &sensor_ns, "relays.vigil.test");
    let _sensor = start_replicated_sensor(&c, &sensor_ns, "mv", &[]);
    c.wait_node("mv");
    c.wait_node_at(&second_ip, "mv");
    let tag = c.net.id;
    let before = format!("b{tag}");
    earlier_events(&c, &sensor_ns, &before);
    // The client dials the name, which leads to the first relay, then,
    // once that one is gone, to the second.
    c.set_hosts(&c.client_ns, "relays.vigil.test", std::slice::from_ref(&c.relay_ip));
    let client: Watcher = c.watch_at("relays.vigil.test", &["--reconnect"]);
    c.wait_clients(1);
    let during = format!("d{tag}");
    let mut work = paced_workload(&sensor_ns, &during);
    assert!(client.wait(Duration::from_secs(30), |e| marked(e, &format!("{during}-")).len() >= 10));
    c.set_hosts(&c.client_ns, "relays.vigil.test", std::slice::from_ref(&second_ip));
    c.relay.as_mut().unwrap().kill();
    assert!(work.wait().unwrap().success());
    c.settle(&sensor_ns, &format!("z{tag}"), &[&client]);
    let events = client.snapshot();
    assert_exactly_once(&events, &during, 60, "mv");
    assert!(marked(&events, &format!("{before}-")).is_empty(), "events from before the client started reached it");
}
