//! The sensor's Prometheus metrics (`--metrics-address`). Tetragon's names
//! where Tetragon has the metric, so its dashboards and alerts work
//! unchanged: `tetragon_events_total{type,namespace,workload,pod,binary}`,
//! `tetragon_policy_events_total{policy,hook,namespace,workload,pod}`,
//! `tetragon_missed_events_total`, `tetragon_process_cache_size`,
//! `tetragon_process_cache_evicted_total`,
//! `tetragon_process_cache_misses_total`, `tetragon_errors_total{type}`.
//! And every counter `vigil status` shows as `vigil_sensor_<name>`, read
//! from the same snapshot at each scrape.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use events::bus::EventBus;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use proto::tetragon::GetEventsResponse;
use proto::tetragon::get_events_response::Event;

use serving::metrics::counter;

use prometheus_client::metrics::gauge::ConstGauge;

use crate::policies::State;
use crate::policies::api::SharedPolicies;
use crate::stats::SensorStats;

/// Label series kept per metric at most; events past it are counted in
/// `vigil_sensor_metrics_series_overflow_total` instead of a new series.
pub const MAX_SERIES: usize = 10_000;

/// The labels `--metrics-label-filter` keeps (Tetragon's flag and names);
/// a label left out is empty on every series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelFilter {
    pub namespace: bool,
    pub workload: bool,
    pub pod: bool,
    pub binary: bool,
}

impl Default for LabelFilter {
    fn default() -> Self {
        LabelFilter { namespace: true, workload: true, pod: true, binary: true }
    }
}

impl std::str::FromStr for LabelFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut f = LabelFilter { namespace: false, workload: false, pod: false, binary: false };
        for label in s.split(',').map(str::trim).filter(|l| !l.is_empty()) {
            match label {
                "namespace" => f.namespace = true,
                "workload" => f.workload = true,
                "pod" => f.pod = true,
                "binary" => f.binary = true,
                _ => return Err("labels are namespace, workload, pod and binary".into()),
            }
        }
        Ok(f)
    }
}

