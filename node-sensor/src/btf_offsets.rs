//! Resolves every kernel struct field offset the programs need from the
//! running kernel's BTF (`/sys/kernel/btf/vmlinux`), looking through
//! anonymous structs and unions, so no layout is baked at build time.

use btf_rs::{Btf, Type};
use node_sensor_common::KernelOffsets;

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("cannot read kernel BTF at {path}: {reason} (is CONFIG_DEBUG_INFO_BTF enabled?)")]
    Unreadable { path: String, reason: String },
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("kernel BTF: struct `{strukt}` has no field `{field}` (needed for {needed_for})")]
    NoField { strukt: String, field: String, needed_for: &'static str },
    #[error("kernel BTF: `{0}` is a bitfield; cannot read it")]
    Bitfield(String),
}

/// Opens BTF from `path`.
pub fn open(path: &str) -> Result<Btf, OffsetError> {
    Btf::from_file(path).map_err(|e| OffsetError::Unreadable { path: path.to_owned(), reason: e.to_string() })
}

/// Follows typedefs and qualifiers to the struct or union underneath.
fn underlying_struct(btf: &Btf, mut ty: Type) -> Option<btf_rs::Struct> {
    for _ in 0..16 {
        match ty {
            Type::Struct(s) | Type::Union(s) => return Some(s),
            Type::Typedef(ref t) => ty = btf.resolve_chained_type(t).ok()?,
            Type::Const(ref t) | Type::Volatile(ref t) | Type::Restrict(ref t) => {
                ty = btf.resolve_chained_type(t).ok()?
            }
            Type::TypeTag(ref t) => ty = btf.resolve_chained_type(t).ok()?,
            _ => return None,
        }
    }
    None
}

fn find_struct(btf: &Btf, name: &str) -> Result<btf_rs::Struct, OffsetError> {
    let types = btf.resolve_types_by_name(name).map_err(|_| OffsetError::NoStruct(name.to_owned()))?;
    // A forward declaration shares the name; take the one with members.
    types
        .into_iter()
        .filter_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .max_by_key(|s| s.members.len())
        .ok_or_else(|| OffsetError::NoStruct(name.to_owned()))
}

/// Bit offset of `field` in `st`, searching anonymous members too.
fn member_bits(btf: &Btf, st: &btf_rs::Struct, field: &str, depth: u32) -> Option<(u32, btf_rs::Member)> {
    if depth > 8 {
        return None;
    }
    for m in &st.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == field {
            return Some((m.bit_offset(), m.clone()));
        }
        if name.is_empty() {
            let inner = btf.resolve_chained_type(m).ok().and_then(|t| underlying_struct(btf, t));
            if let Some(inner) = inner
                && let Some((bits, found)) = member_bits(btf, &inner, field, depth + 1)
            {
                return Some((m.bit_offset() + bits, found));
            }
        }
    }
    None
}

/// Byte offset of a dotted field path such as `dentry.d_name.name`.
pub fn field_offset(btf: &Btf, path: &str, needed_for: &'static str) -> Result<u32, OffsetError> {
    let mut parts = path.split('.');
    let root = parts.next().unwrap_or_default();
    let mut st = find_struct(btf, root)?;
    let mut strukt = root.to_owned();
    let mut total_bits = 0u32;
    let mut rest = parts.peekable();
    while let Some(field) = rest.next() {
        let (bits, member) = member_bits(btf, &st, field, 0).ok_or_else(|| OffsetError::NoField {
            strukt: strukt.clone(),
            field: field.to_owned(),
            needed_for,
        })?;
        if member.bitfield_size().is_some_and(|s| s != 0) || bits % 8 != 0 {
            return Err(OffsetError::Bitfield(path.to_owned()));
        }
        total_bits += bits;
        if rest.peek().is_some() {
            st = btf
                .resolve_chained_type(&member)
                .ok()
                .and_then(|t| underlying_struct(btf, t))
                .ok_or_else(|| OffsetError::NoStruct(format!("{strukt}.{field}")))?;
            strukt = format!("{strukt}.{field}");
        }
    }
    Ok(total_bits / 8)
}

/// Whether a field exists, for optional features.
fn optional(btf: &Btf, path: &str) -> Option<u32> {
    field_offset(btf, path, "optional").ok()
}

