//! A checked policy against one kernel: what each hook's program reads.
//! The kernel is asked through [`KernelView`] (the sensor implements it
//! over tracefs and BTF; tests over captured files), so this stays free of
//! I/O. Refusals name the field's path, as parsing does.
//!
//! Tracepoints: the event must exist, each `args[].index` must be one of
//! its format's fields (common fields counted), `type: auto` resolves from
//! the field, and an explicit type must fit the field (a string or buffer
//! needs a pointer, `__data_loc` or array field; a number needs a scalar).

use node_sensor_common::{
    ArgSpec, HOOK_MAX_ARGS, HOOK_RETURN, HOOK_SELECT, HookSpec, NO_INDIRECT, READ_BPRM, READ_CRED, READ_FD, READ_FILE,
    READ_KERNEL_BUFFER, READ_KERNEL_STRING, READ_NOTHING, READ_PATH, READ_RECORD_BYTES, READ_RECORD_STRING,
    READ_SCALAR, READ_SOCK, READ_USER_BUFFER, READ_USER_STRING,
};

use crate::PolicyError;
use crate::schema::{ArgType, TracingPolicy};
use crate::select::{self, HookShape, Selectors};
use crate::tracefs::{Field, Format};

/// What the compiler needs to know of the kernel it compiles for.
pub trait KernelView {
    /// The format of tracepoint `subsystem/event`; `Ok(None)` when the
    /// kernel has no such tracepoint, `Err` when it cannot be read.
    fn tracepoint_format(&self, subsystem: &str, event: &str) -> Result<Option<Format>, String>;
    /// Kernel function `name` as its BTF declares it; `Ok(None)` when the
    /// kernel's BTF has no such function.
    fn function(&self, _name: &str) -> Result<Option<Function>, String> {
        Err("no kernel BTF to look functions up in".into())
    }
    /// The host's namespace of `kind` (`host_ns` in `matchNamespaces`),
    /// as its inode number.
    fn host_namespace(&self, _kind: crate::schema::NamespaceName) -> Result<u32, String> {
        Err("the host's namespaces are not known here".into())
    }
}

/// A kernel function's parameters, from BTF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub params: Vec<Param>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    /// The C type as BTF spells it (`const struct file *`).
    pub c_type: String,
    pub kind: ParamKind,
}

/// What a parameter is, as far as argument types care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamKind {
    /// An integer (or enum or bool) of this many bytes.
    Int {
        size: u32,
    },
    /// A pointer to `to` (`struct file`, `char`, `void`; typedefs and
    /// qualifiers stripped).
    Pointer {
        to: String,
    },
    Other,
}