/// An event series: type, namespace, workload, pod, binary.
type EventKey = (&'static str, String, String, String, String);
/// A policy series: policy, hook, namespace, workload, pod.
type PolicyKey = (String, String, String, String, String);

/// Events by label set, counted as they are published.
#[derive(Debug)]
pub struct EventCounts {
    labels: LabelFilter,
    events: Mutex<HashMap<EventKey, u64>>,
    policies: Mutex<HashMap<PolicyKey, u64>>,
    overflow: AtomicU64,
}

impl EventCounts {
    pub fn new(labels: LabelFilter) -> EventCounts {
        EventCounts {
            labels,
            events: Mutex::new(HashMap::new()),
            policies: Mutex::new(HashMap::new()),
            overflow: AtomicU64::new(0),
        }
    }

    pub fn count(&self, event: &GetEventsResponse) {
        let Some(kind) = &event.event else { return };
        let process = events::subject::process(event);
        let pod = process.and_then(|p| p.pod.as_ref());
        let keep = |on: bool, v: Option<&String>| if on { v.cloned().unwrap_or_default() } else { String::new() };
        let namespace = keep(self.labels.namespace, pod.map(|p| &p.namespace));
        let workload = keep(self.labels.workload, pod.map(|p| &p.workload));
        let pod_name = keep(self.labels.pod, pod.map(|p| &p.name));
        let binary = keep(self.labels.binary, process.map(|p| &p.binary));
        if let Some((policy, hook)) = policy_hook(kind) {
            self.add(&self.policies, (policy, hook, namespace.clone(), workload.clone(), pod_name.clone()));
        }
        self.add(&self.events, (kind.event_type().as_str_name(), namespace, workload, pod_name, binary));
    }

    fn add<K: std::hash::Hash + Eq>(&self, series: &Mutex<HashMap<K, u64>>, key: K) {
        let mut series = series.lock();
        let full = series.len() >= MAX_SERIES;
        match series.get_mut(&key) {
            Some(n) => *n += 1,
            None if full => {
                self.overflow.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                series.insert(key, 1);
            }
        }
    }
}

/// A policy event's policy and hook, as Tetragon labels them
/// (`kprobe:security_file_permission`).
fn policy_hook(kind: &Event) -> Option<(String, String)> {
    Some(match kind {
        Event::ProcessKprobe(k) => (k.policy_name.clone(), format!("kprobe:{}", k.function_name)),
        Event::ProcessTracepoint(t) => (t.policy_name.clone(), format!("tracepoint:{}:{}", t.subsys, t.event)),
        Event::ProcessUprobe(u) => (u.policy_name.clone(), format!("uprobe:{}:{}", u.path, u.symbol)),
        _ => return None,
    })
}

/// What a scrape reads.
struct SensorCollector {
    stats: Arc<SensorStats>,
    bus: EventBus,
    counts: Arc<EventCounts>,
    policies: SharedPolicies,
}

/// Tetragon's name for the sensor a program belongs to.
fn program_sensor(name: &str) -> (&'static str, &'static str) {
    match name {
        "vigil_exec" | "vigil_binary" => ("__base__", "sched_process_exec"),
        "vigil_exit" => ("__base__", "sched_process_exit"),
        "vigil_fork" => ("__base__", "sched_process_fork"),
        "vigil_tp" | "vigil_tf" | "vigil_st" => ("generic_tracepoint", ""),
        "vigil_up" => ("generic_uprobe", ""),
        // The probe selector program serves uprobes and kprobes alike.
        _ => ("generic_kprobe", ""),
    }
}

/// A program's labels, as Tetragon's overhead metrics have them.
fn program_labels(name: &str) -> [(&'static str, &str); 5] {
    let (sensor, attach) = program_sensor(name);
    [("policy", ""), ("policy_namespace", ""), ("sensor", sensor), ("attach", attach), ("section", name)]
}

/// Policies by state, and each program's runs and run time (Tetragon's
/// `tetragon_tracingpolicy_loaded` and `tetragon_overhead_program_*`; the
/// generic hook programs serve every policy, so their `policy` is empty).
fn encode_policies(encoder: &mut DescriptorEncoder, policies: &SharedPolicies) -> Result<(), std::fmt::Error> {
    let (list, runs, scope_refused) = {
        let host = policies.0.lock();
        (host.list(), host.program_runs(), host.scope_refused.load(std::sync::atomic::Ordering::Relaxed))
    };
    serving::metrics::counter(
        encoder,
        "vigil_policy_scope_cgroups_refused",
        "Container cgroups a scoped policy admits that did not fit into the kernel's scope map (their processes \
         go unseen by it)",
        scope_refused,
    )?;
    let mut family = encoder.encode_descriptor(
        "tetragon_tracingpolicy_loaded",
        "The number of loaded tracing policy by state.",
        None,
        MetricType::Gauge,
    )?;
    for state in ["enabled", "disabled", "load_error", "error"] {
        let n = list
            .iter()
            .filter(|p| match &p.state {
                State::Enabled => state == "enabled",
                State::Disabled => state == "disabled",
                State::Error(_) => state == "load_error",
            })
            .count();
        ConstGauge::new(n as i64).encode(family.encode_family(&[("state", state)])?)?;
    }
    let mut family = encoder.encode_descriptor(
        "tetragon_overhead_program_runs",
        "The total number of times BPF program was executed.",
        None,
        MetricType::Counter,
    )?;
    for p in &runs {
        ConstCounter::new(p.runs).encode(family.encode_family(&program_labels(&p.name))?)?;
    }
    let mut family = encoder.encode_descriptor(
        "tetragon_overhead_program_seconds",
        "The total time of BPF program running.",
        None,
        MetricType::Counter,
    )?;
    for p in &runs {
        ConstCounter::new(p.run_ns as f64 / 1e9).encode(family.encode_family(&program_labels(&p.name))?)?;
    }
    let mut family = encoder.encode_descriptor(
        "vigil_policy_selector_actions",
        "What each policy hook's selectors did, counted in the kernel: post, nopost, signal, monitor_signal, \
         override, monitor_override, and rate_limited (held back by a rateLimit)",
        None,
        MetricType::Counter,
    )?;
    for p in &list {
        for h in &p.selector_counts {
            for (i, (_, c)) in h.selectors.iter().enumerate() {
                let selector = i.to_string();
                for (action, n) in [
                    ("post", c.post),
                    ("nopost", c.nopost),
                    ("signal", c.signal),
                    ("monitor_signal", c.monitor_signal),
                    ("rate_limited", c.rate_limited),
                    ("override", c.overrides),
                    ("monitor_override", c.monitor_overrides),
                ] {
                    let labels = [
                        ("policy", p.name.as_str()),
                        ("hook", h.hook.as_str()),
                        ("selector", selector.as_str()),
                        ("action", action),
                    ];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
    }
    gauge(
        encoder,
        "vigil_sensor_bpf_stats_enabled",
        "Whether the kernel counts BPF programs' runs and run time (kernel.bpf_stats_enabled)",
        u64::from(bpf_stats_enabled()),
    )
}

/// `kernel.bpf_stats_enabled`; a held BPF_ENABLE_STATS fd counts too but
/// is not visible here.
fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
}

impl std::fmt::Debug for SensorCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorCollector").finish_non_exhaustive()
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    serving::metrics::gauge(encoder, name, help, i64::try_from(v).unwrap_or(i64::MAX))
}

/// A counter family with five labels, `names`, one series per item.
fn counters<'a>(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    names: [&str; 5],
    series: impl Iterator<Item = ([&'a str; 5], u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (values, n) in series {
        let labels: [(&str, &str); 5] = std::array::from_fn(|i| (names[i], values[i]));
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for SensorCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.stats.snapshot(&self.bus);
        let events = self.counts.events.lock();
        counters(
            &mut encoder,
            ("tetragon_events", "The total number of Tetragon events"),
            ["type", "namespace", "workload", "pod", "binary"],
            events.iter().map(|((kind, ns, workload, pod, binary), n)| ([*kind, ns, workload, pod, binary], *n)),
        )?;
        drop(events);
        let policies = self.counts.policies.lock();
        counters(
            &mut encoder,
            ("tetragon_policy_events", "Policy events calls observed"),
            ["policy", "hook", "namespace", "workload", "pod"],
            policies
                .iter()
                .map(|((policy, hook, ns, workload, pod), n)| ([policy.as_str(), hook, ns, workload, pod], *n)),
        )?;
        drop(policies);
        counter(
            &mut encoder,
            "tetragon_missed_events",
            "Events the kernel could not put in the ring buffer",
            s.ringbuf_full,
        )?;
        counter(
            &mut encoder,
            "tetragon_observer_ringbuf_events_received",
            "Number of perf events Tetragon ring buffer received.",
            s.records,
        )?;
        counter(
            &mut encoder,
            "tetragon_observer_ringbuf_events_lost",
            "Number of perf events Tetragon ring buffer lost.",
            s.ringbuf_full,
        )?;
        counter(
            &mut encoder,
            "tetragon_observer_ringbuf_errors",
            "Number of errors when reading Tetragon ring buffer.",
            s.bad_records,
        )?;
        gauge(
            &mut encoder,
            "tetragon_event_cache_entries",
            "The number of entries in the event cache.",
            s.pod_waiting,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "tetragon_event_cache_fetch_failures",
                "Number of failed fetches from the event cache. These won't be retried as they already exceeded the limit.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(s.pod_timeouts).encode(family.encode_family(&[("entry_type", "pod_info")])?)?;
        }
        encode_policies(&mut encoder, &self.policies)?;
        gauge(&mut encoder, "tetragon_process_cache_size", "The size of the process cache", s.cache_entries)?;
        counter(
            &mut encoder,
            "tetragon_process_cache_evicted",
            "Live processes evicted from the full cache",
            s.cache_evicted,
        )?;
        counter(
            &mut encoder,
            "tetragon_process_cache_misses",
            "Events whose process was not in the cache",
            s.cache_misses,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "tetragon_errors",
                "The total number of errors",
                None,
                MetricType::Counter,
            )?;
            for (kind, n) in [
                ("bad_ring_buffer_record", s.bad_records),
                ("kernel_read_error", s.kernel_read_errors),
                ("unknown_hook_record", s.hooks_unknown),
                ("k8s_watch_error", s.k8s_watch_errors),
            ] {
                ConstCounter::new(n).encode(family.encode_family(&[("type", kind)])?)?;
            }
        }
        counter(
            &mut encoder,
            "vigil_sensor_metrics_series_overflow",
            "Events not in a labelled series: the metric had its series limit",
            self.counts.overflow.load(Ordering::Relaxed),
        )?;
        for (name, value, is_gauge, help) in s.fields() {
            let name = format!("vigil_sensor_{name}");
            if is_gauge {
                gauge(&mut encoder, &name, help, value)?;
            } else {
                counter(&mut encoder, &name, help, value)?;
            }
        }
        Ok(())
    }
}

/// The relay uplink: each link's state and the replay buffer's fill.
pub struct UplinkCollector(pub Arc<crate::uplink::Uplink>);

impl std::fmt::Debug for UplinkCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UplinkCollector").finish_non_exhaustive()
    }
}

