//! `cargo xtask setup | run | test | bench`: the project's own set-up and
//! entry points, so a fresh machine needs nothing installed by hand.
//!
//! Everything it installs is checked first and skipped when present.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Debian packages the tests use: setpriv/unshare (util-linux), ip netns
/// (iproute2), and for the kernel-matrix VM: qemu, a static busybox, cpio
/// and objcopy (binutils); shellcheck for the kind script; openssl's
/// s_client for the relay's handshake as a non-rustls client sees it;
/// nats-server (with JetStream) for the relay's backbone.
const APT_PACKAGES: &[&str] = &[
    "util-linux",
    "iproute2",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "binutils",
    "shellcheck",
    "openssl",
    "nats-server",
];
const BPF_LINKER_VERSION: &str = "^0.10";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn tools_dir() -> PathBuf {
    root().join("target/tools")
}

fn venv_python() -> PathBuf {
    root().join("target/venv/bin/python3")
}

/// PATH with the project's own tool directory first.
fn path_env() -> String {
    let old = std::env::var("PATH").unwrap_or_default();
    format!("{}:{}", tools_dir().join("bin").display(), old)
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: {shown}");
    let status = cmd.env("PATH", path_env()).status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.env("PATH", path_env()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn setup() -> Result<()> {
    // Debian packages the tests use (setpriv, ip netns, python venv).
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing Debian packages {missing:?}; run as root or install them");
        }
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // Nightly's rust-src, for -Z build-std=core of the eBPF crate.
    let has_src = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with("rust-src")));
    if !has_src {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    // bpf-linker, into target/tools unless one is already on PATH.
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        run(Command::new("cargo")
            .args(["+nightly", "install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--root"])
            .arg(tools_dir()))?;
    }
    // Python with grpcio, for the non-Vigil client test.
    if !succeeds(Command::new(venv_python()).args(["-c", "import grpc, grpc_tools"])) {
        run(Command::new("python3").args(["-m", "venv"]).arg(root().join("target/venv")))?;
        run(Command::new(venv_python()).args(["-m", "pip", "install", "-q", "grpcio", "grpcio-tools"]))?;
    }
    Ok(())
}

fn dpkg_installed(p: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", p])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root());
    c
}

fn test() -> Result<()> {
    setup()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // The whole workspace, xtask included; the eBPF crate on its own below.
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "node-sensor-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().current_dir(root().join("node-sensor-ebpf")).args([
        "+nightly",
        "clippy",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Every test, kernel tests included; a test that cannot run its part
    // here fails instead of skipping. Every test binary runs even when an
    // earlier one fails, so one failure hides no other.
    let (passed, failed) = run_counting_tests(
        cargo()
            .args(["test", "--workspace", "--exclude", "node-sensor-ebpf", "--no-fail-fast"])
            .env("VIGIL_REQUIRE_ALL", "1")
            .env("VIGIL_PYTHON", venv_python()),
    )?;
    // One closing line for the whole suite (cargo prints one per binary),
    // with the true counts.
    println!("tests: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        bail!("{failed} tests failed, {passed} passed");
    }
    Ok(())
}

/// Runs a `cargo test` command, echoing its output, and sums the counts of
/// its per-binary `test result:` lines.
fn run_counting_tests(cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader, Write};
    eprintln!("xtask: {cmd:?}");
    let mut child = cmd.env("PATH", path_env()).stdout(Stdio::piped()).spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut passed, mut failed) = (0, 0);
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        writeln!(out, "{line}")?;
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_in(rest, "passed");
            failed += count_in(rest, "failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        // A test binary that died before its summary line (or a build
        // error): counted as one failure, so the closing line is not green.
        failed = 1;
    }
    Ok((passed, failed))
}

/// The number before `word` in `ok. 3 passed; 0 failed; …`.
fn count_in(summary: &str, word: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| part.trim().strip_suffix(word)?.trim().rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

fn run_sensor() -> Result<()> {
    setup()?;
    if !is_root() {
        bail!("the sensor loads BPF programs: run `cargo xtask run` as root");
    }
    run(cargo().args(["build", "--release", "--bin", "vigil-sensor", "--bin", "vigil"]))?;
    let bin = root().join("target/release");
    let socket = std::env::temp_dir().join("vigil-sensor.sock");
    let address = format!("unix://{}", socket.display());
    let mut sensor = Command::new(bin.join("vigil-sensor"))
        .args(["--server-address", &address])
        .spawn()
        .context("starting vigil-sensor")?;
    let mut ready = false;
    for _ in 0..100 {
        if succeeds(Command::new(bin.join("vigil")).args(["--server-address", &address, "status"])) {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if !ready {
        let _ = sensor.kill();
        bail!("vigil-sensor did not become ready");
    }
    eprintln!("xtask: streaming compact events from {address}; Ctrl-C to stop");
    let status =
        Command::new(bin.join("vigil")).args(["--server-address", &address, "getevents", "-o", "compact"]).status();
    let _ = sensor.kill();
    let _ = sensor.wait();
    status?;
    Ok(())
}

fn bench() -> Result<()> {
    setup()?;
    let execs = std::env::args().nth(2).unwrap_or_else(|| "5000".into());
    run(cargo().args(["bench", "-p", "node-sensor", "--bench", "exec_storm", "--", &execs]))
}

/// Boots a kernel under qemu with the sensor inside and checks its events
/// against /proc in the VM: Debian's 6.1 cloud kernel by default, or the
/// vmlinuz (or linux-image .deb) given.
fn kernel_matrix() -> Result<()> {
    setup()?;
    let mut cmd = cargo();
    cmd.args(["test", "-p", "node-sensor", "--test", "kernel_matrix", "--", "--nocapture"])
        .env("VIGIL_REQUIRE_ALL", "1");
    if let Some(image) = std::env::args().nth(2) {
        let image = std::fs::canonicalize(&image).with_context(|| format!("kernel image {image}"))?;
        cmd.env("VIGIL_KERNEL_IMAGE", image);
    }
    run(&mut cmd)
}

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "setup" => setup(),
        "test" => test(),
        "run" => run_sensor(),
        "bench" => bench(),
        "kernel-matrix" => kernel_matrix(),
        _ => bail!("usage: cargo xtask setup | run | test | bench [EXECS] | kernel-matrix [KERNEL_IMAGE_OR_DEB]"),
    }
}
