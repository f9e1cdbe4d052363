//! Time-ordered merge with deduplication. Events wait up to the reorder
//! window, then leave in event-time order. Copies of one event from
//! sensors sharing a kernel (same boot id, process start time, pid and
//! kind) collapse into the richest copy (pod metadata beats none); a copy
//! arriving after its twin left is dropped by a bounded memory of keys.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use base64::Engine as _;
use proto::tetragon::GetEventsResponse;

/// Identity of an event across sensors sharing one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey {
    pub boot_id: String,
    pub ktime: u64,
    pub pid: u32,
    pub kind: i32,
}

/// (ktime, pid) from an exec_id (`base64("node:ktime:pid")`); the node part
/// differs between sensors and is ignored.
pub fn exec_id_parts(exec_id: &str) -> Option<(u64, u32)> {
    let raw = base64::engine::general_purpose::STANDARD.decode(exec_id).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.rsplitn(3, ':');
    let pid = parts.next()?.parse().ok()?;
    let ktime = parts.next()?.parse().ok()?;
    Some((ktime, pid))
}

pub fn dedup_key(boot_id: &str, event: &GetEventsResponse) -> Option<DedupKey> {
    let process = events::subject::process(event)?;
    let (ktime, pid) = exec_id_parts(&process.exec_id)?;
    Some(DedupKey { boot_id: boot_id.to_owned(), ktime, pid, kind: event.event_type() as i32 })
}

/// More metadata wins: a pod, then a container id.
fn richness(event: &GetEventsResponse) -> u8 {
    events::subject::process(event).map_or(0, |p| if p.pod.is_some() { 2 } else { u8::from(!p.docker.is_empty()) })
}

fn time_ns(event: &GetEventsResponse) -> i128 {
    event.time.map_or(0, |t| t.unix_nanos())
}

struct Pending {
    event: GetEventsResponse,
    key: Option<DedupKey>,
    arrived_ns: i128,
}

/// Counters for status and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MergeStats {
    pub accepted: u64,
    pub emitted: u64,
    pub duplicates: u64,
    /// Events emitted early because the pending set was full.
    pub forced: u64,
}

pub struct Merger {
    window_ns: i128,
    max_pending: usize,
    heap: BinaryHeap<Reverse<(i128, u64)>>,
    pending: HashMap<u64, Pending>,
    by_key: HashMap<DedupKey, u64>,
    recent: HashSet<DedupKey>,
    recent_order: VecDeque<DedupKey>,
    recent_cap: usize,
    next_id: u64,
    pub stats: MergeStats,
}

