//! Python grpcio for tests that need a client which is not Vigil's: finds
//! an interpreter with grpcio and generates stubs from Vigil's .proto files.
//! Shared by the sensor's and the relay's tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The interpreter (`VIGIL_PYTHON`, else `python3`) if it has grpcio and
/// grpcio-tools. Without them the caller skips, printing why, unless
/// `VIGIL_REQUIRE_ALL` is set (CI), where that is a failure.
pub fn python() -> Option<String> {
    let py = std::env::var("VIGIL_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py).args(["-c", "import grpc, grpc_tools"]).status().is_ok_and(|s| s.success());
    if ok {
        return Some(py);
    }
    let reason = format!("{py} has no grpcio/grpcio-tools (cargo xtask setup installs them)");
    assert!(std::env::var_os("VIGIL_REQUIRE_ALL").is_none(), "{reason}");
    eprintln!("SKIP python client: {reason}");
    None
}

/// Generates Python stubs for the tetragon package into a new directory.
pub fn stubs(py: &str, proto_root: &Path, tag: &str) -> PathBuf {
    let out = std::env::temp_dir().join(format!("vigil-pystubs-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new(py)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(proto_root)
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args([
            "tetragon/capabilities.proto",
            "tetragon/tetragon.proto",
            "tetragon/events.proto",
            "tetragon/sensors.proto",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "grpc_tools.protoc on our .proto files");
    out
}
