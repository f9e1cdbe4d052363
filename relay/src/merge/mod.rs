//! Time-ordered merge with deduplication. Events wait up to the reorder
//! window, then leave in event-time order (an event stamped in the future
//! counts from its arrival instead). Copies of one event from
//! sensors sharing a kernel (same boot id, process start time, pid and
//! kind, and for a policy's events the same policy and hook) collapse into
//! the richest copy (pod metadata beats none); a copy arriving after its
//! twin left is dropped by a bounded memory of keys.
//!
//! A key names an event only up to its occurrence: a process hits a
//! policy's hook many times, each hit with the same key. So a copy is
//! only ever taken from another sensor: the n-th event of a key from one
//! stream collapses into the first instance of that key no event of its
//! stream has joined yet. One sensor's events never collapse into each
//! other (its replays are dropped by sequence before the merge).

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

pub mod stage;

use base64::Engine as _;
use proto::shared::SharedEvent;
use proto::tetragon::{GetEventsResponse, ResumePosition};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

/// Identity of an event across sensors sharing one kernel. `boot` is the
/// relay's number for the kernel's boot id (see `Nodes::boot_number`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DedupKey {
    pub boot: u64,
    pub ktime: u64,
    pub pid: u32,
    pub kind: i32,
    /// For a policy's events, a hash of the policy and the hook (0 for
    /// process events): another policy's hit is never a copy.
    pub hook: u64,
}

/// The longest exec_id decoded without allocating; longer ones (node names
/// near DNS's 253-character limit) still fit.
const EXEC_ID_MAX: usize = 384;

/// (ktime, pid) from an exec_id (`base64("node:ktime:pid")`); the node part
/// differs between sensors and is ignored.
pub fn exec_id_parts(exec_id: &str) -> Option<(u64, u32)> {
    let mut raw = [0u8; EXEC_ID_MAX];
    let n = base64::engine::general_purpose::STANDARD.decode_slice(exec_id, &mut raw).ok()?;
    let text = std::str::from_utf8(&raw[..n]).ok()?;
    let mut parts = text.rsplitn(3, ':');
    let pid = parts.next()?.parse().ok()?;
    let ktime = parts.next()?.parse().ok()?;
    Some((ktime, pid))
}

pub fn dedup_key(boot: u64, event: &GetEventsResponse) -> Option<DedupKey> {
    let process = events::subject::process(event)?;
    let (ktime, pid) = exec_id_parts(&process.exec_id)?;
    Some(DedupKey { boot, ktime, pid, kind: event.event_type() as i32, hook: hook_of(event) })
}

/// The policy and hook a policy's event came from, hashed (0 otherwise).
fn hook_of(event: &GetEventsResponse) -> u64 {
    use proto::tetragon::get_events_response::Event;
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    match &event.event {
        Some(Event::ProcessKprobe(k)) => (&k.policy_name, &k.function_name).hash(&mut h),
        Some(Event::ProcessTracepoint(t)) => (&t.policy_name, &t.subsys, &t.event).hash(&mut h),
        Some(Event::ProcessUprobe(u)) => (&u.policy_name, &u.path, &u.symbol).hash(&mut h),
        Some(Event::ProcessLsm(l)) => (&l.policy_name, &l.function_name).hash(&mut h),
        _ => return 0,
    }
    h.finish()
}

/// More metadata wins: a pod, then a container id.
fn richness(event: &GetEventsResponse) -> u8 {
    events::subject::process(event).map_or(0, |p| if p.pod.is_some() { 2 } else { u8::from(!p.docker.is_empty()) })
}

/// An event on its way into the merge, with what the merge needs worked out
/// beforehand (by the ingest task that received it, off the merge's thread).
pub struct Arrival {
    pub event: Arc<SharedEvent>,
    pub time_ns: i128,
    pub key: Option<DedupKey>,
    pub richness: u8,
    /// The sensor stream (see [`events::resume::source_id`]) and the
    /// event's sequence number in it.
    pub source: u64,
    pub seq: u64,
}

impl Arrival {
    pub fn new(boot: u64, source: u64, seq: u64, mut event: Box<GetEventsResponse>) -> Self {
        // Positions are the relay's to set, when the event leaves the merge.
        event.resume.clear();
        Self::of_shared(boot, source, seq, SharedEvent::from_box(event))
    }

