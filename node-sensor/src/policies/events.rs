//! A hook's record, with its process from the cache, to the event Tetragon
//! sends for it (`process_tracepoint`, `process_uprobe`), arguments typed
//! as Tetragon types them: `nop` arguments left out, labels only where the
//! policy gave them (never on tracepoint arguments).

use proto::Timestamp;
use proto::tetragon::kprobe_argument::Arg;
use proto::tetragon::{
    GetEventsResponse, KprobeAction, KprobeArgument, KprobeFile, KprobeLinuxBinprm, KprobePath, ProcessKprobe,
    ProcessTracepoint, ProcessUprobe, StackTraceEntry, SyscallId, get_events_response::Event,
};

use super::hooks::{HookInfo, HookPoint, Shown};
use crate::cache::Lineage;
use crate::decode::{HookData, RawArg};

/// The ABI name of a 64-bit syscall number on this architecture.
#[cfg(target_arch = "aarch64")]
const ABI: &str = "arm64";
#[cfg(not(target_arch = "aarch64"))]
const ABI: &str = "x64";

/// The low `size` bytes of an integer argument, zero-extended.
fn unsigned(raw: &RawArg, size: u8) -> u64 {
    let mut word = [0u8; 8];
    let n = raw.bytes.len().min(8);
    word[..n].copy_from_slice(&raw.bytes[..n]);
    let v = u64::from_le_bytes(word);
    match size {
        1..=7 => v & ((1u64 << (8 * u32::from(size))) - 1),
        _ => v,
    }
}

/// The same, sign-extended from `size` bytes.
fn signed(raw: &RawArg, size: u8) -> i64 {
    let v = unsigned(raw, size);
    match size {
        1..=7 => {
            let shift = 64 - 8 * u32::from(size);
            ((v << shift) as i64) >> shift
        }
        _ => v as i64,
    }
}

/// A path argument's bytes (a `PathHead`, then components leaf first) as
/// the path and its `ls -l` permission string.
fn path_of(raw: &RawArg) -> (String, String) {
    let Some((head, names)) = raw.bytes.split_at_checked(8) else {
        return (String::new(), String::new());
    };
    let mode = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let at_root = head[4] != 0;
    let mut path = String::new();
    for c in names.split(|b| *b == 0).filter(|c| !c.is_empty()).collect::<Vec<_>>().iter().rev() {
        path.push('/');
        path.push_str(&String::from_utf8_lossy(c));
    }
    if path.is_empty() && at_root {
        path.push('/');
    }
    (path, permission(mode))
}

