//! The generic hook programs: one tracepoint program, attached to every
//! tracepoint a policy names, and one uprobe program, attached to every
//! user function. Each finds its hooks by the attach cookie: for a
//! tracepoint its id (the record's own `common_type` is not there to read:
//! syscall tracepoints hand BPF a register pointer over it), so one attach
//! serves every policy on it; for a uprobe its hook's number. One record
//! goes out per hook, with the arguments it asks for, read from the
//! tracepoint's record or from the probed function's registers (the
//! sensor gives register arguments as offsets into `pt_regs`).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_attach_cookie, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{kprobe, kretprobe, tracepoint, uprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use node_sensor_common::*;

use crate::args::{AREA, ARGS_PATHS, ARGS_PLAIN, ARGS_SOCK, read_arg};
use crate::select::{SELECT_PROBE, SELECT_TRACEPOINT, select_failed};
use crate::{
    CHAIN, EVENTS, HOOK_SCRATCH, HOOKS, READER_TP, RETURN_PENDING, SCOPE_CGROUPS, SELECT_KP, SELECT_TP, count, queued,
    submit_flags,
};

/// A program's context as the tail call wants it.
struct Ctx(*mut c_void);

impl EbpfContext for Ctx {
    fn as_ptr(&self) -> *mut c_void {
        self.0
    }
}

/// Hands the record in the scratch to the selector program (`SELECT_*`: the
/// one of the caller's program type); only returns if that failed (counted:
/// the event is lost).
#[inline(always)]
fn to_selectors(ctx: *mut c_void, program_type: u32) {
    // SAFETY: a tail call either runs the slot's program, which reads the
    // scratch this program filled, or returns.
    unsafe {
        if program_type == SELECT_TRACEPOINT {
            SELECT_TP.tail_call(&Ctx(ctx), 0);
        } else {
            SELECT_KP.tail_call(&Ctx(ctx), 0);
        }
    }
    select_failed();
}

/// A hook record as it is built: the record, then its argument area.
#[repr(C)]
pub(crate) struct HookScratch {
    pub record: HookRecord,
    pub data: [u8; AREA],
}

#[tracepoint]
pub fn vigil_tp(ctx: TracePointContext) -> u32 {
    // A failure is counted where it happens; the traced code goes on.
    let _ = run_chain::<ARGS_PLAIN>(ctx.as_ptr(), READER_PLAIN);
    0
}

/// One hook of the tracepoint's attach per run: the hook the chain is at
/// (a fresh run starts at the first), then on to the next with a tail call
/// to this program (a hook with selectors: through the selector program,
/// which comes back). So the verifier walks one hook, however many the
/// attach serves.
/// `reader` is the running program's `READER_TP` slot.
#[inline(always)]
fn run_chain<const KIND: u8>(ctx: *mut c_void, reader: u32) -> Result<(), i64> {
    // SAFETY: the helper only reads the running program's attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx) };
    // SAFETY: the value is only read, and the sensor replaces whole values.
    let Some(hooks) = (unsafe { HOOKS.get(cookie) }) else {
        return Ok(());
    };
    let chain = CHAIN.get_ptr_mut(0).ok_or(-12i64)?;
    // SAFETY: the chain state is this CPU's; tracing programs do not nest
    // on a CPU, so no other run is between this one's tail calls.
    unsafe {
        if (*chain).active == 0 || (*chain).cookie != cookie {
            (*chain).next = 0;
        }
        // Read back, not chosen by the branch: one state for the verifier
        // to walk the hook with, not one per way here.
        let h = core::ptr::read_volatile(&(*chain).next) as usize;
        (*chain).active = 0;
        if h >= HOOKS_PER_ATTACH || h as u32 >= hooks.count {
            return Ok(());
        }
        // Set whether or not a hook follows, and the hook read after:
        // a branch here would have the verifier walk the hook twice. The
        // selector program comes back through it, and a run past the last
        // hook ends above (clearing it).
        *chain = Chain { active: reader + 1, next: (h + 1) as u32, cookie };
        // Masked: an older verifier loses the bound checked above.
        let _ = run_hook::<KIND>(ctx, &hooks.hooks[h & (HOOKS_PER_ATTACH - 1)], SELECT_TRACEPOINT);
        if (*chain).next < hooks.count {
            READER_TP.tail_call(&Ctx(ctx), reader);
            // Could not go on: the rest of this run's hooks are lost.
            select_failed();
        }
        (*chain).active = 0;
    }
    Ok(())
}

/// Tracepoint hooks with a file descriptor argument: its path is read as
/// a kprobe's file is, which costs the verifier as much as a kprobe's, so
/// these hooks have an attach and a chain of their own (cookie
/// `TRACEPOINT_FD_COOKIE` with the tracepoint's id).
#[tracepoint]
pub fn vigil_tf(ctx: TracePointContext) -> u32 {
    let _ = run_chain::<ARGS_PATHS>(ctx.as_ptr(), READER_PATHS);
    0
}

