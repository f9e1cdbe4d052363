//! Fan-out of events to subscribers. Each subscriber has its own filter and
//! a bounded queue: when the queue is full its events are dropped and
//! counted, and the count reaches it as a `rate_limit_info` event before the
//! next event it gets. A slow subscriber never blocks the sensor or others.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use std::task::{Context, Poll};

use crate::fields::FieldFilters;
use crate::filter::EventFilter;
use crate::resume::ResumeGate;
use proto::shared::{OutEvent, SharedEvent};
use proto::tetragon::{GetEventsResponse, RateLimitInfo, get_events_response::Event};
use tokio::sync::mpsc;
use tokio_stream::Stream;

struct Subscriber {
    filter: EventFilter,
    /// For a resuming client: what it already has, not sent again.
    resume: Option<ResumeGate>,
    tx: mpsc::Sender<Arc<SharedEvent>>,
    dropped: Arc<AtomicU64>,
    /// Bytes its queue holds, for a client bounded in bytes.
    queued: Option<Arc<AtomicUsize>>,
    /// A client's name and the bus's number for its stream (none for an
    /// in-process consumer).
    client: Option<(String, u64)>,
}

/// One client's queue, for per-client metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientQueue {
    /// The peer's address, or `local` (a unix socket).
    pub client: String,
    /// The bus's number for the stream (several may share a peer).
    pub stream: u64,
    pub queued_events: usize,
    pub queued_bytes: usize,
    pub dropped: u64,
}

/// How many bytes client queues may hold: each one, and all together. Past
/// the total, only clients that are behind (a queue not empty) lose events,
/// so one that keeps up is never cut for others' backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBytes {
    pub per_client: usize,
    pub total: usize,
}

/// What a queued event is charged: the bytes it is sent as, and the queue
/// slot and bookkeeping around it.
pub fn queue_charge(event: &SharedEvent) -> usize {
    event.wire_len() + 256
}

/// Totals across subscribers, for health and logs.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Subscriptions ever made (numbers them).
    pub streams: AtomicU64,
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(Clone)]
pub struct EventBus {
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
    queue_size: usize,
    queue_bytes: Option<QueueBytes>,
    node_name: Arc<str>,
    pub stats: Arc<BusStats>,
}

/// The receiving end handed to a gRPC stream. As a [`Stream`] it yields
/// [`OutEvent`]s: events shared with the other subscribers (encoded once for
/// all of them) unless this subscriber's field filters make its own copy.
pub struct Subscription {
    rx: mpsc::Receiver<Arc<SharedEvent>>,
    dropped: Arc<AtomicU64>,
    fields: FieldFilters,
    node_name: Arc<str>,
    /// An event held back while its preceding loss notice is delivered.
    pending: Option<Arc<SharedEvent>>,
    /// The bytes this queue holds, given back as events are taken. (The
    /// bus sums them for the total: no counter shared by every client.)
    queued: Option<Arc<AtomicUsize>>,
}

impl Subscription {
    /// `first` (e.g. history), then this subscription's events.
    pub fn into_stream(self, first: Vec<OutEvent>) -> impl Stream<Item = OutEvent> + Send + 'static {
        use tokio_stream::StreamExt;
        tokio_stream::iter(first).chain(self)
    }

    fn loss_notice(&self) -> Option<OutEvent> {
        // A plain load first: the swap (a locked instruction) only when
        // something was dropped.
        if self.dropped.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let n = self.dropped.swap(0, Ordering::Relaxed);
        (n > 0).then(|| {
            OutEvent::from(GetEventsResponse {
                event: Some(Event::RateLimitInfo(RateLimitInfo { number_of_dropped_process_events: n })),
                node_name: self.node_name.to_string(),
                time: Some(proto::Timestamp::now()),
                ..Default::default()
            })
        })
    }

    fn out(&self, event: Arc<SharedEvent>) -> OutEvent {
        if let Some(mine) = &self.queued {
            mine.fetch_sub(queue_charge(&event), Ordering::Relaxed);
        }
        self.fields.apply_shared(event)
    }

    /// The next event for this subscriber as its own value (for in-process
    /// consumers), a loss notice first if any of its events were dropped
    /// since the last one. `None` when the bus is gone.
    pub async fn next(&mut self) -> Option<GetEventsResponse> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await.map(OutEvent::into_event)
    }
}

