//! Kernel matrix: the sensor inside a VM running a different kernel
//! (Debian's stock 6.1 cloud kernel unless `VIGIL_KERNEL_IMAGE` names
//! another), with a scripted workload. Events must match what `/proc` said
//! inside the VM: binaries, arguments, cwd, exit codes, credentials and
//! namespaces. Struct layouts differ between 6.1 and this machine's kernel,
//! so this proves offsets come from the running kernel's BTF.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod vm;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use node_sensor::privileges::{cap_list, creds_from_status};
use proto::json::from_json_line;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::{GetEventsResponse, Process, ProcessPrivilegesChanged};

fn skip_or_fail(reason: &str) {
    assert!(std::env::var_os("VIGIL_REQUIRE_ALL").is_none(), "kernel matrix cannot run: {reason}");
    eprintln!("SKIP kernel_matrix: {reason}");
}

/// `VIGIL-PROC <tag> <kind> <rest>` lines, per tag.
#[derive(Default, Debug)]
struct Snapshot {
    pid: u32,
    status: String,
    ns: HashMap<String, u32>,
    cwd: String,
}

fn parse_console(text: &str) -> (Vec<GetEventsResponse>, HashMap<String, Snapshot>, HashMap<String, i32>, String) {
    let mut events = Vec::new();
    let mut snaps: HashMap<String, Snapshot> = HashMap::new();
    let mut statuses = HashMap::new();
    let mut kernel = String::new();
    let mut in_events = false;
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if in_events {
            if line.ends_with("VIGIL-EVENTS-END") {
                in_events = false;
            } else {
                events.push(from_json_line(line).unwrap_or_else(|e| panic!("bad event line {line:?}: {e}")));
            }
            continue;
        }
        // The console may put terminal control sequences before a marker.
        let line = line.find("VIGIL-").map_or(line, |i| &line[i..]);
        if line == "VIGIL-EVENTS-BEGIN" {
            in_events = true;
            continue;
        }
        let parts: Vec<&str> = line.splitn(4, ' ').collect();
        match parts.as_slice() {
            ["VIGIL-KERNEL", release, ..] => kernel = (*release).to_owned(),
            ["VIGIL-STATUS", tag, code] => {
                statuses.insert((*tag).to_owned(), code.parse().unwrap_or(-1));
            }
            ["VIGIL-PROC", tag, kind, rest] => {
                let s = snaps.entry((*tag).to_owned()).or_default();
                match *kind {
                    "pid" => s.pid = rest.parse().unwrap_or(0),
                    "status" => {
                        s.status.push_str(rest);
                        s.status.push('\n');
                    }
                    "ns" => {
                        if let Some((name, inum)) = rest.split_once(' ')
                            && let Ok(inum) = inum.parse()
                        {
                            s.ns.insert(name.to_owned(), inum);
                        }
                    }
                    "cwd" => s.cwd = (*rest).to_owned(),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    (events, snaps, statuses, kernel)
}

fn execs(events: &[GetEventsResponse]) -> impl Iterator<Item = &Process> {
    events.iter().filter_map(|e| match &e.event {
        Some(Event::ProcessExec(x)) => x.process.as_ref(),
        _ => None,
    })
}

fn exits(events: &[GetEventsResponse]) -> impl Iterator<Item = (&Process, u32, &str)> {
    events.iter().filter_map(|e| match &e.event {
        Some(Event::ProcessExit(x)) => x.process.as_ref().map(|p| (p, x.status, x.signal.as_str())),
        _ => None,
    })
}

fn ns_inum(p: &Process, name: &str) -> Option<(u32, bool)> {
    events::subject::namespace(p, name).map(|n| (n.inum, n.is_host))
}

/// The live process's exec event matches its /proc snapshot.
fn check_against_proc<'a>(events: &'a [GetEventsResponse], tag: &str, snap: &Snapshot, args: &str) -> &'a Process {
    let p = execs(events)
        .filter(|p| p.pid.map(|v| v.value) == Some(snap.pid) && p.arguments == args)
        .last()
        .unwrap_or_else(|| panic!("{tag}: no exec for pid {} with arguments {args:?}", snap.pid));
    assert_eq!(p.binary, "/bin/sleep", "{tag}");
    assert_eq!(p.cwd, snap.cwd, "{tag}: cwd");
    let (ids, creds) =
        creds_from_status(&snap.status, 0).unwrap_or_else(|| panic!("{tag}: no ids in {:?}", snap.status));
    let pc = p.process_credentials.as_ref().unwrap_or_else(|| panic!("{tag}: no credentials"));
    let v = |x: Option<proto::wkt::UInt32Value>| x.map(|v| v.value);
    assert_eq!(
        (v(pc.uid), v(pc.euid), v(pc.suid), v(pc.fsuid)),
        (Some(ids.uid), Some(ids.euid), Some(creds.suid), Some(creds.fsuid)),
        "{tag}: uids"
    );
    assert_eq!(
        (v(pc.gid), v(pc.egid), v(pc.sgid), v(pc.fsgid)),
        (Some(ids.gid), Some(ids.egid), Some(creds.sgid), Some(creds.fsgid)),
        "{tag}: gids"
    );
    let cap = p.cap.as_ref().unwrap_or_else(|| panic!("{tag}: no caps"));
    assert_eq!(cap.permitted, cap_list(creds.cap_permitted), "{tag}: permitted");
    assert_eq!(cap.effective, cap_list(creds.cap_effective), "{tag}: effective");
    assert_eq!(cap.inheritable, cap_list(creds.cap_inheritable), "{tag}: inheritable");
    assert_eq!(snap.ns.len(), 10, "{tag}: 6.1 has all ten namespace kinds");
    for (name, inum) in &snap.ns {
        assert_eq!(ns_inum(p, name).map(|n| n.0), Some(*inum), "{tag}: ns {name}");
    }
    p
}

/// Boots the VM with `init` as PID 1 and returns its console, kept in the
/// cache as `log` for reading after a failure; `None` when it cannot run
/// here (said, or failed under VIGIL_REQUIRE_ALL).
/// Boots the VM with `init` as PID 1 and the `extra` binaries of this
/// machine in its image; the console text, or `None` after a skip.
fn run_vm(init: &str, log: &str, extra: &[&str]) -> Option<String> {
    if let Some(reason) = common_skip() {
        skip_or_fail(&reason);
        return None;
    }
    let kernel = match vm::kernel() {
        Ok(k) => k,
        Err(e) => {
            skip_or_fail(&format!("no kernel image: {e}"));
            return None;
        }
    };
    let initrd =
        vm::initramfs(std::path::Path::new(env!("CARGO_BIN_EXE_vigil-sensor")), init, extra).expect("initramfs");
    let console = vm::boot(&kernel, &initrd, Duration::from_secs(600)).expect("VM run");
    let _ = std::fs::remove_dir_all(initrd.parent().unwrap());
    let _ = std::fs::write(vm::cache_dir().join(log), &console);
    assert!(console.contains("VIGIL-DONE"), "workload did not finish; console:\n{console}");
    assert!(!console.contains("VIGIL-WAIT-FAILED"), "a wait in the VM ran out; console:\n{console}");
    Some(console)
}

#[test]
fn sensor_in_a_vm_with_another_kernel_matches_proc() {
    let Some(console) = run_vm(include_str!("vm/init.sh"), "last-console.log", &[]) else { return };
    let (events, snaps, statuses, release) = parse_console(&console);
    let log: Vec<&str> = console.lines().filter(|l| l.starts_with("VIGIL-SENSOR-LOG")).collect();
    if std::env::var_os("VIGIL_KERNEL_IMAGE").is_none() {
        assert!(release.starts_with("6.1."), "booted {release:?}, expected Debian's 6.1");
    }
    assert!(!events.is_empty(), "no events; sensor log:\n{}", log.join("\n"));
    assert!(events.iter().all(|e| e.node_name == "vigil-vm"));

    // The chain: sh (exit 3) running true (exit 0) in /tmp.
    let sh = execs(&events)
        .find(|p| p.arguments == "-c \"cd /tmp && /bin/true vigil-vm-true; exit 3\" vigil-vm-chain")
        .expect("sh exec");
    assert_eq!(sh.binary, "/bin/sh");
    assert_eq!(sh.cwd, "/tmp");
    let t = execs(&events).find(|p| p.arguments == "vigil-vm-true").expect("true exec");
    assert_eq!(t.binary, "/bin/true");
    assert_eq!(t.cwd, "/tmp");
    assert_eq!(t.parent_exec_id, sh.exec_id);
    let exit_of = |id: &str| exits(&events).find(|(p, _, _)| p.exec_id == id).map(|(_, s, sig)| (s, sig.to_owned()));
    assert_eq!(exit_of(&t.exec_id), Some((0, String::new())));
    assert_eq!(exit_of(&sh.exec_id), Some((3, String::new())));
    assert_eq!(statuses.get("chain"), Some(&3));

    // Live processes against /proc inside the VM.
    let root = check_against_proc(&events, "root", &snaps["root"], "31");
    for name in ["uts", "ipc", "mnt", "pid", "net", "cgroup", "user", "time"] {
        assert_eq!(ns_inum(root, name).map(|n| n.1), Some(true), "root: {name} is the host's");
    }
    assert_eq!(exit_of(&root.exec_id), Some((0, "SIGKILL".to_owned())));
    let user = check_against_proc(&events, "user", &snaps["user"], "32");
    assert_eq!(user.uid.map(|u| u.value), Some(1000));
    assert!(user.cap.as_ref().unwrap().effective.is_empty());
    let netuts = check_against_proc(&events, "netuts", &snaps["netuts"], "33");
    assert_eq!(ns_inum(netuts, "net").map(|n| n.1), Some(false));
    assert_eq!(ns_inum(netuts, "uts").map(|n| n.1), Some(false));
    assert_eq!(ns_inum(netuts, "ipc").map(|n| n.1), Some(true));
    let userns = check_against_proc(&events, "userns", &snaps["userns"], "34");
    assert_eq!(ns_inum(userns, "user").map(|n| n.1), Some(false));
    let un = userns.process_credentials.as_ref().unwrap().user_ns.as_ref().expect("user_ns");
    assert_eq!(un.level.map(|l| l.value), Some(1));
    check_against_proc(&events, "inh", &snaps["inh"], "36");

    // The setuid-root busybox run by uid 1000 raised privileges at exec.
    let suid = execs(&events).find(|p| p.arguments == "true vigil-vm-suid").expect("suid exec");
    assert_eq!(suid.binary, "/tmp/suid-bb");
    assert_eq!(suid.uid.map(|u| u.value), Some(0), "the effective uid, as ps and Tetragon show it");
    let creds = suid.process_credentials.as_ref().unwrap();
    assert_eq!((creds.uid.map(|u| u.value), creds.euid.map(|u| u.value)), (Some(1000), Some(0)));
    let b = suid.binary_properties.as_ref().expect("binary_properties");
    assert_eq!(b.setuid.map(|v| v.value), Some(0));
    assert_eq!(b.privileges_changed, vec![ProcessPrivilegesChanged::PrivilegesRaisedExecFileSetuid as i32]);

    // The offsets the sensor resolved inside the VM are 6.1's, not this
    // machine's: at least these task_struct fields sit elsewhere.
    let vm_offsets = log.iter().find(|l| l.contains("resolved kernel struct offsets")).expect("offsets logged");
    let host = node_sensor::btf_offsets::resolve(
        &node_sensor::btf_offsets::open(node_sensor::btf_offsets::VMLINUX_BTF).unwrap(),
        node_sensor::btf_offsets::Features { creds: true, ns: true },
    )
    .unwrap()
    .offsets;
    let in_vm = |field: &str| -> u32 {
        let at = vm_offsets.find(&format!("{field}: ")).unwrap_or_else(|| panic!("{field} not in {vm_offsets}"));
        vm_offsets[at + field.len() + 2..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let differing: Vec<&str> = [
        ("task_pid", host.task_pid),
        ("task_real_parent", host.task_real_parent),
        ("task_real_cred", host.task_real_cred),
        ("task_nsproxy", host.task_nsproxy),
        ("task_signal", host.task_signal),
    ]
    .into_iter()
    .filter(|(f, h)| in_vm(f) != *h)
    .map(|(f, _)| f)
    .collect();
    assert!(!differing.is_empty(), "6.1 and this kernel lay task_struct out identically?");
    eprintln!("task_struct fields at other offsets in the VM than here: {differing:?}");

    // Nothing lost, nothing degraded on 6.1.
    assert!(!log.iter().any(|l| l.contains("WARN") && l.contains("degraded")), "{}", log.join("\n"));
}

fn common_skip() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (qemu, BPF)".into());
    }
    for tool in ["qemu-system-x86_64", "cpio", "objcopy", "dpkg-deb"] {
        let found = std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        if !found.is_ok_and(|o| o.status.success()) {
            return Some(format!("{tool} is not installed (cargo xtask setup installs it)"));
        }
    }
    if !std::path::Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox (busybox-static) is not installed".into());
    }
    None
}

