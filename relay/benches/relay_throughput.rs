//! Relay throughput benchmark: synthetic sensors (8 nodes) stream over mTLS
//! to a real `vigil-relay`, 4 mTLS clients receive everything. Prints
//! events/s merged and delivered, end-to-end latency percentiles, relay
//! CPU and RSS, and loss. Ratios and rates from one run, not a timed test.
//!
//! `cargo bench -p relay --bench relay_throughput [-- EVENTS_PER_NODE [RATE [CLIENTS]] [--operations] [--backbone] [--pin]]`
//! With `--backbone` the same load runs three times: through one relay,
//! then through two ingest relays, NATS JetStream (Debian's) and a query
//! relay, once on one server with stream replicas 1 and once on a cluster
//! of three with replicas 3, each backbone run's ratios to the first
//! printed last.
//!
//! With RATE (events/s over all nodes; 0 for none) the senders are paced,
//! to measure latency and loss below capacity; without it they send flat
//! out. CLIENTS defaults to 4. `--operations` runs the relay with
//! `--metrics-address` (scraped every second meanwhile) and an export file.
//!
//! With `--pin` the CPUs this bench may use are split in two halves: the
//! relay (and, with `--backbone`, the ingest relays and NATS) on the first,
//! the load generator and the clients on the second, so the relay's
//! figures are its own, not its share of contended cores. (On 2 cores,
//! that is one core for the relay.)
//!
//! Unpinned, the load generator shares the cores with the relay, so it is kept
//! cheap: each event's static part is encoded before the clock starts and a
//! batch is assembled by appending the send time; clients decode only the
//! fields they measure (time, loss notices) and skip the rest. The relay
//! does its full work: decode, validate, merge, encode, per-client TLS.
//!
//! The run checks itself before it prints a figure: every client must
//! account for every event (received, or reported lost), and a paced run
//! cannot end sooner than its pace allows. A client whose stream ended or
//! failed early once made the elapsed time the time to that failure, and
//! the bench printed 601 million events/s; now it names the client and
//! why, and exits non-zero.
#![allow(clippy::unwrap_used, reason = "a benchmark: a panic ends the run with its reason")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use prost::Message;
use prost::bytes::Bytes;
use prost::encoding::{WireType, encode_key};
use proto::Timestamp;
use proto::ingest::BatchEncoder;
use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::{
    GetEventsRequest, GetEventsResponse, GetHealthStatusRequest, Process, ProcessExec, RateLimitInfo,
};
use proto::vigil::relay::v1::{Batch, Hello, IngestMessage, SequencedEvent, ingest_message};
use serving::address::ServerAddress;

#[path = "../tests/support/nats.rs"]
mod nats;

const NODES: usize = 8;
const DEFAULT_CLIENTS: u64 = 4;
const BATCH: usize = 512;

/// What a client reads of each event: its time and a loss notice's count.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Probe {
    #[prost(message, optional, tag = "1001")]
    pub time: Option<Timestamp>,
    #[prost(message, optional, tag = "40001")]
    pub rate_limit_info: Option<RateLimitInfo>,
}

/// A batch of events encoded but for their time, each followed by its
/// `time` field (1001).
fn batch_message(events: &[(u64, Vec<u8>)], time: Timestamp) -> Bytes {
    let mut time_field = Vec::new();
    encode_key(1001, WireType::LengthDelimited, &mut time_field);
    time.encode_length_delimited(&mut time_field).unwrap();
    let mut batch = BatchEncoder::new();
    for (seq, stat) in events {
        batch.push(*seq, &[stat, &time_field]);
    }
    batch.finish(0, 0)
}

