//! Selectors in the kernel, on this machine's kernel: policies on
//! `syscalls/sys_enter_unlinkat` whose selectors filter on the path, the
//! flags, the directory descriptor, the pid and the binary, each operator
//! and its negation, and act (Sigkill, NoPost, monitor mode). Each policy
//! must see exactly the marked unlinks its selector passes, no more.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{Collector, Sensor, exit_of, fence, nonce, tracepoint_of};
use proto::tetragon::get_events_response::Event;
use proto::tetragon::kprobe_argument::Arg;
use proto::tetragon::{
    AddTracingPolicyRequest, ConfigureTracingPolicyRequest, DeleteTracingPolicyRequest, EventType, Filter,
    GetEventsRequest, GetEventsResponse, KprobeAction, ListTracingPoliciesRequest, ProcessTracepoint,
    TracingPolicyMode, TracingPolicyStatus,
};

/// A policy on `sys_enter_unlinkat` (fields 5 dfd, 6 pathname, 7 flag)
/// with `selectors` (YAML, indented as a list under `selectors:`).
fn policy(name: &str, selectors: &str) -> String {
    format!(
        "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_unlinkat
    args:
    - index: 5
      type: int32
    - index: 6
      type: string
    - index: 7
      type: int32
    selectors:
{selectors}"
    )
}

/// A selector of `matchArgs` entries `(index, operator, values)`, the
/// first always confining it to `dir` (so the machine's other unlinks
/// stay out), then `more` (other filters and actions, YAML).
fn selector(dir: &str, args: &[ArgCase<'_>], more: &str) -> String {
    let mut s = format!("    - matchArgs:\n      - index: 6\n        operator: Prefix\n        values: [\"{dir}/\"]\n");
    for (index, operator, values) in args {
        let values: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
        s +=
            &format!("      - index: {index}\n        operator: {operator}\n        values: [{}]\n", values.join(", "));
    }
    s + more
}

/// A `matchArgs` entry: index, operator, values.
type ArgCase<'a> = (u32, &'a str, &'a [&'a str]);

