//! Processes that predate the sensor, read from `/proc` and reported with
//! the `procFS` flag, parents before children. Kernel threads (no
//! executable) are skipped, as Tetragon does; pid 0 stands for the kernel.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use proto::tetragon::Process;

use crate::cache::exec_id;
use crate::cgroup;
use crate::clock::Clock;
use crate::convert::join_args;
use crate::flags;
use crate::privileges::{self, Collect};

/// One process as `/proc` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcEntry {
    pub pid: u32,
    pub ppid: u32,
    /// The pid inside the process's own pid namespace, for processes in a
    /// container (else 0, as Tetragon's walk has it).
    pub nspid: u32,
    /// Start in boot-time nanoseconds (clock-tick resolution).
    pub ktime: u64,
    pub process: Process,
}

/// Fields of `/proc/<pid>/stat` after the `(comm)` field, which may itself
/// hold spaces and parentheses.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat.get(close + 1..)?.split_whitespace().collect())
}

/// `task->flags` bit of kernel threads (stat field 9).
const PF_KTHREAD: u64 = 0x0020_0000;
/// `task->flags` bit of a task in `do_exit`: its memory may already be gone
/// and its exit is about to be (or was just) recorded.
const PF_EXITING: u64 = 0x0000_0004;

/// The command name between the parentheses of `/proc/<pid>/stat`.
fn comm(stat: &str) -> Option<&str> {
    Some(&stat[stat.find('(')? + 1..stat.rfind(')')?])
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn status_ids(status: &str, key: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix(key)).and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// The last value of a `key:` line of `/proc/<pid>/status` (`NSpid:` lists
/// the pid in each nested namespace, the process's own last).
fn status_last(status: &str, key: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix(key)).and_then(|rest| rest.split_whitespace().last()?.parse().ok())
}

