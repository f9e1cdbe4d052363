//! Tracing policies in this sensor: the host that compiles each policy
//! (with the `policy` crate) against this kernel and puts its hooks into
//! the kernel (`kernel`: the hook map and the generic programs' attaches;
//! `attach`: tracepoint attaches with a cookie), and takes them back out
//! when a policy is disabled or deleted. A policy loads whole or not at
//! all: a failure part-way undoes what the load had done, so no map entry
//! or attach stays behind.
//!
//! `hooks` holds what the pipeline needs to read a hook's records;
//! `events` turns those records into Tetragon's events; `api` serves
//! Tetragon's policy RPCs; `managed` loads what relays send.

pub mod api;
mod attach;
mod cred;
pub mod events;
pub mod hooks;
mod kernel;
pub use kernel::ProgramRuns;
pub mod managed;
pub mod placement;
mod selectors;
pub mod stacks;
pub use selectors::SelectorCounts;
mod sock;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aya::Ebpf;
use node_sensor_common::HookSpec;
use policy::compile::{self, HookArg};
use policy::schema::Arg;
use policy::scope::Scope;
pub use policy::select::Mode;
use policy::{PolicyError, TracingPolicy};

use crate::loader::HookPrograms;
use crate::tracefs::Tracefs;
use hooks::{HookInfo, HookPoint, HookTable, Shown, ShownArg};
use kernel::{AttachError, Attachments, Point};
use placement::Placement;
use view::KernelInfo;

/// Policies loaded at once at most (each holds its compiled hooks).
pub const MAX_POLICIES: usize = 256;

/// Why a policy operation failed. Each maps to one gRPC code at the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The document is not a valid policy, or does not fit this kernel.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    #[error("a policy named {0} is already loaded")]
    Exists(String),
    #[error("no policy named {0} is loaded")]
    NotFound(String),
    #[error("{MAX_POLICIES} policies are loaded; delete one first")]
    Full,
    /// The kernel refused: the policy is kept, in the error state.
    #[error("loading policy {name} failed: {reason}")]
    Kernel { name: String, reason: String },
    /// The policy has no enforcement action to switch on.
    #[error("policy {0} has no enforcement action (it is monitor-only)")]
    MonitorOnly(String),
    /// A relay or Kubernetes sent it: it changes there.
    #[error("policy {name} is managed by {by}; change it there ({})", by.how())]
    Managed { name: String, by: Origin },
}

/// Where a policy came from, and so where it is changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A file at start, or this sensor's API.
    Local,
    /// A relay's set (`managed`).
    Relay,
    /// A TracingPolicy object of the Kubernetes API (`crate::k8s::policies`).
    Kubernetes,
}

impl Origin {
    fn how(self) -> &'static str {
        match self {
            Origin::Local => "vigil tracingpolicy",
            Origin::Relay => "vigil tracingpolicy --server-address RELAY",
            Origin::Kubernetes => "kubectl",
        }
    }

    /// What `ListTracingPolicies` says of a managed policy.
    pub fn info(self) -> &'static str {
        match self {
            Origin::Local => "",
            Origin::Relay => "managed by the relay",
            Origin::Kubernetes => "managed by Kubernetes",
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Local => "this node",
            Origin::Relay => "the relay",
            Origin::Kubernetes => "Kubernetes",
        })
    }
}

/// What `ListTracingPolicies` shows of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Enabled,
    Disabled,
    /// The load failed; why.
    Error(String),
}

#[derive(Debug, Clone)]
pub struct PolicyStatus {
    pub id: u64,
    pub name: String,
    pub namespace: String,
    pub state: State,
    /// Hook kinds, by Tetragon's sensor names (`generic_tracepoint`).
    pub sensors: Vec<String>,
    /// Events its hooks produced.
    pub events: u64,
    /// Bytes of kernel memory this policy's hook map entries take.
    pub kernel_memory_bytes: u64,
    pub mode: Mode,
    pub origin: Origin,
    /// Where a scoped policy applies on this node, in words; `None` for a
    /// policy without a scope (it applies to every process).
    pub scope: Option<String>,
    /// What each hook's selectors did (hooks with selectors only).
    pub selector_counts: Vec<HookSelectorCounts>,
}

