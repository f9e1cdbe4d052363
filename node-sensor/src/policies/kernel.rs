//! The kernel side of policies: the hook map and the generic programs'
//! attachments. A tracepoint is attached once, its map entry listing the
//! hooks of every policy on it; a uprobe is attached per hook. Each call
//! either does all it says or leaves the kernel as it found it.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::KProbe;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeError, UProbeLinkId, UProbeScope};
use aya::programs::{ProgramError, TracePoint, UProbe};
use node_sensor_common::{
    HOOK_SCOPED, HOOKS_PER_ATTACH, HookSet, HookSpec, KPROBE_COOKIE, KRETPROBE_COOKIE, OVERRIDE_COOKIE, ScopeKey,
    TRACEPOINT_FD_COOKIE, UPROBE_COOKIE,
};
use policy::PolicyError;
use policy::compile::{KprobeHook, Read, TracepointHook, UprobeHook};
use policy::select::Selectors;

use super::attach;
use super::selectors::{SelectorCounts, SelectorMaps};
use crate::loader::{
    HookPrograms, KPROBE_PROGRAM, KPROBE_SOCK_PROGRAM, KRETPROBE_PROGRAM, OVERRIDE_PROGRAM, TRACEPOINT_FD_PROGRAM,
    TRACEPOINT_PROGRAM, UPROBE_PROGRAM,
};

/// Why an attach failed: the policy names what is not there (refused like
/// bad input), or the kernel said no (the policy is kept, in error).
#[derive(Debug)]
pub enum AttachError {
    Invalid(PolicyError),
    Kernel(String),
}

/// One hook, where it attaches.
#[derive(Debug, Clone)]
pub enum Point {
    Tracepoint(TracepointHook),
    Uprobe(UprobeHook),
    Kprobe(KprobeHook),
}

impl Point {
    pub fn selectors(&self) -> &Selectors {
        match self {
            Point::Tracepoint(tp) => &tp.selectors,
            Point::Uprobe(up) => &up.selectors,
            Point::Kprobe(kp) => &kp.selectors,
        }
    }

    /// A tracepoint hook that takes the program with the path reader (too
    /// costly to verify in the shared program).
    fn reads_fd(tp: &TracepointHook) -> bool {
        tp.reads_fd()
    }
}

/// The hook-map key (and attach cookie) of a tracepoint hook's set.
fn tracepoint_key(tp: &TracepointHook) -> u64 {
    let fd = if Point::reads_fd(tp) { TRACEPOINT_FD_COOKIE } else { 0 };
    fd | u64::from(tp.id)
}

/// A tracepoint the program is attached to, and the hooks it serves.
struct AttachedTracepoint {
    /// Closing it detaches the program from the tracepoint.
    _link: OwnedFd,
    hooks: HookSet,
}

pub struct Attachments {
    ebpf: Ebpf,
    hook_map: Option<BpfHashMap<MapData, u64, HookSet>>,
    /// The cgroups of scoped policies (`SCOPE_CGROUPS`).
    scope_map: Option<BpfHashMap<MapData, ScopeKey, u8>>,
    programs: HookPrograms,
    /// By hook-map key (`tracepoint_key`).
    tracepoints: HashMap<u64, AttachedTracepoint>,
    uprobes: HashMap<u32, UProbeLinkId>,
    /// Hooks with attaches of their own (kprobes, and tracepoint hooks
    /// that read descriptors or have selectors), by hook number.
    own: HashMap<u32, OwnAttach>,
    /// Hooks' selectors in the kernel; why not, if the maps are missing.
    selectors: Result<SelectorMaps, String>,
}

/// A hook's own links (closing them detaches) and its hook-map keys.
struct OwnAttach {
    entry: OwnedFd,
    /// A return probe's.
    ret: Option<OwnedFd>,
    /// The override program's, after the entry's.
    overrides: Option<OwnedFd>,
    keys: Vec<u64>,
}

/// One loaded program's cost so far, as the kernel counts it (while
/// `kernel.bpf_stats_enabled` is on, or a BPF_ENABLE_STATS fd is held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramRuns {
    pub name: String,
    pub runs: u64,
    pub run_ns: u64,
}

