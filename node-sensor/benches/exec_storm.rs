//! Exec-storm benchmark (root): the same fork+exec+exit workload without the
//! sensor and with it, in one run, printing ratios rather than asserting
//! times. Also: events delivered vs expected, sensor CPU and RSS, and the
//! average BPF run time per program (kernel.bpf_stats_enabled).
//!
//! `cargo bench -p node-sensor --bench exec_storm [-- EXECS]`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::{Filter, GetEventsRequest, GetHealthStatusRequest};
use proto::transport::ServerAddress;

/// Runs `n` fork+exec+exit of /bin/true, each with a marker argument.
fn storm(n: usize, mark: &str) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        let status = Command::new("/bin/true").arg(format!("{mark}-{i}")).status().expect("spawn /bin/true");
        assert!(status.success());
    }
    start.elapsed()
}

fn proc_stat_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // utime, stime are fields 14 and 15 overall: indexes 11, 12 after comm.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
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

    let dir = std::env::temp_dir().join(format!("vigil-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("s.sock");
    let address = ServerAddress::Unix(socket.clone());
    let mut sensor = Command::new(env!("CARGO_BIN_EXE_vigil-sensor"))
        .arg("--server-address")
        .arg(address.to_string())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sensor");
    let sensor_pid = sensor.id();
    let mark = format!("storm{}", std::process::id());
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
            let (mut execs, mut exits, mut lost) = (0usize, 0usize, 0u64);
            while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                match e.event {
                    Some(Event::ProcessExec(_)) => execs += 1,
                    Some(Event::ProcessExit(_)) => exits += 1,
                    Some(Event::RateLimitInfo(r)) => lost += r.number_of_dropped_process_events,
                    _ => {}
                }
            }
            (execs, exits, lost)
        })
    };
    rx.recv_timeout(Duration::from_secs(30)).expect("sensor ready");
    let cpu_before = proc_stat_cpu(sensor_pid);
    let stats_before = bpf_stats();
    let with = storm(n, &mark);
    let stats_after = bpf_stats();
    let cpu_used = proc_stat_cpu(sensor_pid).saturating_sub(cpu_before);
    let (execs, exits, lost) = rt.block_on(counter).unwrap();
    let rss = rss_kib(sensor_pid, "VmRSS:");
    let hwm = rss_kib(sensor_pid, "VmHWM:");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(sensor_pid as i32, libc::SIGTERM) };
    let _ = sensor.wait();
    let base2 = storm(n, "base2");
    let _ = std::fs::remove_dir_all(&dir);

    let base = (base1 + base2) / 2;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!("exec_storm: {n} fork+exec+exit of /bin/true per phase");
    println!("  without sensor: {:>9.0} execs/s  (runs: {:.0}, {:.0})", rate(base), rate(base1), rate(base2));
    println!("  with sensor:    {:>9.0} execs/s", rate(with));
    println!(
        "  overhead:       {:>+8.2}% per fork+exec+exit (with/without = {:.4})",
        (with.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0,
        with.as_secs_f64() / base.as_secs_f64()
    );
    println!("  events:         {execs} exec + {exits} exit delivered of {n} + {n} expected; {lost} reported lost");
    println!(
        "  sensor:         {:.3} s CPU for the storm ({:.1} µs per exec), RSS {} KiB (peak {} KiB)",
        cpu_used.as_secs_f64(),
        cpu_used.as_secs_f64() * 1e6 / n as f64,
        rss,
        hwm
    );
    for (name, t1, c1) in &stats_after {
        let (t0, c0) = stats_before.iter().find(|(n0, _, _)| n0 == name).map_or((0, 0), |(_, t, c)| (*t, *c));
        let runs = c1.saturating_sub(c0);
        if runs > 0 {
            println!("  bpf {name:<11} {:>7.0} ns/run over {runs} runs", t1.saturating_sub(t0) as f64 / runs as f64);
        }
    }
    let exec_ns: f64 = stats_after
        .iter()
        .map(|(name, t1, _)| {
            t1.saturating_sub(stats_before.iter().find(|(n0, _, _)| n0 == name).map_or(0, |x| x.1)) as f64
        })
        .sum::<f64>()
        / n as f64;
    println!("  bpf total:      {exec_ns:.0} ns per exec (fork + exec + exit programs)");
}
