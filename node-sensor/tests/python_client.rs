//! A client that is not our CLI (Python grpcio stubs generated from our
//! .proto files) receives a live command's events from the sensor.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;
use test_support::python as pysupport;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{Sensor, nonce};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_receives_live_events() {
    require_kernel!();
    let Some(py) = pysupport::python() else { return };
    let stubs =
        pysupport::stubs(&py, &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto"), "sensor");

    let sensor = Sensor::start(&[]).await;
    let mark = format!("vigil-py-{}", nonce());
    let mut client = Command::new(&py)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py"))
        .arg(&stubs)
        .arg(sensor.address.to_string())
        .arg(&mark)
        .arg("2")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "subscribed");
    // The client prints "subscribed" once GetEvents has answered, which the
    // sensor does after registering the subscription: run the command now.
    assert!(Command::new("/bin/echo").arg(&mark).stdout(Stdio::null()).status().unwrap().success());
    let got: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    assert!(client.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&stubs);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["process_exec"]["process"]["binary"], "/bin/echo");
    assert_eq!(got[0]["process_exec"]["process"]["arguments"], mark.as_str());
    assert_eq!(got[0]["node_name"], "kt-node");
    assert_eq!(got[1]["process_exit"]["process"]["binary"], "/bin/echo");
    assert_eq!(got[1]["process_exit"]["process"]["exec_id"], got[0]["process_exec"]["process"]["exec_id"]);
}
