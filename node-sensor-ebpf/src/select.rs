//! Selectors: a hook's in-kernel filters and actions. The reader programs
//! (`hooks`) build a hook's record in the per-CPU scratch, then tail-call
//! one of these programs, which find the first selector whose filters all
//! pass, take its actions, and send (or keep for the return probe) the
//! record, or drop it: an event no selector passes costs no ring-buffer
//! space and no user-space time. Kept apart from the readers so that each
//! is verified on its own (a reader's path walk and these loops together
//! would be past the verifier's budget).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns,
        generated::{bpf_get_stack, bpf_probe_read_kernel, bpf_probe_read_kernel_str, bpf_send_signal},
    },
    macros::{kprobe, tracepoint},
    maps::lpm_trie::Key,
    programs::{ProbeContext, TracePointContext},
};
use node_sensor_common::*;

use crate::hooks::{HookScratch, keep_for_return, send};
use crate::{
    ACTION_COUNTS, BINARIES, CHAIN, FORWARD_PATHS, HOOK_SCRATCH, NAMESPACES_NOW, OVERRIDES, POSITIONS, RATE_KEY,
    RATE_LIMITS, READER_TP, SELECTORS, STRING_SCRATCH, STRINGS, count,
};

/// The reader's program type, which picks the selector program.
pub(crate) const SELECT_TRACEPOINT: u32 = 0;
pub(crate) const SELECT_PROBE: u32 = 1;

#[tracepoint]
pub fn vigil_st(ctx: TracePointContext) -> u32 {
    // Stack traces are for kprobes (the policy refuses them elsewhere).
    let _ = select::<false>(ctx.as_ptr());
    resume_chain(&ctx);
    0
}

/// Back to the tracepoint program for the attach's next hook, if its run
/// has one (see `Chain`).
#[inline(always)]
fn resume_chain(ctx: &TracePointContext) {
    let Some(chain) = CHAIN.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's chain state; see `hooks::run_chain`.
    unsafe {
        if (*chain).active != 0 {
            READER_TP.tail_call(ctx, (*chain).active - 1);
            (*chain).active = 0;
            select_failed();
        }
    }
}

/// Uprobes, kprobes and return probes (all of the kprobe program type).
#[kprobe]
pub fn vigil_sk(ctx: ProbeContext) -> u32 {
    let _ = select::<true>(ctx.as_ptr());
    0
}

/// Decides on the record in this CPU's hook scratch; with `STACKS`, a
/// `Post` that asks for stacks appends them (`ctx` is the probe's).
#[inline(always)]
fn select<const STACKS: bool>(ctx: *mut c_void) -> Result<(), i64> {
    let scratch = HOOK_SCRATCH.get_ptr_mut(0).ok_or(-12i64)?;
    // SAFETY: the scratch is this CPU's, written by the reader that
    // tail-called here; the selector set is only read.
    unsafe {
        let hook_id = (*scratch).record.hook_id;
        let Some(set) = SELECTORS.get(hook_id) else {
            return Ok(());
        };
        let monitor = set.flags & SELECT_MONITOR != 0;
        locate_args(scratch);
        if set.flags >> SELECT_PATHS_SHIFT != 0 {
            forward_paths(set.flags >> SELECT_PATHS_SHIFT, scratch);
        }
        if set.flags & SELECT_NAMESPACES != 0 {
            read_namespaces();
        }
        let data_len = (*scratch).record.data_len as usize & (HOOK_DATA_SIZE - 1);
        if (*scratch).record.header.flags & RECORD_HAS_RETURN != 0 {
            // The return side follows the selector that matched at entry.
            let s = (*scratch).record.selector as usize & (SELECTOR_SLOTS - 1);
            let sel = &set.selectors[s];
            if !args_pass(&sel.rets, sel.nrets, scratch) {
                return Ok(());
            }
            let (action, verdict, _) = act(&sel.ret_actions, sel.nret_actions, monitor, hook_id, s, scratch);
            // Without return actions, the return side reports the entry's.
            if sel.nret_actions != 0 {
                (*scratch).record.return_action = action as u16;
            } else {
                (*scratch).record.return_action = (*scratch).record.action;
            }
            match verdict {
                SEND => {
                    count_action(hook_id, s, COUNT_POST);
                    // The entry's Post asked for them; taken here, after
                    // the return value, where the event is sent.
                    let data_len = if STACKS {
                        append_stacks(ctx, scratch, post_stacks(&sel.actions, sel.nactions), data_len)
                    } else {
                        data_len
                    };
                    send(scratch as *const u8, data_len);
                }
                NOT_SENT => count_action(hook_id, s, COUNT_NOPOST),
                _ => {}
            }
            return Ok(());
        }
        let Some(s) = first_passing(set, scratch) else {
            return Ok(());
        };
        let sel = &set.selectors[s];
        let (action, verdict, stacks) = act(&sel.actions, sel.nactions, monitor, hook_id, s, scratch);
        (*scratch).record.selector = s as u32;
        (*scratch).record.action = action as u16;
        if verdict != SEND {
            if verdict == NOT_SENT {
                count_action(hook_id, s, COUNT_NOPOST);
            }
            return Ok(());
        }
        if set.flags & SELECT_RETURN != 0 {
            // Counted at the return, which may still filter it out.
            keep_for_return(scratch, bpf_get_current_pid_tgid(), hook_id);
        } else {
            count_action(hook_id, s, COUNT_POST);
            let data_len = if STACKS { append_stacks(ctx, scratch, stacks, data_len) } else { data_len };
            send(scratch as *const u8, data_len);
        }
    }
    Ok(())
}

