//! Ring-buffer bytes to typed records. Nothing is reinterpreted before its
//! kind and exact length are checked; anything else is an error the caller
//! counts and skips.

use node_sensor_common::{
    CloneRecord, CredInfo, ExecRecord, ExitRecord, FLAG_HAS_CREDS, FLAG_HAS_FILE, FLAG_HAS_NS, FileInfo, KIND_CLONE,
    KIND_EXEC, KIND_EXIT, NS_COUNT, RecordHeader,
};

/// One decoded kernel record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Exec(Box<ExecData>),
    Exit(ExitRecord),
    Clone(CloneRecord),
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
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain repr(C) record.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
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
