//! The query half: the stream into this relay's merge. An ordered
//! consumer (which the client re-creates past gaps and server restarts)
//! reads from about the last `--history-size` events on, so the relay's
//! history holds what it would have held had it taken the sensors itself,
//! and the merge orders, deduplicates and fans out as it does for sensors.
//! Events a sensor sent again in runs cut otherwise than the first time
//! (JetStream's message ids do not match then) are dropped here, by their
//! sequence numbers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::FutureExt as _;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use super::payload::{self, Format};
use super::{Backbone, HEADER_BOOT, HEADER_FIRST_SEQ, HEADER_FORMAT, HEADER_LOST, HEADER_SEQ, HEADER_SOURCE};
use crate::ingest::{MAX_EVENT_BYTES, MergeInput};
use crate::merge::Arrival;
use crate::nodes::Nodes;

/// What the consumer took, for the metrics and the logs.
#[derive(Debug, Default)]
pub struct ConsumeCounters {
    /// Events taken from the stream.
    pub events: AtomicU64,
    /// Messages that were not Vigil's (a header missing or the payload not
    /// its events): skipped.
    pub malformed: AtomicU64,
    /// Events skipped as taken before (a sensor sent them again).
    pub duplicates: AtomicU64,
    /// The stream sequence of the last message taken.
    pub position: AtomicU64,
}

/// Messages read before the merge is handed their events, at most …
const BATCH_MESSAGES: usize = 512;
/// … and events (a message carries a run of them).
const BATCH_EVENTS: usize = 4096;

static MALFORMED_LOG: std::sync::LazyLock<serving::log_limit::LogLimit> =
    std::sync::LazyLock::new(|| serving::log_limit::LogLimit::new(Duration::from_secs(10)));

static RETRY_LOG: std::sync::LazyLock<serving::log_limit::LogLimit> =
    std::sync::LazyLock::new(|| serving::log_limit::LogLimit::new(Duration::from_secs(10)));