/// How a program reads one argument out of a tracepoint's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// An integer of the field's size, sign-extended when `signed`.
    Scalar {
        signed: bool,
    },
    /// A user-space string the field points to.
    UserString,
    /// A kernel string the field points to.
    KernelString,
    /// Kernel bytes the field points to, as many as an integer says.
    KernelBuffer {
        len_offset: u32,
        len_size: u32,
    },
    /// The path of the `struct file *`, `struct path *` or
    /// `struct linux_binprm *` (its file) the field points to.
    File,
    Path,
    Bprm,
    /// A `struct sock *`'s addresses, ports and state.
    Sock,
    /// A `struct cred *`'s ids, capabilities and user namespace.
    Cred,
    /// A string stored in the record (`__data_loc`).
    RecordString,
    /// A user-space buffer the field points to, its length the integer
    /// field `sizeArgIndex` names (1-based field number, as in the policy).
    UserBuffer {
        len_offset: u32,
        len_size: u32,
    },
    /// `count` integers of `size / count` bytes each, in the record.
    Array {
        count: u32,
    },
    /// A file descriptor number, resolved to its path through the task's
    /// file table.
    Fd,
    /// A syscall number (`syscall64`), with the ABI.
    SyscallId,
    /// Nothing (`nop`).
    Nothing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookArg {
    /// The policy's `index` (a tracepoint's format field number, a user
    /// function's argument number).
    pub index: u32,
    /// The tracepoint field, or the register the argument arrives in.
    pub field: String,
    /// For a syscall's arguments: where the pointer to the syscall's saved
    /// registers lies (the wrapper's first argument); `offset` counts there.
    pub indirect: Option<u32>,
    pub offset: u32,
    pub size: u32,
    /// The policy's type, `auto` resolved.
    pub arg_type: ArgType,
    pub read: Read,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracepointHook {
    pub subsystem: String,
    pub event: String,
    /// The tracepoint's id on this kernel (its records' `common_type`).
    pub id: u32,
    pub args: Vec<HookArg>,
    pub selectors: Selectors,
}

impl TracepointHook {
    /// Whether an argument is a descriptor resolved to its path (which
    /// takes the tracepoint program with the path reader).
    pub fn reads_fd(&self) -> bool {
        self.args.iter().any(|a| a.read == Read::Fd)
    }

    /// What the generic tracepoint program reads for this hook, which the
    /// sensor numbers `hook_id`.
    pub fn spec(&self, hook_id: u32) -> HookSpec {
        with_selectors(spec_of(&self.args, hook_id), &self.selectors)
    }
}

fn with_selectors(mut spec: HookSpec, selectors: &Selectors) -> HookSpec {
    if !selectors.is_empty() {
        spec.flags |= HOOK_SELECT;
    }
    spec
}

fn spec_of(args: &[HookArg], hook_id: u32) -> HookSpec {
    {
        let mut spec = HookSpec { hook_id, nargs: args.len().min(HOOK_MAX_ARGS) as u32, ..Default::default() };
        for (slot, a) in spec.args.iter_mut().zip(args) {
            // `compile` checked that offsets and sizes fit.
            let (read, len_offset, len_size) = match a.read {
                Read::Scalar { .. } | Read::SyscallId => (READ_SCALAR, 0, 0),
                Read::Fd => (READ_FD, 0, 0),
                Read::Cred => (READ_CRED, 0, 0),
                Read::UserString => (READ_USER_STRING, 0, 0),
                Read::RecordString => (READ_RECORD_STRING, 0, 0),
                Read::KernelString => (READ_KERNEL_STRING, 0, 0),
                Read::UserBuffer { len_offset, len_size } => (READ_USER_BUFFER, len_offset, len_size),
                Read::KernelBuffer { len_offset, len_size } => (READ_KERNEL_BUFFER, len_offset, len_size),
                Read::Array { .. } => (READ_RECORD_BYTES, 0, 0),
                Read::File => (READ_FILE, 0, 0),
                Read::Path => (READ_PATH, 0, 0),
                Read::Bprm => (READ_BPRM, 0, 0),
                Read::Sock => (READ_SOCK, 0, 0),
                Read::Nothing => (READ_NOTHING, 0, 0),
            };
            *slot = ArgSpec {
                offset: a.offset as u16,
                size: a.size as u16,
                read,
                len_size: len_size as u8,
                len_offset: len_offset as u16,
                indirect: a.indirect.map_or(NO_INDIRECT, |i| i as u16),
                _pad: 0,
            };
        }
        spec
    }
}

/// One attach point of a user function: the binary, the symbol (or a raw
/// offset into the file), and each argument's register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UprobeHook {
    pub path: String,
    /// `None` for a hook at `offset` without a symbol.
    pub symbol: Option<String>,
    pub offset: u64,
    /// Where in the policy: `spec.uprobes[i]`, and `.symbols[j]` or
    /// `.offsets[j]` for this attach point.
    pub at: String,
    pub args: Vec<HookArg>,
    pub selectors: Selectors,
}

impl UprobeHook {
    /// What the generic uprobe program reads for this hook.
    pub fn spec(&self, hook_id: u32) -> HookSpec {
        with_selectors(spec_of(&self.args, hook_id), &self.selectors)
    }
}

/// A kernel function's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KprobeHook {
    /// The function as policies and events name it (`call`).
    pub call: String,
    /// The symbol attached to (`__x64_sys_openat` for `sys_openat` with
    /// `syscall: true`).
    pub symbol: String,
    pub args: Vec<HookArg>,
    /// With `return: true`: how the return value is read (its register,
    /// `returnArg`'s type).
    pub ret: Option<HookArg>,
    pub selectors: Selectors,
}

