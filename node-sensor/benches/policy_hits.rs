//! Tracing-policy benchmark (root): an open-heavy loop without the sensor
//! and with it running a `syscalls/sys_enter_openat` policy of two
//! arguments (dfd, filename), in one run, printing ratios rather than
//! asserting times: the loop's wall-clock overhead, the tracepoint
//! program's cost per hit (kernel.bpf_stats_enabled), events delivered
//! against expected, and the sensor's CPU per event.
//!
//! `cargo bench -p node-sensor --bench policy_hits [-- OPENS]`
#![allow(clippy::unwrap_used, reason = "a benchmark: a panic ends the run with its reason")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::kprobe_argument::Arg;
use proto::tetragon::{EventType, Filter, GetEventsRequest, GetHealthStatusRequest};
use serving::address::ServerAddress;

/// `n` open+close of `path` (one openat and one close syscall each).
fn open_storm(n: usize, path: &std::path::Path) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        drop(std::hint::black_box(std::fs::File::open(path).unwrap()));
    }
    start.elapsed()
}

fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    Duration::from_millis((f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10)
}

/// (run time ns, runs) of the sensor's tracepoint program(s).
fn tracepoint_stats() -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some("vigil_tp"))
        .fold((0, 0), |(t, c), p| (t + p.run_time().as_nanos() as u64, c + p.run_count()))
}

const POLICY: &str = "apiVersion: cilium.io/v1alpha1
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
";

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
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();

    open_storm(n / 10, &target);
    let base1 = open_storm(n, &target);

    let socket = dir.join("s.sock");
    let address = ServerAddress::Unix(socket);
    let mut sensor = Command::new(env!("CARGO_BIN_EXE_vigil-sensor"))
        .arg("--server-address")
        .arg(address.to_string())
        .arg("--tracing-policy")
        .arg(&policy)
        // Room for every event of the phase, so the client's lag is not
        // counted as the sensor's loss.
        .args(["--subscriber-queue-size", "1000000", "--subscriber-queue-mib", "1024"])
        .args(["--subscriber-queues-total-mib", "2048"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start sensor");
    let pid = sensor.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let want = target.display().to_string();
    let counter = rt.spawn(async move {
        let mut client = loop {
            if let Ok(ch) = address.connect().await {
                let mut c = FineGuidanceSensorsClient::new(ch).max_decoding_message_size(64 << 20);
                if c.get_health(GetHealthStatusRequest::default()).await.is_ok() {
                    break c;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
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
    let cpu0 = cpu_of(pid);
    let (t0, c0) = tracepoint_stats();
    let with = open_storm(n, &target);
    let (t1, c1) = tracepoint_stats();
    let cpu = cpu_of(pid).saturating_sub(cpu0);
    let health = rt.block_on(async {
        let ch = ServerAddress::Unix(dir.join("s.sock")).connect().await.unwrap();
        let h = FineGuidanceSensorsClient::new(ch).get_health(GetHealthStatusRequest::default()).await.unwrap();
        h.into_inner().health_status.first().map(|s| s.details.clone()).unwrap_or_default()
    });
    let counter_of = |key: &str| -> u64 {
        health.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok()).unwrap_or(0)
    };
    let ringbuf_full = counter_of("ringbuf_full");
    let (ours, lost) = rt.block_on(counter).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = sensor.wait();
    let base2 = open_storm(n, &target);
    let _ = std::fs::remove_dir_all(&dir);

    let base = (base1 + base2) / 2;
    let per = |d: Duration| d.as_secs_f64() * 1e9 / n as f64;
    let runs = c1.saturating_sub(c0);
    println!("policy_hits: {n} open+close per phase; policy: sys_enter_openat with dfd (int32) and filename (string)");
    println!("  without sensor  {:>8.0} ns per open+close (runs: {:.0}, {:.0})", per(base), per(base1), per(base2));
    println!(
        "  with policy     {:>8.0} ns per open+close, overhead {:+.2}% (ratio {:.4})",
        per(with),
        (with.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0,
        with.as_secs_f64() / base.as_secs_f64()
    );
    if runs > 0 {
        println!(
            "  bpf vigil_tp    {:>8.0} ns/run over {runs} runs (every openat on the host)",
            t1.saturating_sub(t0) as f64 / runs as f64
        );
    }
    println!(
        "  events          {ours} of {n} expected delivered to a gRPC client; {lost} reported lost; ring buffer full {ringbuf_full} times"
    );
    println!(
        "  sensor          {:.3} s CPU, {:.2} µs per event, {:.0} events/s per CPU second",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64,
        n as f64 / cpu.as_secs_f64().max(1e-9)
    );
}