/// One hook's selector counts, as `TracingPolicySelectorActionCounters`
/// lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSelectorCounts {
    /// Where the hook is (`tracepoint:syscalls/sys_enter_openat`,
    /// `uprobe:/bin/bash:readline`, `kprobe:__x64_sys_openat`).
    pub hook: String,
    /// Its place among the policy's hooks.
    pub hook_index: u32,
    /// Per selector: its label and counts.
    pub selectors: Vec<(String, SelectorCounts)>,
}

/// One compiled hook of a loaded policy.
struct Hook {
    id: u32,
    point: Point,
    info: Arc<HookInfo>,
}

struct Loaded {
    id: u64,
    name: String,
    namespace: String,
    hooks: Vec<Hook>,
    state: State,
    mode: Mode,
    origin: Origin,
    scope: Option<Scoped>,
}

/// A scoped policy's scope: its number in the kernel and the cgroups put
/// there for it.
struct Scoped {
    scope: Scope,
    id: u32,
    cgroups: BTreeSet<u64>,
}

/// Owns the BPF object (after the loader) and every policy in it.
pub struct PolicyHost {
    kernel: Attachments,
    /// Tracefs and BTF, opened by the first policy that needs each.
    view: KernelInfo,
    table: Arc<HookTable>,
    /// By (namespace, name).
    policies: BTreeMap<(String, String), Loaded>,
    next_hook: u32,
    next_policy: u64,
    /// Where scoped policies apply: this node's containers and labels.
    placement: Placement,
    /// Cgroups that did not fit into the kernel's scope map (their
    /// processes go unseen by the policies that admit them).
    pub scope_refused: Arc<AtomicU64>,
}

impl PolicyHost {
    /// Takes the BPF object; `programs` is the loader's verdict on the
    /// generic hook programs.
    pub fn new(ebpf: Ebpf, programs: HookPrograms) -> PolicyHost {
        PolicyHost {
            kernel: Attachments::new(ebpf, programs),
            view: KernelInfo { tracefs: None, btf: None },
            table: Arc::new(HookTable::default()),
            policies: BTreeMap::new(),
            next_hook: 1,
            next_policy: 1,
            placement: Placement::default(),
            scope_refused: Arc::default(),
        }
    }

    /// Puts the binaries of the processes running now into the kernel's
    /// map for `matchBinaries` (called once, after the process cache's own
    /// walk of `/proc`, so as not to widen the window before it).
    pub fn seed_binaries(&mut self, proc_root: &std::path::Path) {
        match self.kernel.seed_binaries(proc_root) {
            Ok(n) => tracing::debug!(processes = n, "binaries of running processes kept for matchBinaries"),
            Err(e) => tracing::warn!(error = %e, "matchBinaries will not know processes started before the sensor"),
        }
    }

    /// What the pipeline reads hook records through.
    pub fn table(&self) -> Arc<HookTable> {
        self.table.clone()
    }

    /// Parses, compiles and loads a policy document.
    pub fn add_yaml(&mut self, text: &str) -> Result<(), HostError> {
        self.add(policy::parse(text)?)
    }

    /// Compiles and loads `policy`, enabled. A policy the kernel refuses is
    /// kept in the error state (as Tetragon lists it) and the error
    /// returned; one naming what is not there is refused and not kept.
    pub fn add(&mut self, policy: TracingPolicy) -> Result<(), HostError> {
        self.add_from(policy, Origin::Local)
    }

