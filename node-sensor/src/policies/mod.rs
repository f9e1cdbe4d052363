//! Tracing policies in this sensor: the host that compiles each policy
//! (with the `policy` crate) against this kernel, fills the generic
//! tracepoint program's hook map and attaches it, and takes it all back
//! when a policy is disabled or deleted. A policy loads whole or not at
//! all: a failure part-way undoes what the load had done, so no map entry
//! or attach stays behind.
//!
//! `hooks` holds what the pipeline needs to read a hook's records;
//! `events` turns those records into Tetragon's events.

pub mod api;
mod attach;
pub mod events;
pub mod hooks;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData};
use std::os::fd::{AsFd, OwnedFd};

use aya::programs::TracePoint;
use node_sensor_common::{HOOKS_PER_TRACEPOINT, HookSpec, TracepointHooks};
use policy::compile::{self, TracepointHook};
use policy::{PolicyError, TracingPolicy};

use crate::loader::TRACEPOINT_PROGRAM;
use crate::tracefs::Tracefs;
use hooks::{HookInfo, HookPoint, HookTable, Shown};

/// Policies loaded at once at most (each holds its compiled hooks).
pub const MAX_POLICIES: usize = 256;

/// Why a policy operation failed. Each maps to one gRPC code at the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The document is not a valid policy, or does not fit this kernel.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// Valid, but asks for what Vigil does not do yet.
    #[error("{0}")]
    Unsupported(PolicyError),
    #[error("a policy named {0} is already loaded")]
    Exists(String),
    #[error("no policy named {0} is loaded")]
    NotFound(String),
    #[error("{MAX_POLICIES} policies are loaded; delete one first")]
    Full,
    /// The kernel refused: the policy is kept, in the error state.
    #[error("loading policy {name} failed: {reason}")]
    Kernel { name: String, reason: String },
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
    /// Hook points, Tetragon's sensor names (`generic_tracepoint`).
    pub sensors: Vec<String>,
    /// Events its hooks produced.
    pub events: u64,
    /// Bytes of kernel memory this policy's hook map entries take.
    pub kernel_memory_bytes: u64,
}

/// One compiled hook of a loaded policy.
struct Hook {
    id: u32,
    tracepoint: TracepointHook,
    info: Arc<HookInfo>,
}

struct Loaded {
    id: u64,
    name: String,
    namespace: String,
    hooks: Vec<Hook>,
    state: State,
}

/// One tracepoint the program is attached to, and the hooks it serves.
struct Attached {
    /// Closing it detaches the program from the tracepoint.
    _link: OwnedFd,
    hooks: TracepointHooks,
}

/// Owns the BPF object (after the loader) and every policy in it.
pub struct PolicyHost {
    ebpf: Ebpf,
    hook_map: Option<BpfHashMap<MapData, u32, TracepointHooks>>,
    /// Why the tracepoint program cannot be used, if it cannot.
    unusable: Option<String>,
    tracefs: Option<Tracefs>,
    table: Arc<HookTable>,
    attached: HashMap<u32, Attached>,
    /// By (namespace, name).
    policies: BTreeMap<(String, String), Loaded>,
    next_hook: u32,
    next_policy: u64,
}