impl KprobeHook {
    /// What the generic kprobe programs read for this hook.
    pub fn spec(&self, hook_id: u32) -> HookSpec {
        let mut spec = with_selectors(spec_of(&self.args, hook_id), &self.selectors);
        if let Some(ret) = &self.ret {
            spec.flags |= HOOK_RETURN;
            spec.ret = spec_of(std::slice::from_ref(ret), hook_id).args[0];
        }
        spec
    }
}

/// Where a function's return value is (`pt_regs` offset).
#[cfg(target_arch = "x86_64")]
const RETURN_REGISTER: (&str, u32) = ("ax", 80);
#[cfg(not(target_arch = "x86_64"))]
const RETURN_REGISTER: (&str, u32) = ("x0", 0);

/// What a policy asks of this kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub tracepoints: Vec<TracepointHook>,
    pub uprobes: Vec<UprobeHook>,
    pub kprobes: Vec<KprobeHook>,
}

/// Compiles `policy` (already checked by [`crate::parse`]) for `kernel`.
pub fn compile(policy: &TracingPolicy, kernel: &dyn KernelView) -> Result<Compiled, PolicyError> {
    let mut tracepoints = Vec::with_capacity(policy.spec.tracepoints.len());
    for (i, t) in policy.spec.tracepoints.iter().enumerate() {
        let at = format!("spec.tracepoints[{i}]");
        if t.raw {
            return Err(PolicyError::at(format!("{at}.raw"), "raw tracepoints are not supported by Vigil yet"));
        }
        let format = kernel
            .tracepoint_format(&t.subsystem, &t.event)
            .map_err(|e| PolicyError::at(format!("{at}.event"), format!("cannot read the tracepoint's format: {e}")))?
            .ok_or_else(|| PolicyError::at(format!("{at}.event"), "this kernel has no such tracepoint"))?;
        if t.args.len() > HOOK_MAX_ARGS {
            return Err(PolicyError::at(
                format!("{at}.args"),
                format!("at most {HOOK_MAX_ARGS} arguments on a tracepoint"),
            ));
        }
        let mut args = Vec::with_capacity(t.args.len());
        for (j, a) in t.args.iter().enumerate() {
            let here = format!("{at}.args[{j}]");
            let field = format.fields.get(a.index as usize).ok_or_else(|| {
                PolicyError::at(
                    format!("{here}.index"),
                    format!(
                        "the tracepoint has {} fields (0..{})",
                        format.fields.len(),
                        format.fields.len().saturating_sub(1)
                    ),
                )
            })?;
            let arg_type = match a.arg_type {
                ArgType::Auto => {
                    field.auto_type().map_err(|e| PolicyError::at(format!("{here}.type"), e.to_string()))?
                }
                given => given,
            };
            let mut read = read_for(arg_type, field, a.size_arg_index)
                .map_err(|reason| PolicyError::at(format!("{here}.type"), reason))?;
            if let Read::UserBuffer { .. } = read {
                let length = (a.size_arg_index as usize)
                    .checked_sub(1)
                    .filter(|_| t.args.iter().any(|s| s.index + 1 == a.size_arg_index))
                    .and_then(|i| format.fields.get(i))
                    .ok_or_else(|| PolicyError::at(format!("{here}.sizeArgIndex"), "names no argument of this hook"))?;
                if !length.is_scalar() || ![1, 2, 4, 8].contains(&length.size) {
                    return Err(PolicyError::at(
                        format!("{here}.sizeArgIndex"),
                        format!("the size must be an integer field; field {} is {}", length.name, shape(length)),
                    ));
                }
                read = Read::UserBuffer { len_offset: length.offset, len_size: length.size };
            }
            if matches!(read, Read::Scalar { .. } | Read::SyscallId | Read::Fd) && ![1, 2, 4, 8].contains(&field.size) {
                return Err(PolicyError::at(
                    format!("{here}.type"),
                    format!("an integer must be 1, 2, 4 or 8 bytes; field {} has {}", field.name, field.size),
                ));
            }
            if field.offset + field.size > u32::from(u16::MAX) {
                return Err(PolicyError::at(format!("{here}.index"), "the field lies past 64 KiB of the record"));
            }
            args.push(HookArg {
                index: a.index,
                indirect: None,
                field: field.name.clone(),
                offset: field.offset,
                size: field.size,
                arg_type,
                read,
            });
        }
        let shape = HookShape { args: &args, ret: None, kind: "tracepoint", kernel };
        let selectors = select::compile(&format!("{at}.selectors"), &t.selectors, &shape)?;
        tracepoints.push(TracepointHook {
            subsystem: t.subsystem.clone(),
            event: t.event.clone(),
            id: format.id,
            args,
            selectors,
        });
    }
    let uprobes = compile_uprobes(policy, kernel)?;
    let kprobes = compile_kprobes(policy, kernel)?;
    Ok(Compiled { tracepoints, uprobes, kprobes })
}

