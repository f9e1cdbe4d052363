//! The process table, with Tetragon's semantics: every process image has an
//! `exec_id` that never changes; a fork child starts as a copy of its
//! parent's entry; an exec replaces the pid's image and names the previous
//! entry's parent (after a fork) or the previous image itself (exec without
//! fork) as its parent. Entries are reference counted (the process itself
//! plus each live child) and removed when the count reaches zero; the
//! table is bounded, and live entries evicted past the bound are counted.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use proto::tetragon::Process;

use crate::flags;

/// `exec_id`: base64 of `node:ktime:pid`, as Tetragon computes it.
pub fn exec_id(node: &str, ktime: u64, pid: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{node}:{ktime}:{pid}"))
}

#[derive(Debug, Clone)]
struct Entry {
    process: Process,
    /// Created by a fork and not (yet) replaced by an exec.
    fork_only: bool,
    refcnt: u32,
    tick: u64,
}

/// Counters the sensor reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    /// Live entries dropped because the table was full.
    pub evicted: u64,
    /// Events whose process or parent was not in the table.
    pub misses: u64,
}

/// What an event needs: the process and its parent as they are now, and
/// with `--enable-ancestors` the ancestors beyond the parent.
#[derive(Debug, Clone, PartialEq)]
pub struct Lineage {
    pub process: Process,
    pub parent: Option<Process>,
    /// The parent's parent first, up to init (pid 1) or kthreadd (pid 2);
    /// the `<kernel>` entry (pid 0) is left out, as Tetragon does.
    pub ancestors: Vec<Process>,
}

impl Lineage {
    fn unknown() -> Lineage {
        Lineage { process: Process::default(), parent: None, ancestors: vec![] }
    }
}

/// Ancestors listed at most; a longer chain (or a cycle left by pid reuse
/// in a damaged table) is cut.
pub const MAX_ANCESTORS: usize = 256;
/// The walk stops once it reaches a pid this low (init, kthreadd).
const OLDEST_ANCESTOR_PID: u32 = 2;

#[derive(Debug)]
pub struct ProcessCache {
    entries: HashMap<String, Entry>,
    by_pid: HashMap<u32, String>,
    lru: BTreeMap<u64, String>,
    tick: u64,
    capacity: usize,
    stats: CacheStats,
    /// Whether lineages carry ancestors (`--enable-ancestors`).
    ancestors: bool,
}

impl ProcessCache {
    pub fn new(capacity: usize) -> Self {
        ProcessCache {
            entries: HashMap::new(),
            by_pid: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            capacity: capacity.max(1),
            stats: CacheStats::default(),
            ancestors: false,
        }
    }

