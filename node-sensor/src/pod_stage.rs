//! The pod enrichment stage (`--enable-k8s-api`): puts `pod` on the events
//! of containerised processes, from the index the Kubernetes watch keeps.
//!
//! A container's first processes can run before the watch has seen its pod
//! (container start races the API). Such an event is held, in order with
//! every event after it, for up to [`POD_WAIT`]; then it leaves without pod
//! data (counted in `pod_timeouts`). At most [`MAX_HELD`] events wait; past
//! that the oldest leaves early. Time is tokio's, so the timing is tested
//! with paused time.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proto::tetragon::GetEventsResponse;
use tokio::time::Instant;

use crate::cache::ProcessCache;
use crate::k8s::PodIndex;
use crate::stats::SensorStats;

/// How long an event of a containerised process waits for its pod.
pub const POD_WAIT: Duration = Duration::from_secs(5);
/// Most events held waiting for pods.
pub const MAX_HELD: usize = 10_000;

pub struct PodStage {
    pods: Arc<PodIndex>,
    held: VecDeque<(Instant, GetEventsResponse)>,
    /// Container-view pids of execs not yet given their pod, by exec_id.
    nspids: HashMap<String, u32>,
    /// Where container-view pids of processes found by the /proc walk are read.
    procfs: PathBuf,
    wait: Duration,
    max_held: usize,
    stats: Arc<SensorStats>,
}

impl PodStage {
    pub fn new(pods: Arc<PodIndex>, procfs: PathBuf, stats: Arc<SensorStats>) -> Self {
        Self::with_limits(pods, procfs, stats, POD_WAIT, MAX_HELD)
    }

    pub fn with_limits(
        pods: Arc<PodIndex>,
        procfs: PathBuf,
        stats: Arc<SensorStats>,
        wait: Duration,
        max_held: usize,
    ) -> Self {
        PodStage { pods, held: VecDeque::new(), nspids: HashMap::new(), procfs, wait, max_held, stats }
    }

    /// The pid an exec's process has inside its container, from the kernel
    /// record; used when its pod is found.
    pub fn note_container_pid(&mut self, exec_id: &str, nspid: u32) {
        // Bounded: entries of events that never find a pod are forgotten.
        if self.nspids.len() >= 2 * self.max_held {
            self.nspids.clear();
        }
        self.nspids.insert(exec_id.to_owned(), nspid);
    }

