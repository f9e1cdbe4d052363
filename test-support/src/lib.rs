//! What Vigil's tests share: unique markers, the rule for skipping, daemons
//! started as child processes whose log and listening addresses are read
//! back (port 0, no bind-drop-reuse race), and the Python gRPC client.
//! A dev-dependency only.

#![allow(clippy::unwrap_used, reason = "test helpers: a panic here is a failed test")]

pub mod daemon;
pub mod events;
pub mod python;
pub mod scrape;

/// A token unique to this call: tests run in parallel threads and may start
/// within one microsecond, so a counter keeps markers, cgroups and files
/// apart, and the pid and time keep runs apart.
pub fn nonce() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}{:06}{n:02}", std::process::id(), t.subsec_micros())
}

/// The resident memory of process `pid`, in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib * 1024
}

/// Whether this process runs as root.
/// Where the cgroup v2 hierarchy is mounted, if it is.
pub fn cgroup2_root() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_owned())
    })
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Skips the calling test with `reason` printed, unless `VIGIL_REQUIRE_ALL`
/// is set (CI), where a test that cannot run is a failure.
#[macro_export]
macro_rules! skip_if {
    ($reason:expr) => {
        if let Some(reason) = $reason {
            assert!(std::env::var_os("VIGIL_REQUIRE_ALL").is_none(), "cannot run: {reason}");
            eprintln!("SKIP {}: {reason}", module_path!());
            return;
        }
    };
}

/// A binary of this workspace (`vigil-sensor` or `vigil`) beside
/// `own_binary` (a `CARGO_BIN_EXE_*` of the calling test's package). Cargo
/// builds only a package's own binaries for its tests, so the others are
/// built here (once per test binary, same profile, same target directory)
/// instead of trusting whatever lies there.
pub fn workspace_bin(own_binary: &str, name: &str) -> std::path::PathBuf {
    use std::path::Path;
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = Path::new(own_binary).parent().and_then(|d| d.file_name()).is_some_and(|d| d == "release");
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).args([
            "build",
            "--quiet",
            "-p",
            "node-sensor",
            "--bin",
            "vigil-sensor",
            "-p",
            "cli",
            "--bin",
            "vigil",
        ]);
        if release {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("building vigil-sensor and vigil: cargo {s}")),
            Err(e) => Err(format!("running cargo to build vigil-sensor and vigil: {e}")),
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    Path::new(own_binary).with_file_name(name)
}

/// Copies an executable to `to` for a test to run, through `cp`: the
/// copy's write descriptor then only ever exists in `cp`. Written from the
/// test process, a fork by another test's thread could inherit it until
/// that child's exec, and running the copy meanwhile fails with "Text file
/// busy" (ETXTBSY; CI run 53).
pub fn copy_executable(from: impl AsRef<std::path::Path>, to: impl AsRef<std::path::Path>) {
    let (from, to) = (from.as_ref(), to.as_ref());
    let status = std::process::Command::new("cp").arg(from).arg(to).status().expect("run cp");
    assert!(status.success(), "cp {} {}: {status}", from.display(), to.display());
}
