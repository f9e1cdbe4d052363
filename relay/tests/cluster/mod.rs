//! A cluster on one machine: a relay, sensors and clients, each in its own
//! network namespace, joined by veth pairs to a bridge in a "switch"
//! namespace, all speaking mTLS with certificates from `vigil certs`.
//! Sensors run with --only-own-netns, so each reports its own "node".
#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use proto::json::from_json_line;
use proto::tetragon::{EventType, GetEventsResponse};

pub const EXEC: i32 = EventType::ProcessExec as i32;
pub const EXIT: i32 = EventType::ProcessExit as i32;

pub const CLI: &str = env!("CARGO_BIN_EXE_vigil-relay");

/// A workspace binary (the sensor and the CLI are other packages').
pub fn bin(name: &str) -> PathBuf {
    test_support::workspace_bin(CLI, name)
}

pub fn skip_reason() -> Option<String> {
    if !test_support::is_root() {
        return Some("cluster tests need root (network namespaces, BPF)".into());
    }
    None
}

#[macro_export]
macro_rules! require_root {
    () => {
        test_support::skip_if!(cluster::skip_reason());
    };
}

/// A number for a test's own subnet, distinct per call within a run
/// (parallel tests start together): a counter picks the block, the time and
/// pid spread runs apart. (Markers and files use `test_support::nonce`.)
pub fn subnet_id() -> u32 {
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 20;
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    ((t.subsec_nanos() ^ std::process::id().rotate_left(16)) % 10_000) * 20 + n
}

fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Network namespaces and their addresses; removed on drop.
pub struct Net {
    pub id: u32,
    switch: String,
    hosts: Mutex<Vec<String>>,
    subnet: String,
}

impl Net {
    pub fn new() -> Arc<Net> {
        let id = subnet_id();
        let switch = format!("vsw{id}");
        sh(&format!(
            "ip netns add {switch} && ip -n {switch} link add br0 type bridge && ip -n {switch} link set br0 up"
        ));
        // 10.200.0.0/16 split per cluster; addresses only inside our namespaces.
        let subnet = format!("10.{}.{}", 200 + (id % 50), (id / 50) % 250);
        Arc::new(Net { id, switch, hosts: Mutex::new(vec![]), subnet })
    }

    /// Adds a host namespace with address .`octet` and returns (netns, ip).
    pub fn host(&self, name: &str, octet: u8) -> (String, String) {
        let ns = format!("v{name}{}", self.id);
        let ip = format!("{}.{octet}", self.subnet);
        let (a, b) = (format!("va{octet}x{}", self.id % 10000), format!("vb{octet}x{}", self.id % 10000));
        sh(&format!(
            "ip netns add {ns} && ip link add {a} type veth peer name {b} && \
             ip link set {a} netns {ns} && ip link set {b} netns {sw} && \
             ip -n {sw} link set {b} master br0 && ip -n {sw} link set {b} up && \
             ip -n {ns} link set lo up && ip -n {ns} link set {a} name eth0 && \
             ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up",
            sw = self.switch
        ));
        self.hosts.lock().unwrap().push(ns.clone());
        (ns, ip)
    }

