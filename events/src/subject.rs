//! The process (and parent, ancestors) an event is about, whatever its kind.

use proto::tetragon::{GetEventsResponse, Process};

// Which kinds carry a process, and the policy, is the one table in
// `proto::kinds`; these are its readers.

/// The event's process, if its kind carries one.
pub fn process(event: &GetEventsResponse) -> Option<&Process> {
    event.event.as_ref()?.subject()?.process()
}

/// The event's parent process, if its kind carries one.
pub fn parent(event: &GetEventsResponse) -> Option<&Process> {
    event.event.as_ref()?.subject()?.parent()
}

/// The event's ancestors beyond the parent (empty unless the sensor adds them).
pub fn ancestors(event: &GetEventsResponse) -> &[Process] {
    event.event.as_ref().and_then(|e| e.subject()).map_or(&[], |s| s.ancestors())
}

/// The tracing policy that produced the event, for policy-driven kinds.
pub fn policy_name(event: &GetEventsResponse) -> Option<&str> {
    event.event.as_ref()?.subject()?.policy_name()
}

/// Mutable access to the event's process and parent (enrichment).
pub fn process_and_parent_mut(event: &mut GetEventsResponse) -> (Option<&mut Process>, Option<&mut Process>) {
    match event.event.as_mut().and_then(|e| e.subject_mut()) {
        Some(s) => s.process_and_parent_mut(),
        None => (None, None),
    }
}

/// The process's namespace of `kind` (`uts`, `net`, `pid_for_children`, …,
/// as `Namespaces` names them), if recorded.
pub fn namespace(process: &Process, kind: &str) -> Option<proto::tetragon::Namespace> {
    let ns = process.ns.as_ref()?;
    match kind {
        "uts" => ns.uts,
        "ipc" => ns.ipc,
        "mnt" => ns.mnt,
        "pid" => ns.pid,
        "pid_for_children" => ns.pid_for_children,
        "net" => ns.net,
        "time" => ns.time,
        "time_for_children" => ns.time_for_children,
        "cgroup" => ns.cgroup,
        "user" => ns.user,
        _ => None,
    }
}