impl Attachments {
    /// Every loaded program's runs and run time.
    pub fn program_runs(&self) -> Vec<ProgramRuns> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some(ProgramRuns {
                    name: name.to_owned(),
                    runs: info.run_count(),
                    run_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                })
            })
            .collect()
    }

    pub fn new(mut ebpf: Ebpf, programs: HookPrograms) -> Attachments {
        let hook_map = ebpf.take_map("HOOKS").and_then(|m| BpfHashMap::try_from(m).ok());
        let selectors = SelectorMaps::take(&mut ebpf);
        let scope_map = ebpf.take_map("SCOPE_CGROUPS").and_then(|m| BpfHashMap::try_from(m).ok());
        Attachments {
            ebpf,
            hook_map,
            scope_map,
            programs,
            tracepoints: HashMap::new(),
            uprobes: HashMap::new(),
            own: HashMap::new(),
            selectors,
        }
    }

    /// See [`super::PolicyHost::seed_binaries`].
    pub fn seed_binaries(&mut self, proc_root: &std::path::Path) -> Result<usize, String> {
        super::selectors::seed_binaries(&mut self.ebpf, proc_root)
    }

    /// Switches hook `id`'s enforcement off (`monitor`) or on.
    pub fn set_monitor(&mut self, id: u32, monitor: bool) -> Result<(), String> {
        match &mut self.selectors {
            Ok(maps) => maps.set_monitor(id, monitor),
            Err(_) => Ok(()),
        }
    }

    /// What hook `id`'s selectors did, per selector.
    pub fn selector_counts(&self, id: u32) -> Vec<SelectorCounts> {
        self.selectors.as_ref().map(|m| m.counts(id)).unwrap_or_default()
    }

    /// Lets `scope`'s hooks see processes of `cgroup` (0: every process).
    pub fn scope_insert(&mut self, scope: u32, cgroup: u64) -> Result<(), String> {
        let map = self.scope_map.as_mut().ok_or("BPF map `SCOPE_CGROUPS` is missing")?;
        map.insert(ScopeKey { scope, _pad: 0, cgroup }, 1, 0).map_err(|e| e.to_string())
    }

    /// Takes `cgroup` out of `scope` (one not in it is a no-op).
    pub fn scope_remove(&mut self, scope: u32, cgroup: u64) {
        if let Some(map) = self.scope_map.as_mut() {
            let _ = map.remove(&ScopeKey { scope, _pad: 0, cgroup });
        }
    }

    fn map(&mut self) -> Result<&mut BpfHashMap<MapData, u64, HookSet>, AttachError> {
        self.hook_map.as_mut().ok_or_else(|| AttachError::Kernel("BPF map `HOOKS` is missing".into()))
    }

    /// Puts hook `id` into the kernel, its enforcement off if `monitor`:
    /// its selectors first, so its first run finds them.
    pub fn attach(&mut self, id: u32, point: &Point, monitor: bool, scope: Option<u32>) -> Result<(), AttachError> {
        let selectors = point.selectors();
        if !selectors.is_empty() {
            if let Err(why) = &self.programs.select {
                return Err(AttachError::Kernel(format!("the selector programs are not available: {why}")));
            }
            let maps = self.selectors.as_mut().map_err(|why| AttachError::Kernel(why.clone()))?;
            maps.install(id, selectors, monitor).map_err(AttachError::Kernel)?;
        }
        let attached = match point {
            Point::Tracepoint(tp) => self.attach_tracepoint(id, tp, scope),
            Point::Uprobe(up) => self.attach_uprobe(id, up, scope),
            Point::Kprobe(kp) => self.attach_kprobe(id, kp, scope),
        };
        if attached.is_err()
            && let Ok(maps) = &mut self.selectors
        {
            maps.remove(id);
        }
        attached
    }

    /// Takes hook `id` out of the kernel (a hook not in it is a no-op).
    pub fn detach(&mut self, id: u32, point: &Point) {
        match point {
            Point::Tracepoint(tp) => self.detach_tracepoint(id, tracepoint_key(tp)),
            Point::Uprobe(_) => self.detach_uprobe(id),
            Point::Kprobe(_) => self.detach_own(id),
        }
        if let Ok(maps) = &mut self.selectors {
            maps.remove(id);
        }
    }

    /// Adds the hook to its tracepoint's set (up to `HOOKS_PER_ATTACH`,
    /// chained in the kernel), attaching the program at the first. Hooks
    /// that read descriptors share a second set and attach, of the
    /// program with the path reader: the kernel takes one program once
    /// per tracepoint.
    fn attach_tracepoint(&mut self, id: u32, tp: &TracepointHook, scope: Option<u32>) -> Result<(), AttachError> {
        let key = tracepoint_key(tp);
        let (program, available) = if Point::reads_fd(tp) {
            (TRACEPOINT_FD_PROGRAM, &self.programs.tracepoint_fd)
        } else {
            (TRACEPOINT_PROGRAM, &self.programs.tracepoint)
        };
        if let Err(why) = available {
            let which = if Point::reads_fd(tp) { "tracepoint program for descriptors" } else { "tracepoint program" };
            return Err(AttachError::Kernel(format!("the {which} is not available: {why}")));
        }
        let where_ = format!("tracepoint {}/{}", tp.subsystem, tp.event);
        let mut value = self.tracepoints.get(&key).map(|a| a.hooks).unwrap_or_default();
        let count = value.count as usize;
        if count >= HOOKS_PER_ATTACH {
            return Err(AttachError::Kernel(format!("{where_} already serves {HOOKS_PER_ATTACH} policy hooks")));
        }
        value.hooks[count] = scoped(tp.spec(id), scope);
        value.count += 1;
        self.map()?
            .insert(key, value, 0)
            .map_err(|e| AttachError::Kernel(format!("{where_}: updating the hook map: {e}")))?;
        if let Some(a) = self.tracepoints.get_mut(&key) {
            a.hooks = value;
            return Ok(());
        }
        match self.link_tracepoint(program, tp, key) {
            Ok(link) => {
                self.tracepoints.insert(key, AttachedTracepoint { _link: link, hooks: value });
                Ok(())
            }
            Err(why) => {
                let _ = self.map().map(|m| m.remove(&key));
                Err(AttachError::Kernel(why))
            }
        }
    }

    fn link_tracepoint(&mut self, program_name: &str, tp: &TracepointHook, cookie: u64) -> Result<OwnedFd, String> {
        let where_ = format!("tracepoint {}/{}", tp.subsystem, tp.event);
        let p = program::<TracePoint>(&mut self.ebpf, program_name)?;
        let fd = p.fd().map_err(|e| e.to_string())?;
        attach::tracepoint(fd.as_fd(), tp.id, cookie).map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                format!("attaching to {where_}: {e} (BPF cookies on tracepoints need Linux 5.15 or later)")
            } else {
                format!("attaching to {where_}: {e}")
            }
        })
    }

    fn detach_tracepoint(&mut self, id: u32, key: u64) {
        let Some(attached) = self.tracepoints.get_mut(&key) else {
            return;
        };
        let mut value = HookSet::default();
        for spec in attached.hooks.hooks.iter().take(attached.hooks.count as usize) {
            if spec.hook_id != id {
                value.hooks[value.count as usize] = *spec;
                value.count += 1;
            }
        }
        attached.hooks = value;
        let result = match self.map() {
            Ok(map) if value.count == 0 => map.remove(&key).map_err(|e| e.to_string()),
            Ok(map) => map.insert(key, value, 0).map_err(|e| e.to_string()),
            Err(_) => Err("the hook map is missing".into()),
        };
        if let Err(e) = result {
            tracing::warn!(tracepoint = key, error = %e, "updating the hook map failed");
        }
        if value.count == 0 {
            // Dropping the link detaches.
            self.tracepoints.remove(&key);
        }
    }

    fn attach_uprobe(&mut self, id: u32, up: &UprobeHook, scope: Option<u32>) -> Result<(), AttachError> {
        if let Err(why) = &self.programs.uprobe {
            return Err(AttachError::Kernel(format!("the uprobe program is not available: {why}")));
        }
        // The binary first: aya reports a missing one as a symbol error.
        match std::fs::metadata(&up.path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(invalid_path(up, "not a regular file".into())),
            Err(e) => return Err(invalid_path(up, format!("cannot read the binary: {}", e.kind()))),
        }
        let key = UPROBE_COOKIE | u64::from(id);
        let value = HookSet { count: 1, hooks: [scoped(up.spec(id), scope); HOOKS_PER_ATTACH], ..Default::default() };
        self.map()?.insert(key, value, 0).map_err(|e| AttachError::Kernel(format!("updating the hook map: {e}")))?;
        let location = match &up.symbol {
            Some(symbol) => UProbeAttachLocation::Symbol(symbol),
            None => UProbeAttachLocation::AbsoluteOffset(up.offset),
        };
        let attached = match program::<UProbe>(&mut self.ebpf, UPROBE_PROGRAM) {
            Ok(p) => p
                .attach(UProbeAttachPoint { location, cookie: Some(key) }, &up.path, UProbeScope::AllProcesses)
                .map_err(|e| uprobe_error(up, e)),
            Err(why) => Err(AttachError::Kernel(why)),
        };
        match attached {
            Ok(link) => {
                self.uprobes.insert(id, link);
                Ok(())
            }
            Err(e) => {
                let _ = self.map().map(|m| m.remove(&key));
                Err(e)
            }
        }
    }

    fn detach_uprobe(&mut self, id: u32) {
        let Some(link) = self.uprobes.remove(&id) else {
            return;
        };
        if let Ok(p) = program::<UProbe>(&mut self.ebpf, UPROBE_PROGRAM)
            && let Err(e) = p.detach(link)
        {
            tracing::warn!(hook = id, error = %e, "detaching a uprobe failed");
        }
        if let Ok(map) = self.map()
            && let Err(e) = map.remove(&(UPROBE_COOKIE | u64::from(id)))
        {
            tracing::warn!(hook = id, error = %e, "updating the hook map failed");
        }
    }
}

