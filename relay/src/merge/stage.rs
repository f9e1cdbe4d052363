//! The merge stage: one task that takes ingest batches, runs them through
//! the [`Merger`], and hands what leaves it to the hub (history and
//! clients), flushing on a short tick so events leave as their window ends.

use std::sync::Arc;
use std::time::Duration;

use proto::Timestamp;
use proto::tetragon::{GetEventsResponse, RateLimitInfo, get_events_response::Event};
use tokio::sync::{mpsc, watch};

use super::{MergeCounters, Merger};
use crate::hub::Hub;
use crate::ingest::MergeInput;

/// Ingest batches waiting for the merge task; sensors wait when it is full.
pub const QUEUE: usize = 64;
/// How often events whose window has passed are flushed.
const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// Dedup keys remembered (of waiting and already merged events).
const SEEN_KEYS: usize = 1 << 20;

/// How the stage orders and bounds.
#[derive(Debug, Clone, Copy)]
pub struct MergeSettings {
    pub reorder_window: Duration,
    pub max_pending: usize,
    pub max_pending_bytes: usize,
}

/// Runs until `rx` closes or `stop` turns true, then sends what still waits.
pub async fn run(
    mut rx: mpsc::Receiver<MergeInput>,
    hub: Arc<Hub>,
    settings: MergeSettings,
    counters: Arc<MergeCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut merger = Merger::new(settings.reorder_window, settings.max_pending, settings.max_pending_bytes, SEEN_KEYS);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let mut out = Vec::new();
    let publish = |out: &mut Vec<_>, merger: &Merger| {
        counters.record(merger);
        hub.publish_all(std::mem::take(out));
    };
    loop {
        tokio::select! {
            input = rx.recv() => match input {
                Some(MergeInput::Events(events)) => {
                    let now = Timestamp::now().unix_nanos();
                    for e in events {
                        merger.push(e, now, &mut out);
                    }
                    publish(&mut out, &merger);
                }
                Some(MergeInput::Lost { node, count }) => hub.publish(GetEventsResponse {
                    event: Some(Event::RateLimitInfo(RateLimitInfo { number_of_dropped_process_events: count })),
                    node_name: node,
                    time: Some(Timestamp::now()),
                    ..Default::default()
                }),
                None => break,
            },
            _ = tick.tick() => {
                merger.flush(Timestamp::now().unix_nanos(), &mut out);
                publish(&mut out, &merger);
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    merger.drain(&mut out);
    publish(&mut out, &merger);
}
