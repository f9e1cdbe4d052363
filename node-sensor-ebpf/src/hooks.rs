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
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{kprobe, kretprobe, tracepoint, uprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use node_sensor_common::*;

use crate::args::{AREA, ARGS_PATHS, ARGS_PLAIN, ARGS_SOCK, read_arg};
use crate::{EVENTS, HOOK_SCRATCH, HOOKS, RETURN_PENDING, count, queued, submit_flags};

/// A hook record as it is built: the record, then its argument area.
#[repr(C)]
pub struct HookScratch {
    pub record: HookRecord,
    pub data: [u8; AREA],
}

#[tracepoint]
pub fn vigil_tp(ctx: TracePointContext) -> u32 {
    // A failure is counted where it happens; the traced code goes on.
    let _ = run_hooks::<ARGS_PLAIN, HOOKS_PER_ATTACH>(ctx.as_ptr());
    0
}

/// Tracepoint hooks with a file descriptor argument: its path is read as
/// a kprobe's file is, which costs the verifier as much, so each such hook
/// has an attach of its own (cookie `TRACEPOINT_FD_COOKIE` with its number).
#[tracepoint]
pub fn vigil_tf(ctx: TracePointContext) -> u32 {
    let _ = run_hooks::<ARGS_PATHS, 1>(ctx.as_ptr());
    0
}

/// A uprobe or kprobe attach serves one hook (policies on the same
/// function attach each their own).
#[uprobe]
pub fn vigil_up(ctx: ProbeContext) -> u32 {
    let _ = run_hooks::<ARGS_PLAIN, 1>(ctx.as_ptr());
    0
}

/// Kernel functions: the only hooks whose arguments may be kernel objects.
/// This program reads files, paths, a binprm and descriptors; `vigil_ks`
/// sockets and credentials. (One
/// program with both readers is past the verifier's million instructions
/// on Linux 6.1.)
#[kprobe]
pub fn vigil_kp(ctx: ProbeContext) -> u32 {
    let _ = run_hooks::<ARGS_PATHS, 1>(ctx.as_ptr());
    0
}

#[kprobe]
pub fn vigil_ks(ctx: ProbeContext) -> u32 {
    let _ = run_hooks::<ARGS_SOCK, 1>(ctx.as_ptr());
    0
}

/// Sends a record for each hook of this attach, its arguments read from
/// `ctx` (a tracepoint's record, or a probe's `pt_regs`).
#[inline(always)]
fn run_hooks<const KIND: u8, const MAX_HOOKS: usize>(ctx: *mut c_void) -> Result<(), i64> {
    let record = ctx as *const u8;
    // SAFETY: the helper only reads the running program's attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx) };
    // SAFETY: the value is only read, and the sensor replaces whole values.
    let Some(hooks) = (unsafe { HOOKS.get(cookie) }) else {
        return Ok(());
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    // The sensor does not watch itself (its export writes would feed a
    // policy on writes without end).
    if (pid_tgid >> 32) as u32 == off!(own_tgid) {
        return Ok(());
    }
    let scratch = HOOK_SCRATCH.get_ptr_mut(0).ok_or(-12i64)?;
    // SAFETY: bpf_ktime_get_boot_ns has no preconditions.
    let ktime = unsafe { bpf_ktime_get_boot_ns() };
    for h in 0..MAX_HOOKS.min(HOOKS_PER_ATTACH) {
        if h as u32 >= hooks.count {
            break;
        }
        let hook = &hooks.hooks[h];
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
            };
            if KIND != ARGS_PLAIN && hook.flags & HOOK_RETURN != 0 {
                // The return probe sends it, with the return value.
                keep_for_return(scratch, pid_tgid, hook.hook_id);
                continue;
            }
            send(scratch as *const u8, data_len);
        }
    }
    Ok(())
}

/// Sends the record built in `scratch` with `data_len` bytes of arguments.
///
/// # Safety
/// `scratch` must hold a record and `data_len` bytes after it.
#[inline(always)]
unsafe fn send(scratch: *const u8, data_len: usize) {
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
unsafe fn keep_for_return(scratch: *mut HookScratch, pid_tgid: u64, hook_id: u32) {
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
        // Entered before the policy, or its entry was pushed out.
        count(COUNTER_RETURNS_LOST);
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
        send(scratch as *const u8, data_len);
    }
    Ok(())
}
