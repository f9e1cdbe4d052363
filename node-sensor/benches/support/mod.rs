//! What the sensor benches share: a process's CPU time and the host's CPU
//! model (printed beside absolute figures).

use std::time::Duration;

/// User plus system CPU time of `pid` so far (from /proc/PID/stat).
pub fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // utime, stime are fields 14 and 15 overall: indexes 11, 12 after comm.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// The host's CPU model, as /proc/cpuinfo names it.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

/// CPU time of `pid`'s threads now alive, in ns (from
/// /proc/PID/task/*/schedstat): precise where [`cpu_of`]'s 10 ms ticks are
/// too coarse (an idle sensor), but blind to threads that have ended.
pub fn cpu_of_live_threads(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// A `/proc/PID/status` value in KiB (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A sensor started by a bench on a unix socket, with `flags`.
pub struct Sensor {
    child: std::process::Child,
    pub pid: u32,
    pub address: serving::address::ServerAddress,
}

impl Sensor {
    pub fn start(socket: &std::path::Path, flags: &[&str]) -> Sensor {
        let _ = std::fs::remove_file(socket);
        let address = serving::address::ServerAddress::Unix(socket.to_owned());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_vigil-sensor"))
            .arg("--server-address")
            .arg(address.to_string())
            .args(flags)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start sensor");
        Sensor { pid: child.id(), child, address }
    }

    /// A client, once the sensor answers health (at most 30 s: a sensor
    /// that never does fails the bench).
    pub async fn client(
        &self,
    ) -> proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient<tonic::transport::Channel> {
        self.healthy().await.0
    }

    /// A client once the sensor answers a health request, and that answer.
    async fn healthy(
        &self,
    ) -> (
        proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient<tonic::transport::Channel>,
        proto::tetragon::GetHealthStatusResponse,
    ) {
        use proto::tetragon::GetHealthStatusRequest;
        use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(ch) = self.address.connect().await {
                let mut c = FineGuidanceSensorsClient::new(ch).max_decoding_message_size(64 << 20);
                if let Ok(health) = c.get_health(GetHealthStatusRequest::default()).await {
                    return (c, health.into_inner());
                }
            }
            assert!(std::time::Instant::now() < deadline, "the sensor did not answer within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A counter from the sensor's health details (`cache_entries`, …).
    pub async fn counter(&self, key: &str) -> u64 {
        let (_, health) = self.healthy().await;
        let details = health.health_status.first().map(|s| s.details.clone()).unwrap_or_default();
        details
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in the sensor's health details: {details}"))
    }

    /// Stops it (SIGTERM) and waits for it.
    pub fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