/// Reads one process; `None` for kernel threads, processes that vanished,
/// and those dead or dying (zombies, or in `do_exit`): their exit is
/// recorded by the kernel side, and registering them would let the walk
/// report a half-torn-down process with no arguments.
pub fn read_process(
    root: &Path,
    pid: u32,
    node: &str,
    clock: &Clock,
    tick_ns: u64,
    collect: &Collect,
) -> Option<ProcEntry> {
    let dir = root.join(pid.to_string());
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let fields = stat_fields(&stat)?;
    // After comm: state(0) ppid(1) … starttime is field 22 overall, index 19 here.
    let ppid: u32 = fields.get(1)?.parse().ok()?;
    let task_flags: u64 = fields.get(6)?.parse().ok()?;
    if task_flags & PF_KTHREAD != 0 {
        return None;
    }
    let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
    // Dead or dying: a zombie, or a task inside do_exit. (A leader whose
    // other threads still run is a live process.)
    let dying = matches!(fields.first(), Some(&"Z" | &"X")) || task_flags & PF_EXITING != 0;
    let dead = dying && status_ids(&status, "Threads:").is_none_or(|n| n <= 1);
    if dead {
        return None;
    }
    let start_ticks: u64 = fields.get(19)?.parse().ok()?;
    let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    let cmdline = cmdline.strip_suffix(&[0]).unwrap_or(&cmdline);
    // The executable's path; where the link cannot be read (a sandbox's
    // init, say) the command line names it, else the command name. Such a
    // process still belongs in the table: its descendants' chains lead to it.
    let link = |name: &str| std::fs::read_link(dir.join(name)).map(|p| p.into_os_string().into_encoded_bytes());
    let (exe, cwd) = (link("exe"), link("cwd"));
    let utf8 = |b: &[u8]| std::str::from_utf8(b).is_ok();
    let invalid_utf8 = !utf8(cmdline) || [&exe, &cwd].iter().any(|l| l.as_ref().is_ok_and(|b| !utf8(b)));
    let binary = match &exe {
        Ok(exe) => {
            let exe = String::from_utf8_lossy(exe);
            exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_owned()
        }
        Err(_) => {
            let argv0 = cmdline.split(|b| *b == 0).next().filter(|a| !a.is_empty());
            match argv0 {
                Some(a) => String::from_utf8_lossy(a).into_owned(),
                None => comm(&stat)?.to_owned(),
            }
        }
    };
    let arguments = if cmdline.is_empty() { String::new() } else { join_args(cmdline.split(|b| *b == 0).skip(1)) };
    let cwd = cwd.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    // The effective uid (second on the line), like `ps` and Tetragon.
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(u32::MAX);
    let auid =
        std::fs::read_to_string(dir.join("loginuid")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(u32::MAX);
    let cgroups = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
    let docker = cgroup::path_from_proc_cgroup(&cgroups)
        .and_then(cgroup::container_id)
        .map(|id| cgroup::docker_field(id).to_owned())
        .unwrap_or_default();
    let ktime = start_ticks.saturating_mul(tick_ns);
    let ns_inums = (collect.ns || collect.creds).then(|| privileges::read_ns_inums(root, pid));
    let creds = if collect.creds {
        privileges::creds_from_status(&status, ns_inums.map_or(0, |n| n[node_sensor_common::NS_USER]))
    } else {
        None
    };
    let mut bits = flags::PROCFS;
    if invalid_utf8 {
        bits |= flags::INVALID_UTF8;
    }
    if cwd == "/" {
        bits |= flags::ROOT_CWD;
    } else if cwd.is_empty() {
        bits |= flags::NO_CWD;
    }
    Some(ProcEntry {
        pid,
        ppid,
        nspid: if docker.is_empty() { 0 } else { status_last(&status, "NSpid:").unwrap_or(0) },
        ktime,
        process: Process {
            exec_id: exec_id(node, ktime, pid),
            pid: Some(pid.into()),
            uid: Some(uid.into()),
            cwd,
            binary,
            arguments,
            flags: flags::to_string(bits),
            start_time: Some(clock.wall(ktime)),
            auid: Some(auid.into()),
            docker,
            tid: Some(pid.into()),
            cap: creds.as_ref().map(|(_, c)| Box::new(privileges::capabilities(c))),
            process_credentials: creds
                .as_ref()
                .map(|(ids, c)| Box::new(privileges::credentials(ids, c, &collect.host))),
            ns: ns_inums.filter(|_| collect.ns).map(|n| Box::new(privileges::namespaces(&n, &collect.host))),
            ..Default::default()
        },
    })
}

/// The kernel's stand-in entry (pid 0), parent of init and kthreadd.
pub fn kernel_entry(node: &str, clock: &Clock) -> ProcEntry {
    let id = exec_id(node, 1, 0);
    ProcEntry {
        pid: 0,
        ppid: 0,
        nspid: 0,
        ktime: 1,
        process: Process {
            exec_id: id.clone(),
            pid: Some(0.into()),
            uid: Some(0.into()),
            binary: "<kernel>".into(),
            flags: flags::to_string(flags::PROCFS),
            start_time: Some(clock.wall(1)),
            auid: Some(u32::MAX.into()),
            parent_exec_id: id,
            tid: Some(0.into()),
            ..Default::default()
        },
    }
}

/// What the walk found, and when it read each pid.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    /// `<kernel>` first, then every user-space process, parents first.
    pub entries: Vec<ProcEntry>,
    pub reads: HashMap<u32, ReadWindow>,
    /// Boot-time nanoseconds when the last read ended.
    pub end: u64,
}

/// When the walk read one pid (boot-time nanoseconds) and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadWindow {
    pub start: u64,
    pub end: u64,
    /// The arguments of the image registered; `None` when the walk
    /// registered nothing (gone, a zombie, a kernel thread).
    pub arguments: Option<String>,
}

/// Every user-space process under `root`, parents before children, with
/// the time each was read.
pub fn walk(root: &Path, node: &str, clock: &Clock, collect: &Collect) -> Walk {
    let tick_ns = 1_000_000_000 / ticks_per_second();
    let mut found: HashMap<u32, ProcEntry> = HashMap::new();
    let mut reads = HashMap::new();
    if let Ok(dir) = std::fs::read_dir(root) {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let start = clock.boot_now();
            let read = read_process(root, pid, node, clock, tick_ns, collect);
            let arguments = read.as_ref().map(|p| p.process.arguments.clone());
            reads.insert(pid, ReadWindow { start, end: clock.boot_now(), arguments });
            if let Some(p) = read {
                found.insert(pid, p);
            }
        }
    }
    let end = clock.boot_now();
    // Parents first: order by depth in the tree, then by start time.
    let mut depth: BTreeMap<(usize, u64, u32), u32> = BTreeMap::new();
    for (&pid, p) in &found {
        let mut d = 0;
        let mut cur = p.ppid;
        while let Some(parent) = found.get(&cur) {
            d += 1;
            if d > 4096 || parent.pid == parent.ppid {
                break;
            }
            cur = parent.ppid;
        }
        depth.insert((d, p.ktime, pid), pid);
    }
    let mut entries = vec![kernel_entry(node, clock)];
    entries.extend(depth.into_values().filter_map(|pid| found.remove(&pid)));
    mark_init_trees(&mut entries);
    Walk { entries, reads, end }
}

