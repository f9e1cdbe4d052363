//! Credentials, capabilities, namespaces and binary properties
//! (`--enable-process-cred`, `--enable-process-ns`) as Tetragon's messages.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use node_sensor_common::{self as k, CredInfo, FileInfo, NS_COUNT};
use proto::tetragon::{
    BinaryProperties, Capabilities, CapabilitiesType, FileProperties, InodeProperties, Namespace, Namespaces,
    ProcessCredentials, ProcessPrivilegesChanged, UserNamespace,
};

/// What the sensor collects beyond the basics, and the host's namespaces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collect {
    pub creds: bool,
    pub ns: bool,
    pub host: HostNamespaces,
}

/// `/proc/<pid>/ns/<name>` names in `NsInfo` index order.
pub const NS_NAMES: [&str; NS_COUNT] =
    ["uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time", "time_for_children", "cgroup", "user"];

/// The initial namespaces' inode numbers (those of pid 1), to decide `is_host`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostNamespaces {
    pub inum: [u32; NS_COUNT],
}

/// Inode numbers the kernel gives its initial namespaces (PROC_*_INIT_INO);
/// mnt and net have none fixed (0 here).
const INIT_INUMS: [u32; NS_COUNT] = [
    0xEFFF_FFFE, // uts
    0xEFFF_FFFF, // ipc
    0,           // mnt
    0xEFFF_FFFC, // pid
    0xEFFF_FFFC, // pid_for_children
    0,           // net
    0xEFFF_FFFA, // time
    0xEFFF_FFFA, // time_for_children
    0xEFFF_FFFB, // cgroup
    0xEFFF_FFFD, // user
];

impl HostNamespaces {
    /// pid 1's namespaces from `procfs`. Where pid 1's are unreadable (a
    /// sandboxed init), the kernel's fixed initial inode numbers are used,
    /// and for mnt and net, which have none, the sensor's own; each such
    /// fallback is returned as a warning naming the namespace.
    pub fn read(procfs: &Path) -> (Self, Vec<String>) {
        let mut inum = read_ns_inums(procfs, 1);
        let own = read_ns_inums(procfs, std::process::id());
        let mut warnings = Vec::new();
        for (i, name) in NS_NAMES.iter().enumerate() {
            if inum[i] != 0 || own[i] == 0 {
                continue;
            }
            if INIT_INUMS[i] != 0 {
                inum[i] = INIT_INUMS[i];
            } else {
                inum[i] = own[i];
                warnings.push(format!(
                    "cannot read /proc/1/ns/{name}; the sensor's own {name} namespace is taken as the host's"
                ));
            }
        }
        (Self { inum }, warnings)
    }
}

/// A process's namespace inode numbers from `/proc/<pid>/ns`.
pub fn read_ns_inums(procfs: &Path, pid: u32) -> [u32; NS_COUNT] {
    let mut out = [0; NS_COUNT];
    for (i, name) in NS_NAMES.iter().enumerate() {
        let path = procfs.join(pid.to_string()).join("ns").join(name);
        out[i] = std::fs::metadata(path).map(|m| m.ino() as u32).unwrap_or(0);
    }
    out
}

/// Tetragon's `Namespaces`; a namespace this kernel lacks (inum 0) is left out.
pub fn namespaces(inum: &[u32; NS_COUNT], host: &HostNamespaces) -> Namespaces {
    let ns = |i: usize| (inum[i] != 0).then(|| Namespace { inum: inum[i], is_host: inum[i] == host.inum[i] });
    Namespaces {
        uts: ns(k::NS_UTS),
        ipc: ns(k::NS_IPC),
        mnt: ns(k::NS_MNT),
        pid: ns(k::NS_PID),
        pid_for_children: ns(k::NS_PID_FOR_CHILDREN),
        net: ns(k::NS_NET),
        time: ns(k::NS_TIME),
        time_for_children: ns(k::NS_TIME_FOR_CHILDREN),
        cgroup: ns(k::NS_CGROUP),
        user: ns(k::NS_USER),
    }
}

/// Capability numbers set in a mask, as `CapabilitiesType` values.
pub fn cap_list(mask: u64) -> Vec<i32> {
    (0..64).filter(|b| mask & (1u64 << b) != 0).filter(|b| CapabilitiesType::try_from(*b).is_ok()).collect()
}

/// Bits of a mask that have no `CapabilitiesType` (a newer kernel's).
pub fn unknown_caps(mask: u64) -> u64 {
    (0..64).filter(|b| mask & (1u64 << b) != 0 && CapabilitiesType::try_from(*b).is_err()).fold(0, |m, b| m | 1 << b)
}