/// The recorded workload's shell command, as Tetragon joined its arguments.
const PARITY_SH_ARGS: &str = "-c \"/usr/bin/env VIGIL_MARK=tvm-1 /bin/true; exit 3\"";

/// Which workload event this is: kind, binary, arguments, and whether the
/// process is a fork child that never exec'd (its exec_id no exec carried).
/// Harness processes (the agent itself, its readiness polls) differ between
/// the two recordings and are left out.
fn workload_key(e: &GetEventsResponse, exec_ids: &HashSet<String>) -> Option<(String, String, String, bool)> {
    let (kind, p) = match &e.event {
        Some(Event::ProcessExec(x)) => ("exec", x.process.as_ref()?),
        Some(Event::ProcessExit(x)) => ("exit", x.process.as_ref()?),
        _ => return None,
    };
    let wanted = matches!(
        (kind, p.binary.as_str(), p.arguments.as_str()),
        ("exec", "<kernel>", "")
            | ("exec", "/bin/busybox", "/init")
            | (_, "/bin/sleep", "30")
            | (_, "/proc/self/exe", "1")
    ) || (p.binary == "/bin/sh" && p.arguments == PARITY_SH_ARGS);
    wanted.then(|| (kind.to_owned(), p.binary.clone(), p.arguments.clone(), !exec_ids.contains(&p.exec_id)))
}