impl Stream for Subscription {
    type Item = OutEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<OutEvent>> {
        let this = self.get_mut();
        if let Some(notice) = this.loss_notice() {
            return Poll::Ready(Some(notice));
        }
        let event = match this.pending.take() {
            Some(e) => return Poll::Ready(Some(this.out(e))),
            None => match this.rx.poll_recv(cx) {
                Poll::Ready(Some(e)) => e,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            },
        };
        // Drops that happened while we waited are reported first.
        if let Some(notice) = this.loss_notice() {
            this.pending = Some(event);
            return Poll::Ready(Some(notice));
        }
        Poll::Ready(Some(this.out(event)))
    }
}

impl EventBus {
    pub fn new(node_name: &str, queue_size: usize) -> Self {
        EventBus {
            subscribers: Arc::default(),
            queue_size: queue_size.max(1),
            queue_bytes: None,
            node_name: node_name.into(),
            stats: Arc::default(),
        }
    }

    /// Bounds the queues of clients ([`Self::subscribe`]) in bytes too.
    pub fn with_queue_bytes(mut self, limits: QueueBytes) -> Self {
        self.queue_bytes = Some(limits);
        self
    }

    /// A client's subscription: its queue bounded in events and, if the bus
    /// says so, in bytes.
    pub fn subscribe(&self, filters: crate::RequestFilters) -> Subscription {
        self.add(filters, true)
    }

    /// The node name on the bus's own notices.
    pub fn node(&self) -> &str {
        &self.node_name
    }

    /// An in-process consumer's subscription (export file, relay uplink),
    /// bounded in events only: it costs no encoding to count.
    pub fn subscribe_internal(&self, filters: crate::RequestFilters) -> Subscription {
        self.add(filters, false)
    }

    fn add(&self, filters: crate::RequestFilters, is_client: bool) -> Subscription {
        let bytes = is_client && self.queue_bytes.is_some();
        let crate::RequestFilters { filter, fields, resume, client } = filters;
        let (tx, rx) = mpsc::channel(self.queue_size);
        let dropped = Arc::new(AtomicU64::new(0));
        let queued = bytes.then(|| Arc::new(AtomicUsize::new(0)));
        let stream = self.stats.streams.fetch_add(1, Ordering::Relaxed) + 1;
        self.subscribers.lock().push(Subscriber {
            filter,
            resume,
            tx,
            dropped: dropped.clone(),
            queued: queued.clone(),
            client: is_client.then(|| (client.unwrap_or_else(|| "local".into()), stream)),
        });
        Subscription { rx, dropped, fields, node_name: self.node_name.clone(), pending: None, queued }
    }

    /// Bytes queued for byte-bounded subscribers now (see [`queue_charge`]).
    pub fn queued_bytes(&self) -> usize {
        let subs = self.subscribers.lock();
        // A gone client's bytes are freed with it on the next publish.
        subs.iter()
            .filter(|s| !s.tx.is_closed())
            .filter_map(|s| s.queued.as_ref())
            .map(|q| q.load(Ordering::Relaxed))
            .sum()
    }

    /// Ends every subscription once it has taken what is queued for it (at
    /// shutdown, so writers such as the export file finish their queue).
    /// Later subscribers are served as usual.
    pub fn close(&self) {
        self.subscribers.lock().clear();
    }

    /// The clients' queues (not in-process consumers'), fullest first, at
    /// most `max` of them.
    pub fn client_queues(&self, max: usize) -> Vec<ClientQueue> {
        let mut out: Vec<ClientQueue> = self
            .subscribers
            .lock()
            .iter()
            .filter(|s| !s.tx.is_closed())
            .filter_map(|s| {
                let (client, stream) = s.client.clone()?;
                Some(ClientQueue {
                    client,
                    stream,
                    queued_events: s.tx.max_capacity() - s.tx.capacity(),
                    queued_bytes: s.queued.as_ref().map_or(0, |q| q.load(Ordering::Relaxed)),
                    dropped: s.dropped.load(Ordering::Relaxed),
                })
            })
            .collect();
        out.sort_by(|a, b| b.queued_bytes.cmp(&a.queued_bytes).then(a.stream.cmp(&b.stream)));
        out.truncate(max);
        out
    }

    /// `GetEvents` clients now (subscribers but the in-process ones).
    pub fn client_count(&self) -> usize {
        self.subscribers.lock().iter().filter(|s| s.client.is_some() && !s.tx.is_closed()).count()
    }

    pub fn subscriber_count(&self) -> usize {
        // Closed ones are removed on the next publish; not counted meanwhile.
        self.subscribers.lock().iter().filter(|s| !s.tx.is_closed()).count()
    }

