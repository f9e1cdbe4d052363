//! The sensor's one-way data flow: ring-buffer bytes → decode → process
//! cache → event → bus. Runs on one task, so the cache needs no lock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use proto::tetragon::GetEventsResponse;
use tokio::io::unix::AsyncFd;

use crate::builder::{self, Clock};
use crate::cache::ProcessCache;
use crate::decode::{self, Record};
use crate::k8s::PodIndex;
use crate::loader::Probes;
use crate::privileges::Collect;
use crate::procfs;
use crate::stats::SensorStats;
use events::bus::EventBus;

/// How long records may wait in the ring buffer when the kernel side does
/// not wake us (it wakes us only for large batches).
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How often kernel counters are read and losses logged.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// How long an event of a containerised process waits for its pod to show
/// up in the watch (container start races the API) before it goes without.
const POD_WAIT: Duration = Duration::from_secs(5);
/// Most events held waiting for pods; past it the oldest goes without.
const MAX_HELD: usize = 10_000;

pub struct Pipeline {
    node: String,
    pods: Option<Arc<PodIndex>>,
    held: VecDeque<(Instant, GetEventsResponse)>,
    procfs: std::path::PathBuf,
    /// Container-view pids of execs not yet given their pod, by exec_id.
    nspids: std::collections::HashMap<String, u32>,
    clock: Clock,
    collect: Collect,
    /// Report only processes in this network namespace (`--only-own-netns`).
    netns_only: Option<u32>,
    cache: ProcessCache,
    bus: EventBus,
    stats: Arc<SensorStats>,
}

impl Pipeline {
    pub fn new(
        node: &str,
        clock: Clock,
        collect: Collect,
        cache_size: usize,
        bus: EventBus,
        stats: Arc<SensorStats>,
    ) -> Self {
        Pipeline {
            node: node.to_owned(),
            pods: None,
            held: VecDeque::new(),
            procfs: "/proc".into(),
            nspids: std::collections::HashMap::new(),
            clock,
            collect,
            netns_only: None,
            cache: ProcessCache::new(cache_size),
            bus,
            stats,
        }
    }

    /// Exec and exit events carry the ancestors beyond the parent.
    pub fn with_ancestors(mut self) -> Self {
        self.cache.enable_ancestors();
        self
    }

    /// Keeps only events of processes in network namespace `inum`.
    pub fn only_netns(mut self, inum: u32) -> Self {
        self.netns_only = Some(inum);
        self
    }

    /// Puts pod data on events, from the Kubernetes watch (`--enable-k8s-api`).
    pub fn with_pods(mut self, pods: Arc<PodIndex>, procfs: &std::path::Path) -> Self {
        self.pods = Some(pods);
        self.procfs = procfs.to_owned();
        self
    }

