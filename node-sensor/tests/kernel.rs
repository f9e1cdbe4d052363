//! Kernel tests: the real sensor, real BPF on this machine's kernel, real
//! processes; every assertion is about content (binaries, arguments, cwd,
//! ids, parents, exit codes, counts per marker).
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::{Collector, Sensor, delivered_and_lost, exec_of, exit_of, nonce, parent_of, pid};
use proto::tetragon::{EventType, Filter, GetEventsRequest};

fn loginuid() -> u32 {
    std::fs::read_to_string("/proc/self/loginuid").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(u32::MAX)
}

fn all_events() -> GetEventsRequest {
    GetEventsRequest::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_chain_as_uid_1000_with_cwd_parents_and_exit_codes() {
    require_kernel!();
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, all_events()).await;
    let mark = format!("vigil-chain-{}", nonce());
    let status = Command::new("/bin/sh")
        .args(["-c", "cd /tmp && /usr/bin/id -u; exit 3", &mark])
        .uid(1000)
        .gid(1000)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));

    let sh_args = format!("-c \"cd /tmp && /usr/bin/id -u; exit 3\" {mark}");
    let done = |evs: &[proto::tetragon::GetEventsResponse]| {
        evs.iter().filter_map(exit_of).any(|(p, _, _)| p.arguments == sh_args)
    };
    assert!(c.until(Duration::from_secs(10), done).await, "no exit for sh; log:\n{}", sensor.log());

    let sh_exec = c.events.iter().find(|e| exec_of(e).is_some_and(|p| p.arguments == sh_args)).expect("sh exec");
    let sh = exec_of(sh_exec).unwrap();
    assert_eq!(sh.binary, "/bin/sh");
    assert_eq!(sh.uid.map(|u| u.value), Some(1000));
    assert_eq!(sh.auid.map(|u| u.value), Some(loginuid()));
    assert_eq!(sh.cwd, std::env::current_dir().unwrap().to_string_lossy());
    assert_eq!(sh.flags, "execve clone");
    let sh_parent = parent_of(sh_exec).expect("sh parent");
    assert_eq!(pid(sh_parent), std::process::id(), "sh's parent is this test process");
    assert_eq!(sh.parent_exec_id, sh_parent.exec_id);

    let id_exec = c
        .events
        .iter()
        .find(|e| exec_of(e).is_some_and(|p| p.parent_exec_id == sh.exec_id))
        .expect("id exec whose parent is sh");
    let id = exec_of(id_exec).unwrap();
    assert_eq!(id.binary, "/usr/bin/id");
    assert_eq!(id.arguments, "-u");
    assert_eq!(id.cwd, "/tmp");
    assert_eq!(id.uid.map(|u| u.value), Some(1000));
    assert_eq!(id.flags, "execve clone");
    assert_eq!(parent_of(id_exec).unwrap().binary, "/bin/sh");

    let exits: Vec<_> = c
        .events
        .iter()
        .filter_map(exit_of)
        .filter(|(p, _, _)| p.exec_id == id.exec_id || p.exec_id == sh.exec_id)
        .collect();
    assert_eq!(exits.len(), 2, "one exit each");
    let id_exit = exits.iter().find(|(p, _, _)| p.exec_id == id.exec_id).unwrap();
    assert_eq!((id_exit.1, id_exit.2), (0, ""));
    let sh_exit = exits.iter().find(|(p, _, _)| p.exec_id == sh.exec_id).unwrap();
    assert_eq!((sh_exit.1, sh_exit.2), (3, ""));
    assert_eq!(sh_exit.0.binary, "/bin/sh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_is_reported_as_the_signal() {
    require_kernel!();
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, all_events()).await;
    let arg = format!("60.{}", nonce());
    let mut child = Command::new("/bin/sleep").arg(&arg).spawn().unwrap();
    let child_pid = child.id();
    // Let the exec land before killing it.
    assert!(c.until(Duration::from_secs(10), |evs| evs.iter().filter_map(exec_of).any(|p| p.arguments == arg)).await);
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        c.until(Duration::from_secs(10), |evs| evs.iter().filter_map(exit_of).any(|(p, _, _)| p.arguments == arg))
            .await
    );
    let (p, status, signal) = c.events.iter().filter_map(exit_of).find(|(p, _, _)| p.arguments == arg).unwrap();
    assert_eq!(signal, "SIGKILL");
    assert_eq!(status, 0);
    assert_eq!(pid(p), child_pid);
    assert_eq!(p.binary, "/bin/sleep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_started_before_the_sensor_carries_procfs() {
    require_kernel!();
    let arg = format!("61.{}", nonce());
    let mut child = Command::new("/bin/sleep").arg(&arg).current_dir("/").spawn().unwrap();
    let child_pid = child.id();
    // Started once it runs /bin/sleep (not still the forked test binary).
    let exe = std::fs::canonicalize("/bin/sleep").unwrap();
    while std::fs::read_link(format!("/proc/{child_pid}/exe")).ok() != Some(exe.clone()) {
        std::thread::yield_now();
    }
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, all_events()).await;
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        c.until(Duration::from_secs(10), |evs| evs.iter().filter_map(exit_of).any(|(p, _, _)| pid(p) == child_pid))
            .await
    );
    let (p, _, signal) = c.events.iter().filter_map(exit_of).find(|(p, _, _)| pid(p) == child_pid).unwrap();
    assert_eq!(p.flags, "procFS rootcwd");
    assert_eq!(p.arguments, arg);
    assert_eq!(p.cwd, "/");
    assert_eq!(signal, "SIGKILL");
    // The exe link resolves symlinks: /bin is /usr/bin on merged-/usr systems.
    let exe = std::fs::canonicalize("/bin/sleep").unwrap();
    assert_eq!(p.binary, exe.to_string_lossy());
    // The start-up walk reported it as an exec, with the same exec_id.
    let export = std::fs::read_to_string(&sensor.export).unwrap();
    let seeded: Vec<_> = export
        .lines()
        .filter_map(|l| proto::json::from_json_line(l).ok())
        .filter(|e| exec_of(e).is_some_and(|x| pid(x) == child_pid))
        .collect();
    assert_eq!(seeded.len(), 1);
    assert_eq!(exec_of(&seeded[0]).unwrap().exec_id, p.exec_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_cgroup_gives_the_container_id() {
    require_kernel!();
    let Some(root) = test_support::cgroup2_root() else {
        assert!(std::env::var_os("VIGIL_REQUIRE_ALL").is_none(), "no cgroup2 hierarchy mounted");
        eprintln!("SKIP kubelet_cgroup_gives_the_container_id: no cgroup2 hierarchy mounted");
        return;
    };
    let n = nonce();
    let container = format!("{:0>64}", format!("{n}abcdef")).chars().rev().collect::<String>();
    let pod_dir =
        format!("{root}/kubepods/besteffort/pod4f5e3a2b-1c2d-4e5f-8a9b-{:0>12}", &n[n.len().saturating_sub(12)..]);
    let dir = format!("{pod_dir}/{container}");
    std::fs::create_dir_all(&dir).unwrap();
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, all_events()).await;
    let mark = format!("vigil-cgroup-{n}");
    let script = format!("echo $$ > {dir}/cgroup.procs && /bin/echo {mark}");
    let status = Command::new("/bin/sh").args(["-c", &script]).stdout(std::process::Stdio::null()).status().unwrap();
    assert!(status.success());
    let found =
        c.until(Duration::from_secs(10), |evs| evs.iter().filter_map(exec_of).any(|p| p.arguments == mark)).await;
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_dir(&pod_dir);
    assert!(found, "no exec for {mark}");
    let echo = c.events.iter().filter_map(exec_of).find(|p| p.arguments == mark).unwrap();
    assert_eq!(echo.docker, &container[..31]);
    assert_eq!(echo.binary, "/bin/echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_arguments_are_truncated_and_flagged() {
    require_kernel!();
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, all_events()).await;
    let mark = format!("vigil-long-{}", nonce());
    let long: Vec<String> = (0..200).map(|i| format!("{mark}-{i:04}")).collect();
    Command::new("/bin/true").args(&long).status().unwrap();
    assert!(
        c.until(Duration::from_secs(10), |evs| evs.iter().filter_map(exec_of).any(|p| p.arguments.starts_with(&mark)))
            .await
    );
    let p = c.events.iter().filter_map(exec_of).find(|p| p.arguments.starts_with(&mark)).unwrap();
    assert!(p.flags.split(' ').any(|f| f == "truncArgs"), "flags {:?}", p.flags);
    let full = long.join(" ");
    assert!(full.starts_with(&p.arguments), "a prefix of the real arguments");
    // argv[0] is skipped in the kernel: all 1024 bytes read are arguments.
    assert_eq!(p.arguments.len(), node_sensor_common::ARGS_SIZE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_2000_execs_arrives_complete() {
    require_kernel!();
    let sensor = Sensor::start(&[]).await;
    let mark = format!("vigil-burst-{}", nonce());
    let req = GetEventsRequest {
        allow_list: vec![Filter { arguments_regex: vec![format!("^{mark}-")], ..Default::default() }],
        ..Default::default()
    };
    let mut c = Collector::subscribe(&sensor, req).await;
    let script = format!("i=0; while [ $i -lt 2000 ]; do /bin/true {mark}-$i; i=$((i+1)); done");
    assert!(Command::new("/bin/sh").args(["-c", &script]).status().unwrap().success());
    let complete = |evs: &[proto::tetragon::GetEventsResponse]| evs.len() >= 4000;
    let ok = c.until(Duration::from_secs(60), complete).await;
    let execs: std::collections::BTreeSet<_> =
        c.events.iter().filter_map(exec_of).map(|p| p.arguments.clone()).collect();
    let exits = c.events.iter().filter_map(exit_of).count();
    let notices = c.events.iter().filter(|e| e.event_type() == EventType::RateLimitInfo).count();
    assert!(ok, "got {} execs, {exits} exits, {notices} loss notices; log:\n{}", execs.len(), sensor.log());
    assert_eq!(execs.len(), 2000, "each marker exactly once");
    assert_eq!(exits, 2000);
    assert_eq!(notices, 0);
    for i in [0, 999, 1999] {
        assert!(execs.contains(&format!("{mark}-{i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_gets_an_exact_loss_notice_and_others_lose_nothing() {
    require_kernel!();
    let sensor = Sensor::start(&["--subscriber-queue-size", "256"]).await;
    let mark = format!("vigil-slow-{}", nonce());
    let req = GetEventsRequest {
        allow_list: vec![Filter { arguments_regex: vec![format!("^{mark}-")], ..Default::default() }],
        ..Default::default()
    };
    let mut fast = Collector::subscribe(&sensor, req.clone()).await;
    // The slow client subscribes and then reads nothing while the workload runs.
    let mut slow = Collector::subscribe_slow(&sensor, req).await;
    let fast_reader = tokio::spawn(async move {
        let ok = fast.until(Duration::from_secs(60), |evs| evs.len() >= 4000).await;
        (ok, fast.events)
    });
    let script = format!("i=0; while [ $i -lt 2000 ]; do /bin/true {mark}-$i; i=$((i+1)); done");
    assert!(Command::new("/bin/sh").args(["-c", &script]).status().unwrap().success());
    let (fast_ok, fast_events) = fast_reader.await.unwrap();
    assert!(fast_ok, "fast subscriber got {} of 4000", fast_events.len());
    assert!(fast_events.iter().all(|e| e.event_type() != EventType::RateLimitInfo), "fast subscriber lost events");

    // Now drain the slow one: what it got plus what it was told it lost is
    // exactly what happened.
    let drained = |evs: &[proto::tetragon::GetEventsResponse]| {
        let (got, lost) = delivered_and_lost(evs);
        got + lost >= 4000
    };
    assert!(slow.until(Duration::from_secs(20), drained).await, "slow subscriber accounting incomplete");
    let (got, lost) = delivered_and_lost(&slow.events);
    let notices = slow.events.iter().filter(|e| e.event_type() == EventType::RateLimitInfo).count();
    assert!(lost > 0, "the slow subscriber should have lost events");
    assert_eq!(got + lost, 4000, "got {got}, told lost {lost} in {notices} notices");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ancestors_reach_init_and_serve_the_ancestor_filter() {
    require_kernel!();
    let sensor = Sensor::start(&["--enable-ancestors", "base"]).await;
    // A shell under a unique path, so a filter can name it.
    let dir = std::env::temp_dir().join(format!("vigil-anc-{}", nonce()));
    std::fs::create_dir_all(&dir).unwrap();
    let outer = dir.join("outer-sh");
    test_support::copy_executable("/bin/sh", &outer);
    let outer_path = outer.display().to_string();
    let by_grandparent = GetEventsRequest {
        allow_list: vec![Filter {
            ancestor_binary_regex: vec![format!("^{}$", regex::escape(&outer_path))],
            event_set: vec![EventType::ProcessExec as i32],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut only = Collector::subscribe(&sensor, by_grandparent).await;
    let mut all = Collector::subscribe(&sensor, all_events()).await;
    let mark = format!("vigil-anc-{}", nonce());
    // Neither command is a shell's last, so each runs in a forked child:
    // true ← sh ← outer-sh ← this test ← … ← init.
    let script = format!("/bin/sh -c '/bin/true {mark}; :'; :");
    assert!(Command::new(&outer).args(["-c", &script]).status().unwrap().success());

    let is_true = |p: &proto::tetragon::Process| p.binary == "/bin/true" && p.arguments == mark;
    let seen = |evs: &[proto::tetragon::GetEventsResponse]| evs.iter().filter_map(exec_of).any(is_true);
    assert!(all.until(Duration::from_secs(10), seen).await, "no exec of true; log:\n{}", sensor.log());
    let event = all.events.iter().find(|e| exec_of(e).is_some_and(is_true)).unwrap();
    let Some(proto::tetragon::get_events_response::Event::ProcessExec(exec)) = &event.event else { unreachable!() };
    assert_eq!(parent_of(event).unwrap().binary, "/bin/sh");
    let names: Vec<&str> = exec.ancestors.iter().map(|a| a.binary.as_str()).collect();
    assert_eq!(names.first(), Some(&outer_path.as_str()), "the grandparent comes first: {names:?}");
    assert_eq!(exec.ancestors.get(1).map(pid), Some(std::process::id()), "then this test process: {names:?}");
    let mut expected = parent_of(event).unwrap().parent_exec_id.clone();
    for a in &exec.ancestors {
        assert_eq!(a.exec_id, expected, "a continuous chain: {names:?}");
        expected = a.parent_exec_id.clone();
    }
    assert_eq!(exec.ancestors.last().map(pid), Some(1), "up to init: {names:?}");

    // The filter matched through the ancestors: true (grandchild) and the
    // inner sh (child) of outer-sh, but not outer-sh itself.
    assert!(only.until(Duration::from_secs(10), seen).await, "ancestor filter did not pass true's exec");
    let passed: Vec<String> = only.events.iter().filter_map(exec_of).map(|p| p.binary.clone()).collect();
    assert!(!passed.contains(&outer_path), "outer-sh is no ancestor of itself: {passed:?}");
    assert!(passed.iter().all(|b| b == "/bin/sh" || b == "/bin/true"), "{passed:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `base64("node:ktime:pid")` → (ktime, pid).
fn exec_id_parts(exec_id: &str) -> (u64, u32) {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.decode(exec_id).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let mut parts = text.rsplitn(3, ':');
    let pid = parts.next().unwrap().parse().unwrap();
    let ktime = parts.next().unwrap().parse().unwrap();
    (ktime, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_without_fork_gets_the_time_of_its_own_exec() {
    require_kernel!();
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, all_events()).await;
    let mark = format!("vigil-exectime-{}", nonce());
    // The shell waits for a line, then replaces itself with /bin/true.
    let mut sh = Command::new("/bin/sh")
        .args(["-c", "read line; exec /bin/true \"$0\"", &mark])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Joined as Tetragon joins them: quoted for the space, inner quotes kept.
    let sh_args = format!("-c \"read line; exec /bin/true \"$0\"\" {mark}");
    assert!(
        c.until(Duration::from_secs(10), |evs| evs.iter().filter_map(exec_of).any(|p| p.arguments == sh_args)).await,
        "no sh exec; log:\n{}",
        sensor.log()
    );
    let released = proto::Timestamp::now();
    std::io::Write::write_all(sh.stdin.as_mut().unwrap(), b"go\n").unwrap();
    assert!(sh.wait().unwrap().success());
    assert!(
        c.until(Duration::from_secs(10), |evs| evs.iter().filter_map(exit_of).any(|(p, _, _)| p.arguments == mark))
            .await
    );
    let sh_image = c.events.iter().filter_map(exec_of).find(|p| p.arguments == sh_args).unwrap();
    let true_image = c.events.iter().filter_map(exec_of).find(|p| p.arguments == mark).unwrap();
    assert_eq!(true_image.flags, "execve", "an exec without fork");
    assert_eq!(true_image.parent_exec_id, sh_image.exec_id, "the previous image is the parent");
    let ns = |p: &proto::tetragon::Process| p.start_time.unwrap().unix_nanos();
    assert!(ns(sh_image) < released.unix_nanos(), "sh started before the line was written");
    assert!(
        ns(true_image) >= released.unix_nanos(),
        "the second image's start_time is its exec's, after the line was written (not the fork's)"
    );
    // The exec_id names the same time: one per image.
    let (sh_ktime, sh_pid) = exec_id_parts(&sh_image.exec_id);
    let (true_ktime, true_pid) = exec_id_parts(&true_image.exec_id);
    assert_eq!(sh_pid, true_pid);
    assert_eq!(
        i128::from(true_ktime - sh_ktime),
        ns(true_image) - ns(sh_image),
        "exec_id times and start times advance alike"
    );
    let (exit, status, _) = c.events.iter().filter_map(exit_of).find(|(p, _, _)| p.arguments == mark).unwrap();
    assert_eq!((exit.exec_id.as_str(), status), (true_image.exec_id.as_str(), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_binary_paths_are_cleaned() {
    require_kernel!();
    let n = nonce();
    let dir = std::env::temp_dir().join(format!("vigil-rel-{n}"));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    test_support::copy_executable("/bin/true", dir.join("rel-true"));
    let sensor = Sensor::start(&[]).await;
    let mut c = Collector::subscribe(&sensor, all_events()).await;
    let mark = format!("vigil-rel-{n}");
    let script = format!("cd {}/sub && ../rel-true {mark} && ./../sub/../rel-true {mark}", dir.display());
    assert!(Command::new("/bin/sh").args(["-c", &script]).status().unwrap().success());
    let found = |evs: &[proto::tetragon::GetEventsResponse]| {
        evs.iter().filter_map(exec_of).filter(|p| p.arguments == mark).count() == 2
    };
    assert!(c.until(Duration::from_secs(10), found).await, "log:\n{}", sensor.log());
    let _ = std::fs::remove_dir_all(&dir);
    for p in c.events.iter().filter_map(exec_of).filter(|p| p.arguments == mark) {
        assert_eq!(p.binary, dir.join("rel-true").to_string_lossy(), "cleaned, as Tetragon joins paths");
        assert_eq!(p.cwd, dir.join("sub").to_string_lossy());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pid_namespace_starts_an_init_tree() {
    require_kernel!();
    let sensor = Sensor::start(&[]).await;
    let mark = format!("vigil-pidns-{}", nonce());
    let mut all = Collector::subscribe(&sensor, all_events()).await;
    let in_tree = GetEventsRequest {
        allow_list: vec![Filter {
            in_init_tree: Some(true.into()),
            arguments_regex: vec![format!("{mark}")],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut only_tree = Collector::subscribe(&sensor, in_tree).await;
    // unshare forks the namespace's init (pid 1 there), which runs sh,
    // which runs true: both in the init tree; unshare itself is not.
    let status = Command::new("unshare")
        .args(["--pid", "--fork", "/bin/sh", "-c", &format!("/bin/true {mark}; exit 0"), &mark])
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let sh_args = format!("-c \"/bin/true {mark}; exit 0\" {mark}");
    let unshare_args = format!("--pid --fork /bin/sh {sh_args}");
    let done = |evs: &[proto::tetragon::GetEventsResponse]| {
        evs.iter().filter_map(exit_of).any(|(p, _, _)| p.arguments == unshare_args)
    };
    assert!(all.until(Duration::from_secs(10), done).await, "log:\n{}", sensor.log());
    let exec = |args: &str| all.events.iter().filter_map(exec_of).find(|p| p.arguments == args).unwrap().clone();
    let tree = |p: &proto::tetragon::Process| p.in_init_tree.map(|b| b.value);
    let unshare = exec(&unshare_args);
    let sh = exec(&sh_args);
    let t = exec(&mark);
    assert_eq!(tree(&unshare), Some(false), "written when false too");
    assert_eq!((tree(&sh), sh.flags.as_str()), (Some(true), "execve clone inInitTree"));
    assert_eq!((tree(&t), t.flags.as_str()), (Some(true), "execve clone inInitTree"));
    assert_eq!(t.parent_exec_id, sh.exec_id);

    // Tetragon's in_init_tree filter: sh and true pass, unshare does not.
    let filtered = |evs: &[proto::tetragon::GetEventsResponse]| evs.iter().filter_map(exec_of).count() >= 2;
    assert!(only_tree.until(Duration::from_secs(10), filtered).await);
    let mut passed: Vec<_> = only_tree.events.iter().filter_map(exec_of).map(|p| p.arguments.clone()).collect();
    passed.sort();
    let mut want = vec![sh_args.clone(), mark.clone()];
    want.sort();
    assert_eq!(passed, want);
}