/// A container's init (pid 1 in its namespace) and its descendants are an
/// init tree, as Tetragon's walk decides it. `entries` lists parents first.
fn mark_init_trees(entries: &mut [ProcEntry]) {
    let mut in_tree: std::collections::HashSet<u32> = std::collections::HashSet::new();
    for e in entries.iter_mut() {
        if e.nspid == 1 || in_tree.contains(&e.ppid) {
            in_tree.insert(e.pid);
            let bits = flags::from_str(&e.process.flags) | flags::IN_INIT_TREE;
            e.process.flags = flags::to_string(bits);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_with_spaces_and_parens() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 5678 1000 10";
        let f = stat_fields(stat).unwrap();
        assert_eq!(f[1], "1");
        assert_eq!(f[19], "5678");
    }

    #[test]
    fn init_trees_start_at_a_container_init() {
        let e = |pid, ppid, nspid| ProcEntry {
            pid,
            ppid,
            nspid,
            ktime: 0,
            process: Process { flags: "procFS".into(), ..Default::default() },
        };
        let mut entries = vec![e(1, 0, 0), e(10, 1, 0), e(20, 10, 1), e(21, 20, 5), e(30, 1, 0)];
        mark_init_trees(&mut entries);
        let flags: Vec<&str> = entries.iter().map(|e| e.process.flags.as_str()).collect();
        assert_eq!(flags, ["procFS", "procFS", "procFS inInitTree", "procFS inInitTree", "procFS"]);
    }

    #[test]
    fn status_values() {
        let status = "Name:\tsh\nUid:\t1000\t0\t0\t0\nNSpid:\t4242\t17\t1\nThreads:\t3\n";
        assert_eq!(status_last(status, "NSpid:"), Some(1));
        assert_eq!(status_ids(status, "Threads:"), Some(3));
    }

    #[test]
    fn walks_this_machine_parents_first() {
        let clock = Clock::from_system();
        let collect = Collect { creds: true, ns: true, host: privileges::HostNamespaces::read(Path::new("/proc")).0 };
        let walk = walk(Path::new("/proc"), "n", &clock, &collect);
        let all = &walk.entries;
        let me_read = &walk.reads[&std::process::id()];
        assert!(me_read.start <= me_read.end && me_read.end <= walk.end);
        assert!(me_read.arguments.is_some(), "this process was registered");
        assert_eq!(all[0].process.binary, "<kernel>");
        let me = std::process::id();
        let pos = |pid| all.iter().position(|p| p.pid == pid);
        let mine = pos(me).expect("this test process is found");
        let entry = &all[mine];
        assert_eq!(entry.process.binary, std::env::current_exe().unwrap().to_string_lossy());
        assert!(entry.process.flags.starts_with("procFS"));
        // Credentials and namespaces match what /proc says about us.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let (ids, creds) = privileges::creds_from_status(&status, 0).unwrap();
        assert_eq!(entry.process.uid.map(|u| u.value), Some(ids.euid), "the effective uid, as ps shows it");
        let caps = entry.process.cap.as_ref().unwrap();
        assert_eq!(caps.effective, privileges::cap_list(creds.cap_effective));
        let ns = entry.process.ns.as_ref().unwrap();
        let net =
            std::fs::metadata("/proc/self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32).unwrap();
        assert_eq!(ns.net.unwrap().inum, net);
        if let Some(parent) = pos(entry.ppid) {
            assert!(parent < mine, "parent listed before child");
        }
        // Kernel threads are skipped (kthreadd is pid 2 where the kernel's
        // pid namespace is ours); every process listed has a binary.
        assert!(all.iter().all(|p| p.pid == 0 || !p.process.binary.is_empty()));
        let kthreadd = std::fs::read_to_string("/proc/2/stat").is_ok_and(|s| s.contains("(kthreadd)"));
        assert!(!kthreadd || pos(2).is_none(), "kthreadd is a kernel thread");
        // Pid 1 is there even where its executable link is unreadable.
        assert!(pos(1).is_some_and(|i| i < mine), "init is listed first");
    }
}