impl Merger {
    pub fn new(window: Duration, max_pending: usize, recent_cap: usize) -> Self {
        Merger {
            window_ns: window.as_nanos() as i128,
            max_pending: max_pending.max(1),
            heap: BinaryHeap::new(),
            pending: HashMap::new(),
            by_key: HashMap::new(),
            recent: HashSet::new(),
            recent_order: VecDeque::new(),
            recent_cap: recent_cap.max(1),
            next_id: 0,
            stats: MergeStats::default(),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes one event from a node with `boot_id`, at wall time `now_ns`.
    /// Returns events forced out because the pending set is full.
    pub fn push(&mut self, boot_id: &str, event: GetEventsResponse, now_ns: i128) -> Vec<GetEventsResponse> {
        let key = dedup_key(boot_id, &event);
        if let Some(k) = &key {
            if self.recent.contains(k) {
                self.stats.duplicates += 1;
                return vec![];
            }
            if let Some(id) = self.by_key.get(k) {
                self.stats.duplicates += 1;
                if let Some(p) = self.pending.get_mut(id)
                    && richness(&event) > richness(&p.event)
                {
                    p.event = event;
                }
                return vec![];
            }
        }
        self.stats.accepted += 1;
        let id = self.next_id;
        self.next_id += 1;
        self.heap.push(Reverse((time_ns(&event), id)));
        if let Some(k) = &key {
            self.by_key.insert(k.clone(), id);
        }
        self.pending.insert(id, Pending { event, key, arrived_ns: now_ns });
        let mut forced = Vec::new();
        while self.pending.len() > self.max_pending {
            match self.pop() {
                Some(e) => {
                    self.stats.forced += 1;
                    forced.push(e);
                }
                None => break,
            }
        }
        forced
    }

    fn remember(&mut self, key: DedupKey) {
        if self.recent.insert(key.clone()) {
            self.recent_order.push_back(key);
            while self.recent_order.len() > self.recent_cap {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
    }

    fn pop(&mut self) -> Option<GetEventsResponse> {
        let Reverse((_, id)) = self.heap.pop()?;
        let p = self.pending.remove(&id)?;
        if let Some(k) = p.key {
            self.by_key.remove(&k);
            self.remember(k);
        }
        self.stats.emitted += 1;
        Some(p.event)
    }

    /// Events whose time is older than the window, or that waited a
    /// whole window since arriving (a sensor clock behind ours), in time order.
    pub fn flush(&mut self, now_ns: i128) -> Vec<GetEventsResponse> {
        let mut out = Vec::new();
        while let Some(Reverse((t, id))) = self.heap.peek().copied() {
            let waited = self.pending.get(&id).is_none_or(|p| now_ns - p.arrived_ns >= self.window_ns);
            if t > now_ns - self.window_ns && !waited {
                break;
            }
            if let Some(e) = self.pop() {
                out.push(e);
            }
        }
        out
    }

    /// Everything pending, in time order (shutdown).
    pub fn drain(&mut self) -> Vec<GetEventsResponse> {
        std::iter::from_fn(|| self.pop()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Timestamp;
    use proto::tetragon::{Pod, Process, ProcessExec, get_events_response::Event};

    fn exec(node: &str, ktime: u64, pid: u32, t_ms: i128, pod: bool) -> GetEventsResponse {
        let exec_id = base64::engine::general_purpose::STANDARD.encode(format!("{node}:{ktime}:{pid}"));
        GetEventsResponse {
            event: Some(Event::ProcessExec(ProcessExec {
                process: Some(Process {
                    exec_id,
                    pid: Some(pid.into()),
                    pod: pod.then(|| Pod { name: "p".into(), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            node_name: node.into(),
            time: Some(Timestamp::from_unix_nanos(t_ms * 1_000_000)),
            ..Default::default()
        }
    }

    const MS: i128 = 1_000_000;

    #[test]
    fn exec_id_node_part_is_ignored() {
        let a = exec("node-a", 77, 5, 0, false);
        let b = exec("node:with:colons", 77, 5, 0, false);
        assert_eq!(dedup_key("boot", &a), dedup_key("boot", &b));
        assert_eq!(exec_id_parts("not base64!"), None);
    }

    #[test]
    fn orders_by_time_within_the_window() {
        let mut m = Merger::new(Duration::from_millis(100), 1000, 1000);
        m.push("b", exec("n1", 1, 1, 1030, false), 1050 * MS);
        m.push("b", exec("n2", 2, 2, 1010, false), 1050 * MS);
        m.push("b", exec("n1", 3, 3, 1020, false), 1060 * MS);
        assert!(m.flush(1100 * MS).is_empty(), "still inside the window");
        let out: Vec<_> = m.flush(1200 * MS).iter().map(|e| e.node_name.clone()).collect();
        assert_eq!(out, vec!["n2", "n1", "n1"]);
        let times: Vec<_> = out.iter().collect();
        assert_eq!(times.len(), 3);
    }

    #[test]
    fn shared_kernel_copies_collapse_to_the_richest() {
        let mut m = Merger::new(Duration::from_millis(50), 1000, 1000);
        m.push("boot", exec("plain", 9, 42, 0, false), 0);
        m.push("boot", exec("with-pod", 9, 42, 0, true), 0);
        // another kernel's process with the same ktime and pid is not a copy
        m.push("other-boot", exec("elsewhere", 9, 42, 0, false), 0);
        let out = m.flush(1000 * MS);
        assert_eq!(out.len(), 2);
        assert!(out.iter().any(|e| e.node_name == "with-pod"));
        assert!(out.iter().any(|e| e.node_name == "elsewhere"));
        // a late copy is dropped too
        m.push("boot", exec("late", 9, 42, 0, false), 2000 * MS);
        assert!(m.flush(4000 * MS).is_empty());
        assert_eq!(m.stats.duplicates, 2);
    }

    #[test]
    fn bounded_pending_forces_the_oldest_out() {
        let mut m = Merger::new(Duration::from_secs(10), 2, 10);
        assert!(m.push("b", exec("n", 1, 1, 1, false), 0).is_empty());
        assert!(m.push("b", exec("n", 2, 2, 2, false), 0).is_empty());
        let forced = m.push("b", exec("n", 3, 3, 0, false), 0);
        assert_eq!(forced.len(), 1);
        assert_eq!(m.pending(), 2);
        assert_eq!(m.stats.forced, 1);
        assert_eq!(m.drain().len(), 2);
    }

    #[test]
    fn late_clock_events_wait_at_most_one_window_after_arrival() {
        let mut m = Merger::new(Duration::from_millis(100), 100, 100);
        // event time far in the future (sensor clock ahead)
        m.push("b", exec("n", 1, 1, 10_000, false), 1000 * MS);
        assert!(m.flush(1050 * MS).is_empty());
        assert_eq!(m.flush(1100 * MS).len(), 1);
    }
}