fn exec_ids(events: &[GetEventsResponse]) -> HashSet<String> {
    execs(events).map(|p| p.exec_id.clone()).collect()
}

/// An event as JSON without what differs by design between two runs (ids,
/// times, pids) or between Vigil and Tetragon on purpose (see the README's
/// compatibility section): `refcnt`, `process_credentials.user_ns`, and the
/// `<kernel>` entry's placeholder capabilities, namespaces and credentials.
fn comparable(e: &GetEventsResponse) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&proto::json::to_json_line(e)).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("time");
    for body in obj.values_mut().filter_map(|b| b.as_object_mut()) {
        body.remove("time");
        for role in ["process", "parent"] {
            let Some(p) = body.get_mut(role).and_then(|p| p.as_object_mut()) else { continue };
            for field in ["exec_id", "parent_exec_id", "pid", "tid", "start_time", "refcnt"] {
                p.remove(field);
            }
            if let Some(c) = p.get_mut("process_credentials").and_then(|c| c.as_object_mut()) {
                c.remove("user_ns");
            }
            if p.get("binary").and_then(|b| b.as_str()) == Some("<kernel>") {
                for field in ["cap", "ns", "process_credentials"] {
                    p.remove(field);
                }
            }
        }
    }
    v
}

/// `path = value` for every leaf, for a field-by-field diff.
fn leaves(v: &serde_json::Value, path: String, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(m) => m.iter().for_each(|(k, x)| leaves(x, format!("{path}.{k}"), out)),
        serde_json::Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| leaves(x, format!("{path}[{i}]"), out)),
        other => {
            out.insert(path, other.to_string());
        }
    }
}

fn field_diff(tetragon: &serde_json::Value, vigil: &serde_json::Value) -> Vec<String> {
    let (mut t, mut v) = (BTreeMap::new(), BTreeMap::new());
    leaves(tetragon, String::new(), &mut t);
    leaves(vigil, String::new(), &mut v);
    let paths: std::collections::BTreeSet<&String> = t.keys().chain(v.keys()).collect();
    paths
        .into_iter()
        .filter(|p| t.get(*p) != v.get(*p))
        .map(|p| format!("{p}: tetragon {} / vigil {}", t.get(p).map_or("-", |s| s), v.get(p).map_or("-", |s| s)))
        .collect()
}