    /// Cuts or restores a host's link (its port on the bridge).
    pub fn link(&self, octet: u8, up: bool) {
        let b = format!("vb{octet}x{}", self.id % 10000);
        sh(&format!("ip -n {} link set {b} {}", self.switch, if up { "up" } else { "down" }));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.hosts.lock().unwrap().iter().chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A daemon in a namespace, killed on drop; its stderr goes to a log file.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(ns: &str, program: &Path, args: &[String], log: PathBuf) -> Daemon {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start daemon");
        Daemon { child, log }
    }

    /// A daemon in the test's own network namespace.
    pub fn start_here(program: &Path, args: &[String], log: PathBuf) -> Daemon {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(program).args(args).stdout(Stdio::null()).stderr(file).spawn().expect("start daemon");
        Daemon { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        // SIGKILL: a crash, not a clean stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub net: Arc<Net>,
    pub dir: PathBuf,
    pub certs: PathBuf,
    pub relay_ns: String,
    pub relay_ip: String,
    pub relay: Option<Daemon>,
    pub client_ns: String,
    pub sensors: Vec<(String, Daemon)>,
    /// /etc/netns/<ns> directories written for name resolution, removed on drop.
    pub hosts_dirs: Mutex<Vec<PathBuf>>,
}

impl Cluster {
    pub fn new() -> Cluster {
        let net = Net::new();
        let dir = std::env::temp_dir().join(format!("vigil-cluster-{}", net.id));
        std::fs::create_dir_all(&dir).unwrap();
        let (relay_ns, relay_ip) = net.host("r", 1);
        let (client_ns, _) = net.host("c", 2);
        let certs = dir.join("certs");
        let out = Command::new(bin("vigil"))
            .args(["certs", "generate", "--out"])
            .arg(&certs)
            .args(["--relay-dns", "relay.vigil.test", "--relay-dns", &relay_ip])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut c = Cluster {
            net,
            dir,
            certs,
            relay_ns,
            relay_ip,
            relay: None,
            client_ns,
            sensors: vec![],
            hosts_dirs: Mutex::new(vec![]),
        };
        c.start_relay(&[]);
        c
    }

    pub fn start_relay(&mut self, extra: &[&str]) {
        let mut args: Vec<String> =
            vec!["--tls-dir".into(), self.certs.display().to_string(), "--reorder-window-ms".into(), "50".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let d = Daemon::start(&self.relay_ns, &bin("vigil-relay"), &args, self.dir.join("relay.log"));
        self.relay = Some(d);
        self.wait_relay();
    }

    fn wait_relay(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.cli(&["status"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("relay not ready: {}", self.relay.as_ref().map(Daemon::log_text).unwrap_or_default());
    }

    /// Adds a sensor node in its own namespace (address .`octet`).
    pub fn add_node(&mut self, name: &str, octet: u8, extra: &[&str]) -> String {
        let (ns, _) = self.net.host(name, octet);
        self.start_sensor(&ns, name, extra);
        ns
    }

    /// The `--tls-dir` of node `name`: a sensor credential bound to that
    /// node, issued from the cluster's CA the first time it is asked for.
    pub fn node_tls(&self, name: &str) -> PathBuf {
        let dir = self.certs.join("nodes").join(name);
        if !dir.join("sensor.pem").exists() {
            let out = Command::new(bin("vigil"))
                .args(["certs", "sensor", "--ca-dir"])
                .arg(&self.certs)
                .args(["--node", name])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        dir
    }

    /// Starts a sensor in an existing namespace, with its node's credential.
    pub fn start_sensor(&mut self, ns: &str, name: &str, extra: &[&str]) {
        let tls_dir = self.node_tls(name);
        let mut args: Vec<String> = vec![
            "--node-name".into(),
            name.into(),
            "--server-address".into(),
            format!("unix://{}", self.dir.join(format!("{name}.sock")).display()),
            "--relay-address".into(),
            format!("{}:54331", self.relay_ip),
            "--tls-dir".into(),
            tls_dir.display().to_string(),
            "--only-own-netns".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let d = Daemon::start(ns, &bin("vigil-sensor"), &args, self.dir.join(format!("{name}.log")));
        self.sensors.push((name.into(), d));
        self.wait_node(name);
    }

    /// Waits until the relay lists `name` as connected.
    pub fn wait_node(&self, name: &str) {
        self.wait_node_at(&self.relay_ip, name);
    }

    /// Waits until the relay at `relay_ip` lists node `name` as connected.
    pub fn wait_node_at(&self, relay_ip: &str, name: &str) {
        let connected =
            |text: &str| text.lines().any(|l| l.starts_with(&format!("{name} ")) && l.contains("connected"));
        if wait_output(|| self.cli_cmd_at(relay_ip, &["nodes"]), connected).is_err() {
            let log = self.sensors.iter().find(|(n, _)| n == name).map(|(_, d)| d.log_text()).unwrap_or_default();
            panic!("node {name} never connected; sensor log:\n{log}");
        }
    }

    /// `vigil` from the client namespace against the relay.
    pub fn cli_cmd(&self, args: &[&str]) -> Command {
        self.cli_cmd_at(&self.relay_ip, args)
    }

    /// `vigil` from the client namespace against the relay at `relay_ip`.
    fn cli_cmd_at(&self, relay_ip: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.client_ns])
            .arg(bin("vigil"))
            .args(["--server-address", &format!("{relay_ip}:54330"), "--tls-dir"])
            .arg(&self.certs)
            .args(args);
        c
    }

    /// `vigil` against node `name`'s own sensor API (its unix socket).
    pub fn local_cmd(&self, name: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin("vigil"));
        c.args(["--server-address", &format!("unix://{}", self.dir.join(format!("{name}.sock")).display())]).args(args);
        c
    }

    /// Waits until node `name`'s sensor has `n` bus subscribers (the relay
    /// uplink is one).
    pub fn wait_local_subscribers(&self, name: &str, n: u64) {
        wait_count(|| self.local_cmd(name, &["status"]), "subscribers=", n, &format!("node {name}"));
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// A `vigil getevents -o json` client collecting events in the background.
    pub fn watch(&self, extra: &[&str]) -> Watcher {
        let mut args = vec!["getevents", "-o", "json"];
        args.extend_from_slice(extra);
        Watcher::spawn(self.cli_cmd(&args))
    }

    /// Runs a shell script inside a node's namespace and waits for it.
    pub fn run_in(&self, ns: &str, script: &str) {
        let status = Command::new("ip").args(["netns", "exec", ns, "/bin/sh", "-c", script]).status().unwrap();
        assert!(status.success(), "workload failed: {script}");
    }

    /// Waits until the relay at `relay_ip` has `n` GetEvents clients
    /// attached: a watcher started before a workload sees all of it.
    pub fn wait_clients_at(&self, relay_ip: &str, n: u64) {
        self.wait_clients_with(relay_ip, &[], n);
    }

    /// [`Self::wait_clients_at`] with extra CLI flags (e.g. the TLS name).
    pub fn wait_clients_with(&self, relay_ip: &str, flags: &[&str], n: u64) {
        let args: Vec<&str> = flags.iter().copied().chain(["nodes"]).collect();
        wait_count(|| self.cli_cmd_at(relay_ip, &args), "clients: ", n, &format!("the relay at {relay_ip}"));
    }

    pub fn wait_clients(&self, n: u64) {
        self.wait_clients_at(&self.relay_ip, n);
    }

    /// Runs a last marker (`/bin/true <tag>`) in `ns` and waits until every
    /// watcher got it: whatever the node sent before, copies and replays
    /// included, has reached them too (one node's events stay in order).
    pub fn settle(&self, ns: &str, tag: &str, watchers: &[&Watcher]) {
        self.run_in(ns, &format!("/bin/true {tag}"));
        for w in watchers {
            assert!(
                w.wait(Duration::from_secs(30), |e| !marked(e, tag).is_empty()),
                "the closing marker {tag} never arrived; relay log:\n{}",
                self.relay_log()
            );
        }
    }

    pub fn relay_log(&self) -> String {
        self.relay.as_ref().map(Daemon::log_text).unwrap_or_default()
    }
}

impl Watcher {
    /// Starts a `getevents -o json` command and collects its events.
    pub fn spawn(mut cmd: Command) -> Watcher {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let events = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(e) = from_json_line(&line) {
                    sink.0.lock().unwrap().push(e);
                    sink.1.notify_all();
                }
            }
        });
        Watcher { child, events }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.sensors.clear();
        self.relay = None;
        for d in self.hosts_dirs.lock().unwrap().iter() {
            let _ = std::fs::remove_dir_all(d);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Watcher {
    child: Child,
    /// The events received so far, and a signal for each new one.
    events: Arc<(Mutex<Vec<GetEventsResponse>>, Condvar)>,
}

impl Watcher {
    pub fn snapshot(&self) -> Vec<GetEventsResponse> {
        self.events.0.lock().unwrap().clone()
    }

    /// Waits until `done` holds over the received events, checking as each
    /// one arrives (at most `timeout`).
    pub fn wait(&self, timeout: Duration, done: impl Fn(&[GetEventsResponse]) -> bool) -> bool {
        let (events, arrived) = &*self.events;
        let guard = events.lock().unwrap();
        let (guard, _) = arrived.wait_timeout_while(guard, timeout, |e| !done(e)).unwrap();
        done(&guard)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` until its output passes `done` (at most 30 s): the output
/// that passed, or the last one.
pub fn wait_output(cmd: impl Fn() -> Command, done: impl Fn(&str) -> bool) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cmd().stdin(Stdio::null()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if done(&text) {
            return Ok(text);
        }
        if Instant::now() >= deadline {
            return Err(text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` until the number after `key` in its output is `n`.
fn wait_count(cmd: impl Fn() -> Command, key: &str, n: u64, what: &str) {
    let shows =
        |text: &str| text.split(key).nth(1).and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok()) == Some(n);
    if let Err(last) = wait_output(cmd, shows) {
        panic!("{what} never showed {key}{n}: {last}");
    }
}

/// (kind, arguments, node) of every exec/exit whose arguments start with `prefix`.
pub fn marked(events: &[GetEventsResponse], prefix: &str) -> Vec<(i32, String, String)> {
    events
        .iter()
        .filter_map(|e| {
            let p = events::subject::process(e)?;
            p.arguments.starts_with(prefix).then(|| (e.event_type() as i32, p.arguments.clone(), e.node_name.clone()))
        })
        .collect()
}

/// Total `rate_limit_info` losses reported for `node`.
pub fn lost_for(events: &[GetEventsResponse], node: &str) -> u64 {
    events
        .iter()
        .filter(|e| e.node_name == node)
        .filter_map(|e| match &e.event {
            Some(proto::tetragon::get_events_response::Event::RateLimitInfo(r)) => {
                Some(r.number_of_dropped_process_events)
            }
            _ => None,
        })
        .sum()
}

impl Cluster {
    /// Restarts the relay with small client queues (slow-client test), of
    /// 256 events: a client that reads
    /// nothing loses events to a 3,000-event workload, while one that
    /// reads has room for the hiccups of a loaded 2-core machine (with 64,
    /// the reading client once lost 34 events in CI).
    pub fn start_relay_with_small_queues(&mut self) {
        self.relay = None;
        self.start_relay(&["--client-queue-size", "256"]);
    }

    /// A getevents client whose output nobody reads.
    pub fn stalled_client(&self) -> Child {
        self.cli_cmd(&["getevents", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Runs the CLI with explicit tetra-style TLS flags; returns stderr.
    pub fn client_with(&self, ca: &Path, cert: &Path, key: &Path, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client_ns])
            .arg(bin("vigil"))
            .args(["--server-address", &format!("{}:54330", self.relay_ip), "--timeout", "5"])
            .arg("--tls-ca-cert-files")
            .arg(ca)
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "a bad certificate was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A client certificate from the cluster's CA that expired yesterday.
    pub fn expired_client(&self) -> (PathBuf, PathBuf) {
        let ca_key = std::fs::read_to_string(self.certs.join("ca-key.pem")).unwrap();
        let ca_pem = std::fs::read_to_string(self.certs.join("ca.pem")).unwrap();
        let (cert, key) = tls::leaf_from_ca(&ca_pem, &ca_key, tls::Role::Client, &[], -10, 9).unwrap();
        let (c, k) = (self.dir.join("expired.pem"), self.dir.join("expired-key.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }
}

impl Cluster {
    /// Replaces the relay's certificate in place with one (same CA) for `dns`.
    pub fn rotate_relay_cert(&self, dns: &str) {
        let ca_key = std::fs::read_to_string(self.certs.join("ca-key.pem")).unwrap();
        let ca_pem = std::fs::read_to_string(self.certs.join("ca.pem")).unwrap();
        let (cert, key) = tls::leaf_from_ca(&ca_pem, &ca_key, tls::Role::Relay, &[dns.to_owned()], -1, 30).unwrap();
        // Key first: the relay reloads when both files are in place and valid.
        std::fs::write(self.certs.join("relay-key.pem"), key).unwrap();
        std::fs::write(self.certs.join("relay.pem"), cert).unwrap();
    }

    /// `vigil status` checking the relay certificate against `name`.
    pub fn status_as(&self, name: &str) -> std::process::Output {
        self.cli_cmd(&["--tls-server-name", name, "--timeout", "5", "status"]).stdin(Stdio::null()).output().unwrap()
    }
}

impl Cluster {
    /// A second relay replica in its own namespace (address .`octet`), with
    /// the same certificates, and a hosts file for `ns` resolving `name` to
    /// both relays (what a headless Service's DNS name does).
    pub fn add_replica(&mut self, octet: u8, ns_for_hosts: &str, name: &str) -> (String, String, Daemon) {
        let (rns, rip) = self.net.host(&format!("r{octet}"), octet);
        let args: Vec<String> =
            vec!["--tls-dir".into(), self.certs.display().to_string(), "--reorder-window-ms".into(), "50".into()];
        let d = Daemon::start(&rns, &bin("vigil-relay"), &args, self.dir.join(format!("relay{octet}.log")));
        self.set_hosts(ns_for_hosts, name, &[self.relay_ip.clone(), rip.clone()]);
        (rns, rip, d)
    }

    /// Makes `name` resolve to `ips` inside namespace `ns`. `ip netns exec`
    /// bind-mounts /etc/netns/<ns>/hosts over /etc/hosts; the file is
    /// rewritten in place, so processes already running see the change.
    pub fn set_hosts(&self, ns: &str, name: &str, ips: &[String]) {
        let etc = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&etc).unwrap();
        let lines: String = ips.iter().map(|ip| format!("{ip} {name}\n")).collect();
        std::fs::write(etc.join("hosts"), format!("127.0.0.1 localhost\n{lines}")).unwrap();
        let mut dirs = self.hosts_dirs.lock().unwrap();
        if !dirs.contains(&etc) {
            dirs.push(etc);
        }
    }

    /// `vigil getevents` against a given relay address.
    pub fn watch_at(&self, relay_ip: &str, extra: &[&str]) -> Watcher {
        let mut args = vec!["getevents", "-o", "json"];
        args.extend_from_slice(extra);
        Watcher::spawn(self.cli_cmd_at(relay_ip, &args))
    }
}

// Workloads, assertions and replica set-up shared by the cluster tests.

/// A shell loop running `/bin/true PREFIX-i` for i in 0..n.
pub fn workload(prefix: &str, n: u32) -> String {
    format!("i=0; while [ $i -lt {n} ]; do /bin/true {prefix}-$i; i=$((i+1)); done")
}

/// Asserts every marker `prefix-0..n` arrived exactly once as exec and
/// once as exit, from `node`.
pub fn assert_exactly_once(events: &[GetEventsResponse], prefix: &str, n: u32, node: &str) {
    let mut counts: BTreeMap<(i32, String), usize> = BTreeMap::new();
    for (kind, args, from) in marked(events, &format!("{prefix}-")) {
        assert_eq!(from, node, "{args} came from {from}, expected {node}");
        *counts.entry((kind, args)).or_default() += 1;
    }
    for i in 0..n {
        for kind in [EXEC, EXIT] {
            let c = counts.get(&(kind, format!("{prefix}-{i}"))).copied().unwrap_or(0);
            assert_eq!(c, 1, "{prefix}-{i} kind {kind}: {c} copies");
        }
    }
    assert_eq!(counts.len(), 2 * n as usize, "no other markers with {prefix}");
}

/// Whether every marker's exec and exit arrived.
pub fn full(events: &[GetEventsResponse], prefix: &str, n: u32) -> bool {
    marked(events, &format!("{prefix}-")).len() >= 2 * n as usize
}

/// Re-issues the shared relay certificate for `name`, the first relay's
/// address and a replica's (at .3 of the cluster's subnet, returned), and
/// lets the first relay re-read it. Done before the replica starts, so it
/// never reads a half-written pair; sensors check the name they dialled.
pub fn replica_certificate(c: &Cluster, name: &str) -> String {
    let second_ip = format!("{}.3", c.relay_ip.rsplit_once('.').unwrap().0);
    let ca = c.certs.join("ca.pem");
    let ca_key = std::fs::read_to_string(c.certs.join("ca-key.pem")).unwrap();
    let (cert, key) = tls::leaf_from_ca(
        &std::fs::read_to_string(&ca).unwrap(),
        &ca_key,
        tls::Role::Relay,
        &[name.into(), "relay.vigil.test".into(), c.relay_ip.clone(), second_ip.clone()],
        -1,
        30,
    )
    .unwrap();
    std::fs::write(c.certs.join("relay-key.pem"), key).unwrap();
    std::fs::write(c.certs.join("relay.pem"), cert).unwrap();
    // The first relay has re-read them once it serves the new name.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !c.status_as(name).status.success() {
        assert!(std::time::Instant::now() < deadline, "relay never served {name}:\n{}", c.relay_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    second_ip
}

/// A sensor streaming to every relay behind `relays.vigil.test`.
pub fn start_replicated_sensor(c: &Cluster, ns: &str, node: &str, extra: &[&str]) -> Daemon {
    let sock = format!("unix://{}", c.dir.join(format!("{node}.sock")).display());
    let mut args: Vec<String> = vec![
        "--node-name".into(),
        node.into(),
        "--server-address".into(),
        sock,
        "--relay-address".into(),
        "relays.vigil.test:54331".into(),
        "--tls-dir".into(),
        c.node_tls(node).display().to_string(),
        "--only-own-netns".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Daemon::start(ns, &bin("vigil-sensor"), &args, c.dir.join(format!("{node}.log")))
}