/// Which optional data the programs collect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub creds: bool,
    pub ns: bool,
}

/// Offsets plus the features this kernel cannot provide, each named.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub offsets: KernelOffsets,
    /// One line per degraded field, for a start-up warning.
    pub degraded: Vec<String>,
}

/// Resolves the whole offset table for the exec/exit/fork programs.
pub fn resolve(btf: &Btf, features: Features) -> Result<Resolved, OffsetError> {
    let f = |path, why| field_offset(btf, path, why);
    let mut degraded = Vec::new();
    let loginuid = optional(btf, "task_struct.loginuid");
    if loginuid.is_none() {
        degraded.push("task_struct.loginuid is missing (no CONFIG_AUDIT): auid is reported as 4294967295".to_owned());
    }
    let mut o = KernelOffsets {
        task_pid: f("task_struct.pid", "tid")?,
        task_tgid: f("task_struct.tgid", "pid")?,
        task_real_parent: f("task_struct.real_parent", "parent")?,
        task_start_boottime: f("task_struct.start_boottime", "process start time")?,
        task_real_cred: f("task_struct.real_cred", "uid")?,
        task_loginuid: loginuid.unwrap_or(0),
        task_mm: f("task_struct.mm", "arguments")?,
        task_fs: f("task_struct.fs", "cwd")?,
        task_cgroups: f("task_struct.cgroups", "container id")?,
        task_signal: f("task_struct.signal", "thread-group exit")?,
        task_exit_code: f("task_struct.exit_code", "exit status")?,
        signal_live: f("signal_struct.live", "thread-group exit")?,
        cred_uid: f("cred.uid", "uid")?,
        cred_gid: f("cred.gid", "gid")?,
        cred_euid: f("cred.euid", "euid")?,
        cred_egid: f("cred.egid", "egid")?,
        mm_arg_start: f("mm_struct.arg_start", "arguments")?,
        mm_arg_end: f("mm_struct.arg_end", "arguments")?,
        fs_root: f("fs_struct.root", "cwd")?,
        fs_pwd: f("fs_struct.pwd", "cwd")?,
        path_mnt: f("path.mnt", "cwd")?,
        path_dentry: f("path.dentry", "cwd")?,
        dentry_parent: f("dentry.d_parent", "cwd")?,
        dentry_name: f("dentry.d_name", "cwd")?,
        qstr_name: f("qstr.name", "cwd")?,
        vfsmount_root: f("vfsmount.mnt_root", "cwd")?,
        mount_parent: f("mount.mnt_parent", "cwd across mounts")?,
        mount_mountpoint: f("mount.mnt_mountpoint", "cwd across mounts")?,
        mount_mnt: f("mount.mnt", "cwd across mounts")?,
        css_set_dfl_cgrp: f("css_set.dfl_cgrp", "container id")?,
        cgroup_kn: f("cgroup.kn", "container id")?,
        kernfs_node_name: f("kernfs_node.name", "container id")?,
        kernfs_node_id: f("kernfs_node.id", "cgroup id")?,
        binprm_filename: f("linux_binprm.filename", "binary")?,
        task_self_exec_id: f("task_struct.self_exec_id", "exec_id shared by sensors on one kernel")?,
        task_thread_pid: f("task_struct.thread_pid", "pid inside the container")?,
        pid_level: f("pid.level", "pid inside the container")?,
        pid_numbers: f("pid.numbers", "pid inside the container")?,
        upid_size: struct_size(btf, "upid")?,
        file_f_path: f("file.f_path", "policy file arguments")?,
        binprm_file: f("linux_binprm.file", "policy linux_binprm arguments")?,
        sock_family: optional(btf, "sock.__sk_common.skc_family").unwrap_or(0),
        sock_state: optional(btf, "sock.__sk_common.skc_state").unwrap_or(0),
        sock_sport: optional(btf, "sock.__sk_common.skc_num").unwrap_or(0),
        sock_dport: optional(btf, "sock.__sk_common.skc_dport").unwrap_or(0),
        sock_saddr: optional(btf, "sock.__sk_common.skc_rcv_saddr").unwrap_or(0),
        sock_daddr: optional(btf, "sock.__sk_common.skc_daddr").unwrap_or(0),
        sock_type: optional(btf, "sock.sk_type").unwrap_or(0),
        sock_protocol: optional(btf, "sock.sk_protocol").unwrap_or(0),
        sock_mark: optional(btf, "sock.sk_mark").unwrap_or(0),
        sock_priority: optional(btf, "sock.sk_priority").unwrap_or(0),
        dentry_inode: f("dentry.d_inode", "policy path arguments")?,
        task_files: f("task_struct.files", "policy fd arguments")?,
        files_fdt: f("files_struct.fdt", "policy fd arguments")?,
        fdtable_max_fds: f("fdtable.max_fds", "policy fd arguments")?,
        fdtable_fd: f("fdtable.fd", "policy fd arguments")?,
        policy_inode_mode: f("inode.i_mode", "policy path arguments")?,
        has_loginuid: u32::from(loginuid.is_some()),
        ..KernelOffsets::ZERO
    };
    // IPv6 addresses exist only with CONFIG_IPV6.
    if let (Some(s6), Some(d6)) =
        (optional(btf, "sock.__sk_common.skc_v6_rcv_saddr"), optional(btf, "sock.__sk_common.skc_v6_daddr"))
    {
        o.sock_saddr6 = s6;
        o.sock_daddr6 = d6;
        o.has_sock_v6 = 1;
    }
    // Credentials and the user namespace: for `--enable-process-cred`,
    // `ns.user`, and policies' `cred` arguments, so always.
    let why = "credentials";
    o.cred_user_ns = f("cred.user_ns", why)?;
    o.user_ns_level = f("user_namespace.level", why)?;
    o.user_ns_owner = f("user_namespace.owner", why)?;
    o.user_ns_group = f("user_namespace.group", why)?;
    o.user_ns_inum = f("user_namespace.ns.inum", why)?;
    o.cred_suid = f("cred.suid", why)?;
    o.cred_sgid = f("cred.sgid", why)?;
    o.cred_fsuid = f("cred.fsuid", why)?;
    o.cred_fsgid = f("cred.fsgid", why)?;
    o.cred_securebits = f("cred.securebits", why)?;
    o.cred_cap_inheritable = f("cred.cap_inheritable", why)?;
    o.cred_cap_permitted = f("cred.cap_permitted", why)?;
    o.cred_cap_effective = f("cred.cap_effective", why)?;
    o.cred_cap_ambient = f("cred.cap_ambient", why)?;
    if features.creds {
        let why = "--enable-process-cred";
        o.collect_creds = 1;
        o.binprm_file = f("linux_binprm.file", why)?;
        o.file_inode = f("file.f_inode", why)?;
        o.inode_mode = f("inode.i_mode", why)?;
        o.inode_uid = f("inode.i_uid", why)?;
        o.inode_gid = f("inode.i_gid", why)?;
        o.inode_ino = f("inode.i_ino", why)?;
        o.inode_nlink = f("inode.__i_nlink", why).or_else(|_| f("inode.i_nlink", why))?;
    }
    // Namespaces: for `--enable-process-ns` and policies' `matchNamespaces`,
    // so always.
    {
        let why = "namespaces";
        o.collect_ns = u32::from(features.ns);
        o.task_nsproxy = f("task_struct.nsproxy", why)?;
        o.nsproxy_uts = f("nsproxy.uts_ns", why)?;
        o.nsproxy_ipc = f("nsproxy.ipc_ns", why)?;
        o.nsproxy_mnt = f("nsproxy.mnt_ns", why)?;
        o.nsproxy_pid_for_children = f("nsproxy.pid_ns_for_children", why)?;
        o.nsproxy_net = f("nsproxy.net_ns", why)?;
        o.nsproxy_cgroup = f("nsproxy.cgroup_ns", why)?;
        o.uts_inum = f("uts_namespace.ns.inum", why)?;
        o.ipc_inum = f("ipc_namespace.ns.inum", why)?;
        o.mnt_inum = f("mnt_namespace.ns.inum", why)?;
        o.pid_ns_inum = f("pid_namespace.ns.inum", why)?;
        o.net_inum = f("net.ns.inum", why)?;
        o.cgroup_ns_inum = f("cgroup_namespace.ns.inum", why)?;
        o.upid_ns = f("upid.ns", why)?;
        match (
            optional(btf, "nsproxy.time_ns"),
            optional(btf, "nsproxy.time_ns_for_children"),
            optional(btf, "time_namespace.ns.inum"),
        ) {
            (Some(t), Some(tc), Some(inum)) => {
                o.has_time_ns = 1;
                o.nsproxy_time = t;
                o.nsproxy_time_for_children = tc;
                o.time_inum = inum;
            }
            _ if features.ns => degraded.push(
                "nsproxy.time_ns is missing (kernel without time namespaces): ns.time and ns.time_for_children are left out"
                    .to_owned(),
            ),
            _ => {}
        }
    }
    // upid.nr must lead struct upid for read_nspid.
    if f("upid.nr", "pid inside the container")? != 0 {
        return Err(OffsetError::NoField {
            strukt: "upid".into(),
            field: "nr at offset 0".into(),
            needed_for: "pid inside the container",
        });
    }
    Ok(Resolved { offsets: o, degraded })
}