    /// An event read with its encoding (from the backbone), which the
    /// relay's clients are then sent as it is.
    pub fn with_encoded(
        boot: u64,
        source: u64,
        seq: u64,
        event: Box<GetEventsResponse>,
        encoded: bytes::Bytes,
    ) -> Self {
        debug_assert!(event.resume.is_empty());
        Self::of_shared(boot, source, seq, SharedEvent::with_encoded(event, encoded))
    }

    fn of_shared(boot: u64, source: u64, seq: u64, event: SharedEvent) -> Self {
        let time_ns = event.event().time.map_or(0, |t| t.unix_nanos());
        let key = dedup_key(boot, event.event());
        let richness = richness(event.event());
        Arrival { event: Arc::new(event), time_ns, key, richness, source, seq }
    }
}

/// A waiting event, found by its arrival number.
struct Slot {
    event: Arc<SharedEvent>,
    /// What it is charged against the pending bytes.
    charge: usize,
    key: Option<DedupKey>,
    source: u64,
    seq: u64,
    /// (source, seq) of copies collapsed into this event (`event` may be
    /// one of them, the richest; `source` and `seq` are the first's).
    copies: Vec<(u64, u64)>,
}

/// One sensor stream's events in the merge, for the `done_through` of
/// resume positions: every event of the stream up to that number has left.
#[derive(Debug, Default)]
struct StreamProgress {
    /// Sequence numbers waiting, in arrival (= sequence) order, and whether
    /// each has left already (events leave in time order, not number order).
    waiting: VecDeque<(u64, bool)>,
    /// The highest number taken (waiting, or dropped as a copy).
    taken: u64,
}

impl StreamProgress {
    fn done_through(&self) -> u64 {
        self.waiting.front().map_or(self.taken, |(seq, _)| seq.saturating_sub(1))
    }
}

/// One event of a key: waiting (with the arrival number and richness of
/// the copy that stands for it) or sent, and the streams it came from.
#[derive(Debug, Clone)]
struct Instance {
    id: u64,
    richness: u8,
    sent: bool,
    /// Mostly one, or one per sensor sharing the kernel: inline.
    sources: SmallVec<[u64; 2]>,
}

/// Instances remembered per key.
const INSTANCES_PER_KEY: usize = 64;

/// What the merge knows of a dedup key: its instances, oldest first (one,
/// mostly: inline).
#[derive(Debug, Default)]
struct Seen {
    instances: SmallVec<[Instance; 1]>,
}

impl Seen {
    /// The instance an event from `source` is a copy of: the first that
    /// no event of that stream joined.
    fn twin_for(&mut self, source: u64) -> Option<&mut Instance> {
        self.instances.iter_mut().find(|i| !i.sources.contains(&source))
    }
}

/// Counters for status and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MergeStats {
    pub emitted: u64,
    pub duplicates: u64,
    /// Events emitted early because the pending set was full.
    pub forced: u64,
}

/// The merge's counters as the rest of the relay reads them.
#[derive(Debug, Default)]
pub struct MergeCounters {
    pub merged: AtomicU64,
    pub copies: AtomicU64,
    pub sent_early: AtomicU64,
    pub pending: AtomicU64,
    pub pending_bytes: AtomicU64,
}

impl MergeCounters {
    /// Publishes the merger's current totals.
    pub fn record(&self, m: &Merger) {
        self.merged.store(m.stats.emitted, AtomicOrdering::Relaxed);
        self.copies.store(m.stats.duplicates, AtomicOrdering::Relaxed);
        self.sent_early.store(m.stats.forced, AtomicOrdering::Relaxed);
        self.pending.store(m.pending() as u64, AtomicOrdering::Relaxed);
        self.pending_bytes.store(m.pending_bytes() as u64, AtomicOrdering::Relaxed);
    }
}