/// Bytes of one stack at most.
const STACK_BYTES: usize = STACK_FRAMES * 8;

/// The stacks the `Post` actions among `actions` ask for.
#[inline(always)]
fn post_stacks(actions: &[ActionSpec; SELECTOR_ACTIONS], n: u8) -> u32 {
    let mut stacks = 0;
    for (i, a) in actions.iter().enumerate() {
        if i as u8 >= n {
            break;
        }
        if a.kind == ACTION_POST {
            stacks |= a.stacks;
        }
    }
    stacks
}

/// Appends the stacks `stacks` asks for after the record's `data_len`
/// bytes (kernel, then user) and says how many frames each has; returns
/// the new length. A stack that does not fit, or that the kernel could
/// not walk, is counted as lost.
///
/// # Safety
/// `scratch` must be this CPU's hook scratch; `ctx` the probe's registers.
#[inline(always)]
unsafe fn append_stacks(ctx: *mut c_void, scratch: *mut HookScratch, stacks: u32, data_len: usize) -> usize {
    let mut len = data_len;
    // SAFETY: as the caller promises.
    unsafe {
        if stacks & STACK_KERNEL != 0 {
            let n = append_stack(ctx, scratch, len, 0);
            (*scratch).record.kernel_frames = (n / 8) as u16;
            len += n;
        }
        if stacks & STACK_USER != 0 {
            let n = append_stack(ctx, scratch, len, BPF_F_USER_STACK);
            (*scratch).record.user_frames = (n / 8) as u16;
            len += n;
        }
        let len = len & (HOOK_DATA_SIZE - 1);
        (*scratch).record.data_len = len as u32;
        len
    }
}

/// The kernel's `BPF_F_USER_STACK`: the user stack, not the kernel's.
const BPF_F_USER_STACK: u64 = 1 << 8;

/// One stack at byte `at` of the data; its bytes (a multiple of 8).
///
/// # Safety
/// As `append_stacks`.
#[inline(always)]
unsafe fn append_stack(ctx: *mut c_void, scratch: *mut HookScratch, at: usize, flags: u64) -> usize {
    if at + STACK_BYTES >= HOOK_DATA_SIZE {
        count(COUNTER_STACKS_LOST);
        return 0;
    }
    // The scratch's area runs past HOOK_DATA_SIZE by more than a stack
    // (see `args::AREA`), so a masked start and a whole stack stay in it.
    let at = at & (HOOK_DATA_SIZE - 1);
    // SAFETY: as above; the helper writes at most STACK_BYTES there.
    let n = unsafe {
        let to = (*scratch).data.as_mut_ptr().add(at);
        bpf_get_stack(ctx, to as *mut c_void, STACK_BYTES as u32, flags)
    };
    if n <= 0 {
        count(COUNTER_STACKS_LOST);
        return 0;
    }
    (n as usize).min(STACK_BYTES) & !7
}

/// The first selector whose every filter passes.
///
/// # Safety
/// `scratch` must be this CPU's hook scratch.
#[inline(always)]
unsafe fn first_passing(set: &SelectorSet, scratch: *mut HookScratch) -> Option<usize> {
    for s in 0..SELECTORS_PER_HOOK {
        if s as u32 >= set.count {
            break;
        }
        let sel = &set.selectors[s];
        let task_passes = pids_pass(&sel.pids) && binary_passes(&sel.binary);
        let task_passes = task_passes && namespaces_pass(sel) && capabilities_pass(sel);
        let task_passes = task_passes && parent_binary_passes(&sel.parent_binary) && changes_pass(sel);
        // SAFETY: as the caller promises.
        if task_passes && unsafe { args_pass(&sel.args, sel.nargs, scratch) } {
            return Some(s);
        }
    }
    None
}

/// What the actions decided of the event: send it, not (`NoPost`), or
/// held back by a rate limit (counted as that already).
const SEND: u8 = 0;
const NOT_SENT: u8 = 1;
const HELD: u8 = 2;

