//! Loads the lifecycle programs with the running kernel's offsets, attaches
//! them, and hands out the ring buffer and the kernel-side counters.

use std::path::Path;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::RawTracePoint;
use aya::{Ebpf, EbpfLoader};
use node_sensor_common::{COUNTERS_LEN, KernelOffsets, READER_PATHS, READER_PLAIN};

use crate::btf_offsets::{self, OffsetError};
use crate::exec_times;

/// The programs and the raw tracepoints they attach to, in attach order.
/// Program names are short and distinct because the kernel keeps only 15
/// characters. Exit first, fork last: a process whose fork is recorded
/// then always has its exec and exit recorded too (attached the other way
/// round, a child forked between two attaches would exit as a fork copy of
/// its parent, its exec and exit unseen).
pub const PROGRAMS: &[(&str, &str)] = &[
    ("vigil_exit", "sched_process_exit"),
    ("vigil_exec", "sched_process_exec"),
    ("vigil_binary", "sched_process_exec"),
    ("vigil_fork", "sched_process_fork"),
];

/// The generic tracepoint program every policy's tracepoints share; loaded
/// at start, attached as policies name tracepoints (see `policies`).
pub const TRACEPOINT_PROGRAM: &str = "vigil_tp";
/// The tracepoint program for hooks with file-descriptor arguments (the
/// path reader is too costly to verify for several hooks per attach).
pub const TRACEPOINT_FD_PROGRAM: &str = "vigil_tf";
/// The generic uprobe program, likewise for user functions.
pub const UPROBE_PROGRAM: &str = "vigil_up";
/// The generic kprobe program, likewise for kernel functions.
pub const KPROBE_PROGRAM: &str = "vigil_kp";
/// The generic return probe, for kprobes with `return: true`.
pub const KRETPROBE_PROGRAM: &str = "vigil_kr";
/// The generic kprobe program for hooks with socket or credential
/// arguments (the path readers and these do not fit one program).
pub const KPROBE_SOCK_PROGRAM: &str = "vigil_ks";
/// The selector programs the hook programs tail-call for hooks with
/// selectors: one per program type (tracepoint; kprobe, which uprobes and
/// return probes are too).
pub const SELECT_TRACEPOINT_PROGRAM: &str = "vigil_st";
pub const SELECT_PROBE_PROGRAM: &str = "vigil_sk";
/// The program that applies an `Override` (see `overrides` in the eBPF
/// crate), attached after the entry program of a kprobe hook that has one.
pub const OVERRIDE_PROGRAM: &str = "vigil_ov";

/// Where this sensor pins the kernel's exec-time map (see `exec_times`).
pub const EXEC_TIMES_PIN: &str = "/sys/fs/bpf/vigil/exec_times_v1";

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/node-sensor"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("vigil-sensor must run as root (it loads BPF programs); effective uid is {0}")]
    NotRoot(u32),
    #[error(transparent)]
    Offsets(#[from] OffsetError),
    // Causes are in the messages and not also `source`s, so a report that
    // prints the chain names each once.
    #[error("loading the BPF object failed: {0}")]
    Object(aya::EbpfError),
    #[error("BPF program `{0}` is missing from the object")]
    MissingProgram(&'static str),
    #[error(
        "the kernel verifier rejected BPF program `{name}`: {reason} (run with --log-level debug for the verifier log)"
    )]
    Verifier { name: &'static str, reason: String },
    #[error("attaching `{name}` to raw tracepoint {tracepoint} failed: {error}")]
    Attach { name: &'static str, tracepoint: &'static str, error: aya::programs::ProgramError },
    #[error("sharing the exec-time map: {0}")]
    ExecTimes(String),
    #[error("BPF map `{0}` is missing or has the wrong type")]
    Map(&'static str),
}

/// Loaded, attached programs. Dropping `ebpf` detaches them.
pub struct Probes {
    /// Owns the programs, links and the maps not taken out; the policy
    /// host keeps it, attaching the tracepoint program as policies come.
    pub ebpf: Ebpf,
    pub feed: KernelFeed,
    pub offsets: KernelOffsets,
    /// Whether the generic hook programs passed the verifier.
    pub hook_programs: HookPrograms,
}

/// Whether each generic hook program passed the verifier, and why not:
/// policies with those hooks are refused with this reason, and the
/// lifecycle sensor works either way.
#[derive(Debug, Clone)]
pub struct HookPrograms {
    pub tracepoint: Result<(), String>,
    pub tracepoint_fd: Result<(), String>,
    pub uprobe: Result<(), String>,
    pub kprobe: Result<(), String>,
    pub kprobe_sock: Result<(), String>,
    pub kretprobe: Result<(), String>,
    /// Both selector programs, in the tail-call map.
    pub select: Result<(), String>,
    /// The override program (the kernel needs CONFIG_BPF_KPROBE_OVERRIDE).
    pub kprobe_override: Result<(), String>,
}

/// What the pipeline reads: the ring buffer and the kernel's counters.
pub struct KernelFeed {
    pub ring: RingBuf<MapData>,
    pub counters: PerCpuArray<MapData, u64>,
}

/// Kernel-side counters summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub ringbuf_full: u64,
    pub read_errors: u64,
    pub execs: u64,
    pub exits: u64,
    pub clones: u64,
    pub hooks: u64,
    /// Return probes that found no kept entry (their call began before the
    /// policy, or the pending map was full).
    pub returns_lost: u64,
    /// Hook records the selector program could not be handed (lost).
    pub select_failed: u64,
    /// Execs whose binary `matchBinaries` could not keep (map full).
    pub binaries_full: u64,
    /// Stack traces a `Post` asked for that its event could not carry.
    pub stacks_lost: u64,
}

