//! Ring-buffer bytes to typed records. Nothing is reinterpreted before its
//! kind and exact length are checked; anything else is an error the caller
//! counts and skips.

use node_sensor_common::{
    ARG_ERROR, ARG_LEN_MASK, ARG_TRUNCATED, CloneRecord, CredInfo, ExecRecord, ExitRecord, FLAG_HAS_CREDS,
    FLAG_HAS_FILE, FLAG_HAS_NS, FileInfo, HOOK_DATA_SIZE, HOOK_MAX_ARGS, HookRecord, KIND_CLONE, KIND_EXEC, KIND_EXIT,
    KIND_HOOK, NS_COUNT, RecordHeader,
};

/// One decoded kernel record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Exec(Box<ExecData>),
    Exit(ExitRecord),
    Clone(CloneRecord),
    Hook(HookData),
}

/// A policy hook's hit with its arguments as the kernel read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookData {
    /// `RECORD_*` flags (`RECORD_HAS_RETURN`: the last argument is the
    /// function's return value).
    pub flags: u32,
    pub ktime: u64,
    pub hook_id: u32,
    pub pid: u32,
    pub tid: u32,
    /// The actions the selectors took at entry and return, as Tetragon's
    /// `KprobeAction` numbers (0: no selector ran).
    pub action: u16,
    pub return_action: u16,
    pub args: Vec<RawArg>,
    /// Return addresses of the kernel's and the user stack, innermost
    /// first (empty unless the `Post` asked for them).
    pub kernel_stack: Vec<u64>,
    pub user_stack: Vec<u64>,
}

/// One argument's bytes (an integer: 8 bytes, little-endian, as read).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawArg {
    pub bytes: Vec<u8>,
    /// The kernel kept only the first part.
    pub truncated: bool,
    /// The kernel could not read it.
    pub error: bool,
}

/// An exec with its variable-length parts copied out of the ring buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecData {
    pub flags: u32,
    pub ktime: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    pub auid: u32,
    pub start_boottime: u64,
    pub parent_start_boottime: u64,
    pub cgroup_id: u64,
    pub filename: Vec<u8>,
    /// NUL-separated argv as the kernel holds it.
    pub args: Vec<u8>,
    /// Path components, leaf first.
    pub cwd_components: Vec<Vec<u8>>,
    pub cwd_is_root: bool,
    pub exec_seq: u32,
    pub nspid: u32,
    pub cgroup_name: Vec<u8>,
    /// Present when credential collection is on.
    pub creds: Option<CredInfo>,
    /// Present when namespace collection is on.
    pub namespaces: Option<[u32; NS_COUNT]>,
    pub file: Option<FileInfo>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than a header")]
    Short(usize),
    #[error("record kind {kind} has {got} bytes, expected {want}")]
    BadLength { kind: u32, got: usize, want: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("hook record's arguments overrun it at argument {0}")]
    BadArgument(usize),
}