pub fn capabilities(c: &CredInfo) -> Capabilities {
    Capabilities {
        permitted: cap_list(c.cap_permitted),
        effective: cap_list(c.cap_effective),
        inheritable: cap_list(c.cap_inheritable),
    }
}

/// Ids as the kernel has them plus the rest of the credentials.
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
}

pub fn credentials(ids: &Ids, c: &CredInfo, host: &HostNamespaces) -> ProcessCredentials {
    let securebits = (0..8).map(|b| 1i32 << b).filter(|bit| c.securebits & (*bit as u32) != 0).collect();
    let user_ns = (c.user_ns_inum != 0 && c.user_ns_inum != host.inum[k::NS_USER]).then(|| UserNamespace {
        level: (c.user_ns_level >= 0).then(|| c.user_ns_level.into()),
        uid: Some(c.user_ns_owner.into()),
        gid: Some(c.user_ns_group.into()),
        ns: Some(Namespace { inum: c.user_ns_inum, is_host: false }),
    });
    ProcessCredentials {
        uid: Some(ids.uid.into()),
        gid: Some(ids.gid.into()),
        euid: Some(ids.euid.into()),
        egid: Some(ids.egid.into()),
        suid: Some(c.suid.into()),
        sgid: Some(c.sgid.into()),
        fsuid: Some(c.fsuid.into()),
        fsgid: Some(c.fsgid.into()),
        securebits,
        caps: None,
        user_ns,
    }
}

/// Credentials of a running process from `/proc/<pid>/status` (for the
/// start-up walk). `securebits` and the user namespace's level and owner
/// are not in procfs and stay unset.
pub fn creds_from_status(status: &str, user_ns_inum: u32) -> Option<(Ids, CredInfo)> {
    let four = |key: &str| -> Option<[u32; 4]> {
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        let v: Vec<u32> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        Some([*v.first()?, *v.get(1)?, *v.get(2)?, *v.get(3)?])
    };
    let hex = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let [uid, euid, suid, fsuid] = four("Uid:")?;
    let [gid, egid, sgid, fsgid] = four("Gid:")?;
    Some((
        Ids { uid, gid, euid, egid },
        CredInfo {
            suid,
            sgid,
            fsuid,
            fsgid,
            cap_inheritable: hex("CapInh:"),
            cap_permitted: hex("CapPrm:"),
            cap_effective: hex("CapEff:"),
            cap_ambient: hex("CapAmb:"),
            user_ns_inum,
            user_ns_level: -1,
            ..Default::default()
        },
    ))
}

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;