    /// [`PolicyHost::add`], for a policy from `origin`.
    pub fn add_from(&mut self, policy: TracingPolicy, origin: Origin) -> Result<(), HostError> {
        let key = key_of(&policy);
        if self.policies.contains_key(&key) {
            return Err(HostError::Exists(display_name(&key)));
        }
        if self.policies.len() >= MAX_POLICIES {
            return Err(HostError::Full);
        }
        let mode = policy::select::mode_of(&policy)?;
        let scope = Scope::of(&policy)?;
        let compiled = self.compile(&policy)?;
        let mut hooks =
            Vec::with_capacity(compiled.tracepoints.len() + compiled.uprobes.len() + compiled.kprobes.len());
        for (kprobe, spec) in compiled.kprobes.into_iter().zip(&policy.spec.kprobes) {
            let point = HookPoint::Kprobe { function: kprobe.symbol.clone() };
            let args = shown_args(&kprobe.args, &spec.args);
            let ret = kprobe.ret.as_ref().and_then(|r| Shown::of(r.arg_type, r.size));
            let info = hook_info(&key.1, point, spec.message.as_deref(), &spec.tags, args, ret);
            hooks.push(Hook { id: self.hook_id(), point: Point::Kprobe(kprobe), info });
        }
        for (tracepoint, spec) in compiled.tracepoints.into_iter().zip(&policy.spec.tracepoints) {
            let point =
                HookPoint::Tracepoint { subsystem: tracepoint.subsystem.clone(), event: tracepoint.event.clone() };
            // Tetragon drops labels on tracepoint arguments.
            let args = shown_args(&tracepoint.args, &[]);
            let info = hook_info(&key.1, point, spec.message.as_deref(), &spec.tags, args, None);
            hooks.push(Hook { id: self.hook_id(), point: Point::Tracepoint(tracepoint), info });
        }
        for uprobe in compiled.uprobes {
            // `compile` names each hook's place: spec.uprobes[i].symbols[j].
            let spec = uprobe_index(&uprobe.at).and_then(|i| policy.spec.uprobes.get(i));
            let point = HookPoint::Uprobe {
                path: uprobe.path.clone(),
                symbol: uprobe.symbol.clone().unwrap_or_default(),
                offset: uprobe.offset,
            };
            let args = shown_args(&uprobe.args, spec.map_or(&[][..], |s| &s.args));
            let info = hook_info(
                &key.1,
                point,
                spec.and_then(|s| s.message.as_deref()),
                spec.map_or(&[][..], |s| &s.tags),
                args,
                None,
            );
            hooks.push(Hook { id: self.hook_id(), point: Point::Uprobe(uprobe), info });
        }
        let id = self.next_policy;
        // The scope's cgroups go in before the hooks, so their first hit
        // finds them.
        let mut scope =
            placement::is_scoped(&scope).then(|| Scoped { scope, id: (id as u32).max(1), cgroups: BTreeSet::new() });
        if let Some(s) = &mut scope {
            self.sync_scope(s);
        }
        let state = match self.enable_hooks(&hooks, mode, scope.as_ref().map(|s| s.id)) {
            Ok(()) => State::Enabled,
            Err(AttachError::Invalid(e)) => {
                if let Some(s) = &mut scope {
                    self.clear_scope(s);
                }
                return Err(HostError::Invalid(e));
            }
            Err(AttachError::Kernel(reason)) => State::Error(reason),
        };
        self.next_policy += 1;
        let result = match &state {
            State::Error(reason) => Err(HostError::Kernel { name: key.1.clone(), reason: reason.clone() }),
            _ => Ok(()),
        };
        let loaded = Loaded { id, name: key.1.clone(), namespace: key.0.clone(), hooks, state, mode, origin, scope };
        self.policies.insert(key, loaded);
        result
    }

    fn hook_id(&mut self) -> u32 {
        let id = self.next_hook;
        self.next_hook = self.next_hook.wrapping_add(1).max(1);
        id
    }

    /// A policy's state and mode, if it is loaded.
    pub fn state_of(&self, name: &str, namespace: &str) -> Option<(State, Mode)> {
        self.policies.get(&(namespace.to_owned(), name.to_owned())).map(|p| (p.state.clone(), p.mode))
    }

    /// Refuses a change through the sensor's own API to a policy a relay
    /// or Kubernetes manages (it would be put back).
    pub fn check_local(&self, name: &str, namespace: &str) -> Result<(), HostError> {
        let key = (namespace.to_owned(), name.to_owned());
        match self.policies.get(&key) {
            Some(p) if p.origin != Origin::Local => Err(HostError::Managed { name: display_name(&key), by: p.origin }),
            _ => Ok(()),
        }
    }

    /// Where scoped policies apply changed: each one's cgroups follow.
    pub fn set_placement(&mut self, placement: Placement) {
        if placement == self.placement {
            return;
        }
        self.placement = placement;
        let keys: Vec<(String, String)> =
            self.policies.iter().filter(|(_, p)| p.scope.is_some()).map(|(k, _)| k.clone()).collect();
        for key in keys {
            let Some(mut scope) = self.policies.get_mut(&key).and_then(|p| p.scope.take()) else { continue };
            self.sync_scope(&mut scope);
            if let Some(p) = self.policies.get_mut(&key) {
                p.scope = Some(scope);
            }
        }
    }