/// Copies a `T` out of `bytes` after checking the length.
fn read_exact<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    let want = std::mem::size_of::<T>();
    if bytes.len() != want {
        return Err(DecodeError::BadLength { kind, got: bytes.len(), want });
    }
    // SAFETY: the length is exactly size_of::<T>(), T is a repr(C) record of
    // integers and byte arrays valid for any bit pattern, and
    // read_unaligned makes no alignment assumption.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn bounded(buf: &[u8], len: u32) -> &[u8] {
    &buf[..(len as usize).min(buf.len())]
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let header: RecordHeader = match bytes.get(..std::mem::size_of::<RecordHeader>()) {
        Some(h) => read_exact(h, 0)?,
        None => return Err(DecodeError::Short(bytes.len())),
    };
    match header.kind {
        KIND_EXEC => {
            let r: ExecRecord = read_exact(bytes, KIND_EXEC)?;
            let cwd = bounded(&r.cwd, r.cwd_len);
            let cwd_components = cwd.split(|b| *b == 0).filter(|c| !c.is_empty()).map(<[u8]>::to_vec).collect();
            Ok(Record::Exec(Box::new(ExecData {
                flags: r.header.flags,
                ktime: r.header.ktime,
                pid: r.pid,
                tid: r.tid,
                ppid: r.ppid,
                uid: r.uid,
                euid: r.euid,
                gid: r.gid,
                egid: r.egid,
                auid: r.auid,
                start_boottime: r.start_boottime,
                parent_start_boottime: r.parent_start_boottime,
                cgroup_id: r.cgroup_id,
                filename: bounded(&r.filename, r.filename_len).to_vec(),
                args: bounded(&r.args, r.args_len).to_vec(),
                cwd_components,
                cwd_is_root: r.cwd_is_root != 0,
                exec_seq: r.exec_seq,
                nspid: r.nspid,
                cgroup_name: bounded(&r.cgroup, r.cgroup_len).to_vec(),
                creds: (r.header.flags & FLAG_HAS_CREDS != 0).then_some(r.creds),
                namespaces: (r.header.flags & FLAG_HAS_NS != 0).then_some(r.namespaces.inum),
                file: (r.header.flags & FLAG_HAS_FILE != 0).then_some(r.file),
            })))
        }
        KIND_EXIT => Ok(Record::Exit(read_exact(bytes, KIND_EXIT)?)),
        KIND_CLONE => Ok(Record::Clone(read_exact(bytes, KIND_CLONE)?)),
        KIND_HOOK => decode_hook(bytes).map(Record::Hook),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// A hook record: the fixed part, then each argument's length word and
/// bytes (padded to 8) until `data_len` is used up.
fn decode_hook(bytes: &[u8]) -> Result<HookData, DecodeError> {
    let fixed = std::mem::size_of::<HookRecord>();
    let head = bytes.get(..fixed).ok_or(DecodeError::BadLength { kind: KIND_HOOK, got: bytes.len(), want: fixed })?;
    let r: HookRecord = read_exact(head, KIND_HOOK)?;
    let data_len = r.data_len as usize;
    if data_len > HOOK_DATA_SIZE || bytes.len() != fixed + data_len {
        return Err(DecodeError::BadLength { kind: KIND_HOOK, got: bytes.len(), want: fixed + data_len });
    }
    // The stacks are the data's tail: kernel frames, then user frames.
    let stack_bytes = (usize::from(r.kernel_frames) + usize::from(r.user_frames)) * 8;
    let Some(args_len) = data_len.checked_sub(stack_bytes) else {
        return Err(DecodeError::BadLength { kind: KIND_HOOK, got: data_len, want: stack_bytes });
    };
    let (mut data, stacks) = bytes[fixed..].split_at(args_len);
    let frames: Vec<u64> =
        stacks.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect();
    let (kernel_stack, user_stack) = frames.split_at(usize::from(r.kernel_frames));
    let mut args = Vec::new();
    while !data.is_empty() {
        let i = args.len();
        // One more for a return value.
        if i == HOOK_MAX_ARGS + 1 {
            return Err(DecodeError::BadArgument(i));
        }
        let word = data.get(..8).ok_or(DecodeError::BadArgument(i))?;
        let word = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        let len = (word & ARG_LEN_MASK) as usize;
        let padded = (len + 7) & !7;
        let body = data.get(8..8 + padded).ok_or(DecodeError::BadArgument(i))?;
        args.push(RawArg {
            bytes: body[..len].to_vec(),
            truncated: word & ARG_TRUNCATED != 0,
            error: word & ARG_ERROR != 0,
        });
        data = &data[8 + padded..];
    }
    Ok(HookData {
        flags: r.header.flags,
        ktime: r.header.ktime,
        hook_id: r.hook_id,
        pid: r.pid,
        tid: r.tid,
        action: r.action,
        return_action: r.return_action,
        args,
        kernel_stack: kernel_stack.to_vec(),
        user_stack: user_stack.to_vec(),
    })
}

/// A record's bytes as the kernel writes them (tests build records).
#[cfg(test)]
pub(crate) fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: test-only view of a plain repr(C) record, read for its own size.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook_bytes(args: &[(u32, &[u8])]) -> Vec<u8> {
        let mut data = Vec::new();
        for (word, body) in args {
            data.extend_from_slice(&u64::from(*word).to_le_bytes());
            data.extend_from_slice(body);
            data.resize(data.len().next_multiple_of(8), 0);
        }
        let head = HookRecord {
            header: RecordHeader { kind: KIND_HOOK, flags: 0, ktime: 42 },
            hook_id: 7,
            pid: 100,
            tid: 101,
            data_len: data.len() as u32,
            selector: 0,
            action: 3,
            return_action: 0,
            kernel_frames: 0,
            user_frames: 0,
            _pad: 0,
        };
        let mut out = bytes_of(&head);
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn hook_records_decode_their_arguments() {
        let bytes = hook_bytes(&[(8, &257u64.to_le_bytes()), (5 | ARG_TRUNCATED, b"/tmp/"), (ARG_ERROR, b"")]);
        let Ok(Record::Hook(h)) = decode(&bytes) else { panic!("not a hook: {:?}", decode(&bytes)) };
        assert_eq!((h.ktime, h.hook_id, h.pid, h.tid, h.action, h.return_action), (42, 7, 100, 101, 3, 0));
        assert_eq!(
            h.args,
            [
                RawArg { bytes: 257u64.to_le_bytes().to_vec(), truncated: false, error: false },
                RawArg { bytes: b"/tmp/".to_vec(), truncated: true, error: false },
                RawArg { bytes: vec![], truncated: false, error: true },
            ]
        );
    }

    #[test]
    fn stacks_are_the_datas_tail() {
        let mut bytes = hook_bytes(&[(4, b"abcd")]);
        let frames = [0xffff_ffff_8100_0010u64, 0xffff_ffff_8100_0020, 0x7f00_0000_1234];
        for f in frames {
            bytes.extend_from_slice(&f.to_le_bytes());
        }
        let at = std::mem::offset_of!(HookRecord, data_len);
        let data_len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) + 24;
        bytes[at..at + 4].copy_from_slice(&data_len.to_le_bytes());
        let frames_at = std::mem::offset_of!(HookRecord, kernel_frames);
        bytes[frames_at..frames_at + 4].copy_from_slice(&[2, 0, 1, 0]);
        let Ok(Record::Hook(h)) = decode(&bytes) else { panic!("not a hook: {:?}", decode(&bytes)) };
        assert_eq!(h.args.len(), 1);
        assert_eq!((h.kernel_stack.as_slice(), h.user_stack.as_slice()), (&frames[..2], &frames[2..]));
        // More frames than the data holds.
        bytes[frames_at..frames_at + 4].copy_from_slice(&[200, 0, 0, 0]);
        assert!(matches!(decode(&bytes), Err(DecodeError::BadLength { kind: KIND_HOOK, .. })));
    }

    #[test]
    fn hook_records_that_overrun_are_refused() {
        // A length word claiming more bytes than the record holds.
        let mut bytes = hook_bytes(&[(4, b"abcd")]);
        let at = std::mem::size_of::<HookRecord>();
        bytes[at] = 200;
        assert_eq!(decode(&bytes), Err(DecodeError::BadArgument(0)));
        // data_len not matching the record's size.
        let mut bytes = hook_bytes(&[(4, b"abcd")]);
        bytes.push(0);
        assert!(matches!(decode(&bytes), Err(DecodeError::BadLength { kind: KIND_HOOK, .. })));
        // More arguments than a hook has.
        let seven: Vec<(u32, &[u8])> = (0..7).map(|_| (0, &b""[..])).collect();
        assert_eq!(decode(&hook_bytes(&seven)), Err(DecodeError::BadArgument(HOOK_MAX_ARGS + 1)));
        // Shorter than the fixed part.
        assert!(decode(&hook_bytes(&[])[..20]).is_err());
    }

    #[test]
    fn exit_and_clone_round_trip() {
        let exit = ExitRecord {
            header: RecordHeader { kind: KIND_EXIT, flags: 0, ktime: 7 },
            pid: 10,
            tid: 11,
            exit_code: 3 << 8,
            _pad: 0,
            start_boottime: 5,
        };
        assert_eq!(decode(&bytes_of(&exit)), Ok(Record::Exit(exit)));
        let clone = CloneRecord {
            header: RecordHeader { kind: KIND_CLONE, flags: 0, ktime: 9 },
            pid: 12,
            ppid: 10,
            start_boottime: 9,
            parent_start_boottime: 5,
            exec_seq: 3,
            nspid: 1,
        };
        assert_eq!(decode(&bytes_of(&clone)), Ok(Record::Clone(clone)));
    }

    #[test]
    fn exec_lengths_are_bounded_and_cwd_split() {
        // SAFETY: all-zero is a valid ExecRecord.
        let mut r: ExecRecord = unsafe { std::mem::zeroed() };
        r.header.kind = KIND_EXEC;
        r.filename[..7].copy_from_slice(b"/bin/sh");
        r.filename_len = 7;
        r.args[..8].copy_from_slice(b"sh\0-c\0x\0");
        r.args_len = 8;
        r.cwd[..8].copy_from_slice(b"tmp\0var\0");
        r.cwd_len = 8;
        r.cgroup_len = 100_000; // corrupt: must be clamped, not panic
        let Ok(Record::Exec(e)) = decode(&bytes_of(&r)) else { panic!("not an exec") };
        assert_eq!(e.filename, b"/bin/sh");
        assert_eq!(e.args, b"sh\0-c\0x\0");
        assert_eq!(e.cwd_components, vec![b"tmp".to_vec(), b"var".to_vec()]);
        assert_eq!(e.cgroup_name.len(), node_sensor_common::CGROUP_NAME_SIZE);
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let mut h = bytes_of(&RecordHeader { kind: 99, flags: 0, ktime: 0 });
        assert_eq!(decode(&h), Err(DecodeError::UnknownKind(99)));
        h[0] = KIND_EXIT as u8;
        assert_eq!(decode(&h), Err(DecodeError::BadLength { kind: KIND_EXIT, got: 16, want: 40 }));
    }
}
