//! Exec-storm benchmark (root): the same fork+exec+exit workload without the
//! sensor and with it, in one run, printing ratios rather than asserting
//! times. Also: events delivered vs expected, sensor CPU and RSS, and the
//! average BPF run time per program (kernel.bpf_stats_enabled).
//!
//! Phases: no sensor, the sensor, with cred+ns, with a metrics endpoint
//! and an export file, and with a tracing policy on every execve whose
//! selector rejects every hit (what a policy that filters in the kernel
//! costs an exec), and with reads of the ring buffer 50 ms apart instead
//! of 10 (`--ring-batch-ms 50`). Then the parallel mode: one exec loop
//! per core at once (the worst case for a small node: the sensor competes
//! with the storm for every core), without and with the sensor, reporting
//! overhead and loss. The sensor's CPU per exec is also given as a share of the time
//! an exec takes without it, and its CPU while idle.
//!
//! `cargo bench -p node-sensor --bench exec_storm [-- EXECS]`
#![allow(clippy::unwrap_used, reason = "a benchmark: a panic ends the run with its reason")]

#[allow(dead_code, reason = "each bench uses part of what the benches share")]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use proto::tetragon::get_events_response::Event;
use proto::tetragon::{Filter, GetEventsRequest};
use support::{Sensor, cpu_model, cpu_of, cpu_of_live_threads, status_kib};

/// Runs `n` fork+exec+exit of /bin/true, each with a marker argument.
fn storm(n: usize, mark: &str) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        let status = Command::new("/bin/true").arg(format!("{mark}-{i}")).status().expect("spawn /bin/true");
        assert!(status.success());
    }
    start.elapsed()
}

/// `loops` storms of `n` at once, one per thread; the time until all end.
fn parallel_storm(n: usize, loops: usize, mark: &str) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..loops {
            scope.spawn(move || storm(n, &format!("{mark}-{t}")));
        }
    });
    start.elapsed()
}

fn bpf_stats() -> Vec<(String, u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.name_as_str()?.to_owned();
            name.starts_with("vigil_").then(|| (name, p.run_time().as_nanos() as u64, p.run_count()))
        })
        .collect()
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("exec_storm: SKIP, needs root to load BPF programs");
        return;
    }
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5000);
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");

    // Warm the page cache and the dynamic loader.
    storm(200, "warm");
    let serial = |mark: &str| storm(n, mark);
    let parallel = |mark: &str| parallel_storm(n, cores, mark);
    let base1 = storm(n, "base1");

    let plain = with_sensor(&rt, n, &[], "plain", &serial);
    // Reads of the ring buffer 50 ms apart in a storm, not 10: fewer rounds
    // of thread wakeups per exec, events later by as much.
    let batched = with_sensor(&rt, n, &["--ring-batch-ms", "50"], "batch50", &serial);
    let full = with_sensor(&rt, n, &["--enable-process-cred", "--enable-process-ns"], "full", &serial);
    // Operations on: a metrics endpoint (every event counted by label) and
    // an export file (every event written as a line).
    let export = std::env::temp_dir().join(format!("vigil-bench-export-{}.jsonl", std::process::id()));
    let export_arg = export.display().to_string();
    let ops =
        with_sensor(&rt, n, &["--metrics-address", "127.0.0.1:0", "--export-filename", &export_arg], "ops", &serial);
    let _ = std::fs::remove_file(&export);
    let policy = std::env::temp_dir().join(format!("vigil-bench-reject-{}.yaml", std::process::id()));
    std::fs::write(&policy, REJECTING_POLICY).unwrap();
    let rejecting = with_sensor(&rt, n, &["--tracing-policy", &policy.display().to_string()], "reject", &serial);
    let _ = std::fs::remove_file(&policy);
    let base2 = storm(n, "base2");

    let pbase1 = parallel_storm(n, cores, "pbase1");
    let par = with_sensor(&rt, n * cores, &[], "par", &parallel);
    let pbase2 = parallel_storm(n, cores, "pbase2");

    let base = (base1 + base2) / 2;
    let pbase = (pbase1 + pbase2) / 2;
    let rate = |count: usize, d: Duration| count as f64 / d.as_secs_f64();
    println!("exec_storm: {n} fork+exec+exit of /bin/true per phase (parallel: {cores} loops of {n} at once)");
    println!("  cpu: {}", cpu_model());
    println!(
        "  without sensor: {:>9.0} execs/s  (runs: {:.0}, {:.0}); {:.1} µs per exec",
        rate(n, base),
        rate(n, base1),
        rate(n, base2),
        base.as_secs_f64() * 1e6 / n as f64
    );
    let phases = [
        ("sensor", &plain),
        ("sensor --ring-batch-ms 50", &batched),
        ("sensor+cred+ns", &full),
        ("sensor+metrics+export", &ops),
        ("sensor+policy rejecting every execve", &rejecting),
    ];
    for (label, r) in phases {
        println!("  with {label}:");
        report(label, r, n, base);
    }
    println!(
        "  parallel, without sensor: {:>9.0} execs/s  (runs: {:.0}, {:.0}); {:.1} µs per exec",
        rate(n * cores, pbase),
        rate(n * cores, pbase1),
        rate(n * cores, pbase2),
        pbase.as_secs_f64() * 1e6 / (n * cores) as f64
    );
    println!("  parallel, with sensor:");
    report("parallel", &par, n * cores, pbase);
}

