//! The process lifecycle: `sched_process_exec`, `sched_process_fork` and
//! `sched_process_exit` as raw tracepoints, each a fixed-size record.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user},
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use node_sensor_common::*;

use crate::{BINARIES, BINARY_SCRATCH, EVENTS, EXEC_TIMES, SCRATCH, count, field, ptr_field, queued, submit_flags};

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn vigil_exec(ctx: RawTracePointContext) -> i32 {
    match try_exec(&ctx) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_exec(ctx: &RawTracePointContext) -> Result<(), i64> {
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
    // SAFETY: kernel memory is read only through bpf_probe_read_kernel, which checks each
    // address; nothing is written.
    unsafe {
        let mut flags = 0u32;
        (*rec).header.kind = KIND_EXEC;
        (*rec).pid = field::<u32>(task, off!(task_tgid)).unwrap_or(0);
        (*rec).tid = field::<u32>(task, off!(task_pid)).unwrap_or(0);
        (*rec).start_boottime = field::<u64>(task, off!(task_start_boottime)).unwrap_or(0);
        (*rec).exec_seq = field::<u32>(task, off!(task_self_exec_id)).unwrap_or(0);
        (*rec).header.ktime = shared_exec_time(ExecTimeKey {
            pid: (*rec).pid,
            exec_seq: (*rec).exec_seq,
            start_boottime: (*rec).start_boottime,
        });
        match ptr_field(task, off!(task_real_parent)) {
            Ok(parent) => {
                (*rec).ppid = field::<u32>(parent, off!(task_tgid)).unwrap_or(0);
                (*rec).parent_start_boottime = field::<u64>(parent, off!(task_start_boottime)).unwrap_or(0);
            }
            Err(_) => {
                (*rec).ppid = 0;
                (*rec).parent_start_boottime = 0;
            }
        }
        read_creds(task, rec);
        if off!(has_loginuid) != 0 {
            (*rec).auid = field::<u32>(task, off!(task_loginuid)).unwrap_or(u32::MAX);
        } else {
            (*rec).auid = u32::MAX;
            flags |= FLAG_NO_AUID;
        }
        (*rec).creds = CredInfo::default();
        (*rec).namespaces = NsInfo::default();
        (*rec).file = FileInfo::default();
        if off!(collect_creds) != 0 {
            flags |= read_cred_ext(task, rec);
            flags |= read_file_info(bprm, rec);
        }
        if off!(collect_ns) != 0 {
            flags |= read_namespaces(task, rec);
        }
        flags |= read_filename(bprm, rec);
        let cwd = read_cwd(task, rec);
        let cgroup = read_cgroup(task, rec);
        if (cwd & FLAG_ERROR_CWD) | (cgroup & FLAG_ERROR_CGROUP) != 0 {
            count(COUNTER_READ_ERRORS);
        }
        flags |= cwd | cgroup;
        (*rec).nspid = read_nspid(task);
        (*rec)._pad = 0;
        // Last: finding argv[0]'s end is a loop whose every exit the verifier
        // follows to the end of the program, so little may come after it
        // (older kernels' verifiers take minutes otherwise).
        flags |= read_args(task, rec);
        (*rec).header.flags = flags;
    }
    let len = core::mem::size_of::<ExecRecord>() as u64;
    entry.submit(submit_flags(queued(), len));
    Ok(())
}

/// Keeps the exec'd path for `matchBinaries`, by process id (a failed read
/// keeps an empty path, so the old image's does not linger). A program of
/// its own: inside `vigil_exec` it made Linux 6.1's verifier walk past a
/// million instructions.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn vigil_binary(ctx: RawTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg::<*const c_void>(0) as *const u8;
    let bprm: *const u8 = ctx.arg::<*const c_void>(2) as *const u8;
    keep_binary(task, bprm);
    0
}

