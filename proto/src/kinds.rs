//! The one table of event kinds. Every per-kind dispatch (protojson name,
//! `EventType`, which process an event is about, its policy) is generated
//! from [`for_each_event_kind!`], so a new kind is one new row here.

use crate::tetragon::get_events_response::Event;
use crate::tetragon::{EventType, Process};

/// One row per `GetEventsResponse.event` oneof member: variant, protojson
/// name, `EventType`, and its class: `process` (carries process, parent and
/// ancestors), `policy` (that, plus the policy that produced it) or `none`.
macro_rules! for_each_event_kind {
    ($m:ident) => {
        $m! {
            ProcessExec, "process_exec", ProcessExec, process;
            ProcessExit, "process_exit", ProcessExit, process;
            ProcessKprobe, "process_kprobe", ProcessKprobe, policy;
            ProcessTracepoint, "process_tracepoint", ProcessTracepoint, policy;
            ProcessLoader, "process_loader", ProcessLoader, process;
            ProcessUprobe, "process_uprobe", ProcessUprobe, policy;
            ProcessThrottle, "process_throttle", ProcessThrottle, none;
            ProcessLsm, "process_lsm", ProcessLsm, policy;
            ProcessUsdt, "process_usdt", ProcessUsdt, policy;
            Test, "test", Test, none;
            RateLimitInfo, "rate_limit_info", RateLimitInfo, none;
        }
    };
}
pub(crate) use for_each_event_kind;

/// What an event is about: its process, parent and ancestors, and for
/// policy-driven kinds the policy.
pub trait Subject {
    fn process(&self) -> Option<&Process>;
    fn parent(&self) -> Option<&Process>;
    fn ancestors(&self) -> &[Process];
    fn process_and_parent_mut(&mut self) -> (Option<&mut Process>, Option<&mut Process>);
    fn policy_name(&self) -> Option<&str> {
        None
    }
}

macro_rules! subject_impl {
    (process, $ty:ident) => {
        impl Subject for crate::tetragon::$ty {
            subject_impl!(@common);
        }
    };
    (policy, $ty:ident) => {
        impl Subject for crate::tetragon::$ty {
            subject_impl!(@common);
            fn policy_name(&self) -> Option<&str> {
                Some(&self.policy_name)
            }
        }
    };
    (none, $ty:ident) => {};
    (@common) => {
        fn process(&self) -> Option<&Process> {
            self.process.as_ref()
        }
        fn parent(&self) -> Option<&Process> {
            self.parent.as_ref()
        }
        fn ancestors(&self) -> &[Process] {
            &self.ancestors
        }
        fn process_and_parent_mut(&mut self) -> (Option<&mut Process>, Option<&mut Process>) {
            (self.process.as_mut(), self.parent.as_mut())
        }
    };
}

macro_rules! subject_ref {
    (none, $v:ident) => {{
        let _ = $v;
        None
    }};
    ($class:ident, $v:ident) => {
        Some($v)
    };
}

macro_rules! impl_kinds {
    ($($variant:ident, $name:literal, $ty:ident, $class:ident;)*) => {
        $(subject_impl!($class, $variant);)*

        impl Event {
            /// The protojson key of this event kind (`process_exec`, …).
            pub fn json_name(&self) -> &'static str {
                match self { $(Event::$variant(_) => $name,)* }
            }

            /// The `EventType` that filters and field filters compare against.
            pub fn event_type(&self) -> EventType {
                match self { $(Event::$variant(_) => EventType::$ty,)* }
            }

            /// What the event is about, for kinds that carry a process.
            pub fn subject(&self) -> Option<&dyn Subject> {
                match self { $(Event::$variant(v) => subject_ref!($class, v),)* }
            }

            /// [`Event::subject`], mutably (enrichment).
            pub fn subject_mut(&mut self) -> Option<&mut dyn Subject> {
                match self { $(Event::$variant(v) => subject_ref!($class, v),)* }
            }
        }
    };
}

for_each_event_kind!(impl_kinds);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tetragon::{ProcessKprobe, RateLimitInfo};

    #[test]
    fn the_table_drives_subjects() {
        let mut e = Event::ProcessKprobe(ProcessKprobe {
            process: Some(Process { binary: "/b".into(), ..Default::default() }),
            policy_name: "p".into(),
            ..Default::default()
        });
        assert_eq!(e.json_name(), "process_kprobe");
        assert_eq!(e.event_type(), EventType::ProcessKprobe);
        let s = e.subject().unwrap();
        assert_eq!(s.process().map(|p| p.binary.as_str()), Some("/b"));
        assert_eq!(s.policy_name(), Some("p"));
        if let (Some(p), _) = e.subject_mut().unwrap().process_and_parent_mut() {
            p.binary = "/c".into();
        }
        assert_eq!(e.subject().unwrap().process().unwrap().binary, "/c");
        assert!(Event::RateLimitInfo(RateLimitInfo::default()).subject().is_none());
    }
}