/// Takes the actions; returns the event's action, its verdict (which the
/// caller counts, but for `HELD`) and the stacks a `Post` asks for.
/// Enforcement in monitor mode is counted, not taken.
#[inline(always)]
fn act(
    actions: &[ActionSpec; SELECTOR_ACTIONS],
    n: u8,
    monitor: bool,
    hook_id: u32,
    s: usize,
    scratch: *mut HookScratch,
) -> (u32, u8, u32) {
    let mut action = ACTION_POST;
    let mut verdict = SEND;
    let mut stacks = 0;
    for (i, a) in actions.iter().enumerate() {
        if i as u8 >= n {
            break;
        }
        match a.kind {
            ACTION_NOPOST => verdict = NOT_SENT,
            // SAFETY: the scratch is this CPU's hook scratch.
            ACTION_POST if a.rate_ms != 0 && unsafe { rate_limited(hook_id, s, a, scratch) } => {
                verdict = HELD;
                count_action(hook_id, s, COUNT_RATE_LIMITED);
            }
            ACTION_POST => stacks |= a.stacks,
            ACTION_OVERRIDE => {
                if monitor {
                    count_action(hook_id, s, COUNT_MONITOR_OVERRIDE);
                } else {
                    let tid = bpf_get_current_pid_tgid() as u32;
                    let pending = PendingOverride { hook_id, _pad: 0, ret: i64::from(a.signal as i32) };
                    if OVERRIDES.insert(tid, pending, 0).is_ok() {
                        count_action(hook_id, s, COUNT_OVERRIDE);
                        action = a.kind;
                    }
                }
            }
            ACTION_SIGKILL | ACTION_SIGNAL => {
                let signal = if a.kind == ACTION_SIGKILL { 9 } else { a.signal };
                if monitor {
                    count_action(hook_id, s, COUNT_MONITOR_SIGNAL);
                } else {
                    // SAFETY: the helper signals the current task's process.
                    unsafe { bpf_send_signal(signal) };
                    count_action(hook_id, s, COUNT_SIGNAL);
                    action = a.kind;
                }
            }
            _ => {}
        }
    }
    (action, verdict, stacks)
}

