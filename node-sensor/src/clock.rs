//! Kernel boot-time nanoseconds to wall-clock timestamps.

use proto::Timestamp;

/// Converts kernel boot-time nanoseconds to wall-clock timestamps.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Wall-clock nanoseconds at boot (CLOCK_REALTIME − CLOCK_BOOTTIME).
    boot_wall_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn from_system() -> Self {
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock { boot_wall_ns: real - boot }
    }

    pub fn fixed(boot_wall_ns: i128) -> Self {
        Clock { boot_wall_ns }
    }

    pub fn wall(&self, boot_ns: u64) -> Timestamp {
        Timestamp::from_unix_nanos(self.boot_wall_ns + i128::from(boot_ns))
    }

    /// Boot-time nanoseconds now.
    pub fn boot_now(&self) -> u64 {
        clock_ns(libc::CLOCK_BOOTTIME).max(0) as u64
    }
}
