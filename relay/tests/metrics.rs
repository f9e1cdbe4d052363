//! The relay's Prometheus endpoint: after a sensor's batch, the per-node and
//! merge metrics say what `vigil nodes` says; nothing but `/metrics` is
//! served. Needs no root: everything is on loopback.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

#[path = "support/local.rs"]
mod local;

use std::time::{Duration, Instant};

use local::Relay;
use proto::Timestamp;
use proto::tetragon::GetEventsResponse;
use proto::vigil::relay::v1::ingest_client::IngestClient;
use proto::vigil::relay::v1::relay_admin_client::RelayAdminClient;
use proto::vigil::relay::v1::{
    Batch, Hello, IngestMessage, ListNodesRequest, SequencedEvent, ingest_message, ingest_reply,
};
use test_support::scrape::{http, sample};
use tokio::sync::mpsc;

fn exec(i: u64) -> GetEventsResponse {
    test_support::events::exec("/bin/m")
        .arguments(&format!("marker-{i}"))
        .exec_id_of("m-node", i, i as u32)
        .node("m-node")
        .at_nanos(Timestamp::now().unix_nanos())
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensors_batch_shows_in_the_metrics_as_in_vigil_nodes() {
    let relay = Relay::start("metrics", &["--metrics-address", "127.0.0.1:0", "--reorder-window-ms", "20"]).await;
    let address = relay.daemon.listening("metrics").to_string();
    let (tx, rx) = mpsc::channel(4);
    tx.send(IngestMessage {
        msg: Some(ingest_message::Msg::Hello(Hello {
            node_name: "m-node".into(),
            boot_id: "boot-m".into(),
            sensor_version: "test".into(),
            instance_id: "m-1".into(),
            replay_buffer_size: 10,
        })),
    })
    .await
    .unwrap();
    let mut replies = IngestClient::new(relay.sensor().await)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let events = (1..=25).map(|seq| SequencedEvent { seq, event: Some(Box::new(exec(seq))) }).collect();
    tx.send(IngestMessage { msg: Some(ingest_message::Msg::Batch(Batch { events, lost: 0, skipped: 0 })) })
        .await
        .unwrap();
    // Acknowledged once accepted; merged after the reorder window.
    loop {
        match replies.message().await.unwrap().and_then(|r| r.msg) {
            Some(ingest_reply::Msg::Ack(a)) if a.seq == 25 => break,
            Some(_) => {}
            None => panic!("the stream ended; log:\n{}", relay.log()),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (status, text) = http(&address, "GET", "/metrics");
        assert_eq!(status, 200);
        if sample(&text, "vigil_relay_events_merged_total", &[]) == 25 {
            break text;
        }
        assert!(Instant::now() < deadline, "never merged 25:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let node = [("node", "m-node")];
    assert_eq!(sample(&text, "vigil_relay_node_events_total", &node), 25, "{text}");
    assert_eq!(sample(&text, "vigil_relay_node_connected", &node), 1);
    assert_eq!(sample(&text, "vigil_relay_node_lost_total", &node), 0);
    // The same numbers `vigil nodes` reads.
    let nodes = RelayAdminClient::new(relay.client().await).list_nodes(ListNodesRequest {}).await.unwrap().into_inner();
    assert_eq!(nodes.events_merged, 25);
    assert_eq!(nodes.nodes.iter().find(|n| n.node_name == "m-node").map(|n| n.events), Some(25));
    assert_eq!(sample(&text, "vigil_relay_history_events", &[]), nodes.history_events);

    assert_eq!(http(&address, "GET", "/healthz").0, 404);
    drop(tx);
}