    /// Brings a scope's cgroups in the kernel in line with the placement.
    fn sync_scope(&mut self, s: &mut Scoped) {
        let want = self.placement.cgroups_of(&s.scope);
        for gone in s.cgroups.difference(&want) {
            self.kernel.scope_remove(s.id, *gone);
        }
        s.cgroups.retain(|c| want.contains(c));
        for new in want {
            if s.cgroups.contains(&new) {
                continue;
            }
            match self.kernel.scope_insert(s.id, new) {
                Ok(()) => {
                    s.cgroups.insert(new);
                }
                Err(e) => {
                    let n = self.scope_refused.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::warn!(cgroup = new, error = %e, refused = n,
                            "a scoped policy's cgroup did not fit into the kernel map; its processes go unseen");
                    }
                }
            }
        }
    }

    /// Where a scope applies on this node, as the policy list says it.
    fn reach(&self, s: &Scoped) -> String {
        if !s.scope.admits_node(&self.placement.node_labels) {
            return "applies to no process here: its nodeSelector does not match this node".into();
        }
        if s.cgroups.contains(&node_sensor_common::SCOPE_EVERY_CGROUP) {
            return "applies to every process here".into();
        }
        match s.cgroups.len() {
            1 => "applies to 1 container here".into(),
            n => format!("applies to {n} containers here"),
        }
    }

    fn clear_scope(&mut self, s: &mut Scoped) {
        for c in std::mem::take(&mut s.cgroups) {
            self.kernel.scope_remove(s.id, c);
        }
    }

    /// Takes a policy out of the kernel and forgets it.
    pub fn delete(&mut self, name: &str, namespace: &str) -> Result<(), HostError> {
        let key = (namespace.to_owned(), name.to_owned());
        let mut loaded = self.policies.remove(&key).ok_or_else(|| HostError::NotFound(display_name(&key)))?;
        if loaded.state == State::Enabled {
            self.disable_hooks(&loaded.hooks);
        }
        if let Some(s) = &mut loaded.scope {
            self.clear_scope(s);
        }
        Ok(())
    }

    /// Takes a policy's hooks out of the kernel, keeping the policy.
    pub fn disable(&mut self, name: &str, namespace: &str) -> Result<(), HostError> {
        let key = (namespace.to_owned(), name.to_owned());
        let loaded = self.policies.get_mut(&key).ok_or_else(|| HostError::NotFound(display_name(&key)))?;
        if loaded.state != State::Enabled {
            return Ok(());
        }
        loaded.state = State::Disabled;
        let hooks = std::mem::take(&mut loaded.hooks);
        self.disable_hooks(&hooks);
        if let Some(loaded) = self.policies.get_mut(&key) {
            loaded.hooks = hooks;
        }
        Ok(())
    }

    /// Puts a disabled (or failed) policy's hooks back into the kernel.
    pub fn enable(&mut self, name: &str, namespace: &str) -> Result<(), HostError> {
        let key = (namespace.to_owned(), name.to_owned());
        let loaded = self.policies.get_mut(&key).ok_or_else(|| HostError::NotFound(display_name(&key)))?;
        if loaded.state == State::Enabled {
            return Ok(());
        }
        let hooks = std::mem::take(&mut loaded.hooks);
        let mode = loaded.mode;
        let scope = loaded.scope.as_ref().map(|s| s.id);
        let result = self.enable_hooks(&hooks, mode, scope).map_err(|e| match e {
            AttachError::Invalid(e) => e.to_string(),
            AttachError::Kernel(reason) => reason,
        });
        if let Some(loaded) = self.policies.get_mut(&key) {
            loaded.hooks = hooks;
            loaded.state = match &result {
                Ok(()) => State::Enabled,
                Err(reason) => State::Error(reason.clone()),
            };
        }
        result.map_err(|reason| HostError::Kernel { name: key.1, reason })
    }

    /// Switches a policy between enforcing and monitoring (a monitor-only
    /// policy has nothing to enforce). Kept across disable and enable.
    pub fn set_mode(&mut self, name: &str, namespace: &str, monitor: bool) -> Result<(), HostError> {
        let key = (namespace.to_owned(), name.to_owned());
        let loaded = self.policies.get_mut(&key).ok_or_else(|| HostError::NotFound(display_name(&key)))?;
        let mode = match (loaded.mode, monitor) {
            (Mode::MonitorOnly, true) => return Ok(()),
            (Mode::MonitorOnly, false) => return Err(HostError::MonitorOnly(display_name(&key))),
            (_, true) => Mode::Monitor,
            (_, false) => Mode::Enforce,
        };
        loaded.mode = mode;
        if loaded.state == State::Enabled {
            let ids: Vec<u32> = loaded.hooks.iter().map(|h| h.id).collect();
            for id in ids {
                self.kernel
                    .set_monitor(id, monitor)
                    .map_err(|reason| HostError::Kernel { name: key.1.clone(), reason })?;
            }
        }
        Ok(())
    }

    /// Every loaded BPF program's runs and run time (`--metrics-address`).
    pub fn program_runs(&self) -> Vec<kernel::ProgramRuns> {
        self.kernel.program_runs()
    }

    /// Every policy, in (namespace, name) order.
    pub fn list(&self) -> Vec<PolicyStatus> {
        self.policies
            .values()
            .map(|p| {
                let mut sensors: Vec<String> = p
                    .hooks
                    .iter()
                    .map(|h| match h.point {
                        Point::Tracepoint(_) => "generic_tracepoint".to_owned(),
                        Point::Uprobe(_) => "generic_uprobe".to_owned(),
                        Point::Kprobe(_) => "generic_kprobe".to_owned(),
                    })
                    .collect();
                sensors.dedup();
                PolicyStatus {
                    id: p.id,
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    state: p.state.clone(),
                    sensors,
                    events: p.hooks.iter().map(|h| h.info.events.load(Ordering::Relaxed)).sum(),
                    kernel_memory_bytes: if p.state == State::Enabled {
                        p.hooks.iter().map(|h| kernel_bytes(h.point.selectors())).sum::<u64>()
                            + p.scope.as_ref().map_or(0, |s| scope_bytes(s.cgroups.len()))
                    } else {
                        0
                    },
                    mode: p.mode,
                    origin: p.origin,
                    scope: p.scope.as_ref().map(|s| self.reach(s)),
                    selector_counts: p
                        .hooks
                        .iter()
                        .enumerate()
                        .filter(|(_, h)| !h.point.selectors().is_empty())
                        .map(|(i, h)| HookSelectorCounts {
                            hook: hook_name(&h.point),
                            hook_index: i as u32,
                            selectors: h
                                .point
                                .selectors()
                                .labels
                                .iter()
                                .cloned()
                                .zip(
                                    self.kernel
                                        .selector_counts(h.id)
                                        .into_iter()
                                        .chain(std::iter::repeat(SelectorCounts::default())),
                                )
                                .collect(),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    fn compile(&mut self, policy: &TracingPolicy) -> Result<compile::Compiled, HostError> {
        let unavailable = |what: &str, reason: String| HostError::Kernel {
            name: policy.metadata.name.clone(),
            reason: format!("{what} is not available: {reason}"),
        };
        if !policy.spec.tracepoints.is_empty() && self.view.tracefs.is_none() {
            self.view.tracefs = Some(Tracefs::open().map_err(|r| unavailable("tracefs", r))?);
        }
        // BTF is parsed for the policy and let go after: kept, it would
        // hold about 40 MiB for the sensor's life.
        if !policy.spec.kprobes.is_empty() {
            let btf = crate::btf_offsets::open(crate::btf_offsets::VMLINUX_BTF)
                .map_err(|e| unavailable("kernel BTF", e.to_string()))?;
            self.view.btf = Some(btf);
        }
        let compiled = compile::compile(policy, &self.view);
        self.view.btf = None;
        Ok(compiled?)
    }

    /// Puts `hooks` into the kernel. On a failure, what was done is
    /// undone, in reverse, and the error returned.
    fn enable_hooks(&mut self, hooks: &[Hook], mode: Mode, scope: Option<u32>) -> Result<(), AttachError> {
        for (done, hook) in hooks.iter().enumerate() {
            // The table first, so the first hit finds its hook.
            self.table.insert(hook.id, hook.info.clone());
            if let Err(e) = self.kernel.attach(hook.id, &hook.point, mode != Mode::Enforce, scope) {
                for h in hooks[..done].iter().rev() {
                    self.kernel.detach(h.id, &h.point);
                }
                for h in &hooks[..=done] {
                    self.table.remove(h.id);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn disable_hooks(&mut self, hooks: &[Hook]) {
        for hook in hooks {
            self.kernel.detach(hook.id, &hook.point);
            self.table.retire(hook.id);
        }
    }
}

/// The `i` of `spec.uprobes[i]…`.
fn uprobe_index(at: &str) -> Option<usize> {
    at.strip_prefix("spec.uprobes[")?.split(']').next()?.parse().ok()
}

/// How each compiled argument is shown, with the policy's labels (none
/// given: none shown).
fn shown_args(args: &[HookArg], spec: &[Arg]) -> Vec<ShownArg> {
    args.iter()
        .enumerate()
        .map(|(i, a)| ShownArg {
            // `compile` resolved every type; `refuse_unsupported` and
            // `compile` left only types `Shown` knows.
            shown: Shown::of(a.arg_type, a.size).unwrap_or(Shown::Hidden),
            label: spec.get(i).and_then(|s| s.label.clone()).unwrap_or_default(),
        })
        .collect()
}

fn hook_info(
    policy: &str,
    point: HookPoint,
    message: Option<&str>,
    tags: &[String],
    args: Vec<ShownArg>,
    ret: Option<Shown>,
) -> Arc<HookInfo> {
    Arc::new(HookInfo {
        policy: policy.to_owned(),
        point,
        message: message.unwrap_or_default().to_owned(),
        tags: tags.to_vec(),
        args,
        ret,
        events: AtomicU64::new(0),
    })
}

/// (namespace, name): only a `TracingPolicyNamespaced` has a namespace (a
/// cluster-wide policy's is ignored, as the API server ignores it).
pub(crate) fn key_of(policy: &TracingPolicy) -> (String, String) {
    let namespace = match policy.kind {
        policy::schema::Kind::TracingPolicyNamespaced => policy.metadata.namespace.clone().unwrap_or_default(),
        policy::schema::Kind::TracingPolicy => String::new(),
    };
    (namespace, policy.metadata.name.clone())
}

pub(crate) fn display_name((namespace, name): &(String, String)) -> String {
    if namespace.is_empty() { name.clone() } else { format!("{namespace}/{name}") }
}

/// Bytes of kernel map values one hook takes: its hook spec and, with
/// selectors, their set, string values and per-CPU counters (the maps
/// allocate entries as they are added).
fn kernel_bytes(selectors: &policy::select::Selectors) -> u64 {
    let mut bytes = std::mem::size_of::<HookSpec>();
    if !selectors.is_empty() {
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        let strings: usize = selectors.strings.iter().map(|f| f.values.len()).sum();
        bytes += std::mem::size_of::<node_sensor_common::SelectorSet>()
            + strings * std::mem::size_of::<node_sensor_common::StringKey>()
            + cpus * std::mem::size_of::<node_sensor_common::ActionCounts>();
    }
    bytes as u64
}

/// Bytes of the scope map a scope's cgroups take (key and value).
fn scope_bytes(cgroups: usize) -> u64 {
    (cgroups * (std::mem::size_of::<node_sensor_common::ScopeKey>() + 1)) as u64
}

/// A hook as `selector_action_counters` names it.
fn hook_name(point: &Point) -> String {
    match point {
        Point::Tracepoint(tp) => format!("tracepoint:{}/{}", tp.subsystem, tp.event),
        Point::Uprobe(up) => match &up.symbol {
            Some(symbol) => format!("uprobe:{}:{symbol}", up.path),
            None => format!("uprobe:{}:{:#x}", up.path, up.offset),
        },
        Point::Kprobe(kp) => format!("kprobe:{}", kp.symbol),
    }
}

/// The policy files to load at start: those named, then the directory's
/// `*.yaml` and `*.yml` files in name order.
pub fn startup_files(
    files: &[std::path::PathBuf],
    dir: Option<&std::path::Path>,
) -> Result<Vec<std::path::PathBuf>, String> {
    let mut all = files.to_vec();
    if let Some(dir) = dir {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("--tracing-policy-dir {}: {e}", dir.display()))?;
        let mut found: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        found.sort();
        all.extend(found);
    }
    Ok(all)
}

/// A policy file's text, refused past the policy size bound.
pub fn read_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(policy::MAX_POLICY_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() > policy::MAX_POLICY_BYTES {
        return Err(format!("{}: larger than {} bytes", path.display(), policy::MAX_POLICY_BYTES));
    }
    Ok(text)
}