impl Collector for UplinkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let fill = self.0.replay.fill();
        gauge(
            &mut encoder,
            "vigil_sensor_replay_buffer_events",
            "Events in the relay replay buffer",
            fill.events as u64,
        )?;
        gauge(
            &mut encoder,
            "vigil_sensor_replay_buffer_capacity",
            "Events the relay replay buffer holds at most (--replay-buffer-size)",
            fill.capacity as u64,
        )?;
        counter(
            &mut encoder,
            "vigil_sensor_replay_buffer_evicted",
            "Events pushed out of the replay buffer by newer ones",
            fill.evicted,
        )?;
        gauge(
            &mut encoder,
            "vigil_sensor_uplink_last_seq",
            "Sequence number of the newest event for relays",
            fill.last_seq,
        )?;
        let links = self.0.links();
        type Read = fn(&crate::uplink::LinkState) -> u64;
        let per_link: [(&str, &str, MetricType, Read); 5] = [
            (
                "vigil_sensor_uplink_connected",
                "Whether the stream to this relay address is up",
                MetricType::Gauge,
                |s| u64::from(s.connected.load(Ordering::Relaxed)),
            ),
            (
                "vigil_sensor_uplink_sent_seq",
                "The last sequence number sent to this relay address",
                MetricType::Gauge,
                |s| s.sent.load(Ordering::Relaxed),
            ),
            (
                "vigil_sensor_uplink_acked_seq",
                "The last sequence number this relay address acknowledged",
                MetricType::Gauge,
                |s| s.acked.load(Ordering::Relaxed),
            ),
            ("vigil_sensor_uplink_streams", "Streams opened to this relay address", MetricType::Counter, |s| {
                s.streams.load(Ordering::Relaxed)
            }),
            (
                "vigil_sensor_uplink_skipped",
                "Events that left the replay buffer before this relay address took them (lost to it)",
                MetricType::Counter,
                |s| s.skipped.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, kind, read) in per_link {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (relay, addr, state) in &links {
                let addr = addr.to_string();
                let labels = [("relay", relay.as_str()), ("address", addr.as_str())];
                serving::metrics::encode_value(family.encode_family(&labels)?, kind, read(state))?;
            }
        }
        Ok(())
    }
}