fn request() -> GetEventsRequest {
    GetEventsRequest {
        allow_list: vec![Filter {
            event_set: vec![
                EventType::ProcessExec as i32,
                EventType::ProcessExit as i32,
                EventType::ProcessTracepoint as i32,
            ],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn path_arg(t: &ProcessTracepoint) -> Option<&str> {
    match t.args.get(1)?.arg.as_ref()? {
        Arg::StringArg(s) => Some(s),
        _ => None,
    }
}

/// Per policy, the marked paths its events name, with their counts.
fn seen(c: &Collector, dir: &str) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut out: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for t in c.events.iter().filter_map(tracepoint_of) {
        if let Some(path) = path_arg(t).and_then(|p| p.strip_prefix(&format!("{dir}/"))) {
            *out.entry(t.policy_name.clone()).or_default().entry(path.to_owned()).or_default() += 1;
        }
    }
    out
}

/// A policy case: its name (before the run's nonce), the selector's
/// filters after the directory prefix (YAML), and the marked files it must
/// see, once each.
type Case<'a> = (&'a str, String, Vec<&'a str>);

/// Adds one policy per case, each confined to `dir`.
async fn add_cases(sensor: &Sensor, run: &str, dir: &str, cases: &[Case<'_>]) {
    for (name, more, _) in cases {
        add(sensor, policy(&format!("{name}-{run}"), &selector(dir, &[], more))).await;
    }
}

/// Each case's policy saw exactly its marked files, once each.
fn assert_cases_saw(c: &Collector, run: &str, dir: &str, cases: &[Case<'_>]) {
    let seen = seen(c, dir);
    for (name, _, want) in cases {
        let want: BTreeMap<String, usize> = want.iter().map(|w| (w.to_string(), 1)).collect();
        let got = seen.get(&format!("{name}-{run}")).cloned().unwrap_or_default();
        assert_eq!(got, want, "policy {name}: the marked unlinks it saw (all: {seen:?})");
    }
}

async fn add(sensor: &Sensor, yaml: String) {
    sensor.client().await.add_tracing_policy(AddTracingPolicyRequest { yaml, ..Default::default() }).await.unwrap();
}

/// Each selector's (index, post, nopost, signal) counts.
fn per_selector(status: &TracingPolicyStatus) -> Vec<(Option<u32>, u64, u64, u64)> {
    let stats = status.stats.as_ref().unwrap();
    stats
        .selector_action_counters
        .iter()
        .map(|s| {
            let c = s.action_counters.as_ref().unwrap();
            (s.selector_index.as_ref().map(|i| i.value), c.post, c.nopost, c.signal)
        })
        .collect()
}

async fn listed(sensor: &Sensor, name: &str) -> TracingPolicyStatus {
    let list = sensor.client().await.list_tracing_policies(ListTracingPoliciesRequest::default()).await.unwrap();
    list.into_inner().policies.into_iter().find(|p| p.name == name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operator_and_its_negation_passes_exactly_its_marked_unlinks() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-sel-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let sensor = Sensor::start(&[]).await;

    // Four files and a directory: `rm` unlinks files with flag 0, `rm -d`
    // a directory with AT_REMOVEDIR (0x200); the descriptor is AT_FDCWD.
    let files = ["a-keep.log", "a-drop.txt", "b-keep.log", "b-drop.txt"];
    let all = ["a-keep.log", "a-drop.txt", "b-keep.log", "b-drop.txt", "c-dir"];
    let b_keep = format!("{d}/b-keep.log");
    let a_prefix = format!("{d}/a-");
    let (b_keep, a_prefix) = ([b_keep.as_str()], [a_prefix.as_str()]);
    let cases: Vec<(&str, Vec<ArgCase<'_>>, Vec<&str>)> = vec![
        ("prefix", vec![(6, "Prefix", &a_prefix)], vec!["a-keep.log", "a-drop.txt"]),
        ("notprefix", vec![(6, "NotPrefix", &a_prefix)], vec!["b-keep.log", "b-drop.txt", "c-dir"]),
        ("postfix", vec![(6, "Postfix", &[".log", ".nothing"])], vec!["a-keep.log", "b-keep.log"]),
        ("notpostfix", vec![(6, "NotPostfix", &[".log"])], vec!["a-drop.txt", "b-drop.txt", "c-dir"]),
        ("equal", vec![(6, "Equal", &b_keep)], vec!["b-keep.log"]),
        ("notequal", vec![(6, "NotEqual", &b_keep)], vec!["a-keep.log", "a-drop.txt", "b-drop.txt", "c-dir"]),
        ("flag-equal", vec![(7, "Equal", &["0x200"])], vec!["c-dir"]),
        ("flag-notequal", vec![(7, "NotEqual", &["512"])], files.to_vec()),
        ("flag-mask", vec![(7, "Mask", &["0x100", "0x200"])], vec!["c-dir"]),
        ("flag-gt", vec![(7, "GT", &["0"])], vec!["c-dir"]),
        ("flag-lt", vec![(7, "LT", &["1"])], files.to_vec()),
        ("flag-inrange", vec![(7, "InRange", &["1:1000"])], vec!["c-dir"]),
        ("flag-notinrange", vec![(7, "NotInRange", &["1:1000", "2000:3000"])], files.to_vec()),
        // AT_FDCWD is -100: signed comparisons see it below zero.
        ("dfd-lt", vec![(5, "LT", &["0"])], all.to_vec()),
        ("dfd-equal", vec![(5, "Equal", &["-100"])], all.to_vec()),
        ("dfd-gt", vec![(5, "GT", &["-101"])], all.to_vec()),
        // Two filters on one selector: both must pass.
        ("and", vec![(6, "Prefix", &a_prefix), (6, "Postfix", &[".txt"])], vec!["a-drop.txt"]),
    ];
    // Two selectors: either passes (the first that does acts).
    let two = format!(
        "{}{}",
        selector(&d, &[(6, "Postfix", &["keep.log"])], ""),
        selector(&d, &[(7, "Equal", &["512"])], "")
    );
    // In two rounds: a tracepoint serves at most 16 hooks.
    let (round_1, round_2) = cases.split_at(8);
    for (round, cases) in [(1, round_1), (2, round_2)] {
        for (name, args, _) in cases {
            add(&sensor, policy(&format!("{name}-{run}"), &selector(&d, args, ""))).await;
        }
        if round == 2 {
            add(&sensor, policy(&format!("either-{run}"), &two)).await;
        }
        let mut c = Collector::subscribe(&sensor, request()).await;
        for f in files {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        std::fs::create_dir(dir.join("c-dir")).unwrap();
        let script = files.iter().map(|f| format!("/bin/rm {d}/{f}")).collect::<Vec<_>>().join("; ");
        let script = format!("{script}; /bin/rm -d {d}/c-dir");
        assert!(Command::new("/bin/sh").args(["-c", &script]).status().unwrap().success());
        fence(&mut c, &sensor).await;

        let seen = seen(&c, &d);
        let mut expected: Vec<(String, Vec<&str>)> =
            cases.iter().map(|(name, _, want)| (format!("{name}-{run}"), want.clone())).collect();
        if round == 2 {
            expected.push((format!("either-{run}"), vec!["a-keep.log", "b-keep.log", "c-dir"]));
        }
        for (name, want) in &expected {
            let want: BTreeMap<String, usize> = want.iter().map(|w| (w.to_string(), 1)).collect();
            let got = seen.get(name).cloned().unwrap_or_default();
            assert_eq!(got, want, "policy {name}: the marked unlinks it saw (all: {seen:?})");
        }
        assert_eq!(seen.len(), expected.len(), "no other policy saw these unlinks: {seen:?}");
        // Every hook record reached the selector program; every exec's
        // binary was kept.
        for counter in ["select_failed", "binaries_full"] {
            assert_eq!(sensor.health_counter(counter).await, Some(0), "{counter}");
        }
        if round == 1 {
            // What the kernel dropped cost no event; what passed is counted.
            let status = listed(&sensor, &format!("equal-{run}")).await;
            let stats = status.stats.unwrap();
            let per_selector = &stats.selector_action_counters;
            assert_eq!(per_selector.len(), 1);
            assert_eq!(per_selector[0].hook, "tracepoint:syscalls/sys_enter_unlinkat");
            assert_eq!(per_selector[0].action_counters.as_ref().unwrap().post, 1);
            assert_eq!(status.mode, TracingPolicyMode::TpModeMonitorOnly as i32, "no enforcement action");
            // Its hook spec, selector set, one string value and per-CPU
            // counters, in bytes.
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
            assert!(status.kernel_memory_bytes >= 8_000 + 260 + cpus * 512, "{}", status.kernel_memory_bytes);
            for (name, ..) in cases {
                let request = DeleteTracingPolicyRequest { name: format!("{name}-{run}"), ..Default::default() };
                sensor.client().await.delete_tracing_policy(request).await.unwrap();
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_and_pids_select_who_unlinks_including_processes_older_than_the_sensor() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-selbin-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let me = std::process::id().to_string();
    // This test's own binary: a process the sensor only knows from /proc.
    let own = std::fs::read_link("/proc/self/exe").unwrap().display().to_string();
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, request()).await;
    // A copy of rm elsewhere: another binary that unlinks with unlinkat.
    let tools = dir.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let copy = tools.join("rm2");
    test_support::copy_executable("/bin/rm", &copy);
    let tools_prefix = format!("{}/", tools.display());

    let binaries = |op: &str, values: &[&str]| {
        let values: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
        format!("      matchBinaries:\n      - operator: {op}\n        values: [{}]\n", values.join(", "))
    };
    let pids = |op: &str| format!("      matchPIDs:\n      - operator: {op}\n        values: [{me}]\n");
    let cases: Vec<Case<'_>> = vec![
        ("bin-in", binaries("In", &["/bin/rm"]), vec!["by-rm"]),
        ("bin-notin", binaries("NotIn", &["/bin/rm"]), vec!["by-copy", "by-test"]),
        ("bin-prefix", binaries("Prefix", &[tools_prefix.as_str()]), vec!["by-copy"]),
        ("bin-notprefix", binaries("NotPrefix", &["/bin/"]), vec!["by-copy", "by-test"]),
        ("bin-postfix", binaries("Postfix", &["/rm2"]), vec!["by-copy"]),
        ("bin-notpostfix", binaries("NotPostfix", &["/rm2", "/rm"]), vec!["by-test"]),
        ("bin-own", binaries("In", &[own.as_str()]), vec!["by-test"]),
        ("pid-in", pids("In"), vec!["by-test"]),
        ("pid-notin", pids("NotIn"), vec!["by-rm", "by-copy"]),
    ];
    add_cases(&sensor, &run, &d, &cases).await;
    for f in ["by-rm", "by-copy", "by-test"] {
        std::fs::write(dir.join(f), b"x").unwrap();
    }
    assert!(Command::new("/bin/rm").arg(dir.join("by-rm")).status().unwrap().success());
    assert!(Command::new(&copy).arg(dir.join("by-copy")).status().unwrap().success());
    // This process itself, with unlinkat (std's remove_file uses unlink).
    let path = std::ffi::CString::new(dir.join("by-test").display().to_string()).unwrap();
    // SAFETY: a valid C string; AT_FDCWD and no flags.
    assert_eq!(unsafe { libc::unlinkat(libc::AT_FDCWD, path.as_ptr(), 0) }, 0);
    fence(&mut c, &sensor).await;

    assert_cases_saw(&c, &run, &d, &cases);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The exit of the process that ran `marker` (its arguments), once seen.
async fn exit_signal(c: &mut Collector, marker: &str) -> String {
    let exited = |events: &[GetEventsResponse]| events.iter().filter_map(exit_of).any(|(p, ..)| p.arguments == marker);
    assert!(c.until(Duration::from_secs(30), exited).await, "no exit of {marker}");
    let (_, _, signal) = c.events.iter().filter_map(exit_of).find(|(p, ..)| p.arguments == marker).unwrap();
    signal.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_stops_the_process_at_the_marked_unlink_and_monitor_mode_only_counts_it() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-selkill-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, request()).await;
    let name = format!("kill-{run}");
    let kill = selector(&d, &[(6, "Postfix", &["-doomed"])], "      matchActions:\n      - action: Sigkill\n");
    // Starts in monitor mode, from its option.
    let yaml = policy(&name, &kill)
        .replace("  tracepoints:", "  options:\n  - name: policy-mode\n    value: monitor\n  tracepoints:");
    add(&sensor, yaml).await;
    assert_eq!(listed(&sensor, &name).await.mode, TracingPolicyMode::TpModeMonitor as i32);

    // One rm of the marked file and then another: the second is removed
    // only if rm went on after the first.
    let attempt = |n: u32| {
        let (doomed, other) = (dir.join(format!("{n}-doomed")), dir.join(format!("{n}-other")));
        std::fs::write(&doomed, b"x").unwrap();
        std::fs::write(&other, b"x").unwrap();
        let status = Command::new("/bin/rm").arg(&doomed).arg(&other).status().unwrap();
        (status, doomed.exists(), other.exists())
    };
    let (status, doomed_left, other_left) = attempt(1);
    assert!(status.success() && !doomed_left && !other_left, "monitor mode: nothing is killed");
    fence(&mut c, &sensor).await;
    let hits = |c: &Collector| -> Vec<ProcessTracepoint> {
        c.events.iter().filter_map(tracepoint_of).filter(|t| t.policy_name == name).cloned().collect()
    };
    assert_eq!(hits(&c).len(), 1, "monitor mode: the event is sent");
    assert_eq!(hits(&c)[0].action, KprobeAction::Post as i32, "monitor mode: nothing was enforced");
    let counters = listed(&sensor, &name).await.stats.unwrap().action_counters.unwrap();
    assert_eq!((counters.monitor_signal, counters.signal), (1, 0));

    // Enforce: rm is killed with SIGKILL at the marked unlink, and never
    // reaches the other file.
    sensor
        .client()
        .await
        .configure_tracing_policy(ConfigureTracingPolicyRequest {
            name: name.clone(),
            mode: Some(TracingPolicyMode::TpModeEnforce as i32),
            ..Default::default()
        })
        .await
        .unwrap();
    let (status, doomed_left, other_left) = attempt(2);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "rm died of SIGKILL");
    assert!(other_left, "rm stopped at the marked unlink");
    let marker = format!("{d}/2-doomed {d}/2-other");
    assert_eq!(exit_signal(&mut c, &marker).await, "SIGKILL", "the exit event says SIGKILL");
    fence(&mut c, &sensor).await;
    let hits = hits(&c);
    assert_eq!(hits.len(), 2);
    assert_eq!(path_arg(&hits[1]), Some(format!("{d}/2-doomed").as_str()));
    assert_eq!(hits[1].action, KprobeAction::Sigkill as i32);
    let status = listed(&sensor, &name).await;
    assert_eq!(status.mode, TracingPolicyMode::TpModeEnforce as i32);
    let counters = status.stats.unwrap().action_counters.unwrap();
    assert_eq!((counters.monitor_signal, counters.signal), (1, 1));
    // The kill lands when the syscall returns: at sys_enter the unlink
    // itself still completes (as Tetragon documents for signals; stopping
    // the call itself takes Override, on a kprobe).
    assert!(!doomed_left, "the marked unlink itself completed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A uprobe policy on `vigil_marked_call(n, text)` of the built target
/// (tests/data/uprobe_target.rs: n = -1, 0, 1) with `selectors`.
fn uprobe_policy(name: &str, target: &str, selectors: &str) -> String {
    format!(
        "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: {name}
spec:
  uprobes:
  - path: {target}
    symbols: [vigil_marked_call]
    args:
    - index: 0
      type: int
    - index: 1
      type: string
    selectors:
{selectors}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uprobe_selectors_filter_on_registers_and_a_signal_ends_the_process() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-selup-{run}"));
    let target = common::build_uprobe_target(&dir);
    let sensor = Sensor::start(&[]).await;
    let mut request = request();
    request.allow_list[0].event_set.push(EventType::ProcessUprobe as i32);
    let mut c = Collector::subscribe(&sensor, request).await;
    let marker = format!("marked-{run}");
    // The call with n = -1 is not posted; the others, with this run's
    // marker, are.
    let (quiet, signal) = (format!("quiet-{run}"), format!("signal-{run}"));
    let quiet_selectors = format!(
        "    - matchArgs:
      - index: 0
        operator: Equal
        values: [\"-1\"]
      - index: 1
        operator: Equal
        values: [\"{marker}\"]
      matchActions:
      - action: NoPost
    - matchArgs:
      - index: 1
        operator: Prefix
        values: [\"{marker}\"]
"
    );
    add(&sensor, uprobe_policy(&quiet, &target, &quiet_selectors)).await;
    // The call with n = 1 gets SIGUSR1, which ends the process.
    let signal_selectors = format!(
        "    - matchArgs:
      - index: 0
        operator: GT
        values: [\"0\"]
      - index: 1
        operator: Equal
        values: [\"{marker}\"]
      matchActions:
      - action: Signal
        argSig: 10
"
    );
    add(&sensor, uprobe_policy(&signal, &target, &signal_selectors)).await;
    assert_eq!(listed(&sensor, &signal).await.mode, TracingPolicyMode::TpModeEnforce as i32);

    use std::os::unix::process::ExitStatusExt;
    let status = Command::new(&target).arg(&marker).status().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGUSR1), "the target died of SIGUSR1");
    assert_eq!(exit_signal(&mut c, &marker).await, "SIGUSR1");
    fence(&mut c, &sensor).await;

    let calls = |policy: &str| -> Vec<(i32, i32)> {
        c.events
            .iter()
            .filter_map(|e| match &e.event {
                Some(Event::ProcessUprobe(u)) if u.policy_name == policy => {
                    match u.args.first().and_then(|a| a.arg.as_ref()) {
                        Some(Arg::IntArg(n)) => Some((*n, u.action)),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    };
    let post = KprobeAction::Post as i32;
    assert_eq!(calls(&quiet), [(0, post), (1, post)], "n = -1 dropped in the kernel");
    assert_eq!(calls(&signal), [(1, KprobeAction::Signal as i32)]);
    assert_eq!(per_selector(&listed(&sensor, &quiet).await), [(Some(0), 0, 1, 0), (Some(1), 2, 0, 0)]);
    assert_eq!(per_selector(&listed(&sensor, &signal).await), [(Some(0), 1, 0, 1)]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// This process's namespace of `kind` (`/proc/self/ns/KIND`), by inode.
fn own_namespace(kind: &str) -> u32 {
    let link = std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
    let text = link.to_string_lossy().into_owned();
    text.split_once(":[").unwrap().1.trim_end_matches(']').parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_and_capabilities_select_the_tasks_that_unlink() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-selns-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    // Anyone may unlink here (the unprivileged rm too).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = dir.display().to_string();
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, request()).await;

    let (mnt, user) = (own_namespace("mnt"), own_namespace("user"));
    let namespaces = |kind: &str, op: &str, value: &str| {
        format!(
            "      matchNamespaces:\n      - namespace: {kind}\n        operator: {op}\n        values: [\"{value}\"]\n"
        )
    };
    let caps = |op: &str, extra: &str| {
        format!("      matchCapabilities:\n      - operator: {op}\n{extra}        values: [\"CAP_SYS_ADMIN\"]\n")
    };
    // host_ns is init's namespace, or the sensor's where init's is hidden.
    let init_net = std::fs::read_link("/proc/1/ns/net").ok().map(|l| l.to_string_lossy().into_owned());
    let own_net = std::fs::read_link("/proc/self/ns/net").unwrap().to_string_lossy().into_owned();
    let everyone = vec!["by-root", "by-mntns", "by-nobody", "by-userns"];
    let host_net = if init_net.is_none_or(|n| n == own_net) { everyone.clone() } else { vec![] };
    let cases: Vec<Case<'_>> = vec![
        ("mnt-notin", namespaces("Mnt", "NotIn", &mnt.to_string()), vec!["by-mntns"]),
        ("mnt-in", namespaces("Mnt", "In", &mnt.to_string()), vec!["by-root", "by-nobody", "by-userns"]),
        ("user-notin", namespaces("User", "NotIn", &user.to_string()), vec!["by-userns"]),
        ("net-host", namespaces("Net", "In", "host_ns"), host_net),
        ("caps-in", caps("In", ""), vec!["by-root", "by-mntns", "by-userns"]),
        ("caps-notin", caps("NotIn", ""), vec!["by-nobody"]),
        ("caps-ns", caps("In", "        isNamespaceCapability: true\n"), vec!["by-userns"]),
    ];
    add_cases(&sensor, &run, &d, &cases).await;
    for f in &everyone {
        std::fs::write(dir.join(f), b"x").unwrap();
    }
    let run_ok = |args: &[&str]| {
        let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
        assert!(status.success(), "{args:?}: {status}");
    };
    let path = |f: &str| format!("{d}/{f}");
    run_ok(&["/bin/rm", &path("by-root")]);
    run_ok(&["/usr/bin/unshare", "--mount", "/bin/rm", &path("by-mntns")]);
    run_ok(&["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/bin/rm", &path("by-nobody")]);
    run_ok(&["/usr/bin/unshare", "--user", "--map-root-user", "/bin/rm", &path("by-userns")]);
    fence(&mut c, &sensor).await;

    assert_cases_saw(&c, &run, &d, &cases);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_forks_and_follow_children_reach_down_a_fork_chain() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-selfollow-{run}"));
    let tools = dir.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let d = dir.display().to_string();
    // A shell of its own path, whose descendants followChildren follows.
    let sh2 = tools.join("sh2");
    test_support::copy_executable("/bin/sh", &sh2);
    let sh2 = sh2.display().to_string();
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, request()).await;

    // The chain: a shell (the pid the policies name) waits for a line,
    // then removes one file itself through rm, and one through a shell of
    // its own (a grandchild rm).
    let mut chain = Command::new("/bin/sh")
        .args(["-c", &format!("read go; /bin/rm {d}/child; /bin/sh -c '/bin/rm {d}/grandchild'")])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let chain_pid = chain.id().to_string();
    let pids = |follow: bool| {
        format!(
            "      matchPIDs:\n      - operator: In\n        followForks: {follow}\n        values: [{chain_pid}]\n"
        )
    };
    let binaries = |op: &str, follow: bool| {
        format!(
            "      matchBinaries:\n      - operator: {op}\n        followChildren: {follow}\n        values: [\"{sh2}\"]\n"
        )
    };
    let cases: Vec<Case<'_>> = vec![
        ("pid-follow", pids(true), vec!["child", "grandchild"]),
        ("pid-only", pids(false), vec![]),
        ("bin-follow", binaries("In", true), vec!["under-sh2", "under-sh2-deeper"]),
        ("bin-only", binaries("In", false), vec![]),
        ("bin-notin-follow", binaries("NotIn", true), vec!["child", "grandchild", "plain"]),
    ];
    add_cases(&sensor, &run, &d, &cases).await;
    for f in ["child", "grandchild", "under-sh2", "under-sh2-deeper", "plain"] {
        std::fs::write(dir.join(f), b"x").unwrap();
    }
    use std::io::Write;
    chain.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(chain.wait().unwrap().success());
    let script = format!("/bin/rm {d}/under-sh2; /bin/sh -c '/bin/sh -c \"/bin/rm {d}/under-sh2-deeper\"'");
    assert!(Command::new(&sh2).args(["-c", &script]).status().unwrap().success());
    assert!(Command::new("/bin/rm").arg(dir.join("plain")).status().unwrap().success());
    fence(&mut c, &sensor).await;

    assert_cases_saw(&c, &run, &d, &cases);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_posts_the_same_arguments_once_per_interval_in_its_scope() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-selrate-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let sensor = Sensor::start(&["--metrics-address", "127.0.0.1:0"]).await;
    let mut c = Collector::subscribe(&sensor, request()).await;
    let post = |scope: &str| format!("      matchActions:\n      - action: Post\n        rateLimit: 10m\n{scope}");
    let (thread, global) = (format!("rate-thread-{run}"), format!("rate-global-{run}"));
    let thread_filter = [(6, "Postfix", &["-own"][..])];
    add(&sensor, policy(&thread, &selector(&d, &thread_filter, &post("")))).await;
    let global_filter = [(6, "Postfix", &["-rm"][..])];
    add(&sensor, policy(&global, &selector(&d, &global_filter, &post("        rateLimitScope: global\n")))).await;

    // This thread unlinks one path three times and another once; three rm
    // processes (three threads) unlink one path, recreated each time.
    let unlink_here = |name: &str| {
        std::fs::write(dir.join(name), b"x").unwrap();
        let path = std::ffi::CString::new(format!("{d}/{name}")).unwrap();
        // SAFETY: a valid C string; AT_FDCWD and no flags.
        assert_eq!(unsafe { libc::unlinkat(libc::AT_FDCWD, path.as_ptr(), 0) }, 0);
    };
    for name in ["a-own", "a-own", "b-own", "a-own"] {
        unlink_here(name);
    }
    for _ in 0..3 {
        std::fs::write(dir.join("c-rm"), b"x").unwrap();
        assert!(Command::new("/bin/rm").arg(dir.join("c-rm")).status().unwrap().success());
    }
    fence(&mut c, &sensor).await;

    let seen = seen(&c, &d);
    let count = |policy: &str, path: &str| seen.get(policy).and_then(|m| m.get(path)).copied().unwrap_or(0);
    assert_eq!((count(&thread, "a-own"), count(&thread, "b-own")), (1, 1), "once per arguments: {seen:?}");
    assert_eq!(count(&global, "c-rm"), 1, "once for all processes: {seen:?}");
    assert_eq!(per_selector(&listed(&sensor, &thread).await), [(Some(0), 2, 0, 0)]);
    // What the limit held back is counted, per selector.
    let (_, metrics) = test_support::scrape::http(&common::metrics_address(&sensor), "GET", "/metrics");
    let sample = |policy: &str, action: &str| {
        let labels = [
            ("policy", policy),
            ("hook", "tracepoint:syscalls/sys_enter_unlinkat"),
            ("selector", "0"),
            ("action", action),
        ];
        test_support::scrape::sample(&metrics, "vigil_policy_selector_actions_total", &labels)
    };
    assert_eq!((sample(&thread, "post"), sample(&thread, "rate_limited")), (2, 2), "{metrics}");
    assert_eq!((sample(&global, "post"), sample(&global, "rate_limited")), (1, 2), "{metrics}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_since_exec_and_the_parents_binary_select_who_unlinks() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-selchange-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    // The unprivileged changer unlinks here too.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = dir.display().to_string();
    let changer = common::build_test_program(&dir.join("bin"), "changer");
    let sh2 = dir.join("bin/sh2");
    test_support::copy_executable("/bin/sh", &sh2);
    let sh2 = sh2.display().to_string();
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, request()).await;

    let changes = |filter: &str, op: &str, value: &str| {
        format!("      {filter}:\n      - operator: {op}\n        values: [\"{value}\"]\n")
    };
    let parent_is = |op: &str, value: &str| {
        format!("      matchParentBinaries:\n      - operator: {op}\n        values: [\"{value}\"]\n")
    };
    let parent = |op: &str| parent_is(op, &sh2);
    let bin_dir = format!("{d}/bin/");
    let cases: Vec<Case<'_>> = vec![
        ("ns-changed", changes("matchNamespaceChanges", "In", "Mnt"), vec!["by-ns"]),
        ("ns-unchanged", changes("matchNamespaceChanges", "NotIn", "Mnt"), vec!["by-caps", "by-none", "by-parent"]),
        ("caps-changed", changes("matchCapabilityChanges", "In", "CAP_SYS_ADMIN"), vec!["by-caps"]),
        (
            "caps-unchanged",
            changes("matchCapabilityChanges", "NotIn", "CAP_SYS_ADMIN"),
            vec!["by-ns", "by-none", "by-parent"],
        ),
        ("parent-in", parent("In"), vec!["by-parent"]),
        ("parent-notin", parent("NotIn"), vec!["by-ns", "by-caps", "by-none"]),
        ("parent-prefix", parent_is("Prefix", &bin_dir), vec!["by-parent"]),
        ("parent-notprefix", parent_is("NotPrefix", &bin_dir), vec!["by-ns", "by-caps", "by-none"]),
        ("parent-postfix", parent_is("Postfix", "/sh2"), vec!["by-parent"]),
        ("parent-notpostfix", parent_is("NotPostfix", "/sh2"), vec!["by-ns", "by-caps", "by-none"]),
    ];
    add_cases(&sensor, &run, &d, &cases).await;
    for f in ["by-ns", "by-caps", "by-none", "by-parent"] {
        std::fs::write(dir.join(f), b"x").unwrap();
    }
    for (mode, file) in [("ns", "by-ns"), ("caps", "by-caps"), ("none", "by-none")] {
        let status = Command::new(&changer).args([mode, &format!("{d}/{file}")]).status().unwrap();
        assert!(status.success(), "changer {mode}: {status}");
    }
    // Not the shell's last command, so it forks rm rather than becoming it.
    let script = format!("/bin/rm {d}/by-parent; true");
    assert!(Command::new(&sh2).args(["-c", &script]).status().unwrap().success());
    fence(&mut c, &sensor).await;
    assert_cases_saw(&c, &run, &d, &cases);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A policy of one `sys_enter_write` hook per case, its descriptor read as
/// the path of its file: each hook's message is its case's name, and its
/// selector confines it to `dir` (a path filter too) before the case's.
fn write_path_policy(name: &str, dir: &str, cases: &[(&str, &str, &[&str])]) -> String {
    let mut yaml = format!(
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n  tracepoints:\n"
    );
    for (case, operator, values) in cases {
        let values: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
        yaml += &format!(
            "  - subsystem: syscalls
    event: sys_enter_write
    message: {case}
    args:
    - index: 5
      type: fd
    selectors:
    - matchArgs:
      - index: 5
        operator: Prefix
        values: [\"{dir}/\"]
      - index: 5
        operator: {operator}
        values: [{}]
",
            values.join(", ")
        );
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_operators_compare_the_whole_path_as_events_show_it() {
    require_kernel!();
    let run = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-path-{run}"));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let d = dir.display().to_string();
    let sensor = Sensor::start(&[]).await;
    // The kernel keeps a path leaf first; these cut inside components
    // (`a-`, `ub/c`) and across them, from either end.
    let (a, b_keep, deep) = (format!("{d}/a-"), format!("{d}/b-keep.log"), format!("{d}/sub/c.log"));
    let all = ["a-keep.log", "a-drop.txt", "b-keep.log", "sub/c.log"];
    let (a, b_keep, both, d_only) = ([a.as_str()], [b_keep.as_str()], [b_keep.as_str(), deep.as_str()], [d.as_str()]);
    let cases: Vec<(&str, &str, &[&str], Vec<&str>)> = vec![
        ("prefix", "Prefix", &a, vec!["a-keep.log", "a-drop.txt"]),
        ("notprefix", "NotPrefix", &a, vec!["b-keep.log", "sub/c.log"]),
        ("postfix", "Postfix", &[".log", ".nothing"], vec!["a-keep.log", "b-keep.log", "sub/c.log"]),
        ("postfix-across", "Postfix", &["ub/c.log"], vec!["sub/c.log"]),
        ("notpostfix", "NotPostfix", &[".log"], vec!["a-drop.txt"]),
        ("equal", "Equal", &both, vec!["b-keep.log", "sub/c.log"]),
        ("notequal", "NotEqual", &b_keep, vec!["a-keep.log", "a-drop.txt", "sub/c.log"]),
        ("equal-dir", "Equal", &d_only, vec![]),
    ];
    let spec: Vec<(&str, &str, &[&str])> = cases.iter().map(|(c, op, v, _)| (*c, *op, *v)).collect();
    let name = format!("paths-{run}");
    add(&sensor, write_path_policy(&name, &d, &spec)).await;
    // A second policy's hook joins the same attach and chain.
    let other = format!("other-{run}");
    add(&sensor, write_path_policy(&other, &d, &[("other", "Equal", &b_keep)])).await;
    let write_all = || {
        for f in all {
            let script = format!("exec >{d}/{f}; printf x");
            assert!(Command::new("/bin/sh").args(["-c", &script]).status().unwrap().success());
        }
    };
    let mut c = Collector::subscribe(&sensor, request()).await;
    write_all();
    fence(&mut c, &sensor).await;
    // Per policy and case (the hook's message), the marked files written.
    let seen = |c: &Collector| {
        let mut seen: BTreeMap<(String, String), BTreeMap<String, usize>> = BTreeMap::new();
        for t in c.events.iter().filter_map(tracepoint_of).filter(|t| t.policy_name == name || t.policy_name == other) {
            let Some(Arg::FileArg(f)) = t.args.first().and_then(|a| a.arg.as_ref()) else {
                panic!("a write without its file: {t:?}");
            };
            let file = f.path.strip_prefix(&format!("{d}/")).unwrap_or_else(|| panic!("outside the directory: {f:?}"));
            let key = (t.policy_name.clone(), t.message.clone());
            *seen.entry(key).or_default().entry(file.to_owned()).or_default() += 1;
        }
        seen
    };
    let first = seen(&c);
    for (case, _, _, want) in &cases {
        let want: BTreeMap<String, usize> = want.iter().map(|w| (w.to_string(), 1)).collect();
        let got = first.get(&(name.clone(), case.to_string())).cloned().unwrap_or_default();
        assert_eq!(got, want, "case {case} (all: {first:?})");
    }
    let other_saw = |seen: &BTreeMap<(String, String), BTreeMap<String, usize>>| {
        seen.get(&(other.clone(), "other".to_owned())).cloned().unwrap_or_default()
    };
    assert_eq!(other_saw(&first), BTreeMap::from([("b-keep.log".to_owned(), 1)]));
    assert_eq!(sensor.health_counter("select_failed").await, Some(0));

    // With the first policy gone, the second's hook still runs alone.
    let request = DeleteTracingPolicyRequest { name: name.clone(), ..Default::default() };
    sensor.client().await.delete_tracing_policy(request).await.unwrap();
    let mut c = Collector::subscribe(&sensor, self::request()).await;
    write_all();
    fence(&mut c, &sensor).await;
    let second = seen(&c);
    assert_eq!(second.keys().cloned().collect::<Vec<_>>(), [(other.clone(), "other".to_owned())], "{second:?}");
    assert_eq!(other_saw(&second), BTreeMap::from([("b-keep.log".to_owned(), 1)]));
    let _ = std::fs::remove_dir_all(&dir);
}
