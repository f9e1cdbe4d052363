//! Memory per cached process (root): the sensor's RSS before and after N
//! live processes enter its process cache, divided by N. The processes
//! are copies of `sleep` at a path of their own, so a gRPC client counts
//! exactly their exec events (the sign they are cached), and their exits
//! after they are killed (the sign they are gone again). A first round
//! warms up; the second is measured.
//!
//! `cargo bench -p node-sensor --bench process_cache_memory [-- N]`
#![allow(clippy::unwrap_used, reason = "a benchmark: a panic ends the run with its reason")]

#[allow(dead_code, reason = "each bench uses part of what the benches share")]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::tetragon::get_events_response::Event;
use proto::tetragon::{Filter, GetEventsRequest};
use support::{Sensor, cpu_model, status_kib};

/// One round's cache entries and RSS (KiB): before, with the processes,
/// after they ended; and the client's counts so far.
struct Round {
    entries: [u64; 3],
    rss: [u64; 3],
    execs: usize,
    exits: usize,
    lost: u64,
}

/// The process's RSS (KiB) once it has settled: start-up's buffers (BTF,
/// the verifier's log, the /proc walk) and a burst's event queues are
/// given back over the first seconds, so a reading taken at once says
/// more of those than of the cache. Settled: no more than 256 KiB of
/// change over the last second (polled every 100 ms, at most 30 s).
fn settled_rss(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut window: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    loop {
        window.push_back(status_kib(pid, "VmRSS:"));
        if window.len() > 10 {
            window.pop_front();
            let (lo, hi) = (window.iter().min().unwrap(), window.iter().max().unwrap());
            if hi - lo <= 256 || Instant::now() > deadline {
                return *window.back().unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The event kinds the client counts, by name and by their count in
/// (execs, exits).
const EXECS: (&str, fn(usize, usize) -> usize) = ("exec", |execs, _| execs);
const EXITS: (&str, fn(usize, usize) -> usize) = ("exit", |_, exits| exits);

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("process_cache_memory: SKIP, needs root to load BPF programs");
        return;
    }
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = std::env::temp_dir().join(format!("vigil-bench-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sleeper = dir.join("vigil-bench-sleeper");
    std::fs::copy("/bin/sleep", &sleeper).unwrap();

    let sensor = Sensor::start(&dir.join("s.sock"), &["--process-cache-size", &(4 * n + 65_536).to_string()]);
    let (execs_tx, mut execs_rx) = tokio::sync::watch::channel((0usize, 0usize, 0u64));
    let counter = {
        let binary = format!("^{}$", sleeper.display());
        let client = rt.block_on(sensor.client());
        rt.spawn(async move {
            let mut client = client;
            let request = GetEventsRequest {
                allow_list: vec![Filter { binary_regex: vec![binary], ..Default::default() }],
                ..Default::default()
            };
            let mut stream = client.get_events(request).await.unwrap().into_inner();
            let _ = execs_tx.send((0, 0, 0));
            let (mut execs, mut exits, mut lost) = (0, 0, 0);
            while let Ok(Some(e)) = stream.message().await {
                match e.event {
                    Some(Event::ProcessExec(_)) => execs += 1,
                    Some(Event::ProcessExit(_)) => exits += 1,
                    Some(Event::RateLimitInfo(r)) => lost += r.number_of_dropped_process_events,
                    _ => continue,
                }
                let _ = execs_tx.send((execs, exits, lost));
            }
        })
    };
    rt.block_on(execs_rx.changed()).unwrap();
    // Until `want` events of one kind (`kind` picks its count out of
    // (execs, exits)) are seen or reported lost.
    let seen = |rx: &mut tokio::sync::watch::Receiver<(usize, usize, u64)>,
                (what, kind): (&str, fn(usize, usize) -> usize),
                want: usize| {
        rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(120),
                rx.wait_for(|&(execs, exits, lost)| kind(execs, exits) + lost as usize >= want),
            )
            .await
            .unwrap_or_else(|_| panic!("the client did not see {want} {what} events within 120 s"))
            .map(|v| *v)
            .unwrap()
        })
    };
    // Two rounds of N processes started, cached, and ended: the first
    // leaves the allocator's pools and the tables at their working size
    // (what a node that has run this many processes holds anyway); the
    // second is measured.
    let mut round = |r: usize| {
        let entries_before = rt.block_on(sensor.counter("cache_entries"));
        let rss_before = settled_rss(sensor.pid);
        let mut children: Vec<Child> = (0..n)
            .map(|_| {
                Command::new(&sleeper)
                    .arg("3600")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn a sleeper")
            })
            .collect();
        let (execs, ..) = seen(&mut execs_rx, EXECS, r * n);
        let entries_live = rt.block_on(sensor.counter("cache_entries"));
        let rss_live = settled_rss(sensor.pid);
        for c in &mut children {
            let _ = c.kill();
        }
        for c in &mut children {
            let _ = c.wait();
        }
        let (_, exits, lost) = seen(&mut execs_rx, EXITS, r * n);
        let entries_after = rt.block_on(sensor.counter("cache_entries"));
        let rss_after = settled_rss(sensor.pid);
        Round {
            entries: [entries_before, entries_live, entries_after],
            rss: [rss_before, rss_live, rss_after],
            execs,
            exits,
            lost,
        }
    };
    let warm = round(1);
    let Round {
        entries: [entries_before, entries_live, entries_after],
        rss: [rss_before, rss_live, rss_after],
        execs,
        exits,
        lost: lost_after,
    } = round(2);
    let (execs, exits) = (execs - n, exits - n);
    let hwm = status_kib(sensor.pid, "VmHWM:");
    counter.abort();
    sensor.stop();
    let _ = std::fs::remove_dir_all(&dir);

    let added = entries_live.saturating_sub(entries_before);
    let per = |kib: u64| kib as f64 * 1024.0 / n as f64;
    println!("process_cache_memory: {n} live processes (copies of sleep) in the sensor's process cache");
    println!("  cpu: {}", cpu_model());
    println!("  events        {execs} exec + {exits} exit of {n} + {n} delivered; {lost_after} reported lost");
    println!(
        "  first round   rss {} KiB before, {} KiB with them, {} KiB after they ended: {:.0} bytes per process on a fresh sensor",
        warm.rss[0],
        warm.rss[1],
        warm.rss[2],
        (warm.rss[1].saturating_sub(warm.rss[0])) as f64 * 1024.0 / n as f64
    );
    println!("  second round (measured):");
    println!(
        "  cache entries {entries_before} before, {entries_live} with them (+{added}), {entries_after} after they ended"
    );
    println!(
        "  rss           {rss_before} KiB before, {rss_live} KiB with them, {rss_after} KiB after they ended (peak {hwm} KiB)"
    );
    println!(
        "  per process   {:.0} bytes of RSS per cached process ({:+} KiB / {n}); {:.0} bytes still held per process after they ended",
        per(rss_live.saturating_sub(rss_before)),
        rss_live as i64 - rss_before as i64,
        per(rss_after.saturating_sub(rss_before)),
    );
    // A bench that cannot lie: every process was seen and cached, and the
    // cache let them go.
    assert_eq!((execs, exits, lost_after), (n, n, 0), "every exec and exit delivered, none lost");
    assert!(added >= n as u64, "the cache gained {added} entries for {n} live processes");
    assert!(
        entries_after <= entries_before + (n as u64 / 100),
        "the cache kept {entries_after} entries after they ended"
    );
}