impl KernelFeed {
    /// Sums the per-CPU counters.
    pub fn counters(&self) -> KernelCounters {
        read_counters(&self.counters)
    }
}

/// Sums the per-CPU kernel counters.
pub fn read_counters(counters: &PerCpuArray<MapData, u64>) -> KernelCounters {
    let sum = |i: u32| counters.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
    {
        KernelCounters {
            ringbuf_full: sum(node_sensor_common::COUNTER_RINGBUF_FULL),
            read_errors: sum(node_sensor_common::COUNTER_READ_ERRORS),
            execs: sum(node_sensor_common::COUNTER_EXECS),
            exits: sum(node_sensor_common::COUNTER_EXITS),
            clones: sum(node_sensor_common::COUNTER_CLONES),
            returns_lost: sum(node_sensor_common::COUNTER_RETURNS_LOST),
            hooks: sum(node_sensor_common::COUNTER_HOOKS),
            select_failed: sum(node_sensor_common::COUNTER_SELECT_FAILED),
            binaries_full: sum(node_sensor_common::COUNTER_BINARIES_FULL),
            stacks_lost: sum(node_sensor_common::COUNTER_STACKS_LOST),
        }
    }
}

/// Resolves offsets from `btf_path`, loads and attaches every program.
pub fn load(btf_path: &str, features: btf_offsets::Features) -> Result<Probes, LoadError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(LoadError::NotRoot(euid));
    }
    let btf = btf_offsets::open(btf_path)?;
    let resolved = btf_offsets::resolve(&btf, features)?;
    for d in &resolved.degraded {
        tracing::warn!(degraded = %d, "kernel lacks a field; that data is left out");
    }
    let offsets = KernelOffsets { own_tgid: std::process::id(), ..resolved.offsets };
    tracing::debug!(?offsets, "resolved kernel struct offsets from BTF");

    let pin = Path::new(EXEC_TIMES_PIN);
    let mut ebpf = match exec_times::prepare(pin) {
        Ok(()) => {
            let mut ebpf = load_pinned(&offsets, pin)?;
            // Sensors starting together may each have made a map: all settle
            // on the oldest.
            if let Some(oldest) = exec_times::oldest()
                && exec_times::pinned_id(pin) != Some(oldest)
            {
                drop(ebpf);
                exec_times::prepare(pin).map_err(LoadError::ExecTimes)?;
                ebpf = load_pinned(&offsets, pin)?;
            }
            ebpf
        }
        Err(why) => {
            tracing::warn!(
                pin = EXEC_TIMES_PIN,
                reason = %why,
                "exec times are not shared: another sensor on this kernel would name the same images differently"
            );
            load_object(&offsets, None).map_err(LoadError::Object)?
        }
    };
    // Every program is verified before any is attached, so the attaches
    // follow each other closely, in PROGRAMS order.
    for &(name, _) in PROGRAMS {
        let program = raw_tracepoint(&mut ebpf, name)?;
        if let Err(e) = program.load() {
            if let aya::programs::ProgramError::LoadError { verifier_log, .. } = &e {
                tracing::debug!(program = name, log = %verifier_log, "verifier log");
            }
            return Err(LoadError::Verifier { name, reason: e.to_string() });
        }
        // What the verifier walked: the cost of loading on slow hosts.
        if let Some(n) = program.info().ok().and_then(|i| i.verified_instruction_count()) {
            tracing::debug!(program = name, verified_instructions = n, "verified");
        }
    }
    let hook_programs = HookPrograms {
        tracepoint: load_hook_program::<aya::programs::TracePoint>(&mut ebpf, TRACEPOINT_PROGRAM)
            .and_then(|()| set_tail_call(&mut ebpf, "READER_TP", READER_PLAIN, TRACEPOINT_PROGRAM)),
        tracepoint_fd: load_hook_program::<aya::programs::TracePoint>(&mut ebpf, TRACEPOINT_FD_PROGRAM)
            .and_then(|()| set_tail_call(&mut ebpf, "READER_TP", READER_PATHS, TRACEPOINT_FD_PROGRAM)),
        uprobe: load_hook_program::<aya::programs::UProbe>(&mut ebpf, UPROBE_PROGRAM),
        kprobe: load_hook_program::<aya::programs::KProbe>(&mut ebpf, KPROBE_PROGRAM),
        kprobe_sock: load_hook_program::<aya::programs::KProbe>(&mut ebpf, KPROBE_SOCK_PROGRAM),
        kretprobe: load_hook_program::<aya::programs::KProbe>(&mut ebpf, KRETPROBE_PROGRAM),
        select: load_selector_programs(&mut ebpf),
        kprobe_override: load_hook_program::<aya::programs::KProbe>(&mut ebpf, OVERRIDE_PROGRAM).map_err(|why| {
            format!(
                "this kernel cannot make a function return early (bpf_override_return needs \
                 CONFIG_BPF_KPROBE_OVERRIDE): {why}"
            )
        }),
    };
    for (program, verdict) in [
        (TRACEPOINT_PROGRAM, &hook_programs.tracepoint),
        (TRACEPOINT_FD_PROGRAM, &hook_programs.tracepoint_fd),
        (UPROBE_PROGRAM, &hook_programs.uprobe),
        (KPROBE_PROGRAM, &hook_programs.kprobe),
        (KPROBE_SOCK_PROGRAM, &hook_programs.kprobe_sock),
        (KRETPROBE_PROGRAM, &hook_programs.kretprobe),
        ("vigil_st, vigil_sk", &hook_programs.select),
        (OVERRIDE_PROGRAM, &hook_programs.kprobe_override),
    ] {
        if let Err(why) = verdict {
            tracing::warn!(program, reason = %why, "tracing policies with these hooks cannot load");
        }
    }
    for &(name, tracepoint) in PROGRAMS {
        raw_tracepoint(&mut ebpf, name)?.attach(tracepoint).map_err(|error| LoadError::Attach {
            name,
            tracepoint,
            error,
        })?;
    }
    let ring = ebpf.take_map("EVENTS").ok_or(LoadError::Map("EVENTS"))?;
    let ring = RingBuf::try_from(ring).map_err(|_| LoadError::Map("EVENTS"))?;
    let counters = ebpf.take_map("COUNTERS").ok_or(LoadError::Map("COUNTERS"))?;
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(counters).map_err(|_| LoadError::Map("COUNTERS"))?;
    debug_assert_eq!(counters.len(), COUNTERS_LEN);
    Ok(Probes { ebpf, feed: KernelFeed { ring, counters }, offsets, hook_programs })
}