/// A uprobe or kprobe attach serves one hook (policies on the same
/// function attach each their own).
#[uprobe]
pub fn vigil_up(ctx: ProbeContext) -> u32 {
    let _ = run_hooks::<ARGS_PLAIN>(ctx.as_ptr(), SELECT_PROBE);
    0
}

/// Kernel functions: the only hooks whose arguments may be kernel objects.
/// This program reads files, paths, a binprm and descriptors; `vigil_ks`
/// sockets and credentials. (One
/// program with both readers is past the verifier's million instructions
/// on Linux 6.1.)
#[kprobe]
pub fn vigil_kp(ctx: ProbeContext) -> u32 {
    let _ = run_hooks::<ARGS_PATHS>(ctx.as_ptr(), SELECT_PROBE);
    0
}

#[kprobe]
pub fn vigil_ks(ctx: ProbeContext) -> u32 {
    let _ = run_hooks::<ARGS_SOCK>(ctx.as_ptr(), SELECT_PROBE);
    0
}

/// The attach's one hook (uprobes and kprobes have attaches of their own).
#[inline(always)]
fn run_hooks<const KIND: u8>(ctx: *mut c_void, select_slot: u32) -> Result<(), i64> {
    // SAFETY: the helper only reads the running program's attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx) };
    // SAFETY: the value is only read, and the sensor replaces whole values.
    let Some(hooks) = (unsafe { HOOKS.get(cookie) }) else {
        return Ok(());
    };
    if hooks.count == 0 {
        return Ok(());
    }
    run_hook::<KIND>(ctx, &hooks.hooks[0], select_slot)
}

/// Sends a record for `hook`, its arguments read from `ctx` (a
/// tracepoint's record, or a probe's `pt_regs`); a hook with selectors
/// goes on to the selector program of this program's type
/// (`select_slot`), which decides.
#[inline(always)]
fn run_hook<const KIND: u8>(ctx: *mut c_void, hook: &HookSpec, select_slot: u32) -> Result<(), i64> {
    let record = ctx as *const u8;
    let pid_tgid = bpf_get_current_pid_tgid();
    // The sensor does not watch itself (its export writes would feed a
    // policy on writes without end).
    if (pid_tgid >> 32) as u32 == off!(own_tgid) {
        return Ok(());
    }
    if hook.flags & HOOK_SCOPED != 0 && !in_scope(hook.scope) {
        return Ok(());
    }
    let scratch = HOOK_SCRATCH.get_ptr_mut(0).ok_or(-12i64)?;
    // SAFETY: bpf_ktime_get_boot_ns has no preconditions.
    let ktime = unsafe { bpf_ktime_get_boot_ns() };
    count(COUNTER_HOOKS);
    // SAFETY: the scratch slot is this CPU's and of HookScratch size;
    // argument writes stay inside its area (see `args`).
    unsafe {
        let data = (*scratch).data.as_mut_ptr();
        // The position lives in the scratch map between arguments, so
        // the verifier sees one unknown (masked) position at each
        // argument instead of one per earlier argument's outcome: the
        // paths converge, and verification stays linear in arguments.
        let pos = core::ptr::addr_of_mut!((*scratch).record.data_len);
        core::ptr::write_volatile(pos, 0);
        for a in 0..HOOK_MAX_ARGS {
            if a as u32 >= hook.nargs {
                break;
            }
            let at = core::ptr::read_volatile(pos) as usize;
            let next = read_arg::<KIND>(record, &hook.args[a], data, at);
            core::ptr::write_volatile(pos, next as u32);
        }
        let data_len = core::ptr::read_volatile(pos) as usize & (HOOK_DATA_SIZE - 1);
        (*scratch).record = HookRecord {
            header: RecordHeader { kind: KIND_HOOK, flags: 0, ktime },
            hook_id: hook.hook_id,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            data_len: data_len as u32,
            selector: 0,
            action: 0,
            return_action: 0,
            kernel_frames: 0,
            user_frames: 0,
            _pad: 0,
        };
        if hook.flags & HOOK_SELECT != 0 {
            to_selectors(ctx, select_slot);
            return Ok(());
        }
        if KIND != ARGS_PLAIN && hook.flags & HOOK_RETURN != 0 {
            // The return probe sends it, with the return value.
            keep_for_return(scratch, pid_tgid, hook.hook_id);
            return Ok(());
        }
        send(scratch as *const u8, data_len);
    }
    Ok(())
}