/// The prefix the architecture's syscall wrappers carry.
#[cfg(target_arch = "aarch64")]
const SYSCALL_PREFIX: &str = "__arm64_";
#[cfg(not(target_arch = "aarch64"))]
const SYSCALL_PREFIX: &str = "__x64_";

/// Where a syscall's arguments lie in its saved registers (`pt_regs`).
#[cfg(target_arch = "x86_64")]
const SYSCALL_REGISTERS: &[(&str, u32)] = &[("di", 112), ("si", 104), ("dx", 96), ("r10", 56), ("r8", 72), ("r9", 64)];
#[cfg(not(target_arch = "x86_64"))]
const SYSCALL_REGISTERS: &[(&str, u32)] = ARG_REGISTERS;

fn compile_kprobes(policy: &TracingPolicy, kernel: &dyn KernelView) -> Result<Vec<KprobeHook>, PolicyError> {
    let mut hooks = Vec::with_capacity(policy.spec.kprobes.len());
    for (i, k) in policy.spec.kprobes.iter().enumerate() {
        let at = format!("spec.kprobes[{i}]");
        let unsupported = [("returnArgAction", k.return_arg_action.is_some()), ("data", !k.data.is_empty())];
        if let Some((field, _)) = unsupported.iter().find(|(_, given)| *given) {
            return Err(PolicyError::at(format!("{at}.{field}"), "not supported on kprobes by Vigil yet"));
        }
        if k.args.len() > HOOK_MAX_ARGS {
            return Err(PolicyError::at(format!("{at}.args"), format!("at most {HOOK_MAX_ARGS} arguments")));
        }
        let symbol = if k.syscall && !k.call.starts_with(SYSCALL_PREFIX) {
            format!("{SYSCALL_PREFIX}{}", k.call)
        } else {
            k.call.clone()
        };
        let function = kernel
            .function(&symbol)
            .map_err(|e| PolicyError::at(format!("{at}.call"), format!("cannot look the function up: {e}")))?
            .ok_or_else(|| {
                let hint = if k.syscall { " (with syscall: true, the syscall wrapper)" } else { "" };
                PolicyError::at(format!("{at}.call"), format!("the kernel's BTF has no such function{hint}"))
            })?;
        let mut args = Vec::with_capacity(k.args.len());
        for (j, a) in k.args.iter().enumerate() {
            let here = format!("{at}.args[{j}]");
            let arg = if k.syscall { syscall_arg(&here, a)? } else { function_arg(&here, a, &function, &k.args)? };
            args.push(arg);
        }
        let paths = args.iter().any(|a| matches!(a.read, Read::File | Read::Path | Read::Bprm | Read::Fd));
        if paths && args.iter().any(|a| matches!(a.read, Read::Sock | Read::Cred)) {
            return Err(PolicyError::at(
                format!("{at}.args"),
                "a kprobe reads either sockets and credentials or files, paths and descriptors in Vigil yet, not both",
            ));
        }
        let ret = match (&k.return_arg, k.is_return) {
            (Some(r), true) => {
                let size = int_size(r.arg_type).ok_or_else(|| {
                    PolicyError::at(
                        format!("{at}.returnArg.type"),
                        "only integer return values are supported by Vigil yet",
                    )
                })?;
                let (name, offset) = RETURN_REGISTER;
                Some(HookArg {
                    index: r.index,
                    field: name.to_owned(),
                    indirect: None,
                    offset,
                    size,
                    arg_type: r.arg_type,
                    read: Read::Scalar { signed: false },
                })
            }
            _ => None,
        };
        let shape = HookShape { args: &args, ret: ret.as_ref(), kind: "kprobe", kernel };
        let selectors = select::compile(&format!("{at}.selectors"), &k.selectors, &shape)?;
        hooks.push(KprobeHook { call: k.call.clone(), symbol, args, ret, selectors });
    }
    Ok(hooks)
}

