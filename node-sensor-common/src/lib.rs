//! Records and configuration shared by Vigil's kernel programs and the
//! user-space sensor. Every type is `#[repr(C)]`, `Copy` and padding-free
//! (explicit `_pad` fields), with its size asserted at compile time, so both
//! sides agree on the layout byte for byte.
#![no_std]

/// Bytes of the arguments after argv[0] copied per exec (argv[0] is
/// skipped in the kernel: the binary is reported from the filename, and a
/// long argv[0] must not push the arguments out); longer argument lists are
/// cut and flagged `FLAG_TRUNC_ARGS`.
pub const ARGS_SIZE: usize = 1024;
/// Bytes of the per-CPU scratch buffer argv[0] is measured in.
pub const SCRATCH_SIZE: usize = 4096;
/// Scratch-sized steps taken at most to find argv[0]'s end: 8 KiB, twice
/// PATH_MAX. Past that (an argv[0] made long on purpose) the event still
/// goes out, its arguments flagged `errorArgs`. More steps cost the
/// verifier dearly: four took the exec program from 50,400 to 70,600
/// verified instructions.
pub const ARGV0_STEPS: u32 = 2;
/// Bytes of the exec filename copied (`bprm->filename`).
pub const FILENAME_SIZE: usize = 256;
/// Bytes of cwd path components stored, leaf first, NUL separated.
pub const CWD_SIZE: usize = 1024;
/// Longest single component read (NAME_MAX + NUL); the cwd buffer has
/// this much slack past `CWD_SIZE` so every read stays in bounds.
pub const NAME_READ: usize = 256;
/// Components walked from cwd towards the root before giving up.
pub const CWD_MAX_DEPTH: u32 = 16;
/// Bytes of the default-hierarchy cgroup's leaf name.
pub const CGROUP_NAME_SIZE: usize = 128;

/// Record kinds, the first `u32` of every ring-buffer record.
pub const KIND_EXEC: u32 = 1;
pub const KIND_EXIT: u32 = 2;
pub const KIND_CLONE: u32 = 3;
/// A policy hook fired: a [`HookRecord`] followed by its arguments.
pub const KIND_HOOK: u32 = 4;

/// Record flags set by the kernel side.
pub const FLAG_TRUNC_ARGS: u32 = 1 << 0;
pub const FLAG_TRUNC_FILENAME: u32 = 1 << 1;
pub const FLAG_ERROR_ARGS: u32 = 1 << 2;
pub const FLAG_ERROR_FILENAME: u32 = 1 << 3;
pub const FLAG_ERROR_CWD: u32 = 1 << 4;
pub const FLAG_TRUNC_CWD: u32 = 1 << 5;
pub const FLAG_ERROR_CGROUP: u32 = 1 << 6;
pub const FLAG_NO_AUID: u32 = 1 << 7;
/// `creds` holds credentials (collection enabled and read succeeded).
pub const FLAG_HAS_CREDS: u32 = 1 << 8;
/// `namespaces` holds namespace inodes.
pub const FLAG_HAS_NS: u32 = 1 << 9;
/// `file` holds the executed file's inode.
pub const FLAG_HAS_FILE: u32 = 1 << 10;

/// Indexes into `NsInfo::inum`, in Tetragon's `Namespaces` field order.
pub const NS_UTS: usize = 0;
pub const NS_IPC: usize = 1;
pub const NS_MNT: usize = 2;
pub const NS_PID: usize = 3;
pub const NS_PID_FOR_CHILDREN: usize = 4;
pub const NS_NET: usize = 5;
pub const NS_TIME: usize = 6;
pub const NS_TIME_FOR_CHILDREN: usize = 7;
pub const NS_CGROUP: usize = 8;
pub const NS_USER: usize = 9;
pub const NS_COUNT: usize = 10;

/// Credentials beyond uid/gid/euid/egid (`--enable-process-cred`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CredInfo {
    pub suid: u32,
    pub sgid: u32,
    pub fsuid: u32,
    pub fsgid: u32,
    pub securebits: u32,
    pub user_ns_level: i32,
    pub user_ns_owner: u32,
    pub user_ns_group: u32,
    pub user_ns_inum: u32,
    pub _pad: u32,
    /// `kernel_cap_t` sets as 64-bit masks (bit n = capability n).
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_inheritable: u64,
    pub cap_ambient: u64,
}

/// Namespace inode numbers (`--enable-process-ns`); 0 = not available.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsInfo {
    pub inum: [u32; NS_COUNT],
}

/// The executed file (`bprm->file->f_inode`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileInfo {
    pub ino: u64,
    pub nlink: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Indexes of the per-CPU `COUNTERS` map.
pub const COUNTER_RINGBUF_FULL: u32 = 0;
pub const COUNTER_READ_ERRORS: u32 = 1;
pub const COUNTER_EXECS: u32 = 2;
pub const COUNTER_EXITS: u32 = 3;
pub const COUNTER_CLONES: u32 = 4;
/// Policy hooks that fired and were sent (or lost to a full ring buffer).
pub const COUNTER_HOOKS: u32 = 5;
/// Returns whose entry was not kept (the pending map was full).
pub const COUNTER_RETURNS_LOST: u32 = 6;
/// Hooks with selectors whose selector program could not be reached (the
/// tail call failed): their events are lost.
pub const COUNTER_SELECT_FAILED: u32 = 7;
/// Execs whose binary could not be kept for `matchBinaries` (the map of
/// live processes' binaries was full).
pub const COUNTER_BINARIES_FULL: u32 = 8;
/// Stacks a `Post` asked for that the event could not carry (no room
/// after its arguments, or the kernel could not walk the stack).
pub const COUNTER_STACKS_LOST: u32 = 9;
pub const COUNTERS_LEN: u32 = 10;

