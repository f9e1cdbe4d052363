//! The query half: the stream into this relay's merge. An ordered
//! consumer (which the client re-creates past gaps and server restarts)
//! reads from the last `--history-size` messages on, so the relay's
//! history holds what it would have held had it taken the sensors itself,
//! and the merge orders, deduplicates and fans out as it does for sensors.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::FutureExt as _;
use prost::Message as _;
use proto::tetragon::GetEventsResponse;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use super::{Backbone, HEADER_BOOT, HEADER_LOST, HEADER_SEQ, HEADER_SOURCE};
use crate::ingest::{MAX_EVENT_BYTES, MergeInput};
use crate::merge::Arrival;
use crate::nodes::Nodes;

/// What the consumer took, for the metrics and the logs.
#[derive(Debug, Default)]
pub struct ConsumeCounters {
    /// Events taken from the stream.
    pub events: AtomicU64,
    /// Messages that were not Vigil's (a header missing or the payload not
    /// an event): skipped.
    pub malformed: AtomicU64,
    /// The stream sequence of the last message taken.
    pub position: AtomicU64,
}

/// Messages handed to the merge at once at most.
const BATCH: usize = 512;

static MALFORMED_LOG: std::sync::LazyLock<serving::log_limit::LogLimit> =
    std::sync::LazyLock::new(|| serving::log_limit::LogLimit::new(Duration::from_secs(10)));

static RETRY_LOG: std::sync::LazyLock<serving::log_limit::LogLimit> =
    std::sync::LazyLock::new(|| serving::log_limit::LogLimit::new(Duration::from_secs(10)));

/// Feeds the merge from the stream until `stop`.
pub async fn run(
    backbone: Backbone,
    nodes: Arc<Nodes>,
    merge: mpsc::Sender<MergeInput>,
    history: usize,
    counters: Arc<ConsumeCounters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let prefix = format!("{}.", backbone.settings.subject_prefix);
    loop {
        let start = match counters.position.load(Ordering::Relaxed) {
            0 => first_position(&backbone, history).await,
            taken => DeliverPolicy::ByStartSequence { start_sequence: taken + 1 },
        };
        let config = pull::OrderedConfig {
            filter_subject: format!("{prefix}>"),
            deliver_policy: start,
            // Pulls of 5 s: a lost consumer (its server restarted) is
            // noticed by the missed heartbeats within seconds.
            max_expires: Duration::from_secs(5),
            ..Default::default()
        };
        let messages = match backbone.stream.create_consumer(config).await {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                if let Some(n) = RETRY_LOG.hit() {
                    tracing::warn!(error = %e, tries = n, "reading the backbone's stream failed; trying again every second");
                }
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let first = tokio::select! {
                _ = stop.changed() => return,
                m = messages.next() => m,
                () = tokio::time::sleep(STALL_CHECK) => {
                    // Nothing for a while: fine if the stream has nothing
                    // newer; else the consumer is stuck (its server went,
                    // and the client did not make it again): made again.
                    if behind(&backbone, &counters).await {
                        tracing::warn!(position = counters.position.load(Ordering::Relaxed), "the backbone's stream has events this relay is not getting; reading on from the last event taken");
                        break;
                    }
                    continue;
                }
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match messages.next().now_or_never() {
                    Some(Some(m)) => batch.push(m),
                    _ => break,
                }
            }
            let mut arrivals = Vec::with_capacity(batch.len());
            let mut broken = false;
            for m in batch {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        // The consumer is gone or stuck: made again from
                        // the last message taken.
                        if let Some(n) = RETRY_LOG.hit() {
                            tracing::warn!(error = %e, times = n, "reading the backbone's stream failed; reading on from the last event taken");
                        }
                        broken = true;
                        break;
                    }
                };
                if let Ok(info) = m.info() {
                    counters.position.store(info.stream_sequence, Ordering::Relaxed);
                }
                match input_of(&m, &prefix, &nodes) {
                    Some(MergeInput::Events(mut one)) => arrivals.append(&mut one),
                    Some(lost @ MergeInput::Lost { .. }) => {
                        if merge.send(lost).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        let n = counters.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                        if MALFORMED_LOG.hit().is_some() {
                            tracing::warn!(subject = %m.subject, malformed = n, "skipped a message on the backbone that is not a Vigil event");
                        }
                    }
                }
            }
            counters.events.fetch_add(arrivals.len() as u64, Ordering::Relaxed);
            if !arrivals.is_empty() && merge.send(MergeInput::Events(arrivals)).await.is_err() {
                return;
            }
            if broken {
                break;
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// How long the consumer may go without a message before the stream is
/// asked whether it has newer ones.
const STALL_CHECK: Duration = Duration::from_secs(5);

/// Whether the stream holds events past the last one taken.
async fn behind(backbone: &Backbone, counters: &ConsumeCounters) -> bool {
    let mut stream = backbone.stream.clone();
    match stream.info().await {
        Ok(info) => info.state.last_sequence > counters.position.load(Ordering::Relaxed),
        Err(_) => false,
    }
}

/// Where a query relay starts: the last `history` messages.
async fn first_position(backbone: &Backbone, history: usize) -> DeliverPolicy {
    let mut stream = backbone.stream.clone();
    let last = match stream.info().await {
        Ok(info) => info.state.last_sequence,
        Err(_) => 0,
    };
    match last.saturating_sub(history as u64) {
        0 => DeliverPolicy::All,
        before => DeliverPolicy::ByStartSequence { start_sequence: before + 1 },
    }
}

/// One message as the merge takes it; `None` if it is not a Vigil event.
fn input_of(m: &async_nats::jetstream::Message, prefix: &str, nodes: &Nodes) -> Option<MergeInput> {
    let headers = m.headers.as_ref()?;
    let header = |name: &str| headers.get(name).map(|v| v.as_str());
    let node = m.subject.as_str().strip_prefix(prefix)?;
    if let Some(lost) = header(HEADER_LOST) {
        return Some(MergeInput::Lost { node: node.to_owned(), count: lost.parse().ok()? });
    }
    let source: u64 = header(HEADER_SOURCE)?.parse().ok()?;
    let seq: u64 = header(HEADER_SEQ)?.parse().ok()?;
    let boot = nodes.boot_number(header(HEADER_BOOT)?);
    if m.payload.len() > MAX_EVENT_BYTES {
        return None;
    }
    let event = GetEventsResponse::decode(m.payload.clone()).ok()?;
    event.event.as_ref()?;
    Some(MergeInput::Events(vec![Arrival::new(boot, source, seq, Box::new(event))]))
}