impl Attachments {
    fn attach_kprobe(&mut self, id: u32, kp: &KprobeHook, scope: Option<u32>) -> Result<(), AttachError> {
        // Before anything is attached: the policy asks what this kernel
        // cannot do.
        if let (Some(at), Err(why)) = (&kp.selectors.override_at, &self.programs.kprobe_override) {
            return Err(AttachError::Invalid(PolicyError { path: at.clone(), reason: why.clone() }));
        }
        let objects = kp.args.iter().any(|a| matches!(a.read, Read::Sock | Read::Cred));
        let (entry_program, verdict) = if objects {
            (KPROBE_SOCK_PROGRAM, &self.programs.kprobe_sock)
        } else {
            (KPROBE_PROGRAM, &self.programs.kprobe)
        };
        if let Err(why) = verdict {
            return Err(AttachError::Kernel(format!("the kprobe program is not available: {why}")));
        }
        if kp.ret.is_some()
            && let Err(why) = &self.programs.kretprobe
        {
            return Err(AttachError::Kernel(format!("the return-probe program is not available: {why}")));
        }
        let value = HookSet { count: 1, hooks: [scoped(kp.spec(id), scope); HOOKS_PER_ATTACH], ..Default::default() };
        let keys = [KPROBE_COOKIE | u64::from(id), KRETPROBE_COOKIE | u64::from(id)];
        for key in keys {
            self.map()?
                .insert(key, value, 0)
                .map_err(|e| AttachError::Kernel(format!("updating the hook map: {e}")))?;
        }
        // The return probe first: an entry kept with no return probe yet
        // would wait in the pending map for nothing.
        let ret = match &kp.ret {
            Some(_) => self.link_kprobe(KRETPROBE_PROGRAM, &kp.symbol, true, keys[1]).map(Some),
            None => Ok(None),
        };
        let attached = ret
            .map_err(AttachError::Kernel)
            .and_then(|ret| {
                Ok((self.link_kprobe(entry_program, &kp.symbol, false, keys[0]).map_err(AttachError::Kernel)?, ret))
            })
            // After the entry program: kprobes on one function run in
            // the order they were attached.
            .and_then(|(entry, ret)| Ok((entry, ret, self.link_override(id, kp)?)));
        match attached {
            Ok((entry, ret, overrides)) => {
                self.own.insert(id, OwnAttach { entry, ret, overrides, keys: keys.to_vec() });
                Ok(())
            }
            Err(e) => {
                if let Ok(map) = self.map() {
                    for key in keys {
                        let _ = map.remove(&key);
                    }
                }
                Err(e)
            }
        }
    }

