//! Cluster tests (root): sensors in their own network namespaces streaming
//! over mTLS to a relay; real clients; links cut and daemons killed.
//! Everything is counted per unique marker.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod cluster;
use test_support::python as pysupport;

use std::collections::BTreeMap;
use std::time::Duration;

use cluster::{
    Cluster, EXEC, EXIT, Watcher, assert_exactly_once, full, lost_for, marked, replica_certificate,
    start_replicated_sensor, workload,
};
use proto::tetragon::EventType;

#[test]
fn three_nodes_each_seen_exactly_once_by_two_kinds_of_client() {
    require_root!();
    let mut c = Cluster::new();
    let nodes: Vec<String> = (1..=3).map(|k| c.add_node(&format!("node{k}"), 10 + k as u8, &[])).collect();
    let watcher = c.watch(&[]);
    c.wait_clients(1);
    let tag = c.net.id;
    for (k, ns) in nodes.iter().enumerate() {
        c.run_in(ns, &workload(&format!("m{tag}n{}", k + 1), 30));
    }
    for k in 1..=3 {
        let prefix = format!("m{tag}n{k}");
        assert!(
            watcher.wait(Duration::from_secs(30), |e| full(e, &prefix, 30)),
            "node{k} incomplete; relay log:\n{}",
            c.relay_log()
        );
    }
    for (k, ns) in nodes.iter().enumerate() {
        c.settle(ns, &format!("z{tag}n{}", k + 1), &[&watcher]);
    }
    let events = watcher.snapshot();
    for k in 1..=3 {
        assert_exactly_once(&events, &format!("m{tag}n{k}"), 30, &format!("node{k}"));
    }
    // The same through the --node filter: only node2's markers.
    // getevents streams until stopped: give it 5 s to replay the history.
    let out = std::process::Command::new("timeout")
        .args(["5", "ip", "netns", "exec", &c.client_ns])
        .arg(cluster::bin("vigil"))
        .args(["--server-address", &format!("{}:54330", c.relay_ip), "--tls-dir"])
        .arg(&c.certs)
        .args(["getevents", "-o", "json", "--last", "100000", "--node", "node2"])
        .output()
        .unwrap();
    let lines: Vec<_> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| proto::json::from_json_line(l).ok()).collect();
    assert!(lines.iter().all(|e| e.node_name == "node2"), "--node node2 let other nodes through");
    assert_exactly_once(&lines, &format!("m{tag}n2"), 30, "node2");

    // A client that is not ours: Python grpcio with a client certificate.
    if let Some(py) = pysupport::python() {
        let script = format!(
            r#"
import grpc, sys, json
sys.path.insert(0, "{stubs}")
from tetragon import events_pb2, sensors_pb2_grpc
from google.protobuf.json_format import MessageToDict
creds = grpc.ssl_channel_credentials(open("{d}/ca.pem","rb").read(), open("{d}/client-key.pem","rb").read(), open("{d}/client.pem","rb").read())
ch = grpc.secure_channel("{ip}:54330", creds)
stub = sensors_pb2_grpc.FineGuidanceSensorsStub(ch)
req = events_pb2.GetEventsRequest(allow_list=[events_pb2.Filter(arguments_regex=["^m{tag}n3-"])])
n = 0
for r in stub.GetEvents(req, timeout=30):
    print(json.dumps(MessageToDict(r, preserving_proto_field_name=True)), flush=True)
    n += 1
    if n == 10: break
"#,
            stubs = pysupport::stubs(
                &py,
                &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto"),
                "relay"
            )
            .display(),
            d = c.certs.display(),
            ip = c.relay_ip,
        );
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &c.client_ns, &py, "-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.wait_clients(2); // the watcher and the Python client
        c.run_in(&nodes[2], &workload(&format!("m{tag}n3"), 5));
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "python client failed");
        let got: Vec<serde_json::Value> =
            String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|e| e["node_name"] == "node3"));
    }
}