/// Whether the running process's cgroup is one of `scope`'s (or the scope
/// admits every process): a scoped policy looks at nothing else, before
/// any argument is read.
#[inline(always)]
fn in_scope(scope: u32) -> bool {
    // SAFETY: the helper has no preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: only whether an entry exists is read.
    unsafe {
        SCOPE_CGROUPS.get(ScopeKey { scope, _pad: 0, cgroup }).is_some()
            || SCOPE_CGROUPS.get(ScopeKey { scope, _pad: 0, cgroup: SCOPE_EVERY_CGROUP }).is_some()
    }
}

/// Sends the record built in `scratch` with `data_len` bytes of arguments.
///
/// # Safety
/// `scratch` must hold a record and `data_len` bytes after it.
#[inline(always)]
pub(crate) unsafe fn send(scratch: *const u8, data_len: usize) {
    // SAFETY: as the caller promises.
    let bytes = unsafe { core::slice::from_raw_parts(scratch, core::mem::size_of::<HookRecord>() + data_len) };
    let len = bytes.len() as u64;
    if EVENTS.output::<[u8]>(bytes, submit_flags(queued() + len, len)).is_err() {
        count(COUNTER_RINGBUF_FULL);
    }
}

/// The key of a call in flight: its thread and hook.
#[inline(always)]
fn pending_key(pid_tgid: u64, hook_id: u32) -> u64 {
    ((pid_tgid & 0xffff_ffff) << 32) | u64::from(hook_id)
}

/// Keeps the record built so far for the return probe. An entry pushed
/// out of the full map loses its call's event (counted by the return
/// probe's miss); one that cannot go in is counted here.
///
/// # Safety
/// `scratch` must be this CPU's hook scratch.
#[inline(always)]
pub(crate) unsafe fn keep_for_return(scratch: *mut HookScratch, pid_tgid: u64, hook_id: u32) {
    // SAFETY: the scratch is at least a ReturnPending in size and layout
    // (a record, then RETURN_DATA_MAX = HOOK_DATA_SIZE bytes); the map
    // copies that many.
    unsafe {
        let pending = &*(scratch as *const ReturnPending);
        if RETURN_PENDING.insert(pending_key(pid_tgid, hook_id), pending, 0).is_err() {
            count(COUNTER_RETURNS_LOST);
        }
    }
}

/// The return of a kernel function a return-probe hook names: the kept
/// record, its return value appended, goes out.
#[kretprobe]
pub fn vigil_kr(ctx: RetProbeContext) -> u32 {
    let _ = run_return(ctx.as_ptr());
    0
}

#[inline(always)]
fn run_return(ctx: *mut c_void) -> Result<(), i64> {
    // SAFETY: the helper only reads the running program's attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx) };
    // SAFETY: read only; the sensor replaces whole values.
    let Some(hooks) = (unsafe { HOOKS.get(cookie) }) else {
        return Ok(());
    };
    let hook = &hooks.hooks[0];
    let pid_tgid = bpf_get_current_pid_tgid();
    // The entry skipped the sensor's own calls: their returns are no loss.
    if (pid_tgid >> 32) as u32 == off!(own_tgid) {
        return Ok(());
    }
    let key = pending_key(pid_tgid, hook.hook_id);
    // SAFETY: read once, then removed; a racing update by the same thread
    // cannot happen (the thread is here).
    let Some(pending) = (unsafe { RETURN_PENDING.get(key) }) else {
        // Entered before the policy, or its entry was pushed out. With
        // selectors, a call no selector passed at entry was not kept
        // either, and the two cannot be told apart here: not counted.
        // A scoped hook's entry skipped processes out of its scope.
        if hook.flags & (HOOK_SELECT | HOOK_SCOPED) == 0 {
            count(COUNTER_RETURNS_LOST);
        }
        return Ok(());
    };
    let scratch = HOOK_SCRATCH.get_ptr_mut(0).ok_or(-12i64)?;
    // SAFETY: the scratch is this CPU's, larger than a ReturnPending; the
    // copy is of one ReturnPending; the return value goes at the kept
    // length, within the area (see `args`).
    unsafe {
        let copied = aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            scratch as *mut c_void,
            core::mem::size_of::<ReturnPending>() as u32,
            pending as *const ReturnPending as *const c_void,
        );
        let _ = RETURN_PENDING.remove(key);
        if copied != 0 {
            return Ok(());
        }
        let at = (*scratch).record.data_len as usize & (HOOK_DATA_SIZE - 1);
        let next = read_arg::<ARGS_PLAIN>(ctx as *const u8, &hook.ret, (*scratch).data.as_mut_ptr(), at);
        let data_len = next & (HOOK_DATA_SIZE - 1);
        (*scratch).record.data_len = data_len as u32;
        (*scratch).record.header.flags |= RECORD_HAS_RETURN;
        (*scratch).record.header.ktime = bpf_ktime_get_boot_ns();
        if hook.flags & HOOK_SELECT != 0 {
            to_selectors(ctx, SELECT_PROBE);
            return Ok(());
        }
        send(scratch as *const u8, data_len);
    }
    Ok(())
}
