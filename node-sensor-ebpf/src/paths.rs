//! Paths from dentries for policy arguments (files, paths, a binprm's
//! file): the walk from a `(vfsmount, dentry)` pair up to the task's root,
//! crossing mount points, storing each component leaf first and
//! NUL-terminated (user space reverses them). The exec program's cwd walk
//! is the same walk written into its record; folded into this one, it took
//! the exec program with credentials and namespaces past the verifier's
//! million instructions on Linux 6.1, so it stays apart.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_probe_read_kernel_str;
use node_sensor_common::*;

use crate::ptr_field;

/// The root of a task's `fs_struct` as `(vfsmount, dentry)`.
///
/// # Safety
/// `fs` must be a `task->fs`; it is read only through the helpers.
#[inline(always)]
pub(crate) unsafe fn fs_root(fs: *const u8) -> Result<(*const u8, *const u8), i64> {
    // SAFETY: reads go through bpf_probe_read_kernel.
    unsafe {
        let root = fs.wrapping_add(off!(fs_root) as usize);
        Ok((ptr_field(root, off!(path_mnt))?, ptr_field(root, off!(path_dentry))?))
    }
}

/// Walks from `(vfsmnt, dentry)` to `root`, storing components into `buf`,
/// which must have `CWD_SIZE + NAME_READ` bytes this program owns; the
/// bytes stored go to `*len`, and 1 to `*at_root` when the start was the
/// root itself (the path is `/`). Returns `FLAG_ERROR_CWD` (a read
/// failed), `FLAG_TRUNC_CWD` (too deep or too long), or 0. (Results go
/// through the caller's memory: returned in a struct, they cost the
/// verifier far more.)
///
/// # Safety
/// As above; every write is masked into `buf`'s first `CWD_SIZE` bytes
/// plus one component's `NAME_READ`; `len` and `at_root` must be writable.
#[inline(always)]
pub(crate) unsafe fn walk(
    mut vfsmnt: *const u8,
    mut dentry: *const u8,
    root: (*const u8, *const u8),
    buf: *mut u8,
    len: *mut u32,
    at_root: *mut u32,
) -> u32 {
    let (root_mnt, root_dentry) = root;
    // SAFETY: kernel memory is read only through the probe-read helpers;
    // `at` is masked below CWD_SIZE and each read is at most NAME_READ.
    unsafe {
        // `struct mount` embeds the vfsmount at `mount_mnt`.
        let mut mnt = vfsmnt.wrapping_sub(off!(mount_mnt) as usize);
        *len = 0;
        *at_root = 0;
        let mut off: u32 = 0;
        for _ in 0..CWD_MAX_DEPTH {
            if dentry == root_dentry && vfsmnt == root_mnt {
                *len = off;
                *at_root = (off == 0) as u32;
                return 0;
            }
            let (Ok(mnt_root), Ok(parent)) =
                (ptr_field(vfsmnt, off!(vfsmount_root)), ptr_field(dentry, off!(dentry_parent)))
            else {
                return FLAG_ERROR_CWD;
            };
            if dentry == mnt_root || dentry == parent {
                let Ok(mnt_parent) = ptr_field(mnt, off!(mount_parent)) else {
                    return FLAG_ERROR_CWD;
                };
                if mnt_parent == mnt {
                    // Reached the namespace root (the task root lies elsewhere).
                    *len = off;
                    *at_root = (off == 0) as u32;
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
                *len = off;
                return FLAG_TRUNC_CWD;
            }
            let at = (off as usize) & (CWD_SIZE - 1);
            let n = bpf_probe_read_kernel_str(buf.add(at) as *mut c_void, NAME_READ as u32, name as *const c_void);
            if n <= 0 {
                return FLAG_ERROR_CWD;
            }
            off = at as u32 + n as u32;
            dentry = parent;
        }
        *len = off;
        FLAG_TRUNC_CWD
    }
}