/// Ids and times are not compared but must be well formed and consistent:
/// an exec_id is base64 of `node:ktime:pid` naming the event's node and the
/// process's pid, the parent's exec_id is the process's parent_exec_id, and
/// a parent started no later than its child.
fn check_ids_and_times(who: &str, events: &[GetEventsResponse]) {
    use base64::Engine as _;
    for e in events {
        let Some(p) = events::subject::process(e) else { continue };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&p.exec_id)
            .unwrap_or_else(|err| panic!("{who}: exec_id {:?} is not base64: {err}", p.exec_id));
        let text = String::from_utf8(raw).unwrap();
        let mut parts = text.rsplitn(3, ':');
        let (pid, ktime, node) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap_or_default());
        assert_eq!(node, e.node_name, "{who}: exec_id {text} names another node");
        assert_eq!(pid.parse::<u32>().ok(), p.pid.map(|v| v.value), "{who}: exec_id {text} names another pid");
        assert!(ktime.parse::<u64>().is_ok_and(|k| k > 0), "{who}: exec_id {text} has no ktime");
        if let Some(parent) = events::subject::parent(e) {
            assert_eq!(parent.exec_id, p.parent_exec_id, "{who}: parent of {text}");
            let t = |x: &Process| x.start_time.map(|t| t.unix_nanos()).unwrap_or_default();
            assert!(t(parent) <= t(p), "{who}: {text} started before its parent");
        }
    }
}

/// The workload's events, one per key (two of the same are an error).
fn workload(who: &str, events: &[GetEventsResponse]) -> BTreeMap<(String, String, String, bool), serde_json::Value> {
    let ids = exec_ids(events);
    let mut out = BTreeMap::new();
    for e in events {
        if let Some(key) = workload_key(e, &ids) {
            let previous = out.insert(key.clone(), comparable(e));
            assert!(previous.is_none(), "{who}: two events for {key:?}");
        }
    }
    out
}

#[test]
fn vm_events_equal_tetragons_field_by_field() {
    let Some(console) = run_vm(include_str!("vm/parity.sh"), "last-parity-console.log", &[]) else { return };
    let (events, _, statuses, _) = parse_console(&console);
    let log: Vec<&str> = console.lines().filter(|l| l.contains("VIGIL-SENSOR-LOG")).collect();
    assert_eq!(statuses.get("chain"), Some(&3));

    // Start-up under a storm: one exec per image, no exit without its exec
    // (a fork child's exit names an exec'd parent), and per storm marker
    // after the first: one exec and one exit of the same image.
    let ids = exec_ids(&events);
    assert_eq!(ids.len(), execs(&events).count(), "an image with two exec events");
    let mut exits_per_id: HashMap<&str, usize> = HashMap::new();
    for (p, _, _) in exits(&events) {
        *exits_per_id.entry(p.exec_id.as_str()).or_default() += 1;
        if !ids.contains(&p.exec_id) {
            assert_eq!(p.flags, "execve", "an exit without an exec: {p:?}");
            assert!(ids.contains(&p.parent_exec_id), "a fork child of an unreported parent: {p:?}");
        }
    }
    assert!(exits_per_id.values().all(|n| *n == 1), "a process with two exits");
    let marker = |p: &Process| p.arguments.strip_prefix("vm-storm-").and_then(|i| i.parse::<u64>().ok());
    let storm_execs: BTreeMap<u64, &Process> = execs(&events).filter_map(|p| Some((marker(p)?, p))).collect();
    let storm_exits: HashMap<u64, &Process> = exits(&events).filter_map(|(p, _, _)| Some((marker(p)?, p))).collect();
    let first = *storm_execs.keys().next().expect("storm execs");
    let last = *storm_execs.keys().last().unwrap();
    assert!(last > first + 10, "the storm ran under the sensor: markers {first}..={last}");
    for i in first + 1..=last {
        let exec = storm_execs.get(&i).unwrap_or_else(|| panic!("storm marker {i}: no exec"));
        let exit = storm_exits.get(&i).unwrap_or_else(|| panic!("storm marker {i}: no exit"));
        assert_eq!(exec.exec_id, exit.exec_id, "storm marker {i}");
    }
    // The cache holds the live processes and `<kernel>`, no more.
    let live: u64 = console
        .lines()
        .find_map(|l| l.find("VIGIL-LIVE ").map(|i| l[i + 11..].trim().parse().unwrap()))
        .expect("live count");
    let stopped = log.iter().find(|l| l.contains("stopped stats=")).expect("final stats");
    let cached: u64 = stopped.split("cache_entries=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert_eq!(cached, live + 1, "cache entries at the end vs live processes + <kernel>");

    // Parity with the recorded Tetragon, field by field.
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/compat/fixtures/tetragon-vm-events.jsonl");
    let tetragon: Vec<GetEventsResponse> =
        std::fs::read_to_string(fixture).unwrap().lines().map(|l| from_json_line(l).unwrap()).collect();
    check_ids_and_times("tetragon", &tetragon);
    check_ids_and_times("vigil", &events);
    let want = workload("tetragon", &tetragon);
    let got = workload("vigil", &events);
    assert_eq!(want.len(), 9, "the fixture's workload events: {:?}", want.keys());
    let keys = |m: &BTreeMap<_, _>| m.keys().cloned().collect::<Vec<(String, String, String, bool)>>();
    assert_eq!(keys(&got), keys(&want), "the same events, by kind, binary, arguments and fork-only");
    let mut diffs = Vec::new();
    for (key, t) in &want {
        for d in field_diff(t, &got[key]) {
            diffs.push(format!("{key:?} {d}"));
        }
    }
    assert!(diffs.is_empty(), "fields that differ from Tetragon's:\n{}", diffs.join("\n"));
}

#[test]
fn field_diff_names_each_difference() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/compat/fixtures/tetragon-vm-events.jsonl");
    let tetragon: Vec<GetEventsResponse> =
        std::fs::read_to_string(fixture).unwrap().lines().map(|l| from_json_line(l).unwrap()).collect();
    let sh = tetragon.iter().find(|e| exec_of_args(e) == Some(PARITY_SH_ARGS)).unwrap();
    let mut changed = sh.clone();
    let Some(Event::ProcessExec(x)) = changed.event.as_mut() else { panic!("not an exec") };
    let p = x.process.as_mut().unwrap();
    p.flags = "execve".into();
    p.uid = Some(1000.into());
    p.start_time = None; // a time: not compared
    p.refcnt = 7; // a deliberate difference: not compared
    let diff = field_diff(&comparable(sh), &comparable(&changed));
    assert_eq!(
        diff,
        [
            ".process_exec.process.flags: tetragon \"execve clone\" / vigil \"execve\"",
            ".process_exec.process.uid: tetragon 0 / vigil 1000"
        ]
    );
}