    /// Offers the event to every subscriber whose filter passes it.
    pub fn publish(&self, event: GetEventsResponse) {
        self.publish_shared(Arc::new(SharedEvent::new(event)));
    }

    /// Like `publish`, for an event the caller also keeps (no copy).
    pub fn publish_shared(&self, event: Arc<SharedEvent>) {
        self.publish_all(std::iter::once(event));
    }

    /// Publishes several events in order, taking the subscriber list once.
    pub fn publish_all(&self, events: impl IntoIterator<Item = Arc<SharedEvent>>) {
        // parking_lot: no poisoning, so a panic elsewhere cannot make the
        // bus drop every event or register subscribers that never receive.
        let mut subs = self.subscribers.lock();
        let (mut published, mut delivered, mut dropped) = (0, 0, 0);
        // All byte-bounded queues together, kept up to date below as events
        // are queued (clients only ever take some out meanwhile).
        let mut all: usize = match self.queue_bytes {
            Some(_) => subs
                .iter()
                .filter(|s| !s.tx.is_closed())
                .filter_map(|s| s.queued.as_ref())
                .map(|q| q.load(Ordering::Relaxed))
                .sum(),
            None => 0,
        };
        for event in events {
            published += 1;
            // Loss notices reach every subscriber: filters select events,
            // they must not hide that events were lost.
            let notice = matches!(event.event().event, Some(Event::RateLimitInfo(_)));
            // Its charge, worked out once for all byte-bounded subscribers.
            let mut charge = None;
            for s in subs.iter() {
                if !notice && !s.filter.matches(event.event()) {
                    continue;
                }
                if s.resume.as_ref().is_some_and(|g| !g.wants(event.resume(), event.event())) {
                    continue;
                }
                let charged = match (&s.queued, self.queue_bytes) {
                    (Some(mine), Some(limits)) => {
                        let c = *charge.get_or_insert_with(|| queue_charge(&event));
                        let held = mine.load(Ordering::Relaxed);
                        if held + c > limits.per_client || (held > 0 && all + c > limits.total) {
                            s.dropped.fetch_add(1, Ordering::Relaxed);
                            dropped += 1;
                            continue;
                        }
                        // Charged before it can be taken (and given back).
                        mine.fetch_add(c, Ordering::Relaxed);
                        all += c;
                        Some((mine, c))
                    }
                    _ => None,
                };
                let sent = s.tx.try_send(event.clone());
                if sent.is_err()
                    && let Some((mine, c)) = charged
                {
                    mine.fetch_sub(c, Ordering::Relaxed);
                    all -= c;
                }
                match sent {
                    Ok(()) => delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        s.dropped.fetch_add(1, Ordering::Relaxed);
                        dropped += 1;
                    }
                    // Removed below.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        subs.retain(|s| !s.tx.is_closed());
        self.stats.published.fetch_add(published, Ordering::Relaxed);
        self.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
        self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::tetragon::Filter;

    fn exec(binary: &str) -> GetEventsResponse {
        test_support::events::exec(binary).build()
    }

    fn binary(e: &GetEventsResponse) -> &str {
        crate::subject::process(e).map_or("", |p| p.binary.as_str())
    }

    #[tokio::test]
    async fn close_ends_subscriptions_after_their_queue() {
        let bus = EventBus::new("n", 8);
        let mut sub = bus.subscribe(crate::RequestFilters::default());
        bus.publish(exec("/a"));
        bus.publish(exec("/b"));
        bus.close();
        bus.publish(exec("/after"));
        assert_eq!(binary(&sub.next().await.unwrap()), "/a");
        assert_eq!(binary(&sub.next().await.unwrap()), "/b");
        assert!(sub.next().await.is_none(), "ended once its queue was taken");
    }

    #[tokio::test]
    async fn slow_subscriber_loses_counted_events_and_others_do_not() {
        let bus = EventBus::new("n", 2);
        let mut slow = bus.subscribe(crate::RequestFilters::default());
        let mut only_b = bus.subscribe(crate::RequestFilters {
            filter: EventFilter::new(&[Filter { binary_regex: vec!["^/b".into()], ..Default::default() }], &[])
                .unwrap(),
            fields: FieldFilters::default(),
            resume: None,
            client: Some("10.0.0.9:5000".into()),
        });
        for b in ["/a1", "/a2", "/a3", "/b1", "/a4"] {
            bus.publish(exec(b));
        }
        // Each client's queue, fullest first (in events here: the bus is
        // not bounded in bytes).
        let queues: Vec<(String, usize, u64)> =
            bus.client_queues(10).into_iter().map(|q| (q.client, q.queued_events, q.dropped)).collect();
        assert_eq!(queues, vec![("local".to_owned(), 2, 3), ("10.0.0.9:5000".to_owned(), 1, 0)]);
        assert_eq!(bus.client_queues(1).len(), 1, "at most as many as asked");
        let _export = bus.subscribe_internal(crate::RequestFilters::default());
        assert_eq!((bus.client_count(), bus.subscriber_count()), (2, 3), "an in-process consumer is no client");
        drop(_export);
        // slow queued the first two and lost three; the loss is reported
        // before anything else it reads, then the queued events follow.
        let notice = slow.next().await.unwrap();
        assert!(
            matches!(notice.event, Some(Event::RateLimitInfo(RateLimitInfo { number_of_dropped_process_events: 3 }))),
            "{notice:?}"
        );
        assert_eq!(notice.node_name, "n");
        assert_eq!(binary(&slow.next().await.unwrap()), "/a1");
        assert_eq!(binary(&slow.next().await.unwrap()), "/a2");
        // later drops are reported again, in order
        bus.publish(exec("/a5"));
        bus.publish(exec("/a6"));
        bus.publish(exec("/a7"));
        let notice = slow.next().await.unwrap();
        assert!(
            matches!(notice.event, Some(Event::RateLimitInfo(RateLimitInfo { number_of_dropped_process_events: 1 }))),
            "{notice:?}"
        );
        assert_eq!(binary(&slow.next().await.unwrap()), "/a5");
        assert_eq!(binary(&slow.next().await.unwrap()), "/a6");
        // the filtered subscriber lost nothing
        assert_eq!(binary(&only_b.next().await.unwrap()), "/b1");
        assert_eq!(bus.stats.dropped.load(Ordering::Relaxed), 4);
        assert_eq!(bus.stats.delivered.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn client_queues_are_bounded_in_bytes_and_give_them_back() {
        let one = queue_charge(&SharedEvent::new(exec("/a0")));
        let bus = EventBus::new("n", 1000).with_queue_bytes(QueueBytes { per_client: 2 * one, total: 3 * one });
        let mut slow = bus.subscribe(crate::RequestFilters::default());
        let mut other = bus.subscribe(crate::RequestFilters::default());
        let internal = bus.subscribe_internal(crate::RequestFilters::default());
        for i in 0..3 {
            bus.publish(exec(&format!("/a{i}")));
        }
        // slow: /a0 and /a1 (its own bound), /a2 lost; other: /a0, then
        // the total is reached and other, being behind, lost /a1 and /a2.
        // The internal subscription is bounded in events only.
        assert_eq!(bus.queued_bytes(), 3 * one);
        assert_eq!(bus.stats.dropped.load(Ordering::Relaxed), 3);
        assert!(matches!(other.next().await.unwrap().event, Some(Event::RateLimitInfo(_))));
        assert_eq!(binary(&other.next().await.unwrap()), "/a0");
        assert_eq!(bus.queued_bytes(), 2 * one, "taken events give their bytes back");
        // Past the total, a client that keeps up (its queue empty) still
        // gets events; only one that is behind loses them.
        bus.publish(exec("/a3"));
        bus.publish(exec("/a4"));
        // /a4 came when other was behind again (holding /a3): cut, and
        // the loss is reported first.
        assert!(matches!(other.next().await.unwrap().event, Some(Event::RateLimitInfo(_))));
        assert_eq!(binary(&other.next().await.unwrap()), "/a3");
        assert!(matches!(slow.next().await.unwrap().event, Some(Event::RateLimitInfo(_))));
        assert_eq!(binary(&slow.next().await.unwrap()), "/a0");
        drop(slow);
        assert_eq!(bus.queued_bytes(), 0, "a client that goes gives its bytes back");
        drop(internal);
    }

    #[tokio::test]
    async fn closed_subscribers_are_removed() {
        let bus = EventBus::new("n", 4);
        let sub = bus.subscribe(crate::RequestFilters::default());
        assert_eq!(bus.subscriber_count(), 1);
        drop(sub);
        assert_eq!(bus.subscriber_count(), 0, "a closed subscriber is not counted");
        bus.publish(exec("/x"));
        assert_eq!(bus.subscribers.lock().len(), 0, "and removed on the next publish");
    }
}