fn event(node: &str, i: u64) -> GetEventsResponse {
    let exec_id = base64::engine::general_purpose::STANDARD.encode(format!("{node}:{i}:{}", i % 4_000_000));
    GetEventsResponse {
        event: Some(Event::ProcessExec(ProcessExec {
            process: Some(Process {
                exec_id,
                pid: Some(((i % 4_000_000) as u32).into()),
                binary: "/usr/bin/bench".into(),
                arguments: format!("--iteration {i}"),
                cwd: "/tmp".into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
        node_name: node.into(),
        ..Default::default()
    }
}

/// The host's CPU, as absolute figures need beside them.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "an unknown CPU".into())
}

/// `nats-server --version`'s answer.
fn nats_version() -> String {
    std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().trim_start_matches("nats-server: ").to_owned())
        .unwrap_or_default()
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}

/// Where the bench's events go through.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// One relay: sensors and clients on it.
    Embedded,
    /// Two ingest relays (half the sensors each) publish to NATS
    /// JetStream (one server with stream replicas 1, or a cluster of that
    /// many with as many replicas), one query relay serves the clients
    /// from it.
    Backbone { replicas: usize },
}

/// One run's figures.
struct Figures {
    elapsed: Duration,
    p99_ms: f64,
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let per_node: u64 = args.first().copied().unwrap_or(100_000);
    let rate: Option<u64> = args.get(1).copied().filter(|r| *r > 0);
    let clients_n = args.get(2).copied().unwrap_or(DEFAULT_CLIENTS).max(1);
    let operations = std::env::args().any(|a| a == "--operations");
    let backbone = std::env::args().any(|a| a == "--backbone");
    let pin = std::env::args().any(|a| a == "--pin").then(pinning::halves);
    let options = Options { rate, clients_n, operations, pin };
    let embedded = run(Mode::Embedded, per_node, &options);
    if backbone {
        if let Some(reason) = nats::skip_reason() {
            eprintln!("relay_throughput: no backbone run: {reason}");
            std::process::exit(1);
        }
        let runs: Vec<(usize, Figures)> =
            [1, 3].into_iter().map(|r| (r, run(Mode::Backbone { replicas: r }, per_node, &options))).collect();
        for (replicas, b) in runs {
            println!(
                "backbone (replicas {replicas}) vs embedded, this run: merged rate ×{:.2}, p99 latency ×{:.2}",
                embedded.elapsed.as_secs_f64() / b.elapsed.as_secs_f64(),
                b.p99_ms / embedded.p99_ms.max(0.001)
            );
        }
    }
}

/// A relay on `dir`'s certificates with `extra` flags (port 0: it logs the
/// ports it bound).
fn relay(dir: &std::path::Path, extra: &[&str]) -> test_support::daemon::Daemon {
    test_support::daemon::Daemon::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_vigil-relay"))
            .args(["--tls-dir", &dir.display().to_string()])
            .args(["--client-address", "127.0.0.1:0", "--ingest-address", "127.0.0.1:0"])
            .args(["--log-level", "warn,serving::listen=info"])
            .args(extra),
    )
}

/// How each run is made, from the command line.
struct Options {
    rate: Option<u64>,
    clients_n: u64,
    operations: bool,
    /// `--pin`: the daemons' CPUs, then the bench's own.
    pin: Option<(pinning::Cpus, pinning::Cpus)>,
}

fn run(mode: Mode, per_node: u64, options: &Options) -> Figures {
    let &Options { rate, clients_n, operations, .. } = options;
    let total = per_node * NODES as u64;
    let dir = std::env::temp_dir().join(format!("vigil-relay-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tls::generate(&dir, &[], 2).expect("certs");
    let export = dir.join("export.jsonl").display().to_string();
    let ops_flags: Vec<&str> =
        if operations { vec!["--metrics-address", "127.0.0.1:0", "--export-filename", &export] } else { vec![] };
    // The relay clients read from, and those sensors stream to (with the
    // NATS server between them in backbone mode).
    let (nats_servers, url) = match mode {
        Mode::Embedded => (Vec::new(), String::new()),
        Mode::Backbone { replicas: 1 } => {
            let one = nats::Nats::start("bench");
            let url = one.url();
            (vec![one], url)
        }
        Mode::Backbone { replicas } => nats::cluster("bench", replicas),
    };
    let replicas = match mode {
        Mode::Backbone { replicas } => replicas.to_string(),
        Mode::Embedded => String::new(),
    };
    let (relay, ingest_relays) = match mode {
        Mode::Embedded => (relay(&dir, &ops_flags), Vec::new()),
        Mode::Backbone { .. } => {
            let stream = ["--backbone-replicas", replicas.as_str(), "--backbone-max-mib", "1024"];
            let mut query_flags = vec!["--backbone", url.as_str(), "--backbone-role", "query"];
            query_flags.extend_from_slice(&stream);
            query_flags.extend_from_slice(&ops_flags);
            let mut ingest = vec!["--backbone", url.as_str(), "--backbone-role", "ingest"];
            ingest.extend_from_slice(&stream);
            (relay(&dir, &query_flags), vec![relay(&dir, &ingest), relay(&dir, &ingest)])
        }
    };
    let relay_pid = relay.id();
    let mut pids = vec![relay_pid];
    pids.extend(ingest_relays.iter().map(|r| r.id()));
    pids.extend(nats_servers.iter().map(|n| n.daemon.id()));
    if let Some((daemons, own)) = &options.pin {
        for pid in &pids {
            daemons.apply(*pid);
        }
        own.apply(std::process::id());
    }
    // A scraper as Prometheus would be, only more often.
    let scraping = Arc::new(std::sync::atomic::AtomicBool::new(operations));
    if operations {
        let metrics = relay.listening("metrics").to_string();
        let on = scraping.clone();
        std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                let (status, _) = test_support::scrape::http(&metrics, "GET", "/metrics");
                assert_eq!(status, 200);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    }
    let client_port = relay.listening("clients").port();
    // Sensors stream to the ingest relays in turn (backbone), or to the one.
    let ingest_ports: Vec<u16> = if ingest_relays.is_empty() {
        vec![relay.listening("ingest").port()]
    } else {
        ingest_relays.iter().map(|r| r.listening("ingest").port()).collect()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client_tls =
        tls::client_config(&dir.join("ca.pem"), &dir.join("client.pem"), &dir.join("client-key.pem"), "localhost")
            .unwrap();
    let sensor_tls =
        tls::client_config(&dir.join("ca.pem"), &dir.join("sensor.pem"), &dir.join("sensor-key.pem"), "localhost")
            .unwrap();
    let client_addr: ServerAddress = format!("localhost:{client_port}").parse().unwrap();
    let ingest_addrs: Vec<ServerAddress> =
        ingest_ports.iter().map(|p| format!("localhost:{p}").parse().unwrap()).collect();

    let figures = rt.block_on(async {
        // Wait for the relay.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(ch) = client_addr.connect_tls(client_tls.clone()).await
                && FineGuidanceSensorsClient::new(ch).get_health(GetHealthStatusRequest::default()).await.is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "relay did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Clients first, so they see everything.
        let received = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        for _ in 0..clients_n {
            let ch = client_addr.connect_tls(client_tls.clone()).await.unwrap();
            let mut grpc = tonic::client::Grpc::new(ch);
            grpc.ready().await.unwrap();
            let mut stream = grpc
                .server_streaming(
                    tonic::Request::new(GetEventsRequest::default()),
                    "/tetragon.FineGuidanceSensors/GetEvents".parse().unwrap(),
                    tonic_prost::ProstCodec::<GetEventsRequest, Probe>::default(),
                )
                .await
                .unwrap()
                .into_inner();
            let (received, lost) = (received.clone(), lost.clone());
            clients.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                // Why the client stopped short of every event, if it did.
                let mut short = None;
                while n < per_node * NODES as u64 {
                    let e = match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                        Ok(Ok(Some(e))) => e,
                        Ok(Ok(None)) => {
                            short = Some("the relay ended its stream".to_owned());
                            break;
                        }
                        Ok(Err(status)) => {
                            short = Some(format!("its stream failed: {status}"));
                            break;
                        }
                        Err(_) => {
                            short = Some("nothing came for 10 s".to_owned());
                            break;
                        }
                    };
                    match &e.rate_limit_info {
                        Some(r) => {
                            lost.fetch_add(r.number_of_dropped_process_events, Ordering::Relaxed);
                            n += r.number_of_dropped_process_events;
                        }
                        None => {
                            n += 1;
                            received.fetch_add(1, Ordering::Relaxed);
                            if n.is_multiple_of(64)
                                && let Some(t) = e.time
                            {
                                latencies.push(((Timestamp::now().unix_nanos() - t.unix_nanos()) / 1000) as u64);
                            }
                        }
                    }
                }
                (latencies, n, short)
            }));
        }
        // Each node's events, encoded but for their time, before the clock.
        let prepared: Vec<Vec<(u64, Vec<u8>)>> = (0..NODES)
            .map(|k| (1..=per_node).map(|s| (s, event(&format!("bench-node-{k}"), s).encode_to_vec())).collect())
            .collect();
        // The assembled encoding is what prost would make.
        let check = batch_message(&prepared[0][..2], Timestamp { seconds: 7, nanos: 9 });
        let expect = IngestMessage {
            msg: Some(ingest_message::Msg::Batch(Batch {
                events: (1..=2)
                    .map(|s| SequencedEvent {
                        seq: s,
                        event: Some(Box::new(GetEventsResponse {
                            time: Some(Timestamp { seconds: 7, nanos: 9 }),
                            ..event("bench-node-0", s)
                        })),
                    })
                    .collect(),
                lost: 0,
                skipped: 0,
            })),
        };
        assert_eq!(IngestMessage::decode(check).unwrap(), expect, "batch encoding");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu_of = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
        let cpu_before = cpu_of(&pids);
        let own_cpu_before = cpu_seconds(std::process::id());
        let start = Instant::now();
        let mut sensors = Vec::new();
        for (k, events) in prepared.into_iter().enumerate() {
            let ch = ingest_addrs[k % ingest_addrs.len()].connect_tls(sensor_tls.clone()).await.unwrap();
            sensors.push(tokio::spawn(async move {
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                let hello = Hello { node_name: format!("bench-node-{k}"), boot_id: format!("boot-{k}"), sensor_version: "bench".into(), instance_id: format!("bench-{k}"), replay_buffer_size: 0 };
                tx.send(proto::ingest::hello(hello)).await.unwrap();
                let rx = tokio_stream::wrappers::ReceiverStream::new(rx);
                let mut replies = proto::ingest::stream(ch, rx, 64 << 20, None).await.unwrap();
                let acks = tokio::spawn(async move { while let Ok(Some(_)) = replies.message().await {} });
                let began = Instant::now();
                for (b, chunk) in events.chunks(BATCH).enumerate() {
                    if let Some(rate) = rate {
                        // Pace: this node's share of `rate`.
                        let due = Duration::from_secs_f64((b * BATCH) as f64 * NODES as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(began.elapsed()) {
                            tokio::time::sleep(wait).await;
                        }
                    }
                    tx.send(batch_message(chunk, Timestamp::now())).await.unwrap();
                }
                drop(tx);
                let _ = acks.await;
            }));
        }
        let mut latencies = Vec::new();
        let mut accounted = Vec::new();
        for c in clients {
            let (l, n, short) = c.await.unwrap();
            latencies.extend(l);
            accounted.push((n, short));
        }
        let elapsed = start.elapsed();
        for s in sensors {
            s.abort();
        }
        let cpu = cpu_of(&pids) - cpu_before;
        let own_cpu = cpu_seconds(std::process::id()) - own_cpu_before;
        latencies.sort_unstable();
        let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or(0);
        let delivered = received.load(Ordering::Relaxed);
        let lost_n = lost.load(Ordering::Relaxed);
        // The run's own checks, before any figure: a figure from a run
        // that did not do what it says is not printed.
        let mut faults = Vec::new();
        for (i, (n, short)) in accounted.iter().enumerate() {
            if let Some(why) = short {
                faults.push(format!("client {i} stopped after {n} of {total} events: {why}"));
            }
        }
        if delivered + lost_n != total * clients_n {
            faults.push(format!(
                "received {delivered} + reported lost {lost_n} is not the {} the clients should account for",
                total * clients_n
            ));
        }
        if let Some(r) = rate {
            // Paced senders cannot have finished sooner than the pace allows.
            let least = Duration::from_secs_f64((total - (NODES * BATCH) as u64) as f64 / r as f64);
            if elapsed < least {
                faults.push(format!("{total} events paced at {r}/s took {elapsed:?}, under the {least:?} the pace allows"));
            }
        }
        if !faults.is_empty() {
            eprintln!("relay_throughput: the run failed its checks, so no figures:\n  {}", faults.join("\n  "));
            eprintln!("relay log:\n{}", relay.log());
            std::process::exit(1);
        }
        let pacing = rate.map_or("flat out".to_owned(), |r| format!("paced at {r} events/s"));
        scraping.store(false, Ordering::Relaxed);
        let exported = operations.then(|| {
            let (_, text) = test_support::scrape::http(&relay.listening("metrics").to_string(), "GET", "/metrics");
            let get = |name: &str| test_support::scrape::sample(&text, name, &[]);
            (get("tetragon_events_exported_total"), get("vigil_relay_export_dropped_total"))
        });
        let ops = if operations { ", with metrics (scraped each second) and an export file" } else { "" };
        let path = match mode {
            Mode::Embedded => "one relay".to_owned(),
            Mode::Backbone { replicas } => {
                let servers = if replicas == 1 { "one server".to_owned() } else { format!("{replicas} servers") };
                format!("backbone: 2 ingest relays -> NATS JetStream {} ({servers}, replicas {replicas}) -> a query relay", nats_version())
            }
        };
        println!("relay_throughput ({path}): {NODES} synthetic sensors × {per_node} events over mTLS ({pacing}), {clients_n} mTLS clients, reorder window 100 ms{ops}, on {}", cpu_model());
        println!("  merged:     {:>10.0} events/s ({total} events in {:.2} s)", total as f64 / elapsed.as_secs_f64(), elapsed.as_secs_f64());
        println!("  delivered:  {:>10.0} events/s to all clients together ({delivered} of {} expected)", delivered as f64 / elapsed.as_secs_f64(), total * clients_n);
        println!("  lost:       {lost_n} (reported to clients as rate_limit_info)");
        println!("  checked:    every client accounted for all {total} events (received or reported lost){}", rate.map_or(String::new(), |r| format!("; the run took no less than {r}/s allows")));
        println!("  latency:    p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (event time to client)", pct(0.5) as f64 / 1000.0, pct(0.99) as f64 / 1000.0, latencies.last().copied().unwrap_or(0) as f64 / 1000.0);
        let rss: u64 = pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum();
        let peak: u64 = pids.iter().map(|p| status_kib(*p, "VmHWM:")).sum();
        let who = if pids.len() > 1 { "relays+NATS" } else { "relay" };
        println!("  {who}: {cpu:.2} s CPU ({:.2} µs per merged event), RSS {rss} KiB, peak {peak} KiB", cpu * 1e6 / total as f64);
        if let Some((written, dropped)) = exported {
            println!("  export:     {written} events written to the file by now, {dropped} dropped (writer behind)");
        }
        match &options.pin {
            Some((daemons, own)) => println!("  load:       {own_cpu:.2} s CPU for the benchmark's own {NODES} senders and {clients_n} receivers; pinned: {who} on CPUs {daemons}, the benchmark on CPUs {own}"),
            None => println!("  load:       {own_cpu:.2} s CPU for the benchmark's own {NODES} senders and {clients_n} receivers, on the same cores as the {who} (not pinned)"),
        }
        Figures { elapsed, p99_ms: pct(0.99) as f64 / 1000.0 }
    });
    relay.stop();
    for r in &ingest_relays {
        r.stop();
    }
    drop(nats_servers);
    let _ = std::fs::remove_dir_all(&dir);
    figures
}

/// `--pin`: which CPUs the daemons and the bench run on.
mod pinning {
    /// A set of CPUs, as `sched_setaffinity` takes it.
    pub struct Cpus(Vec<usize>);

    impl std::fmt::Display for Cpus {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let list: Vec<String> = self.0.iter().map(usize::to_string).collect();
            f.write_str(&list.join(","))
        }
    }

    /// The CPUs this process may use, split in two halves (the daemons'
    /// first); exits with why if there are fewer than two.
    pub fn halves() -> (Cpus, Cpus) {
        // SAFETY: all-zero is an empty cpu_set_t.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a cpu_set_t of the size passed.
        if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
            eprintln!("relay_throughput: --pin: sched_getaffinity: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        // SAFETY: CPU_ISSET reads the set within CPU_SETSIZE.
        let cpus: Vec<usize> =
            (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect();
        if cpus.len() < 2 {
            eprintln!("relay_throughput: --pin needs at least 2 CPUs; this process may use {}", cpus.len());
            std::process::exit(1);
        }
        let (daemons, own) = cpus.split_at(cpus.len() / 2);
        (Cpus(daemons.to_vec()), Cpus(own.to_vec()))
    }

    impl Cpus {
        /// Pins every thread of `pid` (threads made later inherit it).
        pub fn apply(&self, pid: u32) {
            // SAFETY: all-zero is an empty cpu_set_t.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            for &c in &self.0 {
                // SAFETY: `c` came from CPU_ISSET's range, under CPU_SETSIZE.
                unsafe { libc::CPU_SET(c, &mut set) };
            }
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
            for task in tasks.flatten() {
                let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<libc::pid_t>().ok()) else { continue };
                // SAFETY: `set` is a cpu_set_t of the size passed.
                if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
                    let e = std::io::Error::last_os_error();
                    // A thread that ended meanwhile needs no pinning.
                    assert_eq!(
                        e.raw_os_error(),
                        Some(libc::ESRCH),
                        "pinning thread {tid} of {pid} to CPUs {self}: {e}"
                    );
                }
            }
        }
    }
}
