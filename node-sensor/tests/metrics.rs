//! The sensor's Prometheus endpoint: a marked workload raises
//! `tetragon_events_total` by exactly its execs and exits, labelled with
//! its binary; every `vigil status` counter is a `vigil_sensor_*` metric;
//! nothing but `/metrics` is served; bad flags stop start-up naming them.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Sensor, metrics_address, nonce};
use proto::tetragon::GetHealthStatusRequest;
use test_support::scrape::{http, sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_workload_raises_the_event_counters_by_exactly_its_execs_and_exits() {
    require_kernel!();
    let sensor = Sensor::start(&["--metrics-address", "127.0.0.1:0"]).await;
    let address = metrics_address(&sensor);
    let dir = std::env::temp_dir().join(format!("vigil-metrics-{}", nonce()));
    std::fs::create_dir_all(&dir).unwrap();
    let marked = dir.join("marked-true");
    std::fs::copy("/bin/true", &marked).unwrap();
    let marked = marked.display().to_string();

    let (status, before) = http(&address, "GET", "/metrics");
    assert_eq!(status, 200);
    assert_eq!(sample(&before, "tetragon_events_total", &[("binary", &marked)]), 0);
    for _ in 0..3 {
        assert!(Command::new(&marked).status().unwrap().success());
    }
    // A fence: once its exec is counted, every earlier event is.
    let fence = dir.join("fence-true");
    std::fs::copy("/bin/true", &fence).unwrap();
    assert!(Command::new(&fence).status().unwrap().success());
    let fence = fence.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (_, text) = http(&address, "GET", "/metrics");
        if sample(&text, "tetragon_events_total", &[("type", "PROCESS_EXIT"), ("binary", &fence)]) == 1 {
            break text;
        }
        assert!(Instant::now() < deadline, "the fence was never counted:\n{text}\nlog:\n{}", sensor.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for kind in ["PROCESS_EXEC", "PROCESS_EXIT"] {
        let labels = [("type", kind), ("namespace", ""), ("workload", ""), ("pod", ""), ("binary", marked.as_str())];
        assert_eq!(sample(&text, "tetragon_events_total", &labels), 3, "{kind}:\n{text}");
    }
    assert!(text.contains("# TYPE tetragon_events_total counter"));
    assert!(text.contains("# TYPE tetragon_process_cache_size gauge"));

    // Every counter `vigil status` shows is a metric, from the same source.
    let details = sensor.client().await.get_health(GetHealthStatusRequest::default()).await.unwrap().into_inner();
    let details = details.health_status[0].details.clone();
    for key in details.split_whitespace().filter_map(|kv| kv.split_once('=').map(|(k, _)| k)) {
        let counter = format!("vigil_sensor_{key}_total ");
        let gauge = format!("vigil_sensor_{key} ");
        assert!(
            text.lines().any(|l| l.starts_with(&counter) || l.starts_with(&gauge)),
            "{key} of vigil status is not a metric"
        );
    }

    // Nothing else is served.
    assert_eq!(http(&address, "GET", "/").0, 404);
    assert_eq!(http(&address, "GET", "/metrics/x").0, 404);
    assert_eq!(http(&address, "POST", "/metrics").0, 405);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_metrics_flags_stop_start_up_naming_the_flag() {
    require_kernel!();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("vigil-metrics-bad-{}", nonce()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (flag, value, expected)) in [
        ("--metrics-address", "unix:///run/m.sock", "not a unix socket"),
        ("--metrics-address", in_use.as_str(), "Address already in use"),
        ("--metrics-label-filter", "binary,container", "labels are namespace, workload, pod and binary"),
    ]
    .into_iter()
    .enumerate()
    {
        let out = Command::new(env!("CARGO_BIN_EXE_vigil-sensor"))
            .args(["--server-address", &format!("unix://{}/s{i}.sock", dir.display())])
            .args([flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value}: started");
        assert!(stderr.contains(flag.trim_start_matches('-')), "{flag}: names the flag:\n{stderr}");
        assert!(stderr.contains(expected), "{flag} {value}: expected {expected:?} in:\n{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
