//! The sensor's one-way data flow, stage by stage: ring-buffer bytes →
//! `decode` → process `cache` → `convert` (records to events) →
//! `netns_filter` → `pod_stage` → bus. Runs on one task, so the cache
//! needs no lock.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use proto::tetragon::GetEventsResponse;
use tokio::io::unix::AsyncFd;

use crate::cache::{Fork, Lineage, ProcessCache};
use crate::clock::Clock;
use crate::convert;
use crate::decode::{self, HookData, Record};
use crate::k8s::PodIndex;
use crate::loader::KernelFeed;
use crate::netns_filter::NetnsFilter;
use crate::pod_stage::PodStage;
use crate::policies::hooks::HookTable;
use crate::privileges::Collect;
use crate::procfs;
use crate::startup::{StartupGate, Verdict};
use crate::stats::SensorStats;
use events::bus::EventBus;
use proto::shared::SharedEvent;

/// How often events held for their pod are retried.
const POD_RETRY: Duration = Duration::from_millis(10);
/// How long the reader sleeps when nothing wakes it: it still passes, so
/// the health watch sees it alive (and counters stay current).
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Events queued for the bus before they are published even mid-read (a
/// full ring buffer is tens of thousands of records): bounds that queue's
/// memory and the first event's wait.
const READY_MAX: usize = 1024;
/// Records handled in one pass over the ring buffer before the reader
/// yields: the sensor has one runtime worker (see `main`), and a backlog
/// of megabytes read at once would hold up its clients' streams, health
/// answers and relay uplinks for tens of milliseconds.
const PASS_MAX: usize = 4096;
/// How often kernel counters are read and losses logged.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Where the reader takes records from: the kernel's ring buffer (a
/// queue of byte records in tests).
trait Records {
    type Record<'a>: std::ops::Deref<Target = [u8]>
    where
        Self: 'a;
    fn next_record(&mut self) -> Option<Self::Record<'_>>;
}

impl Records for RingBuf<MapData> {
    type Record<'a> = aya::maps::ring_buf::RingBufItem<'a>;
    fn next_record(&mut self) -> Option<Self::Record<'_>> {
        self.next()
    }
}

