//! Privileged execution (root, real BPF): every event's capabilities,
//! credentials, binary properties and namespace inodes are compared with
//! `/proc/<pid>/status` and `/proc/<pid>/ns/*` read from the live process.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Collector, Sensor, exec_of, nonce, pid};
use events::compact::{CompactOptions, render};
use node_sensor::privileges::{NS_NAMES, cap_list, creds_from_status};
use proto::tetragon::{
    CapFilter, CapFilterSet, CapabilitiesType, Filter, GetEventsRequest, Process, ProcessPrivilegesChanged,
};

const FLAGS: &[&str] = &["--enable-process-cred", "--enable-process-ns"];

/// What /proc says about a live process.
struct Live {
    status: String,
    ns: Vec<(String, u32)>,
}

fn snapshot(pid: u32) -> Live {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ns = NS_NAMES
        .iter()
        .filter_map(|n| std::fs::metadata(format!("/proc/{pid}/ns/{n}")).ok().map(|m| (n.to_string(), m.ino() as u32)))
        .collect();
    Live { status, ns }
}

/// Asserts the event's credentials, capabilities and namespaces equal /proc's.
fn assert_matches_proc(p: &Process, live: &Live) {
    let (ids, creds) = creds_from_status(&live.status, 0).expect("status ids");
    let pc = p.process_credentials.as_ref().expect("process_credentials");
    let v = |x: Option<proto::wkt::UInt32Value>| x.map(|v| v.value);
    assert_eq!(v(pc.uid), Some(ids.uid));
    assert_eq!(v(pc.euid), Some(ids.euid));
    assert_eq!(v(pc.suid), Some(creds.suid));
    assert_eq!(v(pc.fsuid), Some(creds.fsuid));
    assert_eq!(v(pc.gid), Some(ids.gid));
    assert_eq!(v(pc.egid), Some(ids.egid));
    assert_eq!(v(pc.sgid), Some(creds.sgid));
    assert_eq!(v(pc.fsgid), Some(creds.fsgid));
    let cap = p.cap.as_ref().expect("cap");
    assert_eq!(cap.permitted, cap_list(creds.cap_permitted), "permitted");
    assert_eq!(cap.effective, cap_list(creds.cap_effective), "effective");
    assert_eq!(cap.inheritable, cap_list(creds.cap_inheritable), "inheritable");
    for (name, inum) in &live.ns {
        assert_eq!(events::subject::namespace(p, name).map(|n| n.inum), Some(*inum), "ns {name}");
    }
}

