//! Tracing policies on this machine's kernel: the real sensor loads a
//! TracingPolicy, its tracepoint program runs in the kernel, and marked
//! workloads give exactly the expected `process_tracepoint` events, tied
//! to the exec events of the processes that caused them.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Collector, Sensor, exec_of, nonce, parent_of, pid, tracepoint_of};
use proto::tetragon::get_events_response::Event;
use proto::tetragon::kprobe_argument::Arg;
use proto::tetragon::{
    AddTracingPolicyRequest, DeleteTracingPolicyRequest, DisableTracingPolicyRequest, EnableTracingPolicyRequest,
    EventType, Filter, GetEventsRequest, GetEventsResponse, KprobeAction, ListTracingPoliciesRequest,
    ListTracingPoliciesResponse, ProcessTracepoint, TracingPolicyState,
};

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
                + "    selectors:\n    - matchArgs:\n      - index: 5\n        operator: Prefix\n        values: [\"/tmp\"]\n",
            "spec.tracepoints[0].selectors[0].matchArgs[0].operator: a string operator, and the argument is an integer",
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

/// The sensor's attached BPF links (its lifecycle programs' and one per
/// hooked tracepoint).
fn bpf_links(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter(|target| target.as_os_str() == "anon_inode:bpf_link")
        .count()
}

/// Unlinks `path` with `rm`, then runs `/bin/true FENCE`: once the fence's
/// exec arrives, every record before it has been handled (the ring buffer
/// keeps order), so an unlink event that has not come by then never will.
async fn unlink_then_fence(c: &mut Collector, sensor: &Sensor, path: &str) {
    std::fs::write(path, b"x").unwrap();
    assert!(Command::new("/bin/rm").arg(path).status().unwrap().success());
    common::fence(c, sensor).await;
}

fn unlinks_of(c: &Collector, path: &str) -> usize {
    c.events.iter().filter(|e| tracepoint_of(e).and_then(path_arg) == Some(path)).count()
}