/// A syscall's argument: in its saved registers (the wrapper's first
/// argument points to them), read from user memory where it is a pointer.
fn syscall_arg(here: &str, a: &crate::schema::Arg) -> Result<HookArg, PolicyError> {
    let (name, offset) = SYSCALL_REGISTERS.get(a.index as usize).copied().ok_or_else(|| {
        PolicyError::at(format!("{here}.index"), format!("a syscall has at most {} arguments", SYSCALL_REGISTERS.len()))
    })?;
    let (read, size) = match a.arg_type {
        t if int_size(t).is_some() => (Read::Scalar { signed: false }, int_size(t).unwrap_or(8)),
        ArgType::String | ArgType::Filename => (Read::UserString, 8),
        ArgType::Fd => (Read::Fd, 4),
        ArgType::CharBuf if a.size_arg_index > 0 => {
            let (_, len_offset) = SYSCALL_REGISTERS
                .get(a.size_arg_index as usize - 1)
                .copied()
                .ok_or_else(|| PolicyError::at(format!("{here}.sizeArgIndex"), "names no argument of the syscall"))?;
            (Read::UserBuffer { len_offset, len_size: 8 }, 8)
        }
        ArgType::Nop => (Read::Nothing, 0),
        _ => {
            return Err(PolicyError::at(
                format!("{here}.type"),
                "this type is not supported on syscall arguments by Vigil yet",
            ));
        }
    };
    let (_, first) = ARG_REGISTERS.first().copied().unwrap_or(("", 0));
    Ok(HookArg {
        index: a.index,
        field: name.to_owned(),
        indirect: Some(first),
        offset,
        size,
        arg_type: a.arg_type,
        read,
    })
}

/// A kernel function's argument, checked against its BTF parameter.
fn function_arg(
    here: &str,
    a: &crate::schema::Arg,
    function: &Function,
    all: &[crate::schema::Arg],
) -> Result<HookArg, PolicyError> {
    let param = function.params.get(a.index as usize).ok_or_else(|| {
        PolicyError::at(
            format!("{here}.index"),
            format!(
                "the function has {} parameters (0..{})",
                function.params.len(),
                function.params.len().saturating_sub(1)
            ),
        )
    })?;
    let (name, offset) = ARG_REGISTERS.get(a.index as usize).copied().ok_or_else(|| {
        PolicyError::at(
            format!("{here}.index"),
            format!("a kprobe reads the first {} parameters (those passed in registers)", ARG_REGISTERS.len()),
        )
    })?;
    let pointer_to = |want: &str| matches!(&param.kind, ParamKind::Pointer { to } if to == want);
    let misfit = |what: &str| {
        Err(PolicyError::at(format!("{here}.type"), format!("{what}; parameter {} is {}", param.name, param.c_type)))
    };
    let (read, size) = match a.arg_type {
        ArgType::Nop => (Read::Nothing, 0),
        t if int_size(t).is_some() => match (&param.kind, t) {
            (ParamKind::Int { .. }, _) => (Read::Scalar { signed: false }, int_size(t).unwrap_or(8)),
            (ParamKind::Pointer { .. }, ArgType::Uint64 | ArgType::Ulong | ArgType::SizeT) => {
                (Read::Scalar { signed: false }, 8)
            }
            _ => return misfit("a number needs an integer parameter"),
        },
        ArgType::String | ArgType::Filename if pointer_to("char") => (Read::KernelString, 8),
        ArgType::String | ArgType::Filename => return misfit("a string needs a char pointer"),
        ArgType::CharBuf if a.size_arg_index > 0 && matches!(param.kind, ParamKind::Pointer { .. }) => {
            let n = a.size_arg_index as usize - 1;
            let (_, len_offset) = ARG_REGISTERS
                .get(n)
                .copied()
                .filter(|_| all.iter().any(|s| s.index as usize == n) || function.params.get(n).is_some())
                .ok_or_else(|| PolicyError::at(format!("{here}.sizeArgIndex"), "names no parameter of the function"))?;
            (Read::KernelBuffer { len_offset, len_size: 8 }, 8)
        }
        ArgType::CharBuf => return misfit("char_buf needs a pointer and sizeArgIndex"),
        ArgType::File if pointer_to("file") => (Read::File, 8),
        ArgType::File => return misfit("file needs a struct file pointer"),
        ArgType::Path if pointer_to("path") => (Read::Path, 8),
        ArgType::Path => return misfit("path needs a struct path pointer"),
        ArgType::LinuxBinprm if pointer_to("linux_binprm") => (Read::Bprm, 8),
        ArgType::LinuxBinprm => return misfit("linux_binprm needs a struct linux_binprm pointer"),
        ArgType::Sock if pointer_to("sock") => (Read::Sock, 8),
        ArgType::Sock => return misfit("sock needs a struct sock pointer"),
        ArgType::Cred if pointer_to("cred") => (Read::Cred, 8),
        ArgType::Cred => return misfit("cred needs a struct cred pointer"),
        ArgType::Fd if matches!(param.kind, ParamKind::Int { .. }) => (Read::Fd, 4),
        ArgType::Fd => return misfit("fd needs an integer parameter (the descriptor number)"),
        _ => {
            return Err(PolicyError::at(format!("{here}.type"), "this type is not supported on kprobes by Vigil yet"));
        }
    };
    Ok(HookArg { index: a.index, field: name.to_owned(), indirect: None, offset, size, arg_type: a.arg_type, read })
}

