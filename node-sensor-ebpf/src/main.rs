//! Vigil's kernel programs, one module per hook family: `lifecycle` (three
//! raw tracepoints: exec, fork, exit) and `hooks` (the generic tracepoint
//! and uprobe programs every tracing policy shares), with `args` reading
//! policy arguments. All feed one ring buffer. Struct offsets come from the
//! `OFFSETS` global, filled in by the sensor from the running kernel's BTF
//! before load.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::bpf_probe_read_kernel,
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
};
use node_sensor_common::*;

/// 32 MiB: about 12,000 exec records of backlog.
const RINGBUF_BYTES: u32 = 32 << 20;
/// A backlog this large wakes the consumer even while it lets a burst
/// queue up (see `submit_flags`).
const WAKEUP_BYTES: u64 = 256 << 10;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Per-CPU scratch for measuring argv[0] (too large for the BPF stack).
#[map]
static SCRATCH: PerCpuArray<[u8; SCRATCH_SIZE]> = PerCpuArray::with_max_entries(1, 0);

/// The time of each exec, keyed by image. Shared by every sensor on this
/// kernel (the loader finds it by name and reuses it): the first program to
/// run for an exec records the time, the others read it, and all compute
/// the same exec_id (the relay deduplicates their copies on it). The name
/// carries the layout's version.
#[map(name = "VIGIL_EXECT_V1")]
static EXEC_TIMES: LruHashMap<ExecTimeKey, u64> = LruHashMap::with_max_entries(EXEC_TIMES_ENTRIES, 0);

/// Policy hooks, keyed by attach cookie; the sensor fills it as policies
/// come and go.
#[map]
static HOOKS: HashMap<u64, HookSet> = HashMap::with_max_entries(HOOK_ATTACH_MAX, NO_PREALLOC);

/// The cgroups each scoped policy applies to (`HOOK_SCOPED`); the sensor
/// keeps it in line with the pods on the node.
#[map]
static SCOPE_CGROUPS: HashMap<ScopeKey, u8> = HashMap::with_max_entries(SCOPE_CGROUPS_MAX, NO_PREALLOC);

/// Per-CPU room a hook record is built in before it is sent (it is larger
/// than the BPF stack, and its length is only known at the end).
#[map]
static HOOK_SCRATCH: PerCpuArray<hooks::HookScratch> = PerCpuArray::with_max_entries(1, 0);

/// Calls in flight of return-probe hooks: the entry's record, by thread
/// and hook, until the return probe sends it.
#[map]
static RETURN_PENDING: LruHashMap<u64, ReturnPending> = LruHashMap::with_max_entries(RETURN_PENDING_MAX, 0);

/// Maps allocate entries as they are added (the sizes are bounds, not
/// reservations).
const NO_PREALLOC: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;

/// The selector program for tracepoint programs, and the one for kprobe-type
/// programs (uprobes, kprobes, return probes): a tail-call map serves
/// programs of one type only.
#[map]
static SELECT_TP: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static SELECT_KP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The tracepoint programs themselves, for a run's next hook (see
/// `Chain`): `READER_PLAIN` and `READER_PATHS`.
#[map]
static READER_TP: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// Per-CPU: where the current tracepoint run is in its attach's hooks.
#[map]
static CHAIN: PerCpuArray<Chain> = PerCpuArray::with_max_entries(1, 0);

/// Hooks' selectors, by hook number.
#[map]
static SELECTORS: HashMap<u32, SelectorSet> = HashMap::with_max_entries(HOOK_ATTACH_MAX, NO_PREALLOC);

/// What hooks' selectors did, by hook number, per CPU (the sensor adds a
/// hook's entry before attaching it, and sums the CPUs' counts).
#[map]
static ACTION_COUNTS: PerCpuHashMap<u32, ActionCounts> = PerCpuHashMap::with_max_entries(HOOK_ATTACH_MAX, NO_PREALLOC);

/// Every string filter's values (see `StringKey`).
#[map]
static STRINGS: LpmTrie<[u8; STRING_KEY_DATA], u8> = LpmTrie::with_max_entries(STRING_VALUES_MAX, NO_PREALLOC);

/// Per-CPU room for a string lookup's key, and for a suffix before it is
/// reversed.
#[map]
static STRING_SCRATCH: PerCpuArray<StringKey> = PerCpuArray::with_max_entries(2, 0);

