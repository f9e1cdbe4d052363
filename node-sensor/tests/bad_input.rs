//! Bad input gets one clear error naming the problem: at start-up (not
//! root, missing BTF, unknown config key, bad flag) and over gRPC (invalid
//! regex, unknown event type) without disturbing other subscribers.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Collector, Sensor, exec_of, nonce};
use proto::tetragon::{Filter, GetEventsRequest};

fn sensor(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil-sensor")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn unknown_config_key_is_named() {
    let path = std::env::temp_dir().join(format!("vigil-bad-{}.yaml", nonce()));
    std::fs::write(&path, "node-name: a\nenable-procss-cred: true\n").unwrap();
    let (code, err) = sensor(&["--config-file", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, 2);
    assert!(err.contains("enable-procss-cred"), "{err}");
}

#[test]
fn bad_flags_are_named() {
    let (code, err) = sensor(&["--process-cache-size", "many"]);
    assert_eq!(code, 2);
    assert!(err.contains("--process-cache-size"), "{err}");
    let (code, err) = sensor(&["--server-address", "no-port"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid server-address"), "{err}");
}

#[test]
fn missing_btf_is_a_clear_startup_error() {
    require_kernel!();
    let (code, err) = sensor(&["--btf", "/nonexistent/vmlinux", "--server-address", "unix:///tmp/vigil-nobtf.sock"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read kernel BTF at /nonexistent/vmlinux"), "{err}");
}

#[test]
fn not_root_is_a_clear_startup_error() {
    require_kernel!();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_vigil-sensor"),
            "--server-address",
            "unix:///tmp/vigil-nonroot.sock",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("vigil-sensor must run as root"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_rejected_and_others_keep_streaming() {
    require_kernel!();
    let sensor = Sensor::start(&[]).await;
    let mut good = Collector::subscribe(&sensor, GetEventsRequest::default()).await;
    let mut client = sensor.client().await;
    let bad_regex = GetEventsRequest {
        allow_list: vec![Filter { binary_regex: vec!["([".into()], ..Default::default() }],
        ..Default::default()
    };
    let status = client.get_events(bad_regex).await.expect_err("rejected");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("binary_regex"), "{}", status.message());
    let bad_type = GetEventsRequest {
        deny_list: vec![Filter { event_set: vec![77], ..Default::default() }],
        ..Default::default()
    };
    let status = client.get_events(bad_type).await.expect_err("rejected");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("event type 77"), "{}", status.message());
    // A field filter naming no field would filter nothing: refused too.
    let bad_field = GetEventsRequest {
        field_filters: vec![proto::tetragon::FieldFilter {
            fields: Some(proto::wkt::FieldMask { paths: vec!["process.binray".into()] }),
            action: proto::tetragon::FieldFilterAction::Include as i32,
            ..Default::default()
        }],
        ..Default::default()
    };
    let status = client.get_events(bad_field).await.expect_err("rejected");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("process.binray"), "{}", status.message());

    let mark = format!("vigil-still-{}", nonce());
    Command::new("/bin/true").arg(&mark).status().unwrap();
    assert!(
        good.until(Duration::from_secs(10), |evs| evs.iter().filter_map(exec_of).any(|p| p.arguments == mark)).await
    );
}
