//! The table the pipeline reads a hook record's meaning from: for each
//! hook number, its policy, tracepoint and how each argument is shown.
//! The policy host writes it; the pipeline only reads. A deleted hook
//! stays readable for a while, so records still queued in the ring buffer
//! when its policy went are reported, not dropped as unknown.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parking_lot::RwLock;
use policy::schema::ArgType;

/// Deleted hooks kept readable at most.
const RETIRED_KEPT: usize = 1024;

/// How an argument's bytes become a `KprobeArgument`, as Tetragon types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// `int_arg`: sign-extended from the field's `size` bytes.
    Int {
        size: u8,
    },
    /// `uint_arg`.
    Uint {
        size: u8,
    },
    /// `long_arg`.
    Long {
        size: u8,
    },
    /// `size_arg` (an unsigned 64-bit number).
    Size {
        size: u8,
    },
    /// `string_arg`.
    String,
    /// `bytes_arg`.
    Bytes,
    /// `syscall_id` with the ABI.
    SyscallId,
    /// `file_arg`, `path_arg`, `linux_binprm_arg`: a path with its permission.
    File,
    Path,
    Bprm,
    /// `sock_arg`.
    Sock,
    /// `process_credentials_arg`.
    Cred,
    /// Read and left out of the event (`nop`).
    Hidden,
}

impl Shown {
    /// How `arg_type` (resolved, never `auto`) on a field of `size` bytes is shown.
    pub fn of(arg_type: ArgType, size: u32) -> Option<Shown> {
        let size = size.min(8) as u8;
        use ArgType::*;
        Some(match arg_type {
            Int | Sint32 | Int32 | Sint16 | Int16 | Sint8 | Int8 => Shown::Int { size },
            Uint32 | Uint16 | Uint8 => Shown::Uint { size },
            Long | Sint64 | Int64 => Shown::Long { size },
            Uint64 | Ulong | SizeT => Shown::Size { size },
            String | Filename => Shown::String,
            CharBuf | ConstBuf => Shown::Bytes,
            Syscall64 => Shown::SyscallId,
            // A descriptor is shown as its file, as Tetragon does.
            File | Fd => Shown::File,
            Path => Shown::Path,
            LinuxBinprm => Shown::Bprm,
            Sock => Shown::Sock,
            Cred => Shown::Cred,
            Nop => Shown::Hidden,
            _ => return None,
        })
    }
}

/// Where a hook sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookPoint {
    Tracepoint {
        subsystem: String,
        event: String,
    },
    /// A user function: its binary, and its symbol (empty for a raw
    /// offset) or offset.
    Uprobe {
        path: String,
        symbol: String,
        offset: u64,
    },
    /// A kernel function, by the symbol probed.
    Kprobe {
        function: String,
    },
}

/// One argument as events show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownArg {
    pub shown: Shown,
    /// The policy's `label`; tracepoint arguments carry none, as in Tetragon.
    pub label: String,
}

/// One policy hook as events report it.
#[derive(Debug)]
pub struct HookInfo {
    pub policy: String,
    pub point: HookPoint,
    pub message: String,
    pub tags: Vec<String>,
    /// One per argument the kernel sends, in order.
    pub args: Vec<ShownArg>,
    /// The return value, for a return probe (Tetragon gives it no label).
    pub ret: Option<Shown>,
    /// Events this hook produced.
    pub events: AtomicU64,
}

/// Hook number → what its records mean.
#[derive(Debug, Default)]
pub struct HookTable {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    hooks: HashMap<u32, Arc<HookInfo>>,
    retired: VecDeque<u32>,
}

impl HookTable {
    pub fn get(&self, hook_id: u32) -> Option<Arc<HookInfo>> {
        self.inner.read().hooks.get(&hook_id).cloned()
    }

    pub fn insert(&self, hook_id: u32, info: Arc<HookInfo>) {
        self.inner.write().hooks.insert(hook_id, info);
    }

    /// The hook is gone from the kernel; its queued records still resolve
    /// until `RETIRED_KEPT` later hooks have gone.
    pub fn retire(&self, hook_id: u32) {
        let mut inner = self.inner.write();
        inner.retired.push_back(hook_id);
        while inner.retired.len() > RETIRED_KEPT {
            if let Some(old) = inner.retired.pop_front() {
                inner.hooks.remove(&old);
            }
        }
    }

    /// Forgets a hook that never reached the kernel.
    pub fn remove(&self, hook_id: u32) {
        self.inner.write().hooks.remove(&hook_id);
    }
}