#[test]
fn two_sensors_on_one_kernel_produce_one_copy() {
    require_root!();
    let mut c = Cluster::new();
    let ns = c.add_node("twin-a", 10, &[]);
    c.start_sensor(&ns, "twin-b", &[]);
    let watcher = c.watch(&[]);
    c.wait_clients(1);
    let prefix = format!("t{}", c.net.id);
    c.run_in(&ns, &workload(&prefix, 40));
    assert!(watcher.wait(Duration::from_secs(30), |e| full(e, &prefix, 40)));
    c.settle(&ns, &format!("z{prefix}"), &[&watcher]);
    let events = watcher.snapshot();
    let mut counts: BTreeMap<(i32, String), usize> = BTreeMap::new();
    for (kind, args, _) in marked(&events, &format!("{prefix}-")) {
        *counts.entry((kind, args)).or_default() += 1;
    }
    assert_eq!(counts.len(), 80);
    assert!(counts.values().all(|c| *c == 1), "duplicates reached the client: {counts:?}");
    let nodes = String::from_utf8_lossy(&c.cli(&["nodes"]).stdout).to_string();
    assert!(nodes.contains("twin-a") && nodes.contains("twin-b"), "{nodes}");
    // Both sensors saw every process: each marker's exec and exit was a copy.
    let copies: u64 = nodes
        .split("shared-kernel copies merged: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no copy count in {nodes}"));
    assert!(copies >= 80, "{copies} copies counted: {nodes}");
}

#[test]
fn relay_killed_and_restarted_mid_workload_loses_nothing() {
    require_root!();
    let mut c = Cluster::new();
    let ns = c.add_node("rn", 10, &[]);
    let prefix = format!("r{}", c.net.id);
    let script = format!("i=0; while [ $i -lt 60 ]; do /bin/true {prefix}-$i; sleep 0.05; i=$((i+1)); done");
    let early = c.watch(&[]);
    c.wait_clients(1);
    let mut work =
        std::process::Command::new("ip").args(["netns", "exec", &ns, "/bin/sh", "-c", &script]).spawn().unwrap();
    // Mid-workload: some markers have reached the relay.
    assert!(early.wait(Duration::from_secs(30), |e| marked(e, &format!("{prefix}-")).len() >= 10));
    drop(early);
    c.relay.as_mut().unwrap().kill();
    c.start_relay(&[]);
    assert!(work.wait().unwrap().success());
    c.wait_node("rn");
    // Everything, before, during and after the restart, is in the new
    // relay's history exactly once.
    let watcher = c.watch(&["--since", "1h"]);
    assert!(watcher.wait(Duration::from_secs(30), |e| full(e, &prefix, 60)), "relay log:\n{}", c.relay_log());
    c.settle(&ns, &format!("z{prefix}"), &[&watcher]);
    assert_exactly_once(&watcher.snapshot(), &prefix, 60, "rn");
}

#[test]
fn cut_link_heals_with_nothing_lost_or_duplicated() {
    require_root!();
    let mut c = Cluster::new();
    let ns = c.add_node("cut", 10, &[]);
    let watcher = c.watch(&[]);
    c.wait_clients(1);
    // The node's own API (a unix socket, reachable across namespaces)
    // shows when the sensor has the workload's events.
    let local = Watcher::spawn(c.local_cmd("cut", &["getevents", "-o", "json"]));
    c.wait_local_subscribers("cut", 2); // this watcher and the relay uplink
    let prefix = format!("k{}", c.net.id);
    c.net.link(10, false);
    c.run_in(&ns, &workload(&prefix, 50));
    assert!(local.wait(Duration::from_secs(30), |e| full(e, &prefix, 50)), "the sensor did not see the workload");
    assert!(marked(&watcher.snapshot(), &format!("{prefix}-")).is_empty(), "events crossed a cut link");
    c.net.link(10, true);
    assert!(
        watcher.wait(Duration::from_secs(60), |e| full(e, &prefix, 50)),
        "not delivered after heal; sensor log:\n{}",
        c.sensors[0].1.log_text()
    );
    c.settle(&ns, &format!("z{prefix}"), &[&watcher]);
    let events = watcher.snapshot();
    assert_exactly_once(&events, &prefix, 50, "cut");
    assert_eq!(lost_for(&events, "cut"), 0);
}

