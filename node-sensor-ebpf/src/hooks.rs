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
    macros::{kprobe, tracepoint, uprobe},
    programs::{ProbeContext, TracePointContext},
};
use node_sensor_common::*;

use crate::args::{AREA, read_arg};
use crate::{EVENTS, HOOK_SCRATCH, HOOKS, count, queued, submit_flags};

/// A hook record as it is built: the record, then its argument area.
#[repr(C)]
pub struct HookScratch {
    pub record: HookRecord,
    pub data: [u8; AREA],
}

#[tracepoint]
pub fn vigil_tp(ctx: TracePointContext) -> u32 {
    // A failure is counted where it happens; the traced code goes on.
    let _ = run_hooks::<false, HOOKS_PER_ATTACH>(ctx.as_ptr());
    0
}

/// A uprobe or kprobe attach serves one hook (policies on the same
/// function attach each their own).
#[uprobe]
pub fn vigil_up(ctx: ProbeContext) -> u32 {
    let _ = run_hooks::<false, 1>(ctx.as_ptr());
    0
}

/// Kernel functions: the only hooks whose arguments may be files, paths or
/// a binprm (their readers cost the verifier; the others go without).
#[kprobe]
pub fn vigil_kp(ctx: ProbeContext) -> u32 {
    let _ = run_hooks::<true, 1>(ctx.as_ptr());
    0
}

/// Sends a record for each hook of this attach, its arguments read from
/// `ctx` (a tracepoint's record, or a probe's `pt_regs`).
#[inline(always)]
fn run_hooks<const PATHS: bool, const MAX_HOOKS: usize>(ctx: *mut c_void) -> Result<(), i64> {
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
                let next = read_arg::<PATHS>(record, &hook.args[a], data, at);
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
            let bytes =
                core::slice::from_raw_parts(scratch as *const u8, core::mem::size_of::<HookRecord>() + data_len);
            let len = bytes.len() as u64;
            if EVENTS.output::<[u8]>(bytes, submit_flags(queued() + len, len)).is_err() {
                count(COUNTER_RINGBUF_FULL);
            }
        }
    }
    Ok(())
}
