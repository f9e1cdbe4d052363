//! `Override`: a kprobe program of its own, attached after a hook's entry
//! program on the same function (so it runs after it), that makes the
//! function return the error the selector program decided for this
//! thread's call. Apart because a program calling `bpf_override_return`
//! may only be attached to functions the kernel allows for error
//! injection, which the generic entry programs are not limited to.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, generated::bpf_override_return},
    macros::kprobe,
    programs::ProbeContext,
};

use crate::OVERRIDES;

#[kprobe]
pub fn vigil_ov(ctx: ProbeContext) -> u32 {
    // SAFETY: the helper only reads the running program's attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out at once.
    let Some(pending) = (unsafe { OVERRIDES.get(tid) }).copied() else {
        return 0;
    };
    let _ = OVERRIDES.remove(tid);
    if u64::from(pending.hook_id) == cookie & 0xffff_ffff {
        // SAFETY: this program is attached (by the sensor) only to
        // functions the kernel allows for error injection.
        unsafe { bpf_override_return(ctx.as_ptr() as *mut _, pending.ret as u64) };
    }
    0
}
