//! Where merged events go: a bounded history ring and the fan-out bus,
//! updated together so a client that asks for history then live events
//! misses nothing and sees nothing twice.

use std::collections::VecDeque;
use std::sync::Arc;

use events::RequestFilters;
use events::bus::{EventBus, Subscription};
use parking_lot::Mutex;
use proto::shared::{OutEvent, SharedEvent};
use proto::tetragon::GetEventsResponse;

pub struct Hub {
    history: Mutex<History>,
    pub bus: EventBus,
}

/// The newest events, bounded in count and in bytes.
struct History {
    events: VecDeque<(Arc<SharedEvent>, usize)>,
    bytes: usize,
    capacity: usize,
    max_bytes: usize,
}

/// What one event is charged against the byte bound: its encoding, which
/// is kept for sending, as much again for the decoded copy, and the fixed
/// overhead of the decoded message.
pub fn charge(event: &SharedEvent) -> usize {
    2 * event.encoded().len() + 512
}

impl History {
    fn push(&mut self, event: Arc<SharedEvent>) {
        let cost = charge(&event);
        while !self.events.is_empty() && (self.events.len() >= self.capacity || self.bytes + cost > self.max_bytes) {
            if let Some((_, c)) = self.events.pop_front() {
                self.bytes -= c;
            }
        }
        self.bytes += cost;
        self.events.push_back((event, cost));
    }
}

/// Which history a client asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replay {
    /// Events of the last this many seconds (0: none by time).
    pub since_seconds: u64,
    /// At most the last this many matching events (0: no count limit).
    pub last: u64,
}

impl Replay {
    pub fn wanted(&self) -> bool {
        self.since_seconds > 0 || self.last > 0
    }
}

impl Hub {
    /// A hub keeping at most `capacity` events and `max_bytes` of them (see
    /// [`charge`]) for history.
    pub fn new(bus: EventBus, capacity: usize, max_bytes: usize) -> Self {
        let history = History {
            events: VecDeque::with_capacity(capacity.min(1 << 16)),
            bytes: 0,
            capacity: capacity.max(1),
            max_bytes,
        };
        Hub { history: Mutex::new(history), bus }
    }

    pub fn publish(&self, event: GetEventsResponse) {
        self.publish_all(vec![Arc::new(SharedEvent::new(event))]);
    }

    /// Adds events to history and offers them to clients, in order.
    pub fn publish_all(&self, events: Vec<Arc<SharedEvent>>) {
        if events.is_empty() {
            return;
        }
        // History and bus change under one lock: see `subscribe`.
        let mut history = self.history.lock();
        for e in &events {
            history.push(e.clone());
        }
        self.bus.publish_all(events);
    }

    pub fn history_len(&self) -> usize {
        self.history.lock().events.len()
    }

    /// What the history is charged now (see [`charge`]).
    pub fn history_bytes(&self) -> usize {
        self.history.lock().bytes
    }

