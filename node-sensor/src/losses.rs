//! Every kind of loss, logged: once a second at most per kind, a warning
//! with how many were lost since the last one and the total, read from the
//! counters `vigil status` and the metrics show (so the three agree, and
//! each loss is in the log once). A last check at shutdown logs what the
//! final second lost.

use std::sync::Arc;
use std::time::Duration;

use events::bus::EventBus;
use tokio::sync::watch;

use crate::stats::{SensorStats, Snapshot};
use crate::uplink::Uplink;

/// How often the counters are compared.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Each kind of loss: its name in the log, what it is, and its count.
/// How many kinds of loss there are.
const KINDS: usize = 9;

fn kinds(s: &Snapshot, uplink: Option<&Uplink>) -> [(&'static str, &'static str, u64); KINDS] {
    [
        ("ringbuf_full", "kernel events lost to a full ring buffer", s.ringbuf_full),
        ("bad_records", "ring-buffer records that failed their checks", s.bad_records),
        ("subscriber_dropped", "events dropped for GetEvents clients that fell behind", s.subscriber_dropped),
        ("export_dropped", "events the export file did not get", s.export_dropped),
        ("returns_lost", "return probes without their call's entry", s.returns_lost),
        ("select_failed", "hook records lost on the way to the selector program", s.select_failed),
        ("binaries_full", "execs whose binary matchBinaries could not keep (the map was full)", s.binaries_full),
        ("stacks_lost", "stack traces a policy's Post asked for that its event could not carry", s.stacks_lost),
        (
            "relay_skipped",
            "events that left the replay buffer before a relay took them (lost to it)",
            uplink.map_or(0, Uplink::skipped),
        ),
    ]
}

/// Logs each kind's losses until `shutdown`, and once more after it.
pub fn watch(
    stats: Arc<SensorStats>,
    bus: EventBus,
    uplink: Option<Arc<Uplink>>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Every counter starts at 0 with the process: all it counts is logged.
        let mut seen = [0u64; KINDS];
        let stop = serving::listen::stopped(shutdown);
        tokio::pin!(stop);
        loop {
            let stopping = tokio::select! {
                () = &mut stop => true,
                () = tokio::time::sleep(CHECK_EVERY) => false,
            };
            for (i, (kind, what, total)) in kinds(&stats.snapshot(&bus), uplink.as_deref()).into_iter().enumerate() {
                if total > seen[i] {
                    tracing::warn!(kind = %kind, lost = total - seen[i], total, "{what}");
                    seen[i] = total;
                }
            }
            if stopping {
                return;
            }
        }
    })
}