    /// The override program on the hook's function, if its selectors
    /// override: the kernel allows it only on functions open to error
    /// injection, and refuses others with `EINVAL`.
    fn link_override(&mut self, id: u32, kp: &KprobeHook) -> Result<Option<OwnedFd>, AttachError> {
        let Some(at) = &kp.selectors.override_at else {
            return Ok(None);
        };
        let p = program::<KProbe>(&mut self.ebpf, OVERRIDE_PROGRAM).map_err(AttachError::Kernel)?;
        let fd = p.fd().map_err(|e| AttachError::Kernel(e.to_string()))?;
        match attach::kprobe_link(fd.as_fd(), &kp.symbol, false, OVERRIDE_COOKIE | u64::from(id)) {
            Ok(link) => Ok(Some(link)),
            Err(attach::KprobeError::Link(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                Err(AttachError::Invalid(PolicyError {
                    path: at.clone(),
                    reason: format!("the kernel does not allow error injection on {} (Override needs it)", kp.symbol),
                }))
            }
            Err(attach::KprobeError::Link(e)) => {
                Err(AttachError::Kernel(format!("{}: attaching the override program: {e}", kp.symbol)))
            }
            Err(attach::KprobeError::Setup(why)) => Err(AttachError::Kernel(format!("{}: {why}", kp.symbol))),
        }
    }

    fn link_kprobe(&mut self, program_name: &str, symbol: &str, ret: bool, cookie: u64) -> Result<OwnedFd, String> {
        let p = program::<KProbe>(&mut self.ebpf, program_name)?;
        let fd = p.fd().map_err(|e| e.to_string())?;
        attach::kprobe(fd.as_fd(), symbol, ret, cookie).map_err(|e| format!("{symbol}: {e}"))
    }

    fn detach_own(&mut self, id: u32) {
        let Some(OwnAttach { entry, ret, overrides, keys }) = self.own.remove(&id) else {
            return;
        };
        // Dropping the links detaches, entry first.
        drop(entry);
        drop(overrides);
        drop(ret);
        if let Ok(map) = self.map() {
            for key in keys {
                if let Err(e) = map.remove(&key) {
                    // The return key exists only for return probes.
                    if key & KRETPROBE_COOKIE == 0 {
                        tracing::warn!(hook = id, error = %e, "updating the hook map failed");
                    }
                }
            }
        }
    }
}

/// `spec` limited to the cgroups of `scope`, if the policy has one.
fn scoped(mut spec: HookSpec, scope: Option<u32>) -> HookSpec {
    if let Some(scope) = scope {
        spec.flags |= HOOK_SCOPED;
        spec.scope = scope;
    }
    spec
}

/// A uprobe attach's failure: a binary or symbol that is not there is the
/// policy's fault, named by its path; anything else the kernel's.
fn uprobe_error(up: &UprobeHook, e: ProgramError) -> AttachError {
    match &e {
        ProgramError::UProbeError(UProbeError::SymbolError { .. }) => AttachError::Invalid(PolicyError {
            path: up.at.clone(),
            reason: "the binary has no such function symbol".into(),
        }),
        ProgramError::UProbeError(UProbeError::FileError { io_error, .. }) => {
            invalid_path(up, format!("cannot read the binary: {}", io_error.kind()))
        }
        ProgramError::UProbeError(UProbeError::InvalidTarget { .. }) => invalid_path(up, "no such binary".into()),
        _ => AttachError::Kernel(format!("attaching the uprobe: {e}")),
    }
}

/// A refusal of the hook's `path` (`spec.uprobes[i].path`).
fn invalid_path(up: &UprobeHook, reason: String) -> AttachError {
    let at = up.at.rsplit_once('.').map_or(up.at.as_str(), |(hook, _)| hook);
    AttachError::Invalid(PolicyError { path: format!("{at}.path"), reason })
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or_else(|| format!("BPF program `{name}` is missing"))
}