fn state_of(list: &ListTracingPoliciesResponse, name: &str) -> Option<(TracingPolicyState, String)> {
    list.policies
        .iter()
        .find(|p| p.name == name)
        .map(|p| (TracingPolicyState::try_from(p.state).unwrap(), p.error.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_disable_enable_delete_through_the_api_start_and_stop_events() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-tpapi-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, request()).await;
    let mut client = sensor.client().await;
    let links = bpf_links(sensor.pid());
    let name = format!("api-{run}");
    let list = || async {
        sensor.client().await.list_tracing_policies(ListTracingPoliciesRequest::default()).await.unwrap().into_inner()
    };
    assert!(list().await.policies.is_empty());

    client
        .add_tracing_policy(AddTracingPolicyRequest { yaml: unlinkat_policy(&name), ..Default::default() })
        .await
        .unwrap();
    let listed = list().await;
    assert_eq!(state_of(&listed, &name), Some((TracingPolicyState::TpStateEnabled, String::new())));
    assert_eq!(listed.policies[0].sensors, ["generic_tracepoint"]);
    assert!(listed.policies[0].kernel_memory_bytes > 0);
    assert_eq!(bpf_links(sensor.pid()), links + 1, "one attach for the policy's tracepoint");
    let phase = |n: u32| dir.join(format!("marked-phase-{n}")).display().to_string();
    unlink_then_fence(&mut c, &sensor, &phase(1)).await;
    assert_eq!(unlinks_of(&c, &phase(1)), 1, "enabled: seen");

    let by_name = || DisableTracingPolicyRequest { name: name.clone(), ..Default::default() };
    client.disable_tracing_policy(by_name()).await.unwrap();
    assert_eq!(state_of(&list().await, &name).map(|s| s.0), Some(TracingPolicyState::TpStateDisabled));
    assert_eq!(bpf_links(sensor.pid()), links, "disabled: detached");
    unlink_then_fence(&mut c, &sensor, &phase(2)).await;
    assert_eq!(unlinks_of(&c, &phase(2)), 0, "disabled: not seen");

    client
        .enable_tracing_policy(EnableTracingPolicyRequest { name: name.clone(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(state_of(&list().await, &name).map(|s| s.0), Some(TracingPolicyState::TpStateEnabled));
    unlink_then_fence(&mut c, &sensor, &phase(3)).await;
    assert_eq!(unlinks_of(&c, &phase(3)), 1, "enabled again: seen");
    let posted = list().await.policies[0].stats.clone().unwrap().action_counters.unwrap().post;
    assert!(posted >= 2, "the policy's event count ({posted}) covers both phases it saw");

    let delete = || DeleteTracingPolicyRequest { name: name.clone(), ..Default::default() };
    client.delete_tracing_policy(delete()).await.unwrap();
    assert!(list().await.policies.is_empty());
    assert_eq!(bpf_links(sensor.pid()), links, "deleted: detached");
    unlink_then_fence(&mut c, &sensor, &phase(4)).await;
    assert_eq!(unlinks_of(&c, &phase(4)), 0, "deleted: not seen");

    // Bad requests: codes and paths, and nothing changes.
    let e = client.delete_tracing_policy(delete()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let bad = unlinkat_policy("bad").replace("index: 6", "index: 12");
    let e = client.add_tracing_policy(AddTracingPolicyRequest { yaml: bad, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("spec.tracepoints[0].args[2].index: the tracepoint has 8 fields"), "{e:?}");
    let e = client
        .add_tracing_policy(AddTracingPolicyRequest { yaml: "kind: [".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let twice = format!("twice-{run}");
    client
        .add_tracing_policy(AddTracingPolicyRequest { yaml: unlinkat_policy(&twice), ..Default::default() })
        .await
        .unwrap();
    let e = client
        .add_tracing_policy(AddTracingPolicyRequest { yaml: unlinkat_policy(&twice), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert_eq!(list().await.policies.len(), 1);
    assert_eq!(bpf_links(sensor.pid()), links + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A policy the kernel side refuses part-way (a seventeenth hook on one
/// tracepoint) leaves nothing attached, is listed with the reason, and
/// another policy on the same tracepoint still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_fails_part_way_leaves_nothing_attached() {
    require_kernel!();
    let run = nonce();
    let sensor = Sensor::start(&[]).await;
    let mut client = sensor.client().await;
    let links = bpf_links(sensor.pid());
    let name = format!("seventeen-{run}");
    let hook =
        "  - subsystem: syscalls\n    event: sys_enter_unlinkat\n    args:\n    - index: 6\n      type: string\n";
    let yaml = format!(
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n  tracepoints:\n{}",
        hook.repeat(17)
    );
    let e = client.add_tracing_policy(AddTracingPolicyRequest { yaml, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("already serves 16 policy hooks"), "{e:?}");
    assert_eq!(bpf_links(sensor.pid()), links, "the sixteen hooks that went in came out");
    let listed = client.list_tracing_policies(ListTracingPoliciesRequest::default()).await.unwrap().into_inner();
    let (state, error) = state_of(&listed, &name).unwrap();
    assert_eq!(state, TracingPolicyState::TpStateLoadError);
    assert!(error.contains("already serves 16 policy hooks"), "{error}");
    assert_eq!(listed.policies[0].kernel_memory_bytes, 0);

    // The same tracepoint serves a new policy: nothing of the failed one
    // holds its places.
    let mut c = Collector::subscribe(&sensor, request()).await;
    let ok = format!("after-{run}");
    client
        .add_tracing_policy(AddTracingPolicyRequest { yaml: unlinkat_policy(&ok), ..Default::default() })
        .await
        .unwrap();
    let path = std::env::temp_dir().join(format!("vigil-tp-after-{run}")).display().to_string();
    unlink_then_fence(&mut c, &sensor, &path).await;
    let hits: Vec<&ProcessTracepoint> =
        c.events.iter().filter_map(tracepoint_of).filter(|t| path_arg(t) == Some(path.as_str())).collect();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].policy_name, ok, "no event from the failed policy's hooks");
    client.delete_tracing_policy(DeleteTracingPolicyRequest { name, ..Default::default() }).await.unwrap();
}

/// `vigil tracingpolicy …` against the sensor, as a user runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_lists_disables_and_deletes() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-tpcli-{run}"));
    let name = format!("cli-{run}");
    let file = write_policy(&dir, &name, &unlinkat_policy(&name));
    let sensor = Sensor::start(&[]).await;
    let vigil = test_support::workspace_bin(env!("CARGO_BIN_EXE_vigil-sensor"), "vigil");
    let address = format!(
        "unix://{}",
        match &sensor.address {
            serving::address::ServerAddress::Unix(p) => p.display().to_string(),
            other => panic!("{other}"),
        }
    );
    let cli = |args: &[&str]| {
        let out =
            Command::new(&vigil).args(["--server-address", &address, "tracingpolicy"]).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["add", &file]);
    assert!(ok, "{out}{err}");
    assert_eq!(out, format!("tracing policy {name:?} added\n"));
    let (ok, out, _) = cli(&["list"]);
    assert!(ok);
    let row = out.lines().find(|l| l.contains(&name)).unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..5], [name.as_str(), "enabled", "(global)", "generic_tracepoint"], "{row}");
    assert_eq!(cells[7], "monitor_only", "no enforcement action: {row}");
    // Nothing to enforce: refused, the mode unchanged.
    let (ok, _, err) = cli(&["set-mode", &name, "enforce"]);
    assert!(!ok);
    assert!(err.contains("FailedPrecondition") && err.contains("has no enforcement action"), "{err}");
    let (ok, out, err) = cli(&["set-mode", &name, "monitor"]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("tracing policy {name:?} set to TP_MODE_MONITOR\n"));
    let (ok, _, err) = cli(&["disable", &name]);
    assert!(ok, "{err}");
    let (_, out, _) = cli(&["list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["policies"][0]["state"], "TP_STATE_DISABLED", "{out}");
    let (ok, _, err) = cli(&["delete", &name]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["delete", &name]);
    assert!(!ok);
    assert!(err.contains("NotFound") && err.contains(&format!("no policy named {name} is loaded")), "{err}");
    // A bad file is named by path before anything is sent.
    let bad = write_policy(&dir, "bad", &unlinkat_policy("bad").replace("type: int32", "type: int33"));
    let (ok, _, err) = cli(&["add", &bad]);
    assert!(!ok);
    assert!(err.contains("spec.tracepoints[0].args[1].type"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn uprobe_policy(name: &str, path: &str) -> String {
    format!(
        "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  uprobes:
  - path: {path}
    symbols: [vigil_marked_call]
    message: marked call
    tags: [vigil.test]
    args:
    - index: 0
      type: int
      label: n
    - index: 1
      type: string
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uprobe_on_a_built_binary_gives_each_call_with_its_arguments() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-up-{run}"));
    let target = common::build_uprobe_target(&dir);
    let name = format!("uprobe-{run}");
    let file = write_policy(&dir, &name, &uprobe_policy(&name, &target));
    let sensor = Sensor::start(&["--tracing-policy", &file, "--metrics-address", "127.0.0.1:0"]).await;
    let mut request = request();
    request.allow_list[0].event_set.push(EventType::ProcessUprobe as i32);
    let mut c = Collector::subscribe(&sensor, request).await;
    let marker = format!("marked-{run}");
    assert!(Command::new(&target).arg(&marker).status().unwrap().success());

    let uprobe_of = |e: &GetEventsResponse| match &e.event {
        Some(Event::ProcessUprobe(u))
            if u.args.get(1).and_then(|a| a.arg.as_ref()) == Some(&Arg::StringArg(marker.clone())) =>
        {
            Some(u.clone())
        }
        _ => None,
    };
    let three = |events: &[GetEventsResponse]| events.iter().filter_map(uprobe_of).count() >= 3;
    assert!(c.until(Duration::from_secs(20), three).await, "missing uprobe events; log:\n{}", sensor.log());
    unlink_then_fence(&mut c, &sensor, &dir.join("fence").display().to_string()).await;
    let hits: Vec<_> = c.events.iter().filter_map(uprobe_of).collect();
    assert_eq!(hits.len(), 3, "one event per call");
    let exec = c
        .events
        .iter()
        .filter_map(exec_of)
        .find(|p| p.binary == target && p.arguments == marker)
        .unwrap_or_else(|| panic!("no exec of the target"));
    for (n, u) in (-1..=1).zip(&hits) {
        assert_eq!((u.path.as_str(), u.symbol.as_str(), u.offset), (target.as_str(), "vigil_marked_call", 0));
        assert_eq!(u.policy_name, name);
        assert_eq!(u.action, KprobeAction::Post as i32);
        assert_eq!((u.message.as_str(), u.tags.as_slice()), ("marked call", &["vigil.test".to_owned()][..]));
        let args: Vec<(Option<Arg>, &str)> = u.args.iter().map(|a| (a.arg.clone(), a.label.as_str())).collect();
        assert_eq!(args, [(Some(Arg::IntArg(n)), "n"), (Some(Arg::StringArg(marker.clone())), "")]);
        let process = u.process.as_ref().unwrap();
        assert_eq!(process.exec_id, exec.exec_id, "the call's process is the target's exec");
        assert_eq!(u.parent.as_ref().map(|p| &p.exec_id), Some(&exec.parent_exec_id));
    }
    // The policy's metric counted each call once, by policy and hook.
    let (_, metrics) = test_support::scrape::http(&common::metrics_address(&sensor), "GET", "/metrics");
    let hook = format!("uprobe:{target}:vigil_marked_call");
    let labels = [("policy", name.as_str()), ("hook", hook.as_str())];
    assert_eq!(test_support::scrape::sample(&metrics, "tetragon_policy_events_total", &labels), 3, "{metrics}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A uprobe on a symbol the binary lacks, or on a binary that is not
/// there, is refused by path and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uprobe_on_what_is_not_there_is_refused_by_path() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-upbad-{run}"));
    let target = common::build_uprobe_target(&dir);
    let sensor = Sensor::start(&[]).await;
    let mut client = sensor.client().await;
    let links = bpf_links(sensor.pid());
    let two_symbols = uprobe_policy("nosym", &target).replace("[vigil_marked_call]", "[vigil_marked_call, no_such_fn]");
    let e = client
        .add_tracing_policy(AddTracingPolicyRequest { yaml: two_symbols, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert_eq!(e.message(), "spec.uprobes[0].symbols[1]: the binary has no such function symbol");
    let missing = uprobe_policy("nofile", &format!("{}/absent", dir.display()));
    let e =
        client.add_tracing_policy(AddTracingPolicyRequest { yaml: missing, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("spec.uprobes[0].path: "), "{e:?}");
    let listed = client.list_tracing_policies(ListTracingPoliciesRequest::default()).await.unwrap().into_inner();
    assert!(listed.policies.is_empty(), "refused policies are not kept");
    assert_eq!(bpf_links(sensor.pid()), links, "the first symbol's attach was undone");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The seed's policy: a kprobe on `security_bprm_creds_from_file`.
fn seed_policy(name: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compat/fixtures/tetragon-vm-policies");
    std::fs::read_to_string(dir.join("a-exec-elf-begin.yaml")).unwrap().replace("process-exec-elf-begin", name)
}

/// Kprobe policies are checked against this kernel's BTF (so bad input is
/// refused by path here too); this kernel has no kprobes, so a good one
/// fails naming that, is listed with the reason, and nothing else changes.
/// (Kprobes that fire are tested in the 6.1 VM: kernel_matrix.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kprobe_policies_are_checked_against_btf_and_fail_clearly_without_kprobes() {
    require_kernel!();
    let run = nonce();
    let sensor = Sensor::start(&[]).await;
    let mut client = sensor.client().await;
    let links = bpf_links(sensor.pid());
    let add = |yaml: String| AddTracingPolicyRequest { yaml, ..Default::default() };
    let bad = [
        (
            seed_policy("nofn").replace("security_bprm_creds_from_file", "security_no_such_function"),
            "spec.kprobes[0].call: the kernel's BTF has no such function",
        ),
        (
            seed_policy("pastparams").replace("index: 1", "index: 3"),
            "spec.kprobes[0].args[1].index: the function has 2 parameters (0..1)",
        ),
        (
            seed_policy("misfit").replace("type: \"file\"", "type: \"int\""),
            "spec.kprobes[0].args[1].type: a number needs an integer parameter; parameter file is const struct file *",
        ),
        (
            seed_policy("notafile").replace("type: \"nop\"", "type: \"file\""),
            "spec.kprobes[0].args[0].type: file needs a struct file pointer; parameter bprm is struct linux_binprm *",
        ),
        // This kernel cannot override a return (no error injection): the
        // policy asks what it cannot do, refused by the action's path.
        (
            seed_policy("override")
                + "    selectors:\n    - matchActions:\n      - action: Override\n        argError: -1\n",
            "spec.kprobes[0].selectors[0].matchActions[0]: this kernel cannot make a function return early \
             (bpf_override_return needs CONFIG_BPF_KPROBE_OVERRIDE): the kernel verifier rejected it: Invalid \
             argument (os error 22) (the sensor's debug log has the verifier's)",
        ),
    ];
    for (yaml, expected) in bad {
        let e = client.add_tracing_policy(add(yaml)).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::InvalidArgument, expected));
    }
    let name = format!("seed-{run}");
    let e = client.add_tracing_policy(add(seed_policy(&name))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("this kernel has no kprobes"), "{e:?}");
    let listed = client.list_tracing_policies(ListTracingPoliciesRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.policies.len(), 1, "only the good policy is listed");
    let (state, error) = state_of(&listed, &name).unwrap();
    assert_eq!(state, TracingPolicyState::TpStateLoadError);
    assert!(error.contains("CONFIG_KPROBES is off"), "{error}");
    assert_eq!(listed.policies[0].sensors, ["generic_kprobe"]);
    assert_eq!(bpf_links(sensor.pid()), links, "nothing attached");
    // The sensor goes on: exec events flow, and a tracepoint policy loads.
    let mut c = Collector::subscribe(&sensor, request()).await;
    client.add_tracing_policy(add(unlinkat_policy(&format!("still-{run}")))).await.unwrap();
    unlink_then_fence(&mut c, &sensor, &std::env::temp_dir().join(format!("vigil-kp-{run}")).display().to_string())
        .await;
    client.delete_tracing_policy(DeleteTracingPolicyRequest { name, ..Default::default() }).await.unwrap();
}

/// `syscalls/sys_enter_write` twice: fd resolved to its file (the program
/// with the path reader, an attach of its own) and fd as a plain number
/// (the shared program), each with the byte count.
fn write_fd_policy(name: &str) -> String {
    format!(
        "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_write
    message: write by file
    args:
    - index: 5
      type: fd
    - index: 7
      type: size_t
  - subsystem: syscalls
    event: sys_enter_write
    message: write by number
    args:
    - index: 5
      type: int32
    - index: 7
      type: size_t
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fd_argument_is_the_path_of_the_file_the_descriptor_names() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-fd-{run}"));
    let name = format!("write-fd-{run}");
    let file = write_policy(&dir, &name, &write_fd_policy(&name));
    let sensor = Sensor::start(&["--tracing-policy", &file]).await;
    // Only this run's processes: the policy sees every write on the
    // machine, which on a busy one would crowd this client's queue.
    let mut only_run = request();
    only_run.allow_list[0].arguments_regex = vec![run.clone()];
    let mut c = Collector::subscribe(&sensor, only_run).await;

    // Each shell points its standard output at its marker and writes its
    // own content (one write of a known length) through descriptor 1.
    let markers: Vec<(String, String)> = (0..3)
        .map(|i| (dir.join(format!("marked-{i}")).display().to_string(), format!("content-{run}-{}", "x".repeat(i))))
        .collect();
    for (path, content) in &markers {
        let script = format!("exec >{path}; printf %s {content}");
        assert!(Command::new("/bin/sh").args(["-c", &script]).status().unwrap().success());
        assert_eq!(std::fs::read_to_string(path).unwrap(), *content);
    }
    let fence = format!("fence-{run}");
    assert!(Command::new("/bin/true").arg(&fence).status().unwrap().success());
    let fenced = |events: &[GetEventsResponse]| events.iter().filter_map(exec_of).any(|p| p.arguments == fence);
    assert!(c.until(Duration::from_secs(20), fenced).await, "the fence exec never came; log:\n{}", sensor.log());

    let by_file = |t: &ProcessTracepoint, path: &str| {
        t.message == "write by file"
            && matches!(t.args.first().and_then(|a| a.arg.as_ref()), Some(Arg::FileArg(f)) if f.path == path)
    };
    for (path, content) in &markers {
        let hits: Vec<&ProcessTracepoint> =
            c.events.iter().filter_map(tracepoint_of).filter(|t| by_file(t, path)).collect();
        assert_eq!(hits.len(), 1, "{path}: one write through its descriptor; log:\n{}", sensor.log());
        let t = hits[0];
        let Some(Arg::FileArg(f)) = t.args[0].arg.as_ref() else { unreachable!() };
        assert_eq!(f.permission, "-rw-r--r--");
        assert_eq!(t.args[1].arg, Some(Arg::SizeArg(content.len() as u64)));
        assert_eq!(t.policy_name, name);
        // The writer is the shell whose exec carried the script.
        let process = t.process.as_ref().unwrap();
        let exec = c
            .events
            .iter()
            .filter_map(exec_of)
            .find(|p| p.binary == "/bin/sh" && p.arguments.contains(path.as_str()))
            .unwrap_or_else(|| panic!("no exec of the shell for {path}"));
        assert_eq!(process.exec_id, exec.exec_id);
        // The same write through the plain hook: descriptor 1, same count.
        let plain: Vec<&ProcessTracepoint> = c
            .events
            .iter()
            .filter_map(tracepoint_of)
            .filter(|p| p.message == "write by number")
            .filter(|p| p.process.as_ref().map(|x| &x.exec_id) == Some(&exec.exec_id))
            .filter(|p| p.args.first().and_then(|a| a.arg.clone()) == Some(Arg::IntArg(1)))
            .collect();
        assert_eq!(plain.len(), 1, "{path}: the plain hook saw the same write once");
        assert_eq!(plain[0].args[1].arg, Some(Arg::SizeArg(content.len() as u64)));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
