//! A `cred` argument's bytes (a `CredArg`) as Tetragon's
//! `process_credentials_arg`: unlike an exec event's credentials, it
//! always carries the capabilities and the user namespace, which is the
//! host's when its level is 0.

use node_sensor_common::CredArg;
use proto::tetragon::{Namespace, ProcessCredentials, UserNamespace};

use crate::privileges::{self, HostNamespaces, Ids};

pub fn cred_arg(bytes: &[u8]) -> ProcessCredentials {
    let Some(head) = bytes.get(..std::mem::size_of::<CredArg>()) else {
        return ProcessCredentials::default();
    };
    // SAFETY: exactly size_of::<CredArg>() bytes; CredArg is repr(C),
    // Copy, integers only (valid for any bit pattern), read without
    // alignment assumptions.
    let c: CredArg = unsafe { std::ptr::read_unaligned(head.as_ptr().cast::<CredArg>()) };
    let ids = Ids { uid: c.uid, gid: c.gid, euid: c.euid, egid: c.egid };
    let more = &c.more;
    ProcessCredentials {
        caps: Some(privileges::capabilities(more)),
        user_ns: Some(UserNamespace {
            level: Some(more.user_ns_level.into()),
            uid: Some(more.user_ns_owner.into()),
            gid: Some(more.user_ns_group.into()),
            ns: Some(Namespace { inum: more.user_ns_inum, is_host: more.user_ns_level == 0 }),
        }),
        ..privileges::credentials(&ids, more, &HostNamespaces::default())
    }
}

#[cfg(test)]
mod tests {
    use node_sensor_common::CredInfo;

    use super::*;
    use crate::decode::bytes_of;

    #[test]
    fn ids_capabilities_and_the_user_namespace() {
        let c = CredArg {
            uid: 1000,
            gid: 1001,
            euid: 0,
            egid: 1003,
            more: CredInfo {
                suid: 0,
                sgid: 7,
                fsuid: 0,
                fsgid: 9,
                securebits: 0,
                user_ns_level: 0,
                user_ns_owner: 0,
                user_ns_group: 0,
                user_ns_inum: 4026531837,
                cap_permitted: 1 << 21,
                cap_effective: 1 << 21,
                cap_inheritable: 0,
                ..Default::default()
            },
        };
        let p = cred_arg(&bytes_of(&c));
        let ids = [p.uid, p.gid, p.euid, p.egid, p.suid, p.sgid, p.fsuid, p.fsgid].map(|v| v.map(|v| v.value));
        assert_eq!(ids, [1000, 1001, 0, 1003, 0, 7, 0, 9].map(Some));
        let caps = p.caps.expect("caps always");
        assert_eq!(caps.permitted, vec![21], "CAP_SYS_ADMIN");
        assert!(caps.inheritable.is_empty());
        let ns = p.user_ns.expect("the user namespace always");
        assert_eq!(ns.level.map(|v| v.value), Some(0));
        assert_eq!(ns.ns, Some(Namespace { inum: 4026531837, is_host: true }));
    }

    #[test]
    fn short_bytes_give_empty_credentials_not_a_panic() {
        assert_eq!(cred_arg(&[1, 2, 3]), ProcessCredentials::default());
    }
}
