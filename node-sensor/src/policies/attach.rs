//! Attaches the generic tracepoint and kprobe programs with a BPF cookie,
//! which aya's tracepoint and kprobe attaches do not offer: a perf event
//! on the tracepoint or function, then a perf link carrying the cookie
//! (Linux 5.15+). The program reads the cookie to find its hooks (it cannot
//! read a tracepoint's id from the record, as the kernel puts a register
//! pointer over the first bytes of syscall tracepoints' records). The
//! link's fd is the attachment: closing it detaches.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `PERF_TYPE_TRACEPOINT`.
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// Bytes of `struct perf_event_attr` as of `PERF_ATTR_SIZE_VER8`.
const PERF_ATTR_SIZE: usize = 136;
/// `BPF_LINK_CREATE`.
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_PERF_EVENT` of `enum bpf_attach_type`.
const BPF_PERF_EVENT: u32 = 41;

/// Attaches `program` to tracepoint `id` (its tracefs `id`), its runs
/// seeing `cookie` through `bpf_get_attach_cookie`.
pub fn tracepoint(program: BorrowedFd<'_>, id: u32, cookie: u64) -> io::Result<OwnedFd> {
    let perf = perf_event(PERF_TYPE_TRACEPOINT, u64::from(id), 0)?;
    link(program, &perf, cookie)
}

/// A system-wide perf event of PMU `pmu` with `config` and `config1` (a
/// `struct perf_event_attr` with those, its size, and the rest zero).
fn perf_event(pmu: u32, config: u64, config1: u64) -> io::Result<OwnedFd> {
    let mut attr = [0u8; PERF_ATTR_SIZE];
    attr[0..4].copy_from_slice(&pmu.to_ne_bytes());
    attr[4..8].copy_from_slice(&(PERF_ATTR_SIZE as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&config.to_ne_bytes());
    attr[56..64].copy_from_slice(&config1.to_ne_bytes());
    // SAFETY: perf_event_open reads `size` bytes of `attr`, which has them
    // (and what config1 may point to, which the caller keeps alive); pid -1
    // with cpu 0 is the system-wide event a BPF program attaches to (it then
    // runs on every CPU).
    let perf = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::c_int,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if perf < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(perf as i32) })
}

/// A perf link from `program` to the perf event `perf`, with `cookie`.
fn link(program: BorrowedFd<'_>, perf: &OwnedFd, cookie: u64) -> io::Result<OwnedFd> {
    // union bpf_attr, link_create: prog_fd, target_fd, attach_type, flags,
    // then perf_event.bpf_cookie at offset 16; the rest zero.
    let mut link_attr = [0u8; 64];
    link_attr[0..4].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
    link_attr[4..8].copy_from_slice(&(perf.as_raw_fd() as u32).to_ne_bytes());
    link_attr[8..12].copy_from_slice(&BPF_PERF_EVENT.to_ne_bytes());
    link_attr[16..24].copy_from_slice(&cookie.to_ne_bytes());
    // SAFETY: bpf(2) reads `size` bytes of the attribute union, which
    // `link_attr` has; both fds are open for the call.
    let link =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, link_attr.as_ptr(), link_attr.len() as libc::c_uint) };
    if link < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above. The link holds the perf event; ours can close.
    Ok(unsafe { OwnedFd::from_raw_fd(link as i32) })
}

/// Where the kernel publishes its kprobe PMU's type.
const KPROBE_PMU_TYPE: &str = "/sys/bus/event_source/devices/kprobe/type";

/// Where the kprobe PMU says which config bit makes a return probe.
const KPROBE_RETPROBE_FORMAT: &str = "/sys/bus/event_source/devices/kprobe/format/retprobe";

/// Attaches `program` to kernel function `symbol` (its return with
/// `ret`) with a kprobe perf event (the kprobe PMU, Linux 4.17+) and a
/// perf link carrying `cookie`. A kernel without kprobes has no kprobe
/// PMU: that is the error then.
pub fn kprobe(program: BorrowedFd<'_>, symbol: &str, ret: bool, cookie: u64) -> Result<OwnedFd, String> {
    kprobe_link(program, symbol, ret, cookie).map_err(|e| match e {
        KprobeError::Setup(why) => why,
        KprobeError::Link(e) => format!("attaching the kprobe: {e}"),
    })
}

/// Why a kprobe attach failed: setting the probe up, or linking the
/// program to it (which the kernel refuses with `EINVAL` for an override
/// program on a function not open to error injection).
pub enum KprobeError {
    Setup(String),
    Link(io::Error),
}

/// As [`kprobe`], telling the link's refusal apart.
pub fn kprobe_link(program: BorrowedFd<'_>, symbol: &str, ret: bool, cookie: u64) -> Result<OwnedFd, KprobeError> {
    use KprobeError::Setup;
    let pmu =
        std::fs::read_to_string(KPROBE_PMU_TYPE).ok().and_then(|t| t.trim().parse::<u32>().ok()).ok_or_else(|| {
            Setup(format!("this kernel has no kprobes ({KPROBE_PMU_TYPE} is missing: CONFIG_KPROBES is off)"))
        })?;
    let name = std::ffi::CString::new(symbol).map_err(|_| Setup("the function name holds a NUL byte".to_owned()))?;
    let config = if ret {
        // "config:N"
        let bit = std::fs::read_to_string(KPROBE_RETPROBE_FORMAT)
            .ok()
            .and_then(|f| f.trim().strip_prefix("config:")?.parse::<u32>().ok())
            .filter(|b| *b < 64)
            .ok_or_else(|| {
                Setup(format!("this kernel's kprobe PMU has no return probes ({KPROBE_RETPROBE_FORMAT})"))
            })?;
        1u64 << bit
    } else {
        0
    };
    // config1 is kprobe_func: a pointer to the name, alive through the call.
    let perf = perf_event(pmu, config, name.as_ptr() as u64).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::EINVAL) => Setup(format!("the kernel cannot probe this function ({e})")),
        _ => Setup(format!("creating the kprobe: {e}")),
    })?;
    link(program, &perf, cookie).map_err(KprobeError::Link)
}