/// Common first 16 bytes of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: u32,
    pub flags: u32,
    /// Boot-time nanoseconds when the kernel saw the event. For an exec,
    /// the time of the exec as the first sensor on this kernel saw it
    /// (shared through the exec-time map), so every sensor names the image
    /// alike.
    pub ktime: u64,
}

/// One `sched_process_exec`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecRecord {
    pub header: RecordHeader,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    /// `task->loginuid`, `u32::MAX` when unset.
    pub auid: u32,
    /// `task->start_boottime` of the process (fork time, unchanged by exec).
    pub start_boottime: u64,
    /// `real_parent->start_boottime`.
    pub parent_start_boottime: u64,
    /// Default-hierarchy cgroup id (`kernfs_node->id`).
    pub cgroup_id: u64,
    /// Bytes used in `filename`, `args`, `cwd`, `cgroup` (no trailing NUL).
    pub filename_len: u32,
    pub args_len: u32,
    pub cwd_len: u32,
    pub cgroup_len: u32,
    /// 1 when the walk reached the process root at once (cwd is `/`).
    pub cwd_is_root: u32,
    /// `task->self_exec_id` after this exec: with `start_boottime` it names
    /// the image identically for every sensor on the kernel.
    pub exec_seq: u32,
    /// The pid as the process's own pid namespace numbers it (a container's
    /// view; 1 for a pid namespace's init).
    pub nspid: u32,
    pub _pad: u32,
    pub creds: CredInfo,
    pub namespaces: NsInfo,
    pub file: FileInfo,
    pub filename: [u8; FILENAME_SIZE],
    pub args: [u8; ARGS_SIZE],
    pub cwd: [u8; CWD_SIZE + NAME_READ],
    pub cgroup: [u8; CGROUP_NAME_SIZE],
}

/// One thread group's end (`sched_process_exit` of its last thread).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitRecord {
    pub header: RecordHeader,
    pub pid: u32,
    pub tid: u32,
    /// `task->exit_code`: status in bits 8..16, signal in 0..7, core 0x80.
    pub exit_code: u32,
    pub _pad: u32,
    pub start_boottime: u64,
}

/// A new thread group (`sched_process_fork` where the child leads it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloneRecord {
    pub header: RecordHeader,
    pub pid: u32,
    pub ppid: u32,
    pub start_boottime: u64,
    pub parent_start_boottime: u64,
    /// The child's `self_exec_id` (inherited from the parent).
    pub exec_seq: u32,
    /// The child's pid in its own pid namespace (1 for the first process
    /// of a new pid namespace: a container's init).
    pub nspid: u32,
}

/// Arguments a hook reads at most (Tetragon's limit for a tracepoint).
pub const HOOK_MAX_ARGS: usize = 5;
/// Policy hooks one attach point serves at most (several policies may
/// name the same tracepoint; a uprobe attach serves one hook). A
/// tracepoint's run takes up to two tail calls per hook (see `Chain`), and
/// the kernel allows 33.
pub const HOOKS_PER_ATTACH: usize = 16;
/// Bytes of one string or buffer argument kept; longer ones are cut and
/// flagged `ARG_TRUNCATED`.
pub const HOOK_STRING_MAX: usize = 1024;
/// Bytes of a hook record's argument area (a power of two; every argument
/// fits: `HOOK_MAX_ARGS * (8 + HOOK_ARG_BYTES)` is less).
pub const HOOK_DATA_SIZE: usize = 8192;
/// Most bytes one argument takes after its length word: a path's head and
/// components (`CWD_SIZE` plus one component read past it).
pub const HOOK_ARG_BYTES: usize = 8 + CWD_SIZE + NAME_READ;
/// Attach points at once at most (entries of the hook map).
pub const HOOK_ATTACH_MAX: u32 = 4096;
/// Cookies of uprobe attaches have this bit (tracepoints' are their ids,
/// below 2^32), so the two kinds never share a hook-map key.
pub const UPROBE_COOKIE: u64 = 1 << 32;

/// How a program reads one argument (`ArgSpec::read`).
pub const READ_NOTHING: u8 = 0;
/// `size` bytes at `offset` of the tracepoint record: an integer.
pub const READ_SCALAR: u8 = 1;
/// A NUL-terminated user-space string the pointer at `offset` names.
pub const READ_USER_STRING: u8 = 2;
/// A string stored in the record, named by the `__data_loc` word at `offset`.
pub const READ_RECORD_STRING: u8 = 3;
/// User-space bytes the pointer at `offset` names, as many as the integer
/// of `len_size` bytes at `len_offset` says.
pub const READ_USER_BUFFER: u8 = 4;
/// `size` bytes of the record at `offset` (an array field).
pub const READ_RECORD_BYTES: u8 = 5;
/// A NUL-terminated kernel string the pointer at `offset` names.
pub const READ_KERNEL_STRING: u8 = 6;
/// Kernel bytes the pointer at `offset` names, as many as the integer at
/// `len_offset` says.
pub const READ_KERNEL_BUFFER: u8 = 7;
/// The path of the `struct file *` at `offset`: a [`PathHead`], then the
/// components leaf first, each NUL-terminated.
pub const READ_FILE: u8 = 8;
/// The same, of a `struct path *`.
pub const READ_PATH: u8 = 9;
/// The same, of a `struct linux_binprm *`'s file.
pub const READ_BPRM: u8 = 10;