    /// Lineages carry the ancestors beyond the parent from now on.
    pub fn enable_ancestors(&mut self) {
        self.ancestors = true;
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats { entries: self.entries.len(), ..self.stats }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The current image of `pid`.
    pub fn current(&self, pid: u32) -> Option<&Process> {
        self.by_pid.get(&pid).and_then(|id| self.entries.get(id)).map(|e| &e.process)
    }

    /// Records the pod of a process (found after its exec), so its later
    /// events carry it even once the pod is gone from the API.
    pub fn set_pod(&mut self, exec_id: &str, pod: &proto::tetragon::Pod) {
        if let Some(e) = self.entries.get_mut(exec_id) {
            e.process.pod = Some(pod.clone());
        }
    }

    pub fn get(&self, exec_id: &str) -> Option<&Process> {
        self.entries.get(exec_id).map(|e| &e.process)
    }

    fn touch(&mut self, id: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(id) {
            self.lru.remove(&e.tick);
            e.tick = tick;
            self.lru.insert(tick, id.to_owned());
        }
    }

    fn with_refcnt(&self, id: &str) -> Option<Process> {
        self.entries.get(id).map(|e| Process { refcnt: e.refcnt, ..e.process.clone() })
    }

    fn lineage(&mut self, id: &str) -> Option<Lineage> {
        let process = self.with_refcnt(id)?;
        let parent = self.with_refcnt(&process.parent_exec_id);
        if parent.is_none() && !process.parent_exec_id.is_empty() && process.parent_exec_id != process.exec_id {
            self.stats.misses += 1;
        }
        let ancestors = match &parent {
            Some(p) if self.ancestors => self.ancestors_of(p),
            _ => vec![],
        };
        Some(Lineage { process, parent, ancestors })
    }

    /// The ancestors beyond `parent`, nearest first.
    fn ancestors_of(&self, parent: &Process) -> Vec<Process> {
        let mut out: Vec<Process> = Vec::new();
        let mut current = parent;
        while current.pid.map_or(0, |p| p.value) > OLDEST_ANCESTOR_PID && out.len() < MAX_ANCESTORS {
            let Some(next) = self.entries.get(&current.parent_exec_id) else {
                break;
            };
            if next.process.pid.map_or(0, |p| p.value) == 0 || next.process.exec_id == current.exec_id {
                break; // <kernel>, or an entry that is its own parent
            }
            out.push(Process { refcnt: next.refcnt, ..next.process.clone() });
            current = &next.process;
        }
        out
    }

    fn insert(&mut self, process: Process, fork_only: bool) -> String {
        let id = process.exec_id.clone();
        let pid = process.pid.map_or(0, |p| p.value);
        self.tick += 1;
        let tick = self.tick;
        if let Some(old) = self.entries.insert(id.clone(), Entry { process, fork_only, refcnt: 1, tick }) {
            // Same exec_id seen twice (duplicate record): keep one count.
            self.lru.remove(&old.tick);
        }
        self.lru.insert(tick, id.clone());
        self.by_pid.insert(pid, id.clone());
        self.evict_over_capacity();
        id
    }

    fn evict_over_capacity(&mut self) {
        while self.entries.len() > self.capacity {
            let Some((_, id)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&id) {
                self.stats.evicted += 1;
                let pid = e.process.pid.map_or(0, |p| p.value);
                if self.by_pid.get(&pid) == Some(&id) {
                    self.by_pid.remove(&pid);
                }
            }
        }
    }

    fn add_ref(&mut self, id: &str) {
        if let Some(e) = self.entries.get_mut(id) {
            e.refcnt += 1;
        }
    }

    /// Drops one reference; an entry at zero goes, releasing its parent.
    fn release(&mut self, id: &str) {
        let mut next = Some(id.to_owned());
        // Bounded: each step removes an entry.
        while let Some(id) = next.take() {
            let Some(e) = self.entries.get_mut(&id) else {
                return;
            };
            e.refcnt = e.refcnt.saturating_sub(1);
            if e.refcnt > 0 {
                return;
            }
            if let Some(e) = self.entries.remove(&id) {
                self.lru.remove(&e.tick);
                let pid = e.process.pid.map_or(0, |p| p.value);
                if self.by_pid.get(&pid) == Some(&id) {
                    self.by_pid.remove(&pid);
                }
                if e.process.parent_exec_id != id && !e.process.parent_exec_id.is_empty() {
                    next = Some(e.process.parent_exec_id);
                }
            }
        }
    }

    /// A process found by the `/proc` walk (parents must come first).
    pub fn add_procfs(&mut self, mut process: Process, ppid: u32) -> Lineage {
        if process.parent_exec_id.is_empty() {
            process.parent_exec_id = self.by_pid.get(&ppid).cloned().unwrap_or_default();
        }
        let parent = process.parent_exec_id.clone();
        let id = self.insert(process, false);
        if parent != id {
            self.add_ref(&parent);
        }
        self.lineage(&id).unwrap_or_else(Lineage::unknown)
    }

    /// A new thread group: the child starts as a copy of its parent's image.
    /// Returns false when the parent is unknown (counted as a miss).
    pub fn on_clone(&mut self, node: &str, pid: u32, ppid: u32, ktime: u64, start: proto::Timestamp) -> bool {
        let Some(parent_id) = self.by_pid.get(&ppid).cloned() else {
            self.stats.misses += 1;
            return false;
        };
        let Some(parent) = self.entries.get(&parent_id).map(|e| e.process.clone()) else {
            self.stats.misses += 1;
            return false;
        };
        let child = Process {
            exec_id: exec_id(node, ktime, pid),
            pid: Some(pid.into()),
            tid: Some(pid.into()),
            start_time: Some(start),
            parent_exec_id: parent_id.clone(),
            flags: flags::to_string(flags::from_str(&parent.flags) & !flags::CLONE),
            refcnt: 0,
            ..parent
        };
        self.insert(child, true);
        self.add_ref(&parent_id);
        self.touch(&parent_id);
        true
    }

    /// An exec: `process` carries the new image (exec_id, binary, …) and
    /// `ppid` the kernel's parent, used when the pid was never seen.
    pub fn on_exec(&mut self, mut process: Process, ppid: u32) -> Lineage {
        let pid = process.pid.map_or(0, |p| p.value);
        let previous = self.by_pid.get(&pid).cloned();
        let mut flag_bits = flags::from_str(&process.flags);
        match previous
            .as_ref()
            .and_then(|id| self.entries.get(id).map(|e| (id.clone(), e.fork_only, e.process.parent_exec_id.clone())))
        {
            Some((prev_id, true, forker)) => {
                // After fork: the forker is the parent; the fork entry goes.
                flag_bits |= flags::CLONE;
                process.parent_exec_id = forker.clone();
                self.add_ref(&forker);
                self.release(&prev_id);
            }
            Some((prev_id, false, _)) => {
                // Exec without fork: the previous image is the parent. It
                // loses its own reference and gains the child's.
                process.parent_exec_id = prev_id;
            }
            None => {
                let parent = self.by_pid.get(&ppid).cloned();
                if parent.is_none() {
                    self.stats.misses += 1;
                }
                process.parent_exec_id = parent.clone().unwrap_or_default();
                if let Some(p) = parent {
                    self.add_ref(&p);
                }
            }
        }
        process.flags = flags::to_string(flag_bits);
        let id = self.insert(process, false);
        let lineage = self.lineage(&id).unwrap_or_else(Lineage::unknown);
        if let Some(parent) = &lineage.parent {
            let parent_id = parent.exec_id.clone();
            self.touch(&parent_id);
        }
        lineage
    }

    /// A thread group's end: the lineage for the exit event, then the
    /// process's own reference is dropped.
    pub fn on_exit(&mut self, pid: u32) -> Option<Lineage> {
        let Some(id) = self.by_pid.get(&pid).cloned() else {
            self.stats.misses += 1;
            return None;
        };
        let mut lineage = self.lineage(&id)?;
        lineage.process.refcnt = lineage.process.refcnt.saturating_sub(1);
        self.by_pid.remove(&pid);
        self.release(&id);
        Some(lineage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(node: &str, ktime: u64, pid: u32, binary: &str) -> Process {
        Process {
            exec_id: exec_id(node, ktime, pid),
            pid: Some(pid.into()),
            binary: binary.into(),
            flags: flags::to_string(flags::EXECVE),
            ..Default::default()
        }
    }

    fn procfs(node: &str, ktime: u64, pid: u32, binary: &str) -> Process {
        Process { flags: flags::to_string(flags::PROCFS), ..image(node, ktime, pid, binary) }
    }

    #[test]
    fn exec_id_is_tetragons() {
        assert_eq!(
            exec_id("kind-control-plane", 11428615636901, 51583),
            "a2luZC1jb250cm9sLXBsYW5lOjExNDI4NjE1NjM2OTAxOjUxNTgz"
        );
    }

    #[test]
    fn fork_exec_exit_chain() {
        let mut c = ProcessCache::new(100);
        let init = c.add_procfs(procfs("n", 1, 1, "/sbin/init"), 0);
        let sh = c.add_procfs(procfs("n", 2, 10, "/bin/sh"), 1);
        assert_eq!(sh.parent.as_ref().unwrap().exec_id, init.process.exec_id);

        // sh forks 11, which execs id
        assert!(c.on_clone("n", 11, 10, 50, proto::Timestamp::default()));
        let id = c.on_exec(image("n", 60, 11, "/usr/bin/id"), 10);
        assert_eq!(id.process.parent_exec_id, sh.process.exec_id);
        assert_eq!(id.process.flags, "execve clone");
        assert_eq!(id.parent.as_ref().unwrap().binary, "/bin/sh");

        let exit = c.on_exit(11).unwrap();
        assert_eq!(exit.process.exec_id, id.process.exec_id);
        assert_eq!(exit.parent.unwrap().exec_id, sh.process.exec_id);
        assert!(c.get(&id.process.exec_id).is_none(), "gone at refcnt 0");
        assert!(c.get(&sh.process.exec_id).is_some());
    }

    #[test]
    fn ancestors_go_up_to_init_nearest_first_when_enabled() {
        let build = |c: &mut ProcessCache| {
            c.add_procfs(procfs("n", 0, 0, "<kernel>"), 0);
            c.add_procfs(procfs("n", 1, 1, "/sbin/init"), 0);
            c.add_procfs(procfs("n", 2, 10, "/usr/sbin/sshd"), 1);
            c.add_procfs(procfs("n", 3, 20, "/bin/bash"), 10);
            assert!(c.on_clone("n", 30, 20, 40, proto::Timestamp::default()));
            c.on_exec(image("n", 41, 30, "/bin/sh"), 20);
            c.on_exec(image("n", 42, 30, "/bin/true"), 20)
        };
        let plain = build(&mut ProcessCache::new(100));
        assert_eq!(plain.parent.as_ref().unwrap().binary, "/bin/sh");
        assert!(plain.ancestors.is_empty(), "off unless enabled");

        let mut c = ProcessCache::new(100);
        c.enable_ancestors();
        let lineage = build(&mut c);
        let names: Vec<&str> = lineage.ancestors.iter().map(|a| a.binary.as_str()).collect();
        assert_eq!(names, ["/bin/bash", "/usr/sbin/sshd", "/sbin/init"], "beyond the parent, <kernel> left out");
        let mut expected_id = lineage.parent.as_ref().unwrap().parent_exec_id.clone();
        for a in &lineage.ancestors {
            assert_eq!(a.exec_id, expected_id, "a continuous chain");
            expected_id = a.parent_exec_id.clone();
        }
        assert_eq!(lineage.ancestors[0].refcnt, 2, "bash: itself and its live child");
        let exit = c.on_exit(30).unwrap();
        assert_eq!(exit.ancestors.len(), 3, "exit events carry them too");

        // A broken chain stops at the gap.
        let mut c = ProcessCache::new(100);
        c.enable_ancestors();
        c.add_procfs(procfs("n", 5, 500, "/orphan/parent"), 499);
        c.add_procfs(procfs("n", 6, 501, "/bin/sh"), 500);
        let l = c.on_exec(image("n", 7, 502, "/bin/true"), 501);
        assert_eq!(l.parent.unwrap().binary, "/bin/sh");
        assert_eq!(l.ancestors.iter().map(|a| a.binary.as_str()).collect::<Vec<_>>(), ["/orphan/parent"]);
    }

    #[test]
    fn exec_without_fork_names_the_previous_image() {
        let mut c = ProcessCache::new(100);
        c.add_procfs(procfs("n", 1, 1, "/sbin/init"), 0);
        assert!(c.on_clone("n", 20, 1, 5, proto::Timestamp::default()));
        let sh = c.on_exec(image("n", 6, 20, "/bin/sh"), 1);
        let env = c.on_exec(image("n", 7, 20, "/usr/bin/env"), 1);
        assert_eq!(env.process.parent_exec_id, sh.process.exec_id);
        assert_eq!(env.process.flags, "execve");
        let exit = c.on_exit(20).unwrap();
        assert_eq!(exit.process.binary, "/usr/bin/env");
        // Both images are released once the last one exits.
        assert!(c.get(&sh.process.exec_id).is_none());
        assert!(c.get(&env.process.exec_id).is_none());
    }

    #[test]
    fn fork_only_child_exits_as_a_copy_of_its_parent() {
        let mut c = ProcessCache::new(100);
        c.add_procfs(procfs("n", 1, 1, "/sbin/init"), 0);
        let sh = c.add_procfs(
            Process { arguments: "-c x".into(), flags: "execve clone".into(), ..image("n", 2, 30, "/bin/sh") },
            1,
        );
        assert!(c.on_clone("n", 31, 30, 9, proto::Timestamp::default()));
        let exit = c.on_exit(31).unwrap();
        assert_eq!(exit.process.binary, "/bin/sh");
        assert_eq!(exit.process.arguments, "-c x");
        assert_eq!(exit.process.flags, "execve");
        assert_eq!(exit.process.exec_id, exec_id("n", 9, 31));
        assert_eq!(exit.parent.unwrap().exec_id, sh.process.exec_id);
    }

    #[test]
    fn refcount_keeps_parents_of_live_children() {
        let mut c = ProcessCache::new(100);
        c.add_procfs(procfs("n", 1, 1, "/sbin/init"), 0);
        assert!(c.on_clone("n", 40, 1, 5, proto::Timestamp::default()));
        let parent = c.on_exec(image("n", 6, 40, "/bin/bash"), 1);
        assert!(c.on_clone("n", 41, 40, 7, proto::Timestamp::default()));
        c.on_exec(image("n", 8, 41, "/bin/sleep"), 40);
        // The parent exits first: its entry stays for the child's events.
        let exit = c.on_exit(40).unwrap();
        assert_eq!(exit.process.refcnt, 1, "one live child");
        assert!(c.get(&parent.process.exec_id).is_some());
        let child_exit = c.on_exit(41).unwrap();
        assert_eq!(child_exit.parent.unwrap().exec_id, parent.process.exec_id);
        assert!(c.get(&parent.process.exec_id).is_none());
    }

    #[test]
    fn bounded_with_counted_evictions_and_misses() {
        let mut c = ProcessCache::new(3);
        for pid in 1..=5 {
            c.add_procfs(procfs("n", u64::from(pid), pid, "/bin/x"), 0);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.stats().evicted, 2);
        assert!(c.on_exit(1).is_none(), "evicted first (least recently used)");
        assert!(!c.on_clone("n", 99, 12345, 1, proto::Timestamp::default()));
        assert_eq!(c.stats().misses, 2);
    }
}