/// A generic hook program as the loader handles it.
trait HookProgram {
    fn load(&mut self) -> Result<(), aya::programs::ProgramError>;
    fn info(&self) -> Result<aya::programs::ProgramInfo, aya::programs::ProgramError>;
}

macro_rules! hook_program {
    ($($ty:ty),*) => {$(
        impl HookProgram for $ty {
            fn load(&mut self) -> Result<(), aya::programs::ProgramError> {
                <$ty>::load(self)
            }
            fn info(&self) -> Result<aya::programs::ProgramInfo, aya::programs::ProgramError> {
                <$ty>::info(self)
            }
        }
    )*};
}
hook_program!(aya::programs::TracePoint, aya::programs::UProbe, aya::programs::KProbe);

/// Verifies a generic hook program (attached later, per policy).
fn load_hook_program<P: HookProgram>(ebpf: &mut Ebpf, name: &str) -> Result<(), String>
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    let program: &mut P = ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| format!("BPF program `{name}` is missing from the object"))?;
    program.load().map_err(|e| match &e {
        // The log goes to the debug log only: this reason reaches gRPC
        // statuses, and a verifier log runs to megabytes.
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            tracing::debug!(program = name, log = %verifier_log, "verifier log");
            format!("the kernel verifier rejected it: {io_error} (the sensor's debug log has the verifier's)")
        }
        _ => format!("loading it failed: {e}"),
    })?;
    if let Some(n) = program.info().ok().and_then(|i| i.verified_instruction_count()) {
        tracing::debug!(program = name, verified_instructions = n, "verified");
    }
    Ok(())
}