/// A `struct sock *`'s addresses, ports and state: a [`SockInfo`].
pub const READ_SOCK: u8 = 11;

/// A descriptor number (an integer of `size` bytes at `offset`), resolved
/// through the task's file table to its file's path, as [`READ_FILE`].
pub const READ_FD: u8 = 12;
/// A `struct cred *`'s ids, capabilities and user namespace: a [`CredArg`].
pub const READ_CRED: u8 = 13;

/// What a `cred` argument's bytes hold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CredArg {
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub more: CredInfo,
}

/// What a `sock` argument's bytes hold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    pub family: u16,
    /// `sk_type` (SOCK_STREAM, …).
    pub kind: u16,
    pub protocol: u16,
    /// The local port, host order (`skc_num`).
    pub sport: u16,
    /// The remote port, network order (`skc_dport`).
    pub dport_be: u16,
    pub state: u8,
    pub _pad: u8,
    pub mark: u32,
    pub priority: u32,
    /// IPv4 addresses, network order.
    pub saddr: u32,
    pub daddr: u32,
    pub _pad2: u32,
    pub saddr6: [u8; 16],
    pub daddr6: [u8; 16],
    /// The socket's address, Tetragon's `cookie`.
    pub cookie: u64,
}

/// `ArgSpec::indirect` when the argument is read from the record itself.
pub const NO_INDIRECT: u16 = u16::MAX;
/// Cookies of kprobe attaches have this bit (with the hook's number).
pub const KPROBE_COOKIE: u64 = 1 << 33;

/// What a path argument's bytes start with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathHead {
    /// The inode's `i_mode` (type and permission bits).
    pub mode: u32,
    /// 1 when the walk reached the task's root at once (the path is `/`).
    pub is_root: u32,
}

/// One argument of a hook, as the program reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgSpec {
    pub offset: u16,
    pub size: u16,
    /// `READ_*`.
    pub read: u8,
    /// Bytes of the length field (`READ_*_BUFFER`).
    pub len_size: u8,
    pub len_offset: u16,
    /// Where in the record a pointer to the real record lies (a syscall
    /// wrapper's `struct pt_regs *`), or `NO_INDIRECT`; `offset` and
    /// `len_offset` then count in what it points to.
    pub indirect: u16,
    pub _pad: u16,
}

impl Default for ArgSpec {
    fn default() -> Self {
        ArgSpec { offset: 0, size: 0, read: READ_NOTHING, len_size: 0, len_offset: 0, indirect: NO_INDIRECT, _pad: 0 }
    }
}

/// One policy's hook at an attach point.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookSpec {
    /// The sensor's number for this hook, sent back in every record.
    pub hook_id: u32,
    pub nargs: u32,
    pub args: [ArgSpec; HOOK_MAX_ARGS],
    /// The return value's reading (`HOOK_RETURN`): from the registers the
    /// return probe sees.
    pub ret: ArgSpec,
    /// `HOOK_*`.
    pub flags: u32,
    /// With `HOOK_SCOPED`: the policy's scope, whose cgroups are in
    /// `SCOPE_CGROUPS` as `ScopeKey { scope, cgroup }`.
    pub scope: u32,
}

/// `HookSpec::flags`: a return probe reports this hook, with the return
/// value: the entry program keeps the arguments for it.
pub const HOOK_RETURN: u32 = 1 << 0;
/// `HookSpec::flags`: the hook has selectors (in `SELECTORS`, by hook
/// number); the selector program decides what is sent and done.
pub const HOOK_SELECT: u32 = 1 << 1;
/// `HookSpec::flags`: the policy applies only to processes in the cgroups
/// listed for its scope (a `TracingPolicyNamespaced`, a pod or container
/// selector): a process elsewhere is not looked at.
pub const HOOK_SCOPED: u32 = 1 << 2;
/// Cgroups all scoped policies list together (16-byte keys, allocated as
/// used).
pub const SCOPE_CGROUPS_MAX: u32 = 65536;

/// `ScopeKey::cgroup` of a scope that admits every process (a policy whose
/// `nodeSelector` admits this node, and nothing narrower).
pub const SCOPE_EVERY_CGROUP: u64 = 0;

/// A cgroup a scoped policy applies to: its scope and the cgroup's id (the
/// cgroup v2 directory's inode number, as `bpf_get_current_cgroup_id`
/// gives it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeKey {
    pub scope: u32,
    pub _pad: u32,
    pub cgroup: u64,
}

/// Cookies of kretprobe attaches have this bit (with the hook's number).
pub const KRETPROBE_COOKIE: u64 = 1 << 34;
/// Cookies of tracepoint attaches of the program that reads file
/// descriptors (beside the shared program's), with the tracepoint's id.
pub const TRACEPOINT_FD_COOKIE: u64 = 1 << 35;

