//! Container ids from cgroup paths, for the layouts container runtimes and
//! kubelet create: containerd, CRI-O, Docker and Podman; the systemd and
//! cgroupfs drivers; cgroup v1 and v2.

/// Runtime prefixes the systemd driver puts before the id in a scope name.
const SCOPE_PREFIXES: &[&str] = &["cri-containerd-", "crio-", "docker-", "libpod-", "containerd-"];

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id in one path component, if it names a container.
fn component_id(component: &str) -> Option<&str> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    // CRI-O's conmon scopes hold the monitor, not the container.
    if name.starts_with("crio-conmon-") {
        return None;
    }
    let name = SCOPE_PREFIXES.iter().find_map(|p| name.strip_prefix(p)).unwrap_or(name);
    is_container_id(name).then_some(name)
}

/// The container id in a cgroup path (or a bare leaf name), innermost
/// first, so nested layouts such as kind's resolve to the pod's container.
pub fn container_id(path: &str) -> Option<&str> {
    path.rsplit('/').find_map(component_id)
}

/// Tetragon's `docker` field: the container id cut to 31 characters.
pub fn docker_field(id: &str) -> &str {
    &id[..id.len().min(31)]
}

/// The pod UID in a kubelet cgroup path: `pod<uid>` (cgroupfs) or
/// `kubepods-…-pod<uid_with_underscores>.slice` (systemd).
pub fn pod_uid(path: &str) -> Option<String> {
    path.split('/').find_map(|c| {
        let c = c.strip_suffix(".slice").unwrap_or(c);
        let pos = c.rfind("pod")?;
        let uid = &c[pos + 3..];
        let uid = uid.replace('_', "-");
        (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
    })
}

/// The default-hierarchy (v2) path of a process from `/proc/<pid>/cgroup`
/// text, falling back to the first v1 line naming a container.
pub fn path_from_proc_cgroup(text: &str) -> Option<&str> {
    let mut fallback = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" {
            return Some(path);
        }
        if fallback.is_none() && container_id(path).is_some() {
            fallback = Some(path);
        }
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "1fb931d2f6e5e4cfdbaf30fdb8e2fdd81320bdb3047ded50120a4f82838209ce";
    const UID: &str = "4f5e3a2b-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn runtimes_and_drivers() {
        let uid_us = UID.replace('-', "_");
        let paths = [
            // cgroupfs driver, v1 and v2
            format!("/kubepods/besteffort/pod{UID}/{ID}"),
            format!("/sys/fs/cgroup/memory/kubepods/burstable/pod{UID}/{ID}"),
            // systemd driver: containerd, CRI-O, Docker
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_us}.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod{uid_us}.slice/crio-{ID}.scope"),
            format!("/system.slice/docker-{ID}.scope"),
            // plain docker cgroupfs and kind nesting
            format!("/docker/{ID}"),
            format!(
                "/docker/{}/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{uid_us}.slice/cri-containerd-{ID}.scope",
                "a".repeat(64)
            ),
            // bare leaf name, as the kernel record carries it
            ID.to_owned(),
        ];
        for p in &paths {
            assert_eq!(container_id(p), Some(ID), "{p}");
        }
        assert_eq!(pod_uid(&paths[0]).as_deref(), Some(UID));
        assert_eq!(pod_uid(&paths[2]).as_deref(), Some(UID));
        assert_eq!(docker_field(ID), "1fb931d2f6e5e4cfdbaf30fdb8e2fdd");
    }

    #[test]
    fn non_containers() {
        for p in [
            "/",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/ssh.service",
            &format!("/crio-conmon-{ID}.scope"),
            "/kubepods/besteffort/podnotauid/abc",
        ] {
            assert_eq!(container_id(p), None, "{p}");
        }
    }

    #[test]
    fn proc_cgroup_text() {
        let hybrid = format!("12:memory:/kubepods/pod{UID}/{ID}\n1:name=systemd:/init.scope\n0::/user.slice\n");
        assert_eq!(path_from_proc_cgroup(&hybrid), Some("/user.slice"));
        let v1 = format!("12:memory:/kubepods/pod{UID}/{ID}\n1:name=systemd:/init.scope\n");
        assert_eq!(path_from_proc_cgroup(&v1).and_then(container_id), Some(ID));
        assert_eq!(path_from_proc_cgroup("garbage"), None);
    }
}
