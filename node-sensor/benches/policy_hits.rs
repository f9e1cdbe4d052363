//! Tracing-policy benchmark (root): an open-heavy loop without the sensor
//! and with it running a `syscalls/sys_enter_openat` policy of two
//! arguments (dfd, filename), in one run, printing ratios rather than
//! asserting times: the loop's wall-clock overhead, the cost per hit in
//! the kernel (kernel.bpf_stats_enabled: the tracepoint program, plus the
//! selector program where the policy has selectors), events delivered
//! against expected, and the sensor's CPU per event. Three policies: no
//! selectors; a selector every hit passes (filename Equal the file); one
//! every hit fails (filename Equal another path), which must deliver
//! nothing and cost the sensor no CPU per hit.
//!
//! `cargo bench -p node-sensor --bench policy_hits [-- OPENS]`
#![allow(clippy::unwrap_used, reason = "a benchmark: a panic ends the run with its reason")]

#[allow(dead_code, reason = "each bench uses part of what the benches share")]
mod support;

use std::time::{Duration, Instant};

use proto::tetragon::get_events_response::Event;
use proto::tetragon::kprobe_argument::Arg;
use proto::tetragon::{EventType, Filter, GetEventsRequest};
use support::{Sensor, cpu_model, cpu_of};

/// `n` open+close of `path` (one openat and one close syscall each).
fn open_storm(n: usize, path: &std::path::Path) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        drop(std::hint::black_box(std::fs::File::open(path).unwrap()));
    }
    start.elapsed()
}

/// (run time ns, runs) of the programs named `name`.
fn program_stats(name: &str) -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .fold((0, 0), |(t, c), p| (t + p.run_time().as_nanos() as u64, c + p.run_count()))
}

/// The policy, with `selectors` (YAML under the hook) appended.
fn policy(selectors: &str) -> String {
    format!(
        "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: bench-openat
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_openat
    args:
    - index: 5
      type: int32
    - index: 6
      type: string
{selectors}"
    )
}

/// A selector on the filename (field 6 of the tracepoint, as the policy's `index`).
fn filename_equal(path: &str) -> String {
    format!(
        "    selectors:\n    - matchArgs:\n      - index: 6\n        operator: Equal\n        values:\n        - \"{path}\"\n"
    )
}