pub struct Merger {
    window_ns: i64,
    max_pending: usize,
    max_pending_bytes: usize,
    /// What the waiting events are charged (see [`crate::hub::charge`]).
    pending_bytes: usize,
    /// (order time, arrival number) of every waiting event, earliest first.
    /// Small entries: the heap moves them on every push and pop.
    heap: BinaryHeap<Reverse<(i64, u64)>>,
    /// Waiting events by arrival number: `slots[i]` is arrival `base + i`;
    /// sent ones are `None` until the front catches up.
    slots: VecDeque<Option<Slot>>,
    base: u64,
    seen: FxHashMap<DedupKey, Seen>,
    /// The key of each instance in `seen`, oldest first, so it stays
    /// bounded.
    seen_order: VecDeque<DedupKey>,
    seen_cap: usize,
    next_id: u64,
    /// Streams with events waiting; an entry goes when its last one leaves.
    streams: FxHashMap<u64, StreamProgress>,
    pub stats: MergeStats,
}

impl Merger {
    /// `seen_cap` bounds the dedup instances remembered (waiting and sent);
    /// `max_pending` and `max_pending_bytes` the events waiting.
    pub fn new(window: Duration, max_pending: usize, max_pending_bytes: usize, seen_cap: usize) -> Self {
        Merger {
            window_ns: i64::try_from(window.as_nanos()).unwrap_or(i64::MAX),
            max_pending: max_pending.max(1),
            max_pending_bytes,
            pending_bytes: 0,
            heap: BinaryHeap::new(),
            slots: VecDeque::new(),
            base: 0,
            seen: FxHashMap::default(),
            seen_order: VecDeque::new(),
            seen_cap: seen_cap.max(1),
            next_id: 0,
            streams: FxHashMap::default(),
            stats: MergeStats::default(),
        }
    }