/// Where a user function's first arguments arrive: `pt_regs` offsets of
/// the argument registers, by the C calling convention.
#[cfg(target_arch = "x86_64")]
const ARG_REGISTERS: &[(&str, u32)] = &[("di", 112), ("si", 104), ("dx", 96), ("cx", 88), ("r8", 72), ("r9", 64)];
#[cfg(target_arch = "aarch64")]
const ARG_REGISTERS: &[(&str, u32)] =
    &[("x0", 0), ("x1", 8), ("x2", 16), ("x3", 24), ("x4", 32), ("x5", 40), ("x6", 48), ("x7", 56)];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARG_REGISTERS: &[(&str, u32)] = &[];

/// The C size of an integer type (what of its register is the value).
pub(crate) fn int_size(arg_type: ArgType) -> Option<u32> {
    use ArgType::*;
    Some(match arg_type {
        Int8 | Sint8 | Uint8 => 1,
        Int16 | Sint16 | Uint16 => 2,
        Int | Int32 | Sint32 | Uint32 => 4,
        Long | Int64 | Sint64 | Uint64 | Ulong | SizeT => 8,
        _ => return None,
    })
}

fn compile_uprobes(policy: &TracingPolicy, kernel: &dyn KernelView) -> Result<Vec<UprobeHook>, PolicyError> {
    let mut hooks = Vec::new();
    for (i, u) in policy.spec.uprobes.iter().enumerate() {
        let at = format!("spec.uprobes[{i}]");
        let unsupported = [
            ("addrs", !u.addrs.is_empty()),
            ("refCtrOffsets", !u.ref_ctr_offsets.is_empty()),
            ("return", u.is_return),
            ("returnArg", u.return_arg.is_some()),
            ("data", !u.data.is_empty()),
            ("btfPath", u.btf_path.is_some()),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, given)| *given) {
            return Err(PolicyError::at(format!("{at}.{field}"), "not supported on uprobes by Vigil yet"));
        }
        if !u.path.starts_with('/') {
            return Err(PolicyError::at(format!("{at}.path"), "must be an absolute path"));
        }
        if u.args.len() > HOOK_MAX_ARGS {
            return Err(PolicyError::at(format!("{at}.args"), format!("at most {HOOK_MAX_ARGS} arguments")));
        }
        let mut args = Vec::with_capacity(u.args.len());
        for (j, a) in u.args.iter().enumerate() {
            let here = format!("{at}.args[{j}]");
            let register = |index: u32, what: &str| {
                ARG_REGISTERS.get(index as usize).copied().ok_or_else(|| {
                    PolicyError::at(
                        format!("{here}.{what}"),
                        format!(
                            "a uprobe reads the first {} arguments (those passed in registers)",
                            ARG_REGISTERS.len()
                        ),
                    )
                })
            };
            let (name, offset) = register(a.index, "index")?;
            let (read, size) = match a.arg_type {
                t if int_size(t).is_some() => (Read::Scalar { signed: false }, int_size(t).unwrap_or(8)),
                ArgType::String | ArgType::Filename => (Read::UserString, 8),
                ArgType::CharBuf if a.size_arg_index > 0 => {
                    let (_, len_offset) = register(a.size_arg_index - 1, "sizeArgIndex")?;
                    (Read::UserBuffer { len_offset, len_size: 8 }, 8)
                }
                ArgType::CharBuf => {
                    return Err(PolicyError::at(format!("{here}.sizeArgIndex"), "char_buf needs sizeArgIndex"));
                }
                ArgType::Nop => (Read::Nothing, 0),
                _ => {
                    return Err(PolicyError::at(
                        format!("{here}.type"),
                        "this type is not supported on uprobes by Vigil yet",
                    ));
                }
            };
            args.push(HookArg {
                index: a.index,
                field: name.to_owned(),
                indirect: None,
                offset,
                size,
                arg_type: a.arg_type,
                read,
            });
        }
        let shape = HookShape { args: &args, ret: None, kind: "uprobe", kernel };
        let selectors = select::compile(&format!("{at}.selectors"), &u.selectors, &shape)?;
        for (j, symbol) in u.symbols.iter().enumerate() {
            hooks.push(UprobeHook {
                path: u.path.clone(),
                symbol: Some(symbol.clone()),
                offset: 0,
                at: format!("{at}.symbols[{j}]"),
                args: args.clone(),
                selectors: selectors.clone(),
            });
        }
        for (j, &offset) in u.offsets.iter().enumerate() {
            hooks.push(UprobeHook {
                path: u.path.clone(),
                symbol: None,
                offset,
                at: format!("{at}.offsets[{j}]"),
                args: args.clone(),
                selectors: selectors.clone(),
            });
        }
    }
    Ok(hooks)
}