#[inline(always)]
fn keep_binary(task: *const u8, bprm: *const u8) {
    let Some(b) = BINARY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the scratch is this CPU's; the helpers check the kernel
    // addresses and write at most BINARY_SIZE bytes into `path`.
    unsafe {
        let Ok(tgid) = field::<u32>(task, off!(task_tgid)) else {
            return;
        };
        (*b).len = 0;
        (*b)._pad = 0;
        if let Ok(name) = ptr_field(bprm, off!(binprm_filename)) {
            let n = bpf_probe_read_kernel_str(
                (*b).path.as_mut_ptr() as *mut c_void,
                BINARY_SIZE as u32,
                name as *const c_void,
            );
            if n > 0 {
                (*b).len = (n - 1) as u32;
            }
        }
        // What the `Changes` filters compare with later.
        (*b).caps = crate::select::task_caps(task).map_or([0; 3], |(caps, _)| caps);
        (*b).namespaces = [0; NS_COUNT];
        task_namespaces(task, &mut (*b).namespaces);
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "by value, the entry would be copied to the stack"
        )]
        if BINARIES.insert(tgid, &*b, 0).is_err() {
            count(COUNTER_BINARIES_FULL);
        }
    }
}

/// This exec's time: the one another sensor's program recorded for the same
/// image, else now (recorded for the others).
#[inline(always)]
fn shared_exec_time(key: ExecTimeKey) -> u64 {
    // SAFETY: the value is a plain u64 copied out at once; an LRU entry
    // replaced meanwhile yields another valid u64 at worst.
    if let Some(t) = unsafe { EXEC_TIMES.get(key) } {
        return *t;
    }
    // SAFETY: bpf_ktime_get_boot_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // BPF_NOEXIST: if another program raced us in, keep its time and read it.
    if EXEC_TIMES.insert(key, now, aya_ebpf::bindings::BPF_NOEXIST as u64).is_err() {
        // SAFETY: as above.
        if let Some(t) = unsafe { EXEC_TIMES.get(key) } {
            return *t;
        }
    }
    now
}