    pub fn pending(&self) -> usize {
        self.heap.len()
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    fn slot(&mut self, id: u64) -> Option<&mut Option<Slot>> {
        let index = usize::try_from(id.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(index)
    }

    /// Takes one event at wall time `now_ns`. Events forced out because the
    /// pending set is full are appended to `out`.
    ///
    /// Events are ordered by their time, or by their arrival if that is
    /// earlier: an event stamped in the future (a sensor clock ahead of
    /// ours) waits one window from its arrival like any other, instead of
    /// until our clock reaches its stamp.
    pub fn push(&mut self, arrival: Arrival, now_ns: i128, out: &mut Vec<Arc<SharedEvent>>) {
        let id = self.next_id;
        if let Some(key) = arrival.key {
            let seen = self.seen.entry(key).or_default();
            if let Some(twin) = seen.twin_for(arrival.source) {
                twin.sources.push(arrival.source);
                let (twin_id, sent, richer) = (twin.id, twin.sent, arrival.richness > twin.richness);
                if richer {
                    twin.richness = arrival.richness;
                }
                self.copy(arrival, twin_id, sent, richer);
                return;
            }
            let sources = smallvec::smallvec![arrival.source];
            seen.instances.push(Instance { id, richness: arrival.richness, sent: false, sources });
            // Bounded in instances, oldest first (a key's own are in
            // order), and per key: a process hitting one hook over and
            // over keeps its recent hits only (the old ones left long ago).
            if seen.instances.len() > INSTANCES_PER_KEY {
                seen.instances.remove(0);
            } else {
                self.seen_order.push_back(key);
            }
            while self.seen_order.len() > self.seen_cap {
                if let Some(old) = self.seen_order.pop_front()
                    && let Entry::Occupied(mut seen) = self.seen.entry(old)
                {
                    seen.get_mut().instances.remove(0);
                    if seen.get().instances.is_empty() {
                        seen.remove();
                    }
                }
            }
        }
        self.next_id += 1;
        let order = clamp_ns(arrival.time_ns.min(now_ns));
        self.heap.push(Reverse((order, id)));
        let stream = self.streams.entry(arrival.source).or_default();
        stream.waiting.push_back((arrival.seq, false));
        stream.taken = stream.taken.max(arrival.seq);
        let charge = crate::hub::charge(&arrival.event);
        self.pending_bytes += charge;
        self.slots.push_back(Some(Slot {
            charge,
            event: arrival.event,
            key: arrival.key,
            source: arrival.source,
            seq: arrival.seq,
            copies: Vec::new(),
        }));
        while self.heap.len() > self.max_pending || (self.pending_bytes > self.max_pending_bytes && self.heap.len() > 1)
        {
            match self.pop() {
                Some(e) => {
                    self.stats.forced += 1;
                    out.push(e);
                }
                None => break,
            }
        }
    }

    /// Takes `arrival` as a copy of the instance waiting as `twin` (or sent
    /// already); a richer copy replaces the waiting one.
    fn copy(&mut self, arrival: Arrival, twin: u64, sent: bool, richer: bool) {
        self.stats.duplicates += 1;
        if let Some(stream) = self.streams.get_mut(&arrival.source) {
            stream.taken = stream.taken.max(arrival.seq);
        }
        if sent {
            return;
        }
        let mut was = None;
        if let Some(Some(slot)) = self.slot(twin) {
            // The copy sent stands for all: a client that had any of them
            // has the event.
            slot.copies.push((arrival.source, arrival.seq));
            if richer {
                let charge = crate::hub::charge(&arrival.event);
                was = Some((slot.charge, charge));
                slot.charge = charge;
                slot.event = arrival.event;
            }
        }
        if let Some((old, new)) = was {
            self.pending_bytes = self.pending_bytes - old + new;
        }
    }

    fn pop(&mut self) -> Option<Arc<SharedEvent>> {
        let Reverse((_, id)) = self.heap.pop()?;
        let slot = self.slot(id).and_then(Option::take);
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        let slot = slot?;
        self.pending_bytes -= slot.charge;
        if let Some(seen) = slot.key.and_then(|k| self.seen.get_mut(&k))
            && let Some(instance) = seen.instances.iter_mut().find(|i| i.id == id)
        {
            instance.sent = true;
        }
        self.stats.emitted += 1;
        let mut positions = Vec::with_capacity(1 + slot.copies.len());
        positions.push(ResumePosition {
            source: slot.source,
            seq: slot.seq,
            done_through: self.leave(slot.source, slot.seq),
        });
        for (source, seq) in slot.copies {
            let done_through = self.streams.get(&source).map_or(seq, StreamProgress::done_through);
            positions.push(ResumePosition { source, seq, done_through });
        }
        slot.event.set_resume(positions);
        Some(slot.event)
    }

    /// Marks `seq` of `source` as left; the stream's `done_through` after.
    fn leave(&mut self, source: u64, seq: u64) -> u64 {
        let Some(stream) = self.streams.get_mut(&source) else { return seq };
        // In sequence order as ingest delivers them; searched linearly
        // should a stream ever not be.
        let found = stream.waiting.binary_search_by_key(&seq, |(s, _)| *s).ok();
        if let Some(i) = found.or_else(|| stream.waiting.iter().position(|(s, _)| *s == seq)) {
            stream.waiting[i].1 = true;
        }
        while stream.waiting.front().is_some_and(|(_, left)| *left) {
            stream.waiting.pop_front();
        }
        let done = stream.done_through();
        if stream.waiting.is_empty() {
            self.streams.remove(&source);
        }
        done
    }

    /// Appends to `out`, in order, the events whose order time is a whole
    /// window old.
    pub fn flush(&mut self, now_ns: i128, out: &mut Vec<Arc<SharedEvent>>) {
        let ready = clamp_ns(now_ns).saturating_sub(self.window_ns);
        while let Some(Reverse((order, _))) = self.heap.peek() {
            if *order > ready {
                break;
            }
            if let Some(e) = self.pop() {
                out.push(e);
            }
        }
    }

    /// Everything pending, in order (shutdown).
    pub fn drain(&mut self, out: &mut Vec<Arc<SharedEvent>>) {
        out.extend(std::iter::from_fn(|| self.pop()));
    }
}

/// Nanoseconds since the epoch as i64 (good until 2262; a stamp outside
/// that is a broken clock and is ordered at the limit).
fn clamp_ns(ns: i128) -> i64 {
    ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(node: &str, ktime: u64, pid: u32, t_ms: i128, pod: bool) -> GetEventsResponse {
        let e = test_support::events::exec("").exec_id_of(node, ktime, pid).node(node).at_nanos(t_ms * MS);
        if pod { e.pod("", "p") } else { e }.build()
    }

    const MS: i128 = 1_000_000;

    /// An arrival from stream `boot` (one stream per kernel in these
    /// tests), numbered in the order the tests make them.
    fn arrival(boot: u64, event: GetEventsResponse) -> Arrival {
        static SEQ: AtomicU64 = AtomicU64::new(1);
        Arrival::new(boot, boot, SEQ.fetch_add(1, AtomicOrdering::Relaxed), Box::new(event))
    }

    fn numbered(source: u64, seq: u64, event: GetEventsResponse) -> Arrival {
        Arrival::new(1, source, seq, Box::new(event))
    }

    fn positions(out: &[Arc<SharedEvent>]) -> Vec<Vec<(u64, u64, u64)>> {
        out.iter().map(|e| e.resume().iter().map(|p| (p.source, p.seq, p.done_through)).collect()).collect()
    }

    #[test]
    fn every_event_leaves_with_its_stream_position() {
        let mut m = Merger::new(Duration::from_millis(100), 1000, usize::MAX, 1000);
        let mut out = Vec::new();
        // Stream 7: seq 1 at t=30, seq 2 at t=10, seq 3 at t=20. They leave
        // in time order: 2, 3, 1; only once 1 has left is 3 done.
        m.push(numbered(7, 1, exec("n", 1, 1, 30, false)), 100 * MS, &mut out);
        m.push(numbered(7, 2, exec("n", 2, 2, 10, false)), 100 * MS, &mut out);
        m.push(numbered(7, 3, exec("n", 3, 3, 20, false)), 100 * MS, &mut out);
        // A copy of seq 2's event from stream 8 (same kernel), richer.
        m.push(numbered(8, 5, exec("m", 2, 2, 10, true)), 100 * MS, &mut out);
        m.flush(1000 * MS, &mut out);
        assert_eq!(nodes(&out), vec!["m", "n", "n"]);
        assert_eq!(
            positions(&out),
            vec![vec![(7, 2, 0), (8, 5, 5)], vec![(7, 3, 0)], vec![(7, 1, 3)]],
            "the richer copy is sent and names both streams"
        );
        assert!(m.streams.is_empty(), "nothing waits: no stream kept");
    }

    fn nodes(out: &[Arc<SharedEvent>]) -> Vec<String> {
        out.iter().map(|e| e.event().node_name.clone()).collect()
    }

    #[test]
    fn exec_id_node_part_is_ignored() {
        let a = exec("node-a", 77, 5, 0, false);
        let b = exec("node:with:colons", 77, 5, 0, false);
        assert_eq!(dedup_key(1, &a), dedup_key(1, &b));
        assert_eq!(dedup_key(1, &a), Some(DedupKey { boot: 1, ktime: 77, pid: 5, kind: 1, hook: 0 }));
        assert_eq!(exec_id_parts("not base64!"), None);
        let long_node = "n".repeat(253);
        let long = base64::engine::general_purpose::STANDARD.encode(format!("{long_node}:123:45"));
        assert_eq!(exec_id_parts(&long), Some((123, 45)));
        let too_long = base64::engine::general_purpose::STANDARD.encode("x".repeat(EXEC_ID_MAX + 1));
        assert_eq!(exec_id_parts(&too_long), None);
    }

    #[test]
    fn orders_by_time_within_the_window() {
        let mut m = Merger::new(Duration::from_millis(100), 1000, usize::MAX, 1000);
        let mut out = Vec::new();
        m.push(arrival(1, exec("n1", 1, 1, 1030, false)), 1050 * MS, &mut out);
        m.push(arrival(1, exec("n2", 2, 2, 1010, false)), 1050 * MS, &mut out);
        m.push(arrival(1, exec("n3", 3, 3, 1020, false)), 1060 * MS, &mut out);
        m.flush(1100 * MS, &mut out);
        assert!(out.is_empty(), "still inside the window");
        m.flush(1200 * MS, &mut out);
        assert_eq!(nodes(&out), vec!["n2", "n3", "n1"]);
    }

    #[test]
    fn shared_kernel_copies_collapse_to_the_richest() {
        let mut m = Merger::new(Duration::from_millis(50), 1000, usize::MAX, 1000);
        let mut out = Vec::new();
        // Three sensors (streams 1, 2, 3) on kernel 1.
        m.push(numbered(1, 1, exec("plain", 9, 42, 0, false)), 0, &mut out);
        m.push(numbered(2, 1, exec("with-pod", 9, 42, 0, true)), 0, &mut out);
        // a poorer copy after a richer one does not replace it
        m.push(numbered(3, 1, exec("plain-again", 9, 42, 0, false)), 0, &mut out);
        // another kernel's process with the same ktime and pid is not a copy
        m.push(Arrival::new(2, 4, 1, Box::new(exec("elsewhere", 9, 42, 0, false))), 0, &mut out);
        m.flush(1000 * MS, &mut out);
        assert_eq!(nodes(&out), vec!["with-pod", "elsewhere"]);
        // a late copy is dropped too
        out.clear();
        m.push(numbered(5, 1, exec("late", 9, 42, 0, false)), 2000 * MS, &mut out);
        m.flush(4000 * MS, &mut out);
        assert!(out.is_empty());
        assert_eq!(m.stats.duplicates, 3);
        assert_eq!(m.stats.emitted, 2);
    }

    /// A tracepoint event of `policy` by process (ktime 9, pid 42) on `node`.
    fn hit(node: &str, policy: &str, path: &str, t_ms: i128) -> GetEventsResponse {
        use proto::tetragon::get_events_response::Event;
        use proto::tetragon::{KprobeArgument, ProcessTracepoint, kprobe_argument::Arg};
        let mut e = exec(node, 9, 42, t_ms, false);
        let process = events::subject::process(&e).cloned();
        e.event = Some(Event::ProcessTracepoint(ProcessTracepoint {
            process,
            policy_name: policy.into(),
            subsys: "syscalls".into(),
            event: "sys_enter_unlinkat".into(),
            args: vec![KprobeArgument { arg: Some(Arg::StringArg(path.into())), ..Default::default() }],
            ..Default::default()
        }));
        e
    }

    fn paths(out: &[Arc<SharedEvent>]) -> Vec<String> {
        out.iter()
            .map(|e| match &e.event().event {
                Some(proto::tetragon::get_events_response::Event::ProcessTracepoint(t)) => {
                    format!("{}:{:?}", t.policy_name, t.args[0].arg)
                }
                _ => "?".into(),
            })
            .collect()
    }

    #[test]
    fn one_process_hitting_a_hook_again_is_not_a_copy_but_another_sensor_is() {
        let mut m = Merger::new(Duration::from_millis(50), 1000, usize::MAX, 1000);
        let mut out = Vec::new();
        // Sensor 1 (policies p and q) and sensor 2 (policy p only) on one
        // kernel: one process unlinks a, then b.
        m.push(numbered(1, 1, hit("n1", "p", "a", 1)), 0, &mut out);
        m.push(numbered(1, 2, hit("n1", "q", "a", 1)), 0, &mut out);
        m.push(numbered(1, 3, hit("n1", "p", "b", 2)), 0, &mut out);
        m.push(numbered(1, 4, hit("n1", "q", "b", 2)), 0, &mut out);
        m.push(numbered(2, 1, hit("n2", "p", "a", 1)), 0, &mut out);
        m.push(numbered(2, 2, hit("n2", "p", "b", 2)), 0, &mut out);
        m.flush(1000 * MS, &mut out);
        let mut got = paths(&out);
        got.sort();
        assert_eq!(
            got,
            vec![
                "p:Some(StringArg(\"a\"))",
                "p:Some(StringArg(\"b\"))",
                "q:Some(StringArg(\"a\"))",
                "q:Some(StringArg(\"b\"))"
            ],
            "every hit once: sensor 1's own hits are not copies of each other, sensor 2's are copies"
        );
        assert_eq!((m.stats.emitted, m.stats.duplicates), (4, 2));
        // Sensor 2 lagging: its copies arrive after the hits left.
        out.clear();
        m.push(numbered(1, 5, hit("n1", "p", "c", 3)), 2000 * MS, &mut out);
        m.flush(3000 * MS, &mut out);
        m.push(numbered(2, 3, hit("n2", "p", "c", 3)), 3000 * MS, &mut out);
        m.flush(4000 * MS, &mut out);
        assert_eq!(paths(&out), vec!["p:Some(StringArg(\"c\"))"]);
    }

    #[test]
    fn memory_of_a_hot_key_stays_bounded() {
        let mut m = Merger::new(Duration::from_millis(50), 100_000, usize::MAX, 1000);
        let mut out = Vec::new();
        for seq in 1..=10_000u64 {
            m.push(numbered(1, seq, hit("n1", "p", "a", 1)), 0, &mut out);
        }
        m.flush(1000 * MS, &mut out);
        assert_eq!(out.len(), 10_000, "one sensor's hits are never copies");
        let instances: usize = m.seen.values().map(|s| s.instances.len()).sum();
        assert_eq!(instances, INSTANCES_PER_KEY);
        assert!(m.seen_order.len() <= 1000);
    }

    #[test]
    fn bounded_pending_forces_the_oldest_out() {
        let mut m = Merger::new(Duration::from_secs(10), 2, usize::MAX, 10);
        let mut out = Vec::new();
        m.push(arrival(1, exec("a", 1, 1, 1, false)), 10 * MS, &mut out);
        m.push(arrival(1, exec("b", 2, 2, 2, false)), 10 * MS, &mut out);
        assert!(out.is_empty());
        m.push(arrival(1, exec("c", 3, 3, 0, false)), 10 * MS, &mut out);
        assert_eq!(nodes(&out), vec!["c"], "the oldest by event time leaves");
        assert_eq!(m.pending(), 2);
        assert_eq!(m.stats.forced, 1);
        m.drain(&mut out);
        assert_eq!(nodes(&out), vec!["c", "a", "b"]);
    }

    #[test]
    fn bounded_pending_bytes_force_the_oldest_out() {
        let one = crate::hub::charge(&arrival(1, exec("a", 1, 1, 1, false)).event);
        let mut m = Merger::new(Duration::from_secs(10), 1000, 2 * one + one / 2, 10);
        let mut out = Vec::new();
        m.push(arrival(1, exec("a", 1, 1, 1, false)), 10 * MS, &mut out);
        m.push(arrival(1, exec("b", 2, 2, 2, false)), 10 * MS, &mut out);
        assert!(out.is_empty());
        assert_eq!(m.pending_bytes(), 2 * one);
        m.push(arrival(1, exec("c", 3, 3, 3, false)), 10 * MS, &mut out);
        assert_eq!(nodes(&out), vec!["a"], "the oldest leaves for the bytes");
        assert_eq!((m.pending(), m.stats.forced), (2, 1));
        assert!(m.pending_bytes() <= 2 * one + one / 2, "{} > the bound", m.pending_bytes());
        m.drain(&mut out);
        assert_eq!(m.pending_bytes(), 0);
    }

    #[test]
    fn a_clock_ahead_does_not_hold_events_back_under_steady_traffic() {
        let mut m = Merger::new(Duration::from_millis(100), 10_000, usize::MAX, 10_000);
        let mut out = Vec::new();
        // One event stamped an hour ahead, among on-time events arriving
        // every 10 ms for a second.
        m.push(arrival(1, exec("ahead", 1, 1, 1000 + 3_600_000, false)), 1000 * MS, &mut out);
        for i in 0..100 {
            let t = 1000 + 10 * i;
            m.push(arrival(1, exec("on-time", 10 + i as u64, 2, t, false)), t * MS, &mut out);
            m.flush(t * MS, &mut out);
        }
        let sent = nodes(&out);
        assert_eq!(sent.first().map(String::as_str), Some("ahead"), "ordered by its arrival: {sent:?}");
        assert_eq!(sent.len(), 91, "everything a window old has left");
    }

    #[test]
    fn late_clock_events_wait_at_most_one_window_after_arrival() {
        let mut m = Merger::new(Duration::from_millis(100), 100, usize::MAX, 100);
        // event time far in the future (sensor clock ahead)
        let mut out = Vec::new();
        m.push(arrival(1, exec("n", 1, 1, 10_000, false)), 1000 * MS, &mut out);
        m.flush(1050 * MS, &mut out);
        assert!(out.is_empty());
        m.flush(1100 * MS, &mut out);
        assert_eq!(out.len(), 1);
    }
}