fn exec_of_args(e: &GetEventsResponse) -> Option<&str> {
    match &e.event {
        Some(Event::ProcessExec(x)) => x.process.as_ref().map(|p| p.arguments.as_str()),
        _ => None,
    }
}

const POLICY_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/compat/fixtures/tetragon-vm-policies");

fn policy_fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{POLICY_FIXTURES}/{name}")).unwrap()
}

/// The policies VM's init: the recorded cases' own policy files put in,
/// whole but for case b's selector (a filter on a `file` argument's path,
/// which Vigil does not evaluate yet), so b's events are compared for the
/// marked file only.
fn policies_init() -> String {
    let b = policy_fixture("b-file-permission.yaml");
    let b = b.split("    selectors:").next().unwrap().to_owned();
    include_str!("vm/policies.sh")
        .replace("@POLICY_A@", policy_fixture("a-exec-elf-begin.yaml").trim_end())
        .replace("@POLICY_B@", b.trim_end())
        .replace("@POLICY_C@", policy_fixture("c-tcp-connect.yaml").trim_end())
        .replace("@POLICY_D@", policy_fixture("d-tracepoints.yaml").trim_end())
        .replace("@POLICY_E@", policy_fixture("e-openat-return-sigkill.yaml").trim_end())
        .replace("@POLICY_F@", policy_fixture("f-uprobe-bash.yaml").trim_end())
}

/// The port the recorded connection's listener had, as Vigil's workload's.
const LISTENER_PORT: u64 = 8765;

/// What a policy event's hook reported, as JSON: its body without the
/// process and parent, and without what differs per run (see
/// `without_run_specifics`).
fn hook_body(e: &GetEventsResponse) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&proto::json::to_json_line(e)).unwrap();
    let mut body =
        ["process_kprobe", "process_tracepoint", "process_uprobe"].iter().find_map(|k| v.get(*k))?.as_object()?.clone();
    // Each uprobe event names its own symbol, where Tetragon names the
    // list's last (checked on its own).
    body.remove("symbol");
    body.remove("process");
    body.remove("parent");
    let mut body = serde_json::Value::Object(body);
    without_run_specifics(&mut body);
    Some(body)
}

/// Leaves out of a kprobe body what differs between two runs of a
/// workload: a socket's address (its cookie), its ephemeral port (any but
/// the listener's), and on a close the TCP state and ports (which end
/// closes first is a race, and a socket torn down has its local port
/// released: in the recording the accepted socket closed in TCP_CLOSE
/// without a local port, here it may close in TCP_CLOSE_WAIT with it).
fn without_run_specifics(v: &mut serde_json::Value) {
    let closing = v.get("function_name").and_then(|f| f.as_str()) == Some("tcp_close");
    let args = v.get_mut("args").and_then(|a| a.as_array_mut()).into_iter().flatten();
    for sock in args.filter_map(|a| a.get_mut("sock_arg")).filter_map(|s| s.as_object_mut()) {
        sock.remove("cookie");
        for port in ["sport", "dport"] {
            if closing || sock.get(port).and_then(|p| p.as_u64()) != Some(LISTENER_PORT) {
                sock.remove(port);
            }
        }
        if closing {
            sock.remove("state");
        }
    }
}

/// Differences from Tetragon's recorded events that are deliberate: each
/// names its reason in the README's compatibility section.
fn deliberate(diff: &str) -> bool {
    const DELIBERATE: &[&str] = &[".process_uprobe.symbol: "];
    DELIBERATE.iter().any(|d| diff.contains(d))
}

fn who(e: &GetEventsResponse) -> Option<(&str, &str)> {
    events::subject::process(e).map(|p| (p.binary.as_str(), p.arguments.as_str()))
}