pub struct Pipeline {
    node: String,
    clock: Clock,
    collect: Collect,
    cache: ProcessCache,
    netns: Option<NetnsFilter>,
    pods: Option<PodStage>,
    /// Open from the `/proc` walk until records are past it.
    gate: Option<StartupGate>,
    /// Events leaving the pod stage, reused between calls.
    out: Vec<GetEventsResponse>,
    /// Events for the bus, published together once a ring-buffer read is
    /// handled: one lock of the subscriber list and one wake of each
    /// client's stream per read, not one per event.
    ready: Vec<Arc<SharedEvent>>,
    /// Events counted by label for the metrics, when they are served.
    metrics: Option<Arc<crate::metrics::EventCounts>>,
    bus: EventBus,
    stats: Arc<SensorStats>,
    /// What policy hooks' records mean (`policies`).
    hooks: Option<Arc<HookTable>>,
    /// Resolves the stack traces policies' `Post` asks for.
    stacks: Option<crate::policies::stacks::Symbolizer>,
    /// How long a burst's first record waits for the rest before the ring
    /// buffer is read (`--ring-batch-ms`): the kernel wakes us for the
    /// first record into an empty ring (and again once a large backlog
    /// builds), and each read costs a round of thread wakeups that, on a
    /// slow host, outweighs the records' own work (BENCHMARKS.md).
    batch_delay: Duration,
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
            clock,
            collect,
            cache: ProcessCache::new(cache_size),
            netns: None,
            pods: None,
            gate: None,
            out: Vec::new(),
            ready: Vec::new(),
            metrics: None,
            bus,
            stats,
            hooks: None,
            stacks: None,
            batch_delay: Duration::from_millis(crate::config::DEFAULT_RING_BATCH_MS),
        }
    }

    /// A burst's first record waits `delay` for the rest (`--ring-batch-ms`).
    pub fn with_batch_delay(mut self, delay: Duration) -> Self {
        self.batch_delay = delay;
        self
    }

    /// Reports policy hooks' records, read through `hooks`.
    /// Policy hooks' records become events; their stack traces are
    /// resolved through `procfs`, the addresses shown if `expose_addresses`.
    pub fn with_policies(mut self, hooks: Arc<HookTable>, procfs: &std::path::Path, expose_addresses: bool) -> Self {
        self.hooks = Some(hooks);
        self.stacks = Some(crate::policies::stacks::Symbolizer::new(procfs, expose_addresses));
        self
    }

    /// Exec and exit events carry the ancestors beyond the parent.
    pub fn with_ancestors(mut self) -> Self {
        self.cache.enable_ancestors();
        self
    }

    /// Keeps only events of processes in network namespace `inum`.
    pub fn only_netns(mut self, inum: u32) -> Self {
        self.netns = Some(NetnsFilter::new(inum));
        self
    }

    /// Puts pod data on events, from the Kubernetes watch (`--enable-k8s-api`).
    pub fn with_pods(mut self, pods: Arc<PodIndex>, procfs: &std::path::Path) -> Self {
        self.pods = Some(PodStage::new(pods, procfs.to_owned(), self.stats.clone()));
        self
    }

    /// An event from `convert`, through the filter and pod stages, to the bus.
    fn publish(&mut self, event: GetEventsResponse) {
        if self.netns.is_some_and(|f| !f.passes(&event)) {
            return;
        }
        match self.pods.as_mut() {
            None => self.queue_for_bus(event),
            Some(pods) => {
                pods.push(event, &mut self.cache, &mut self.out);
                self.flush_out();
            }
        }
    }

    /// Lets the pod stage release what has waited long enough.
    fn drain_held(&mut self) {
        if let Some(pods) = self.pods.as_mut() {
            pods.drain(&mut self.cache, &mut self.out);
            self.flush_out();
        }
    }

    fn flush_out(&mut self) {
        // Taken out and put back, so its capacity is kept.
        let mut out = std::mem::take(&mut self.out);
        for event in out.drain(..) {
            self.queue_for_bus(event);
        }
        self.out = out;
    }

    /// Counted for the metrics (when served), then queued for the bus.
    fn queue_for_bus(&mut self, event: GetEventsResponse) {
        if let Some(counts) = &self.metrics {
            counts.count(&event);
        }
        self.ready.push(Arc::new(SharedEvent::new(event)));
        if self.ready.len() >= READY_MAX {
            self.flush_bus();
        }
    }

    /// Publishes what `queue_for_bus` queued, in order.
    fn flush_bus(&mut self) {
        if !self.ready.is_empty() {
            self.bus.publish_all(self.ready.drain(..));
        }
    }

    /// Counts every published event for `--metrics-address`.
    pub fn with_metrics(mut self, counts: Arc<crate::metrics::EventCounts>) -> Self {
        self.metrics = Some(counts);
        self
    }

    /// Reports every process already running, parents first. Call after
    /// the programs are attached: records queued meanwhile then pass the
    /// start-up gate.
    pub fn seed_from_procfs(&mut self, root: &std::path::Path) -> usize {
        let walk = procfs::walk(root, &self.node, &self.clock, &self.collect);
        let n = walk.entries.len();
        for e in walk.entries {
            let time = e.process.start_time.unwrap_or_default();
            let lineage = self.cache.add_procfs(e.process, e.ppid);
            self.publish(convert::exec_event(&self.node, time, lineage));
        }
        self.flush_bus();
        self.gate = Some(StartupGate::new(walk.reads, walk.end));
        self.update_cache_stats();
        n
    }

    /// The start-up gate's verdict on a record; the gate closes once records
    /// are well past the walk, and goes once nothing it remembers is open.
    fn admit(&mut self, record: &Record) -> Verdict {
        let Some(gate) = self.gate.as_mut() else {
            return Verdict::Apply;
        };
        let (pid, ktime) = match record {
            Record::Clone(c) => (c.pid, c.header.ktime),
            Record::Exec(e) => (e.pid, e.ktime),
            Record::Exit(x) => (x.pid, x.header.ktime),
            // A hook's hit is no part of what the walk saw.
            Record::Hook(_) => return Verdict::Apply,
        };
        if gate.close_at(ktime) {
            tracing::info!(
                skipped = gate.skipped(),
                "start-up: records queued during the /proc walk are reconciled; those it already showed were skipped"
            );
        }
        let verdict = match record {
            Record::Clone(c) => gate.clone_verdict(pid, ktime, c.exec_seq),
            Record::Exec(e) => {
                let verdict = if gate.is_open() {
                    gate.exec_verdict(pid, ktime, &convert::arguments(&e.args))
                } else {
                    Verdict::Apply
                };
                if verdict == Verdict::Apply && gate.first_exec_after_skipped_fork(pid, e.exec_seq) {
                    self.cache.mark_fork_copy(pid);
                }
                verdict
            }
            Record::Exit(_) => gate.exit_verdict(pid, ktime),
            Record::Hook(_) => Verdict::Apply,
        };
        if gate.is_done() {
            self.gate = None;
        }
        verdict
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
        if self.admit(&record) == Verdict::Skip {
            self.stats.startup_skipped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(?record, "start-up: skipped a record the /proc walk already showed");
            return;
        }
        match record {
            Record::Clone(c) => {
                // A fork child is named by its fork time, which the kernel
                // keeps (every sensor on the kernel reads the same value).
                let child = Fork { pid: c.pid, ppid: c.ppid, ktime: c.start_boottime, nspid: c.nspid };
                self.cache.on_clone(&self.node, child, self.clock.wall(c.start_boottime));
            }
            Record::Exec(e) => {
                let process = convert::exec_process(&self.node, &self.clock, &self.collect.host, &e);
                if let Some(pods) = self.pods.as_mut()
                    && !process.docker.is_empty()
                    && e.nspid != 0
                {
                    pods.note_container_pid(&process.exec_id, e.nspid);
                }
                let time = self.clock.wall(e.ktime);
                let lineage = self.cache.on_exec(process, e.ppid);
                self.publish(convert::exec_event(&self.node, time, lineage));
            }
            Record::Exit(x) => {
                if let Some(lineage) = self.cache.on_exit(x.pid) {
                    let time = self.clock.wall(x.header.ktime);
                    self.publish(convert::exit_event(&self.node, time, lineage, x.exit_code));
                }
            }
            Record::Hook(h) => self.hook_hit(&h),
        }
    }

    /// A policy hook's hit, reported with its process as the cache has it.
    fn hook_hit(&mut self, hit: &HookData) {
        let Some(info) = self.hooks.as_ref().and_then(|t| t.get(hit.hook_id)) else {
            let n = self.stats.hooks_unknown.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(hook = hit.hook_id, total = n + 1, "skipping a record of a hook no policy has");
            }
            return;
        };
        // A process the cache does not know (a kernel thread the walk
        // missed, or one evicted) is still reported, by its pid.
        let lineage = self.cache.of_pid(hit.pid).unwrap_or_else(|| Lineage::pid_only(hit.pid));
        info.events.fetch_add(1, Ordering::Relaxed);
        self.stats.policy_events.fetch_add(1, Ordering::Relaxed);
        let time = self.clock.wall(hit.ktime);
        let stacks = match &self.stacks {
            // The user stack first: it is read from the process's memory
            // map, which is gone once the process ends; the kernel's
            // symbols keep (and are read at the first stack).
            Some(s) => {
                let user = s.user_trace(hit.pid, hit.tid, &hit.user_stack);
                (s.kernel_trace(&hit.kernel_stack), user)
            }
            None => Default::default(),
        };
        self.publish(crate::policies::events::hook_event(&self.node, time, hit, &info, lineage, stacks));
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
        self.stats.returns_lost.store(k.returns_lost, Ordering::Relaxed);
        self.stats.select_failed.store(k.select_failed, Ordering::Relaxed);
        self.stats.binaries_full.store(k.binaries_full, Ordering::Relaxed);
        self.stats.stacks_lost.store(k.stacks_lost, Ordering::Relaxed);
        self.update_cache_stats();
        k
    }

    /// Handles the records in the ring buffer, at most [`PASS_MAX`], then
    /// publishes; whether records may be left.
    fn read_ring(&mut self, ring: &mut impl Records) -> bool {
        let mut handled = 0;
        while handled < PASS_MAX
            && let Some(item) = ring.next_record()
        {
            self.handle(&item);
            handled += 1;
        }
        self.end_read();
        handled == PASS_MAX
    }

    /// Reads until the ring buffer is empty, letting the runtime's other
    /// tasks run between passes.
    async fn drain_ring(&mut self, ring: &mut impl Records) {
        while self.read_ring(ring) {
            tokio::task::yield_now().await;
        }
    }

    /// Handles `records` as one read of the ring buffer (a benchmark's
    /// way in, without a kernel).
    pub fn handle_batch<'a>(&mut self, records: impl IntoIterator<Item = &'a [u8]>) {
        for bytes in records {
            self.handle(bytes);
        }
        self.end_read();
    }

    /// What follows each read: held events that may go, then publishing.
    fn end_read(&mut self) {
        self.drain_held();
        self.flush_bus();
        self.stats.ring_polls.fetch_add(1, Ordering::Relaxed);
        // Cheap (three stores), and keeps `vigil status` current.
        self.update_cache_stats();
    }

    /// How long the reader sleeps when nothing wakes it.
    fn idle_wait(&self) -> Duration {
        if self.pods.as_ref().is_some_and(PodStage::holding) { POD_RETRY } else { IDLE_WAIT }
    }

    /// Drains the ring buffer until `shutdown` fires, answering process-cache
    /// dumps between batches.
    pub async fn run(
        mut self,
        feed: KernelFeed,
        mut dumps: crate::dump::DumpRequests,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let KernelFeed { ring, counters } = feed;
        // SAFETY: the ring buffer owns its map fd and keeps it open, returning
        // the same fd, for as long as the AsyncFd owns it.
        let mut ring: AsyncFd<RingBuf<MapData>> =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)?;
        let mut last_report = Instant::now();
        // What queued before the reader was registered, at once.
        self.drain_ring(ring.get_mut()).await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(request) = dumps.recv() => {
                    // The asker may have gone; nothing to do then.
                    let (dump, left_out) = self.cache.dump(request.args.skip_zero_refcnt, crate::dump::MAX_REPLY_BYTES);
                    if left_out > 0 {
                        tracing::warn!(sent = dump.len(), left_out, limit = crate::dump::MAX_REPLY_BYTES, "process-cache dump cut to fit a default gRPC client");
                    }
                    let _ = request.reply.send(dump);
                }
                // Woken by the kernel, not by a short timer: an idle sensor
                // wakes once a second. Events held for their pod are retried
                // every POD_RETRY, as their pod may come any time.
                ready = tokio::time::timeout(self.idle_wait(), ring.readable_mut()) => {
                    let woken = match ready {
                        Ok(Ok(mut guard)) => {
                            guard.clear_ready();
                            true
                        }
                        _ => false,
                    };
                    if woken {
                        // A large backlog (the kernel forces a wakeup) ends the wait early.
                        if let Ok(Ok(mut guard)) = tokio::time::timeout(self.batch_delay, ring.readable_mut()).await {
                            guard.clear_ready();
                        }
                    }
                    self.drain_ring(ring.get_mut()).await;
                }
            }
            if last_report.elapsed() >= REPORT_INTERVAL {
                last_report = Instant::now();
                // Losses among them are logged by `losses`.
                self.refresh_counters(&counters);
            }
        }
        // What the kernel queued before the stop is still reported, so the
        // export and the final counters cover everything up to it.
        self.drain_ring(ring.get_mut()).await;
        // Final counters, so a last health read or log is exact.
        self.refresh_counters(&counters);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use futures::FutureExt;
    use node_sensor_common::{ExecRecord, KIND_EXEC};
    use proto::tetragon::get_events_response::Event;

    use super::*;

    impl Records for VecDeque<Vec<u8>> {
        type Record<'a> = Vec<u8>;
        fn next_record(&mut self) -> Option<Vec<u8>> {
            self.pop_front()
        }
    }

    /// The exec of `/bin/true <marker>` by a process of its own.
    fn exec_record(pid: u32, marker: &str) -> Vec<u8> {
        // SAFETY: all-zero is a valid ExecRecord.
        let mut r: ExecRecord = unsafe { std::mem::zeroed() };
        r.header.kind = KIND_EXEC;
        (r.pid, r.tid, r.ppid) = (pid, pid, 1);
        r.filename[..9].copy_from_slice(b"/bin/true");
        r.filename_len = 9;
        // The kernel's side leaves argv[0] out.
        let args = format!("{marker}\0");
        r.args[..args.len()].copy_from_slice(args.as_bytes());
        r.args_len = args.len() as u32;
        crate::decode::bytes_of(&r)
    }

    /// The arguments of the exec events the bus holds for `sub` now.
    fn take_now(sub: &mut events::bus::Subscription) -> Vec<String> {
        let mut taken = Vec::new();
        while let Some(Some(event)) = sub.next().now_or_never() {
            match event.event {
                Some(Event::ProcessExec(e)) => taken.push(e.process.map(|p| p.arguments).unwrap_or_default()),
                other => panic!("not an exec event: {other:?}"),
            }
        }
        taken
    }

    /// A backlog larger than a pass is read in passes of `PASS_MAX`, and
    /// the runtime's other tasks (here, what a client's stream does) run
    /// between them with the events of the passes before: on the sensor's
    /// one worker, a burst does not hold everything else up until it ends.
    #[tokio::test(flavor = "current_thread")]
    async fn a_backlog_is_read_in_passes_and_its_events_flow_between_them() {
        let bus = EventBus::new("node", 1 << 16);
        let mut sub = bus.subscribe(events::RequestFilters::default());
        let stats = Arc::new(SensorStats::default());
        let mut pipeline = Pipeline::new("node", Clock::fixed(0), Collect::default(), 1 << 16, bus, stats.clone());
        let total = 2 * PASS_MAX + 100;
        let mut ring: VecDeque<Vec<u8>> =
            (0..total).map(|i| exec_record(10_000 + i as u32, &format!("backlog-{i}"))).collect();

        // How many records the reader had handled each time the client
        // took events (as many as tokio's budget for one run allows).
        let client = tokio::spawn({
            let stats = stats.clone();
            async move {
                let mut handled_when_taking = Vec::new();
                let mut taken = Vec::new();
                while taken.len() < total {
                    let now = take_now(&mut sub);
                    if !now.is_empty() {
                        handled_when_taking.push(stats.records.load(Ordering::Relaxed));
                    }
                    taken.extend(now);
                    tokio::task::yield_now().await;
                }
                (handled_when_taking, taken)
            }
        });
        pipeline.drain_ring(&mut ring).await;
        let (mut handled_when_taking, taken) = client.await.expect("the client task ends");

        assert!(ring.is_empty());
        handled_when_taking.dedup();
        let pass = PASS_MAX as u64;
        assert_eq!(handled_when_taking, vec![pass, 2 * pass, 2 * pass + 100], "the client ran after each pass");
        assert_eq!(stats.ring_polls.load(Ordering::Relaxed), 3, "one read per pass");
        let expected: Vec<String> = (0..total).map(|i| format!("backlog-{i}")).collect();
        assert_eq!(taken, expected, "every event, once, in the ring's order");
    }
}
