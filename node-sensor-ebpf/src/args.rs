//! Policy arguments, read into a hook record's argument area. Each takes
//! an 8-byte length word (flags in its high bits) and its bytes, padded to
//! 8, at a position masked into the area, so the verifier can bound every
//! write; the area has a string's worth of slack past `HOOK_DATA_SIZE`.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{
    bpf_probe_read_kernel, bpf_probe_read_kernel_str, bpf_probe_read_user, bpf_probe_read_user_str,
};
use node_sensor_common::*;

use crate::field;

/// Bytes of the argument area: room for one more argument past the mask.
pub(crate) const AREA: usize = HOOK_DATA_SIZE + 8 + HOOK_STRING_MAX;

/// The integer of `size` bytes at `at` of kernel memory, zero-extended
/// (user space sign-extends by the argument's type).
#[inline(always)]
unsafe fn scalar(at: *const u8, size: u16) -> Result<u64, i64> {
    // SAFETY: every read goes through bpf_probe_read_kernel, which checks the address.
    unsafe {
        match size {
            1 => field::<u8>(at, 0).map(u64::from),
            2 => field::<u16>(at, 0).map(u64::from),
            4 => field::<u32>(at, 0).map(u64::from),
            8 => field::<u64>(at, 0),
            _ => Err(-22),
        }
    }
}

/// Appends the argument `spec` describes, read from `record` (a
/// tracepoint's record, or a probe's saved registers), to the area `data`
/// at `pos`; returns the next position.
///
/// # Safety
/// `data` must point at an area of `AREA` bytes this CPU owns.
#[inline(always)]
pub(crate) unsafe fn read_arg(record: *const u8, spec: &ArgSpec, data: *mut u8, pos: usize) -> usize {
    let at = pos & (HOOK_DATA_SIZE - 1);
    // SAFETY: `at + 8 + HOOK_STRING_MAX <= AREA`, so the word and every
    // body write below (each at most HOOK_STRING_MAX bytes) stay inside
    // the caller's area; kernel and user memory are read only through
    // the probe-read helpers, which check each address.
    unsafe {
        let body = data.add(at + 8);
        let field_at = record.wrapping_add(spec.offset as usize);
        let (len, flags): (u32, u32) = match spec.read {
            READ_SCALAR => match scalar(field_at, spec.size) {
                Ok(v) => {
                    core::ptr::write_unaligned(body as *mut u64, v);
                    (8, 0)
                }
                Err(_) => (0, ARG_ERROR),
            },
            READ_USER_STRING => match field::<u64>(field_at, 0) {
                Ok(ptr) if ptr != 0 => {
                    let n = bpf_probe_read_user_str(body as *mut c_void, HOOK_STRING_MAX as u32, ptr as *const c_void);
                    string_result(n)
                }
                _ => (0, ARG_ERROR),
            },
            READ_RECORD_STRING => match field::<u32>(field_at, 0) {
                Ok(loc) => {
                    let src = record.wrapping_add((loc & 0xffff) as usize);
                    let n =
                        bpf_probe_read_kernel_str(body as *mut c_void, HOOK_STRING_MAX as u32, src as *const c_void);
                    string_result(n)
                }
                Err(_) => (0, ARG_ERROR),
            },
            READ_USER_BUFFER => {
                let want = scalar(record.wrapping_add(spec.len_offset as usize), spec.len_size as u16);
                match (field::<u64>(field_at, 0), want) {
                    (Ok(ptr), Ok(want)) if ptr != 0 => {
                        let (n, cut) = if want > HOOK_STRING_MAX as u64 {
                            (HOOK_STRING_MAX as u32, ARG_TRUNCATED)
                        } else {
                            (want as u32, 0)
                        };
                        if n == 0 {
                            (0, 0)
                        } else if bpf_probe_read_user(body as *mut c_void, n, ptr as *const c_void) == 0 {
                            (n, cut)
                        } else {
                            (0, ARG_ERROR)
                        }
                    }
                    _ => (0, ARG_ERROR),
                }
            }
            READ_RECORD_BYTES => {
                let n = if spec.size as usize > HOOK_STRING_MAX { HOOK_STRING_MAX as u32 } else { spec.size as u32 };
                if n > 0 && bpf_probe_read_kernel(body as *mut c_void, n, field_at as *const c_void) == 0 {
                    (n, 0)
                } else {
                    (0, ARG_ERROR)
                }
            }
            _ => (0, 0),
        };
        core::ptr::write_unaligned(data.add(at) as *mut u64, u64::from(len | flags));
        at + 8 + ((len as usize + 7) & !7)
    }
}

/// A `*_str` helper's result as (length without the NUL, flags): a string
/// that filled the buffer may have been cut.
#[inline(always)]
fn string_result(n: i64) -> (u32, u32) {
    if n <= 0 {
        (0, ARG_ERROR)
    } else if n as usize >= HOOK_STRING_MAX {
        (HOOK_STRING_MAX as u32 - 1, ARG_TRUNCATED)
    } else {
        (n as u32 - 1, 0)
    }
}