/// `i_mode` as `ls -l` prints it (`-rwxr-xr-x`), as Tetragon reports it.
pub fn permission(mode: u32) -> String {
    if mode == 0 {
        return String::new();
    }
    let kind = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o020000 => 'c',
        0o060000 => 'b',
        0o010000 => 'p',
        0o140000 => 's',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    for (shift, special, set_char) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (mode & special != 0, x) {
            (true, true) => set_char,
            (true, false) => set_char.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// One argument as Tetragon shows it; `None` for one left out.
pub fn argument(shown: Shown, raw: &RawArg) -> Option<KprobeArgument> {
    let arg = match shown {
        Shown::Int { size } => Arg::IntArg(signed(raw, size) as i32),
        Shown::Uint { size } => Arg::UintArg(unsigned(raw, size) as u32),
        Shown::Long { size } => Arg::LongArg(signed(raw, size)),
        Shown::Size { size } => Arg::SizeArg(unsigned(raw, size)),
        Shown::String => Arg::StringArg(String::from_utf8_lossy(&raw.bytes).into_owned()),
        Shown::Bytes => Arg::BytesArg(raw.bytes.clone()),
        Shown::SyscallId => Arg::SyscallId(SyscallId { id: unsigned(raw, 8) as u32, abi: ABI.to_owned() }),
        Shown::File => {
            let (path, permission) = path_of(raw);
            Arg::FileArg(KprobeFile { path, permission, ..Default::default() })
        }
        Shown::Path => {
            let (path, permission) = path_of(raw);
            Arg::PathArg(KprobePath { path, permission, ..Default::default() })
        }
        Shown::Bprm => {
            let (path, permission) = path_of(raw);
            Arg::LinuxBinprmArg(KprobeLinuxBinprm { path, permission, ..Default::default() })
        }
        Shown::Sock => Arg::SockArg(super::sock::sock_arg(&raw.bytes)),
        Shown::Cred => Arg::ProcessCredentialsArg(super::cred::cred_arg(&raw.bytes)),
        Shown::Hidden => return None,
    };
    Some(KprobeArgument { arg: Some(arg), label: String::new() })
}

/// An action the kernel reports, as the event's field: none (no selector
/// ran) is `Post`, as Tetragon reports hooks without selectors.
fn action_of(raw: u16) -> i32 {
    match raw {
        0 => KprobeAction::Post as i32,
        n => KprobeAction::try_from(i32::from(n)).unwrap_or(KprobeAction::Unknown) as i32,
    }
}

/// The event for one hit. `lineage` is the process's as the cache has it
/// now; the hit's thread is put on the process, as Tetragon does.
/// `stacks`: the kernel's and the user stack trace, as resolved (kprobes
/// only).
pub fn hook_event(
    node: &str,
    time: Timestamp,
    hit: &HookData,
    info: &HookInfo,
    lineage: Lineage,
    stacks: (Vec<StackTraceEntry>, Vec<StackTraceEntry>),
) -> GetEventsResponse {
    let mut process = lineage.process;
    process.tid = Some(hit.tid.into());
    let (raw_args, raw_ret) = match hit.args.split_last() {
        Some((ret, args)) if hit.flags & node_sensor_common::RECORD_HAS_RETURN != 0 => (args, Some(ret)),
        _ => (&hit.args[..], None),
    };
    let ret = info.ret.zip(raw_ret).and_then(|(shown, raw)| argument(shown, raw));
    let args = info
        .args
        .iter()
        .zip(raw_args)
        .filter_map(|(a, raw)| argument(a.shown, raw).map(|arg| KprobeArgument { label: a.label.clone(), ..arg }))
        .collect();
    let event = match &info.point {
        HookPoint::Tracepoint { subsystem, event } => Event::ProcessTracepoint(ProcessTracepoint {
            process: Some(process),
            parent: lineage.parent,
            subsys: subsystem.clone(),
            event: event.clone(),
            args,
            policy_name: info.policy.clone(),
            action: action_of(hit.action),
            message: info.message.clone(),
            tags: info.tags.clone(),
            ancestors: lineage.ancestors,
        }),
        HookPoint::Kprobe { function } => Event::ProcessKprobe(ProcessKprobe {
            process: Some(process),
            parent: lineage.parent,
            function_name: function.clone(),
            args,
            r#return: ret,
            action: action_of(hit.action),
            policy_name: info.policy.clone(),
            // Tetragon sets it on every kprobe event, return probe or not.
            return_action: action_of(hit.return_action),
            message: info.message.clone(),
            tags: info.tags.clone(),
            ancestors: lineage.ancestors,
            kernel_stack_trace: stacks.0,
            user_stack_trace: stacks.1,
            ..Default::default()
        }),
        HookPoint::Uprobe { path, symbol, offset } => Event::ProcessUprobe(ProcessUprobe {
            process: Some(process),
            parent: lineage.parent,
            path: path.clone(),
            symbol: symbol.clone(),
            policy_name: info.policy.clone(),
            message: info.message.clone(),
            args,
            tags: info.tags.clone(),
            ancestors: lineage.ancestors,
            offset: *offset,
            action: action_of(hit.action),
            ..Default::default()
        }),
    };
    GetEventsResponse { event: Some(event), node_name: node.to_owned(), time: Some(time), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v: u64) -> RawArg {
        RawArg { bytes: v.to_le_bytes().to_vec(), ..Default::default() }
    }

    #[test]
    fn integers_are_typed_as_tetragon_types_them() {
        // dfd = AT_FDCWD in an 8-byte field, read as int32.
        let dfd = raw((-100i64) as u64);
        assert_eq!(argument(Shown::Int { size: 8 }, &dfd).and_then(|a| a.arg), Some(Arg::IntArg(-100)));
        // A 4-byte int's upper bytes are not the value's.
        let small = raw(0xdead_beef_ffff_fff6);
        assert_eq!(argument(Shown::Int { size: 4 }, &small).and_then(|a| a.arg), Some(Arg::IntArg(-10)));
        assert_eq!(argument(Shown::Uint { size: 2 }, &small).and_then(|a| a.arg), Some(Arg::UintArg(0xfff6)));
        assert_eq!(argument(Shown::Size { size: 8 }, &raw(438)).and_then(|a| a.arg), Some(Arg::SizeArg(438)));
        assert_eq!(argument(Shown::Long { size: 4 }, &small).and_then(|a| a.arg), Some(Arg::LongArg(-10)));
        assert_eq!(
            argument(Shown::SyscallId, &raw(12)).and_then(|a| a.arg),
            Some(Arg::SyscallId(SyscallId { id: 12, abi: ABI.into() }))
        );
        assert_eq!(argument(Shown::Hidden, &raw(1)), None, "nop is left out");
    }

    #[test]
    fn paths_come_back_root_first_with_their_permission() {
        let mut bytes = 0o100755u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(b"busybox-copy\0bin\0");
        let raw = RawArg { bytes, ..Default::default() };
        assert_eq!(
            argument(Shown::File, &raw).and_then(|a| a.arg),
            Some(Arg::FileArg(KprobeFile {
                path: "/bin/busybox-copy".into(),
                permission: "-rwxr-xr-x".into(),
                ..Default::default()
            }))
        );
        assert_eq!(permission(0o104755), "-rwsr-xr-x");
        assert_eq!(permission(0o041777), "drwxrwxrwt");
        assert_eq!(permission(0o100644), "-rw-r--r--");
        let root = RawArg { bytes: [0o040755u32.to_le_bytes(), 1u32.to_le_bytes()].concat(), ..Default::default() };
        assert_eq!(path_of(&root), ("/".to_owned(), "drwxr-xr-x".to_owned()));
        assert_eq!(path_of(&RawArg { bytes: vec![1, 2], ..Default::default() }), (String::new(), String::new()));
    }

    #[test]
    fn short_or_failed_reads_give_zero_not_a_panic() {
        let empty = RawArg { error: true, ..Default::default() };
        assert_eq!(argument(Shown::Int { size: 4 }, &empty).and_then(|a| a.arg), Some(Arg::IntArg(0)));
        assert_eq!(argument(Shown::String, &empty).and_then(|a| a.arg), Some(Arg::StringArg(String::new())));
    }
}