/// Per-CPU: where each argument of the record being selected starts.
#[map]
static POSITIONS: PerCpuArray<[u32; 8]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU: the record's path arguments that filters compare, root first,
/// by record position.
#[map]
static FORWARD_PATHS: PerCpuArray<ForwardPath> = PerCpuArray::with_max_entries(HOOK_MAX_ARGS as u32 + 1, 0);

/// When each (hook, selector, scope, arguments) a `rateLimit` watches last
/// posted.
#[map]
static RATE_LIMITS: LruHashMap<RateKey, u64> = LruHashMap::with_max_entries(RATE_KEYS_MAX, 0);

/// Per-CPU room a rate-limit key is built in.
#[map]
static RATE_KEY: PerCpuArray<RateKey> = PerCpuArray::with_max_entries(1, 0);

/// Overrides decided for threads' calls, until the override program takes
/// them.
#[map]
static OVERRIDES: LruHashMap<u32, PendingOverride> = LruHashMap::with_max_entries(OVERRIDES_MAX, 0);

/// Per-CPU: the current task's namespaces, for `matchNamespaces` (by
/// `NS_*`; 16 slots, so that a masked index stays inside).
#[map]
static NAMESPACES_NOW: PerCpuArray<[u32; 16]> = PerCpuArray::with_max_entries(1, 0);

/// Live processes' binaries, by process id: set at exec, copied at fork,
/// removed at exit; the sensor adds those running before it at start.
#[map]
static BINARIES: HashMap<u32, Binary> = HashMap::with_max_entries(BINARIES_MAX, NO_PREALLOC);

/// Per-CPU room a binary is read into before it goes into `BINARIES`.
#[map]
static BINARY_SCRATCH: PerCpuArray<Binary> = PerCpuArray::with_max_entries(1, 0);

#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::ZERO;

/// One field of the offsets, read through a volatile load so the compiler
/// cannot fold the all-zero initialiser into the code (the loader
/// overwrites the global before load).
macro_rules! off {
    ($field:ident) => {{
        #[allow(
            unused_unsafe,
            reason = "`allow`, not `expect`: the block is redundant only where the macro is used inside another \
                      unsafe block"
        )]
        // SAFETY: OFFSETS is a plain static of integers.
        let value = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(crate::OFFSETS.$field)) };
        value
    }};
}

#[inline(always)]
pub(crate) fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU touches it now.
        unsafe { *p += 1 };
    }
}

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
pub(crate) unsafe fn field<T>(base: *const u8, off: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) }.map_err(|e| e as i64)
}

#[inline(always)]
pub(crate) unsafe fn ptr_field(base: *const u8, off: u32) -> Result<*const u8, i64> {
    // SAFETY: `field` reads through bpf_probe_read_kernel, which checks the address.
    let p: *const u8 = unsafe { field(base, off) }?;
    if p.is_null() { Err(-14) } else { Ok(p) }
}

/// How a record wakes the consumer. By default (flags 0) the kernel wakes
/// it only for a record into an empty ring (the consumer has read all
/// before it): one wakeup per burst, none while idle, and no race between
/// CPUs (the kernel compares positions at commit). The consumer, once
/// woken, lets the burst queue for a few ms before reading; the record
/// that takes the backlog across `WAKEUP_BYTES` forces a wakeup so a
/// large burst is read at once. `queued` is the backlog this record
/// counts in (before an `output`, plus its length; after a `reserve`, as
/// queried). Forcing a wakeup for every record above the mark, as a
/// consumer that falls behind keeps the backlog there, cost about a
/// microsecond each.
#[inline(always)]
pub(crate) fn submit_flags(queued: u64, len: u64) -> u64 {
    if queued >= WAKEUP_BYTES && queued.saturating_sub(len) < WAKEUP_BYTES { BPF_RB_FORCE_WAKEUP as u64 } else { 0 }
}

/// What is queued in the ring buffer now.
#[inline(always)]
pub(crate) fn queued() -> u64 {
    EVENTS.query(aya_ebpf::bindings::BPF_RB_AVAIL_DATA as u64)
}

mod args;
mod hooks;
mod lifecycle;
mod overrides;
mod paths;
mod select;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