/// `RecordHeader::flags` of a hook record: its last argument is the
/// function's return value.
pub const RECORD_HAS_RETURN: u32 = 1 << 0;
/// Bytes of arguments a return-probe hook keeps from entry to return:
/// all a record can hold.
pub const RETURN_DATA_MAX: usize = HOOK_DATA_SIZE;
/// Calls in flight return probes can hold at once (an LRU map of 8 KiB
/// entries, 2 MiB in all: past it the oldest call's event is lost, and
/// counted as `COUNTER_RETURNS_LOST`).
pub const RETURN_PENDING_MAX: u32 = 256;

/// What the entry program keeps for the return probe: the record built so
/// far.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ReturnPending {
    pub record: HookRecord,
    pub data: [u8; RETURN_DATA_MAX],
}

/// Value of the hook map, keyed by the attach cookie (a tracepoint's id,
/// or `UPROBE_COOKIE` with a uprobe's hook number): the hooks it serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookSet {
    pub count: u32,
    pub _pad: u32,
    pub hooks: [HookSpec; HOOKS_PER_ATTACH],
}

/// Argument flag (in its length word): the value was cut.
pub const ARG_TRUNCATED: u32 = 1 << 31;
/// Argument flag: a path's walk stopped before the root (too deep).
pub const ARG_PATH_CUT: u32 = 1 << 29;
/// Argument flag: the value could not be read.
pub const ARG_ERROR: u32 = 1 << 30;
/// The length bits of an argument's length word.
pub const ARG_LEN_MASK: u32 = 0xffff;

/// A hook's record. `data_len` bytes of arguments follow, each an 8-byte
/// word (length in the low bits, `ARG_*` flags in the high ones) and its
/// bytes padded to 8; integers are 8 bytes, as read (`size` bytes of them
/// meaningful), sign extension is user space's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookRecord {
    pub header: RecordHeader,
    pub hook_id: u32,
    pub pid: u32,
    pub tid: u32,
    pub data_len: u32,
    /// The selector that matched at entry (for hooks with selectors): the
    /// return side follows it, as Tetragon's does.
    pub selector: u32,
    /// The actions taken at entry and at return, as Tetragon's
    /// `KprobeAction` numbers (`ACTION_*`); 0 where no selector ran.
    pub action: u16,
    pub return_action: u16,
    /// Frames of the kernel stack, then of the user stack, at the end of
    /// the data (8 bytes each, after the arguments), for a `Post` that
    /// asked for them.
    pub kernel_frames: u16,
    pub user_frames: u16,
    pub _pad: u32,
}

/// Key of the exec-time map: one process image on this kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecTimeKey {
    pub pid: u32,
    /// `task->self_exec_id` after the exec.
    pub exec_seq: u32,
    pub start_boottime: u64,
}

/// Entries of the exec-time map. It only has to carry a time from the
/// first sensor's program to the others' within one exec, so a small LRU
/// suffices.
pub const EXEC_TIMES_ENTRIES: u32 = 4096;

/// Byte offsets of every kernel struct field the programs read, resolved
/// from the running kernel's BTF at start-up and passed in as a read-only
/// global, so nothing depends on the build machine's kernel layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_start_boottime: u32,
    pub task_real_cred: u32,
    pub task_loginuid: u32,
    pub task_mm: u32,
    pub task_fs: u32,
    pub task_cgroups: u32,
    pub task_signal: u32,
    pub task_exit_code: u32,
    pub signal_live: u32,
    pub cred_uid: u32,
    pub cred_gid: u32,
    pub cred_euid: u32,
    pub cred_egid: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub fs_root: u32,
    pub fs_pwd: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_parent: u32,
    pub dentry_name: u32,
    pub qstr_name: u32,
    pub vfsmount_root: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub mount_mnt: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_name: u32,
    pub kernfs_node_id: u32,
    pub binprm_filename: u32,
    /// 1 when `task_loginuid` is valid (CONFIG_AUDITSYSCALL).
    pub has_loginuid: u32,
    /// Feature switches: collect credentials / namespaces.
    pub collect_creds: u32,
    pub collect_ns: u32,
    /// 1 when the kernel has time namespaces (5.6+).
    pub has_time_ns: u32,
    pub cred_suid: u32,
    pub cred_sgid: u32,
    pub cred_fsuid: u32,
    pub cred_fsgid: u32,
    pub cred_securebits: u32,
    pub cred_cap_inheritable: u32,
    pub cred_cap_permitted: u32,
    pub cred_cap_effective: u32,
    pub cred_cap_ambient: u32,
    pub cred_user_ns: u32,
    pub user_ns_level: u32,
    pub user_ns_owner: u32,
    pub user_ns_group: u32,
    pub user_ns_inum: u32,
    pub task_nsproxy: u32,
    pub task_thread_pid: u32,
    pub nsproxy_uts: u32,
    pub nsproxy_ipc: u32,
    pub nsproxy_mnt: u32,
    pub nsproxy_pid_for_children: u32,
    pub nsproxy_net: u32,
    pub nsproxy_time: u32,
    pub nsproxy_time_for_children: u32,
    pub nsproxy_cgroup: u32,
    pub uts_inum: u32,
    pub ipc_inum: u32,
    pub mnt_inum: u32,
    pub pid_ns_inum: u32,
    pub net_inum: u32,
    pub time_inum: u32,
    pub cgroup_ns_inum: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_size: u32,
    pub upid_ns: u32,
    pub binprm_file: u32,
    pub file_inode: u32,
    pub inode_mode: u32,
    pub inode_uid: u32,
    pub inode_gid: u32,
    pub inode_ino: u32,
    pub inode_nlink: u32,
    pub task_self_exec_id: u32,
    /// For policy path arguments.
    pub file_f_path: u32,
    pub dentry_inode: u32,
    pub policy_inode_mode: u32,
    /// The sensor's own pid: policy hooks skip its threads, so a policy on
    /// writes or sends cannot feed on the sensor's own output.
    pub own_tgid: u32,
    /// For `sock` arguments (`struct sock`, its `sock_common`); 0 where the
    /// kernel lacks the field (`has_sock_v6` 0: no IPv6 addresses).
    pub sock_family: u32,
    pub sock_state: u32,
    pub sock_sport: u32,
    pub sock_dport: u32,
    pub sock_saddr: u32,
    pub sock_daddr: u32,
    pub sock_saddr6: u32,
    pub sock_daddr6: u32,
    pub has_sock_v6: u32,
    pub sock_type: u32,
    pub sock_protocol: u32,
    pub sock_mark: u32,
    pub sock_priority: u32,
    /// For `fd` arguments: `task->files`, `files->fdt`, `fdt->max_fds`,
    /// `fdt->fd`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub _pad_fd: u32,
}

