//! Every loss and count the sensor keeps, in one place, so health output,
//! logs and (later) metrics report the same numbers.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use events::bus::EventBus;

#[derive(Debug, Default)]
pub struct SensorStats {
    /// Records read from the ring buffer.
    pub records: AtomicU64,
    /// Passes of the ring-buffer reader (at least one a second while it
    /// runs): the health service's sign of life.
    pub ring_polls: AtomicU64,
    /// Records that failed length/kind checks (counted and skipped).
    pub bad_records: AtomicU64,
    /// Kernel: reserve/output failures because the ring buffer was full.
    pub ringbuf_full: AtomicU64,
    /// Kernel: probe reads that failed (fields marked with error flags).
    pub kernel_read_errors: AtomicU64,
    pub cache_entries: AtomicU64,
    pub cache_evicted: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Records queued while `/proc` was walked that the walk already showed
    /// (skipped so no image is reported twice).
    pub startup_skipped: AtomicU64,
    /// Export-file lines dropped because the writer fell behind.
    pub export_dropped: AtomicU64,
    /// Events held waiting for their pod to appear in the Kubernetes watch.
    pub pod_waiting: AtomicU64,
    /// Events sent without pod data because their pod never appeared in time.
    pub pod_timeouts: AtomicU64,
    /// Pods of this node the Kubernetes watch knows (`--enable-k8s-api`).
    pub k8s_pods: AtomicU64,
    /// Errors of the Kubernetes pod watch (it retries with backoff).
    pub k8s_watch_errors: AtomicU64,
    /// Events tracing policies' hooks produced.
    pub policy_events: AtomicU64,
    /// Hook records of no known hook (skipped).
    pub hooks_unknown: AtomicU64,
    /// Kernel: return probes that found no kept entry (the call began
    /// before its policy, or the pending map was full): no event.
    pub returns_lost: AtomicU64,
    /// Kernel: hook records the selector program could not be handed: lost.
    pub select_failed: AtomicU64,
    /// Kernel: execs whose binary the `matchBinaries` map could not keep.
    pub binaries_full: AtomicU64,
    /// Kernel: stack traces a `Post` asked for that its event could not carry.
    pub stacks_lost: AtomicU64,
}

/// A point-in-time copy, printable on one line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub records: u64,
    pub bad_records: u64,
    pub ringbuf_full: u64,
    pub kernel_read_errors: u64,
    pub cache_entries: u64,
    pub cache_evicted: u64,
    pub cache_misses: u64,
    pub startup_skipped: u64,
    pub published: u64,
    pub subscriber_dropped: u64,
    pub export_dropped: u64,
    pub subscribers: u64,
    /// Bytes queued for GetEvents subscribers now.
    pub subscriber_queue_bytes: u64,
    pub pod_waiting: u64,
    pub pod_timeouts: u64,
    pub k8s_pods: u64,
    pub k8s_watch_errors: u64,
    pub policy_events: u64,
    pub hooks_unknown: u64,
    pub returns_lost: u64,
    pub select_failed: u64,
    pub binaries_full: u64,
    pub stacks_lost: u64,
}

impl SensorStats {
    pub fn snapshot(&self, bus: &EventBus) -> Snapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            records: r(&self.records),
            bad_records: r(&self.bad_records),
            ringbuf_full: r(&self.ringbuf_full),
            kernel_read_errors: r(&self.kernel_read_errors),
            cache_entries: r(&self.cache_entries),
            cache_evicted: r(&self.cache_evicted),
            cache_misses: r(&self.cache_misses),
            startup_skipped: r(&self.startup_skipped),
            published: r(&bus.stats.published),
            subscriber_dropped: r(&bus.stats.dropped),
            export_dropped: r(&self.export_dropped),
            subscribers: bus.subscriber_count() as u64,
            subscriber_queue_bytes: bus.queued_bytes() as u64,
            pod_waiting: r(&self.pod_waiting),
            pod_timeouts: r(&self.pod_timeouts),
            k8s_pods: r(&self.k8s_pods),
            k8s_watch_errors: r(&self.k8s_watch_errors),
            policy_events: r(&self.policy_events),
            hooks_unknown: r(&self.hooks_unknown),
            returns_lost: r(&self.returns_lost),
            select_failed: r(&self.select_failed),
            binaries_full: r(&self.binaries_full),
            stacks_lost: r(&self.stacks_lost),
        }
    }
}

impl Snapshot {
    /// Every counter, named as `vigil status` and the metrics show it:
    /// (name, value, whether it is a level rather than a count, help).
    pub fn fields(&self) -> [(&'static str, u64, bool, &'static str); 23] {
        [
            ("records", self.records, false, "Records read from the ring buffer"),
            ("bad_records", self.bad_records, false, "Ring-buffer records that failed their checks (skipped)"),
            ("ringbuf_full", self.ringbuf_full, false, "Kernel events lost to a full ring buffer"),
            ("kernel_read_errors", self.kernel_read_errors, false, "Kernel reads that failed (events sent flagged)"),
            ("cache_entries", self.cache_entries, true, "Processes in the process cache"),
            ("cache_evicted", self.cache_evicted, false, "Live processes evicted from the full cache"),
            ("cache_misses", self.cache_misses, false, "Events whose process or parent was not in the cache"),
            ("startup_skipped", self.startup_skipped, false, "Records the start-up /proc walk had already shown"),
            ("events", self.published, false, "Events published"),
            ("subscribers", self.subscribers, true, "GetEvents subscribers"),
            ("subscriber_queue_bytes", self.subscriber_queue_bytes, true, "Bytes queued for GetEvents subscribers"),
            ("subscriber_dropped", self.subscriber_dropped, false, "Events dropped for subscribers that fell behind"),
            ("export_dropped", self.export_dropped, false, "Export-file lines dropped (writer behind)"),
            ("pod_waiting", self.pod_waiting, true, "Events waiting for their pod"),
            ("pod_timeouts", self.pod_timeouts, false, "Events sent without their pod, which never appeared"),
            ("k8s_pods", self.k8s_pods, true, "Pods of this node the Kubernetes watch knows"),
            ("k8s_watch_errors", self.k8s_watch_errors, false, "Errors of the Kubernetes pod watch"),
            ("policy_events", self.policy_events, false, "Events tracing policies produced"),
            ("hooks_unknown", self.hooks_unknown, false, "Hook records of no known hook (skipped)"),
            ("returns_lost", self.returns_lost, false, "Return probes without their call's entry"),
            ("select_failed", self.select_failed, false, "Hook records lost on the way to the selector program"),
            ("binaries_full", self.binaries_full, false, "Execs whose binary matchBinaries could not keep (map full)"),
            (
                "stacks_lost",
                self.stacks_lost,
                false,
                "Stack traces a policy's Post asked for that its event could not carry",
            ),
        ]
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value, _, _)) in self.fields().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}
