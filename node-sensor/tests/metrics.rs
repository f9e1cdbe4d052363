//! The sensor's Prometheus endpoint: a marked workload raises
//! `tetragon_events_total` by exactly its execs and exits, labelled with
//! its binary; every `vigil status` counter is a `vigil_sensor_*` metric;
//! nothing but `/metrics` is served; bad flags stop start-up naming them.
//! Policies by state and each BPF program's runs and run time are metrics.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Sensor, final_stat, logged_losses, metrics_address, nonce};
use proto::tetragon::{DisableTracingPolicyRequest, GetEventsRequest, GetHealthStatusRequest};
use test_support::scrape::{http, sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_workload_raises_the_event_counters_by_exactly_its_execs_and_exits() {
    require_kernel!();
    let sensor = Sensor::start(&["--metrics-address", "127.0.0.1:0"]).await;
    let address = metrics_address(&sensor);
    let dir = std::env::temp_dir().join(format!("vigil-metrics-{}", nonce()));
    std::fs::create_dir_all(&dir).unwrap();
    let marked = dir.join("marked-true");
    test_support::copy_executable("/bin/true", &marked);
    let marked = marked.display().to_string();

    let (status, before) = http(&address, "GET", "/metrics");
    assert_eq!(status, 200);
    assert_eq!(sample(&before, "tetragon_events_total", &[("binary", &marked)]), 0);
    for _ in 0..3 {
        assert!(Command::new(&marked).status().unwrap().success());
    }
    // A fence: once its exec is counted, every earlier event is.
    let fence = dir.join("fence-true");
    test_support::copy_executable("/bin/true", &fence);
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
    // Tetragon's ring-buffer and event-cache names, from the same counters.
    for (tetragon, vigil) in [
        ("tetragon_observer_ringbuf_events_received_total", "vigil_sensor_records_total"),
        ("tetragon_observer_ringbuf_events_lost_total", "vigil_sensor_ringbuf_full_total"),
        ("tetragon_observer_ringbuf_errors_total", "vigil_sensor_bad_records_total"),
        ("tetragon_event_cache_entries", "vigil_sensor_pod_waiting"),
        ("tetragon_event_cache_fetch_failures_total", "vigil_sensor_pod_timeouts_total"),
    ] {
        assert_eq!(sample(&text, tetragon, &[]), sample(&text, vigil, &[]), "{tetragon}");
    }
    assert!(sample(&text, "tetragon_observer_ringbuf_events_received_total", &[]) >= 8, "3 execs, exits, the fence");
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

/// A sample's value, fractional ones too (`sample` reads whole numbers).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_by_state_and_each_programs_runs_and_run_time_are_metrics() {
    require_kernel!();
    // Run counts and times are kept while a BPF_ENABLE_STATS fd is open
    // (without touching the kernel.bpf_stats_enabled setting).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    let dir = std::env::temp_dir().join(format!("vigil-metrics-policy-{}", nonce()));
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!("metrics-{}", nonce());
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n  tracepoints:\n  \
             - subsystem: syscalls\n    event: sys_enter_unlinkat\n    args:\n    - index: 6\n      type: string\n"
        ),
    )
    .unwrap();
    let sensor =
        Sensor::start(&["--tracing-policy", &policy.display().to_string(), "--metrics-address", "127.0.0.1:0"]).await;
    let address = metrics_address(&sensor);
    let loaded = |text: &str, state: &str| sample(text, "tetragon_tracingpolicy_loaded", &[("state", state)]);
    let (_, text) = http(&address, "GET", "/metrics");
    assert_eq!([loaded(&text, "enabled"), loaded(&text, "disabled"), loaded(&text, "load_error")], [1, 0, 0], "{text}");
    // Scoped policies' cgroups that did not fit the kernel's map: none.
    assert!(text.contains("# TYPE vigil_policy_scope_cgroups_refused_total counter"), "{text}");
    assert_eq!(sample(&text, "vigil_policy_scope_cgroups_refused_total", &[]), 0);

    let (_, before) = http(&address, "GET", "/metrics");
    let exec = [("sensor", "__base__"), ("attach", "sched_process_exec"), ("section", "vigil_exec")];
    let runs_before = sample(&before, "tetragon_overhead_program_runs_total", &exec);
    for _ in 0..5 {
        assert!(Command::new("/bin/true").status().unwrap().success());
    }
    let (_, after) = http(&address, "GET", "/metrics");
    // Five execs here, and whatever else ran on the machine meanwhile.
    let runs = sample(&after, "tetragon_overhead_program_runs_total", &exec) - runs_before;
    assert!(runs >= 5, "vigil_exec ran {runs} times for 5 execs:\n{after}");
    let seconds = value(&after, "tetragon_overhead_program_seconds_total", &exec).unwrap();
    assert!(seconds > 0.0, "vigil_exec's run time: {seconds}");
    assert!(after.contains("# TYPE tetragon_overhead_program_seconds_total counter"), "{after}");
    // Every loaded program is there, each named by its section.
    for program in ["vigil_exec", "vigil_exit", "vigil_fork", "vigil_tp", "vigil_up"] {
        assert!(value(&after, "tetragon_overhead_program_runs_total", &[("section", program)]).is_some(), "{program}");
    }

    let mut client = sensor.client().await;
    client.disable_tracing_policy(DisableTracingPolicyRequest { name, ..Default::default() }).await.unwrap();
    let (_, text) = http(&address, "GET", "/metrics");
    assert_eq!([loaded(&text, "enabled"), loaded(&text, "disabled")], [0, 1], "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_clients_losses_agree_in_its_metrics_the_status_and_the_log() {
    require_kernel!();
    let mut sensor = Sensor::start(&["--subscriber-queue-mib", "1", "--metrics-address", "127.0.0.1:0"]).await;
    let address = metrics_address(&sensor);
    // A client that never reads, with an HTTP/2 window of 1 KiB (hyper's
    // default of MBs, which it may also grow, would take much longer to
    // fill): once its queue's MiB is full, its events are dropped.
    let channel = sensor
        .address
        .connect_with(|e| e.initial_stream_window_size(1024).initial_connection_window_size(65_535))
        .await
        .unwrap();
    let mut client = proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient::new(channel);
    let _stalled = client.get_events(GetEventsRequest::default()).await.unwrap();
    sensor.wait_counter("subscribers", |n| n >= 2).await; // it and the export file
    // Some 4 MB of events, a few at a time until the client's are dropped.
    for i in 0..3000 {
        assert!(Command::new("/bin/true").arg(format!("stall-{i}")).status().unwrap().success());
        if i % 100 == 99 && sensor.health_counter("subscriber_dropped").await.is_some_and(|n| n > 0) {
            break;
        }
    }
    sensor.wait_counter("subscriber_dropped", |n| n > 0).await;
    // Its own series says so too, as the local client it is.
    let (_, text) = http(&address, "GET", "/metrics");
    let own = sample(&text, "vigil_sensor_getevents_client_dropped_total", &[("client", "local")]);
    let all = sample(&text, "vigil_sensor_subscriber_dropped_total", &[]);
    assert!(own > 0 && own <= all, "its drops {own}, all {all}:\n{text}");
    // At the end: the log's losses add up to the final count, each once.
    assert!(sensor.stop().success());
    let log = sensor.log();
    let dropped = final_stat(&log, "subscriber_dropped");
    assert!(dropped >= all, "final {dropped}, scraped {all}");
    assert_eq!(logged_losses(&log, "subscriber_dropped"), (dropped, dropped), "log:\n{log}");
}
