//! Kernel matrix: the sensor inside a VM running a different kernel
//! (Debian's stock 6.1 cloud kernel unless `VIGIL_KERNEL_IMAGE` names
//! another), with a scripted workload. Events must match what `/proc` said
//! inside the VM: binaries, arguments, cwd, exit codes, credentials and
//! namespaces. Struct layouts differ between 6.1 and this machine's kernel,
//! so this proves offsets come from the running kernel's BTF.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod vm;

use std::collections::HashMap;
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

#[test]
fn sensor_in_a_vm_with_another_kernel_matches_proc() {
    if let Some(reason) = common_skip() {
        skip_or_fail(&reason);
        return;
    }
    let kernel = match vm::kernel() {
        Ok(k) => k,
        Err(e) => return skip_or_fail(&format!("no kernel image: {e}")),
    };
    let init = include_str!("vm/init.sh");
    let initrd = vm::initramfs(std::path::Path::new(env!("CARGO_BIN_EXE_vigil-sensor")), init).expect("initramfs");
    let console = vm::boot(&kernel, &initrd, Duration::from_secs(600)).expect("VM run");
    let _ = std::fs::remove_dir_all(initrd.parent().unwrap());
    // Kept for reading after a failure.
    let _ = std::fs::write(vm::cache_dir().join("last-console.log"), &console);
    assert!(console.contains("VIGIL-DONE"), "workload did not finish; console:\n{console}");
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