    /// Takes one event; appends to `out` what may leave now, in order.
    pub fn push(&mut self, mut event: GetEventsResponse, cache: &mut ProcessCache, out: &mut Vec<GetEventsResponse>) {
        // Events leave in order: once one waits for its pod, later ones
        // queue behind it.
        if self.held.is_empty() && !self.enrich(&mut event, cache) {
            out.push(event);
            return;
        }
        if self.held.len() >= self.max_held
            && let Some((_, mut oldest)) = self.held.pop_front()
        {
            if self.enrich(&mut oldest, cache) {
                self.stats.pod_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            out.push(oldest);
        }
        self.held.push_back((Instant::now(), event));
        self.stats.pod_waiting.store(self.held.len() as u64, Ordering::Relaxed);
    }

    /// Whether events wait for their pod (and so for a retry).
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Releases held events whose pod is now known, or that waited long enough.
    pub fn drain(&mut self, cache: &mut ProcessCache, out: &mut Vec<GetEventsResponse>) {
        while let Some((since, mut event)) = self.held.pop_front() {
            let missing = self.enrich(&mut event, cache);
            if missing && since.elapsed() < self.wait {
                self.held.push_front((since, event));
                break;
            }
            if missing {
                self.stats.pod_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            out.push(event);
        }
        self.stats.pod_waiting.store(self.held.len() as u64, Ordering::Relaxed);
    }

    /// Adds pod data to the event's process and parent where the watch knows
    /// their container. Returns true if a container process still lacks its pod.
    fn enrich(&mut self, event: &mut GetEventsResponse, cache: &mut ProcessCache) -> bool {
        let mut missing = false;
        let (process, parent) = events::subject::process_and_parent_mut(event);
        for (i, p) in [process, parent].into_iter().flatten().enumerate() {
            if p.docker.is_empty() || p.pod.is_some() {
                continue;
            }
            match self.pods.lookup(&p.docker) {
                Some(mut pod) => {
                    // The pid as the container sees it: from the kernel record,
                    // else (processes found by the /proc walk) from /proc.
                    if let Some(c) = pod.container.as_mut() {
                        let from_kernel = self.nspids.remove(&p.exec_id);
                        let from_proc = || p.pid.and_then(|pid| crate::k8s::pid_in_container(&self.procfs, pid.value));
                        c.pid = from_kernel.or_else(from_proc).map(Into::into);
                    }
                    cache.set_pod(&p.exec_id, &pod);
                    p.pod = Some(Box::new(pod));
                }
                // Only the event's own process holds it back.
                None => missing |= i == 0,
            }
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINER: &str = "0123456789abcdef0123456789abcde";

    fn exec(arg: &str, docker: &str) -> GetEventsResponse {
        test_support::events::exec("/bin/x").arguments(arg).exec_id(&format!("id-{arg}")).container(docker).build()
    }

    fn pod_json() -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "xwing", "namespace": "default", "uid": "u1"},
            "status": {"containerStatuses": [{
                "name": "spaceship", "image": "img", "imageID": "img@sha", "ready": true, "restartCount": 0,
                "containerID": format!("containerd://{CONTAINER}ffff"),
            }]}
        }))
        .unwrap()
    }

    fn stage(wait: Duration, max: usize) -> (PodStage, Arc<PodIndex>, Arc<SensorStats>) {
        let pods = Arc::new(PodIndex::default());
        let stats = Arc::new(SensorStats::default());
        let s = PodStage::with_limits(pods.clone(), "/nonexistent".into(), stats.clone(), wait, max);
        (s, pods, stats)
    }

    fn args(out: &[GetEventsResponse]) -> Vec<(String, Option<String>)> {
        out.iter()
            .filter_map(events::subject::process)
            .map(|p| (p.arguments.clone(), p.pod.as_ref().map(|p| p.name.clone())))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn known_pods_and_hostprocesses_pass_at_once() {
        let (mut s, pods, _) = stage(POD_WAIT, MAX_HELD);
        pods.upsert(&pod_json());
        let mut cache = ProcessCache::new(16);
        let mut out = Vec::new();
        s.note_container_pid("id-a", 7);
        s.push(exec("a", CONTAINER), &mut cache, &mut out);
        s.push(exec("host", ""), &mut cache, &mut out);
        assert_eq!(args(&out), vec![("a".into(), Some("xwing".into())), ("host".into(), None)]);
        let pid = events::subject::process(&out[0]).and_then(|p| p.pod.as_ref()?.container.as_ref()?.pid);
        assert_eq!(pid.map(|v| v.value), Some(7), "the kernel's container-view pid");
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_pod_holds_events_in_order_until_it_appears() {
        let (mut s, pods, stats) = stage(POD_WAIT, MAX_HELD);
        let mut cache = ProcessCache::new(16);
        let mut out = Vec::new();
        s.push(exec("first", CONTAINER), &mut cache, &mut out);
        s.push(exec("host", ""), &mut cache, &mut out);
        assert!(out.is_empty(), "a later event queues behind a held one");
        assert_eq!(stats.pod_waiting.load(Ordering::Relaxed), 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        s.drain(&mut cache, &mut out);
        assert!(out.is_empty(), "2 s in: still waiting");
        pods.upsert(&pod_json());
        s.drain(&mut cache, &mut out);
        assert_eq!(args(&out), vec![("first".into(), Some("xwing".into())), ("host".into(), None)]);
        assert_eq!(stats.pod_timeouts.load(Ordering::Relaxed), 0);
        assert_eq!(stats.pod_waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_never_appears_lets_the_event_go_after_the_wait() {
        let (mut s, _, stats) = stage(POD_WAIT, MAX_HELD);
        let mut cache = ProcessCache::new(16);
        let mut out = Vec::new();
        s.push(exec("lonely", CONTAINER), &mut cache, &mut out);
        tokio::time::advance(POD_WAIT - Duration::from_millis(1)).await;
        s.drain(&mut cache, &mut out);
        assert!(out.is_empty(), "just before the wait ends");
        tokio::time::advance(Duration::from_millis(1)).await;
        s.drain(&mut cache, &mut out);
        assert_eq!(args(&out), vec![("lonely".into(), None)]);
        assert_eq!(stats.pod_timeouts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_cap_the_oldest_leaves_early() {
        let (mut s, _, stats) = stage(POD_WAIT, 2);
        let mut cache = ProcessCache::new(16);
        let mut out = Vec::new();
        for a in ["1", "2", "3"] {
            s.push(exec(a, CONTAINER), &mut cache, &mut out);
        }
        assert_eq!(args(&out), vec![("1".into(), None)]);
        assert_eq!(stats.pod_timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(stats.pod_waiting.load(Ordering::Relaxed), 2);
    }
}