/// What one phase with the sensor measured.
struct Phase {
    wall: Duration,
    /// Kernel time (tracepoint and selector programs) per tracepoint run.
    bpf_ns_per_hit: f64,
    hits: u64,
    delivered: usize,
    lost: u64,
    ringbuf_full: u64,
    cpu: Duration,
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("policy_hits: SKIP, needs root to load BPF programs");
        return;
    }
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200_000);
    let dir = std::env::temp_dir().join(format!("vigil-bench-tp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("opened-by-the-bench");
    std::fs::write(&target, b"x").unwrap();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();

    open_storm(n / 10, &target);
    let base1 = open_storm(n, &target);
    let wanted = target.display().to_string();
    let plain = with_sensor(&rt, &dir, n, &target, &policy(""));
    let passing = with_sensor(&rt, &dir, n, &target, &policy(&filename_equal(&wanted)));
    let rejecting = with_sensor(&rt, &dir, n, &target, &policy(&filename_equal("/nothing/opens/this")));
    // A namespaced policy on a node with no such pods: every hit stops at
    // the scope check, before any argument is read.
    let namespaced = policy("")
        .replace("kind: TracingPolicy\n", "kind: TracingPolicyNamespaced\n")
        .replace("  name: bench-openat\n", "  name: bench-openat\n  namespace: nowhere\n");
    let out_of_scope = with_sensor(&rt, &dir, n, &target, &namespaced);
    let base2 = open_storm(n, &target);
    let _ = std::fs::remove_dir_all(&dir);

    let base = (base1 + base2) / 2;
    let per = |d: Duration| d.as_secs_f64() * 1e9 / n as f64;
    println!("policy_hits: {n} open+close per phase; policy: sys_enter_openat with dfd (int32) and filename (string)");
    println!("  cpu             {}", cpu_model());
    println!("  without sensor  {:>8.0} ns per open+close (runs: {:.0}, {:.0})", per(base), per(base1), per(base2));
    for (label, p, expected) in [
        ("no selectors", &plain, n),
        ("selector passes", &passing, n),
        ("selector rejects", &rejecting, 0),
        ("out of scope (TracingPolicyNamespaced, no such pod)", &out_of_scope, 0),
    ] {
        println!("  {label}:");
        println!(
            "    wall          {:>8.0} ns per open+close, overhead {:+.2}% (ratio {:.4})",
            per(p.wall),
            (p.wall.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0,
            p.wall.as_secs_f64() / base.as_secs_f64()
        );
        println!(
            "    bpf           {:>8.0} ns per hit over {} hits (every openat on the host), {:.3} of the syscall's time",
            p.bpf_ns_per_hit,
            p.hits,
            p.bpf_ns_per_hit / per(base)
        );
        println!(
            "    events        {} of {expected} expected delivered to a gRPC client; {} reported lost; ring buffer full {} times",
            p.delivered, p.lost, p.ringbuf_full
        );
        println!(
            "    sensor        {:.3} s CPU, {:.2} µs per open+close",
            p.cpu.as_secs_f64(),
            p.cpu.as_secs_f64() * 1e6 / n as f64
        );
        // A bench that cannot lie: what it counted must add up.
        assert_eq!(p.delivered, expected, "{label}: events delivered");
        assert!(p.hits >= n as u64, "{label}: fewer tracepoint runs ({}) than opens ({n})", p.hits);
    }
    let ratio = |p: &Phase| p.bpf_ns_per_hit / plain.bpf_ns_per_hit;
    println!(
        "  kernel cost per hit against no selectors: passes {:.2}×, rejects {:.2}× ({:+.0} ns), out of scope {:.2}× ({:+.0} ns)",
        ratio(&passing),
        ratio(&rejecting),
        rejecting.bpf_ns_per_hit - plain.bpf_ns_per_hit,
        ratio(&out_of_scope),
        out_of_scope.bpf_ns_per_hit - plain.bpf_ns_per_hit
    );
}

/// One phase: the sensor with `policy_yaml`, `n` opens of `target`, and a
/// gRPC client counting the events about `target`.
fn with_sensor(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    n: usize,
    target: &std::path::Path,
    policy_yaml: &str,
) -> Phase {
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, policy_yaml).unwrap();
    let flags = [
        "--tracing-policy",
        policy.to_str().unwrap(),
        // Room for every event of the phase, so the client's lag is not
        // counted as the sensor's loss.
        "--subscriber-queue-size",
        "1000000",
        "--subscriber-queue-mib",
        "1024",
        "--subscriber-queues-total-mib",
        "2048",
    ];
    let sensor = Sensor::start(&dir.join("s.sock"), &flags);
    let (tx, rx) = std::sync::mpsc::channel();
    let want = target.display().to_string();
    let mut client = rt.block_on(sensor.client());
    let counter = rt.spawn(async move {
        let request = GetEventsRequest {
            allow_list: vec![Filter {
                event_set: vec![EventType::ProcessTracepoint as i32, EventType::RateLimitInfo as i32],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut stream = client.get_events(request).await.unwrap().into_inner();
        let _ = tx.send(());
        let (mut ours, mut lost) = (0usize, 0u64);
        while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
            match e.event {
                Some(Event::ProcessTracepoint(t))
                    if t.args.get(1).and_then(|a| a.arg.as_ref()) == Some(&Arg::StringArg(want.clone())) =>
                {
                    ours += 1
                }
                Some(Event::RateLimitInfo(r)) => lost += r.number_of_dropped_process_events,
                _ => {}
            }
        }
        (ours, lost)
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("sensor ready");
    let cpu0 = cpu_of(sensor.pid);
    let ((t0, c0), (s0, _)) = (program_stats("vigil_tp"), program_stats("vigil_st"));
    let wall = open_storm(n, target);
    let ((t1, c1), (s1, _)) = (program_stats("vigil_tp"), program_stats("vigil_st"));
    let cpu = cpu_of(sensor.pid).saturating_sub(cpu0);
    let ringbuf_full = rt.block_on(sensor.counter("ringbuf_full"));
    let (delivered, lost) = rt.block_on(counter).unwrap();
    sensor.stop();
    let hits = c1.saturating_sub(c0);
    let kernel = t1.saturating_sub(t0) + s1.saturating_sub(s0);
    Phase { wall, bpf_ns_per_hit: kernel as f64 / hits.max(1) as f64, hits, delivered, lost, ringbuf_full, cpu }
}
