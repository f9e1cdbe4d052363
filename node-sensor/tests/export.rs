//! The export file as log shippers read it: rotated past its size limit
//! while an independent reader follows it by name (as fluent-bit's tail
//! does), every event is read exactly once; backups are kept as
//! configured. On a full disk, events that cannot be written are counted,
//! and once writing works again the first line says exactly how many.
//! Tetragon's export flags choose events and fields, and a rate limit
//! says in the file what it cut.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Sensor, final_stat, logged_losses, metrics_address, nonce};
use test_support::scrape::{http, sample};

/// Follows `path` by name until `done` and then the end of the file: each
/// whole line, once, across renames (the old file is read to its end, then
/// the new one from its start).
fn follow(path: PathBuf, done: Arc<AtomicBool>, lines: Arc<Mutex<Vec<String>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let open = || loop {
            if let Ok(f) = std::fs::File::open(&path) {
                let ino = f.metadata().unwrap().ino();
                return (BufReader::new(f), ino);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let (mut reader, mut ino) = open();
        let mut partial = String::new();
        loop {
            assert!(Instant::now() < deadline, "the follower ran out of time");
            let mut buf = String::new();
            let n = reader.read_line(&mut buf).unwrap();
            if n > 0 {
                partial.push_str(&buf);
                if partial.ends_with('\n') {
                    lines.lock().unwrap().push(std::mem::take(&mut partial).trim_end().to_owned());
                }
                continue;
            }
            // At the end: a new file under the name means a rotation.
            let renamed = std::fs::metadata(&path).map(|m| m.ino() != ino).unwrap_or(false);
            if renamed {
                assert!(partial.is_empty(), "a line split across files: {partial:?}");
                (reader, ino) = open();
                continue;
            }
            if done.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_following_the_file_by_name_reads_every_event_once_across_rotations() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-rotate-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("events.jsonl");
    let sensor = Sensor::start(&[
        "--export-filename",
        &path.display().to_string(),
        "--export-file-max-size-mb",
        "1",
        "--export-file-max-backups",
        "2",
        "--export-file-compress",
    ])
    .await;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let follower = follow(path.clone(), done.clone(), lines.clone());

    // About 3.5 MB of events: each marked exec and its exit, numbered.
    let marked = dir.join("marked-true");
    test_support::copy_executable("/bin/true", &marked);
    let count = 2500;
    let script = format!("i=0; while [ $i -lt {count} ]; do {} m-$i; i=$((i+1)); done", marked.display());
    assert!(Command::new("/bin/sh").args(["-c", &script]).status().unwrap().success());
    let fence = format!("fence-{run}");
    assert!(Command::new("/bin/true").arg(&fence).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lines.lock().unwrap().iter().any(|l| l.contains("process_exit") && l.contains(&fence)) {
        assert!(Instant::now() < deadline, "the fence's exit never reached the file; log:\n{}", sensor.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, Ordering::Relaxed);
    follower.join().unwrap();

    let lines = std::mem::take(&mut *lines.lock().unwrap());
    let mut seen: BTreeMap<(bool, String), usize> = BTreeMap::new();
    for l in lines.iter() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a whole line ({e}): {l}"));
        for (kind, exit) in [("process_exec", false), ("process_exit", true)] {
            let Some(p) = v.get(kind).and_then(|e| e.get("process")) else { continue };
            if p["binary"] == marked.display().to_string().as_str() {
                *seen.entry((exit, p["arguments"].as_str().unwrap().to_owned())).or_default() += 1;
            }
        }
    }
    for i in 0..count {
        for exit in [false, true] {
            assert_eq!(seen.get(&(exit, format!("m-{i}"))), Some(&1), "m-{i} (exit: {exit}) once");
        }
    }
    assert_eq!(seen.len(), 2 * count);
    // Rotated more than twice; two backups kept, compressed, each under
    // the limit before compression.
    let deadline = Instant::now() + Duration::from_secs(20);
    let backups = loop {
        let backups = backups_of(&path);
        if backups.len() == 2 && backups.iter().all(|b| b.extension().is_some_and(|e| e == "gz")) {
            break backups;
        }
        assert!(Instant::now() < deadline, "backups: {backups:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for b in &backups {
        let name = b.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events-") && name.ends_with(".jsonl.gz"), "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn backups_of(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("events-")))
        .collect();
    out.sort();
    out
}

/// A tmpfs of `kib` KiB at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, kib: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs at {}", dir.display());
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_lost_events_are_counted_and_said_in_the_first_line_after() {
    require_kernel!();
    let run = nonce();
    let disk = Tmpfs::mount(&std::env::temp_dir().join(format!("vigil-full-{run}")), 1024);
    let path = disk.0.join("events.jsonl");
    // Only this test's marked events are written: the other tests of this
    // binary run at once, and their events alone could fill the disk again
    // after the filler is gone (CI run 48: writing never resumed).
    let allow = format!(r#"{{"arguments_regex":["^lost-{run}-","^after-{run}$"]}}"#);
    let mut sensor =
        Sensor::start(&["--export-filename", &path.display().to_string(), "--export-allowlist", &allow]).await;
    let before = sensor.health_counter("export_dropped").await.unwrap();
    let filler = disk.0.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k", "count=100000"])
        .arg(format!("of={}", filler.display()))
        .output();
    for i in 0..5 {
        assert!(Command::new("/bin/true").arg(format!("lost-{run}-{i}")).status().unwrap().success());
    }
    // Writes fail (the file holds no page yet, or its last page's slack
    // cannot take 10 events of ~1.5 KB).
    sensor.wait_counter("export_dropped", |n| n > before).await;
    std::fs::remove_file(&filler).unwrap();
    let after_gap = format!("after-{run}");
    assert!(Command::new("/bin/true").arg(&after_gap).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap();
        if text.lines().any(|l| l.contains("process_exit") && l.contains(&after_gap)) {
            break text;
        }
        assert!(Instant::now() < deadline, "writing never resumed; log:\n{}", sensor.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lost = sensor.health_counter("export_dropped").await.unwrap() - before;
    // Every line whole. Each gap's first line is a notice (a line may
    // still fit in the file's last page now and then, so a full disk can
    // make several gaps); together they say exactly what vigil status
    // counts, and every marked event is either in the file or among them.
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a cut line ({e}): {l}"))).collect();
    let said: u64 = lines
        .iter()
        .filter_map(|v| v.get("rate_limit_info"))
        .map(|r| r["number_of_dropped_process_events"].as_str().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(said > 0, "no loss notice:\n{text}");
    assert_eq!(said, lost, "the notices say what vigil status counts");
    let written = text.lines().filter(|l| l.contains(&format!("lost-{run}"))).count() as u64;
    assert!(10 - written <= lost, "marked events neither written nor counted");
    assert!(sensor.log().contains("export file writes failing"));
    assert!(sensor.log().contains("export file writes work again"));
    // At the end: the loss log adds up to the final count, each once.
    assert!(sensor.stop().success());
    let log = sensor.log();
    let dropped = final_stat(&log, "export_dropped");
    assert!(dropped >= lost);
    assert_eq!(logged_losses(&log, "export_dropped"), (dropped, dropped), "log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_flags_choose_events_and_fields_and_the_rate_limit_says_what_it_cut() {
    require_kernel!();
    let marker = format!("exported-{}", nonce());
    let allow = format!(r#"{{"arguments_regex":["^{marker}-"]}}"#);
    let deny = r#"{"event_set":["PROCESS_EXIT"]}"#;
    let fields = r#"{"event_set":["PROCESS_EXEC"],"fields":"process.binary,process.arguments","action":"INCLUDE"}"#;
    let mut sensor = Sensor::start(&[
        "--export-allowlist",
        &allow,
        "--export-denylist",
        deny,
        "--field-filters",
        fields,
        "--export-rate-limit",
        "5",
        "--metrics-address",
        "127.0.0.1:0",
    ])
    .await;
    let address = metrics_address(&sensor);
    let count = 20;
    for i in 0..count {
        assert!(Command::new("/bin/true").arg(format!("{marker}-{i}")).status().unwrap().success());
    }
    // Every marked exec is either written or cut: 5 at once (the limit's
    // burst), and one more per 12 s the test takes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (written, cut) = loop {
        let (_, text) = http(&address, "GET", "/metrics");
        let written = sample(&text, "tetragon_events_exported_total", &[]);
        let cut = sample(&text, "tetragon_export_ratelimit_events_dropped_total", &[]);
        if written + cut >= count {
            break (written, cut);
        }
        assert!(Instant::now() < deadline, "exported {written}, cut {cut}:\n{text}\nlog:\n{}", sensor.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(written + cut, count, "only the marked execs pass the lists");
    assert!(written >= 5, "the burst of 5 is written: {written}");
    assert!(cut >= 1, "the rest is cut");
    assert!(sensor.stop().success());

    let text = std::fs::read_to_string(&sensor.export).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let execs: Vec<&serde_json::Value> = lines.iter().filter_map(|v| v.get("process_exec")).collect();
    assert_eq!(execs.len() as u64, written, "{text}");
    for exec in &execs {
        // The field filter kept the binary and arguments only.
        let process = exec["process"].as_object().unwrap();
        let mut keys: Vec<&str> = process.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["arguments", "binary"], "{exec}");
        assert_eq!(process["binary"], "/bin/true");
        assert!(process["arguments"].as_str().unwrap().starts_with(&format!("{marker}-")));
        assert!(exec.get("parent").is_none(), "{exec}");
    }
    // What the limit cut is said in the file (at the latest when the
    // sensor stops); nothing else is in it.
    let said: u64 = lines
        .iter()
        .filter_map(|v| v.get("rate_limit_info"))
        .map(|r| r["number_of_dropped_process_events"].as_str().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(said, cut, "{text}");
    assert_eq!(lines.len() - execs.len(), lines.iter().filter(|v| v.get("rate_limit_info").is_some()).count());
}

#[test]
fn bad_export_flags_stop_start_up_naming_the_flag() {
    for (flag, value, says) in [
        ("--export-allowlist", r#"{"binary_regx":["x"]}"#, "unknown field \"binary_regx\""),
        ("--export-denylist", r#"{"event_set":["PROCESS_EXEC"]"#, "filter 1 is not JSON"),
        ("--field-filters", r#"{"fields":"process.nope","action":"INCLUDE"}"#, "process.nope"),
        ("--export-allowlist", r#"{"binary_regex":["("]}"#, "invalid regular expression in binary_regex[0]"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vigil-sensor"))
            .args(["--server-address", "unix:///tmp/never.sock", flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        let name = flag.trim_start_matches("--");
        assert!(stderr.contains(name) && stderr.contains(says), "{flag}: {stderr}");
    }
}
