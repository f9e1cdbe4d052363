//! Vigil's process-lifecycle programs: three raw tracepoints feeding one
//! ring buffer. Struct offsets come from the `OFFSETS` global, filled in by
//! the sensor from the running kernel's BTF before load.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user},
    },
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use node_sensor_common::*;

/// 32 MiB: about 12,000 exec records of backlog.
const RINGBUF_BYTES: u32 = 32 << 20;
/// Wake the consumer only once this much is waiting; it also polls on a
/// short timer, so a quiet machine still sees events promptly.
const WAKEUP_BYTES: u64 = 256 << 10;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_start_boottime: 0,
    task_real_cred: 0,
    task_loginuid: 0,
    task_mm: 0,
    task_fs: 0,
    task_cgroups: 0,
    task_signal: 0,
    task_exit_code: 0,
    signal_live: 0,
    cred_uid: 0,
    cred_gid: 0,
    cred_euid: 0,
    cred_egid: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    fs_root: 0,
    fs_pwd: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_parent: 0,
    dentry_name: 0,
    qstr_name: 0,
    vfsmount_root: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
    mount_mnt: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_name: 0,
    kernfs_node_id: 0,
    binprm_filename: 0,
    has_loginuid: 0,
    _pad: 0,
};

/// The offsets, read through a volatile load so the compiler cannot fold
/// the zero initialiser into the code.
#[inline(always)]
fn offsets() -> KernelOffsets {
    // SAFETY: OFFSETS is a plain static of integers.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU touches it now.
        unsafe { *p += 1 };
    }
}

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
unsafe fn field<T>(base: *const u8, off: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) }.map_err(|e| e as i64)
}

#[inline(always)]
unsafe fn ptr_field(base: *const u8, off: u32) -> Result<*const u8, i64> {
    let p: *const u8 = unsafe { field(base, off) }?;
    if p.is_null() { Err(-14) } else { Ok(p) }
}

