//! The sensor started in the middle of a fork/exec/exit storm. Records
//! queued while `/proc` is walked must not repeat what the walk found: from
//! the first event on, every process has one exec event per image and one
//! exit, no exit comes without its exec, and once the storm is over the
//! process cache holds the live processes and what they still name, with
//! every refcount right. One test in its own binary, so no other test of
//! this suite adds processes meanwhile.
#![allow(clippy::unwrap_used, reason = "a test: a panic is a failed test")]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Sensor, exec_of, exit_of, nonce};
use proto::json::from_json_line;
use proto::tetragon::{
    ConfigFlag, DumpProcessCacheReqArgs, GetDebugRequest, GetEventsResponse, ProcessInternal, get_debug_request,
    get_debug_response,
};

/// Whether `pid` is a user-space process the sensor's walk would count:
/// not a kernel thread, not dead or dying.
fn is_live(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let task_flags = fields.get(6).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads =
        status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse::<u32>().ok()).unwrap_or(1);
    let dying = matches!(fields.first(), Some(&"Z" | &"X")) || task_flags & 0x4 != 0;
    task_flags & 0x0020_0000 == 0 && !(dying && threads <= 1)
}

/// The pid in an exec_id (`base64("node:ktime:pid")`).
fn exec_id_pid(exec_id: &str) -> u32 {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.decode(exec_id).unwrap_or_default();
    String::from_utf8_lossy(&raw).rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// What is wrong with a process-cache dump, given the live pids read just
/// after it: an entry whose refcount is not its own liveness (the current
/// image of a live process, or `<kernel>`) plus the entries naming it as
/// their parent; a storm process still held (`leftover` in its arguments);
/// a live process with no entry. Of two entries for one pid that are not
/// an exec chain (a dead parent kept for its children, and a new process
/// under its reused pid), the later is the live one. Entries beyond the
/// live processes are thus exactly the exited ones their descendants hold.
fn cache_problems(entries: &[ProcessInternal], live: &HashSet<u32>, leftover: &str) -> Vec<String> {
    let procs: Vec<&proto::tetragon::Process> = entries.iter().filter_map(|e| e.process.as_ref()).collect();
    let mut children: HashMap<&str, u32> = HashMap::new();
    for p in &procs {
        if p.parent_exec_id != p.exec_id {
            *children.entry(p.parent_exec_id.as_str()).or_default() += 1;
        }
    }
    let replaced: HashSet<&str> = procs
        .iter()
        .filter_map(|p| {
            procs.iter().find(|q| q.exec_id == p.parent_exec_id && q.pid == p.pid && q.exec_id != p.exec_id)
        })
        .map(|q| q.exec_id.as_str())
        .collect();
    let mut current: HashMap<u32, &proto::tetragon::Process> = HashMap::new();
    for p in procs.iter().filter(|p| !replaced.contains(p.exec_id.as_str())) {
        let pid = common::pid(p);
        let start = |x: &proto::tetragon::Process| x.start_time.map(|t| t.unix_nanos()).unwrap_or_default();
        if current.get(&pid).is_none_or(|c| start(c) < start(p)) {
            current.insert(pid, p);
        }
    }
    let mut problems = Vec::new();
    for e in entries {
        let Some(p) = e.process.as_ref() else { continue };
        let pid = common::pid(p);
        let alive = pid == 0 || (current.get(&pid).is_some_and(|c| c.exec_id == p.exec_id) && live.contains(&pid));
        let want = u32::from(alive) + children.get(p.exec_id.as_str()).copied().unwrap_or(0);
        let what = format!("{} {:.60} (pid {pid})", p.binary, p.arguments);
        if e.refcnt.map(|r| r.value) != Some(want) || p.refcnt != want {
            problems.push(format!("refcount of {what}: {:?}, want {want}", e.refcnt.map(|r| r.value)));
        }
        if p.arguments.contains(leftover) {
            problems.push(format!("storm process still held: {what}"));
        }
    }
    for pid in live {
        if !current.contains_key(pid) {
            problems.push(format!("live pid {pid} has no entry"));
        }
    }
    problems
}

/// User-space pids now, as the sensor's walk counts them.
fn live_pids() -> HashSet<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| is_live(*pid))
        .collect()
}

fn read_export(sensor: &Sensor) -> Vec<GetEventsResponse> {
    std::fs::read_to_string(&sensor.export)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with('}'))
        .map(|l| from_json_line(l).unwrap_or_else(|e| panic!("bad export line {l:?}: {e}")))
        .collect()
}