/// Starts `cmd`, which ends by executing `binary` with the single argument
/// `mark`; waits for that exec event, snapshots /proc of the live process,
/// and returns both. (Wrappers such as setpriv or unshare carry the marker
/// too, but not as their only argument.)
async fn run_and_capture(c: &mut Collector, mut cmd: Command, binary: &str, mark: &str) -> (Process, Live, Child) {
    let child = cmd.stdout(Stdio::null()).spawn().unwrap();
    let target = |p: &&Process| p.arguments == mark && p.binary == binary;
    let found = c.until(Duration::from_secs(10), |evs| evs.iter().filter_map(exec_of).any(|p| target(&p))).await;
    assert!(found, "no exec event for {binary} {mark}");
    let p = c.events.iter().filter_map(exec_of).find(target).unwrap().clone();
    let live = snapshot(pid(&p));
    (p, live, child)
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reduced_capabilities_match_proc() {
    require_kernel!();
    let sensor = Sensor::start(FLAGS).await;
    let mut c = Collector::subscribe(&sensor, GetEventsRequest::default()).await;
    let mark = format!("63.{}", nonce());
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set=-sys_admin,-net_raw,-sys_module", "--inh-caps=+net_bind_service", "/bin/sleep", &mark]);
    let (p, live, child) = run_and_capture(&mut c, cmd, "/bin/sleep", &mark).await;
    stop(child);
    assert_eq!(p.binary, "/bin/sleep");
    assert_matches_proc(&p, &live);
    let eff = &p.cap.as_ref().unwrap().effective;
    assert!(!eff.contains(&(CapabilitiesType::CapSysAdmin as i32)));
    assert!(eff.contains(&(CapabilitiesType::CapChown as i32)));
    assert!(p.cap.as_ref().unwrap().inheritable.contains(&(CapabilitiesType::CapNetBindService as i32)));
    // No CAP_SYS_ADMIN: no trailer in compact output.
    let line = render(&exec_event(&c, &p), CompactOptions::default()).unwrap();
    assert!(!line.contains("🛑"), "{line}");
}

fn exec_event(c: &Collector, p: &Process) -> proto::tetragon::GetEventsResponse {
    c.events.iter().find(|e| exec_of(e).is_some_and(|x| x.exec_id == p.exec_id)).unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_root_user_has_no_capabilities() {
    require_kernel!();
    let sensor = Sensor::start(FLAGS).await;
    let mut c = Collector::subscribe(&sensor, GetEventsRequest::default()).await;
    let mark = format!("64.{}", nonce());
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=1000", "--regid=1000", "--clear-groups", "/bin/sleep", &mark]);
    let (p, live, child) = run_and_capture(&mut c, cmd, "/bin/sleep", &mark).await;
    stop(child);
    assert_matches_proc(&p, &live);
    assert_eq!(p.uid.map(|u| u.value), Some(1000));
    assert!(p.cap.as_ref().unwrap().effective.is_empty());
    assert!(p.binary_properties.is_none(), "nothing raised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_namespaces_are_not_the_hosts() {
    require_kernel!();
    let sensor = Sensor::start(FLAGS).await;
    let mut c = Collector::subscribe(&sensor, GetEventsRequest::default()).await;
    let mark = format!("65.{}", nonce());
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--net", "--uts", "--user", "--map-root-user", "--fork", "/bin/sleep", &mark]);
    let (p, live, child) = run_and_capture(&mut c, cmd, "/bin/sleep", &mark).await;
    assert_matches_proc(&p, &live);
    stop(child);
    for name in ["net", "uts", "pid", "user"] {
        assert!(!events::subject::namespace(&p, name).unwrap().is_host, "{name} must not be the host's");
    }
    for name in ["ipc", "cgroup"] {
        assert!(events::subject::namespace(&p, name).unwrap().is_host, "{name} is still the host's");
    }
    let user_ns = p.process_credentials.as_ref().unwrap().user_ns.as_ref().expect("user_ns of a child namespace");
    assert_eq!(user_ns.level.map(|l| l.value), Some(1));
    assert_eq!(user_ns.uid.map(|u| u.value), Some(0), "owner: root created it");

    // The same events through the --host-ns filter: the unshared sleep is
    // neither in the host's net nor pid namespace.
    let mut filtered = Collector::subscribe(
        &sensor,
        GetEventsRequest {
            allow_list: vec![Filter {
                host_namespaces: vec!["net".into(), "pid".into()],
                arguments_regex: vec![format!("^6[567]\\.{}$", &mark[3..])],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .await;
    let host_mark = format!("66.{}", &mark[3..]);
    let host_child = Command::new("/bin/sleep").arg(&host_mark).spawn().unwrap();
    let again = Command::new("unshare")
        .args(["--net", "--pid", "--fork", "/bin/sleep", &format!("65.{}", &mark[3..])])
        .spawn()
        .unwrap();
    assert!(
        filtered
            .until(Duration::from_secs(10), |evs| evs.iter().filter_map(exec_of).any(|p| p.arguments == host_mark))
            .await
    );
    stop(host_child);
    stop(again);
    // A closing host process: once its exec is here, the unshared one's,
    // which came before it, would be too.
    let closing = format!("67.{}", &mark[3..]);
    assert!(Command::new("/bin/true").arg(&closing).status().unwrap().success());
    assert!(
        filtered
            .until(Duration::from_secs(10), |evs| evs.iter().filter_map(exec_of).any(|p| p.arguments == closing))
            .await
    );
    let args: Vec<_> = filtered.events.iter().filter_map(exec_of).map(|p| p.arguments.clone()).collect();
    assert_eq!(args, vec![host_mark, closing], "only the host-namespace processes pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setuid_root_binary_raises_privileges() {
    require_kernel!();
    let n = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-suid-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let suid = dir.join("sleep");
    test_support::copy_executable("/bin/sleep", &suid);
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();

    let sensor = Sensor::start(FLAGS).await;
    let mut c = Collector::subscribe(&sensor, GetEventsRequest::default()).await;
    let mark = format!("67.{n}");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&suid).arg(&mark);
    let (p, live, child) = run_and_capture(&mut c, cmd, &suid.to_string_lossy(), &mark).await;
    stop(child);
    let _ = std::fs::remove_dir_all(&dir);
    assert_matches_proc(&p, &live);
    // `uid` is the effective uid, as `ps` and Tetragon show it; the real
    // one stays in process_credentials.
    assert_eq!(p.uid.map(|u| u.value), Some(0));
    let creds = p.process_credentials.as_ref().unwrap();
    assert_eq!((creds.uid.map(|u| u.value), creds.euid.map(|u| u.value)), (Some(65534), Some(0)));
    let b = p.binary_properties.as_ref().expect("binary_properties");
    assert_eq!(b.setuid.map(|v| v.value), Some(0));
    assert_eq!(b.privileges_changed, vec![ProcessPrivilegesChanged::PrivilegesRaisedExecFileSetuid as i32]);
    assert_eq!(b.file, None, "the file is named only for a binary without links");
}

/// Runs `/proc/self/fd/<fd>` (an `fexecve`) with `mark` as its argument.
fn exec_fd(fd: i32, mark: &str) {
    let status = Command::new(format!("/proc/self/fd/{fd}")).arg(mark).status().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_memfd_binaries_are_named_by_inode() {
    require_kernel!();
    let n = nonce();
    let sensor = Sensor::start(FLAGS).await;
    let mut c = Collector::subscribe(&sensor, GetEventsRequest::default()).await;
    let true_bin = std::fs::read("/bin/true").unwrap();

    // A binary deleted before it runs: run through its open descriptor.
    let path = std::env::temp_dir().join(format!("vigil-deleted-{n}"));
    test_support::copy_executable("/bin/true", &path);
    let deleted = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let deleted_ino = deleted.metadata().unwrap().ino();
    let deleted_mark = format!("vigil-deleted-{n}");
    exec_fd(std::os::fd::AsRawFd::as_raw_fd(&deleted), &deleted_mark);

    // A memfd: never had a name in any directory.
    // SAFETY: a valid NUL-terminated name; the returned fd is owned below.
    let memfd = unsafe { libc::memfd_create(c"vigil-memfd".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(memfd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: memfd_create returned a fresh descriptor nothing else owns.
    let memfd = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(memfd) };
    std::io::Write::write_all(&mut &memfd, &true_bin).unwrap();
    let memfd_ino = memfd.metadata().unwrap().ino();
    let memfd_mark = format!("vigil-memfd-{n}");
    exec_fd(std::os::fd::AsRawFd::as_raw_fd(&memfd), &memfd_mark);

    // And an ordinary binary, for contrast.
    let plain_mark = format!("vigil-plain-{n}");
    Command::new("/bin/true").arg(&plain_mark).status().unwrap();

    let marks = [&deleted_mark, &memfd_mark, &plain_mark];
    let all_seen = |evs: &[proto::tetragon::GetEventsResponse]| {
        marks.iter().all(|m| evs.iter().filter_map(exec_of).any(|p| &&p.arguments == m))
    };
    assert!(c.until(Duration::from_secs(10), all_seen).await, "missing exec events; log:\n{}", sensor.log());
    let exec = |mark: &str| c.events.iter().filter_map(exec_of).find(|p| p.arguments == mark).unwrap().clone();
    for (mark, ino) in [(&deleted_mark, deleted_ino), (&memfd_mark, memfd_ino)] {
        let p = exec(mark);
        assert!(p.binary.starts_with("/proc/self/fd/"), "{mark}: binary {}", p.binary);
        let b = p.binary_properties.as_ref().unwrap_or_else(|| panic!("{mark}: no binary_properties"));
        let file = b.file.as_ref().unwrap_or_else(|| panic!("{mark}: no file"));
        let inode = file.inode.as_ref().unwrap();
        assert_eq!((inode.number, inode.links.map(|l| l.value)), (ino, Some(0)), "{mark}");
        assert_eq!(file.path, "", "{mark}: Tetragon leaves the path empty");
        assert!(b.privileges_changed.is_empty() && b.setuid.is_none() && b.setgid.is_none(), "{mark}: {b:?}");
    }
    assert_eq!(exec(&plain_mark).binary_properties, None, "an ordinary exec has none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_sys_admin_gets_the_compact_trailer_and_the_cap_filter() {
    require_kernel!();
    let sensor = Sensor::start(FLAGS).await;
    let mark = nonce();
    let admin_filter = GetEventsRequest {
        allow_list: vec![Filter {
            capabilities: Some(CapFilter {
                effective: Some(CapFilterSet { any: vec![CapabilitiesType::CapSysAdmin as i32], ..Default::default() }),
                ..Default::default()
            }),
            arguments_regex: vec![format!("^vigil-cap-.*-{mark}$")],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut c = Collector::subscribe(&sensor, admin_filter).await;
    let with = format!("vigil-cap-admin-{mark}");
    let without = format!("vigil-cap-user-{mark}");
    Command::new("/bin/true").arg(&with).status().unwrap();
    Command::new("setpriv").args(["--bounding-set=-sys_admin", "/bin/true", &without]).status().unwrap();
    Command::new("/bin/echo").arg(&with).stdout(Stdio::null()).status().unwrap();
    assert!(
        c.until(Duration::from_secs(10), |evs| evs.iter().filter_map(exec_of).filter(|p| p.arguments == with).count()
            == 2)
            .await
    );
    let args: Vec<_> = c.events.iter().filter_map(exec_of).map(|p| p.arguments.clone()).collect();
    assert!(!args.contains(&without), "the capability filter let a process without CAP_SYS_ADMIN through");
    let line = render(&c.events[0], CompactOptions::default()).unwrap();
    assert!(line.ends_with(" 🛑 CAP_SYS_ADMIN"), "{line}");
    // Padded as tetra pads it: the line up to the trailer counts bytes to
    // column 120, then the trailer (16 characters, 19 bytes) is right-aligned
    // in the remaining width counted in characters: 120 + 1 - 16 + 19 bytes.
    assert_eq!(line.len(), 124);
}