#[inline(always)]
fn submit_flags() -> u64 {
    if EVENTS.query(aya_ebpf::bindings::BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn vigil_exec(ctx: RawTracePointContext) -> i32 {
    match try_exec(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_exec(ctx: &RawTracePointContext) -> Result<(), i64> {
    let o = offsets();
    let task: *const u8 = ctx.arg::<*const c_void>(0) as *const u8;
    let bprm: *const u8 = ctx.arg::<*const c_void>(2) as *const u8;
    count(COUNTER_EXECS);

    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        count(COUNTER_RINGBUF_FULL);
        return Err(-28);
    };
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` points at a reserved ring-buffer slot of ExecRecord size;
    // every field is written below before submit (integers) or written up to
    // the recorded length (buffers).
    unsafe {
        let mut flags = 0u32;
        (*rec).header.kind = KIND_EXEC;
        (*rec).header.ktime = bpf_ktime_get_boot_ns();
        (*rec).pid = field::<u32>(task, o.task_tgid).unwrap_or(0);
        (*rec).tid = field::<u32>(task, o.task_pid).unwrap_or(0);
        (*rec).start_boottime = field::<u64>(task, o.task_start_boottime).unwrap_or(0);
        match ptr_field(task, o.task_real_parent) {
            Ok(parent) => {
                (*rec).ppid = field::<u32>(parent, o.task_tgid).unwrap_or(0);
                (*rec).parent_start_boottime = field::<u64>(parent, o.task_start_boottime).unwrap_or(0);
            }
            Err(_) => {
                (*rec).ppid = 0;
                (*rec).parent_start_boottime = 0;
            }
        }
        read_creds(task, &o, rec);
        if o.has_loginuid != 0 {
            (*rec).auid = field::<u32>(task, o.task_loginuid).unwrap_or(u32::MAX);
        } else {
            (*rec).auid = u32::MAX;
            flags |= FLAG_NO_AUID;
        }
        flags |= read_filename(bprm, &o, rec);
        flags |= read_args(task, &o, rec);
        flags |= read_cwd(task, &o, rec);
        flags |= read_cgroup(task, &o, rec);
        (*rec)._pad = 0;
        (*rec).header.flags = flags;
    }
    entry.submit(submit_flags());
    Ok(())
}

#[inline(always)]
unsafe fn read_creds(task: *const u8, o: &KernelOffsets, rec: *mut ExecRecord) {
    unsafe {
        match ptr_field(task, o.task_real_cred) {
            Ok(cred) => {
                (*rec).uid = field::<u32>(cred, o.cred_uid).unwrap_or(u32::MAX);
                (*rec).gid = field::<u32>(cred, o.cred_gid).unwrap_or(u32::MAX);
                (*rec).euid = field::<u32>(cred, o.cred_euid).unwrap_or(u32::MAX);
                (*rec).egid = field::<u32>(cred, o.cred_egid).unwrap_or(u32::MAX);
            }
            Err(_) => {
                count(COUNTER_READ_ERRORS);
                (*rec).uid = u32::MAX;
                (*rec).gid = u32::MAX;
                (*rec).euid = u32::MAX;
                (*rec).egid = u32::MAX;
            }
        }
    }
}

#[inline(always)]
unsafe fn read_filename(bprm: *const u8, o: &KernelOffsets, rec: *mut ExecRecord) -> u32 {
    unsafe {
        (*rec).filename_len = 0;
        let Ok(name) = ptr_field(bprm, o.binprm_filename) else {
            count(COUNTER_READ_ERRORS);
            return FLAG_ERROR_FILENAME;
        };
        let dst = (*rec).filename.as_mut_ptr() as *mut c_void;
        let n = bpf_probe_read_kernel_str(dst, FILENAME_SIZE as u32, name as *const c_void);
        if n <= 0 {
            count(COUNTER_READ_ERRORS);
            return FLAG_ERROR_FILENAME;
        }
        (*rec).filename_len = (n - 1) as u32;
        if n as usize >= FILENAME_SIZE { FLAG_TRUNC_FILENAME } else { 0 }
    }
}

#[inline(always)]
unsafe fn read_args(task: *const u8, o: &KernelOffsets, rec: *mut ExecRecord) -> u32 {
    unsafe {
        (*rec).args_len = 0;
        let Ok(mm) = ptr_field(task, o.task_mm) else {
            return FLAG_ERROR_ARGS;
        };
        let (Ok(start), Ok(end)) = (field::<u64>(mm, o.mm_arg_start), field::<u64>(mm, o.mm_arg_end)) else {
            count(COUNTER_READ_ERRORS);
            return FLAG_ERROR_ARGS;
        };
        if end <= start {
            return 0;
        }
        let total = end - start;
        let (len, flag) = if total > ARGS_SIZE as u64 { (ARGS_SIZE as u64, FLAG_TRUNC_ARGS) } else { (total, 0) };
        // Keep the length provably within the buffer for the verifier.
        let len = (len as u32) & (2 * ARGS_SIZE as u32 - 1);
        if len == 0 || len > ARGS_SIZE as u32 {
            return flag;
        }
        let dst = (*rec).args.as_mut_ptr() as *mut c_void;
        if bpf_probe_read_user(dst, len, start as *const c_void) != 0 {
            count(COUNTER_READ_ERRORS);
            return FLAG_ERROR_ARGS;
        }
        (*rec).args_len = len;
        flag
    }
}

/// Walks from the cwd dentry up to the task's root, crossing mount points,
/// storing each component leaf-first and NUL-terminated; user space
/// reverses them into a path.
#[inline(always)]
unsafe fn read_cwd(task: *const u8, o: &KernelOffsets, rec: *mut ExecRecord) -> u32 {
    unsafe {
        (*rec).cwd_len = 0;
        (*rec).cwd_is_root = 0;
        let Ok(fs) = ptr_field(task, o.task_fs) else {
            return FLAG_ERROR_CWD;
        };
        let fs_root = fs.wrapping_add(o.fs_root as usize);
        let fs_pwd = fs.wrapping_add(o.fs_pwd as usize);
        let (Ok(root_mnt), Ok(root_dentry)) = (ptr_field(fs_root, o.path_mnt), ptr_field(fs_root, o.path_dentry))
        else {
            return FLAG_ERROR_CWD;
        };
        let (Ok(mut vfsmnt), Ok(mut dentry)) = (ptr_field(fs_pwd, o.path_mnt), ptr_field(fs_pwd, o.path_dentry)) else {
            return FLAG_ERROR_CWD;
        };
        // `struct mount` embeds the vfsmount at `mount_mnt`.
        let mut mnt = vfsmnt.wrapping_sub(o.mount_mnt as usize);
        let mut off: u32 = 0;
        let base = (*rec).cwd.as_mut_ptr();
        for _ in 0..CWD_MAX_DEPTH {
            if dentry == root_dentry && vfsmnt == root_mnt {
                (*rec).cwd_len = off;
                (*rec).cwd_is_root = (off == 0) as u32;
                return 0;
            }
            let Ok(mnt_root) = ptr_field(vfsmnt, o.vfsmount_root) else {
                return FLAG_ERROR_CWD;
            };
            let Ok(parent) = ptr_field(dentry, o.dentry_parent) else {
                return FLAG_ERROR_CWD;
            };
            if dentry == mnt_root || dentry == parent {
                let Ok(mnt_parent) = ptr_field(mnt, o.mount_parent) else {
                    return FLAG_ERROR_CWD;
                };
                if mnt_parent == mnt {
                    // Reached the namespace root (the task root lies elsewhere).
                    (*rec).cwd_len = off;
                    (*rec).cwd_is_root = (off == 0) as u32;
                    return 0;
                }
                let Ok(mountpoint) = ptr_field(mnt, o.mount_mountpoint) else {
                    return FLAG_ERROR_CWD;
                };
                dentry = mountpoint;
                mnt = mnt_parent;
                vfsmnt = mnt_parent.wrapping_add(o.mount_mnt as usize);
                continue;
            }
            let Ok(name) = ptr_field(dentry, o.dentry_name + o.qstr_name) else {
                return FLAG_ERROR_CWD;
            };
            if off as usize >= CWD_SIZE {
                (*rec).cwd_len = off;
                return FLAG_TRUNC_CWD;
            }
            let at = (off as usize) & (CWD_SIZE - 1);
            let n = bpf_probe_read_kernel_str(base.add(at) as *mut c_void, NAME_READ as u32, name as *const c_void);
            if n <= 0 {
                return FLAG_ERROR_CWD;
            }
            off = at as u32 + n as u32;
            dentry = parent;
        }
        (*rec).cwd_len = off;
        FLAG_TRUNC_CWD
    }
}

#[inline(always)]
unsafe fn read_cgroup(task: *const u8, o: &KernelOffsets, rec: *mut ExecRecord) -> u32 {
    unsafe {
        (*rec).cgroup_len = 0;
        (*rec).cgroup_id = 0;
        let Ok(css_set) = ptr_field(task, o.task_cgroups) else {
            return FLAG_ERROR_CGROUP;
        };
        let Ok(cgrp) = ptr_field(css_set, o.css_set_dfl_cgrp) else {
            return FLAG_ERROR_CGROUP;
        };
        let Ok(kn) = ptr_field(cgrp, o.cgroup_kn) else {
            return FLAG_ERROR_CGROUP;
        };
        (*rec).cgroup_id = field::<u64>(kn, o.kernfs_node_id).unwrap_or(0);
        let Ok(name) = ptr_field(kn, o.kernfs_node_name) else {
            return FLAG_ERROR_CGROUP;
        };
        let dst = (*rec).cgroup.as_mut_ptr() as *mut c_void;
        let n = bpf_probe_read_kernel_str(dst, CGROUP_NAME_SIZE as u32, name as *const c_void);
        if n <= 0 {
            return FLAG_ERROR_CGROUP;
        }
        (*rec).cgroup_len = (n - 1) as u32;
        0
    }
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn vigil_fork(ctx: RawTracePointContext) -> i32 {
    match try_fork(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_fork(ctx: &RawTracePointContext) -> Result<(), i64> {
    let o = offsets();
    let parent = ctx.arg::<*const c_void>(0) as *const u8;
    let child = ctx.arg::<*const c_void>(1) as *const u8;
    // SAFETY: reads go through bpf_probe_read_kernel.
    let (pid, tgid) = unsafe { (field::<u32>(child, o.task_pid)?, field::<u32>(child, o.task_tgid)?) };
    if pid != tgid {
        return Ok(()); // a new thread, not a new process
    }
    count(COUNTER_CLONES);
    let record = CloneRecord {
        header: RecordHeader { kind: KIND_CLONE, flags: 0, ktime: unsafe { bpf_ktime_get_boot_ns() } },
        pid: tgid,
        ppid: unsafe { field::<u32>(parent, o.task_tgid) }.unwrap_or(0),
        start_boottime: unsafe { field::<u64>(child, o.task_start_boottime) }.unwrap_or(0),
        parent_start_boottime: unsafe { field::<u64>(parent, o.task_start_boottime) }.unwrap_or(0),
    };
    if EVENTS.output::<CloneRecord>(&record, submit_flags()).is_err() {
        count(COUNTER_RINGBUF_FULL);
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn vigil_exit(ctx: RawTracePointContext) -> i32 {
    match try_exit(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_exit(ctx: &RawTracePointContext) -> Result<(), i64> {
    let o = offsets();
    let task = ctx.arg::<*const c_void>(0) as *const u8;
    // SAFETY: reads go through bpf_probe_read_kernel.
    unsafe {
        let signal = ptr_field(task, o.task_signal)?;
        // do_exit() decrements signal->live before this tracepoint: only
        // the thread group's last thread sees zero.
        let live: i32 = field(signal, o.signal_live)?;
        if live != 0 {
            return Ok(());
        }
        count(COUNTER_EXITS);
        let record = ExitRecord {
            header: RecordHeader { kind: KIND_EXIT, flags: 0, ktime: bpf_ktime_get_boot_ns() },
            pid: field::<u32>(task, o.task_tgid)?,
            tid: field::<u32>(task, o.task_pid)?,
            exit_code: field::<u32>(task, o.task_exit_code).unwrap_or(0),
            _pad: 0,
            start_boottime: field::<u64>(task, o.task_start_boottime).unwrap_or(0),
        };
        if EVENTS.output::<ExitRecord>(&record, submit_flags()).is_err() {
            count(COUNTER_RINGBUF_FULL);
        }
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