/// Feeds the merge from the stream until `stop`. With `count_nodes` (a
/// relay that takes no sensors itself), what it takes of each node shows
/// in `vigil nodes`.
pub async fn run(
    backbone: Backbone,
    nodes: Arc<Nodes>,
    count_nodes: bool,
    merge: mpsc::Sender<MergeInput>,
    history: usize,
    counters: Arc<ConsumeCounters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let prefix = format!("{}.", backbone.settings.subject_prefix);
    let mut taken = Taken::default();
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
            while batch.len() < BATCH_MESSAGES {
                match messages.next().now_or_never() {
                    Some(Some(m)) => batch.push(m),
                    _ => break,
                }
            }
            let mut arrivals = Vec::new();
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
                    Ok(Input::Run { node, boot_id, events }) => {
                        let newest = events.iter().map(|a| a.time_ns).max();
                        let (all, before) = (events.len() as u64, arrivals.len());
                        arrivals.extend(events.into_iter().filter(|a| taken.fresh(a.source, a.seq)));
                        let fresh = (arrivals.len() - before) as u64;
                        counters.duplicates.fetch_add(all - fresh, Ordering::Relaxed);
                        if count_nodes {
                            let now = proto::Timestamp::now().unix_nanos();
                            let lag_ms = newest.map(|t| ((now - t).max(0) / 1_000_000) as u64);
                            nodes.consumed(&node, Some(&boot_id), fresh, all - fresh, 0, lag_ms);
                        }
                    }
                    Ok(Input::Lost { node, count }) => {
                        if count_nodes {
                            nodes.consumed(&node, None, 0, 0, count, None);
                        }
                        // After the events taken before it, in the stream's order.
                        if !hand_over(&merge, &counters.events, std::mem::take(&mut arrivals)).await
                            || merge.send(MergeInput::Lost { node, count }).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(reason) => {
                        let n = counters.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                        if MALFORMED_LOG.hit().is_some() {
                            tracing::warn!(subject = %m.subject, malformed = n, reason, "skipped a message on the backbone that is not Vigil's events");
                        }
                    }
                }
                if arrivals.len() >= BATCH_EVENTS
                    && !hand_over(&merge, &counters.events, std::mem::take(&mut arrivals)).await
                {
                    return;
                }
            }
            if !hand_over(&merge, &counters.events, arrivals).await {
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

/// The stream sequence of its newest message, if the stream answers.
async fn last_sequence(backbone: &Backbone) -> Option<u64> {
    backbone.stream.get_info().await.ok().map(|info| info.state.last_sequence)
}

/// Whether the stream holds events past the last one taken.
async fn behind(backbone: &Backbone, counters: &ConsumeCounters) -> bool {
    last_sequence(backbone).await.is_some_and(|last| last > counters.position.load(Ordering::Relaxed))
}

/// Newest messages sampled for how many events a message carries.
const SAMPLED: u64 = 8;

/// Counts `arrivals` as taken and hands them to the merge; false once the
/// merge is gone.
async fn hand_over(merge: &mpsc::Sender<MergeInput>, taken: &AtomicU64, arrivals: Vec<Arrival>) -> bool {
    if arrivals.is_empty() {
        return true;
    }
    taken.fetch_add(arrivals.len() as u64, Ordering::Relaxed);
    merge.send(MergeInput::Events(arrivals)).await.is_ok()
}

/// Where a query relay starts: about the last `history` events, reckoned
/// from the events per message of the newest few messages.
async fn first_position(backbone: &Backbone, history: usize) -> DeliverPolicy {
    let Some(last) = last_sequence(backbone).await else { return DeliverPolicy::All };
    let (mut messages, mut events) = (0u64, 0u64);
    for seq in (last.saturating_sub(SAMPLED - 1)..=last).filter(|s| *s > 0) {
        let Ok(m) = backbone.stream.get_raw_message(seq).await else { continue };
        let header = |name: &str| super::header_number(&m.headers, name);
        if let (Some(first), Some(last)) = (header(HEADER_FIRST_SEQ), header(HEADER_SEQ)) {
            messages += 1;
            events += last.saturating_sub(first) + 1;
        }
    }
    let per_message = events.checked_div(messages).unwrap_or(1).max(1);
    match last.saturating_sub((history as u64).div_ceil(per_message)) {
        0 => DeliverPolicy::All,
        before => DeliverPolicy::ByStartSequence { start_sequence: before + 1 },
    }
}

/// A message, as the merge takes it.
enum Input {
    /// A run of `node`'s events.
    Run { node: String, boot_id: String, events: Vec<Arrival> },
    /// A loss notice.
    Lost { node: String, count: u64 },
}

/// One message's events; an error names why it is not Vigil's.
fn input_of(m: &async_nats::jetstream::Message, prefix: &str, nodes: &Nodes) -> Result<Input, String> {
    let headers = m.headers.as_ref().ok_or("no headers")?;
    let header = |name: &str| headers.get(name).map(|v| v.as_str());
    let number = |name: &str| super::header_number(headers, name).ok_or(format!("no number in {name}"));
    let node = m.subject.as_str().strip_prefix(prefix).ok_or("a subject outside the prefix")?;
    if header(HEADER_LOST).is_some() {
        return Ok(Input::Lost { node: node.to_owned(), count: number(HEADER_LOST)? });
    }
    let source = number(HEADER_SOURCE)?;
    let (first, last) = (number(HEADER_FIRST_SEQ)?, number(HEADER_SEQ)?);
    let format = Format::from_header(header(HEADER_FORMAT)).ok_or("an unknown Vigil-Format")?;
    let boot_id = header(HEADER_BOOT).ok_or("no Vigil-Boot")?;
    let boot = nodes.boot_number(boot_id);
    let decoded = payload::decode(format, &m.payload, MAX_EVENT_BYTES).map_err(|e| e.to_string())?;
    if last.checked_sub(first).and_then(|d| d.checked_add(1)) != Some(decoded.len() as u64) {
        return Err(format!("{} events where Vigil-First-Seq and Vigil-Seq say {first}..{last}", decoded.len()));
    }
    let events = decoded
        .into_iter()
        .zip(first..)
        .map(|(d, seq)| match d.encoded {
            Some(encoded) => Arrival::with_encoded(boot, source, seq, d.event, encoded),
            None => Arrival::new(boot, source, seq, d.event),
        })
        .collect();
    Ok(Input::Run { node: node.to_owned(), boot_id: boot_id.to_owned(), events })
}

/// Sensor streams whose last event taken is remembered, at most (16 bytes
/// each, and more a few: a stream is a sensor's run, so this many is
/// seen only over many sensor restarts). Past it all are forgotten at
/// once, which only lets a re-send that late through twice.
const SOURCES_REMEMBERED: usize = 65_536;

/// The last event taken of each sensor stream.
#[derive(Default)]
struct Taken {
    last: HashMap<u64, u64>,
}

impl Taken {
    /// Whether `seq` of `source` is past what was taken; if so, remembered.
    fn fresh(&mut self, source: u64, seq: u64) -> bool {
        if let Some(last) = self.last.get_mut(&source) {
            if seq <= *last {
                return false;
            }
            *last = seq;
            return true;
        }
        if self.last.len() >= SOURCES_REMEMBERED {
            tracing::info!(
                sources = SOURCES_REMEMBERED,
                "forgot the last event taken of every sensor stream (too many to remember)"
            );
            self.last.clear();
        }
        self.last.insert(source, seq);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_taken_before_is_not_taken_again_whatever_run_carried_it() {
        let mut taken = Taken::default();
        let fresh: Vec<bool> = [(1, 1), (1, 2), (2, 1), (1, 2), (1, 1), (1, 3), (2, 1), (2, 5)]
            .into_iter()
            .map(|(source, seq)| taken.fresh(source, seq))
            .collect();
        assert_eq!(fresh, [true, true, true, false, false, true, false, true]);
    }
}
