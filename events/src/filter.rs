//! `GetEventsRequest` allow/deny lists with Tetragon's semantics: within a
//! `Filter` every set field must match; the allow list passes an event when
//! any filter matches (empty passes all); the deny list drops it when any
//! filter matches. Regexes are unanchored searches.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use proto::tetragon::{
    CapFilter, CapFilterSet, CapabilitiesType, EventType, Filter, GetEventsRequest, GetEventsResponse, Process,
    get_events_response::Event,
};
use regex::Regex;

use crate::labels::LabelSelector;
use crate::subject;

/// Namespace kinds `host_namespaces` accepts, as `Namespaces` names them.
pub const NAMESPACE_NAMES: [&str; 10] =
    ["uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time", "time_for_children", "cgroup", "user"];

/// Whether the process's namespace of this kind is the host's.
fn in_host_namespace(process: &Process, kind: &str) -> bool {
    subject::namespace(process, kind).is_some_and(|n| n.is_host)
}

/// Most pids a `pid_set` filter follows (the given pids plus descendants
/// seen being exec'd); past it, new children are not added.
const PID_SET_LIMIT: usize = 65_536;

/// Why a request's filter cannot be used. Each names the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    // The offending input is named by its place, never quoted back: a
    // client's 1 MB regex must not come back in its error status.
    #[error("invalid regular expression in {field}[{index}]: {reason}")]
    Regex { field: &'static str, index: usize, reason: String },
    #[error("invalid label selector in labels[{index}]: {reason}")]
    Labels { index: usize, reason: String },
    #[error("unknown event type {0} in event_set")]
    EventType(i32),
    #[error("unknown capability {value} in capabilities.{set}")]
    Capability { set: &'static str, value: i32 },
    #[error("{0} is not supported by Vigil")]
    Unsupported(&'static str),
    #[error("unknown namespace in host_namespaces[{0}] (expected one of {names})", names = NAMESPACE_NAMES.join(", "))]
    Namespace(usize),
    #[error("{list} has {count} filters; the limit is {MAX_FILTERS}")]
    TooManyFilters { list: &'static str, count: usize },
    #[error("{field} has {count} entries; the limit is {MAX_ENTRIES}")]
    TooManyEntries { field: &'static str, count: usize },
    #[error("{field}[{index}] is {len} bytes; the limit is {MAX_PATTERN_BYTES}")]
    PatternTooLong { field: &'static str, index: usize, len: usize },
}

/// Filters in an allow or deny list at most.
pub const MAX_FILTERS: usize = 64;
/// Entries in one repeated field of a filter at most.
pub const MAX_ENTRIES: usize = 256;
/// Bytes of one regex or label selector at most.
pub const MAX_PATTERN_BYTES: usize = 4096;
/// Memory one compiled regex may take (the regex crate's own bound, made
/// explicit and smaller than its 10 MiB default).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The longest reason put in an error.
const REASON_MAX: usize = 200;

/// What is wrong with a regex, without the regex: the regex crate prints the
/// pattern with a caret, then `error: …` on the last line.
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    last.trim().trim_start_matches("error: ").chars().take(REASON_MAX).collect()
}

/// Refuses a repeated field past [`MAX_ENTRIES`] or an entry past
/// [`MAX_PATTERN_BYTES`], naming the place and the limit.
fn bounded(field: &'static str, values: &[String]) -> Result<(), FilterError> {
    if values.len() > MAX_ENTRIES {
        return Err(FilterError::TooManyEntries { field, count: values.len() });
    }
    match values.iter().position(|v| v.len() > MAX_PATTERN_BYTES) {
        Some(index) => Err(FilterError::PatternTooLong { field, index, len: values[index].len() }),
        None => Ok(()),
    }
}

fn regexes(field: &'static str, values: &[String]) -> Result<Vec<Regex>, FilterError> {
    bounded(field, values)?;
    values
        .iter()
        .enumerate()
        .map(|(index, v)| {
            regex::RegexBuilder::new(v).size_limit(REGEX_SIZE_LIMIT).build().map_err(|e| FilterError::Regex {
                field,
                index,
                reason: regex_reason(&e),
            })
        })
        .collect()
}

#[derive(Debug, Default)]
struct CapSet {
    any: BTreeSet<i32>,
    all: BTreeSet<i32>,
    exactly: Option<BTreeSet<i32>>,
    none: BTreeSet<i32>,
}

impl CapSet {
    fn compile(set: &'static str, f: Option<&CapFilterSet>) -> Result<Option<CapSet>, FilterError> {
        let Some(f) = f else { return Ok(None) };
        let check = |v: &Vec<i32>| -> Result<BTreeSet<i32>, FilterError> {
            v.iter()
                .map(|c| {
                    CapabilitiesType::try_from(*c).map(|_| *c).map_err(|_| FilterError::Capability { set, value: *c })
                })
                .collect()
        };
        Ok(Some(CapSet {
            any: check(&f.any)?,
            all: check(&f.all)?,
            exactly: if f.exactly.is_empty() { None } else { Some(check(&f.exactly)?) },
            none: check(&f.none)?,
        }))
    }

    fn matches(&self, have: &BTreeSet<i32>) -> bool {
        (self.any.is_empty() || self.any.iter().any(|c| have.contains(c)))
            && self.all.iter().all(|c| have.contains(c))
            && self.exactly.as_ref().is_none_or(|e| e == have)
            && !self.none.iter().any(|c| have.contains(c))
    }
}

#[derive(Debug, Default)]
struct CapMatcher {
    permitted: Option<CapSet>,
    effective: Option<CapSet>,
    inheritable: Option<CapSet>,
}

impl CapMatcher {
    fn compile(f: &CapFilter) -> Result<Self, FilterError> {
        Ok(CapMatcher {
            permitted: CapSet::compile("permitted", f.permitted.as_ref())?,
            effective: CapSet::compile("effective", f.effective.as_ref())?,
            inheritable: CapSet::compile("inheritable", f.inheritable.as_ref())?,
        })
    }

    fn matches(&self, process: &Process) -> bool {
        let caps = process.cap.clone().unwrap_or_default();
        let set = |v: &Vec<i32>| v.iter().copied().collect::<BTreeSet<i32>>();
        self.permitted.as_ref().is_none_or(|m| m.matches(&set(&caps.permitted)))
            && self.effective.as_ref().is_none_or(|m| m.matches(&set(&caps.effective)))
            && self.inheritable.as_ref().is_none_or(|m| m.matches(&set(&caps.inheritable)))
    }
}

/// One compiled `Filter`.
#[derive(Debug, Default)]
struct Compiled {
    binary: Vec<Regex>,
    namespace: Vec<String>,
    pid: Vec<u32>,
    pid_set: Option<Mutex<HashSet<u32>>>,
    event_set: Vec<i32>,
    pod: Vec<Regex>,
    arguments: Vec<Regex>,
    labels: Vec<LabelSelector>,
    policy_names: Vec<String>,
    capabilities: Option<CapMatcher>,
    parent_binary: Vec<Regex>,
    parent_arguments: Vec<Regex>,
    container_id: Vec<Regex>,
    in_init_tree: Option<bool>,
    health_check: Option<bool>,
    ancestor_binary: Vec<Regex>,
    container_name: Vec<Regex>,
    namespace_regex: Vec<Regex>,
    node_name: Vec<String>,
    host_namespaces: Vec<String>,
}

fn pod_namespace(p: Option<&Process>) -> &str {
    p.and_then(|p| p.pod.as_ref()).map_or("", |pod| pod.namespace.as_str())
}

fn any_match(res: &[Regex], s: &str) -> bool {
    res.iter().any(|r| r.is_match(s))
}

impl Compiled {
    fn compile(f: &Filter) -> Result<Self, FilterError> {
        if !f.cel_expression.is_empty() {
            return Err(FilterError::Unsupported("cel_expression"));
        }
        for e in &f.event_set {
            EventType::try_from(*e).map_err(|_| FilterError::EventType(*e))?;
        }
        // Every repeated field is bounded, in entries and in bytes.
        bounded("labels", &f.labels)?;
        bounded("namespace", &f.namespace)?;
        bounded("host_namespaces", &f.host_namespaces)?;
        bounded("node_name", &f.node_name)?;
        for (field, count) in [("pid", f.pid.len()), ("pid_set", f.pid_set.len()), ("event_set", f.event_set.len())] {
            if count > MAX_ENTRIES {
                return Err(FilterError::TooManyEntries { field, count });
            }
        }
        let labels = f
            .labels
            .iter()
            .enumerate()
            .map(|(index, l)| {
                LabelSelector::parse(l)
                    .map_err(|reason| FilterError::Labels { index, reason: reason.chars().take(REASON_MAX).collect() })
            })
            .collect::<Result<_, _>>()?;
        Ok(Compiled {
            binary: regexes("binary_regex", &f.binary_regex)?,
            namespace: f.namespace.clone(),
            pid: f.pid.clone(),
            pid_set: (!f.pid_set.is_empty()).then(|| Mutex::new(f.pid_set.iter().copied().collect())),
            event_set: f.event_set.clone(),
            pod: regexes("pod_regex", &f.pod_regex)?,
            arguments: regexes("arguments_regex", &f.arguments_regex)?,
            labels,
            policy_names: f.policy_names.clone(),
            capabilities: f.capabilities.as_ref().map(CapMatcher::compile).transpose()?,
            parent_binary: regexes("parent_binary_regex", &f.parent_binary_regex)?,
            parent_arguments: regexes("parent_arguments_regex", &f.parent_arguments_regex)?,
            container_id: regexes("container_id", &f.container_id)?,
            in_init_tree: f.in_init_tree.map(|b| b.value),
            health_check: f.health_check.map(|b| b.value),
            ancestor_binary: regexes("ancestor_binary_regex", &f.ancestor_binary_regex)?,
            container_name: regexes("container_name_regex", &f.container_name_regex)?,
            namespace_regex: regexes("namespace_regex", &f.namespace_regex)?,
            node_name: f.node_name.clone(),
            host_namespaces: f
                .host_namespaces
                .iter()
                .enumerate()
                .map(|(index, n)| {
                    if NAMESPACE_NAMES.contains(&n.as_str()) {
                        Ok(n.clone())
                    } else {
                        Err(FilterError::Namespace(index))
                    }
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// pid_set follows descendants: an exec whose parent is in the set adds
    /// the new process to it, as Tetragon does.
    fn pid_set_matches(&self, event: &GetEventsResponse, process: Option<&Process>) -> bool {
        let Some(set) = &self.pid_set else {
            return true;
        };
        let Some(pid) = process.and_then(|p| p.pid).map(|v| v.value) else {
            return false;
        };
        let Ok(mut set) = set.lock() else {
            return false;
        };
        if set.contains(&pid) {
            return true;
        }
        let parent_pid = subject::parent(event).and_then(|p| p.pid).map(|v| v.value);
        let in_tree = parent_pid.is_some_and(|pp| set.contains(&pp));
        if in_tree && matches!(event.event, Some(Event::ProcessExec(_))) && set.len() < PID_SET_LIMIT {
            set.insert(pid);
        }
        in_tree
    }

    fn matches(&self, event: &GetEventsResponse) -> bool {
        let process = subject::process(event);
        let parent = subject::parent(event);
        let pod = process.and_then(|p| p.pod.as_ref());
        let container = pod.and_then(|p| p.container.as_ref());
        (self.binary.is_empty() || process.is_some_and(|p| any_match(&self.binary, &p.binary)))
            && (self.namespace.is_empty()
                || (process.is_some() && self.namespace.iter().any(|n| n == pod_namespace(process))))
            && (self.pid.is_empty() || process.and_then(|p| p.pid).is_some_and(|pid| self.pid.contains(&pid.value)))
            && (self.event_set.is_empty() || self.event_set.contains(&(event.event_type() as i32)))
            && (self.pod.is_empty() || pod.is_some_and(|p| any_match(&self.pod, &p.name)))
            && (self.arguments.is_empty() || process.is_some_and(|p| any_match(&self.arguments, &p.arguments)))
            && (self.labels.is_empty() || pod.is_some_and(|p| self.labels.iter().any(|l| l.matches(&p.pod_labels))))
            && (self.policy_names.is_empty()
                || subject::policy_name(event).is_some_and(|n| self.policy_names.iter().any(|p| p == n)))
            && self.capabilities.as_ref().is_none_or(|c| process.is_some_and(|p| c.matches(p)))
            && (self.parent_binary.is_empty() || parent.is_some_and(|p| any_match(&self.parent_binary, &p.binary)))
            && (self.parent_arguments.is_empty()
                || parent.is_some_and(|p| any_match(&self.parent_arguments, &p.arguments)))
            && (self.container_id.is_empty() || container.is_some_and(|c| any_match(&self.container_id, &c.id)))
            && self.in_init_tree.is_none_or(|want| process.is_some_and(|p| p.in_init_tree.is_some_and(|b| b.value) == want))
            && self.health_check.is_none_or(|want| container.is_some_and(|c| c.maybe_exec_probe) == want)
            && (self.ancestor_binary.is_empty()
                || parent.into_iter().chain(subject::ancestors(event)).any(|a| any_match(&self.ancestor_binary, &a.binary)))
            && (self.container_name.is_empty() || container.is_some_and(|c| any_match(&self.container_name, &c.name)))
            && (self.namespace_regex.is_empty() || pod.is_some_and(|p| any_match(&self.namespace_regex, &p.namespace)))
            && (self.node_name.is_empty() || self.node_name.contains(&event.node_name))
            && (self.host_namespaces.is_empty()
                || process.is_some_and(|p| self.host_namespaces.iter().any(|k| in_host_namespace(p, k))))
            // Last: it records descendants, so only events that pass the
            // other fields may grow the set.
            && self.pid_set_matches(event, process)
    }
}

/// A subscriber's compiled allow and deny lists.
#[derive(Debug, Default)]
pub struct EventFilter {
    allow: Vec<Compiled>,
    deny: Vec<Compiled>,
}

impl EventFilter {
    /// Compiles the request's lists; the error names the field at fault.
    pub fn from_request(req: &GetEventsRequest) -> Result<Self, FilterError> {
        Self::new(&req.allow_list, &req.deny_list)
    }

    pub fn new(allow: &[Filter], deny: &[Filter]) -> Result<Self, FilterError> {
        for (list, filters) in [("allow_list", allow), ("deny_list", deny)] {
            if filters.len() > MAX_FILTERS {
                return Err(FilterError::TooManyFilters { list, count: filters.len() });
            }
        }
        Ok(EventFilter {
            allow: allow.iter().map(Compiled::compile).collect::<Result<_, _>>()?,
            deny: deny.iter().map(Compiled::compile).collect::<Result<_, _>>()?,
        })
    }

    /// Whether the event passes.
    pub fn matches(&self, event: &GetEventsResponse) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|f| f.matches(event)))
            && !self.deny.iter().any(|f| f.matches(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::tetragon::Capabilities;

    fn exec(binary: &str, ns: Option<&str>, pid: u32, ppid: u32) -> GetEventsResponse {
        let e = test_support::events::exec(binary).pid(pid).node("n1");
        let e = match ns {
            Some(n) => e.pod(n, "p"),
            None => e,
        };
        e.parent("/bin/sh", ppid).build()
    }

    #[test]
    fn bad_fields_are_named() {
        let f = Filter { binary_regex: vec!["(".into()], ..Default::default() };
        let e = EventFilter::new(&[f], &[]).unwrap_err();
        assert_eq!(e.to_string(), "invalid regular expression in binary_regex[0]: unclosed group");
        // A long bad pattern (within the size bound) is not quoted back.
        let long = format!("({}", "x".repeat(4000));
        let f = Filter { binary_regex: vec!["ok".into(), long], ..Default::default() };
        let e = EventFilter::new(&[f], &[]).unwrap_err().to_string();
        assert!(
            e.starts_with("invalid regular expression in binary_regex[1]: ") && e.len() < 300,
            "{}",
            &e[..300.min(e.len())]
        );
        let f = Filter { event_set: vec![3], ..Default::default() };
        assert_eq!(EventFilter::new(&[f], &[]).unwrap_err(), FilterError::EventType(3));
        let f = Filter { cel_expression: vec!["true".into()], ..Default::default() };
        assert_eq!(EventFilter::new(&[], &[f]).unwrap_err(), FilterError::Unsupported("cel_expression"));
        let f = Filter {
            capabilities: Some(CapFilter {
                effective: Some(CapFilterSet { any: vec![99], ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(EventFilter::new(&[f], &[]).unwrap_err(), FilterError::Capability { set: "effective", value: 99 });
    }

    #[test]
    fn deny_wins_and_host_namespace_is_empty_string() {
        let allow = Filter { namespace: vec!["".into()], ..Default::default() };
        let deny = Filter { binary_regex: vec!["curl$".into()], ..Default::default() };
        let f = EventFilter::new(&[allow], &[deny]).unwrap();
        assert!(f.matches(&exec("/bin/ls", None, 1, 0)));
        assert!(!f.matches(&exec("/bin/ls", Some("default"), 1, 0)));
        assert!(!f.matches(&exec("/usr/bin/curl", None, 1, 0)));
    }

    #[test]
    fn pid_set_follows_exec_descendants() {
        let f = EventFilter::new(&[Filter { pid_set: vec![100], ..Default::default() }], &[]).unwrap();
        assert!(f.matches(&exec("/bin/a", None, 100, 1)));
        assert!(f.matches(&exec("/bin/b", None, 200, 100)));
        assert!(f.matches(&exec("/bin/c", None, 300, 200)), "grandchild via the recorded child");
        assert!(!f.matches(&exec("/bin/d", None, 400, 1)));
    }

    #[test]
    fn host_namespaces_match_any_listed_kind() {
        use proto::tetragon::{Namespace, Namespaces};
        let with_ns = |net_host: bool, pid_host: bool| {
            let mut ev = exec("/bin/a", None, 1, 0);
            if let Some(Event::ProcessExec(e)) = &mut ev.event {
                e.process.as_mut().unwrap().ns = Some(Box::new(Namespaces {
                    net: Some(Namespace { inum: 1, is_host: net_host }),
                    pid: Some(Namespace { inum: 2, is_host: pid_host }),
                    ..Default::default()
                }));
            }
            ev
        };
        let f = EventFilter::new(
            &[Filter { host_namespaces: vec!["net".into(), "pid".into()], ..Default::default() }],
            &[],
        )
        .unwrap();
        assert!(f.matches(&with_ns(true, false)));
        assert!(f.matches(&with_ns(false, true)));
        assert!(!f.matches(&with_ns(false, false)));
        assert!(!f.matches(&exec("/bin/no-ns-info", None, 1, 0)));
        let e = EventFilter::new(&[Filter { host_namespaces: vec!["network".into()], ..Default::default() }], &[])
            .unwrap_err();
        assert!(e.to_string().starts_with("unknown namespace in host_namespaces[0]"), "{e}");
        // Bounds, named without the input.
        let long = Filter { binary_regex: vec!["a".into(), "x".repeat(5000)], ..Default::default() };
        let e = EventFilter::new(&[long], &[]).unwrap_err().to_string();
        assert_eq!(e, "binary_regex[1] is 5000 bytes; the limit is 4096");
        let many = Filter { pod_regex: vec!["p".into(); 300], ..Default::default() };
        let e = EventFilter::new(&[many], &[]).unwrap_err().to_string();
        assert_eq!(e, "pod_regex has 300 entries; the limit is 256");
        let e = EventFilter::new(&vec![Filter::default(); 65], &[]).unwrap_err().to_string();
        assert_eq!(e, "allow_list has 65 filters; the limit is 64");
        // A pattern that fits in bytes but compiles too large is refused too.
        let huge = Filter { binary_regex: vec!["\\w{1000}\\w{1000}".into()], ..Default::default() };
        let e = EventFilter::new(&[huge], &[]).unwrap_err().to_string();
        assert!(e.starts_with("invalid regular expression in binary_regex[0]"), "{e}");
    }

    #[test]
    fn capability_sets() {
        let mut ev = exec("/bin/a", None, 1, 0);
        if let Some(Event::ProcessExec(e)) = &mut ev.event {
            e.process.as_mut().unwrap().cap = Some(Box::new(Capabilities {
                effective: vec![CapabilitiesType::CapSysAdmin as i32, CapabilitiesType::CapNetRaw as i32],
                ..Default::default()
            }));
        }
        let with = |set: CapFilterSet| {
            EventFilter::new(
                &[Filter {
                    capabilities: Some(CapFilter { effective: Some(set), ..Default::default() }),
                    ..Default::default()
                }],
                &[],
            )
            .unwrap()
            .matches(&ev)
        };
        let admin = CapabilitiesType::CapSysAdmin as i32;
        let raw = CapabilitiesType::CapNetRaw as i32;
        let chown = CapabilitiesType::CapChown as i32;
        assert!(with(CapFilterSet { any: vec![admin, chown], ..Default::default() }));
        assert!(!with(CapFilterSet { all: vec![admin, chown], ..Default::default() }));
        assert!(with(CapFilterSet { exactly: vec![raw, admin], ..Default::default() }));
        assert!(!with(CapFilterSet { exactly: vec![admin], ..Default::default() }));
        assert!(with(CapFilterSet { none: vec![chown], ..Default::default() }));
        assert!(!with(CapFilterSet { none: vec![admin], ..Default::default() }));
    }
}
