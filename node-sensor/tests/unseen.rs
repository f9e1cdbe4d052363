//! Nothing runs unseen: whatever the length of its path, arguments or cwd,
//! and whatever bytes they hold, every exec the kernel performs gives
//! exactly one exec event and one exit, with what does not fit cut and
//! flagged. Processes are found by pid, not by their (possibly cut) text.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Collector, Sensor, exec_of, exit_of, nonce, pid};
use proto::tetragon::{GetEventsRequest, GetEventsResponse, Process};

/// Copies /bin/true to a path exactly `len` bytes long under `root`.
fn binary_at_length(root: &Path, len: usize) -> PathBuf {
    let mut dir = root.join(len.to_string());
    // Components of 200 bytes until the file name (at most 255) fits.
    while len - dir.as_os_str().len() > 256 {
        dir.push("d".repeat(200));
    }
    std::fs::create_dir_all(&dir).unwrap();
    let name = "t".repeat(len - dir.as_os_str().len() - 1);
    let path = dir.join(name);
    test_support::copy_executable("/bin/true", &path);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(path.as_os_str().len(), len);
    path
}

/// Waits until every pid has exited in the stream, then returns each pid's
/// (exec events, exit events).
async fn per_pid(c: &mut Collector, pids: &[u32]) -> Vec<(Vec<Process>, Vec<Process>)> {
    let all_exited = |evs: &[GetEventsResponse]| {
        pids.iter().all(|want| evs.iter().filter_map(exit_of).any(|(p, _, _)| pid(p) == *want))
    };
    assert!(c.until(Duration::from_secs(20), all_exited).await, "not every process exited in the stream");
    pids.iter()
        .map(|want| {
            let execs = c.events.iter().filter_map(exec_of).filter(|p| pid(p) == *want).cloned().collect();
            let exits = c.events.iter().filter_map(exit_of).filter(|(p, _, _)| pid(p) == *want);
            (execs, exits.map(|(p, _, _)| p.clone()).collect())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_at_every_path_length_up_to_path_max() {
    require_kernel!();
    let root = std::env::temp_dir().join(format!("vigil-paths-{}", nonce()));
    let lengths = [100, 255, 256, 1000, 2000, 4000, 4095];
    let binaries: Vec<PathBuf> = lengths.iter().map(|n| binary_at_length(&root, *n)).collect();
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, GetEventsRequest::default()).await;
    let mut pids = Vec::new();
    for (len, binary) in lengths.iter().zip(&binaries) {
        let mut child = Command::new(binary).arg(format!("vigil-len-{len}")).spawn().unwrap();
        pids.push(child.id());
        assert!(child.wait().unwrap().success());
    }
    let seen = per_pid(&mut c, &pids).await;
    let _ = std::fs::remove_dir_all(&root);
    for ((len, binary), (execs, exits)) in lengths.iter().zip(&binaries).zip(seen) {
        assert_eq!((execs.len(), exits.len()), (1, 1), "path of {len} bytes: one exec and one exit");
        let exec = &execs[0];
        let full = binary.to_string_lossy();
        // argv[0] is the whole path: the arguments after it survive.
        assert_eq!(exec.arguments, format!("vigil-len-{len}"), "path of {len} bytes");
        if *len <= 255 {
            assert_eq!(exec.binary, full, "path of {len} bytes fits");
            assert!(!exec.flags.contains("truncFilename"), "{len}: {}", exec.flags);
        } else {
            assert_eq!(exec.binary, full[..255], "path of {len} bytes is cut at 255");
            assert!(exec.flags.contains("truncFilename"), "{len}: {}", exec.flags);
        }
        assert_eq!(exits[0].exec_id, exec.exec_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_cwd_ten_thousand_arguments_and_a_huge_argv0() {
    require_kernel!();
    let root = std::env::temp_dir().join(format!("vigil-deep-{}", nonce()));
    let mut deep = root.clone();
    for i in 0..40 {
        deep.push(format!("level-{i:02}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, GetEventsRequest::default()).await;
    let mut in_deep = Command::new("/bin/true").arg("vigil-deep").current_dir(&deep).spawn().unwrap();
    let args: Vec<String> = (0..10_000).map(|i| format!("a{i}")).collect();
    let mut many = Command::new("/bin/true").args(&args).spawn().unwrap();
    // An argv[0] longer than the kernel side measures (8 KiB).
    let mut long_argv0 = Command::new("/bin/true").arg0("x".repeat(10_000)).arg("vigil-after-argv0").spawn().unwrap();
    let pids = [in_deep.id(), many.id(), long_argv0.id()];
    for child in [&mut in_deep, &mut many, &mut long_argv0] {
        assert!(child.wait().unwrap().success());
    }
    let seen = per_pid(&mut c, &pids).await;
    let _ = std::fs::remove_dir_all(&root);

    let (execs, exits) = &seen[0];
    assert_eq!((execs.len(), exits.len()), (1, 1), "deep cwd: one exec and one exit");
    let exec = &execs[0];
    assert!(exec.flags.contains("truncCWD"), "{}", exec.flags);
    assert!(exec.cwd.ends_with("/level-38/level-39"), "the deepest components are kept: {}", exec.cwd);
    assert_eq!(exec.arguments, "vigil-deep");

    let (execs, exits) = &seen[1];
    assert_eq!((execs.len(), exits.len()), (1, 1), "10,000 arguments: one exec and one exit");
    let exec = &execs[0];
    assert!(exec.flags.contains("truncArgs"), "{}", exec.flags);
    assert!(exec.arguments.starts_with("a0 a1 a2 a3 "), "{:.40}", exec.arguments);
    assert!(exec.arguments.len() <= node_sensor_common::ARGS_SIZE, "cut to the buffer");

    let (execs, exits) = &seen[2];
    assert_eq!((execs.len(), exits.len()), (1, 1), "a 10,000-byte argv[0]: one exec and one exit");
    let exec = &execs[0];
    assert_eq!(exec.binary, "/bin/true");
    assert!(exec.flags.split(' ').any(|f| f == "errorArgs"), "arguments unknown, and said so: {}", exec.flags);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_utf8_are_flagged() {
    require_kernel!();
    let n = nonce();
    let mut name = format!("vigil-bad-{n}-").into_bytes();
    name.push(0xff);
    let binary = std::env::temp_dir().join(OsStr::from_bytes(&name));
    test_support::copy_executable("/bin/true", &binary);
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, GetEventsRequest::default()).await;
    let mut bad_arg = b"mark-".to_vec();
    bad_arg.push(0xfe);
    let mut bad = Command::new(&binary).arg(OsStr::from_bytes(&bad_arg)).spawn().unwrap();
    let mut good = Command::new("/bin/true").arg(format!("vigil-good-{n}")).spawn().unwrap();
    let pids = [bad.id(), good.id()];
    assert!(bad.wait().unwrap().success() && good.wait().unwrap().success());
    let seen = per_pid(&mut c, &pids).await;
    let _ = std::fs::remove_file(&binary);
    let bad = &seen[0].0[0];
    assert!(bad.flags.split(' ').any(|f| f == "invalidUTF8"), "{}", bad.flags);
    assert_eq!(bad.binary, format!("{}/vigil-bad-{n}-\u{fffd}", std::env::temp_dir().display()));
    assert_eq!(bad.arguments, "mark-\u{fffd}");
    let good = &seen[1].0[0];
    assert!(!good.flags.contains("invalidUTF8"), "{}", good.flags);
}
