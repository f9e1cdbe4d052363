//! Policy arguments, read into a hook record's argument area. Each takes
//! an 8-byte length word (flags in its high bits) and its bytes, padded to
//! 8, at a position masked into the area, so the verifier can bound every
//! write; the area has a string's worth of slack past `HOOK_DATA_SIZE`.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_get_current_task;
use aya_ebpf::helpers::generated::{
    bpf_probe_read_kernel, bpf_probe_read_kernel_str, bpf_probe_read_user, bpf_probe_read_user_str,
};
use node_sensor_common::*;

use crate::{field, paths, ptr_field};

/// Argument readers a program has: plain (tracepoints, uprobes, the
/// return value), plus paths and descriptors (a kprobe program, and the
/// tracepoint program for descriptors), or plus sockets and credentials
/// (the other kprobe program).
pub(crate) const ARGS_PLAIN: u8 = 0;
pub(crate) const ARGS_PATHS: u8 = 1;
pub(crate) const ARGS_SOCK: u8 = 2;

/// Bytes of the argument area: room for one more argument past the mask.
pub(crate) const AREA: usize = HOOK_DATA_SIZE + 8 + HOOK_ARG_BYTES;

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
/// `data` must point at an area of `AREA` bytes this CPU owns. `KIND`
/// says which kernel-object readers are built in (`ARGS_*`: kprobes only,
/// and one kind per program, as each costs the verifier dearly).
#[inline(always)]
pub(crate) unsafe fn read_arg<const KIND: u8>(record: *const u8, spec: &ArgSpec, data: *mut u8, pos: usize) -> usize {
    let at = pos & (HOOK_DATA_SIZE - 1);
    // SAFETY: `at + 8 + HOOK_ARG_BYTES <= AREA`, so the word and every
    // body write below (each at most HOOK_ARG_BYTES) stay inside the
    // caller's area; kernel and user memory are read only through the
    // probe-read helpers, which check each address.
    unsafe {
        let body = data.add(at + 8);
        // A syscall wrapper's arguments lie in the pt_regs its first
        // argument points to.
        let record = if spec.indirect == NO_INDIRECT {
            record
        } else {
            match field::<u64>(record, u32::from(spec.indirect)) {
                Ok(p) => p as *const u8,
                Err(_) => core::ptr::null(),
            }
        };
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
            READ_USER_BUFFER | READ_KERNEL_BUFFER => {
                let want = scalar(record.wrapping_add(spec.len_offset as usize), spec.len_size as u16);
                match (field::<u64>(field_at, 0), want) {
                    (Ok(ptr), Ok(want)) if ptr != 0 => read_buffer(spec.read == READ_USER_BUFFER, ptr, want, body),
                    _ => (0, ARG_ERROR),
                }
            }
            READ_KERNEL_STRING => match field::<u64>(field_at, 0) {
                Ok(ptr) if ptr != 0 => {
                    let n =
                        bpf_probe_read_kernel_str(body as *mut c_void, HOOK_STRING_MAX as u32, ptr as *const c_void);
                    string_result(n)
                }
                _ => (0, ARG_ERROR),
            },
            // One path reader for all four (two copies of the walk cost the
            // verifier twice): a descriptor is first looked up to its file.
            READ_FILE | READ_PATH | READ_BPRM | READ_FD if KIND == ARGS_PATHS => {
                let (read, object) = if spec.read == READ_FD {
                    (READ_FILE, scalar(field_at, spec.size).and_then(|fd| fd_file(fd as u32)))
                } else {
                    (spec.read, field::<u64>(field_at, 0).map(|p| p as *const u8))
                };
                match object {
                    Ok(ptr) if !ptr.is_null() => read_path_arg(read, ptr, body),
                    _ => (0, ARG_ERROR),
                }
            }
            READ_CRED if KIND == ARGS_SOCK => match field::<u64>(field_at, 0) {
                Ok(ptr) if ptr != 0 => {
                    read_cred(ptr as *const u8, body as *mut CredArg);
                    (core::mem::size_of::<CredArg>() as u32, 0)
                }
                _ => (0, ARG_ERROR),
            },
            READ_SOCK if KIND == ARGS_SOCK => match field::<u64>(field_at, 0) {
                Ok(ptr) if ptr != 0 => {
                    read_sock(ptr as *const u8, body as *mut SockInfo);
                    (core::mem::size_of::<SockInfo>() as u32, 0)
                }
                _ => (0, ARG_ERROR),
            },
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

/// `want` bytes (at most a string's worth; more are cut and flagged) of
/// user or kernel memory at `ptr` into `body`.
///
/// # Safety
/// `body` must have `HOOK_STRING_MAX` bytes this CPU owns.
#[inline(always)]
unsafe fn read_buffer(user: bool, ptr: u64, want: u64, body: *mut u8) -> (u32, u32) {
    let (n, cut) =
        if want > HOOK_STRING_MAX as u64 { (HOOK_STRING_MAX as u32, ARG_TRUNCATED) } else { (want as u32, 0) };
    if n == 0 {
        return (0, 0);
    }
    // SAFETY: the helpers check the source address; `n` fits `body`.
    let failed = unsafe {
        if user {
            bpf_probe_read_user(body as *mut c_void, n, ptr as *const c_void)
        } else {
            bpf_probe_read_kernel(body as *mut c_void, n, ptr as *const c_void)
        }
    };
    if failed == 0 { (n, cut) } else { (0, ARG_ERROR) }
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

/// A file's, path's or binprm's path into `body`: a `PathHead`, then the
/// components leaf first.
///
/// # Safety
/// `body` must have `HOOK_ARG_BYTES` bytes this CPU owns.
#[inline(always)]
unsafe fn read_path_arg(read: u8, ptr: *const u8, body: *mut u8) -> (u32, u32) {
    // SAFETY: kernel memory is read through the helpers; `walk` writes at
    // most CWD_SIZE + NAME_READ bytes past the 8-byte head.
    unsafe {
        let path = match read {
            READ_PATH => ptr,
            READ_FILE => ptr.wrapping_add(off!(file_f_path) as usize),
            _ => match ptr_field(ptr, off!(binprm_file)) {
                Ok(file) => file.wrapping_add(off!(file_f_path) as usize),
                Err(_) => return (0, ARG_ERROR),
            },
        };
        let (Ok(vfsmnt), Ok(dentry)) = (ptr_field(path, off!(path_mnt)), ptr_field(path, off!(path_dentry))) else {
            return (0, ARG_ERROR);
        };
        let mode = match ptr_field(dentry, off!(dentry_inode)) {
            Ok(inode) => field::<u16>(inode, off!(policy_inode_mode)).map_or(0, u32::from),
            Err(_) => 0,
        };
        let task = bpf_get_current_task() as *const u8;
        let Ok(root) = ptr_field(task, off!(task_fs)).and_then(|fs| paths::fs_root(fs)) else {
            return (0, ARG_ERROR);
        };
        let head = body as *mut PathHead;
        core::ptr::write_unaligned(head, PathHead { mode, is_root: 0 });
        let mut len = 0u32;
        let walked = paths::walk(vfsmnt, dentry, root, body.add(8), &mut len, core::ptr::addr_of_mut!((*head).is_root));
        let flags = match walked {
            0 => 0,
            FLAG_TRUNC_CWD => ARG_PATH_CUT,
            _ => ARG_ERROR,
        };
        (8 + len, flags)
    }
}

/// The `struct file *` descriptor `fd` of the current task names.
///
/// # Safety
/// Kernel memory is read only through the helper.
#[inline(always)]
unsafe fn fd_file(fd: u32) -> Result<*const u8, i64> {
    // SAFETY: each read goes through bpf_probe_read_kernel.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let fdt = ptr_field(ptr_field(task, off!(task_files))?, off!(files_fdt))?;
        let max = field::<u32>(fdt, off!(fdtable_max_fds))?;
        if fd >= max {
            return Err(-9);
        }
        let table = ptr_field(fdt, off!(fdtable_fd))?;
        // A closed slot is null, which `ptr_field` refuses.
        ptr_field(table, fd.wrapping_mul(8))
    }
}

/// A credential's ids, capabilities and user namespace into `out`, each
/// field copied by the helper straight into place, with no branch on its
/// result (as the socket's, for the verifier).
///
/// # Safety
/// `out` must be writable for a `CredArg`; reads go through the helper.
#[inline(always)]
unsafe fn read_cred(cred: *const u8, out: *mut CredArg) {
    // SAFETY: each destination is a field of `*out`, each size its own;
    // the helper checks the source address and zeroes on failure.
    unsafe {
        macro_rules! copy {
            ($from:expr, ($($field:tt)+), $offset:ident) => {
                bpf_probe_read_kernel(
                    core::ptr::addr_of_mut!((*out).$($field)+) as *mut c_void,
                    core::mem::size_of_val(&(*out).$($field)+) as u32,
                    $from.wrapping_add(off!($offset) as usize) as *const c_void,
                );
            };
        }
        core::ptr::write_bytes(out, 0, 1);
        copy!(cred, (uid), cred_uid);
        copy!(cred, (gid), cred_gid);
        copy!(cred, (euid), cred_euid);
        copy!(cred, (egid), cred_egid);
        copy!(cred, (more.suid), cred_suid);
        copy!(cred, (more.sgid), cred_sgid);
        copy!(cred, (more.fsuid), cred_fsuid);
        copy!(cred, (more.fsgid), cred_fsgid);
        copy!(cred, (more.securebits), cred_securebits);
        copy!(cred, (more.cap_permitted), cred_cap_permitted);
        copy!(cred, (more.cap_effective), cred_cap_effective);
        copy!(cred, (more.cap_inheritable), cred_cap_inheritable);
        copy!(cred, (more.cap_ambient), cred_cap_ambient);
        let mut user_ns: u64 = 0;
        bpf_probe_read_kernel(
            core::ptr::addr_of_mut!(user_ns) as *mut c_void,
            8,
            cred.wrapping_add(off!(cred_user_ns) as usize) as *const c_void,
        );
        let ns = user_ns as *const u8;
        copy!(ns, (more.user_ns_level), user_ns_level);
        copy!(ns, (more.user_ns_owner), user_ns_owner);
        copy!(ns, (more.user_ns_group), user_ns_group);
        copy!(ns, (more.user_ns_inum), user_ns_inum);
    }
}

/// A socket's family, type, protocol, addresses, ports and state, into
/// `info`. Each field is copied by the helper straight into place, with no
/// branch on its result (a failed read leaves zeros, which Tetragon leaves
/// out): one branch per field made 2^fields paths for Linux 6.1's verifier.
///
/// # Safety
/// `info` must be writable for a `SockInfo`; reads go through the helper.
#[inline(always)]
unsafe fn read_sock(sk: *const u8, info: *mut SockInfo) {
    // SAFETY: each destination is a field of `*info`, each size its own;
    // the helper checks the source address and zeroes on failure.
    unsafe {
        macro_rules! copy {
            ($field:ident, $offset:ident) => {
                bpf_probe_read_kernel(
                    core::ptr::addr_of_mut!((*info).$field) as *mut c_void,
                    core::mem::size_of_val(&(*info).$field) as u32,
                    sk.wrapping_add(off!($offset) as usize) as *const c_void,
                );
            };
        }
        core::ptr::write_bytes(info, 0, 1);
        copy!(family, sock_family);
        copy!(kind, sock_type);
        copy!(protocol, sock_protocol);
        copy!(sport, sock_sport);
        copy!(dport_be, sock_dport);
        copy!(state, sock_state);
        copy!(mark, sock_mark);
        copy!(priority, sock_priority);
        copy!(saddr, sock_saddr);
        copy!(daddr, sock_daddr);
        if off!(has_sock_v6) != 0 {
            copy!(saddr6, sock_saddr6);
            copy!(daddr6, sock_daddr6);
        }
        (*info).cookie = sk as u64;
    }
}