impl PolicyHost {
    /// Takes the BPF object; `tracepoint_program` is the loader's verdict
    /// on the generic program.
    pub fn new(mut ebpf: Ebpf, tracepoint_program: Result<(), String>) -> PolicyHost {
        let hook_map = ebpf.take_map("TP_HOOKS").and_then(|m| BpfHashMap::try_from(m).ok());
        let unusable = match (&tracepoint_program, &hook_map) {
            (Err(why), _) => Some(why.clone()),
            (Ok(()), None) => Some("BPF map `TP_HOOKS` is missing or has the wrong type".to_owned()),
            (Ok(()), Some(_)) => None,
        };
        PolicyHost {
            ebpf,
            hook_map,
            unusable,
            tracefs: None,
            table: Arc::new(HookTable::default()),
            attached: HashMap::new(),
            policies: BTreeMap::new(),
            next_hook: 1,
            next_policy: 1,
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
    /// kept in the error state (as Tetragon lists it) and the error returned.
    pub fn add(&mut self, policy: TracingPolicy) -> Result<(), HostError> {
        let key = key_of(&policy);
        if self.policies.contains_key(&key) {
            return Err(HostError::Exists(display_name(&key)));
        }
        if self.policies.len() >= MAX_POLICIES {
            return Err(HostError::Full);
        }
        refuse_unsupported(&policy)?;
        let compiled = self.compile(&policy)?;
        let hooks = compiled
            .tracepoints
            .into_iter()
            .zip(&policy.spec.tracepoints)
            .map(|(tracepoint, spec)| {
                let id = self.next_hook;
                self.next_hook = self.next_hook.wrapping_add(1).max(1);
                let info = Arc::new(HookInfo {
                    policy: key.1.clone(),
                    point: HookPoint::Tracepoint {
                        subsystem: tracepoint.subsystem.clone(),
                        event: tracepoint.event.clone(),
                    },
                    message: spec.message.clone().unwrap_or_default(),
                    tags: spec.tags.clone(),
                    // `compile` resolved every type; `refuse_unsupported`
                    // left only those `Shown` knows.
                    args: tracepoint
                        .args
                        .iter()
                        .map(|a| Shown::of(a.arg_type, a.size).unwrap_or(Shown::Hidden))
                        .collect(),
                    events: AtomicU64::new(0),
                });
                Hook { id, tracepoint, info }
            })
            .collect();
        let id = self.next_policy;
        self.next_policy += 1;
        let mut loaded = Loaded { id, name: key.1.clone(), namespace: key.0.clone(), hooks, state: State::Disabled };
        let result = self.enable_hooks(&loaded.hooks);
        loaded.state = match &result {
            Ok(()) => State::Enabled,
            Err(reason) => State::Error(reason.clone()),
        };
        let name = loaded.name.clone();
        self.policies.insert(key, loaded);
        result.map_err(|reason| HostError::Kernel { name, reason })
    }

    /// Takes a policy out of the kernel and forgets it.
    pub fn delete(&mut self, name: &str, namespace: &str) -> Result<(), HostError> {
        let key = (namespace.to_owned(), name.to_owned());
        let loaded = self.policies.remove(&key).ok_or_else(|| HostError::NotFound(display_name(&key)))?;
        if loaded.state == State::Enabled {
            self.disable_hooks(&loaded.hooks);
        }
        for hook in &loaded.hooks {
            self.table.retire(hook.id);
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
        let result = self.enable_hooks(&hooks);
        if let Some(loaded) = self.policies.get_mut(&key) {
            loaded.hooks = hooks;
            loaded.state = match &result {
                Ok(()) => State::Enabled,
                Err(reason) => State::Error(reason.clone()),
            };
        }
        result.map_err(|reason| HostError::Kernel { name: key.1, reason })
    }

    /// Every policy, in (namespace, name) order.
    pub fn list(&self) -> Vec<PolicyStatus> {
        self.policies
            .values()
            .map(|p| PolicyStatus {
                id: p.id,
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                state: p.state.clone(),
                sensors: if p.hooks.is_empty() { vec![] } else { vec!["generic_tracepoint".to_owned()] },
                events: p.hooks.iter().map(|h| h.info.events.load(Ordering::Relaxed)).sum(),
                kernel_memory_bytes: if p.state == State::Enabled {
                    (p.hooks.len() * std::mem::size_of::<HookSpec>()) as u64
                } else {
                    0
                },
            })
            .collect()
    }

    fn compile(&mut self, policy: &TracingPolicy) -> Result<compile::Compiled, HostError> {
        if policy.spec.tracepoints.is_empty() {
            return Ok(compile::Compiled { tracepoints: vec![] });
        }
        if self.tracefs.is_none() {
            let tracefs = Tracefs::open().map_err(|reason| HostError::Kernel {
                name: policy.metadata.name.clone(),
                reason: format!("tracefs is not available: {reason}"),
            })?;
            self.tracefs = Some(tracefs);
        }
        let Some(tracefs) = self.tracefs.as_ref() else {
            return Err(HostError::Kernel { name: policy.metadata.name.clone(), reason: "tracefs is gone".into() });
        };
        Ok(compile::compile(policy, tracefs)?)
    }

    /// Puts `hooks` into the kernel: each in its tracepoint's map entry,
    /// the program attached where it was not. On a failure, what was done
    /// is undone, in reverse.
    fn enable_hooks(&mut self, hooks: &[Hook]) -> Result<(), String> {
        if let Some(why) = &self.unusable
            && !hooks.is_empty()
        {
            return Err(format!("the tracepoint program is not available: {why}"));
        }
        let mut done: Vec<u32> = Vec::with_capacity(hooks.len());
        for hook in hooks {
            if let Err(why) = self.enable_hook(hook) {
                for id in done.into_iter().rev() {
                    if let Some(h) = hooks.iter().find(|h| h.id == id) {
                        self.disable_hook(h);
                    }
                }
                for h in hooks {
                    self.table.remove(h.id);
                }
                return Err(why);
            }
            self.table.insert(hook.id, hook.info.clone());
            done.push(hook.id);
        }
        Ok(())
    }

    fn enable_hook(&mut self, hook: &Hook) -> Result<(), String> {
        let tp = &hook.tracepoint;
        let where_ = format!("tracepoint {}/{}", tp.subsystem, tp.event);
        let mut value = self.attached.get(&tp.id).map(|a| a.hooks).unwrap_or_default();
        let count = value.count as usize;
        if count >= HOOKS_PER_TRACEPOINT {
            return Err(format!("{where_} already serves {HOOKS_PER_TRACEPOINT} policy hooks"));
        }
        value.hooks[count] = tp.spec(hook.id);
        value.count += 1;
        // The table first, so the first hit finds its hook.
        self.table.insert(hook.id, hook.info.clone());
        let map = self.hook_map.as_mut().ok_or("the hook map is missing")?;
        map.insert(tp.id, value, 0).map_err(|e| format!("{where_}: updating the hook map: {e}"))?;
        if let Some(a) = self.attached.get_mut(&tp.id) {
            a.hooks = value;
            return Ok(());
        }
        let attached = tracepoint_program(&mut self.ebpf).and_then(|p| {
            let fd = p.fd().map_err(|e| e.to_string())?;
            attach::tracepoint(fd.as_fd(), tp.id, u64::from(tp.id)).map_err(|e| {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    format!("attaching to {where_}: {e} (BPF cookies on tracepoints need Linux 5.15 or later)")
                } else {
                    format!("attaching to {where_}: {e}")
                }
            })
        });
        match attached {
            Ok(link) => {
                self.attached.insert(tp.id, Attached { _link: link, hooks: value });
                Ok(())
            }
            Err(why) => {
                if let Some(map) = self.hook_map.as_mut() {
                    let _ = map.remove(&tp.id);
                }
                Err(why)
            }
        }
    }

    fn disable_hooks(&mut self, hooks: &[Hook]) {
        for hook in hooks {
            self.disable_hook(hook);
            self.table.retire(hook.id);
        }
    }

    /// Takes one hook out; detaches the program once its tracepoint serves
    /// no hook.
    fn disable_hook(&mut self, hook: &Hook) {
        let tp_id = hook.tracepoint.id;
        let Some(attached) = self.attached.get_mut(&tp_id) else {
            return;
        };
        let mut value = TracepointHooks::default();
        for spec in attached.hooks.hooks.iter().take(attached.hooks.count as usize) {
            if spec.hook_id != hook.id {
                value.hooks[value.count as usize] = *spec;
                value.count += 1;
            }
        }
        attached.hooks = value;
        let empty = value.count == 0;
        if let Some(map) = self.hook_map.as_mut() {
            let result = if empty { map.remove(&tp_id) } else { map.insert(tp_id, value, 0) };
            if let Err(e) = result {
                tracing::warn!(tracepoint = tp_id, error = %e, "updating the hook map failed");
            }
        }
        if empty {
            // Dropping the link detaches.
            self.attached.remove(&tp_id);
        }
    }

    /// Tracepoints the program is attached to now (tests: nothing stays
    /// attached after a failed load).
    pub fn attached_tracepoints(&self) -> usize {
        self.attached.len()
    }
}

fn tracepoint_program(ebpf: &mut Ebpf) -> Result<&mut TracePoint, String> {
    ebpf.program_mut(TRACEPOINT_PROGRAM)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| format!("BPF program `{TRACEPOINT_PROGRAM}` is missing"))
}

fn key_of(policy: &TracingPolicy) -> (String, String) {
    (policy.metadata.namespace.clone().unwrap_or_default(), policy.metadata.name.clone())
}

fn display_name((namespace, name): &(String, String)) -> String {
    if namespace.is_empty() { name.clone() } else { format!("{namespace}/{name}") }
}

/// What parses and validates but this sensor does not load yet, refused
/// by path rather than loaded in part.
fn refuse_unsupported(policy: &TracingPolicy) -> Result<(), HostError> {
    let no = |path: String, what: &str| {
        Err(HostError::Unsupported(PolicyError { path, reason: format!("{what} are not supported by Vigil yet") }))
    };
    if !policy.spec.kprobes.is_empty() {
        return no("spec.kprobes".into(), "kprobe hooks");
    }
    if !policy.spec.uprobes.is_empty() {
        return no("spec.uprobes".into(), "uprobe hooks");
    }
    for (i, t) in policy.spec.tracepoints.iter().enumerate() {
        if !t.selectors.is_empty() {
            return no(format!("spec.tracepoints[{i}].selectors"), "selectors (in-kernel filters and actions)");
        }
        for (j, a) in t.args.iter().enumerate() {
            if a.arg_type == policy::schema::ArgType::Fd {
                return no(format!("spec.tracepoints[{i}].args[{j}].type"), "fd arguments on tracepoints");
            }
        }
    }
    Ok(())
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