#[test]
fn replay_buffer_overflow_is_reported_with_the_exact_count() {
    require_root!();
    let mut c = Cluster::new();
    let ns = c.add_node("small", 10, &["--replay-buffer-size", "50"]);
    let watcher = c.watch(&[]);
    c.wait_clients(1);
    let prefix = format!("o{}", c.net.id);
    let from_small = |e: &[proto::tetragon::GetEventsResponse]| -> Vec<proto::tetragon::GetEventsResponse> {
        e.iter().filter(|x| x.node_name == "small" && x.event_type() != EventType::RateLimitInfo).cloned().collect()
    };
    // Anything the node reported before the cut is not part of the count.
    let before = from_small(&watcher.snapshot()).len();
    c.net.link(10, false);
    // Wait for the sensor's stream to notice the cut (keepalive) so events
    // pile up in its buffer rather than in TCP buffers: it says so.
    let sensor = &c.sensors[0].1;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !sensor.log_text().contains("relay stream") {
        assert!(std::time::Instant::now() < deadline, "the sensor never noticed the cut:\n{}", sensor.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    c.run_in(&ns, &workload(&prefix, 200));
    c.net.link(10, true);
    let total = 2 * 200 + 2; // the workload shell's own exec and exit too
    let accounted = |e: &[proto::tetragon::GetEventsResponse]| lost_for(e, "small") > 0 && from_small(e).len() > before;
    assert!(watcher.wait(Duration::from_secs(60), accounted), "no loss notice; relay log:\n{}", c.relay_log());
    // Observed, not timed: wait until every event is delivered or reported
    // lost (the equality below then also catches extras that came first).
    let settled = |e: &[proto::tetragon::GetEventsResponse]| {
        from_small(e).len().saturating_sub(before) as u64 + lost_for(e, "small") >= total
    };
    watcher.wait(Duration::from_secs(60), settled);
    let events = watcher.snapshot();
    let delivered = &from_small(&events)[before..];
    let lost = lost_for(&events, "small");
    let describe = |d: &[proto::tetragon::GetEventsResponse]| -> Vec<String> {
        d.iter()
            .filter_map(events::subject::process)
            .map(|p| format!("{} {} (pid {:?})", p.binary, p.arguments, p.pid.map(|v| v.value)))
            .collect()
    };
    assert_eq!(
        delivered.len() as u64 + lost,
        total,
        "delivered {} + reported lost {lost}; delivered: {:?}",
        delivered.len(),
        describe(delivered)
    );
    assert!(delivered.len() <= 50, "the buffer holds 50: {:?}", describe(delivered));
    // The sensor's loss log says the same number, each event once.
    let sensor = &c.sensors[0].1;
    let logged = |log: &str| -> (u64, u64) {
        let field = |l: &str, k: &str| -> u64 {
            l.split_whitespace().find_map(|w| w.strip_prefix(k)?.parse().ok()).unwrap_or(0)
        };
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("kind=relay_skipped ")).collect();
        (lines.iter().map(|l| field(l, "lost=")).sum(), lines.last().map_or(0, |l| field(l, "total=")))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while logged(&sensor.log_text()).1 < lost {
        assert!(std::time::Instant::now() < deadline, "the sensor never logged {lost} lost:\n{}", sensor.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(logged(&sensor.log_text()), (lost, lost), "sensor log:\n{}", sensor.log_text());
}

#[test]
fn a_client_that_stops_reading_does_not_delay_another() {
    require_root!();
    let mut c = Cluster::new();
    c.start_relay_with_small_queues();
    let ns = c.add_node("busy", 10, &[]);
    // The stalled client: its stdout is a pipe nobody reads.
    let mut stalled = c.stalled_client();
    let fast = c.watch(&[]);
    c.wait_clients(2);
    let prefix = format!("s{}", c.net.id);
    let started = std::time::Instant::now();
    c.run_in(&ns, &workload(&prefix, 1500));
    let ran = started.elapsed();
    assert!(
        fast.wait(Duration::from_secs(60), |e| full(e, &prefix, 1500)),
        "fast client incomplete: {} of {} markers; relay log:\n{}",
        marked(&fast.snapshot(), &format!("{prefix}-")).len(),
        2 * 1500,
        c.relay_log()
    );
    let behind = started.elapsed().saturating_sub(ran);
    let events = fast.snapshot();
    assert_exactly_once(&events, &prefix, 1500, "busy");
    assert_eq!(lost_for(&events, "vigil-relay"), 0, "the fast client lost nothing");
    let nodes = String::from_utf8_lossy(&c.cli(&["nodes"]).stdout).to_string();
    let dropped: u64 = nodes
        .split("dropped for slow clients: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(dropped > 0, "the stalled client should have lost events: {nodes}");
    eprintln!("fast client complete {behind:?} after the workload ended; stalled client dropped {dropped}");
    let _ = stalled.kill();
    let _ = stalled.wait();
}

#[test]
fn since_and_last_replay_history_then_continue_live() {
    require_root!();
    let mut c = Cluster::new();
    let ns = c.add_node("hist", 10, &[]);
    let prefix = format!("h{}", c.net.id);
    // The workload is in the relay's history once a live client has it.
    let live = c.watch(&[]);
    c.wait_clients(1);
    c.run_in(&ns, &workload(&prefix, 10));
    assert!(live.wait(Duration::from_secs(30), |e| full(e, &prefix, 10)), "workload not merged");
    let watcher = c.watch(&["--last", "4", "--process", "true$"]);
    assert!(watcher.wait(Duration::from_secs(30), |e| e.len() >= 4));
    // A closing /bin/true marker comes after the history, live.
    c.settle(&ns, &format!("z{prefix}"), &[&watcher]);
    let first: Vec<_> =
        marked(&watcher.snapshot(), &format!("{prefix}-")).into_iter().map(|(k, a, _)| (k, a)).collect();
    assert_eq!(
        first,
        vec![
            (EXEC, format!("{prefix}-8")),
            (EXIT, format!("{prefix}-8")),
            (EXEC, format!("{prefix}-9")),
            (EXIT, format!("{prefix}-9"))
        ],
        "the last 4 matching events, oldest first"
    );
    c.run_in(&ns, &workload(&format!("{prefix}live"), 3));
    assert!(
        watcher.wait(Duration::from_secs(10), |e| full(e, &format!("{prefix}live"), 3)),
        "live events after history"
    );
    let since = c.watch(&["--since", "1h"]);
    assert!(since.wait(Duration::from_secs(10), |e| full(e, &prefix, 10)));
}

#[test]
fn wrong_certificates_are_refused_with_reasons() {
    require_root!();
    let c = Cluster::new();
    // A certificate from another CA.
    let other = c.dir.join("other");
    assert!(
        std::process::Command::new(cluster::bin("vigil"))
            .args(["certs", "generate", "--out"])
            .arg(&other)
            .status()
            .unwrap()
            .success()
    );
    let err =
        c.client_with(&other.join("ca.pem"), &other.join("client.pem"), &other.join("client-key.pem"), &["status"]);
    // The relay's certificate does not chain to the other CA.
    assert!(err.contains("invalid peer certificate"), "wrong CA: {err}");
    // A sensor certificate on the client listener.
    let sensor = c.node_tls("probe");
    let err =
        c.client_with(&c.certs.join("ca.pem"), &sensor.join("sensor.pem"), &sensor.join("sensor-key.pem"), &["status"]);
    assert!(
        err.contains("certificate role sensor may not use this listener; it needs the client or admin role"),
        "{err}"
    );
    // An expired client certificate.
    let (cert, key) = c.expired_client();
    let err = c.client_with(&c.certs.join("ca.pem"), &cert, &key, &["status"]);
    assert!(err.contains(&format!("certificate {} expired at", cert.display())), "expired: {err}");
    // A client or an admin certificate on the ingest listener: the sensor
    // is refused.
    for (i, role) in ["client", "admin"].into_iter().enumerate() {
        let bad = c.dir.join(format!("as-{role}"));
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::copy(c.certs.join("ca.pem"), bad.join("ca.pem")).unwrap();
        std::fs::copy(c.certs.join(format!("{role}.pem")), bad.join("sensor.pem")).unwrap();
        std::fs::copy(c.certs.join(format!("{role}-key.pem")), bad.join("sensor-key.pem")).unwrap();
        let (ns, _) = c.net.host(&format!("bad{i}"), 20 + i as u8);
        let d = cluster::Daemon::start(
            &ns,
            &cluster::bin("vigil-sensor"),
            &[
                "--node-name".into(),
                "impostor".into(),
                "--server-address".into(),
                format!("unix://{}", c.dir.join(format!("bad{i}.sock")).display()),
                "--relay-address".into(),
                format!("{}:54331", c.relay_ip),
                "--tls-dir".into(),
                bad.display().to_string(),
            ],
            c.dir.join(format!("bad{i}.log")),
        );
        let refused = format!("certificate role {role} may not use this listener; it needs the sensor role");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !d.log_text().contains(&refused) {
            assert!(std::time::Instant::now() < deadline, "sensor log:\n{}", d.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn relay_certificates_are_reread_without_a_restart() {
    require_root!();
    let mut c = Cluster::new();
    let ns = c.add_node("rot", 10, &[]);
    let pid = c.relay.as_ref().unwrap().child.id();
    assert!(c.status_as("relay.vigil.test").status.success());
    assert!(!c.status_as("rotated.vigil.test").status.success(), "the new name is not served yet");
    c.rotate_relay_cert("rotated.vigil.test");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !c.status_as("rotated.vigil.test").status.success() {
        assert!(std::time::Instant::now() < deadline, "new certificate not served; relay log:\n{}", c.relay_log());
        std::thread::sleep(Duration::from_millis(300));
    }
    let old = c.status_as("relay.vigil.test");
    assert!(!old.status.success(), "the old certificate is still served");
    assert_eq!(c.relay.as_ref().unwrap().child.id(), pid);
    assert!(c.relay.as_mut().unwrap().child.try_wait().unwrap().is_none(), "relay restarted");
    // The sensor keeps streaming across the reload.
    let watcher = c.watch(&["--tls-server-name", "rotated.vigil.test"]);
    c.wait_clients_with(&c.relay_ip, &["--tls-server-name", "rotated.vigil.test"], 1);
    let prefix = format!("q{}", c.net.id);
    c.run_in(&ns, &workload(&prefix, 5));
    assert!(watcher.wait(Duration::from_secs(30), |e| full(e, &prefix, 5)), "relay log:\n{}", c.relay_log());
}

#[test]
fn a_name_with_several_relays_streams_to_every_replica() {
    require_root!();
    let mut c = Cluster::new();
    let (sensor_ns, _) = c.net.host("rep", 10);
    let second_ip = replica_certificate(&c, "relays.vigil.test");
    let (_rns, replica_ip, _second) = c.add_replica(3, &sensor_ns, "relays.vigil.test");
    assert_eq!(replica_ip, second_ip);
    let sensor = start_replicated_sensor(&c, &sensor_ns, "rep", &[]);
    c.wait_node("rep");
    let first = c.watch(&[]);
    let second = c.watch_at(&second_ip, &[]);
    c.wait_clients(1);
    c.wait_clients_at(&second_ip, 1);
    let prefix = format!("p{}", c.net.id);
    c.run_in(&sensor_ns, &workload(&prefix, 10));
    for (name, w) in [("first", &first), ("second", &second)] {
        assert!(
            w.wait(Duration::from_secs(30), |e| full(e, &prefix, 10)),
            "{name} relay incomplete; sensor log:\n{}",
            sensor.log_text()
        );
    }
    c.settle(&sensor_ns, &format!("z{prefix}"), &[&first, &second]);
    assert_exactly_once(&first.snapshot(), &prefix, 10, "rep");
    assert_exactly_once(&second.snapshot(), &prefix, 10, "rep");
}

#[test]
fn a_replica_added_later_is_found_by_looking_the_name_up_again() {
    require_root!();
    let mut c = Cluster::new();
    let (sensor_ns, _) = c.net.host("late", 11);
    let second_ip = replica_certificate(&c, "relays.vigil.test");
    // At first the name resolves to the first relay only.
    c.set_hosts(&sensor_ns, "relays.vigil.test", &[c.relay_ip.clone()]);
    let sensor = start_replicated_sensor(&c, &sensor_ns, "late", &["--relay-resolve-interval", "1"]);
    c.wait_node("late");
    let first = c.watch(&[]);
    c.wait_clients(1);
    let before = format!("b{}", c.net.id);
    c.run_in(&sensor_ns, &workload(&before, 10));
    assert!(first.wait(Duration::from_secs(30), |e| full(e, &before, 10)), "first relay incomplete");
    // A replica appears behind the name: the sensor finds it within a
    // lookup interval and sends it everything still buffered, then live.
    let (_rns, replica_ip, _second) = c.add_replica(3, &sensor_ns, "relays.vigil.test");
    assert_eq!(replica_ip, second_ip);
    c.wait_node_at(&second_ip, "late");
    let second = c.watch_at(&second_ip, &["--since", "10m"]);
    assert!(
        second.wait(Duration::from_secs(30), |e| full(e, &before, 10)),
        "the replica did not get the events from before it existed; sensor log:\n{}",
        sensor.log_text()
    );
    let after = format!("a{}", c.net.id);
    c.run_in(&sensor_ns, &workload(&after, 10));
    for (name, w) in [("first", &first), ("second", &second)] {
        assert!(w.wait(Duration::from_secs(30), |e| full(e, &after, 10)), "{name} relay incomplete");
    }
    c.settle(&sensor_ns, &format!("z{after}"), &[&first, &second]);
    for prefix in [&before, &after] {
        assert_exactly_once(&first.snapshot(), prefix, 10, "late");
        assert_exactly_once(&second.snapshot(), prefix, 10, "late");
    }
    assert!(sensor.log_text().contains("new relay address; streaming to it too"), "{}", sensor.log_text());
}

#[test]
fn a_node_speaks_only_for_itself() {
    require_root!();
    let mut c = Cluster::new();
    let victim = c.add_node("victim", 10, &[]);
    let watcher = c.watch(&[]);
    c.wait_clients(1);

    // A sensor holding node "attacker"'s credential, claiming to be "victim".
    let stolen = c.node_tls("attacker");
    let (ns, _) = c.net.host("attacker", 21);
    let hostile = cluster::Daemon::start(
        &ns,
        &cluster::bin("vigil-sensor"),
        &[
            "--node-name".into(),
            "victim".into(),
            "--server-address".into(),
            format!("unix://{}", c.dir.join("attacker.sock").display()),
            "--relay-address".into(),
            format!("{}:54331", c.relay_ip),
            "--tls-dir".into(),
            stolen.display().to_string(),
            "--only-own-netns".into(),
        ],
        c.dir.join("attacker.log"),
    );
    // Refused, naming both nodes; the refused sensor says why in its log.
    let why = "this sensor certificate is bound to node \"attacker\"; its hello claims node \"victim\"";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !hostile.log_text().contains(why) {
        assert!(std::time::Instant::now() < deadline, "hostile sensor log:\n{}", hostile.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The hostile sensor's own processes never reach clients as "victim"'s,
    // and the real sensor keeps delivering, exactly once, while it retries.
    let prefix = format!("v{}", c.net.id);
    c.run_in(&ns, &workload(&format!("{prefix}x"), 5));
    c.run_in(&victim, &workload(&prefix, 20));
    c.settle(&victim, &format!("z{prefix}"), &[&watcher]);
    let events = watcher.snapshot();
    assert_exactly_once(&events, &prefix, 20, "victim");
    assert!(marked(&events, &format!("{prefix}x-")).is_empty(), "the impostor's events reached clients");
    assert!(hostile.log_text().contains(why), "still refused");

    // An any-node credential is accepted only because it was asked for, and
    // the relay says so: in its log and in `vigil nodes`.
    let any = c.dir.join("any-node");
    std::fs::create_dir_all(&any).unwrap();
    let ca_pem = std::fs::read_to_string(c.certs.join("ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(c.certs.join("ca-key.pem")).unwrap();
    let (cert, key) = tls::leaf_from_ca(&ca_pem, &ca_key, tls::Role::Sensor, &["localhost".into()], -1, 2).unwrap();
    std::fs::write(any.join("ca.pem"), &ca_pem).unwrap();
    std::fs::write(any.join("sensor.pem"), cert).unwrap();
    std::fs::write(any.join("sensor-key.pem"), key).unwrap();
    let (loose_ns, _) = c.net.host("loose", 22);
    let _loose = cluster::Daemon::start(
        &loose_ns,
        &cluster::bin("vigil-sensor"),
        &[
            "--node-name".into(),
            "loose".into(),
            "--server-address".into(),
            format!("unix://{}", c.dir.join("loose.sock").display()),
            "--relay-address".into(),
            format!("{}:54331", c.relay_ip),
            "--tls-dir".into(),
            any.display().to_string(),
            "--only-own-netns".into(),
        ],
        c.dir.join("loose.log"),
    );
    c.wait_node("loose");
    let nodes = String::from_utf8_lossy(&c.cli(&["nodes"]).stdout).to_string();
    let line = |name: &str| nodes.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default().to_owned();
    assert!(line("loose").ends_with("ANY NODE"), "{nodes}");
    assert!(line("victim").ends_with("this node"), "{nodes}");
    let relay_log = c.relay.as_ref().unwrap().log_text();
    assert!(relay_log.contains("sensor connected with an any-node credential"), "{relay_log}");
}
