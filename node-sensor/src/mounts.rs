//! Kernel filesystems the sensor needs and mounts itself where none is
//! (the BPF filesystem for pins, tracefs for tracepoint formats), as
//! Tetragon does.

use std::ffi::{CStr, CString};
use std::path::Path;

/// The filesystem type (`statfs` magic) at `path`.
pub fn fs_type(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: an all-zero statfs is a valid out-buffer.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `fs` a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut fs) };
    (rc == 0).then_some(fs.f_type as i64)
}

/// Mounts a `fstype` filesystem (no device, no options) at `at`.
pub fn mount(fstype: &CStr, at: &Path) -> Result<(), String> {
    let target = CString::new(at.as_os_str().as_encoded_bytes()).map_err(|_| "the path holds a NUL byte")?;
    // SAFETY: every argument is a valid NUL-terminated string; no data.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(format!(
            "mounting {} at {} failed: {}",
            fstype.to_string_lossy(),
            at.display(),
            std::io::Error::last_os_error()
        ));
    }
    tracing::info!(fstype = %fstype.to_string_lossy(), at = %at.display(), "mounted");
    Ok(())
}