/// Verifies the selector programs and puts them in the tail-call map
/// (which the kernel empties once no descriptor of it is left: `ebpf`
/// keeps one).
fn load_selector_programs(ebpf: &mut Ebpf) -> Result<(), String> {
    load_hook_program::<aya::programs::TracePoint>(ebpf, SELECT_TRACEPOINT_PROGRAM)?;
    load_hook_program::<aya::programs::KProbe>(ebpf, SELECT_PROBE_PROGRAM)?;
    set_tail_call(ebpf, "SELECT_TP", 0, SELECT_TRACEPOINT_PROGRAM)?;
    set_tail_call(ebpf, "SELECT_KP", 0, SELECT_PROBE_PROGRAM)
}

/// Puts loaded program `program` in the one slot of tail-call map `map`.
fn set_tail_call(ebpf: &mut Ebpf, map: &str, slot: u32, program: &str) -> Result<(), String> {
    let fd = match ebpf.program(program) {
        Some(aya::programs::Program::TracePoint(p)) => p.fd(),
        Some(aya::programs::Program::KProbe(p)) => p.fd(),
        _ => return Err(format!("BPF program `{program}` is missing or has the wrong type")),
    };
    let fd = fd.and_then(|f| f.try_clone().map_err(Into::into)).map_err(|e| e.to_string())?;
    let slots = ebpf.map_mut(map).ok_or_else(|| format!("BPF map `{map}` is missing"))?;
    let mut slots = aya::maps::ProgramArray::try_from(slots).map_err(|e| format!("BPF map `{map}`: {e}"))?;
    slots.set(slot, &fd, 0).map_err(|e| format!("BPF map `{map}`: setting `{program}`: {e}"))
}

fn raw_tracepoint<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut RawTracePoint, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(|_| LoadError::MissingProgram(name))
}

/// Loads the object with the exec-time map at `pin`. Sensors starting
/// together race for the pin: one that finds none creates a map and pins
/// it, and fails if another pinned one meanwhile; it then takes that one.
fn load_pinned(offsets: &KernelOffsets, pin: &Path) -> Result<Ebpf, LoadError> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match load_object(offsets, Some(pin)) {
            Err(aya::EbpfError::MapError(aya::maps::MapError::PinError { .. })) if attempt < ATTEMPTS => {
                tracing::debug!(attempt, "another sensor pinned the exec-time map first; taking it");
                attempt += 1;
                exec_times::prepare(pin).map_err(LoadError::ExecTimes)?;
            }
            loaded => return loaded.map_err(LoadError::Object),
        }
    }
}

fn load_object(offsets: &KernelOffsets, pin: Option<&Path>) -> Result<Ebpf, aya::EbpfError> {
    let mut loader = EbpfLoader::new();
    loader.override_global("OFFSETS", offsets, true);
    if let Some(path) = pin {
        loader.map_pin_path(exec_times::MAP_NAME, path);
    }
    loader.load(EBPF_OBJECT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya::programs::ProgramError;

    #[test]
    fn causes_are_named_once() {
        let e =
            LoadError::Attach { name: "vigil_exec", tracepoint: "sched_process_exec", error: ProgramError::NotLoaded };
        assert!(std::error::Error::source(&e).is_none(), "a printed chain would repeat the cause");
        assert!(e.to_string().ends_with(&ProgramError::NotLoaded.to_string()), "{e}");
    }
}
