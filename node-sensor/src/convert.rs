//! The convert stage: kernel records (with the process cache's lineage) to
//! Tetragon `Process` messages and events: argument joining and quoting,
//! cwd assembly, binary resolution, times, exit status and signal decoding.

use proto::Timestamp;
use proto::tetragon::{GetEventsResponse, Process, ProcessExec, ProcessExit, get_events_response::Event};

use crate::cache::{Lineage, exec_id};
use crate::cgroup;
use crate::clock::Clock;
use crate::decode::ExecData;
use crate::flags;
use crate::privileges::{self, HostNamespaces, Ids};
use node_sensor_common as k;

/// Tetragon joins argv[1..] with spaces, wrapping an argument that holds a
/// space in double quotes.
pub fn join_args<'a>(args: impl IntoIterator<Item = &'a [u8]>) -> String {
    args.into_iter()
        .map(|a| {
            let s = String::from_utf8_lossy(a);
            if s.contains(' ') { format!("\"{s}\"") } else { s.into_owned() }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Joins the kernel's NUL-separated arguments (argv[0] already left out
/// by the kernel side).
pub fn arguments(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return String::new();
    }
    join_args(raw.split(|b| *b == 0))
}

/// `/a/b` from leaf-first components.
fn cwd_path(e: &ExecData) -> String {
    if e.cwd_is_root {
        return "/".to_owned();
    }
    let mut path = String::new();
    for c in e.cwd_components.iter().rev() {
        path.push('/');
        path.push_str(&String::from_utf8_lossy(c));
    }
    path
}

/// The binary as executed. A relative name is joined to the cwd and
/// cleaned lexically (`.`, `..`, repeated `/`), as Tetragon's
/// `filepath.Join(cwd, name)` does; an absolute one is kept as given.
fn binary_path(filename: &str, cwd: &str) -> String {
    if filename.starts_with('/') || cwd.is_empty() {
        return filename.to_owned();
    }
    clean_path(&format!("{cwd}/{filename}"))
}

/// Lexical path cleaning with Go's `path.Clean` rules for an absolute
/// path: no empty or `.` components, `..` removes the one before it and
/// stops at the root.
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Builds the new image's `Process` (parent links are the cache's job).
pub fn exec_process(node: &str, clock: &Clock, host: &HostNamespaces, e: &ExecData) -> Process {
    let mut bits = flags::EXECVE;
    let kernel_flag = |f: u32, ours: u32| if e.flags & f != 0 { ours } else { 0 };
    bits |= kernel_flag(k::FLAG_TRUNC_ARGS, flags::TRUNC_ARGS)
        | kernel_flag(k::FLAG_TRUNC_FILENAME, flags::TRUNC_FILENAME)
        | kernel_flag(k::FLAG_ERROR_ARGS, flags::ERROR_ARGS)
        | kernel_flag(k::FLAG_ERROR_FILENAME, flags::ERROR_FILENAME)
        | kernel_flag(k::FLAG_ERROR_CWD, flags::ERROR_CWD)
        | kernel_flag(k::FLAG_TRUNC_CWD, flags::TRUNC_CWD)
        | kernel_flag(k::FLAG_ERROR_CGROUP, flags::ERROR_CGROUPS);
    let cwd = if e.flags & k::FLAG_ERROR_CWD != 0 { String::new() } else { cwd_path(e) };
    if cwd == "/" {
        bits |= flags::ROOT_CWD;
    } else if cwd.is_empty() {
        bits |= flags::NO_CWD;
    }
    // A pid namespace's first process starts an init tree (the cache adds
    // the bit inherited from the previous image or the parent).
    if e.nspid == 1 {
        bits |= flags::IN_INIT_TREE;
    }
    let utf8 = |b: &[u8]| std::str::from_utf8(b).is_ok();
    if !utf8(&e.filename) || !utf8(&e.args) || !e.cwd_components.iter().all(|c| utf8(c)) {
        bits |= flags::INVALID_UTF8;
    }
    let filename = String::from_utf8_lossy(&e.filename).into_owned();
    let cgroup_name = String::from_utf8_lossy(&e.cgroup_name);
    let binary = binary_path(&filename, &cwd);
    let ids = Ids { uid: e.uid, gid: e.gid, euid: e.euid, egid: e.egid };
    Process {
        // The exec's own time (shared by every sensor on the kernel), not
        // the fork's: a process that execs twice has two images, two times.
        exec_id: exec_id(node, e.ktime, e.pid),
        pid: Some(e.pid.into()),
        // The effective uid, like `ps` and Tetragon; the real one is in
        // process_credentials.
        uid: Some(e.euid.into()),
        cap: e.creds.as_ref().map(privileges::capabilities).map(Box::new),
        process_credentials: e.creds.as_ref().map(|c| Box::new(privileges::credentials(&ids, c, host))),
        binary_properties: match (&e.creds, &e.file) {
            (Some(c), Some(f)) => privileges::binary_properties(&ids, c, f).map(Box::new),
            _ => None,
        },
        ns: e.namespaces.as_ref().map(|n| Box::new(privileges::namespaces(n, host))),
        cwd: cwd.clone(),
        binary,
        arguments: arguments(&e.args),
        flags: flags::to_string(bits),
        start_time: Some(clock.wall(e.ktime)),
        auid: Some(e.auid.into()),
        docker: cgroup::container_id(&cgroup_name).map(|id| cgroup::docker_field(id).to_owned()).unwrap_or_default(),
        tid: Some(e.tid.into()),
        ..Default::default()
    }
}

/// Signal names by number (x86-64/arm64 numbering).
const SIGNALS: [&str; 32] = [
    "",
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// `task->exit_code` to (status, signal name): a signal in bits 0..7 (0x80
/// marks a core dump), else the status in bits 8..16.
pub fn exit_status(code: u32) -> (u32, String) {
    let signal = code & 0x7f;
    if signal == 0 {
        return ((code >> 8) & 0xff, String::new());
    }
    let name = SIGNALS.get(signal as usize).map_or_else(|| format!("SIG{signal}"), |s| (*s).to_owned());
    (0, name)
}

pub fn exec_event(node: &str, time: Timestamp, lineage: Lineage) -> GetEventsResponse {
    GetEventsResponse {
        event: Some(Event::ProcessExec(ProcessExec {
            process: Some(lineage.process),
            parent: lineage.parent,
            ancestors: lineage.ancestors,
        })),
        node_name: node.to_owned(),
        time: Some(time),
        ..Default::default()
    }
}

pub fn exit_event(node: &str, time: Timestamp, lineage: Lineage, exit_code: u32) -> GetEventsResponse {
    let (status, signal) = exit_status(exit_code);
    GetEventsResponse {
        event: Some(Event::ProcessExit(ProcessExit {
            process: Some(lineage.process),
            parent: lineage.parent,
            signal,
            status,
            time: Some(time),
            ancestors: lineage.ancestors,
        })),
        node_name: node.to_owned(),
        time: Some(time),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_join_and_quote_like_tetragon() {
        assert_eq!(
            arguments(b"-c\0/usr/bin/env VIGIL_MARK=tvm-1 /bin/true; exit 3\0"),
            "-c \"/usr/bin/env VIGIL_MARK=tvm-1 /bin/true; exit 3\""
        );
        assert_eq!(arguments(b"-u\0"), "-u");
        assert_eq!(arguments(b""), "");
        // cut mid-argument (truncArgs): the partial tail is kept
        assert_eq!(arguments(b"aaa\0bb"), "aaa bb");
        // an empty argument in the middle stays a place
        assert_eq!(arguments(b"a\0\0b\0"), "a  b");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_status(3 << 8), (3, String::new()));
        assert_eq!(exit_status(0), (0, String::new()));
        assert_eq!(exit_status(9), (0, "SIGKILL".into()));
        assert_eq!(exit_status(11 | 0x80), (0, "SIGSEGV".into()), "core dump bit");
        assert_eq!(exit_status(40), (0, "SIG40".into()));
    }

    #[test]
    fn binaries_resolve_against_cwd() {
        assert_eq!(binary_path("/bin/ls", "/tmp"), "/bin/ls");
        assert_eq!(binary_path("./run.sh", "/tmp"), "/tmp/run.sh");
        assert_eq!(binary_path("run.sh", "/"), "/run.sh");
        assert_eq!(binary_path("../script.sh", "/tmp/sub"), "/tmp/script.sh");
        assert_eq!(binary_path("./a/./b//../c", "/x/"), "/x/a/c");
        assert_eq!(binary_path("../../../../x", "/tmp"), "/x", "stops at the root");
        assert_eq!(binary_path("/usr/bin/../bin/id", "/tmp"), "/usr/bin/../bin/id", "absolute: as given");
    }

    #[test]
    fn clock_converts_boot_time() {
        let c = Clock::fixed(1_000_000_000_000_000_000);
        assert_eq!(c.wall(615_000_000).to_protojson(), "2001-09-09T01:46:40.615Z");
    }
}
