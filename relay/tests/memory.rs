//! Clients that stop reading cannot take the relay's memory: their queues
//! are bounded in bytes, and once they go the memory is given back to the
//! system. Measured on a real relay's RSS, fed by a sensor stream speaking
//! the real ingest protocol. Needs no root.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

#[path = "support/local.rs"]
mod local;

use std::time::{Duration, Instant};

use local::Relay;
use proto::Timestamp;
use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::{GetEventsRequest, GetEventsResponse, Process, ProcessExec};
use proto::vigil::relay::v1::ingest_client::IngestClient;
use proto::vigil::relay::v1::relay_admin_client::RelayAdminClient;
use proto::vigil::relay::v1::{
    Batch, Hello, IngestMessage, ListNodesRequest, ListNodesResponse, SequencedEvent, ingest_message, ingest_reply,
};
use tokio::sync::mpsc;

const MIB: u64 = 1 << 20;
const STALLED: usize = 50;
/// Events sent, each with 32 KiB of arguments: 128 MiB in all.
const EVENTS: u64 = 4000;

fn big_event(i: u64) -> GetEventsResponse {
    GetEventsResponse {
        event: Some(Event::ProcessExec(ProcessExec {
            process: Some(Process {
                exec_id: format!("mem-{i}"),
                binary: "/bin/big".into(),
                arguments: format!("{i} {}", "x".repeat(32 << 10)),
                ..Default::default()
            }),
            ..Default::default()
        })),
        node_name: "mem-node".into(),
        time: Some(Timestamp::now()),
        ..Default::default()
    }
}

async fn nodes(relay: &Relay) -> ListNodesResponse {
    RelayAdminClient::new(relay.client().await).list_nodes(ListNodesRequest {}).await.unwrap().into_inner()
}

/// Polls the relay's admin view until `done` holds (at most 60 s).
async fn until(relay: &Relay, what: &str, done: impl Fn(&ListNodesResponse) -> bool) -> ListNodesResponse {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = nodes(relay).await;
        if done(&n) {
            return n;
        }
        assert!(Instant::now() < deadline, "never {what}: {n:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_bounded_in_bytes_and_give_their_memory_back() {
    let relay = Relay::start(
        "memory",
        &[
            "--history-size",
            "100",
            "--client-queue-mib",
            "8",
            "--reorder-window-ms",
            "5",
            "--idle-timeout-seconds",
            "600",
        ],
    )
    .await;
    let pid = relay.daemon.id();
    let baseline = test_support::rss_bytes(pid);

    // Clients that never read, each on its own connection.
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut client = FineGuidanceSensorsClient::new(relay.client().await);
        stalled.push(client.get_events(GetEventsRequest::default()).await.unwrap().into_inner());
    }
    until(&relay, "all clients subscribed", |n| n.clients == STALLED as u64).await;

    // One sensor stream sends 128 MiB of events.
    let (tx, rx) = mpsc::channel(4);
    let hello = Hello {
        node_name: "mem-node".into(),
        boot_id: "mem-boot".into(),
        sensor_version: "test".into(),
        instance_id: "mem-1".into(),
        replay_buffer_size: EVENTS,
    };
    tx.send(IngestMessage { msg: Some(ingest_message::Msg::Hello(hello)) }).await.unwrap();
    let mut replies = IngestClient::new(relay.sensor().await)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    replies.message().await.unwrap().unwrap();
    for first in (1..=EVENTS).step_by(100) {
        let events =
            (first..first + 100).map(|seq| SequencedEvent { seq, event: Some(Box::new(big_event(seq))) }).collect();
        let batch = Batch { events, lost: 0, skipped: 0 };
        tx.send(IngestMessage { msg: Some(ingest_message::Msg::Batch(batch)) }).await.unwrap();
        let mut ack = replies.message().await.unwrap().and_then(|r| r.msg);
        while let Some(ingest_reply::Msg::Policies(_)) = ack {
            ack = replies.message().await.unwrap().and_then(|r| r.msg);
        }
        assert!(matches!(ack, Some(ingest_reply::Msg::Ack(a)) if a.seq == first + 99), "{ack:?}");
    }
    let full = until(&relay, "merged everything", |n| n.events_merged == EVENTS).await;
    let peak = test_support::rss_bytes(pid);
    // Every stalled queue stopped at its 8 MiB; the rest was dropped for it,
    // counted.
    assert!(full.client_queue_bytes <= STALLED as u64 * 8 * MIB, "{full:?}");
    assert!(full.client_queue_bytes >= STALLED as u64 * 7 * MIB, "queues did not fill: {full:?}");
    assert!(full.client_dropped > 0, "{full:?}");

    drop(stalled);
    until(&relay, "let the clients go", |n| n.clients == 0 && n.client_queue_bytes == 0).await;
    // What they held is given back to the system, not kept by the allocator.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = test_support::rss_bytes(pid);
    while after > baseline + 48 * MIB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = test_support::rss_bytes(pid);
    }
    eprintln!(
        "relay RSS: {} MiB at start, {} MiB with {STALLED} stalled clients, {} MiB after they left",
        baseline / MIB,
        peak / MIB,
        after / MIB
    );
    assert!(peak < baseline + 400 * MIB, "stalled clients took {} MiB", (peak - baseline) / MIB);
    assert!(after <= baseline + 48 * MIB, "kept {} MiB after the clients left", (after - baseline) / MIB);
}