/// How `arg_type` is read from `field`, or why it does not fit.
fn read_for(arg_type: ArgType, field: &Field, size_arg_index: u32) -> Result<Read, String> {
    let pointer = field.is_pointer();
    let data_loc = field.c_type.starts_with("__data_loc");
    let scalar = field.is_scalar();
    let fits = |ok: bool, what: &str, read: Read| {
        if ok { Ok(read) } else { Err(format!("{what}; field {} is {}", field.name, shape(field))) }
    };
    use ArgType::*;
    match arg_type {
        Int | Sint32 | Int32 | Sint16 | Int16 | Sint8 | Int8 | Long | Sint64 | Int64 => {
            fits(scalar, "a signed number needs a scalar field", Read::Scalar { signed: true })
        }
        Uint32 | Uint16 | Uint8 | Uint64 | Ulong | SizeT => {
            fits(scalar || pointer, "an unsigned number needs a scalar field", Read::Scalar { signed: false })
        }
        String | Filename if data_loc => Ok(Read::RecordString),
        String | Filename => fits(pointer, "a string needs a pointer or __data_loc field", Read::UserString),
        CharBuf if size_arg_index > 0 => {
            fits(pointer, "a buffer needs a pointer field", Read::UserBuffer { len_offset: 0, len_size: 0 })
        }
        CharBuf => {
            Err(format!("char_buf needs sizeArgIndex (or type string); field {} is {}", field.name, shape(field)))
        }
        ConstBuf => match field.array {
            Some(count) if count > 0 => Ok(Read::Array { count }),
            _ => Err(format!("const_buf needs an array field; field {} is {}", field.name, shape(field))),
        },
        Fd => fits(scalar, "fd needs a scalar field (the descriptor number)", Read::Fd),
        Syscall64 => fits(scalar && field.size == 8, "syscall64 needs an 8-byte scalar field", Read::SyscallId),
        Nop => Ok(Read::Nothing),
        _ => Err(format!(
            "this type is not supported on tracepoints by Vigil yet (field {} is {})",
            field.name,
            shape(field)
        )),
    }
}

fn shape(field: &Field) -> String {
    match field.array {
        Some(n) => format!("{} [{n}]", field.c_type),
        None => field.c_type.clone(),
    }
}