/// What the sensor's metrics are read from.
pub struct Sources {
    pub stats: Arc<SensorStats>,
    pub bus: EventBus,
    pub counts: Arc<EventCounts>,
    pub policies: SharedPolicies,
    /// The API listener's refused connections.
    pub refusals: Arc<serving::listen::Refusals>,
    pub export: Option<Arc<serving::export::ExportStats>>,
    pub uplink: Option<Arc<crate::uplink::Uplink>>,
}

/// The registry a scrape answers.
pub fn registry(s: Sources) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(serving::metrics::ClientQueueCollector {
        prefix: "vigil_sensor",
        bus: s.bus.clone(),
    }));
    registry.register_collector(Box::new(serving::metrics::RefusalCollector {
        name: "vigil_sensor_connections_refused",
        listeners: vec![("api", s.refusals)],
    }));
    if let Some(export) = s.export {
        registry.register_collector(Box::new(serving::export::ExportCollector(export)));
    }
    if let Some(uplink) = s.uplink {
        registry.register_collector(Box::new(UplinkCollector(uplink)));
    }
    registry.register_collector(Box::new(SensorCollector {
        stats: s.stats,
        bus: s.bus,
        counts: s.counts,
        policies: s.policies,
    }));
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_filter_takes_tetragons_labels_only() {
        assert_eq!("namespace,workload,pod,binary".parse::<LabelFilter>(), Ok(LabelFilter::default()));
        let f: LabelFilter = "binary".parse().unwrap();
        assert!(f.binary && !f.namespace && !f.workload && !f.pod);
        assert!("binary,container".parse::<LabelFilter>().is_err());
    }

    #[test]
    fn series_past_the_limit_are_counted_not_kept() {
        let counts = EventCounts::new(LabelFilter::default());
        for i in 0..MAX_SERIES + 3 {
            counts.count(&test_support::events::exec(&format!("/bin/b{i}")).build());
        }
        counts.count(&test_support::events::exec("/bin/b0").build());
        assert_eq!(counts.events.lock().len(), MAX_SERIES);
        assert_eq!(counts.overflow.load(Ordering::Relaxed), 3);
        assert_eq!(
            counts.events.lock()[&("PROCESS_EXEC", String::new(), String::new(), String::new(), "/bin/b0".into())],
            2
        );
    }
}