#[inline(always)]
unsafe fn read_creds(task: *const u8, rec: *mut ExecRecord) {
    // SAFETY: kernel memory is read only through bpf_probe_read_kernel(_str), which checks
    // each address; `rec` is the caller's ring-buffer reservation of ExecRecord size, and
    // buffer writes are bounded by (or masked to) their array sizes.
    unsafe {
        match ptr_field(task, off!(task_real_cred)) {
            Ok(cred) => {
                (*rec).uid = field::<u32>(cred, off!(cred_uid)).unwrap_or(u32::MAX);
                (*rec).gid = field::<u32>(cred, off!(cred_gid)).unwrap_or(u32::MAX);
                (*rec).euid = field::<u32>(cred, off!(cred_euid)).unwrap_or(u32::MAX);
                (*rec).egid = field::<u32>(cred, off!(cred_egid)).unwrap_or(u32::MAX);
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

/// Credentials beyond the ids every event has, and the user namespace.
#[inline(always)]
unsafe fn read_cred_ext(task: *const u8, rec: *mut ExecRecord) -> u32 {
    // SAFETY: kernel memory is read only through bpf_probe_read_kernel(_str), which checks
    // each address; `rec` is the caller's ring-buffer reservation of ExecRecord size, and
    // buffer writes are bounded by (or masked to) their array sizes.
    unsafe {
        let Ok(cred) = ptr_field(task, off!(task_real_cred)) else {
            return 0;
        };
        let c = &mut (*rec).creds;
        c.suid = field(cred, off!(cred_suid)).unwrap_or(u32::MAX);
        c.sgid = field(cred, off!(cred_sgid)).unwrap_or(u32::MAX);
        c.fsuid = field(cred, off!(cred_fsuid)).unwrap_or(u32::MAX);
        c.fsgid = field(cred, off!(cred_fsgid)).unwrap_or(u32::MAX);
        c.securebits = field(cred, off!(cred_securebits)).unwrap_or(0);
        c.cap_permitted = field(cred, off!(cred_cap_permitted)).unwrap_or(0);
        c.cap_effective = field(cred, off!(cred_cap_effective)).unwrap_or(0);
        c.cap_inheritable = field(cred, off!(cred_cap_inheritable)).unwrap_or(0);
        c.cap_ambient = field(cred, off!(cred_cap_ambient)).unwrap_or(0);
        if let Ok(user_ns) = ptr_field(cred, off!(cred_user_ns)) {
            c.user_ns_level = field(user_ns, off!(user_ns_level)).unwrap_or(-1);
            c.user_ns_owner = field(user_ns, off!(user_ns_owner)).unwrap_or(u32::MAX);
            c.user_ns_group = field(user_ns, off!(user_ns_group)).unwrap_or(u32::MAX);
            c.user_ns_inum = field(user_ns, off!(user_ns_inum)).unwrap_or(0);
            (*rec).namespaces.inum[NS_USER] = c.user_ns_inum;
        }
        FLAG_HAS_CREDS
    }
}

/// The executed file's inode: number, links, mode and owner, for setuid,
/// setgid and deleted-binary detection.
#[inline(always)]
unsafe fn read_file_info(bprm: *const u8, rec: *mut ExecRecord) -> u32 {
    // SAFETY: kernel memory is read only through bpf_probe_read_kernel(_str), which checks
    // each address; `rec` is the caller's ring-buffer reservation of ExecRecord size, and
    // buffer writes are bounded by (or masked to) their array sizes.
    unsafe {
        let Ok(file) = ptr_field(bprm, off!(binprm_file)) else {
            return 0;
        };
        let Ok(inode) = ptr_field(file, off!(file_inode)) else {
            return 0;
        };
        let f = &mut (*rec).file;
        f.ino = field(inode, off!(inode_ino)).unwrap_or(0);
        f.nlink = field(inode, off!(inode_nlink)).unwrap_or(0);
        f.mode = u32::from(field::<u16>(inode, off!(inode_mode)).unwrap_or(0));
        f.uid = field(inode, off!(inode_uid)).unwrap_or(u32::MAX);
        f.gid = field(inode, off!(inode_gid)).unwrap_or(u32::MAX);
        FLAG_HAS_FILE
    }
}

#[inline(always)]
unsafe fn ns_inum(nsproxy: *const u8, slot: u32, inum_off: u32) -> u32 {
    // SAFETY: kernel memory is read only through bpf_probe_read_kernel, which checks each
    // address; nothing is written.
    unsafe {
        match ptr_field(nsproxy, slot) {
            Ok(ns) => field(ns, inum_off).unwrap_or(0),
            Err(_) => 0,
        }
    }
}

/// The task's pid in its own pid namespace: thread_pid->numbers[level].nr.
#[inline(always)]
pub(crate) unsafe fn read_nspid(task: *const u8) -> u32 {
    // SAFETY: kernel memory is read only through bpf_probe_read_kernel, which checks each
    // address; nothing is written.
    unsafe {
        let Ok(pid) = ptr_field(task, off!(task_thread_pid)) else {
            return 0;
        };
        let level: u32 = field(pid, off!(pid_level)).unwrap_or(0) & 31;
        // upid.nr is the first member of struct upid.
        field::<u32>(pid, off!(pid_numbers) + level * off!(upid_size)).unwrap_or(0)
    }
}

/// Namespace inode numbers from `task->nsproxy` and the task's pid.
#[inline(always)]
unsafe fn read_namespaces(task: *const u8, rec: *mut ExecRecord) -> u32 {
    // SAFETY: `rec` is the caller's ring-buffer reservation of ExecRecord
    // size; the array is its field.
    unsafe { task_namespaces(task, &mut (*rec).namespaces.inum) }
}

/// The task's namespaces' inode numbers into `n` (by `NS_*`); 0 where
/// unreadable. `FLAG_HAS_NS`, or 0 without an nsproxy.
#[inline(always)]
pub(crate) unsafe fn task_namespaces(task: *const u8, n: &mut [u32; NS_COUNT]) -> u32 {
    // SAFETY: kernel memory is read only through bpf_probe_read_kernel, which
    // checks each address; the writes are to `n`'s constant indexes.
    unsafe {
        let Ok(nsproxy) = ptr_field(task, off!(task_nsproxy)) else {
            return 0;
        };
        n[NS_UTS] = ns_inum(nsproxy, off!(nsproxy_uts), off!(uts_inum));
        n[NS_IPC] = ns_inum(nsproxy, off!(nsproxy_ipc), off!(ipc_inum));
        n[NS_MNT] = ns_inum(nsproxy, off!(nsproxy_mnt), off!(mnt_inum));
        n[NS_PID_FOR_CHILDREN] = ns_inum(nsproxy, off!(nsproxy_pid_for_children), off!(pid_ns_inum));
        n[NS_NET] = ns_inum(nsproxy, off!(nsproxy_net), off!(net_inum));
        n[NS_CGROUP] = ns_inum(nsproxy, off!(nsproxy_cgroup), off!(cgroup_ns_inum));
        if off!(has_time_ns) != 0 {
            n[NS_TIME] = ns_inum(nsproxy, off!(nsproxy_time), off!(time_inum));
            n[NS_TIME_FOR_CHILDREN] = ns_inum(nsproxy, off!(nsproxy_time_for_children), off!(time_inum));
        }
        // The task's own pid namespace: thread_pid->numbers[level].ns.
        if let Ok(pid) = ptr_field(task, off!(task_thread_pid)) {
            let level: u32 = field(pid, off!(pid_level)).unwrap_or(0);
            // Nesting is at most 32 levels; keep the index bounded.
            let level = level & 31;
            let upid = off!(pid_numbers) + level * off!(upid_size) + off!(upid_ns);
            n[NS_PID] = ns_inum(pid, upid, off!(pid_ns_inum));
        }
        if n[NS_USER] == 0
            && let Ok(cred) = ptr_field(task, off!(task_real_cred))
        {
            n[NS_USER] = ns_inum(cred, off!(cred_user_ns), off!(user_ns_inum));
        }
        FLAG_HAS_NS
    }
}

#[inline(always)]
unsafe fn read_filename(bprm: *const u8, rec: *mut ExecRecord) -> u32 {
    // SAFETY: kernel memory is read only through bpf_probe_read_kernel(_str), which checks
    // each address; `rec` is the caller's ring-buffer reservation of ExecRecord size, and
    // buffer writes are bounded by (or masked to) their array sizes.
    unsafe {
        (*rec).filename_len = 0;
        let Ok(name) = ptr_field(bprm, off!(binprm_filename)) else {
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
        if (n as usize) < FILENAME_SIZE {
            return 0;
        }
        // A full buffer: cut only if the name goes on past the last byte
        // kept (a name of exactly FILENAME_SIZE - 1 bytes fits).
        match bpf_probe_read_kernel::<u8>(name.wrapping_add(FILENAME_SIZE - 1)) {
            Ok(0) => 0,
            _ => FLAG_TRUNC_FILENAME,
        }
    }
}

/// Where argv[0] ends (past its NUL) in user memory, or `None` where it
/// cannot be read or does not end within `ARGV0_STEPS` scratch buffers.
#[inline(always)]
unsafe fn after_argv0(start: u64, end: u64) -> Option<u64> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    let mut pos = start;
    for _ in 0..ARGV0_STEPS {
        if pos >= end {
            return Some(end);
        }
        // SAFETY: the scratch slot is this CPU's, SCRATCH_SIZE bytes; user
        // memory is read through bpf_probe_read_user_str, which checks it.
        let n = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_user_str(
                scratch as *mut c_void,
                SCRATCH_SIZE as u32,
                pos as *const c_void,
            )
        };
        if n <= 0 {
            return None;
        }
        if (n as usize) < SCRATCH_SIZE {
            return Some(pos + n as u64);
        }
        // A full buffer is a NUL-terminated prefix: the byte where the NUL
        // went may be the string's own end or more of it; read on from it.
        pos += SCRATCH_SIZE as u64 - 1;
    }
    None
}

#[inline(always)]
unsafe fn read_args(task: *const u8, rec: *mut ExecRecord) -> u32 {
    // SAFETY: kernel memory is read only through bpf_probe_read_kernel(_str), which checks
    // each address; `rec` is the caller's ring-buffer reservation of ExecRecord size, and
    // buffer writes are bounded by (or masked to) their array sizes.
    unsafe {
        (*rec).args_len = 0;
        let Ok(mm) = ptr_field(task, off!(task_mm)) else {
            count(COUNTER_READ_ERRORS);
            return FLAG_ERROR_ARGS;
        };
        let (Ok(start), Ok(end)) = (field::<u64>(mm, off!(mm_arg_start)), field::<u64>(mm, off!(mm_arg_end))) else {
            count(COUNTER_READ_ERRORS);
            return FLAG_ERROR_ARGS;
        };
        if end <= start {
            return 0;
        }
        let Some(start) = after_argv0(start, end) else {
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
unsafe fn read_cwd(task: *const u8, rec: *mut ExecRecord) -> u32 {
    // SAFETY: kernel memory is read only through bpf_probe_read_kernel(_str), which checks
    // each address; `rec` is the caller's ring-buffer reservation of ExecRecord size, and
    // buffer writes are bounded by (or masked to) their array sizes.
    unsafe {
        (*rec).cwd_len = 0;
        (*rec).cwd_is_root = 0;
        let Ok(fs) = ptr_field(task, off!(task_fs)) else {
            return FLAG_ERROR_CWD;
        };
        let fs_root = fs.wrapping_add(off!(fs_root) as usize);
        let fs_pwd = fs.wrapping_add(off!(fs_pwd) as usize);
        let (Ok(root_mnt), Ok(root_dentry)) =
            (ptr_field(fs_root, off!(path_mnt)), ptr_field(fs_root, off!(path_dentry)))
        else {
            return FLAG_ERROR_CWD;
        };
        let (Ok(mut vfsmnt), Ok(mut dentry)) =
            (ptr_field(fs_pwd, off!(path_mnt)), ptr_field(fs_pwd, off!(path_dentry)))
        else {
            return FLAG_ERROR_CWD;
        };
        // `struct mount` embeds the vfsmount at `mount_mnt`.
        let mut mnt = vfsmnt.wrapping_sub(off!(mount_mnt) as usize);
        let mut off: u32 = 0;
        let base = (*rec).cwd.as_mut_ptr();
        for _ in 0..CWD_MAX_DEPTH {
            if dentry == root_dentry && vfsmnt == root_mnt {
                (*rec).cwd_len = off;
                (*rec).cwd_is_root = (off == 0) as u32;
                return 0;
            }
            let Ok(mnt_root) = ptr_field(vfsmnt, off!(vfsmount_root)) else {
                return FLAG_ERROR_CWD;
            };
            let Ok(parent) = ptr_field(dentry, off!(dentry_parent)) else {
                return FLAG_ERROR_CWD;
            };
            if dentry == mnt_root || dentry == parent {
                let Ok(mnt_parent) = ptr_field(mnt, off!(mount_parent)) else {
                    return FLAG_ERROR_CWD;
                };
                if mnt_parent == mnt {
                    // Reached the namespace root (the task root lies elsewhere).
                    (*rec).cwd_len = off;
                    (*rec).cwd_is_root = (off == 0) as u32;
                    return 0;
                }
                let Ok(mountpoint) = ptr_field(mnt, off!(mount_mountpoint)) else {
                    return FLAG_ERROR_CWD;
                };
                dentry = mountpoint;
                mnt = mnt_parent;
                vfsmnt = mnt_parent.wrapping_add(off!(mount_mnt) as usize);
                continue;
            }
            let Ok(name) = ptr_field(dentry, off!(dentry_name) + off!(qstr_name)) else {
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
unsafe fn read_cgroup(task: *const u8, rec: *mut ExecRecord) -> u32 {
    // SAFETY: kernel memory is read only through bpf_probe_read_kernel(_str), which checks
    // each address; `rec` is the caller's ring-buffer reservation of ExecRecord size, and
    // buffer writes are bounded by (or masked to) their array sizes.
    unsafe {
        (*rec).cgroup_len = 0;
        (*rec).cgroup_id = 0;
        let Ok(css_set) = ptr_field(task, off!(task_cgroups)) else {
            return FLAG_ERROR_CGROUP;
        };
        let Ok(cgrp) = ptr_field(css_set, off!(css_set_dfl_cgrp)) else {
            return FLAG_ERROR_CGROUP;
        };
        let Ok(kn) = ptr_field(cgrp, off!(cgroup_kn)) else {
            return FLAG_ERROR_CGROUP;
        };
        (*rec).cgroup_id = field::<u64>(kn, off!(kernfs_node_id)).unwrap_or(0);
        let Ok(name) = ptr_field(kn, off!(kernfs_node_name)) else {
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
        Err(_) => {
            // The child's ids were unreadable: no record, but counted.
            count(COUNTER_READ_ERRORS);
            1
        }
    }
}

fn try_fork(ctx: &RawTracePointContext) -> Result<(), i64> {
    let parent = ctx.arg::<*const c_void>(0) as *const u8;
    let child = ctx.arg::<*const c_void>(1) as *const u8;
    // SAFETY: reads go through bpf_probe_read_kernel.
    let (pid, tgid) = unsafe { (field::<u32>(child, off!(task_pid))?, field::<u32>(child, off!(task_tgid))?) };
    if pid != tgid {
        return Ok(()); // a new thread, not a new process
    }
    count(COUNTER_CLONES);
    // SAFETY: reads go through bpf_probe_read_kernel; the parent's entry is
    // copied whole into the child's.
    #[expect(clippy::needless_borrows_for_generic_args, reason = "by value, the entry would be copied to the stack")]
    unsafe {
        if let Ok(ptgid) = field::<u32>(parent, off!(task_tgid))
            && let Some(b) = BINARIES.get_ptr(ptgid)
            && BINARIES.insert(tgid, &*b, 0).is_err()
        {
            count(COUNTER_BINARIES_FULL);
        }
    }
    // SAFETY: bpf_ktime_get_boot_ns has no preconditions; the reads go
    // through bpf_probe_read_kernel, which checks each address.
    let (ktime, ppid, start_boottime, parent_start_boottime, exec_seq, nspid) = unsafe {
        (
            bpf_ktime_get_boot_ns(),
            field::<u32>(parent, off!(task_tgid)).unwrap_or(0),
            field::<u64>(child, off!(task_start_boottime)).unwrap_or(0),
            field::<u64>(parent, off!(task_start_boottime)).unwrap_or(0),
            field::<u32>(child, off!(task_self_exec_id)).unwrap_or(0),
            read_nspid(child),
        )
    };
    let record = CloneRecord {
        header: RecordHeader { kind: KIND_CLONE, flags: 0, ktime },
        pid: tgid,
        ppid,
        start_boottime,
        parent_start_boottime,
        exec_seq,
        nspid,
    };
    let len = core::mem::size_of::<CloneRecord>() as u64;
    if EVENTS.output::<CloneRecord>(&record, submit_flags(queued() + len, len)).is_err() {
        count(COUNTER_RINGBUF_FULL);
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn vigil_exit(ctx: RawTracePointContext) -> i32 {
    match try_exit(&ctx) {
        Ok(()) => 0,
        Err(_) => {
            // The task's ids or thread count were unreadable: counted.
            count(COUNTER_READ_ERRORS);
            1
        }
    }
}

fn try_exit(ctx: &RawTracePointContext) -> Result<(), i64> {
    let task = ctx.arg::<*const c_void>(0) as *const u8;
    // SAFETY: reads go through bpf_probe_read_kernel.
    unsafe {
        let signal = ptr_field(task, off!(task_signal))?;
        // do_exit() decrements signal->live before this tracepoint: only
        // the thread group's last thread sees zero.
        let live: i32 = field(signal, off!(signal_live))?;
        if live != 0 {
            return Ok(());
        }
        count(COUNTER_EXITS);
        let _ = BINARIES.remove(field::<u32>(task, off!(task_tgid))?);
        let record = ExitRecord {
            header: RecordHeader { kind: KIND_EXIT, flags: 0, ktime: bpf_ktime_get_boot_ns() },
            pid: field::<u32>(task, off!(task_tgid))?,
            tid: field::<u32>(task, off!(task_pid))?,
            exit_code: field::<u32>(task, off!(task_exit_code)).unwrap_or(0),
            _pad: 0,
            start_boottime: field::<u64>(task, off!(task_start_boottime)).unwrap_or(0),
        };
        let len = core::mem::size_of::<ExitRecord>() as u64;
        if EVENTS.output::<ExitRecord>(&record, submit_flags(queued() + len, len)).is_err() {
            count(COUNTER_RINGBUF_FULL);
        }
    }
    Ok(())
}