const _: () = assert!(core::mem::size_of::<RecordHeader>() == 16);
const _: () = assert!(core::mem::size_of::<ExitRecord>() == 40);
const _: () = assert!(core::mem::size_of::<CloneRecord>() == 48);
const _: () = assert!(core::mem::size_of::<ExecTimeKey>() == 16);
const _: () = assert!(core::mem::size_of::<ArgSpec>() == 12);
const _: () = assert!(core::mem::size_of::<HookSpec>() == 8 + 12 * HOOK_MAX_ARGS + 12 + 8);
const _: () = assert!(core::mem::size_of::<ScopeKey>() == 16);
const _: () = assert!(core::mem::size_of::<HookSet>() == 8 + 88 * HOOKS_PER_ATTACH);
const _: () = assert!(core::mem::size_of::<ReturnPending>() == 48 + RETURN_DATA_MAX);
const _: () = assert!(core::mem::size_of::<PathHead>() == 8);
const _: () = assert!(core::mem::size_of::<SockInfo>() == 72);
const _: () = assert!(core::mem::size_of::<CredArg>() == 16 + core::mem::size_of::<CredInfo>());
const _: () = assert!(core::mem::size_of::<HookRecord>() == 48);
const _: () = assert!(HOOK_DATA_SIZE.is_power_of_two());
const _: () = assert!(HOOKS_PER_ATTACH.is_power_of_two());
const _: () = assert!(HOOK_MAX_ARGS * (8 + HOOK_ARG_BYTES) < HOOK_DATA_SIZE);
const _: () = assert!(HOOK_STRING_MAX <= HOOK_ARG_BYTES);
const _: () = assert!(core::mem::size_of::<CredInfo>() == 10 * 4 + 4 * 8);
const _: () = assert!(core::mem::size_of::<NsInfo>() == NS_COUNT * 4);
const _: () = assert!(core::mem::size_of::<FileInfo>() == 8 + 4 * 4);
const _: () = assert!(
    core::mem::size_of::<ExecRecord>()
        == 16
            + 8 * 4
            + 3 * 8
            + 8 * 4
            + core::mem::size_of::<CredInfo>()
            + core::mem::size_of::<NsInfo>()
            + core::mem::size_of::<FileInfo>()
            + FILENAME_SIZE
            + ARGS_SIZE
            + CWD_SIZE
            + NAME_READ
            + CGROUP_NAME_SIZE
);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 103 * 4);

impl KernelOffsets {
    /// All zero: the placeholder the kernel object is built with.
    // SAFETY: every field is a u32, for which zero is valid.
    pub const ZERO: KernelOffsets = unsafe { core::mem::zeroed() };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, made of integers and byte arrays with
    // no padding (checked by the size asserts above); any bit pattern is valid.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HookSet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ScopeKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SelectorSet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ActionCounts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StringKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Binary {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Chain {}
}

// --- Selectors: in-kernel filters and actions of a hook -------------------

/// Selectors a hook may have, arg filters a selector may have (per side:
/// `matchArgs`, `matchReturnArgs`), integer values per filter (4 ranges
/// take 8), pids per `matchPIDs` and actions per side, as Tetragon bounds
/// them.
pub const SELECTORS_PER_HOOK: usize = 5;
/// Room for selectors in a hook's set: a power of two, so that an index
/// the kernel reads back is masked into bounds (an older verifier loses a
/// compared bound once the value has been spilled).
pub const SELECTOR_SLOTS: usize = 8;
pub const SELECTOR_ARG_FILTERS: usize = 5;
pub const FILTER_INT_VALUES: usize = 8;
pub const SELECTOR_PIDS: usize = 4;
pub const SELECTOR_ACTIONS: usize = 3;

/// `ArgFilterSpec::op`. Integer operators compare the argument's value;
/// string operators look the argument's bytes up in `STRINGS`.
pub const OP_INT_EQUAL: u8 = 1;
pub const OP_INT_NOT_EQUAL: u8 = 2;
pub const OP_GT: u8 = 3;
pub const OP_LT: u8 = 4;
pub const OP_MASK: u8 = 5;
pub const OP_IN_RANGE: u8 = 6;
pub const OP_NOT_IN_RANGE: u8 = 7;
pub const OP_STR_EQUAL: u8 = 8;
pub const OP_STR_NOT_EQUAL: u8 = 9;
pub const OP_PREFIX: u8 = 10;
pub const OP_NOT_PREFIX: u8 = 11;
pub const OP_POSTFIX: u8 = 12;
pub const OP_NOT_POSTFIX: u8 = 13;

