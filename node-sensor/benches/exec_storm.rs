//! Exec-storm benchmark (root): the same fork+exec+exit workload without the
//! sensor and with it, in one run, printing ratios rather than asserting
//! times. Also: events delivered vs expected, sensor CPU and RSS, and the
//! average BPF run time per program (kernel.bpf_stats_enabled).
//!
//! Phases: no sensor, the sensor, with cred+ns, with a metrics endpoint
//! and an export file, and with a tracing policy on every execve whose
//! selector rejects every hit (what a policy that filters in the kernel
//! costs an exec).
//!
//! `cargo bench -p node-sensor --bench exec_storm [-- EXECS]`
#![allow(clippy::unwrap_used, reason = "a benchmark: a panic ends the run with its reason")]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::{Filter, GetEventsRequest, GetHealthStatusRequest};
use serving::address::ServerAddress;
use support::{cpu_model, cpu_of};

/// Runs `n` fork+exec+exit of /bin/true, each with a marker argument.
fn storm(n: usize, mark: &str) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        let status = Command::new("/bin/true").arg(format!("{mark}-{i}")).status().expect("spawn /bin/true");
        assert!(status.success());
    }
    start.elapsed()
}

fn rss_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
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
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");

    // Warm the page cache and the dynamic loader.
    storm(200, "warm");
    let base1 = storm(n, "base1");

    let plain = with_sensor(&rt, n, &[], "plain");
    let full = with_sensor(&rt, n, &["--enable-process-cred", "--enable-process-ns"], "full");
    // Operations on: a metrics endpoint (every event counted by label) and
    // an export file (every event written as a line).
    let export = std::env::temp_dir().join(format!("vigil-bench-export-{}.jsonl", std::process::id()));
    let export_arg = export.display().to_string();
    let ops = with_sensor(&rt, n, &["--metrics-address", "127.0.0.1:0", "--export-filename", &export_arg], "ops");
    let _ = std::fs::remove_file(&export);
    let policy = std::env::temp_dir().join(format!("vigil-bench-reject-{}.yaml", std::process::id()));
    std::fs::write(&policy, REJECTING_POLICY).unwrap();
    let rejecting = with_sensor(&rt, n, &["--tracing-policy", &policy.display().to_string()], "reject");
    let _ = std::fs::remove_file(&policy);
    let base2 = storm(n, "base2");

    let base = (base1 + base2) / 2;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("exec_storm: {n} fork+exec+exit of /bin/true per phase");
    println!("  cpu: {}", cpu_model());
    println!("  without sensor: {:>9.0} execs/s  (runs: {:.0}, {:.0})", rate(base), rate(base1), rate(base2));
    let phases = [
        ("sensor", &plain),
        ("sensor+cred+ns", &full),
        ("sensor+metrics+export", &ops),
        ("sensor+policy rejecting every execve", &rejecting),
    ];
    for (label, r) in phases {
        println!("  with {label}:");
        println!(
            "    rate          {:>9.0} execs/s, overhead {:+.2}% per fork+exec+exit (ratio {:.4})",
            rate(r.wall),
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
            "    sensor        {:.3} s CPU ({:.1} µs per exec), RSS {} KiB (peak {} KiB)",
            r.cpu.as_secs_f64(),
            r.cpu.as_secs_f64() * 1e6 / n as f64,
            r.rss_kib,
            r.hwm_kib
        );
        for (name, ns) in &r.bpf_ns_per_run {
            println!("    bpf {name:<10} {ns:>6.0} ns/run");
        }
        println!("    bpf total     {:>6.0} ns per fork+exec+exit", r.bpf_ns_per_exec);
    }
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
    rss_kib: u64,
    hwm_kib: u64,
    bpf_ns_per_run: Vec<(String, f64)>,
    bpf_ns_per_exec: f64,
}

/// The storm with a sensor running (started with `flags`) and one
/// subscriber counting the storm's events.
fn with_sensor(rt: &tokio::runtime::Runtime, n: usize, flags: &[&str], label: &str) -> Phase {
    let dir = std::env::temp_dir().join(format!("vigil-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("s.sock");
    let address = ServerAddress::Unix(socket.clone());
    let mut sensor = Command::new(env!("CARGO_BIN_EXE_vigil-sensor"))
        .arg("--server-address")
        .arg(address.to_string())
        .args(flags)
        .stderr(Stdio::null())
        .spawn()
        .expect("start sensor");
    let sensor_pid = sensor.id();
    let mark = format!("storm{label}{}", std::process::id());
    let (tx, rx) = std::sync::mpsc::channel();
    let counter = {
        let address = address.clone();
        let mark = mark.clone();
        rt.spawn(async move {
            let mut client = loop {
                if let Ok(ch) = address.connect().await {
                    let mut c = FineGuidanceSensorsClient::new(ch);
                    if c.get_health(GetHealthStatusRequest::default()).await.is_ok() {
                        break c;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
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
    rx.recv_timeout(Duration::from_secs(30)).expect("sensor ready");
    let cpu_before = cpu_of(sensor_pid);
    let stats_before = bpf_stats();
    let with = storm(n, &mark);
    let stats_after = bpf_stats();
    let cpu_used = cpu_of(sensor_pid).saturating_sub(cpu_before);
    let (execs, exits, lost, policy_events) = rt.block_on(counter).unwrap();
    let rss = rss_kib(sensor_pid, "VmRSS:");
    let hwm = rss_kib(sensor_pid, "VmHWM:");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(sensor_pid as i32, libc::SIGTERM) };
    let _ = sensor.wait();
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
        rss_kib: rss,
        hwm_kib: hwm,
        bpf_ns_per_run,
        bpf_ns_per_exec: total / n as f64,
    }
}