    fn publish(&mut self, event: GetEventsResponse) {
        if let Some(want) = self.netns_only {
            let net = events::subject::process(&event).and_then(|p| p.ns.as_ref()).and_then(|n| n.net).map(|n| n.inum);
            if net != Some(want) {
                return;
            }
        }
        if self.pods.is_none() {
            self.bus.publish(event);
            return;
        }
        // Events leave in order: once one waits for its pod, later ones
        // queue behind it.
        let mut event = event;
        if self.held.is_empty() && !self.enrich(&mut event) {
            self.bus.publish(event);
            return;
        }
        if self.held.len() >= MAX_HELD
            && let Some((_, mut oldest)) = self.held.pop_front()
        {
            if self.enrich(&mut oldest) {
                self.stats.pod_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            self.bus.publish(oldest);
        }
        self.held.push_back((Instant::now(), event));
        self.stats.pod_waiting.store(self.held.len() as u64, Ordering::Relaxed);
    }

    /// Adds pod data to the event's process and parent where the watch knows
    /// their container. Returns true if a container process still lacks its pod.
    fn enrich(&mut self, event: &mut GetEventsResponse) -> bool {
        let Some(pods) = self.pods.clone() else { return false };
        let mut missing = false;
        let (process, parent) = events::subject::process_and_parent_mut(event);
        for (i, p) in [process, parent].into_iter().flatten().enumerate() {
            if p.docker.is_empty() || p.pod.is_some() {
                continue;
            }
            match pods.lookup(&p.docker) {
                Some(mut pod) => {
                    // The pid as the container sees it: from the kernel record,
                    // else (processes found by the /proc walk) from /proc.
                    if let Some(c) = pod.container.as_mut() {
                        let from_kernel = self.nspids.remove(&p.exec_id);
                        let from_proc = || p.pid.and_then(|pid| crate::k8s::pid_in_container(&self.procfs, pid.value));
                        c.pid = from_kernel.or_else(from_proc).map(Into::into);
                    }
                    self.cache.set_pod(&p.exec_id, &pod);
                    p.pod = Some(pod);
                }
                // Only the event's own process holds it back.
                None => missing |= i == 0,
            }
        }
        missing
    }

    /// Sends held events whose pod is now known, or that waited long enough.
    fn drain_held(&mut self) {
        while let Some((since, mut event)) = self.held.pop_front() {
            let missing = self.enrich(&mut event);
            if missing && since.elapsed() < POD_WAIT {
                self.held.push_front((since, event));
                break;
            }
            if missing {
                self.stats.pod_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            self.bus.publish(event);
        }
        self.stats.pod_waiting.store(self.held.len() as u64, Ordering::Relaxed);
    }

    /// Reports every process already running, parents first.
    pub fn seed_from_procfs(&mut self, root: &std::path::Path) -> usize {
        let entries = procfs::walk(root, &self.node, &self.clock, &self.collect);
        let n = entries.len();
        for e in entries {
            let time = e.process.start_time.unwrap_or_default();
            let lineage = self.cache.add_procfs(e.process, e.ppid);
            self.publish(builder::exec_event(&self.node, time, lineage));
        }
        self.update_cache_stats();
        n
    }

    /// Handles one ring-buffer record; bad records are counted and skipped.
    pub fn handle(&mut self, bytes: &[u8]) {
        self.stats.records.fetch_add(1, Ordering::Relaxed);
        let record = match decode::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                let n = self.stats.bad_records.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(error = %e, total = n + 1, "skipping malformed ring-buffer record");
                }
                return;
            }
        };
        match record {
            Record::Clone(c) => {
                let ktime = builder::image_ktime(c.start_boottime, c.exec_seq);
                self.cache.on_clone(&self.node, c.pid, c.ppid, ktime, self.clock.wall(ktime));
            }
            Record::Exec(e) => {
                let process = builder::exec_process(&self.node, &self.clock, &self.collect.host, &e);
                if self.pods.is_some() && !process.docker.is_empty() && e.nspid != 0 {
                    if self.nspids.len() >= 2 * MAX_HELD {
                        self.nspids.clear();
                    }
                    self.nspids.insert(process.exec_id.clone(), e.nspid);
                }
                let time = self.clock.wall(e.ktime);
                let lineage = self.cache.on_exec(process, e.ppid);
                self.publish(builder::exec_event(&self.node, time, lineage));
            }
            Record::Exit(x) => {
                if let Some(lineage) = self.cache.on_exit(x.pid) {
                    let time = self.clock.wall(x.header.ktime);
                    self.publish(builder::exit_event(&self.node, time, lineage, x.exit_code));
                }
            }
        }
    }

    fn update_cache_stats(&self) {
        let s = self.cache.stats();
        self.stats.cache_entries.store(s.entries as u64, Ordering::Relaxed);
        self.stats.cache_evicted.store(s.evicted, Ordering::Relaxed);
        self.stats.cache_misses.store(s.misses, Ordering::Relaxed);
    }

    /// Copies kernel and cache counters into the shared stats.
    fn refresh_counters(&self, counters: &PerCpuArray<MapData, u64>) -> crate::loader::KernelCounters {
        let k = crate::loader::read_counters(counters);
        self.stats.ringbuf_full.store(k.ringbuf_full, Ordering::Relaxed);
        self.stats.kernel_read_errors.store(k.read_errors, Ordering::Relaxed);
        self.update_cache_stats();
        k
    }

    /// Drains the ring buffer until `shutdown` fires.
    pub async fn run(
        mut self,
        probes: Probes,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let Probes { ring, counters, _ebpf, .. } = probes;
        // SAFETY: the ring buffer owns its map fd and keeps it open, returning
        // the same fd, for as long as the AsyncFd owns it.
        let mut ring: AsyncFd<RingBuf<MapData>> =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)?;
        let mut last_report = Instant::now();
        let mut reported = crate::loader::KernelCounters::default();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                ready = tokio::time::timeout(POLL_INTERVAL, ring.readable_mut()) => {
                    if let Ok(Ok(mut guard)) = ready {
                        guard.clear_ready();
                    }
                    let inner = ring.get_mut();
                    while let Some(item) = inner.next() {
                        self.handle(&item);
                    }
                    self.drain_held();
                }
            }
            if last_report.elapsed() >= REPORT_INTERVAL {
                last_report = Instant::now();
                let k = self.refresh_counters(&counters);
                if k.ringbuf_full > reported.ringbuf_full {
                    tracing::warn!(
                        lost = k.ringbuf_full - reported.ringbuf_full,
                        total = k.ringbuf_full,
                        "ring buffer full: kernel events lost"
                    );
                }
                reported = k;
            }
        }
        // Final counters, so a last health read or log is exact.
        self.refresh_counters(&counters);
        drop(_ebpf);
        Ok(())
    }
}