/// Socket operators (on a `sock` argument's `SockInfo`), from
/// `OP_SOCK_FIRST` on: ports against ranges (values in pairs), privileged
/// ports (below 1024), addresses in `STRINGS` (family and address bytes
/// under the filter's number, a CIDR's bits as the prefix), and protocol,
/// family and state against values.
pub const OP_SOCK_FIRST: u8 = 32;
pub const OP_SPORT: u8 = 32;
pub const OP_NOT_SPORT: u8 = 33;
pub const OP_DPORT: u8 = 34;
pub const OP_NOT_DPORT: u8 = 35;
pub const OP_SPORT_PRIV: u8 = 36;
pub const OP_NOT_SPORT_PRIV: u8 = 37;
pub const OP_DPORT_PRIV: u8 = 38;
pub const OP_NOT_DPORT_PRIV: u8 = 39;
pub const OP_SADDR: u8 = 40;
pub const OP_NOT_SADDR: u8 = 41;
pub const OP_DADDR: u8 = 42;
pub const OP_NOT_DADDR: u8 = 43;
pub const OP_PROTOCOL: u8 = 44;
pub const OP_FAMILY: u8 = 45;
pub const OP_STATE: u8 = 46;

/// Bytes a string value may have, per operator: what fits a `StringKey`
/// after the filter number (and, for `Equal`, the 2-byte length), and
/// Tetragon's bound for suffixes (reversed in the kernel byte by byte).
pub const STRING_KEY_DATA: usize = 256;
pub const STRING_EQUAL_MAX: usize = STRING_KEY_DATA - 6;
pub const STRING_PREFIX_MAX: usize = STRING_KEY_DATA - 4;
pub const STRING_POSTFIX_MAX: usize = 127;
/// String values across all hooks.
pub const STRING_VALUES_MAX: u32 = 16384;

/// One `matchArgs` / `matchReturnArgs` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArgFilterSpec {
    pub op: u8,
    /// The argument's position in the record (the return value comes
    /// after the declared arguments).
    pub arg: u8,
    /// 64 minus the argument's bits: integers are cut to their type's
    /// bits (and sign-extended when `signed`) before comparing.
    pub shift: u8,
    pub signed: u8,
    pub nvalues: u8,
    /// 1: a string operator on a path argument, which compares the path
    /// root first (`ForwardPath`), as events show it.
    pub path: u8,
    pub _pad: [u8; 2],
    /// String operators: this filter's number in `STRINGS` keys.
    pub strings: u32,
    pub _pad2: u32,
    /// Integer values; ranges as (low, high) pairs, both included.
    pub values: [u64; FILTER_INT_VALUES],
}

/// `PidFilterSpec::op` and `BinaryFilterSpec::op` (0: no filter).
pub const OP_IN: u8 = 1;
pub const OP_NOT_IN: u8 = 2;
/// `PidFilterSpec::flags`: compare the pid in the task's pid namespace.
pub const PID_NAMESPACE: u8 = 1 << 0;
/// `PidFilterSpec::flags`: an ancestor's pid passes too (`followForks`).
pub const PID_FOLLOW_FORKS: u8 = 1 << 1;
/// Generations `followForks` and `followChildren` look back through (the
/// live parent chain, as the kernel has it).
pub const FOLLOW_GENERATIONS: usize = 12;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidFilterSpec {
    pub op: u8,
    pub flags: u8,
    pub nvalues: u8,
    pub _pad: u8,
    pub values: [u32; SELECTOR_PIDS],
}

/// `matchBinaries`: `op` is a string operator on the exec'd binary's path
/// (`In` is `OP_STR_EQUAL`), 0 for none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BinaryFilterSpec {
    pub op: u8,
    /// `followChildren`: an ancestor's binary passes too.
    pub follow: u8,
    pub _pad: [u8; 2],
    pub strings: u32,
}

/// Actions, as Tetragon's `KprobeAction` numbers.
pub const ACTION_POST: u32 = 1;
pub const ACTION_SIGKILL: u32 = 3;
pub const ACTION_OVERRIDE: u32 = 5;
pub const ACTION_NOPOST: u32 = 9;
pub const ACTION_SIGNAL: u32 = 10;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActionSpec {
    pub kind: u32,
    /// `Signal`: the signal number; `Override`: the error, as the
    /// function's (negative) return value's low 32 bits.
    pub signal: u32,
    /// `Post` with `rateLimit`: at most one event per this many
    /// milliseconds for the same arguments (the first `RATE_ARG_BYTES` of
    /// each) in the scope (`RATE_SCOPE_*`); 0 for no limit.
    pub rate_ms: u32,
    pub rate_scope: u32,
    /// `Post`: the stacks the event carries (`STACK_*`).
    pub stacks: u32,
}

