//! The relay's Prometheus endpoint and export file: after two sensors'
//! batches, the per-node and merge metrics say what `vigil nodes` says,
//! and the cluster-wide export file has every node's events once; nothing
//! but `/metrics` is served. Needs no root: everything is on loopback
//! (but for a real sensor's uplink metrics, whose BPF needs root). Every
//! metric the Grafana dashboard (deploy/grafana/vigil.json) queries is
//! served by that sensor or relay.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

#[path = "support/local.rs"]
mod local;

use std::time::{Duration, Instant};

use local::Relay;
use proto::Timestamp;
use proto::tetragon::GetEventsResponse;
use proto::vigil::relay::v1::ingest_client::IngestClient;
use proto::vigil::relay::v1::relay_admin_client::RelayAdminClient;
use proto::vigil::relay::v1::{Batch, IngestMessage, ListNodesRequest, SequencedEvent, ingest_message, ingest_reply};
use test_support::scrape::{http, sample};
use tokio::sync::mpsc;

fn exec(node: &str, i: u64) -> GetEventsResponse {
    test_support::events::exec("/bin/m")
        .arguments(&format!("marker-{i}"))
        .exec_id_of(node, i, i as u32)
        .node(node)
        .at_nanos(Timestamp::now().unix_nanos())
        .build()
}