    /// Matching history (as asked) and a live subscription starting right
    /// after it. A resuming client gets, instead of the history it asked
    /// for, every event in history that it has not had.
    pub fn subscribe(&self, filters: RequestFilters, replay: Replay, now_ns: i128) -> (Vec<OutEvent>, Subscription) {
        let RequestFilters { filter, fields, resume, .. } = &filters;
        let history = self.history.lock();
        let mut past = Vec::new();
        if let Some(gate) = resume {
            past = history
                .events
                .iter()
                .map(|(e, _)| e)
                .filter(|e| filter.matches(e.event()) && gate.wants(e.resume(), e.event()))
                .map(|e| fields.apply_shared(e.clone()))
                .collect();
        } else if replay.wanted() {
            let cutoff = now_ns - i128::from(replay.since_seconds) * 1_000_000_000;
            let in_window =
                |e: &GetEventsResponse| replay.since_seconds == 0 || e.time.is_some_and(|t| t.unix_nanos() >= cutoff);
            past = history
                .events
                .iter()
                .map(|(e, _)| e)
                .rev()
                .filter(|e| in_window(e.event()) && filter.matches(e.event()))
                .take(if replay.last == 0 { usize::MAX } else { replay.last as usize })
                .map(|e| fields.apply_shared(e.clone()))
                .collect();
            past.reverse();
        }
        let sub = self.bus.subscribe(filters);
        (past, sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::tetragon::Filter;

    fn exec(binary: &str, t_s: i64) -> GetEventsResponse {
        test_support::events::exec(binary).at_seconds(t_s).build()
    }

    fn binaries(v: &[OutEvent]) -> Vec<String> {
        v.iter().map(|e| events::subject::process(e.event()).unwrap().binary.clone()).collect()
    }

    #[tokio::test]
    async fn history_then_live_without_gap_or_repeat() {
        let hub = Hub::new(EventBus::new("relay", 16), 3, usize::MAX);
        for (i, b) in ["/a", "/b", "/c", "/d"].iter().enumerate() {
            hub.publish(exec(b, 100 + i as i64));
        }
        let now = 104 * 1_000_000_000;
        let (past, mut sub) = hub.subscribe(RequestFilters::default(), Replay { since_seconds: 0, last: 2 }, now);
        assert_eq!(binaries(&past), vec!["/c", "/d"], "bounded history keeps the newest 3; last 2 of them");
        hub.publish(exec("/e", 105));
        assert_eq!(binaries(&[sub.next().await.unwrap().into()]), vec!["/e"]);

        let (past, _) = hub.subscribe(RequestFilters::default(), Replay { since_seconds: 3, last: 0 }, now);
        assert_eq!(binaries(&past), vec!["/c", "/d", "/e"], "times 102, 103 and 105 are within 3 s of 104");
        let only_d = RequestFilters {
            filter: events::EventFilter::new(
                &[Filter { binary_regex: vec!["^/d$".into()], ..Default::default() }],
                &[],
            )
            .unwrap(),
            ..Default::default()
        };
        let (past, _) = hub.subscribe(only_d, Replay { since_seconds: 3600, last: 0 }, now);
        assert_eq!(binaries(&past), vec!["/d"]);
        let (past, _) = hub.subscribe(RequestFilters::default(), Replay::default(), now);
        assert!(past.is_empty(), "plain clients get live events only");
    }

    #[tokio::test]
    async fn a_resuming_client_gets_from_history_and_live_only_what_it_lacks() {
        use proto::tetragon::{ResumeFrom, ResumePosition, ResumeSource};
        let hub = Hub::new(EventBus::new("relay", 16), 100, usize::MAX);
        let numbered = |binary: &str, seq: u64| {
            let e = Arc::new(SharedEvent::new(exec(binary, 100 + seq as i64)));
            e.set_resume(vec![ResumePosition { source: 1, seq, done_through: seq }]);
            e
        };
        hub.publish_all((1..=4).map(|s| numbered(&format!("/h{s}"), s)).collect());
        let resume = ResumeFrom {
            sources: vec![ResumeSource { source: 1, done_through: 2, also: vec![] }],
            after: Some(proto::Timestamp::from_unix_nanos(102 * 1_000_000_000)),
        };
        let filters = RequestFilters {
            resume: events::resume::ResumeGate::compile(Some(&resume)).unwrap(),
            ..Default::default()
        };
        // since/last are ignored when resuming.
        let (past, mut sub) = hub.subscribe(filters, Replay { since_seconds: 0, last: 1 }, 0);
        assert_eq!(binaries(&past), vec!["/h3", "/h4"]);
        // Live: a re-sent copy of what it had is not sent again.
        hub.publish_all(vec![numbered("/again", 2), numbered("/h5", 5)]);
        assert_eq!(binaries(&[sub.next().await.unwrap().into()]), vec!["/h5"]);
    }

    #[test]
    fn history_is_bounded_in_bytes_too() {
        let one = charge(&SharedEvent::new(exec("/a", 1)));
        let hub = Hub::new(EventBus::new("relay", 16), 1000, 3 * one);
        for (i, b) in ["/a", "/b", "/c", "/d"].iter().enumerate() {
            hub.publish(exec(b, i as i64));
        }
        assert_eq!((hub.history_len(), hub.history_bytes()), (3, 3 * one), "the oldest left for the bytes");
        // A large event pushes out as many as it needs.
        let mut big = exec("/big", 9);
        if let Some(proto::tetragon::get_events_response::Event::ProcessExec(x)) = big.event.as_mut() {
            x.process.as_mut().unwrap().arguments = "x".repeat(one);
        }
        hub.publish(big);
        assert_eq!(hub.history_len(), 1, "only the big one fits");
        assert!(hub.history_bytes() > 2 * one);
    }
}