/// `ActionSpec::stacks`: the kernel's stack (`kernelStackTrace`).
pub const STACK_KERNEL: u32 = 1 << 0;
/// `ActionSpec::stacks`: the user stack (`userStackTrace`).
pub const STACK_USER: u32 = 1 << 1;
/// Frames of a stack an event carries at most (the kernel's
/// `PERF_MAX_STACK_DEPTH`, as Tetragon takes).
pub const STACK_FRAMES: usize = 127;

/// `ActionSpec::rate_scope`: the same thread, process, or anywhere.
pub const RATE_SCOPE_THREAD: u32 = 0;
pub const RATE_SCOPE_PROCESS: u32 = 1;
pub const RATE_SCOPE_GLOBAL: u32 = 2;
/// Bytes of each argument a rate limit tells events apart by (Tetragon's).
pub const RATE_ARG_BYTES: usize = 40;
/// Distinct (hook, selector, scope, arguments) a rate limit remembers at
/// once (an LRU map: past it, the oldest is forgotten and may post again).
pub const RATE_KEYS_MAX: u32 = 8192;

/// A key of `RATE_LIMITS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateKey {
    pub hook_id: u32,
    pub selector: u32,
    /// The thread or process id, or 0 for the global scope.
    pub scope_id: u64,
    pub args: [u8; RATE_ARG_BYTES * HOOK_MAX_ARGS],
}

/// `matchNamespaces` entries per selector (ANDed), values per entry (ORed).
pub const SELECTOR_NAMESPACES: usize = 4;
pub const NAMESPACE_VALUES: usize = 4;

/// One `matchNamespaces` entry: the task's namespace `kind` (`NS_*`) is
/// (`OP_IN`) or is not (`OP_NOT_IN`) one of `values` (inode numbers).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceFilterSpec {
    pub op: u8,
    pub kind: u8,
    pub nvalues: u8,
    pub _pad: u8,
    pub values: [u32; NAMESPACE_VALUES],
}

/// `matchCapabilities` entries per selector (ANDed).
pub const SELECTOR_CAPABILITIES: usize = 3;
/// `CapabilityFilterSpec::set`.
pub const CAPS_EFFECTIVE: u8 = 0;
pub const CAPS_INHERITABLE: u8 = 1;
pub const CAPS_PERMITTED: u8 = 2;

/// One `matchCapabilities` entry: the task's `set` holds (`OP_IN`) or
/// lacks (`OP_NOT_IN`) any capability of `mask`; with `namespace_only`, a
/// task in the host's user namespace passes no such entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapabilityFilterSpec {
    pub op: u8,
    pub set: u8,
    pub namespace_only: u8,
    pub _pad: [u8; 5],
    pub mask: u64,
}

/// `matchNamespaceChanges`: any (`OP_IN`) or none (`OP_NOT_IN`) of the
/// namespaces in `kinds` (a bit per `NS_*`) differs from the process's at
/// its exec.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceChangeSpec {
    pub op: u8,
    pub _pad: u8,
    pub kinds: u16,
    pub _pad2: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelectorSpec {
    pub nargs: u8,
    pub nrets: u8,
    pub nactions: u8,
    pub nret_actions: u8,
    pub pids: PidFilterSpec,
    pub binary: BinaryFilterSpec,
    pub namespaces: [NamespaceFilterSpec; SELECTOR_NAMESPACES],
    pub nnamespaces: u8,
    pub ncapabilities: u8,
    pub _pad: [u8; 6],
    pub capabilities: [CapabilityFilterSpec; SELECTOR_CAPABILITIES],
    /// `matchParentBinaries`: on the parent's exec'd path.
    pub parent_binary: BinaryFilterSpec,
    /// `matchNamespaceChanges`: one entry.
    pub namespace_change: NamespaceChangeSpec,
    /// `matchCapabilityChanges`: one entry (`op` 0 for none).
    pub capability_change: CapabilityFilterSpec,
    pub args: [ArgFilterSpec; SELECTOR_ARG_FILTERS],
    pub rets: [ArgFilterSpec; SELECTOR_ARG_FILTERS],
    pub actions: [ActionSpec; SELECTOR_ACTIONS],
    pub ret_actions: [ActionSpec; SELECTOR_ACTIONS],
}

/// Where a tracepoint's run is in its hooks (per CPU): the tracepoint
/// program handles one hook per run and tail-calls itself (or, through the
/// selector program, comes back) for the next, so its verification does not
/// grow with the hooks an attach serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// Non-zero: the next run continues this chain (else it starts at hook
    /// 0), in the reader at slot `active - 1` of `READER_TP`
    /// (`READER_PLAIN` or `READER_PATHS`).
    pub active: u32,
    pub next: u32,
    pub cookie: u64,
}

/// `READER_TP` slots: the shared tracepoint program, and the one with the
/// path reader (for hooks that read descriptors).
pub const READER_PLAIN: u32 = 0;
pub const READER_PATHS: u32 = 1;

/// `SelectorSet::flags`: enforcement actions are counted, not taken.
pub const SELECT_MONITOR: u32 = 1 << 0;
/// `SelectorSet::flags`: a return probe sends the event.
pub const SELECT_RETURN: u32 = 1 << 1;
/// `SelectorSet::flags`: some selector reads the task's namespaces.
pub const SELECT_NAMESPACES: u32 = 1 << 2;
/// `SelectorSet::flags`: bit `SELECT_PATHS_SHIFT + p` says a filter
/// compares the path at record position `p`, which the selector program
/// then writes out root first (see `ForwardPath`) before any filter runs.
pub const SELECT_PATHS_SHIFT: u32 = 8;