/// Streams `count` marked execs as `node` and waits for their ack.
async fn send(relay: &Relay, node: &str, count: u64) -> mpsc::Sender<IngestMessage> {
    let (tx, rx) = mpsc::channel(4);
    let hello = local::hello(node);
    tx.send(IngestMessage { msg: Some(ingest_message::Msg::Hello(hello)) }).await.unwrap();
    let mut replies = IngestClient::new(relay.sensor().await)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let events = (1..=count).map(|seq| SequencedEvent { seq, event: Some(Box::new(exec(node, seq))) }).collect();
    tx.send(IngestMessage { msg: Some(ingest_message::Msg::Batch(Batch { events, lost: 0, skipped: 0 })) })
        .await
        .unwrap();
    // Acknowledged once accepted.
    loop {
        match replies.message().await.unwrap().and_then(|r| r.msg) {
            Some(ingest_reply::Msg::Ack(a)) if a.seq == count => return tx,
            Some(_) => {}
            None => panic!("the stream ended; log:\n{}", relay.log()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sensors_batches_show_in_the_metrics_and_the_export_file() {
    let dir = std::env::temp_dir().join(format!("vigil-relay-export-{}", test_support::nonce()));
    std::fs::create_dir_all(&dir).unwrap();
    let export = dir.join("cluster.jsonl");
    let relay = Relay::start(
        "metrics",
        &[
            "--metrics-address",
            "127.0.0.1:0",
            "--reorder-window-ms",
            "20",
            "--export-filename",
            &export.display().to_string(),
            // Each node's first event stays out of the file.
            "--export-denylist",
            r#"{"arguments_regex":["^marker-1$"]}"#,
        ],
    )
    .await;
    let address = relay.daemon.listening("metrics").to_string();
    // A client, whose queue is shown as its own.
    let mut client =
        proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient::new(relay.client().await);
    let _stream = client.get_events(proto::tetragon::GetEventsRequest::default()).await.unwrap();
    let _m = send(&relay, "m-node", 25).await;
    let _n = send(&relay, "n-node", 25).await;
    // Merged after the reorder window.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (status, text) = http(&address, "GET", "/metrics");
        assert_eq!(status, 200);
        if sample(&text, "vigil_relay_events_merged_total", &[]) == 50 {
            break text;
        }
        assert!(Instant::now() < deadline, "never merged 50:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for node in ["m-node", "n-node"] {
        let node = [("node", node)];
        assert_eq!(sample(&text, "vigil_relay_node_events_total", &node), 25, "{text}");
        assert_eq!(sample(&text, "vigil_relay_node_connected", &node), 1);
        assert_eq!(sample(&text, "vigil_relay_node_lost_total", &node), 0);
    }
    // The same numbers `vigil nodes` reads.
    let nodes = RelayAdminClient::new(relay.client().await).list_nodes(ListNodesRequest {}).await.unwrap().into_inner();
    assert_eq!(nodes.events_merged, 50);
    assert_eq!(nodes.nodes.iter().find(|n| n.node_name == "m-node").map(|n| n.events), Some(25));
    assert_eq!(sample(&text, "vigil_relay_history_events", &[]), nodes.history_events);
    assert_eq!((nodes.export_dropped, sample(&text, "vigil_relay_export_dropped_total", &[])), (0, 0));
    assert_eq!(http(&address, "GET", "/healthz").0, 404);
    let queues: Vec<&str> =
        text.lines().filter(|l| l.starts_with("vigil_relay_getevents_client_queued_events{")).collect();
    assert_eq!(queues.len(), 1, "one client, one queue:\n{text}");
    assert!(queues[0].contains("client=\"127.0.0.1:"), "{}", queues[0]);
    assert_eq!(sample(&text, "vigil_relay_clients", &[]), 1);
    assert_eq!(sample(&text, "vigil_relay_getevents_client_dropped_total", &[]), 0);

    // The export file: every node's events but the denied, each once.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&export).unwrap_or_default();
        let mut seen = std::collections::BTreeMap::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let args = v["process_exec"]["process"]["arguments"].as_str().unwrap_or_default().to_owned();
            *seen.entry((v["node_name"].as_str().unwrap().to_owned(), args)).or_insert(0) += 1;
        }
        if seen.len() == 48 {
            for node in ["m-node", "n-node"] {
                for i in 2..=25 {
                    assert_eq!(seen.get(&(node.to_owned(), format!("marker-{i}"))), Some(&1), "{node} {i}");
                }
            }
            break;
        }
        assert!(Instant::now() < deadline, "the export file has {} of 48 events:\n{text}", seen.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, text) = http(&address, "GET", "/metrics");
    assert_eq!(sample(&text, "tetragon_events_exported_total", &[]), 48, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scrape's value of a metric with these labels, waited for.
fn wait_metric(
    address: &str,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(u64) -> bool,
    log: &dyn Fn() -> String,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = http(address, "GET", "/metrics");
        let v = sample(&text, name, labels);
        if ok(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} {labels:?} stuck at {v}:\n{text}\nlog:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensors_uplink_metrics_follow_its_stream_to_the_relay() {
    test_support::skip_if!((!test_support::is_root()).then(|| "a real sensor needs root (BPF)".to_owned()));
    let dir = std::env::temp_dir().join(format!("vigil-uplink-{}", test_support::nonce()));
    std::fs::create_dir_all(&dir).unwrap();
    let relay_export = dir.join("relay.jsonl").display().to_string();
    let relay = Relay::start("uplink", &["--metrics-address", "127.0.0.1:0", "--export-filename", &relay_export]).await;
    let port = relay.daemon.listening("ingest").port();
    let target = format!("localhost:{port}");
    let sensor_bin = test_support::workspace_bin(env!("CARGO_BIN_EXE_vigil-relay"), "vigil-sensor");
    let socket = relay.dir.join("sensor.sock");
    let sensor = test_support::daemon::Daemon::spawn(
        std::process::Command::new(sensor_bin)
            .args(["--node-name", "uplink-node", "--relay-address", &target, "--metrics-address", "127.0.0.1:0"])
            .args(["--server-address", &format!("unix://{}", socket.display())])
            .args(["--tls-dir", &relay.dir.display().to_string()])
            .args(["--export-filename", &dir.join("sensor.jsonl").display().to_string()]),
    );
    let address = sensor.listening("metrics").to_string();
    let log = || sensor.log();
    let link = [("relay", target.as_str())];
    wait_metric(&address, "vigil_sensor_uplink_connected", &link, |v| v == 1, &log);
    assert_eq!(sample(&http(&address, "GET", "/metrics").1, "vigil_sensor_uplink_streams_total", &link), 1);
    for i in 0..3 {
        assert!(std::process::Command::new("/bin/true").arg(format!("uplink-{i}")).status().unwrap().success());
    }
    // Whatever was numbered by now is sent and acknowledged in time.
    let (_, text) = http(&address, "GET", "/metrics");
    let last = sample(&text, "vigil_sensor_uplink_last_seq", &[]);
    assert!(last >= 6, "3 execs and exits numbered: {last}");
    let acked = wait_metric(&address, "vigil_sensor_uplink_acked_seq", &link, |v| v >= last, &log);
    assert!(sample(&http(&address, "GET", "/metrics").1, "vigil_sensor_uplink_sent_seq", &link) >= acked);
    assert_eq!(sample(&text, "vigil_sensor_replay_buffer_capacity", &[]), 100_000);

    // The dashboard queries nothing these two do not serve.
    let served: std::collections::BTreeSet<String> = [text.clone(), http(&relay_metrics(&relay), "GET", "/metrics").1]
        .iter()
        .flat_map(|t| t.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next().map(str::to_owned)))
        .collect();
    let queried = dashboard_metrics();
    assert!(queried.len() >= 40, "the dashboard's metrics: {queried:?}");
    let missing: Vec<&String> = queried.iter().filter(|m| !served.contains(*m)).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics nothing serves: {missing:?}");

    // Without the relay: the link is down, what happens is kept for it.
    drop(relay);
    wait_metric(&address, "vigil_sensor_uplink_connected", &link, |v| v == 0, &log);
    let (_, text) = http(&address, "GET", "/metrics");
    let acked = sample(&text, "vigil_sensor_uplink_acked_seq", &link);
    for i in 0..3 {
        assert!(std::process::Command::new("/bin/true").arg(format!("uplink-down-{i}")).status().unwrap().success());
    }
    let last = wait_metric(&address, "vigil_sensor_uplink_last_seq", &[], |v| v >= acked + 6, &log);
    let (_, text) = http(&address, "GET", "/metrics");
    assert_eq!(sample(&text, "vigil_sensor_uplink_acked_seq", &link), acked, "nothing acknowledged while down");
    assert!(sample(&text, "vigil_sensor_replay_buffer_events", &[]) >= last - acked, "kept for the relay:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn relay_metrics(relay: &Relay) -> String {
    relay.daemon.listening("metrics").to_string()
}

/// Every metric name in the Grafana dashboard's queries.
fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/vigil.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            names.extend(words.filter(|w| w.starts_with("tetragon_") || w.starts_with("vigil_")).map(str::to_owned));
        }
    }
    names
}