/// Each recorded policy event of a case has its counterpart among Vigil's:
/// the same hook report, as often (`exact`; at least as often where the
/// recording kept only the marked processes' events), from a process with
/// the same binary and arguments; and that counterpart's process and
/// parent equal Tetragon's field by field but for ids, times and pids.
/// Where Tetragon named the parent for a hook in a process's exit path
/// (its `tid` is another process's), Vigil names the exiting process
/// itself (README, compatibility): that process's fields are not compared,
/// but it must be the thread's own.
fn policy_events_equal_tetragons(case: &str, events: &[GetEventsResponse], exact: bool, hooks: &[&str]) {
    // The hooks compared, by function or tracepoint name (all if none).
    let compared =
        |b: &serde_json::Value| hooks.is_empty() || hooks.iter().any(|h| b["function_name"] == *h || b["event"] == *h);
    let tetragon: Vec<GetEventsResponse> = policy_fixture(&format!("{case}.events.jsonl"))
        .lines()
        .map(|l| from_json_line(l).unwrap())
        .filter(|e| hook_body(e).is_some_and(|b| compared(&b)))
        .collect();
    assert!(!tetragon.is_empty(), "{case}: recorded policy events");
    let after_exit = |e: &GetEventsResponse| events::subject::process(e).is_some_and(|p| p.tid != p.pid);
    // Each event's body once (re-encoding them per comparison made this
    // quadratic in JSON work).
    let tetragon_bodies: Vec<Option<serde_json::Value>> = tetragon.iter().map(hook_body).collect();
    let vigil_bodies: Vec<Option<serde_json::Value>> = events.iter().map(hook_body).collect();
    let same = |a: &GetEventsResponse, a_body: &Option<serde_json::Value>, b: &GetEventsResponse, b_body| {
        a_body.is_some() && a_body == b_body && (after_exit(b) || who(a) == who(b))
    };
    let mut used = HashSet::new();
    let mut diffs = Vec::new();
    for (t, t_body) in tetragon.iter().zip(&tetragon_bodies) {
        let body = t_body.clone().unwrap();
        let want = tetragon.iter().zip(&tetragon_bodies).filter(|(x, xb)| same(x, xb, t, t_body)).count();
        let got = events.iter().zip(&vigil_bodies).filter(|(x, xb)| same(x, xb, t, t_body)).count();
        let seen = vigil_bodies
            .iter()
            .flatten()
            .filter(|b| b["function_name"] == body["function_name"] && b["event"] == body["event"]);
        assert!(
            got == want || (!exact && got > want),
            "{case}: {got} reports of {body} by {:?}, Tetragon {want}; Vigil's reports of this function:\n{}",
            who(t),
            seen.map(|b| b.to_string()).collect::<Vec<_>>().join("\n")
        );
        let (i, v) = events
            .iter()
            .zip(&vigil_bodies)
            .enumerate()
            .find(|(i, (e, eb))| !used.contains(i) && same(e, eb, t, t_body))
            .map(|(i, (e, _))| (i, e))
            .unwrap();
        used.insert(i);
        if after_exit(t) {
            let p = events::subject::process(v).unwrap();
            assert_eq!(p.tid, p.pid, "{case}: Vigil names the exiting process itself: {p:?}");
            assert!(!p.binary.is_empty(), "{case}: the exiting process is known: {p:?}");
            continue;
        }
        let (mut t, mut v) = (comparable(t), comparable(v));
        if let Some(body) = t.get_mut("process_kprobe") {
            without_run_specifics(body);
        }
        if let Some(body) = v.get_mut("process_kprobe") {
            without_run_specifics(body);
        }
        for d in field_diff(&t, &v).into_iter().filter(|d| !deliberate(d)) {
            diffs.push(format!("{case} {}: {d}", body["function_name"]));
        }
    }
    diffs.dedup();
    assert!(diffs.is_empty(), "fields that differ from Tetragon's:\n{}", diffs.join("\n"));
}

