//! Tracing policies on this machine's kernel: the real sensor loads a
//! TracingPolicy, its tracepoint program runs in the kernel, and marked
//! workloads give exactly the expected `process_tracepoint` events, tied
//! to the exec events of the processes that caused them.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Collector, Sensor, exec_of, nonce, parent_of, pid};
use proto::tetragon::get_events_response::Event;
use proto::tetragon::kprobe_argument::Arg;
use proto::tetragon::{EventType, Filter, GetEventsRequest, GetEventsResponse, KprobeAction, ProcessTracepoint};

/// `syscalls/sys_enter_unlinkat`: fields 4..7 are __syscall_nr, dfd,
/// pathname, flag.
fn unlinkat_policy(name: &str) -> String {
    format!(
        "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_unlinkat
    message: marked unlinkat
    tags: [vigil.test, files]
    args:
    - index: 4
      type: auto
    - index: 5
      type: int32
    - index: 6
      type: string
    - index: 7
      type: uint64
"
    )
}

fn write_policy(dir: &std::path::Path, name: &str, text: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn tracepoint_of(e: &GetEventsResponse) -> Option<&ProcessTracepoint> {
    match &e.event {
        Some(Event::ProcessTracepoint(t)) => Some(t),
        _ => None,
    }
}

/// The pathname argument of an unlinkat hit.
fn path_arg(t: &ProcessTracepoint) -> Option<&str> {
    match t.args.get(2)?.arg.as_ref()? {
        Arg::StringArg(s) => Some(s),
        _ => None,
    }
}

fn request() -> GetEventsRequest {
    GetEventsRequest {
        allow_list: vec![Filter {
            event_set: vec![EventType::ProcessExec as i32, EventType::ProcessTracepoint as i32],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinkat_tracepoint_gives_one_event_per_marked_unlink_tied_to_its_exec() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-tp-{run}"));
    let name = format!("unlinkat-{run}");
    let file = write_policy(&dir, &name, &unlinkat_policy(&name));
    let sensor = Sensor::start(&["--tracing-policy", &file]).await;
    let mut c = Collector::subscribe(&sensor, request()).await;

    let markers: Vec<String> = (0..3).map(|i| dir.join(format!("marked-{i}")).display().to_string()).collect();
    for m in &markers {
        std::fs::write(m, b"x").unwrap();
    }
    // One shell, three `rm`s: each unlinks its marker once.
    let script = markers.iter().map(|m| format!("/bin/rm {m}")).collect::<Vec<_>>().join("; ");
    assert!(Command::new("/bin/sh").args(["-c", &script]).status().unwrap().success());

    let hit = |e: &GetEventsResponse, m: &str| tracepoint_of(e).and_then(path_arg) == Some(m);
    let all_seen = |events: &[GetEventsResponse]| markers.iter().all(|m| events.iter().any(|e| hit(e, m)));
    assert!(c.until(Duration::from_secs(20), all_seen).await, "missing unlinkat events; log:\n{}", sensor.log());

    for m in &markers {
        let hits: Vec<&ProcessTracepoint> = c.events.iter().filter(|e| hit(e, m)).filter_map(tracepoint_of).collect();
        assert_eq!(hits.len(), 1, "{m}: exactly one event");
        let t = hits[0];
        assert_eq!((t.subsys.as_str(), t.event.as_str()), ("syscalls", "sys_enter_unlinkat"));
        assert_eq!(t.policy_name, name);
        assert_eq!(t.action, KprobeAction::Post as i32);
        assert_eq!(t.message, "marked unlinkat");
        assert_eq!(t.tags, ["vigil.test", "files"]);
        let args: Vec<Option<Arg>> = t.args.iter().map(|a| a.arg.clone()).collect();
        assert_eq!(
            args,
            [
                Some(Arg::IntArg(libc::SYS_unlinkat as i32)),
                Some(Arg::IntArg(libc::AT_FDCWD)),
                Some(Arg::StringArg(m.clone())),
                Some(Arg::SizeArg(0)),
            ]
        );
        assert!(t.args.iter().all(|a| a.label.is_empty()), "tracepoint args carry no label");
        // The process is the `rm` whose exec carried this marker: the same
        // exec_id, pid and parent as its exec event.
        let process = t.process.as_ref().unwrap();
        let exec = c
            .events
            .iter()
            .filter_map(exec_of)
            .find(|p| p.binary == "/bin/rm" && p.arguments == *m)
            .unwrap_or_else(|| panic!("no exec of rm {m}"));
        assert_eq!(process.exec_id, exec.exec_id);
        assert_eq!(pid(process), pid(exec));
        assert_eq!(process.tid, process.pid, "a single-threaded rm");
        assert_eq!(process.binary, "/bin/rm");
        let exec_event = c.events.iter().find(|e| exec_of(e).is_some_and(|p| p.exec_id == exec.exec_id)).unwrap();
        assert_eq!(
            t.parent.as_ref().map(|p| &p.exec_id),
            parent_of(exec_event).map(|p| &p.exec_id),
            "the parent is the shell that ran rm"
        );
    }
    assert!(sensor.health_counter("policy_events").await.unwrap() >= 3);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sensor's own export line for a policy event has Tetragon's shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exported_line_has_tetragons_shape() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-tpj-{run}"));
    let name = format!("unlinkat-json-{run}");
    let file = write_policy(&dir, &name, &unlinkat_policy(&name));
    let sensor = Sensor::start(&["--tracing-policy", &file]).await;
    let marker = dir.join("marked-json").display().to_string();
    std::fs::write(&marker, b"x").unwrap();
    assert!(Command::new("/bin/rm").arg(&marker).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let line = loop {
        let text = std::fs::read_to_string(&sensor.export).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains("process_tracepoint") && l.contains(&marker)) {
            break l.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no exported line; log:\n{}", sensor.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let t = &v["process_tracepoint"];
    let mut keys: Vec<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["action", "args", "event", "message", "parent", "policy_name", "process", "subsys", "tags"]);
    // In Tetragon's order (its fields' declaration order).
    assert!(line.starts_with(r#"{"process_tracepoint":{"process":{"#), "{line}");
    let at = |key: &str| line.find(&format!(r#""{key}":"#)).unwrap();
    let order = ["parent", "subsys", "event", "args", "policy_name", "action", "message", "tags"].map(at);
    assert!(order.is_sorted(), "field order {order:?} in {line}");
    assert_eq!(
        t["args"],
        serde_json::json!([
            {"int_arg": libc::SYS_unlinkat},
            {"int_arg": -100},
            {"string_arg": marker},
            {"size_arg": "0"}
        ])
    );
    assert_eq!(t["action"], "KPROBE_ACTION_POST");
    assert_eq!(v["node_name"], "kt-node");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A policy that does not fit stops start-up with the field's path, and
/// nothing is served.
#[test]
fn a_bad_policy_at_start_is_refused_by_path() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-tpbad-{run}"));
    let cases = [
        (
            unlinkat_policy("missing").replace("sys_enter_unlinkat", "sys_enter_nosuchcall"),
            "spec.tracepoints[0].event: this kernel has no such tracepoint",
        ),
        (
            unlinkat_policy("pastfields").replace("index: 7", "index: 9"),
            "spec.tracepoints[0].args[3].index: the tracepoint has 8 fields (0..7)",
        ),
        (
            unlinkat_policy("selectors")
                + "    selectors:\n    - matchArgs:\n      - index: 6\n        operator: Prefix\n        values: [\"/tmp\"]\n",
            "spec.tracepoints[0].selectors: selectors (in-kernel filters and actions) are not supported by Vigil yet",
        ),
        (unlinkat_policy("typo").replace("type: string", "type: strin"), "spec.tracepoints[0].args[2].type"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = write_policy(&dir, &format!("case{i}"), text);
        let out = Command::new(env!("CARGO_BIN_EXE_vigil-sensor"))
            .args(["--server-address", &format!("unix://{}/s{i}.sock", dir.display()), "--tracing-policy", &file])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} started");
        assert!(stderr.contains(expected), "case {i}: expected {expected:?} in:\n{stderr}");
        assert!(stderr.contains(&file), "case {i}: names the file:\n{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
