//! The process (and parent, ancestors) an event is about, whatever its kind.

use proto::tetragon::get_events_response::Event;
use proto::tetragon::{GetEventsResponse, Process};

/// The event's process, if its kind carries one.
pub fn process(event: &GetEventsResponse) -> Option<&Process> {
    match event.event.as_ref()? {
        Event::ProcessExec(e) => e.process.as_ref(),
        Event::ProcessExit(e) => e.process.as_ref(),
        Event::ProcessKprobe(e) => e.process.as_ref(),
        Event::ProcessTracepoint(e) => e.process.as_ref(),
        Event::ProcessLoader(e) => e.process.as_ref(),
        Event::ProcessUprobe(e) => e.process.as_ref(),
        Event::ProcessLsm(e) => e.process.as_ref(),
        Event::ProcessUsdt(e) => e.process.as_ref(),
        Event::ProcessThrottle(_) | Event::Test(_) | Event::RateLimitInfo(_) => None,
    }
}

/// The event's parent process, if its kind carries one.
pub fn parent(event: &GetEventsResponse) -> Option<&Process> {
    match event.event.as_ref()? {
        Event::ProcessExec(e) => e.parent.as_ref(),
        Event::ProcessExit(e) => e.parent.as_ref(),
        Event::ProcessKprobe(e) => e.parent.as_ref(),
        Event::ProcessTracepoint(e) => e.parent.as_ref(),
        Event::ProcessLoader(e) => e.parent.as_ref(),
        Event::ProcessUprobe(e) => e.parent.as_ref(),
        Event::ProcessLsm(e) => e.parent.as_ref(),
        Event::ProcessUsdt(e) => e.parent.as_ref(),
        Event::ProcessThrottle(_) | Event::Test(_) | Event::RateLimitInfo(_) => None,
    }
}

/// The event's ancestors beyond the parent (empty unless the sensor adds them).
pub fn ancestors(event: &GetEventsResponse) -> &[Process] {
    match event.event.as_ref() {
        Some(Event::ProcessExec(e)) => &e.ancestors,
        Some(Event::ProcessExit(e)) => &e.ancestors,
        Some(Event::ProcessKprobe(e)) => &e.ancestors,
        Some(Event::ProcessTracepoint(e)) => &e.ancestors,
        Some(Event::ProcessLoader(e)) => &e.ancestors,
        Some(Event::ProcessUprobe(e)) => &e.ancestors,
        Some(Event::ProcessLsm(e)) => &e.ancestors,
        Some(Event::ProcessUsdt(e)) => &e.ancestors,
        _ => &[],
    }
}

/// The tracing policy that produced the event, for policy-driven kinds.
pub fn policy_name(event: &GetEventsResponse) -> Option<&str> {
    match event.event.as_ref()? {
        Event::ProcessKprobe(e) => Some(&e.policy_name),
        Event::ProcessTracepoint(e) => Some(&e.policy_name),
        Event::ProcessUprobe(e) => Some(&e.policy_name),
        Event::ProcessLsm(e) => Some(&e.policy_name),
        Event::ProcessUsdt(e) => Some(&e.policy_name),
        _ => None,
    }
}

/// Mutable access to the event's process and parent (enrichment).
pub fn process_and_parent_mut(event: &mut GetEventsResponse) -> (Option<&mut Process>, Option<&mut Process>) {
    match event.event.as_mut() {
        Some(Event::ProcessExec(e)) => (e.process.as_mut(), e.parent.as_mut()),
        Some(Event::ProcessExit(e)) => (e.process.as_mut(), e.parent.as_mut()),
        Some(Event::ProcessKprobe(e)) => (e.process.as_mut(), e.parent.as_mut()),
        Some(Event::ProcessTracepoint(e)) => (e.process.as_mut(), e.parent.as_mut()),
        Some(Event::ProcessLoader(e)) => (e.process.as_mut(), e.parent.as_mut()),
        Some(Event::ProcessUprobe(e)) => (e.process.as_mut(), e.parent.as_mut()),
        Some(Event::ProcessLsm(e)) => (e.process.as_mut(), e.parent.as_mut()),
        Some(Event::ProcessUsdt(e)) => (e.process.as_mut(), e.parent.as_mut()),
        _ => (None, None),
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
