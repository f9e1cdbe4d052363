//! What Vigil's tests share: unique markers, the rule for skipping, daemons
//! started as child processes whose log and listening addresses are read
//! back (port 0, no bind-drop-reuse race), and the Python gRPC client.
//! A dev-dependency only.

#![allow(clippy::unwrap_used, reason = "test helpers: a panic here is a failed test")]

pub mod daemon;
pub mod events;
pub mod python;

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
