//! Paths from dentries: the walk from a `(vfsmount, dentry)` pair up to the
//! task's root, crossing mount points, storing each component leaf first
//! and NUL-terminated (user space reverses them). The exec program uses it
//! for the cwd; policy arguments for files, paths and a binprm's file.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_probe_read_kernel_str;
use node_sensor_common::*;

use crate::ptr_field;

/// How a walk ended.
pub(crate) struct Walked {
    /// Bytes stored.
    pub len: u32,
    /// The start was the root itself (the path is `/`).
    pub at_root: bool,
    /// `FLAG_ERROR_CWD` (a read failed) or `FLAG_TRUNC_CWD` (too deep or
    /// too long), else 0.
    pub flags: u32,
}

/// The task's root as `(vfsmount, dentry)`.
///
/// # Safety
/// `task` must be a task pointer; it is read only through the helpers.
#[inline(always)]
pub(crate) unsafe fn task_root(task: *const u8) -> Result<(*const u8, *const u8), i64> {
    // SAFETY: reads go through bpf_probe_read_kernel.
    unsafe {
        let fs = ptr_field(task, off!(task_fs))?;
        let root = fs.wrapping_add(off!(fs_root) as usize);
        Ok((ptr_field(root, off!(path_mnt))?, ptr_field(root, off!(path_dentry))?))
    }
}

/// Walks from `(vfsmnt, dentry)` to `root`, storing components into `buf`,
/// which must have `CWD_SIZE + NAME_READ` bytes this program owns.
///
/// # Safety
/// As above; every write is masked into `buf`'s first `CWD_SIZE` bytes
/// plus one component's `NAME_READ`.
#[inline(always)]
pub(crate) unsafe fn walk(
    mut vfsmnt: *const u8,
    mut dentry: *const u8,
    root: (*const u8, *const u8),
    buf: *mut u8,
) -> Walked {
    let (root_mnt, root_dentry) = root;
    let mut walked = Walked { len: 0, at_root: false, flags: 0 };
    // SAFETY: kernel memory is read only through the probe-read helpers;
    // `at` is masked below CWD_SIZE and each read is at most NAME_READ.
    unsafe {
        // `struct mount` embeds the vfsmount at `mount_mnt`.
        let mut mnt = vfsmnt.wrapping_sub(off!(mount_mnt) as usize);
        let mut off: u32 = 0;
        for _ in 0..CWD_MAX_DEPTH {
            if dentry == root_dentry && vfsmnt == root_mnt {
                walked.len = off;
                walked.at_root = off == 0;
                return walked;
            }
            let (Ok(mnt_root), Ok(parent)) =
                (ptr_field(vfsmnt, off!(vfsmount_root)), ptr_field(dentry, off!(dentry_parent)))
            else {
                walked.flags = FLAG_ERROR_CWD;
                return walked;
            };
            if dentry == mnt_root || dentry == parent {
                let Ok(mnt_parent) = ptr_field(mnt, off!(mount_parent)) else {
                    walked.flags = FLAG_ERROR_CWD;
                    return walked;
                };
                if mnt_parent == mnt {
                    // Reached the namespace root (the task root lies elsewhere).
                    walked.len = off;
                    walked.at_root = off == 0;
                    return walked;
                }
                let Ok(mountpoint) = ptr_field(mnt, off!(mount_mountpoint)) else {
                    walked.flags = FLAG_ERROR_CWD;
                    return walked;
                };
                dentry = mountpoint;
                mnt = mnt_parent;
                vfsmnt = mnt_parent.wrapping_add(off!(mount_mnt) as usize);
                continue;
            }
            let Ok(name) = ptr_field(dentry, off!(dentry_name) + off!(qstr_name)) else {
                walked.flags = FLAG_ERROR_CWD;
                return walked;
            };
            if off as usize >= CWD_SIZE {
                walked.len = off;
                walked.flags = FLAG_TRUNC_CWD;
                return walked;
            }
            let at = (off as usize) & (CWD_SIZE - 1);
            let n = bpf_probe_read_kernel_str(buf.add(at) as *mut c_void, NAME_READ as u32, name as *const c_void);
            if n <= 0 {
                walked.flags = FLAG_ERROR_CWD;
                return walked;
            }
            off = at as u32 + n as u32;
            dentry = parent;
        }
        walked.len = off;
        walked.flags = FLAG_TRUNC_CWD;
        walked
    }
}