/// Byte size of a struct.
pub fn struct_size(btf: &Btf, name: &str) -> Result<u32, OffsetError> {
    Ok(find_struct(btf, name)?.size() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine_btf() -> Option<Btf> {
        match open(VMLINUX_BTF) {
            Ok(b) => Some(b),
            Err(e) => {
                assert!(std::env::var_os("VIGIL_REQUIRE_ALL").is_none(), "{e}");
                eprintln!("SKIP: {e}");
                None
            }
        }
    }

    #[test]
    fn resolves_every_offset_on_this_kernel() {
        let Some(btf) = machine_btf() else { return };
        let o = resolve(&btf, Features { creds: true, ns: true }).expect("all offsets");
        assert!(o.degraded.is_empty(), "{:?}", o.degraded);
        let o = o.offsets;
        assert_eq!((o.collect_creds, o.collect_ns, o.has_time_ns), (1, 1, 1));
        assert_eq!(o.upid_size, 16);
        assert_eq!(o.cred_suid, o.cred_uid + 8, "uid gid suid sgid …");
        // Distinct task_struct fields cannot share an offset.
        let task = [o.task_pid, o.task_tgid, o.task_real_parent, o.task_mm, o.task_fs, o.task_cgroups, o.task_signal];
        for (i, a) in task.iter().enumerate() {
            for b in &task[i + 1..] {
                assert_ne!(a, b, "{o:?}");
            }
        }
        // tgid directly follows pid (both pid_t) in every kernel since 2.6.
        assert_eq!(o.task_tgid, o.task_pid + 4);
        // Layouts that have been stable for a decade.
        assert_eq!(o.path_mnt, 0);
        assert_eq!(o.path_dentry, 8);
        assert_eq!(o.qstr_name, 8);
        assert_eq!(o.cred_uid + 4, o.cred_gid);
        assert!(o.mm_arg_end == o.mm_arg_start + 8, "{o:?}");
        assert_eq!(o.has_loginuid, 1);
    }

    #[test]
    fn anonymous_members_are_searched() {
        let Some(btf) = machine_btf() else { return };
        // mm_struct wraps most fields in an anonymous struct on 6.x.
        let start = field_offset(&btf, "mm_struct.arg_start", "test").unwrap();
        assert!(start > 0);
        // A dotted path through a named member.
        let name = field_offset(&btf, "dentry.d_name.name", "test").unwrap();
        let d_name = field_offset(&btf, "dentry.d_name", "test").unwrap();
        assert_eq!(name, d_name + 8);
    }

    #[test]
    fn missing_fields_are_named_errors() {
        let Some(btf) = machine_btf() else { return };
        let e = field_offset(&btf, "task_struct.no_such_field", "a test").unwrap_err();
        assert_eq!(e.to_string(), "kernel BTF: struct `task_struct` has no field `no_such_field` (needed for a test)");
        let e = field_offset(&btf, "no_such_struct_xyz.a", "a test").unwrap_err();
        assert!(matches!(e, OffsetError::NoStruct(_)), "{e}");
        assert!(matches!(open("/nonexistent/btf"), Err(OffsetError::Unreadable { .. })));
    }
}