/// Whether a `Post` with `rateLimit` posted the same arguments in its
/// scope less than its interval ago; if not, this event is remembered.
///
/// # Safety
/// `scratch` must be this CPU's hook scratch, its arguments located.
#[inline(always)]
unsafe fn rate_limited(hook_id: u32, s: usize, a: &ActionSpec, scratch: *mut HookScratch) -> bool {
    let (Some(key), Some(positions)) = (RATE_KEY.get_ptr_mut(0), POSITIONS.get_ptr(0)) else {
        return false;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the key and positions are this CPU's; argument reads stay in
    // the scratch's area (masked positions, lengths cut to RATE_ARG_BYTES)
    // and go through the helper into the key's fixed slots.
    unsafe {
        (*key).hook_id = hook_id;
        (*key).selector = s as u32;
        (*key).scope_id = match a.rate_scope {
            RATE_SCOPE_THREAD => pid_tgid & 0xffff_ffff,
            RATE_SCOPE_PROCESS => pid_tgid >> 32,
            _ => 0,
        };
        (*key).args = [0; RATE_ARG_BYTES * HOOK_MAX_ARGS];
        let data = (*scratch).data.as_ptr();
        let data_len = (*scratch).record.data_len as usize;
        for i in 0..HOOK_MAX_ARGS {
            let at = (*positions)[i] as usize & (HOOK_DATA_SIZE - 1);
            if at >= data_len {
                break;
            }
            let len = (core::ptr::read_unaligned(data.add(at) as *const u64) as u32 & ARG_LEN_MASK) as usize;
            let len = if len > RATE_ARG_BYTES { RATE_ARG_BYTES } else { len };
            if len > 0 {
                bpf_probe_read_kernel(
                    (*key).args.as_mut_ptr().add(i * RATE_ARG_BYTES) as *mut c_void,
                    len as u32,
                    data.add(at + 8) as *const c_void,
                );
            }
        }
        let now = bpf_ktime_get_boot_ns();
        // The key by reference: by value it would be copied to the stack.
        let key: &RateKey = &*key;
        if let Some(last) = RATE_LIMITS.get(key)
            && now.saturating_sub(*last) < u64::from(a.rate_ms) * 1_000_000
        {
            return true;
        }
        let _ = RATE_LIMITS.insert(key, now, 0);
    }
    false
}

#[inline(always)]
fn count_action(hook_id: u32, s: usize, what: usize) {
    let Some(counts) = ACTION_COUNTS.get_ptr_mut(hook_id) else {
        return;
    };
    let i = (s * COUNTS_PER_SELECTOR + what) & (SELECTOR_SLOTS * COUNTS_PER_SELECTOR - 1);
    // SAFETY: the slot is inside this CPU's copy of the value.
    unsafe { (*counts).counts[i] += 1 };
}

/// `matchPIDs`: the task's process id (in its pid namespace with
/// `isNamespacePID`) is one of the values; with `followForks`, or an
/// ancestor's within `FOLLOW_GENERATIONS`.
#[inline(always)]
fn pids_pass(f: &PidFilterSpec) -> bool {
    if f.op == 0 {
        return true;
    }
    let follow = f.flags & PID_FOLLOW_FORKS != 0;
    // SAFETY: the helper has no preconditions.
    let mut task = unsafe { bpf_get_current_task() } as *const u8;
    let mut found = false;
    for _ in 0..=FOLLOW_GENERATIONS {
        // SAFETY: reads go through bpf_probe_read_kernel.
        let pid = unsafe {
            if f.flags & PID_NAMESPACE != 0 {
                crate::lifecycle::read_nspid(task)
            } else {
                crate::field::<u32>(task, off!(task_tgid)).unwrap_or(0)
            }
        };
        for i in 0..SELECTOR_PIDS {
            if i as u8 >= f.nvalues {
                break;
            }
            found |= f.values[i] == pid;
        }
        if found || !follow || pid <= 1 {
            break;
        }
        // SAFETY: as above.
        match unsafe { crate::ptr_field(task, off!(task_real_parent)) } {
            Ok(parent) => task = parent,
            Err(_) => break,
        }
    }
    found == (f.op == OP_IN)
}

/// The current task's namespaces into `NAMESPACES_NOW` (once per event,
/// for every selector to read).
#[inline(always)]
fn read_namespaces() {
    let Some(now) = NAMESPACES_NOW.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's array (its first NS_COUNT slots are the kinds);
    // the task is read through the helpers.
    unsafe {
        *now = [0; 16];
        crate::lifecycle::task_namespaces(bpf_get_current_task() as *const u8, &mut *(now as *mut [u32; NS_COUNT]));
    }
}

/// `matchNamespaces`: every entry's namespace is (or is not) one of its
/// values.
#[inline(always)]
fn namespaces_pass(sel: &SelectorSpec) -> bool {
    if sel.nnamespaces == 0 {
        return true;
    }
    let Some(now) = NAMESPACES_NOW.get_ptr(0) else {
        return false;
    };
    for (i, f) in sel.namespaces.iter().enumerate() {
        if i as u8 >= sel.nnamespaces {
            break;
        }
        // SAFETY: this CPU's array, read at an index below its length.
        let inum = unsafe { (*now)[f.kind as usize & 15] };
        let mut found = false;
        for j in 0..NAMESPACE_VALUES {
            if j as u8 >= f.nvalues {
                break;
            }
            found |= f.values[j] == inum;
        }
        if found != (f.op == OP_IN) {
            return false;
        }
    }
    true
}

/// `matchCapabilities`: every entry's set holds (or lacks) one of its
/// capabilities.
#[inline(always)]
fn capabilities_pass(sel: &SelectorSpec) -> bool {
    if sel.ncapabilities == 0 {
        return true;
    }
    // SAFETY: the helper has no preconditions.
    let Ok((sets, level)) = task_caps(unsafe { bpf_get_current_task() } as *const u8) else {
        return false;
    };
    for (i, f) in sel.capabilities.iter().enumerate() {
        if i as u8 >= sel.ncapabilities {
            break;
        }
        let caps = caps_of(&sets, f.set);
        let any = caps & f.mask != 0;
        if any != (f.op == OP_IN) || (f.namespace_only != 0 && level == 0) {
            return false;
        }
    }
    true
}

/// A task's capabilities (effective, inheritable, permitted, as the
/// `CAPS_*` sets index them) and its user namespace's level.
#[inline(always)]
pub(crate) fn task_caps(task: *const u8) -> Result<([u64; 3], i32), i64> {
    // SAFETY: reads go through bpf_probe_read_kernel.
    unsafe {
        let cred = crate::ptr_field(task, off!(task_real_cred))?;
        let level = match crate::ptr_field(cred, off!(cred_user_ns)) {
            Ok(ns) => crate::field::<i32>(ns, off!(user_ns_level)).unwrap_or(0),
            Err(_) => 0,
        };
        Ok((
            [
                crate::field::<u64>(cred, off!(cred_cap_effective))?,
                crate::field::<u64>(cred, off!(cred_cap_inheritable))?,
                crate::field::<u64>(cred, off!(cred_cap_permitted))?,
            ],
            level,
        ))
    }
}

/// The set `CAPS_*` names, of `sets` as `task_caps` reads them.
#[inline(always)]
fn caps_of(sets: &[u64; 3], set: u8) -> u64 {
    match set {
        CAPS_INHERITABLE => sets[1],
        CAPS_PERMITTED => sets[2],
        _ => sets[0],
    }
}

/// `matchParentBinaries`: on the parent's exec'd path, with any binary
/// operator (a parent whose binary is not known passes none).
#[inline(always)]
fn parent_binary_passes(f: &BinaryFilterSpec) -> bool {
    if f.op == 0 {
        return true;
    }
    // SAFETY: the helper has no preconditions; reads go through
    // bpf_probe_read_kernel.
    let parent = unsafe {
        let task = bpf_get_current_task() as *const u8;
        crate::ptr_field(task, off!(task_real_parent)).and_then(|p| crate::field::<u32>(p, off!(task_tgid)))
    };
    let Ok(ppid) = parent else {
        return false;
    };
    // SAFETY: read only; the entry is replaced whole at exec.
    let Some(b) = (unsafe { BINARIES.get(ppid) }) else {
        return false;
    };
    let len = b.len as usize & (BINARY_SIZE - 1);
    let (op, negated) = positive_form(f.op);
    // SAFETY: `path` is `len` bytes of map memory (at most its size).
    let found = unsafe { string_matches(op, f.strings, b.path.as_ptr(), len) };
    found != negated
}

/// A binary operator's positive form (what is looked up) and whether the
/// answer is negated.
#[inline(always)]
fn positive_form(op: u8) -> (u8, bool) {
    match op {
        OP_STR_NOT_EQUAL => (OP_STR_EQUAL, true),
        OP_NOT_PREFIX => (OP_PREFIX, true),
        OP_NOT_POSTFIX => (OP_POSTFIX, true),
        op => (op, false),
    }
}

/// `matchNamespaceChanges` and `matchCapabilityChanges`: against what the
/// process had at its exec (a process whose exec is not known passes
/// neither).
#[inline(always)]
fn changes_pass(sel: &SelectorSpec) -> bool {
    let (ns, caps) = (&sel.namespace_change, &sel.capability_change);
    if ns.op == 0 && caps.op == 0 {
        return true;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: read only; the entry is replaced whole at exec.
    let Some(at_exec) = (unsafe { BINARIES.get(tgid) }) else {
        return false;
    };
    if ns.op != 0 {
        let Some(now) = NAMESPACES_NOW.get_ptr(0) else {
            return false;
        };
        // Branch-free: a bit per namespace that differs, then the mask.
        let mut differs = 0u16;
        for k in 0..NS_COUNT {
            // SAFETY: this CPU's array, at a constant index.
            differs |= u16::from(unsafe { (*now)[k] } != at_exec.namespaces[k]) << k;
        }
        let changed = differs & ns.kinds != 0;
        if changed != (ns.op == OP_IN) {
            return false;
        }
    }
    if caps.op != 0 {
        // SAFETY: the helper has no preconditions.
        let Ok((sets, _)) = task_caps(unsafe { bpf_get_current_task() } as *const u8) else {
            return false;
        };
        let changed = (caps_of(&sets, caps.set) ^ caps_of(&at_exec.caps, caps.set)) & caps.mask != 0;
        if changed != (caps.op == OP_IN) {
            return false;
        }
    }
    true
}

/// `matchBinaries` on the process's exec'd path (with `followChildren`, or
/// an ancestor's within `FOLLOW_GENERATIONS`). A process whose binary is
/// not known (it started before the sensor, and the seeding missed it)
/// passes no binary filter, negated or not: an enforcement policy acts
/// only on what it can name.
#[inline(always)]
fn binary_passes(f: &BinaryFilterSpec) -> bool {
    if f.op == 0 {
        return true;
    }
    // The positive form is looked up; a negation is of the whole answer.
    let (op, negated) = positive_form(f.op);
    let mut tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: read only; the entry is replaced whole at exec.
    let Some(own) = (unsafe { BINARIES.get(tgid) }) else {
        return false;
    };
    let len = own.len as usize & (BINARY_SIZE - 1);
    // SAFETY: `path` is `len` bytes of map memory (at most its size).
    let mut found = unsafe { string_matches(op, f.strings, own.path.as_ptr(), len) };
    if found || f.follow == 0 {
        return found != negated;
    }
    // followChildren (with In and NotIn only): an ancestor's binary, by an
    // equality lookup each (the constant operator keeps each generation's
    // code to that one path, for the verifier).
    // SAFETY: the helper has no preconditions.
    let mut task = unsafe { bpf_get_current_task() } as *const u8;
    for _ in 0..FOLLOW_GENERATIONS {
        if tgid <= 1 {
            break;
        }
        // SAFETY: reads go through bpf_probe_read_kernel.
        let Ok(parent) = (unsafe { crate::ptr_field(task, off!(task_real_parent)) }) else {
            break;
        };
        task = parent;
        // SAFETY: as above.
        tgid = unsafe { crate::field::<u32>(parent, off!(task_tgid)) }.unwrap_or(0);
        // SAFETY: read only, as above.
        if let Some(b) = unsafe { BINARIES.get(tgid) } {
            let len = b.len as usize & (BINARY_SIZE - 1);
            // SAFETY: as above.
            if unsafe { string_matches(OP_STR_EQUAL, f.strings, b.path.as_ptr(), len) } {
                found = true;
                break;
            }
        }
    }
    found != negated
}

/// Where each argument of the record starts, into `POSITIONS` (once, for
/// every filter to read).
///
/// # Safety
/// `scratch` must be this CPU's hook scratch.
#[inline(always)]
unsafe fn locate_args(scratch: *mut HookScratch) {
    let Some(positions) = POSITIONS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: positions are masked into the area; the words read lie
    // inside it; the slots written are the array's.
    unsafe {
        let data = (*scratch).data.as_ptr();
        let mut at = 0usize;
        for a in 0..=HOOK_MAX_ARGS {
            (*positions)[a] = at as u32;
            let word = core::ptr::read_unaligned(data.add(at & (HOOK_DATA_SIZE - 1)) as *const u64) as u32;
            at = (at & (HOOK_DATA_SIZE - 1)) + 8 + (((word & ARG_LEN_MASK) as usize + 7) & !7);
        }
    }
}

/// Writes out each path argument of `positions` (a bit per record
/// position) root first into `FORWARD_PATHS`: the record holds its
/// components leaf first, each NUL-terminated, in as many bytes as the
/// path has (`passwd\0etc\0` for `/etc/passwd`), so a component that ends
/// `end` bytes into the record starts after a `/` at `len - end`.
///
/// # Safety
/// `scratch` must be this CPU's hook scratch; `locate_args` ran.
#[inline(always)]
unsafe fn forward_paths(positions: u32, scratch: *mut HookScratch) {
    let (Some(at_of), Some(name)) = (POSITIONS.get_ptr(0), STRING_SCRATCH.get_ptr_mut(1)) else {
        return;
    };
    for p in 0..=HOOK_MAX_ARGS {
        if positions & (1 << p) == 0 {
            continue;
        }
        let Some(out) = FORWARD_PATHS.get_ptr_mut(p as u32) else {
            return;
        };
        // SAFETY: the record's bytes are read through the helpers from
        // masked offsets inside the scratch area (which has an argument's
        // worth of room past the mask); every write into `out` is at an
        // offset masked below CWD_SIZE * 2 of at most NAME_READ bytes,
        // which its size allows.
        unsafe {
            (*out).ok = 0;
            (*out).len = 0;
            let data = (*scratch).data.as_ptr();
            let at = (*at_of)[p] as usize & (HOOK_DATA_SIZE - 1);
            let word = core::ptr::read_unaligned(data.add(at) as *const u64) as u32;
            let len = (word & ARG_LEN_MASK) as usize;
            if word & (ARG_ERROR | ARG_PATH_CUT) != 0 || !(8..=HOOK_ARG_BYTES).contains(&len) {
                continue;
            }
            // Past the length word and the PathHead.
            let names = data.add(at + 16);
            let total = len - 8;
            let bytes = (*out).bytes.as_mut_ptr();
            if total == 0 {
                // The walk started at the root.
                *bytes = b'/';
                (*out).len = 1;
                (*out).ok = 1;
                continue;
            }
            let component = (*name).data.as_mut_ptr();
            let mut done = 0usize;
            for _ in 0..CWD_MAX_DEPTH + 1 {
                if done >= total {
                    break;
                }
                let n = bpf_probe_read_kernel_str(
                    component as *mut c_void,
                    NAME_READ as u32,
                    names.add(done & (CWD_SIZE * 2 - 1)) as *const c_void,
                );
                if n <= 0 {
                    break;
                }
                done += n as usize;
                if done > total {
                    break;
                }
                // Masked through a volatile read: the compiler knows the
                // mask is a no-op, the verifier does not.
                let slash = total - done;
                let slash = core::ptr::read_volatile(&slash) & (CWD_SIZE * 2 - 1);
                *bytes.add(slash) = b'/';
                let chars = (n as u32 - 1) & (NAME_READ as u32 - 1);
                bpf_probe_read_kernel(bytes.add(slash + 1) as *mut c_void, chars, component as *const c_void);
            }
            (*out).len = total as u32;
            (*out).ok = u32::from(done == total);
        }
    }
}

/// Whether every filter of `filters` passes on the record's arguments.
///
/// # Safety
/// `scratch` must be this CPU's hook scratch.
#[inline(always)]
unsafe fn args_pass(filters: &[ArgFilterSpec; SELECTOR_ARG_FILTERS], n: u8, scratch: *mut HookScratch) -> bool {
    for (i, f) in filters.iter().enumerate() {
        if i as u8 >= n {
            break;
        }
        // SAFETY: as the caller promises.
        if !unsafe { arg_passes(f, scratch) } {
            return false;
        }
    }
    true
}

/// One filter on one argument. An argument the reader could not read
/// passes no filter.
///
/// # Safety
/// `scratch` must be this CPU's hook scratch.
#[inline(always)]
unsafe fn arg_passes(f: &ArgFilterSpec, scratch: *mut HookScratch) -> bool {
    // SAFETY: every position is masked into the area, which has an
    // argument's worth of room past the mask; reads stay inside it.
    unsafe {
        let data = (*scratch).data.as_ptr();
        let Some(positions) = POSITIONS.get_ptr(0) else {
            return false;
        };
        let at = (*positions)[f.arg as usize & 7] as usize & (HOOK_DATA_SIZE - 1);
        let word = core::ptr::read_unaligned(data.add(at) as *const u64) as u32;
        if word & ARG_ERROR != 0 {
            return false;
        }
        let len = (word & ARG_LEN_MASK) as usize;
        let body = data.add(at + 8);
        if f.op >= OP_SOCK_FIRST {
            if len < core::mem::size_of::<SockInfo>() {
                return false;
            }
            return sock_passes(f, body);
        }
        if f.path != 0 {
            let Some(path) = FORWARD_PATHS.get_ptr(f.arg as u32) else {
                return false;
            };
            let n = (*path).len as usize;
            if (*path).ok == 0 || n > CWD_SIZE * 2 {
                return false;
            }
            return string_matches(f.op, f.strings, (*path).bytes.as_ptr(), n);
        }
        if f.op >= OP_STR_EQUAL {
            if len > HOOK_ARG_BYTES {
                return false;
            }
            return string_matches(f.op, f.strings, body, len);
        }
        let shift = u64::from(f.shift & 63);
        let raw = core::ptr::read_unaligned(body as *const u64) << shift;
        let value = if f.signed != 0 { ((raw as i64) >> shift) as u64 } else { raw >> shift };
        int_matches(f, value)
    }
}

/// Socket operators on a `SockInfo` at `sock`.
///
/// # Safety
/// `sock` must be a `SockInfo`'s bytes in this CPU's scratch.
#[inline(always)]
unsafe fn sock_passes(f: &ArgFilterSpec, sock: *const u8) -> bool {
    // SAFETY: fields read at their offsets inside the SockInfo; the
    // address bytes go through the helper into the key.
    unsafe {
        let info = sock as *const SockInfo;
        let sport = u64::from(core::ptr::read_unaligned(core::ptr::addr_of!((*info).sport)));
        let dport = u64::from(u16::from_be(core::ptr::read_unaligned(core::ptr::addr_of!((*info).dport_be))));
        let in_ranges = |v: u64| {
            let mut any = false;
            for r in 0..FILTER_INT_VALUES / 2 {
                if 2 * r >= f.nvalues as usize {
                    break;
                }
                any |= f.values[2 * r] <= v && v <= f.values[2 * r + 1];
            }
            any
        };
        let one_of = |v: u64| {
            let mut any = false;
            for i in 0..FILTER_INT_VALUES / 2 {
                if i >= f.nvalues as usize {
                    break;
                }
                any |= f.values[i] == v;
            }
            any
        };
        match f.op {
            OP_SPORT => in_ranges(sport),
            OP_NOT_SPORT => !in_ranges(sport),
            OP_DPORT => in_ranges(dport),
            OP_NOT_DPORT => !in_ranges(dport),
            OP_SPORT_PRIV => sport < 1024,
            OP_NOT_SPORT_PRIV => sport >= 1024,
            OP_DPORT_PRIV => dport < 1024,
            OP_NOT_DPORT_PRIV => dport >= 1024,
            OP_PROTOCOL => one_of(u64::from(core::ptr::read_unaligned(core::ptr::addr_of!((*info).protocol)))),
            OP_FAMILY => one_of(u64::from(core::ptr::read_unaligned(core::ptr::addr_of!((*info).family)))),
            OP_STATE => one_of(u64::from((*info).state)),
            OP_SADDR | OP_NOT_SADDR | OP_DADDR | OP_NOT_DADDR => {
                let source = matches!(f.op, OP_SADDR | OP_NOT_SADDR);
                let found = address_in(f.strings, info, source);
                found == matches!(f.op, OP_SADDR | OP_DADDR)
            }
            _ => false,
        }
    }
}

/// Whether the socket's source (or destination) address is in one of
/// the filter's networks: its family and address looked up in `STRINGS`.
///
/// # Safety
/// `info` must be a `SockInfo` in this CPU's scratch.
#[inline(always)]
unsafe fn address_in(filter: u32, info: *const SockInfo, source: bool) -> bool {
    let Some(key) = STRING_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's key; the copies are of 4 or 16 bytes into its
    // fixed slots, from the SockInfo's fields.
    unsafe {
        let data = (*key).data.as_mut_ptr();
        core::ptr::write_unaligned(data as *mut u32, filter.to_be());
        let v6 = core::ptr::read_unaligned(core::ptr::addr_of!((*info).family)) == AF_INET6;
        let (src, n): (*const u8, usize) = match (v6, source) {
            (false, true) => (core::ptr::addr_of!((*info).saddr) as *const u8, 4),
            (false, false) => (core::ptr::addr_of!((*info).daddr) as *const u8, 4),
            (true, true) => (core::ptr::addr_of!((*info).saddr6) as *const u8, 16),
            (true, false) => (core::ptr::addr_of!((*info).daddr6) as *const u8, 16),
        };
        *data.add(4) = if v6 { 6 } else { 4 };
        bpf_probe_read_kernel(data.add(5) as *mut c_void, n as u32, src as *const c_void);
        (*key).prefix_len = ((5 + n) * 8) as u32;
        STRINGS.get(&*(key as *const Key<[u8; STRING_KEY_DATA]>)).is_some()
    }
}

/// `AF_INET6`.
const AF_INET6: u16 = 10;

/// Integer operators on the argument cut to its type's bits (and
/// sign-extended for signed types), compared signed or not as the type
/// is. The sensor folds GT's values to their least, LT's to their greatest
/// and Mask's to their union, so those read one value.
#[inline(always)]
fn int_matches(f: &ArgFilterSpec, value: u64) -> bool {
    let n = f.nvalues as usize;
    let signed = f.signed != 0;
    match f.op {
        OP_GT => above(signed, value, f.values[0]),
        OP_LT => above(signed, f.values[0], value),
        OP_MASK => value & f.values[0] != 0,
        OP_INT_EQUAL | OP_INT_NOT_EQUAL => {
            let mut any = false;
            for i in 0..FILTER_INT_VALUES / 2 {
                if i >= n {
                    break;
                }
                any |= value == f.values[i];
            }
            any == (f.op == OP_INT_EQUAL)
        }
        OP_IN_RANGE | OP_NOT_IN_RANGE => {
            let mut any = false;
            for r in 0..FILTER_INT_VALUES / 2 {
                if 2 * r >= n {
                    break;
                }
                any |= !above(signed, f.values[2 * r], value) && !above(signed, value, f.values[2 * r + 1]);
            }
            any == (f.op == OP_IN_RANGE)
        }
        _ => false,
    }
}

/// `a > b`, signed or not.
#[inline(always)]
fn above(signed: bool, a: u64, b: u64) -> bool {
    if signed { (a as i64) > (b as i64) } else { a > b }
}

/// String operators: the argument's bytes looked up in `STRINGS` under the
/// filter's number. `Equal` keys carry the length, `Postfix` keys the
/// bytes reversed.
///
/// # Safety
/// `bytes` must be `len` readable bytes.
#[inline(always)]
unsafe fn string_matches(op: u8, filter: u32, bytes: *const u8, len: usize) -> bool {
    let (Some(key), Some(tmp)) = (STRING_SCRATCH.get_ptr_mut(0), STRING_SCRATCH.get_ptr_mut(1)) else {
        return false;
    };
    // SAFETY: both keys are this CPU's; every write is bounded by the key's
    // size (the copy length by the checks, the indexes by the masks); the
    // source is read through the helper.
    let found = unsafe {
        let data = (*key).data.as_mut_ptr();
        core::ptr::write_unaligned(data as *mut u32, filter.to_be());
        let head = match op {
            OP_STR_EQUAL | OP_STR_NOT_EQUAL => {
                *data.add(4) = (len >> 8) as u8;
                *data.add(5) = len as u8;
                6
            }
            _ => 4,
        };
        let n = match op {
            OP_POSTFIX | OP_NOT_POSTFIX => {
                let n = if len > STRING_POSTFIX_MAX { STRING_POSTFIX_MAX } else { len };
                // The last n bytes end at byte 128 of `tmp`; reversed 8 at a
                // time into the key (fixed offsets, so the verifier walks 16
                // steps, not one per byte); the prefix length ignores what
                // lies past them.
                let tail = (*tmp).data.as_mut_ptr();
                if n > 0 {
                    // As a masked scalar: a pointer less a variable is
                    // beyond the verifier's bounds tracking.
                    // (The volatile read keeps the mask, which the
                    // compiler knows to be a no-op and the verifier needs.)
                    let start = 128 - n;
                    let start = core::ptr::read_volatile(&start) & 127;
                    bpf_probe_read_kernel(
                        tail.add(start) as *mut c_void,
                        n as u32,
                        bytes.add(len - n) as *const c_void,
                    );
                }
                for k in 0..16 {
                    let word = core::ptr::read_unaligned(tail.add(120 - 8 * k) as *const u64);
                    core::ptr::write_unaligned(data.add(4 + 8 * k) as *mut u64, word.swap_bytes());
                }
                n
            }
            _ => {
                let room = STRING_KEY_DATA - head;
                let n = if len > room { room } else { len };
                if n > 0 && n <= STRING_PREFIX_MAX {
                    bpf_probe_read_kernel(data.add(head) as *mut c_void, n as u32, bytes as *const c_void);
                }
                n
            }
        };
        (*key).prefix_len = ((head + n) * 8) as u32;
        STRINGS.get(&*(key as *const Key<[u8; STRING_KEY_DATA]>)).is_some()
    };
    match op {
        OP_STR_NOT_EQUAL | OP_NOT_PREFIX | OP_NOT_POSTFIX => !found,
        _ => found,
    }
}

/// Counts a selector hook whose selector program could not be reached.
#[inline(always)]
pub(crate) fn select_failed() {
    count(COUNTER_SELECT_FAILED);
}
