//! Harness for kernel tests: starts the real `vigil-sensor` binary as root
//! on a unix socket, connects a real gRPC client, collects events.
#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::{GetEventsRequest, GetEventsResponse, GetHealthStatusRequest, Process, ProcessTracepoint};
use serving::address::ServerAddress;
use tonic::transport::Channel;

/// Why kernel tests cannot run here, if they cannot (printed, never silent).
pub fn skip_reason() -> Option<String> {
    if !test_support::is_root() {
        return Some("kernel tests need root (they load BPF programs)".into());
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("kernel has no BTF at /sys/kernel/btf/vmlinux".into());
    }
    None
}

#[macro_export]
macro_rules! require_kernel {
    () => {
        test_support::skip_if!(common::skip_reason());
    };
}

pub use test_support::nonce;

pub struct Sensor {
    child: Child,
    pub dir: PathBuf,
    pub address: ServerAddress,
    pub export: PathBuf,
}

impl Sensor {
    pub async fn start(extra: &[&str]) -> Sensor {
        let dir = std::env::temp_dir().join(format!("vigil-kt-{}", nonce()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("sensor.sock");
        // An export file of the test's own, or one here.
        let given = extra.iter().position(|a| *a == "--export-filename").and_then(|i| extra.get(i + 1));
        let export = given.map_or_else(|| dir.join("events.jsonl"), PathBuf::from);
        let default_export: Vec<std::ffi::OsString> = match given {
            Some(_) => vec![],
            None => vec!["--export-filename".into(), export.clone().into()],
        };
        let log = std::fs::File::create(dir.join("sensor.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vigil-sensor"))
            .arg("--server-address")
            .arg(format!("unix://{}", socket.display()))
            .args(default_export)
            .arg("--node-name")
            .arg("kt-node")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vigil-sensor");
        let sensor = Sensor { child, dir, address: ServerAddress::Unix(socket), export };
        sensor.wait_healthy().await;
        sensor
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sensor.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the sensor as its service manager would (SIGTERM) and waits
    /// for it to exit: it drains its ring buffer and finishes its export
    /// first. Its directory stays until the value is dropped.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: sending SIGTERM to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the sensor did not stop on SIGTERM; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = match self.address.connect().await {
                Ok(ch) => {
                    FineGuidanceSensorsClient::new(ch).get_health(GetHealthStatusRequest::default()).await.is_ok()
                }
                Err(_) => false,
            };
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "sensor did not become healthy; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of `key` in the health details (`key=value` counters).
    pub async fn health_counter(&self, key: &str) -> Option<u64> {
        let details = self.client().await.get_health(GetHealthStatusRequest::default()).await.ok()?.into_inner();
        let text = details.health_status.first()?.details.clone();
        text.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
    }

    /// Waits until the health counter `key` satisfies `ok`.
    pub async fn wait_counter(&self, key: &str, ok: impl Fn(u64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.health_counter(key).await.is_some_and(&ok) {
                return;
            }
            assert!(Instant::now() < deadline, "health counter {key} never got there; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn client(&self) -> FineGuidanceSensorsClient<Channel> {
        FineGuidanceSensorsClient::new(self.address.connect().await.unwrap()).max_decoding_message_size(64 << 20)
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        // SAFETY: sending SIGTERM to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A live subscription that keeps every event it receives.
pub struct Collector {
    stream: tonic::Streaming<GetEventsResponse>,
    pub events: Vec<GetEventsResponse>,
}

impl Collector {
    pub async fn subscribe(sensor: &Sensor, req: GetEventsRequest) -> Collector {
        Self::subscribe_on(sensor.address.connect().await.unwrap(), req).await
    }

    /// A client whose HTTP/2 windows are small, so that not reading
    /// quickly backs up to the sensor instead of into client buffers.
    pub async fn subscribe_slow(sensor: &Sensor, req: GetEventsRequest) -> Collector {
        let small = |e: tonic::transport::Endpoint| {
            e.initial_stream_window_size(16 * 1024).initial_connection_window_size(16 * 1024)
        };
        Self::subscribe_on(sensor.address.connect_with(small).await.unwrap(), req).await
    }

    async fn subscribe_on(channel: Channel, req: GetEventsRequest) -> Collector {
        let mut client = FineGuidanceSensorsClient::new(channel).max_decoding_message_size(64 << 20);
        let stream = client.get_events(req).await.unwrap().into_inner();
        Collector { stream, events: Vec::new() }
    }

    /// Reads until `done` holds over everything received, or the timeout.
    pub async fn until(&mut self, timeout: Duration, done: impl Fn(&[GetEventsResponse]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.events) {
            match tokio::time::timeout_at(deadline, self.stream.message()).await {
                Ok(Ok(Some(e))) => self.events.push(e),
                _ => return false,
            }
        }
        true
    }
}

pub fn exec_of(e: &GetEventsResponse) -> Option<&Process> {
    match &e.event {
        Some(Event::ProcessExec(x)) => x.process.as_ref(),
        _ => None,
    }
}

pub fn exit_of(e: &GetEventsResponse) -> Option<(&Process, u32, &str)> {
    match &e.event {
        Some(Event::ProcessExit(x)) => x.process.as_ref().map(|p| (p, x.status, x.signal.as_str())),
        _ => None,
    }
}

pub fn parent_of(e: &GetEventsResponse) -> Option<&Process> {
    events::subject::parent(e)
}

/// Events delivered (not loss notices) and the total loss they reported.
pub fn delivered_and_lost(events: &[GetEventsResponse]) -> (u64, u64) {
    let mut delivered = 0;
    let mut lost = 0;
    for e in events {
        match &e.event {
            Some(Event::RateLimitInfo(r)) => lost += r.number_of_dropped_process_events,
            _ => delivered += 1,
        }
    }
    (delivered, lost)
}

pub fn pid(p: &Process) -> u32 {
    p.pid.map_or(0, |v| v.value)
}

/// Where the sensor's log says the metrics listener is.
pub fn metrics_address(sensor: &Sensor) -> String {
    let log = sensor.log();
    let line = log.lines().find(|l| l.contains("listener=metrics")).expect("the metrics listener's line");
    line.split("address=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// What the sensor logged of losses of `kind` (see `node_sensor::losses`):
/// the losses summed over its lines, and the last line's total.
pub fn logged_losses(log: &str, kind: &str) -> (u64, u64) {
    let field = |line: &str, key: &str| -> u64 {
        line.split_whitespace().find_map(|w| w.strip_prefix(key)?.parse().ok()).unwrap_or(0)
    };
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&format!("kind={kind} "))).collect();
    (lines.iter().map(|l| field(l, "lost=")).sum(), lines.last().map_or(0, |l| field(l, "total=")))
}

/// A counter of the sensor's last words (`stopped stats=…`).
pub fn final_stat(log: &str, key: &str) -> u64 {
    let line = log.lines().find(|l| l.contains("stopped stats=")).unwrap_or_else(|| panic!("no final stats:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}="))?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// Builds the uprobe test's program (tests/data/uprobe_target.rs) into `dir`.
pub fn build_uprobe_target(dir: &std::path::Path) -> String {
    build_test_program(dir, "uprobe_target")
}

/// Builds test program `tests/data/NAME.rs` into `dir` (rustc, no crates).
pub fn build_test_program(dir: &std::path::Path, name: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join(name.replace('_', "-"));
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/{name}.rs"));
    let status = Command::new("rustc")
        .args(["--edition", "2024", "-C", "opt-level=1", "-g", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("running rustc to build a test program");
    assert!(status.success(), "rustc failed on {}", src.display());
    out.display().to_string()
}

pub fn tracepoint_of(e: &GetEventsResponse) -> Option<&ProcessTracepoint> {
    match &e.event {
        Some(Event::ProcessTracepoint(t)) => Some(t),
        _ => None,
    }
}

/// Runs `/bin/true FENCE` and reads until its exec arrives: every record
/// the kernel sent before it has then been handled (one ring buffer, in
/// order), so an event that has not come by then never will.
pub async fn fence(c: &mut Collector, sensor: &Sensor) {
    let fence = format!("fence-{}", nonce());
    assert!(Command::new("/bin/true").arg(&fence).status().unwrap().success());
    let fenced = |events: &[GetEventsResponse]| events.iter().filter_map(exec_of).any(|p| p.arguments == fence);
    assert!(c.until(Duration::from_secs(30), fenced).await, "the fence exec never came; log:\n{}", sensor.log());
}