/// The kprobe policies in the 6.1 VM, with the recorded Tetragon cases' own
/// policies and workloads (tests/compat/fixtures/tetragon-vm-policies,
/// cases a, b and c): the seed's `process-exec-elf-begin` names the file
/// that really runs, the interpreter for a script, before the exec event;
/// a `security_file_permission` return probe names each access with its
/// mask and result; `tcp_connect`, `tcp_sendmsg` and `tcp_close` name a
/// local connection. Each recorded event has its counterpart, equal field
/// by field. Then a descriptor and a credential argument.
#[test]
fn kprobe_policies_in_a_vm_report_what_runs_and_what_is_read() {
    let Some(console) = run_vm(&policies_init(), "last-policies-console.log", &["/bin/bash"]) else { return };
    let (events, _, statuses, _) = parse_console(&console);
    let log: Vec<&str> = console.lines().filter(|l| l.starts_with("VIGIL-SENSOR-LOG")).collect();
    assert_eq!(statuses.get("su"), Some(&0), "log:\n{}", log.join("\n"));
    // A return probe's call whose entry was not kept is counted lost; the
    // sensor's own calls are skipped at entry and at return alike (the
    // return side once counted each of its export writes: 7,256 here).
    // Only a call entering between the return probe's attach and the
    // entry probe's could count.
    let stopped = log.iter().find(|l| l.contains("stopped stats=")).expect("the sensor's final counters");
    let returns_lost: u64 = stopped
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("returns_lost="))
        .and_then(|v| v.parse().ok())
        .expect("returns_lost in the final counters");
    assert!(returns_lost < 10, "returns lost: {returns_lost}; {stopped}");
    // The export is what the rest compares: every event must be in it.
    assert!(stopped.contains(" export_dropped=0 "), "the export file lost events; log:\n{}", log.join("\n"));
    // Some 15 MB of events in files of 4 MB: read across rotations, with
    // no line split or repeated (every line parsed; counts compared exactly).
    assert!(statuses.get("export-files").is_some_and(|n| *n >= 3), "export files: {:?}", statuses.get("export-files"));
    let kprobes: Vec<(usize, &proto::tetragon::ProcessKprobe)> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match &e.event {
            Some(Event::ProcessKprobe(k)) => Some((i, k)),
            _ => None,
        })
        .collect();
    let file_of = |k: &proto::tetragon::ProcessKprobe, i: usize| match k.args.get(i).and_then(|a| a.arg.as_ref()) {
        Some(proto::tetragon::kprobe_argument::Arg::FileArg(f)) => Some((f.path.clone(), f.permission.clone())),
        _ => None,
    };
    // The seed policy: for each marked exec, one event naming the file
    // that runs, before that exec's own event, from the same pid.
    for (args, file) in [("true marked-a1", "/bin/busybox-copy"), ("/tmp/marked-script.sh marked-a2", "/bin/busybox")] {
        let (exec_at, exec) = events
            .iter()
            .enumerate()
            .find_map(|(i, e)| match &e.event {
                Some(Event::ProcessExec(x)) => x.process.as_ref().filter(|p| p.arguments == args).map(|p| (i, p)),
                _ => None,
            })
            .unwrap_or_else(|| {
                let workload: Vec<&str> = events
                    .iter()
                    .filter_map(|e| match &e.event {
                        Some(Event::ProcessExec(x)) => x.process.as_ref().filter(|p| p.cwd == "/tmp"),
                        _ => None,
                    })
                    .map(|p| p.arguments.as_str())
                    .collect();
                panic!("no exec of {args}; the workload's: {workload:?}; log:\n{}", log.join("\n"))
            });
        let seed: Vec<_> = kprobes
            .iter()
            .filter(|(_, k)| k.function_name == "security_bprm_creds_from_file")
            .filter(|(_, k)| k.process.as_ref().and_then(|p| p.pid) == exec.pid)
            .collect();
        assert_eq!(seed.len(), 1, "{args}: one seed event for its pid");
        let (at, k) = seed[0];
        assert!(*at < exec_at, "{args}: the hook runs inside execve, before the exec event");
        assert_eq!(k.policy_name, "process-exec-elf-begin");
        assert_eq!(k.args.len(), 1, "the nop argument is left out");
        assert_eq!(file_of(k, 0), Some((file.to_owned(), "-rwxr-xr-x".to_owned())), "{args}");
        let process = k.process.as_ref().unwrap();
        // As Tetragon: the forked child before its exec, with its own
        // (fork-time) exec_id, and the same parent as the exec that follows.
        assert_ne!(process.exec_id, exec.exec_id, "{args}: the process is the image being replaced");
        assert_eq!(process.parent_exec_id, exec.parent_exec_id, "{args}: forked by the same shell");
    }
    // The permission policy: the shell's write of the marked file (mask 2)
    // and cat's reads of it (mask 4), each by its process.
    let cat = events
        .iter()
        .find_map(|e| match &e.event {
            Some(Event::ProcessExec(x)) => x.process.as_ref().filter(|p| p.arguments == "/tmp/marked-file"),
            _ => None,
        })
        .expect("the exec of cat");
    let marked: Vec<_> = kprobes
        .iter()
        .filter(|(_, k)| k.function_name == "security_file_permission")
        .filter(|(_, k)| file_of(k, 0).is_some_and(|(p, _)| p == "/tmp/marked-file"))
        .map(|(_, k)| k)
        .collect();
    let reads_by_cat = marked.iter().filter(|k| k.process.as_ref().is_some_and(|p| p.exec_id == cat.exec_id)).count();
    assert!(reads_by_cat >= 1, "cat's reads");
    // The sensor's own export writes are not reported.
    assert!(!kprobes.iter().any(|(_, k)| file_of(k, 0).is_some_and(|(p, _)| p == "/tmp/events.jsonl")));

    // Field by field against the recordings.
    // The recording of case a kept only the marked execs; every exec of
    // the workload shell is the same report from the same process.
    policy_events_equal_tetragons("a-exec-elf-begin", &events, false, &[]);
    policy_events_equal_tetragons("b-file-permission", &events, true, &[]);
    policy_events_equal_tetragons("c-tcp-connect", &events, true, &[]);
    // Case d whole, its selectors in the kernel: openat of marked paths,
    // and every system call of the marked binary from its first after the
    // exec (the execve's own entry came from the shell).
    policy_events_equal_tetragons("d-tracepoints", &events, true, &[]);
    // Case e: a Sigkill selector for one binary and a return-value
    // selector, in Tetragon's events exactly: the marked binary's open
    // reported with KPROBE_ACTION_SIGKILL and killed, the failed open
    // reported, the successful and the unmarked ones not.
    policy_events_equal_tetragons("e-openat-return-sigkill", &events, true, &[]);
    assert_eq!(statuses.get("e3"), Some(&137), "the marked binary was killed (128 + SIGKILL)");
    assert_eq!(statuses.get("e4"), Some(&0), "the unmarked open was not");
    let killed = events.iter().filter_map(|e| match &e.event {
        Some(Event::ProcessExit(x)) => x.process.as_ref().filter(|p| p.binary == "/tmp/killme/cat").map(|p| (p, x)),
        _ => None,
    });
    let killed: Vec<(&str, &str)> = killed.map(|(p, x)| (p.arguments.as_str(), x.signal.as_str())).collect();
    assert_eq!(killed, [("/tmp/marked-e-ok", "SIGKILL"), ("/tmp/unmarked", "")]);
    policy_events_equal_tetragons("f-uprobe-bash", &events, true, &[]);
    // Each uprobe event names its own symbol: main at each bash's start,
    // readline for each line `bash -i` read (and its end of input).
    let symbols = |args: &str| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match &e.event {
                Some(Event::ProcessUprobe(u)) if u.process.as_ref().is_some_and(|p| p.arguments == args) => {
                    Some(u.symbol.clone())
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(symbols("-c \"echo marked-f1\""), ["main"]);
    assert_eq!(symbols("-i"), ["main", "readline", "readline"]);

    // The connection: one tcp_connect, its 9 bytes through tcp_sendmsg on
    // the same socket (the same cookie), and its close.
    let sock_of = |k: &proto::tetragon::ProcessKprobe| match k.args.first().and_then(|a| a.arg.as_ref()) {
        Some(proto::tetragon::kprobe_argument::Arg::SockArg(s)) => Some(s.clone()),
        _ => None,
    };
    let calls = |f: &str| -> Vec<&proto::tetragon::ProcessKprobe> {
        kprobes.iter().filter(|(_, k)| k.function_name == f && k.policy_name == "connect").map(|(_, k)| *k).collect()
    };
    let connects = calls("tcp_connect");
    assert_eq!(connects.len(), 1, "one connect; log:\n{}", log.join("\n"));
    let s = sock_of(connects[0]).expect("a sock argument");
    assert!(s.sport > 0 && s.cookie != 0, "{s:?}");
    let sent: Vec<_> =
        calls("tcp_sendmsg").into_iter().filter(|k| sock_of(k).is_some_and(|x| x.cookie == s.cookie)).collect();
    assert_eq!(sent.len(), 1, "one send on the connection");
    assert!(
        calls("tcp_close").iter().any(|k| sock_of(k).is_some_and(|x| x.cookie == s.cookie)),
        "the client socket's close"
    );

    // Socket selectors in the kernel: the one connection passes every
    // filter of the first policy (port, network, protocol, unprivileged
    // port), and neither selector of the second.
    let selected: Vec<_> =
        kprobes.iter().filter(|(_, k)| k.policy_name == "connect-selected").map(|(_, k)| *k).collect();
    assert_eq!(selected.len(), 1, "the connection, selected; log:\n{}", log.join("\n"));
    assert_eq!(sock_of(selected[0]).map(|x| (x.dport, x.cookie)), Some((8765, s.cookie)));
    assert!(!kprobes.iter().any(|(_, k)| k.policy_name == "connect-excluded"), "no connection excluded passes");

    // A descriptor: the workload shell's write through its descriptor 1 to
    // the marked file, 9 bytes (and one to each of two near misses).
    let writes_of = |policy: &str| -> Vec<&proto::tetragon::ProcessKprobe> {
        kprobes
            .iter()
            .filter(|(_, k)| k.function_name == "__x64_sys_write" && k.policy_name == policy)
            .map(|(_, k)| *k)
            .collect()
    };
    let paths = |writes: &[&proto::tetragon::ProcessKprobe]| -> Vec<String> {
        writes.iter().filter_map(|k| file_of(k, 0)).map(|(p, _)| p).collect()
    };
    let writes = writes_of("fd-and-cred");
    assert_eq!(
        paths(&writes),
        ["/tmp/marked-fd-file", "/tmp/marked-fd-filex", "/tmp/marked-fe-file"],
        "one write to each marked file; log:\n{}",
        log.join("\n")
    );
    // Path filters in the kernel: only the write whose path has the
    // prefix and the suffix passed.
    assert_eq!(paths(&writes_of("fd-selected")), ["/tmp/marked-fd-file"]);
    let w = writes[0];
    assert_eq!(file_of(w, 0), Some(("/tmp/marked-fd-file".to_owned(), "-rw-r--r--".to_owned())));
    assert_eq!(w.args.get(1).and_then(|a| a.arg.clone()), Some(proto::tetragon::kprobe_argument::Arg::SizeArg(9)));
    assert_eq!(
        w.process.as_ref().map(|p| (p.binary.as_str(), p.arguments.as_str())),
        Some(("/bin/busybox", "/workload"))
    );
    // A credential: su's own change to uid 1000 (capabilities gone,
    // as for any root process that takes another uid), in the host's user
    // namespace.
    let creds: Vec<_> = kprobes
        .iter()
        .filter(|(_, k)| k.function_name == "commit_creds")
        .filter(|(_, k)| k.process.as_ref().is_some_and(|p| p.arguments.contains("marked-cred")))
        .filter_map(|(_, k)| match k.args.first().and_then(|a| a.arg.as_ref()) {
            Some(proto::tetragon::kprobe_argument::Arg::ProcessCredentialsArg(c)) => Some((k, c)),
            _ => None,
        })
        .collect();
    let ids = |c: &proto::tetragon::ProcessCredentials| {
        [c.uid, c.euid, c.suid, c.fsuid, c.gid, c.egid].map(|v| v.map(|v| v.value))
    };
    let to_1000: Vec<_> = creds.iter().filter(|(_, c)| ids(c)[0] == Some(1000)).collect();
    assert!(!to_1000.is_empty(), "su's commit_creds to uid 1000: {creds:?}");
    let (_, c) = to_1000[0];
    assert_eq!(ids(c), [Some(1000); 6]);
    let caps = c.caps.as_ref().expect("caps");
    assert!(caps.permitted.is_empty() && caps.effective.is_empty(), "{caps:?}");
    let ns = c.user_ns.as_ref().and_then(|u| u.ns.as_ref()).expect("user_ns");
    assert!(ns.is_host && ns.inum != 0, "{ns:?}");
    // Before the change, the same process had root's credentials and all
    // capabilities (a first commit_creds from the exec of su).
    assert!(
        creds.iter().any(|(_, c)| ids(c)[0] == Some(0) && c.caps.as_ref().is_some_and(|x| x.permitted.len() > 30)),
        "root's credentials with capabilities: {creds:?}"
    );

    // Stack traces: the marked sleep's call, with the kernel's stack down
    // to the system-call entry, and its own stack from its binary (alive
    // while the sensor read its map); addresses hidden, as by default.
    let stacked: Vec<_> = kprobes.iter().filter(|(_, k)| k.policy_name == "stacks").map(|(_, k)| *k).collect();
    assert_eq!(stacked.len(), 1, "the marked sleep's one call; log:\n{}", log.join("\n"));
    let k = stacked[0];
    assert_eq!(k.process.as_ref().map(|p| p.binary.as_str()), Some("/tmp/stackdir/sleep"));
    let kernel: Vec<&str> = k.kernel_stack_trace.iter().map(|e| e.symbol.as_str()).collect();
    assert!(kernel.first().is_some_and(|s| s.contains("nanosleep")), "the probed call first: {kernel:?}");
    assert!(kernel.contains(&"do_syscall_64"), "down to the system-call entry: {kernel:?}");
    let user = &k.user_stack_trace;
    assert!(!user.is_empty(), "the sleep's own stack");
    assert_eq!(user[0].module, "/tmp/stackdir/sleep", "{user:?}");
    assert!(
        k.kernel_stack_trace.iter().chain(user).all(|e| e.address == 0),
        "addresses are shown only with --expose-stack-addresses"
    );
    let stopped_stacks_lost = stopped.split_whitespace().find_map(|kv| kv.strip_prefix("stacks_lost="));
    assert_eq!(stopped_stacks_lost, Some("0"), "{stopped}");
}
