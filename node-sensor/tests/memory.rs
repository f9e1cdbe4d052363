//! GetEvents clients that stop reading cannot take the sensor's memory:
//! their queues are bounded in bytes, and once they go the memory is given
//! back to the system. Real sensor, real kernel events (root).
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::Sensor;
use proto::tetragon::GetEventsRequest;

const MIB: u64 = 1 << 20;
const STALLED: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_bounded_in_bytes_and_give_their_memory_back() {
    require_kernel!();
    let sensor = Sensor::start(&["--subscriber-queue-mib", "4"]).await;
    let pid = sensor.pid();
    let baseline = test_support::rss_bytes(pid);
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(sensor.client().await.get_events(GetEventsRequest::default()).await.unwrap().into_inner());
    }
    // The export file is a subscriber too.
    sensor.wait_counter("subscribers", |n| n == STALLED as u64 + 1).await;
    // Execs with 4 KiB of arguments until every stalled queue is full.
    let marker = format!("mem-{}", common::nonce());
    let arg = "y".repeat(4000);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", &format!("i=0; while [ $i -lt 200 ]; do /bin/true {marker} {arg}; i=$((i+1)); done")])
            .status()
            .unwrap();
        assert!(status.success());
        // Full: the queues hold most of their bound and events are cut.
        let queued = sensor.health_counter("subscriber_queue_bytes").await.unwrap();
        let dropped = sensor.health_counter("subscriber_dropped").await.unwrap();
        if queued >= STALLED as u64 * 3 * MIB && dropped > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "queues never filled: {queued} bytes, {dropped} dropped");
    }
    let peak = test_support::rss_bytes(pid);
    let queued = sensor.health_counter("subscriber_queue_bytes").await.unwrap();
    assert!(queued <= STALLED as u64 * 4 * MIB, "{queued} bytes queued past the bound");

    drop(stalled);
    sensor.wait_counter("subscribers", |n| n == 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = test_support::rss_bytes(pid);
    while after > baseline + 32 * MIB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = test_support::rss_bytes(pid);
    }
    eprintln!(
        "sensor RSS: {} MiB at start, {} MiB with {STALLED} stalled clients, {} MiB after they left",
        baseline / MIB,
        peak / MIB,
        after / MIB
    );
    assert!(after <= baseline + 32 * MIB, "kept {} MiB after the clients left", (after - baseline) / MIB);
}