/// Bytes of a `ForwardPath`: a path argument's `CWD_SIZE + NAME_READ`
/// bytes at most, with room past them so that a component copied to a
/// masked offset stays inside.
pub const FORWARD_PATH_SIZE: usize = 2 * CWD_SIZE + 2 * NAME_READ;

/// A path argument as filters compare it: `/etc/passwd`, built from the
/// record's components, which are stored leaf first (`passwd\0etc\0`, as
/// the walk up the dentries finds them). Per CPU, one per record position.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ForwardPath {
    pub len: u32,
    /// 0 when the argument could not be read or its path was cut (it is
    /// deeper than the walk goes): such a path passes no filter.
    pub ok: u32,
    pub bytes: [u8; FORWARD_PATH_SIZE],
}

/// An `Override` the selector program decided for the current thread's
/// call: the override program attached after the hook's entry program
/// takes it (by thread) and makes the function return `ret`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingOverride {
    pub hook_id: u32,
    pub _pad: u32,
    pub ret: i64,
}

/// Hook map key of a hook's override program (with its hook number).
pub const OVERRIDE_COOKIE: u64 = 1 << 37;
/// Threads with an override pending at once (an LRU map).
pub const OVERRIDES_MAX: u32 = 1024;

/// A hook's selectors, in `SELECTORS` by hook number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelectorSet {
    pub count: u32,
    pub flags: u32,
    /// The first `count` (at most `SELECTORS_PER_HOOK`) are used.
    pub selectors: [SelectorSpec; SELECTOR_SLOTS],
}

/// Per selector, what its actions did (Tetragon's
/// `TracingPolicyActionCounters`, in this order).
pub const COUNT_POST: usize = 0;
pub const COUNT_SIGNAL: usize = 1;
pub const COUNT_MONITOR_SIGNAL: usize = 2;
pub const COUNT_NOPOST: usize = 3;
/// Events a `rateLimit` held back (no Tetragon counter has them).
pub const COUNT_RATE_LIMITED: usize = 4;
pub const COUNT_OVERRIDE: usize = 5;
pub const COUNT_MONITOR_OVERRIDE: usize = 6;
pub const COUNTS_PER_SELECTOR: usize = 8;

/// A hook's action counts, in `ACTION_COUNTS` by hook number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActionCounts {
    pub counts: [u64; SELECTOR_SLOTS * COUNTS_PER_SELECTOR],
}

impl Default for ActionCounts {
    fn default() -> Self {
        ActionCounts { counts: [0; SELECTOR_SLOTS * COUNTS_PER_SELECTOR] }
    }
}

/// A key of `STRINGS`, the LPM trie of every string filter's values:
/// `data` is the filter's number (big-endian), then for `Equal` the
/// value's length (2 bytes, big-endian) and the value, for `Prefix` the
/// value, for `Postfix` the value reversed. A lookup's `prefix_len` covers
/// the argument's bytes only, so any entry that matches is a prefix of it
/// (with the length, an equal string).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringKey {
    pub prefix_len: u32,
    pub data: [u8; STRING_KEY_DATA],
}

/// Live processes' binaries (the exec'd path, as events show it), for
/// `matchBinaries`.
pub const BINARY_SIZE: usize = 256;
pub const BINARIES_MAX: u32 = 32768;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binary {
    pub len: u32,
    pub _pad: u32,
    pub path: [u8; BINARY_SIZE],
    /// The capabilities (effective, inheritable, permitted) and namespaces
    /// (by `NS_*`) the process had at its exec, for the `Changes` filters.
    pub caps: [u64; 3],
    pub namespaces: [u32; NS_COUNT],
}

const _: () = assert!(core::mem::size_of::<ArgFilterSpec>() == 16 + 8 * FILTER_INT_VALUES);
const _: () = assert!(core::mem::size_of::<PidFilterSpec>() == 4 + 4 * SELECTOR_PIDS);
const _: () = assert!(core::mem::size_of::<NamespaceFilterSpec>() == 4 + 4 * NAMESPACE_VALUES);
const _: () = assert!(core::mem::size_of::<CapabilityFilterSpec>() == 16);
const _: () = assert!(
    core::mem::size_of::<SelectorSpec>()
        == 32
            + 20 * SELECTOR_NAMESPACES
            + 8
            + 16 * SELECTOR_CAPABILITIES
            + 8
            + 8
            + 16
            + 2 * 80 * SELECTOR_ARG_FILTERS
            + 2 * 20 * SELECTOR_ACTIONS
);
const _: () = assert!(core::mem::size_of::<SelectorSet>() == 8 + 1120 * SELECTOR_SLOTS);
const _: () = assert!(core::mem::size_of::<RateKey>() == 16 + RATE_ARG_BYTES * HOOK_MAX_ARGS);
const _: () = assert!(SELECTOR_SLOTS.is_power_of_two() && SELECTORS_PER_HOOK <= SELECTOR_SLOTS);
const _: () = assert!(COUNTS_PER_SELECTOR.is_power_of_two());
const _: () = assert!(core::mem::size_of::<StringKey>() == 4 + STRING_KEY_DATA);
const _: () = assert!(core::mem::size_of::<Binary>() == 8 + BINARY_SIZE + 24 + 4 * NS_COUNT);
const _: () = assert!(BINARY_SIZE <= FILENAME_SIZE);