/// What the exec did to privileges, from the file's mode and owner and the
/// new credentials: a set-user-ID file whose owner became the effective uid
/// (and differs from the real uid) raised privileges; likewise set-group-ID;
/// and a non-root process holding permitted capabilities that are not
/// ambient got them from file capabilities. `file` is set only for a binary
/// with no links left (deleted, or a memfd: a fileless execution), with its
/// inode and link count and no path, as Tetragon sets it. `None` when
/// nothing changed and the file has links.
pub fn binary_properties(ids: &Ids, c: &CredInfo, file: &FileInfo) -> Option<BinaryProperties> {
    let mut changed = Vec::new();
    let setuid = (file.mode & S_ISUID != 0 && ids.euid == file.uid && ids.euid != ids.uid).then_some(file.uid);
    let setgid = (file.mode & S_ISGID != 0 && ids.egid == file.gid && ids.egid != ids.gid).then_some(file.gid);
    if setuid.is_some() {
        changed.push(ProcessPrivilegesChanged::PrivilegesRaisedExecFileSetuid as i32);
    }
    if setgid.is_some() {
        changed.push(ProcessPrivilegesChanged::PrivilegesRaisedExecFileSetgid as i32);
    }
    if ids.euid != 0 && c.cap_permitted & !c.cap_ambient != 0 {
        changed.push(ProcessPrivilegesChanged::PrivilegesRaisedExecFileCap as i32);
    }
    let deleted = file.nlink == 0 && file.ino != 0;
    if changed.is_empty() && !deleted {
        return None;
    }
    Some(BinaryProperties {
        setuid: setuid.map(Into::into),
        setgid: setgid.map(Into::into),
        privileges_changed: changed,
        file: deleted.then(|| FileProperties {
            inode: Some(InodeProperties { number: file.ino, links: Some(file.nlink.into()) }),
            path: String::new(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(uid: u32, euid: u32) -> Ids {
        Ids { uid, gid: 1000, euid, egid: 1000 }
    }

    #[test]
    fn procfs_status_credentials() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t0000000000200000\nCapAmb:\t0000000000000000\n";
        let (ids, c) = creds_from_status(status, 5).unwrap();
        assert_eq!((ids.uid, ids.euid, ids.gid, ids.egid), (1000, 0, 100, 100));
        assert_eq!((c.suid, c.fsuid, c.sgid), (0, 0, 100));
        assert_eq!(cap_list(c.cap_effective), vec![CapabilitiesType::CapSysAdmin as i32]);
        assert_eq!(cap_list(c.cap_permitted).len(), 41);
        assert!(creds_from_status("Name: y\n", 0).is_none());
    }

    #[test]
    fn cap_masks_to_names() {
        assert_eq!(cap_list(0), Vec::<i32>::new());
        assert_eq!(
            cap_list(1 << 21 | 1),
            vec![CapabilitiesType::CapChown as i32, CapabilitiesType::CapSysAdmin as i32]
        );
        assert_eq!(cap_list(u64::MAX).len(), 41);
        assert_eq!(unknown_caps(1 << 41 | 1 << 21), 1 << 41);
    }

    #[test]
    fn setuid_root_binary_run_by_a_user() {
        let file = FileInfo { ino: 42, nlink: 1, mode: 0o104755, uid: 0, gid: 0 };
        let c = CredInfo { cap_permitted: 0x1ff_ffff_ffff, ..Default::default() };
        let b = binary_properties(&ids(1000, 0), &c, &file).unwrap();
        assert_eq!(b.setuid.map(|v| v.value), Some(0));
        assert_eq!(b.setgid, None);
        assert_eq!(b.privileges_changed, vec![ProcessPrivilegesChanged::PrivilegesRaisedExecFileSetuid as i32]);
        assert_eq!(b.file, None, "the file is named only when it has no links");
    }

    #[test]
    fn nothing_changed_for_plain_execs() {
        let file = FileInfo { ino: 7, nlink: 1, mode: 0o100755, uid: 0, gid: 0 };
        assert!(binary_properties(&ids(1000, 1000), &CredInfo::default(), &file).is_none());
        // root keeps full capabilities without file capabilities
        let root = CredInfo { cap_permitted: 0x1ff_ffff_ffff, ..Default::default() };
        assert!(binary_properties(&ids(0, 0), &root, &file).is_none());
        // a setuid file run by its owner changes nothing
        let suid = FileInfo { mode: 0o104755, uid: 1000, ..file };
        assert!(binary_properties(&ids(1000, 1000), &CredInfo::default(), &suid).is_none());
    }

    #[test]
    fn deleted_binary_is_named_by_inode_only() {
        let gone = FileInfo { ino: 77, nlink: 0, mode: 0o100755, uid: 0, gid: 0 };
        let b = binary_properties(&ids(0, 0), &CredInfo::default(), &gone).unwrap();
        assert!(b.privileges_changed.is_empty() && b.setuid.is_none());
        let f = b.file.unwrap();
        assert_eq!((f.inode.unwrap().number, f.inode.unwrap().links.map(|l| l.value)), (77, Some(0)));
        assert_eq!(f.path, "", "Tetragon leaves the path empty");
    }

    #[test]
    fn file_caps_for_a_user() {
        let file = FileInfo { ino: 9, nlink: 1, mode: 0o100755, uid: 0, gid: 0 };
        let c = CredInfo { cap_permitted: 1 << 13, cap_effective: 1 << 13, ..Default::default() };
        let b = binary_properties(&ids(1000, 1000), &c, &file).unwrap();
        assert_eq!(b.privileges_changed, vec![ProcessPrivilegesChanged::PrivilegesRaisedExecFileCap as i32]);
        // ambient capabilities are inherited, not raised by the file
        let amb = CredInfo { cap_ambient: 1 << 13, ..c };
        assert!(binary_properties(&ids(1000, 1000), &amb, &file).is_none());
    }

    #[test]
    fn namespaces_compare_with_host_and_leave_out_missing() {
        let host = HostNamespaces { inum: [10, 11, 12, 13, 13, 15, 0, 0, 18, 19] };
        let mine = [10, 11, 99, 13, 13, 15, 0, 0, 18, 19];
        let n = namespaces(&mine, &host);
        assert!(n.uts.unwrap().is_host);
        assert!(!n.mnt.unwrap().is_host);
        assert_eq!(n.mnt.unwrap().inum, 99);
        assert!(n.time.is_none() && n.time_for_children.is_none());
    }
}
