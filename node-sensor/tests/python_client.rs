//! A client that is not our CLI (Python grpcio stubs generated from our
//! .proto files) receives a live command's events from the sensor.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{Sensor, nonce};

fn python() -> Option<String> {
    let py = std::env::var("VIGIL_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py).args(["-c", "import grpc, grpc_tools"]).status().is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    let reason = format!("{py} has no grpcio/grpcio-tools (cargo xtask setup installs them)");
    assert!(std::env::var_os("VIGIL_REQUIRE_ALL").is_none(), "{reason}");
    eprintln!("SKIP python_client: {reason}");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_receives_live_events() {
    require_kernel!();
    let Some(py) = python() else { return };
    let stubs = std::env::temp_dir().join(format!("vigil-pystubs-{}", nonce()));
    std::fs::create_dir_all(&stubs).unwrap();
    let protos = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto");
    let protoc = Command::new(&py)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&protos)
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .args([
            "tetragon/capabilities.proto",
            "tetragon/tetragon.proto",
            "tetragon/events.proto",
            "tetragon/sensors.proto",
        ])
        .status()
        .unwrap();
    assert!(protoc.success(), "protoc on our .proto files");

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
    // Give the subscription a moment to reach the sensor, then run the command.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
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