/// Polls the export file (the sensor writes it as events come) until `done`.
async fn wait_export(
    sensor: &Sensor,
    what: &str,
    done: impl Fn(&[GetEventsResponse]) -> bool,
) -> Vec<GetEventsResponse> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = read_export(sensor);
        if done(&events) {
            return events;
        }
        assert!(Instant::now() < deadline, "{what} never showed in the export; log:\n{}", sensor.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_during_a_storm_every_process_has_one_exec_and_one_exit() {
    require_kernel!();
    let n = nonce();
    let go = std::env::temp_dir().join(format!("vigil-storm-{n}"));
    std::fs::write(&go, b"").unwrap();
    // Two loops (one per core): each iteration forks and execs /bin/true
    // with a unique marker, and forks a child that exits without exec.
    let storm = |lane: &str| {
        let script = format!(
            "i=0; while [ -e {go} ]; do /bin/true storm-{n}-{lane}-$i; (exit 7); i=$((i+1)); done",
            go = go.display()
        );
        Command::new("/bin/sh").args(["-c", &script]).spawn().unwrap()
    };
    let mut lanes = vec![storm("a"), storm("b")];
    // Running before the sensor starts (it is a procFS process then).
    while std::fs::read_to_string(format!("/proc/{}/cmdline", lanes[1].id())).is_ok_and(|c| !c.contains("storm")) {
        std::thread::yield_now();
    }

    let sensor = Sensor::start(&["--log-level", "info,node_sensor::pipeline=debug"]).await;
    // Let the storm run on under the sensor: 200 more execs per lane.
    let marker = |e: &GetEventsResponse| exec_of(e).map(|p| p.arguments.clone()).filter(|a| a.starts_with("storm-"));
    let enough = |evs: &[GetEventsResponse]| {
        ["a", "b"].iter().all(|lane| {
            let prefix = format!("storm-{n}-{lane}-");
            evs.iter().filter_map(marker).filter(|a| a.starts_with(&prefix)).count() >= 200
        })
    };
    wait_export(&sensor, "200 storm execs per lane", enough).await;
    std::fs::remove_file(&go).unwrap();
    let lane_pids: Vec<u32> = lanes.iter().map(|c| c.id()).collect();
    for lane in &mut lanes {
        assert!(lane.wait().unwrap().success());
    }
    let lanes_exited = |evs: &[GetEventsResponse]| {
        lane_pids.iter().all(|pid| evs.iter().filter_map(exit_of).any(|(p, _, _)| common::pid(p) == *pid))
    };
    let events = wait_export(&sensor, "the storm loops' exits", lanes_exited).await;
    for counter in ["ringbuf_full", "export_dropped", "subscriber_dropped", "bad_records"] {
        assert_eq!(sensor.health_counter(counter).await, Some(0), "{counter}: the test needs every event");
    }

    // Every image reported once; every exit follows its exec.
    let mut execs: HashMap<&str, usize> = HashMap::new();
    for p in events.iter().filter_map(exec_of) {
        *execs.entry(p.exec_id.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = execs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "images with more than one exec event: {repeated:?}");
    let mut exits: HashMap<&str, usize> = HashMap::new();
    for (p, _, _) in events.iter().filter_map(exit_of) {
        *exits.entry(p.exec_id.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = exits.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "processes with more than one exit: {repeated:?}");
    // A fork child that never execs exits under an id of its own, which no
    // exec carried; its parent's exec must be there.
    for e in &events {
        let Some((p, status, _)) = exit_of(e) else { continue };
        if execs.contains_key(p.exec_id.as_str()) {
            continue;
        }
        assert_eq!(p.flags, "execve", "an exit without an exec that is not a fork child: {p:?}");
        assert!(execs.contains_key(p.parent_exec_id.as_str()), "a fork child of an unreported parent: {p:?}");
        if p.arguments.contains(&format!("storm-{n}")) {
            let of_pid: Vec<String> = events
                .iter()
                .filter(|e| events::subject::process(e).is_some_and(|q| q.pid == p.pid))
                .map(proto::json::to_json_line)
                .collect();
            assert_eq!(status, 7, "the storm's fork-only child: {p:?}; events of its pid:\n{}", of_pid.join("\n"));
        }
    }

    // Every storm process names its lane as its parent: no reference was
    // dropped early, whatever the start-up race did.
    let lane_ids: HashSet<&str> = events
        .iter()
        .filter_map(exec_of)
        .filter(|p| lane_pids.contains(&common::pid(p)) && p.arguments.contains("while [ -e"))
        .map(|p| p.exec_id.as_str())
        .collect();
    assert_eq!(lane_ids.len(), 2, "each lane reported once");
    for e in &events {
        let Some(p) = exec_of(e).filter(|p| p.arguments.starts_with(&format!("storm-{n}-"))) else { continue };
        if p.flags.starts_with("procFS") {
            continue;
        }
        let parent = common::parent_of(e).unwrap_or_else(|| panic!("no parent for {p:?}"));
        assert!(lane_ids.contains(parent.exec_id.as_str()), "{} has parent {parent:?}", p.arguments);
    }

    // Per storm marker, after the first one seen: exactly one exec and one
    // exit of the same image. The exec is a fork and exec (`execve clone`),
    // or `procFS` where the walk read the process after its exec; only
    // before the lane's first recorded fork can it be a plain `execve` (the
    // fork came before the fork program was attached, the exec after).
    for lane in ["a", "b"] {
        let prefix = format!("storm-{n}-{lane}-");
        let mut per_marker: BTreeMap<u64, (Vec<String>, Vec<String>)> = BTreeMap::new();
        for e in &events {
            if let Some(p) = exec_of(e).filter(|p| p.arguments.starts_with(&prefix)) {
                let i = p.arguments[prefix.len()..].parse().unwrap();
                per_marker.entry(i).or_default().0.push(format!("{} {}", p.exec_id, p.flags));
            }
            if let Some((p, _, _)) = exit_of(e).filter(|(p, _, _)| p.arguments.starts_with(&prefix)) {
                let i = p.arguments[prefix.len()..].parse().unwrap();
                per_marker.entry(i).or_default().1.push(format!("{} {}", p.exec_id, p.flags));
            }
        }
        let of_pid = |pid: u32| -> String {
            events
                .iter()
                .filter(|e| events::subject::process(e).is_some_and(|q| common::pid(q) == pid))
                .map(proto::json::to_json_line)
                .collect::<Vec<_>>()
                .join("\n")
        };
        let first = *per_marker.keys().next().unwrap();
        let first_fork = per_marker
            .iter()
            .find(|(_, (ex, _))| ex.iter().any(|x| x.ends_with(" execve clone")))
            .map(|(i, _)| *i)
            .unwrap_or_else(|| panic!("lane {lane}: no fork recorded"));
        let last = *per_marker.keys().last().unwrap();
        assert!(last - first >= 199, "lane {lane}: markers {first}..={last}");
        for i in first + 1..=last {
            let (ex, ends) = per_marker.get(&i).unwrap_or_else(|| {
                let around: Vec<_> = per_marker.range(i.saturating_sub(2)..i + 3).collect();
                panic!("lane {lane}: marker {i} has no events; around it: {around:?}; log:\n{}", sensor.log())
            });
            assert_eq!(ex.len(), 1, "lane {lane} marker {i}: execs {ex:?}");
            let pid_of = |x: &str| exec_id_pid(x.split(' ').next().unwrap_or_default());
            let plain_ok = i < first_fork && ex[0].ends_with(" execve");
            assert!(
                ex[0].ends_with(" execve clone") || ex[0].ends_with(" procFS") || plain_ok,
                "lane {lane} marker {i}: {ex:?}; events of its pid:\n{}\nlog:\n{}",
                of_pid(pid_of(&ex[0])),
                sensor.log()
            );
            let id = ex[0].split(' ').next().unwrap();
            let exit_ids: HashSet<&str> = ends.iter().map(|x| x.split(' ').next().unwrap()).collect();
            assert_eq!(exit_ids, HashSet::from([id]), "lane {lane} marker {i}: exits {ends:?}");
            assert_eq!(ends.len(), 1, "lane {lane} marker {i}: exits {ends:?}");
        }
    }

    // The cache holds the live processes, `<kernel>`, and the exited ones
    // their live descendants still name; every refcount is an entry's own
    // liveness plus its children (Tetragon's GetDebug dump shows both); no
    // storm process is left. The dump and /proc are read at two instants,
    // so a process starting or ending in between makes one check moot: it
    // is repeated until the two agree.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dump = sensor
            .client()
            .await
            .get_debug(GetDebugRequest {
                flag: ConfigFlag::DumpProcessCache as i32,
                arg: Some(get_debug_request::Arg::Dump(DumpProcessCacheReqArgs::default())),
            })
            .await
            .unwrap()
            .into_inner();
        let Some(get_debug_response::Arg::Processes(dump)) = dump.arg else { panic!("no dump: {dump:?}") };
        let problems = cache_problems(&dump.processes, &live_pids(), &format!("storm-{n}"));
        if problems.is_empty() {
            let live = live_pids().len();
            eprintln!("cache: {} entries, {live} live processes + <kernel>", dump.processes.len());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cache does not match /proc:\n{}\nlog:\n{}",
            problems.join("\n"),
            sensor.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let skipped = sensor.health_counter("startup_skipped").await.unwrap();
    eprintln!("records the walk already showed, skipped: {skipped}");
}

/// Sensors started at the same moment race to create and pin the shared
/// exec-time map; every one of them loads (the loser takes the winner's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensors_started_together_all_load() {
    require_kernel!();
    // Without a pin, sensors find the map by name if one is alive, and
    // otherwise create it: the race on a fresh boot.
    let _ = std::fs::remove_file("/sys/fs/bpf/vigil/exec_times_v1");
    let sensors = futures::future::join_all((0..4).map(|_| Sensor::start(&[]))).await;
    for s in &sensors {
        assert!(!s.log().contains("pinning failed"), "{}", s.log());
        assert!(!s.log().contains("exec times are not shared"), "{}", s.log());
    }
}