/// Prints a phase against its baseline, and checks what it counted.
fn report(label: &str, r: &Phase, n: usize, base: Duration) {
    let exec_time = base.as_secs_f64() / n as f64;
    let cpu_per_exec = r.cpu.as_secs_f64() / n as f64;
    println!(
        "    rate          {:>9.0} execs/s, overhead {:+.2}% per fork+exec+exit (ratio {:.4})",
        n as f64 / r.wall.as_secs_f64(),
        (r.wall.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0,
        r.wall.as_secs_f64() / base.as_secs_f64()
    );
    println!(
        "    events        {} exec + {} exit delivered of {n} + {n} expected; {} reported lost; {} policy events",
        r.execs, r.exits, r.lost, r.policy_events
    );
    // A bench that cannot lie: what it counted must add up.
    assert_eq!(r.execs + r.lost as usize, n, "{label}: execs delivered or reported lost");
    assert_eq!(r.policy_events, 0, "{label}: no policy event passes");
    println!(
        "    sensor        {:.3} s CPU ({:.1} µs per exec, {:.2}% of an exec's time without the sensor), RSS {} KiB (peak {} KiB)",
        r.cpu.as_secs_f64(),
        cpu_per_exec * 1e6,
        cpu_per_exec / exec_time * 100.0,
        r.rss_kib,
        r.hwm_kib
    );
    println!("    sensor idle   {:.0} µs CPU per second (one client connected, before the storm)", r.idle_cpu_per_s);
    for (name, ns) in &r.bpf_ns_per_run {
        println!("    bpf {name:<10} {ns:>6.0} ns/run");
    }
    println!("    bpf total     {:>6.0} ns per fork+exec+exit", r.bpf_ns_per_exec);
}

/// A policy on every execve whose one selector no exec passes: the
/// selector program runs for each, and nothing reaches user space.
const REJECTING_POLICY: &str = "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: bench-reject-execve
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_execve
    args:
    - index: 5
      type: string
    selectors:
    - matchArgs:
      - index: 5
        operator: Equal
        values:
        - \"/nothing/execs/this\"
";

struct Phase {
    wall: Duration,
    execs: usize,
    exits: usize,
    lost: u64,
    /// Events of the storm's processes other than exec and exit (a
    /// policy's).
    policy_events: usize,
    cpu: Duration,
    /// µs of CPU per second while idle, before the storm.
    idle_cpu_per_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
    bpf_ns_per_run: Vec<(String, f64)>,
    bpf_ns_per_exec: f64,
}

/// The storm (`workload`, `n` execs in all) with a sensor running
/// (started with `flags`) and one subscriber counting the storm's events.
fn with_sensor(
    rt: &tokio::runtime::Runtime,
    n: usize,
    flags: &[&str],
    label: &str,
    workload: &dyn Fn(&str) -> Duration,
) -> Phase {
    let dir = std::env::temp_dir().join(format!("vigil-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sensor = Sensor::start(&dir.join("s.sock"), flags);
    let mark = format!("storm{label}{}", std::process::id());
    let (tx, rx) = std::sync::mpsc::channel();
    let mut client = rt.block_on(sensor.client());
    let counter = {
        let mark = mark.clone();
        rt.spawn(async move {
            let req = GetEventsRequest {
                allow_list: vec![Filter { arguments_regex: vec![format!("^{mark}-")], ..Default::default() }],
                ..Default::default()
            };
            let mut stream = client.get_events(req).await.unwrap().into_inner();
            let _ = tx.send(());
            let (mut execs, mut exits, mut lost, mut policy) = (0usize, 0usize, 0u64, 0usize);
            while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                match e.event {
                    Some(Event::ProcessExec(_)) => execs += 1,
                    Some(Event::ProcessExit(_)) => exits += 1,
                    Some(Event::RateLimitInfo(r)) => lost += r.number_of_dropped_process_events,
                    Some(_) => policy += 1,
                    None => {}
                }
            }
            (execs, exits, lost, policy)
        })
    };
    rx.recv_timeout(Duration::from_secs(30)).expect("subscribed");
    // Idle, with its client: what the sensor costs a quiet node.
    let idle_for = Duration::from_secs(2);
    let idle_before = cpu_of_live_threads(sensor.pid);
    std::thread::sleep(idle_for);
    let idle = cpu_of_live_threads(sensor.pid).saturating_sub(idle_before);
    let cpu_before = cpu_of(sensor.pid);
    let stats_before = bpf_stats();
    let with = workload(&mark);
    let stats_after = bpf_stats();
    let cpu_used = cpu_of(sensor.pid).saturating_sub(cpu_before);
    let (execs, exits, lost, policy_events) = rt.block_on(counter).unwrap();
    let rss = status_kib(sensor.pid, "VmRSS:");
    let hwm = status_kib(sensor.pid, "VmHWM:");
    sensor.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let mut bpf_ns_per_run = Vec::new();
    let mut total = 0.0;
    for (name, t1, c1) in &stats_after {
        let (t0, c0) = stats_before.iter().find(|(n0, _, _)| n0 == name).map_or((0, 0), |(_, t, c)| (*t, *c));
        let runs = c1.saturating_sub(c0);
        let ns = t1.saturating_sub(t0) as f64;
        total += ns;
        if runs > 0 {
            bpf_ns_per_run.push((name.clone(), ns / runs as f64));
        }
    }
    Phase {
        wall: with,
        execs,
        exits,
        lost,
        policy_events,
        cpu: cpu_used,
        idle_cpu_per_s: idle.as_secs_f64() * 1e6 / idle_for.as_secs_f64(),
        rss_kib: rss,
        hwm_kib: hwm,
        bpf_ns_per_run,
        bpf_ns_per_exec: total / n as f64,
    }
}
