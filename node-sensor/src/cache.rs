//! The process table, with Tetragon's semantics: every process image has an
//! `exec_id` that never changes; a fork child starts as a copy of its
//! parent's entry; an exec replaces the pid's image and names the previous
//! entry's parent (after a fork) or the previous image itself (exec without
//! fork) as its parent. Entries are reference counted (the process itself
//! plus each live child) and removed when the count reaches zero; the
//! table is bounded, and live entries evicted past the bound are counted.
//!
//! The table holds a small domain type, [`Image`]: typed ids, the pid and
//! flag bits it reasons about, and the rest of the wire `Process` shared
//! (`Arc`) between an image and its fork children. The wire `Process` is
//! made at the edge, by `From`, when an event needs it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use proto::tetragon::Process;

use crate::flags;

/// `exec_id`: base64 of `node:ktime:pid`, as Tetragon computes it.
pub fn exec_id(node: &str, ktime: u64, pid: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{node}:{ktime}:{pid}"))
}

/// A process image's id. Shared, so the table's indexes copy a pointer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecId(Arc<str>);

impl ExecId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for ExecId {
    fn from(s: &str) -> Self {
        ExecId(s.into())
    }
}

impl std::borrow::Borrow<str> for ExecId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// One process image as the table keeps it.
#[derive(Debug, Clone)]
pub struct Image {
    pub exec_id: ExecId,
    /// The parent image; empty when unknown.
    pub parent: ExecId,
    pub pid: u32,
    /// `flags` bits (see [`crate::flags`]).
    pub flags: u32,
    /// Everything else of the wire `Process` (binary, arguments, cwd,
    /// credentials, pod, …), which the table does not interpret.
    pub details: Arc<Process>,
}

impl From<Process> for Image {
    fn from(mut p: Process) -> Self {
        let exec_id = ExecId::from(std::mem::take(&mut p.exec_id).as_str());
        let parent = ExecId::from(std::mem::take(&mut p.parent_exec_id).as_str());
        let flags = flags::from_str(&std::mem::take(&mut p.flags));
        Image { exec_id, parent, pid: p.pid.map_or(0, |v| v.value), flags, details: Arc::new(p) }
    }
}

/// The wire form of an entry: the image with its reference count.
impl From<&Entry> for Process {
    fn from(e: &Entry) -> Self {
        Process {
            exec_id: e.image.exec_id.as_str().to_owned(),
            parent_exec_id: e.image.parent.as_str().to_owned(),
            pid: Some(e.image.pid.into()),
            flags: flags::to_string(e.image.flags),
            refcnt: e.refcnt,
            // Tetragon writes it on every process, true or false.
            in_init_tree: Some((e.image.flags & flags::IN_INIT_TREE != 0).into()),
            ..Process::clone(&e.image.details)
        }
    }
}

/// A new thread group as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fork {
    pub pid: u32,
    pub ppid: u32,
    /// The exec_id's time: the fork's (`task->start_boottime`).
    pub ktime: u64,
    /// The pid in the child's own pid namespace.
    pub nspid: u32,
}

#[derive(Debug, Clone)]
pub struct Entry {
    image: Image,
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

    /// A process known only by its pid.
    pub fn pid_only(pid: u32) -> Lineage {
        Lineage { process: Process { pid: Some(pid.into()), ..Default::default() }, parent: None, ancestors: vec![] }
    }
}

/// Ancestors listed at most; a longer chain (or a cycle left by pid reuse
/// in a damaged table) is cut.
pub const MAX_ANCESTORS: usize = 256;
/// The walk stops once it reaches a pid this low (init, kthreadd).
const OLDEST_ANCESTOR_PID: u32 = 2;
/// Processes kept after their exit, for policy hooks that fire later in
/// the exit path (a socket closed as the exiting process's files go).
const EXITED_KEPT: usize = 256;

/// The cache's maps hash with foldhash, seeded per map: std's SipHash was
/// about 4% of the sensor's work per exec (`pipeline_records`, profiled),
/// and a random seed keeps the pids and exec ids a local user can steer
/// from being chosen to collide.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug)]
pub struct ProcessCache {
    entries: Map<ExecId, Entry>,
    by_pid: Map<u32, ExecId>,
    lru: BTreeMap<u64, ExecId>,
    tick: u64,
    capacity: usize,
    stats: CacheStats,
    /// Whether lineages carry ancestors (`--enable-ancestors`).
    ancestors: bool,
    /// The last `EXITED_KEPT` exited processes by pid, oldest first in
    /// `exited_order`; a pid's live image wins over these.
    exited: Map<u32, Entry>,
    exited_order: VecDeque<u32>,
}

impl ProcessCache {
    pub fn new(capacity: usize) -> Self {
        ProcessCache {
            entries: Map::default(),
            by_pid: Map::default(),
            lru: BTreeMap::new(),
            tick: 0,
            capacity: capacity.max(1),
            stats: CacheStats::default(),
            ancestors: false,
            exited: Map::default(),
            exited_order: VecDeque::new(),
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

    /// The current image of `pid`, in wire form.
    pub fn current(&self, pid: u32) -> Option<Process> {
        self.by_pid.get(&pid).and_then(|id| self.entries.get(id)).map(Process::from)
    }

    /// The lineage of `pid`'s current image, for an event it caused (a
    /// policy hook's hit), or of the process that had `pid` if it has just
    /// exited (its exit path runs hooks after the exit event: Tetragon
    /// names the parent there, with the child's thread, which misleads;
    /// Vigil names the process whose exit it is). A miss is counted.
    pub fn of_pid(&mut self, pid: u32) -> Option<Lineage> {
        if let Some(id) = self.by_pid.get(&pid).cloned() {
            return self.lineage(&id);
        }
        let Some(gone) = self.exited.get(&pid) else {
            self.stats.misses += 1;
            return None;
        };
        let (process, parent, id) = (Process::from(gone), gone.image.parent.clone(), gone.image.exec_id.clone());
        Some(self.with_parent(process, &parent, &id))
    }

    fn remember_exit(&mut self, pid: u32, entry: Entry) {
        if self.exited.insert(pid, entry).is_none() {
            self.exited_order.push_back(pid);
        }
        while self.exited_order.len() > EXITED_KEPT {
            if let Some(old) = self.exited_order.pop_front() {
                self.exited.remove(&old);
            }
        }
    }

    /// Records the pod of a process (found after its exec), so its later
    /// events carry it even once the pod is gone from the API.
    pub fn set_pod(&mut self, exec_id: &str, pod: &proto::tetragon::Pod) {
        if let Some(e) = self.entries.get_mut(exec_id) {
            Arc::make_mut(&mut e.image.details).pod = Some(Box::new(pod.clone()));
        }
    }

    /// Marks the current entry of `pid` as a fork copy of its parent (the
    /// `/proc` walk read it after the fork and before the exec), so the
    /// next exec names the forker as its parent.
    pub fn mark_fork_copy(&mut self, pid: u32) {
        if let Some(e) = self.by_pid.get(&pid).and_then(|id| self.entries.get_mut(id)) {
            e.fork_only = true;
        }
    }

    /// Every entry with its reference count, for `GetDebug`.
    /// The cache's entries as `GetDebug` sends them, at most `max_bytes`
    /// of them encoded (a reply a default gRPC client accepts); the number
    /// left out is returned with them.
    pub fn dump(&self, skip_zero_refcnt: bool, max_bytes: usize) -> (Vec<proto::tetragon::ProcessInternal>, usize) {
        use prost::Message;
        let mut out = Vec::new();
        let (mut bytes, mut left_out) = (0usize, 0usize);
        for e in self.entries.values().filter(|e| !skip_zero_refcnt || e.refcnt > 0) {
            let p = proto::tetragon::ProcessInternal {
                process: Some(Process::from(e)),
                refcnt: Some(e.refcnt.into()),
                ..Default::default()
            };
            // Each entry costs its encoding and a tag and length.
            let cost = p.encoded_len() + 8;
            if bytes + cost > max_bytes {
                left_out += 1;
                continue;
            }
            bytes += cost;
            out.push(p);
        }
        (out, left_out)
    }

    /// An image in wire form.
    pub fn get(&self, exec_id: &str) -> Option<Process> {
        self.entries.get(exec_id).map(Process::from)
    }

    fn touch(&mut self, id: &ExecId) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(id) {
            self.lru.remove(&e.tick);
            e.tick = tick;
            self.lru.insert(tick, id.clone());
        }
    }

    fn lineage(&mut self, id: &ExecId) -> Option<Lineage> {
        let entry = self.entries.get(id)?;
        let parent_id = entry.image.parent.clone();
        let process = Process::from(entry);
        Some(self.with_parent(process, &parent_id, id))
    }

    /// `process` (whose exec_id is `id`) with its parent and ancestors.
    fn with_parent(&mut self, process: Process, parent_id: &ExecId, id: &ExecId) -> Lineage {
        let parent_entry = self.entries.get(parent_id);
        if parent_entry.is_none() && !parent_id.is_empty() && parent_id != id {
            self.stats.misses += 1;
        }
        let parent = parent_entry.map(Process::from);
        let ancestors = match parent_entry {
            Some(p) if self.ancestors => self.ancestors_of(p),
            _ => vec![],
        };
        Lineage { process, parent, ancestors }
    }

    /// The ancestors beyond `parent`, nearest first.
    fn ancestors_of(&self, parent: &Entry) -> Vec<Process> {
        let mut out: Vec<Process> = Vec::new();
        let mut current = parent;
        while current.image.pid > OLDEST_ANCESTOR_PID && out.len() < MAX_ANCESTORS {
            let Some(next) = self.entries.get(&current.image.parent) else {
                break;
            };
            if next.image.pid == 0 || next.image.exec_id == current.image.exec_id {
                break; // <kernel>, or an entry that is its own parent
            }
            out.push(Process::from(next));
            current = next;
        }
        out
    }

    fn insert(&mut self, image: Image, fork_only: bool) -> ExecId {
        let id = image.exec_id.clone();
        let pid = image.pid;
        self.tick += 1;
        let tick = self.tick;
        if let Some(old) = self.entries.insert(id.clone(), Entry { image, fork_only, refcnt: 1, tick }) {
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
                if self.by_pid.get(&e.image.pid) == Some(&id) {
                    self.by_pid.remove(&e.image.pid);
                }
            }
        }
    }

    fn add_ref(&mut self, id: &ExecId) {
        if let Some(e) = self.entries.get_mut(id) {
            e.refcnt += 1;
        }
    }

    /// Drops one reference; an entry at zero goes, releasing its parent.
    fn release(&mut self, id: &ExecId) {
        let mut next = Some(id.clone());
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
                if self.by_pid.get(&e.image.pid) == Some(&id) {
                    self.by_pid.remove(&e.image.pid);
                }
                if e.image.parent != id && !e.image.parent.is_empty() {
                    next = Some(e.image.parent);
                }
            }
        }
    }

    /// A process found by the `/proc` walk (parents must come first).
    pub fn add_procfs(&mut self, process: Process, ppid: u32) -> Lineage {
        let mut image = Image::from(process);
        if image.parent.is_empty() {
            image.parent = self.by_pid.get(&ppid).cloned().unwrap_or_default();
        }
        let parent = image.parent.clone();
        let id = self.insert(image, false);
        if parent != id {
            self.add_ref(&parent);
        }
        self.lineage(&id).unwrap_or_else(Lineage::unknown)
    }

    /// A new thread group: the child starts as a copy of its parent's image.
    /// `nspid` is the child's pid in its own pid namespace (1 when it is a
    /// new namespace's init). Returns false when the parent is unknown
    /// (counted as a miss).
    pub fn on_clone(&mut self, node: &str, child: Fork, start: proto::Timestamp) -> bool {
        let Some(parent_id) = self.by_pid.get(&child.ppid).cloned() else {
            self.stats.misses += 1;
            return false;
        };
        let Some(parent) = self.entries.get(&parent_id).map(|e| e.image.clone()) else {
            self.stats.misses += 1;
            return false;
        };
        // The child's own fields; the rest is shared with the parent's image.
        let mut details = parent.details;
        let d = Arc::make_mut(&mut details);
        d.tid = Some(child.pid.into());
        d.start_time = Some(start);
        // A child that never execs shows its parent's binary and arguments
        // but the flags `execve` whatever its parent's were: Tetragon's clone
        // carries only its kernel-side clone marker (bit 0), which its flag
        // decoder reads as `execve`, plus the init-tree bit.
        let in_init_tree =
            if parent.flags & flags::IN_INIT_TREE != 0 || child.nspid == 1 { flags::IN_INIT_TREE } else { 0 };
        let image = Image {
            exec_id: ExecId::from(exec_id(node, child.ktime, child.pid).as_str()),
            parent: parent_id.clone(),
            pid: child.pid,
            flags: flags::EXECVE | in_init_tree,
            details,
        };
        self.insert(image, true);
        self.add_ref(&parent_id);
        self.touch(&parent_id);
        true
    }

    /// An exec: `process` carries the new image (exec_id, binary, …) and
    /// `ppid` the kernel's parent, used when the pid was never seen.
    pub fn on_exec(&mut self, process: Process, ppid: u32) -> Lineage {
        let mut image = Image::from(process);
        let previous = self.by_pid.get(&image.pid).cloned();
        let previous = previous.as_ref().and_then(|id| {
            self.entries.get(id).map(|e| (id.clone(), e.fork_only, e.image.parent.clone(), e.image.flags))
        });
        // The init tree is inherited from the image this one replaces (or,
        // unseen, from the parent); an exec never leaves it.
        let inherited = match &previous {
            Some((_, _, _, bits)) => *bits,
            None => self.by_pid.get(&ppid).and_then(|id| self.entries.get(id)).map_or(0, |e| e.image.flags),
        };
        image.flags |= inherited & flags::IN_INIT_TREE;
        match previous.map(|(id, fork_only, forker, _)| (id, fork_only, forker)) {
            Some((prev_id, true, forker)) => {
                // After fork: the forker is the parent; the fork entry goes.
                image.flags |= flags::CLONE;
                image.parent = forker.clone();
                self.add_ref(&forker);
                self.release(&prev_id);
            }
            Some((prev_id, false, _)) => {
                // Exec without fork: the previous image is the parent. It
                // loses its own reference and gains the child's.
                image.parent = prev_id;
            }
            None => {
                let parent = self.by_pid.get(&ppid).cloned();
                if parent.is_none() {
                    self.stats.misses += 1;
                }
                image.parent = parent.clone().unwrap_or_default();
                if let Some(p) = parent {
                    self.add_ref(&p);
                }
            }
        }
        let parent_id = image.parent.clone();
        let id = self.insert(image, false);
        let lineage = self.lineage(&id).unwrap_or_else(Lineage::unknown);
        if lineage.parent.is_some() {
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
        if let Some(e) = self.entries.get(&id) {
            let gone = Entry { refcnt: lineage.process.refcnt, ..e.clone() };
            self.remember_exit(pid, gone);
        }
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

    fn fork(pid: u32, ppid: u32, ktime: u64) -> Fork {
        Fork { pid, ppid, ktime, nspid: pid }
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
    fn a_dump_fits_its_byte_budget_and_says_what_it_left_out() {
        use prost::Message;
        let mut c = ProcessCache::new(100);
        for pid in 1..=10 {
            c.add_procfs(procfs("n", u64::from(pid), pid, &format!("/bin/p{pid}")), 0);
        }
        let (all, left_out) = c.dump(false, usize::MAX);
        assert_eq!((all.len(), left_out), (10, 0));
        let one = all[0].encoded_len() + 8;
        let (some, left_out) = c.dump(false, 3 * one + one / 2);
        assert_eq!((some.len(), left_out), (3, 7));
    }

    #[test]
    fn a_hook_after_the_exit_names_the_process_that_exited() {
        let mut c = ProcessCache::new(100);
        c.add_procfs(procfs("n", 1, 1, "/sbin/init"), 0);
        let sh = c.add_procfs(procfs("n", 2, 10, "/bin/sh"), 1);
        assert!(c.on_clone("n", fork(11, 10, 50), proto::Timestamp::default()));
        let nc = c.on_exec(image("n", 60, 11, "/bin/nc"), 10);
        c.on_exit(11).unwrap();
        // The socket closed on the way out: nc, its parent the shell.
        let late = c.of_pid(11).expect("the process that exited");
        assert_eq!(late.process.exec_id, nc.process.exec_id);
        assert_eq!(late.process.binary, "/bin/nc");
        assert_eq!(late.parent.map(|p| p.exec_id), Some(sh.process.exec_id.clone()));
        assert_eq!(c.stats().misses, 0);
        // A new process with the pid wins.
        assert!(c.on_clone("n", fork(11, 10, 70), proto::Timestamp::default()));
        let again = c.on_exec(image("n", 80, 11, "/bin/true"), 10);
        assert_eq!(c.of_pid(11).unwrap().process.exec_id, again.process.exec_id);
        // Only the last EXITED_KEPT exits are kept.
        for pid in 100..100 + EXITED_KEPT as u32 + 1 {
            assert!(c.on_clone("n", fork(pid, 10, u64::from(pid) * 10), proto::Timestamp::default()));
            c.on_exit(pid).unwrap();
        }
        assert!(c.of_pid(100).is_none(), "the oldest exit is forgotten");
        assert!(c.of_pid(100 + EXITED_KEPT as u32).is_some());
        assert_eq!(c.stats().misses, 1);
    }

    #[test]
    fn fork_exec_exit_chain() {
        let mut c = ProcessCache::new(100);
        let init = c.add_procfs(procfs("n", 1, 1, "/sbin/init"), 0);
        let sh = c.add_procfs(procfs("n", 2, 10, "/bin/sh"), 1);
        assert_eq!(sh.parent.as_ref().unwrap().exec_id, init.process.exec_id);

        // sh forks 11, which execs id
        assert!(c.on_clone("n", fork(11, 10, 50), proto::Timestamp::default()));
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
            assert!(c.on_clone("n", fork(30, 20, 40), proto::Timestamp::default()));
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
        assert!(c.on_clone("n", fork(20, 1, 5), proto::Timestamp::default()));
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
        assert!(c.on_clone("n", fork(31, 30, 9), proto::Timestamp::default()));
        let exit = c.on_exit(31).unwrap();
        assert_eq!(exit.process.binary, "/bin/sh");
        assert_eq!(exit.process.arguments, "-c x");
        assert_eq!(exit.process.flags, "execve");
        assert_eq!(exit.process.exec_id, exec_id("n", 9, 31));
        assert_eq!(exit.parent.unwrap().exec_id, sh.process.exec_id);
    }

    #[test]
    fn init_tree_starts_at_a_namespace_init_and_is_inherited() {
        let mut c = ProcessCache::new(100);
        let host = c.add_procfs(procfs("n", 1, 1, "/sbin/init"), 0);
        assert_eq!(host.process.in_init_tree.map(|b| b.value), Some(false), "written even when false");
        // runc forks the container's init: pid 1 in its new namespace.
        assert!(c.on_clone("n", Fork { pid: 50, ppid: 1, ktime: 5, nspid: 1 }, proto::Timestamp::default()));
        let init = c.on_exec(image("n", 6, 50, "/bin/sh"), 1);
        assert_eq!(init.process.in_init_tree.map(|b| b.value), Some(true));
        assert_eq!(init.process.flags, "execve clone inInitTree");
        // Its children, forked and exec'd, and the fork-only ones.
        assert!(c.on_clone("n", Fork { pid: 51, ppid: 50, ktime: 7, nspid: 2 }, proto::Timestamp::default()));
        let child = c.on_exec(image("n", 8, 51, "/bin/ls"), 50);
        assert_eq!(child.process.in_init_tree.map(|b| b.value), Some(true));
        assert!(c.on_clone("n", Fork { pid: 52, ppid: 50, ktime: 9, nspid: 3 }, proto::Timestamp::default()));
        let fork_only = c.on_exit(52).unwrap();
        assert_eq!(
            (fork_only.process.flags.as_str(), fork_only.process.in_init_tree.map(|b| b.value)),
            ("execve inInitTree", Some(true))
        );
        // A host process is not in one.
        assert!(c.on_clone("n", Fork { pid: 60, ppid: 1, ktime: 10, nspid: 60 }, proto::Timestamp::default()));
        let host_child = c.on_exec(image("n", 11, 60, "/bin/true"), 1);
        assert_eq!(host_child.process.in_init_tree.map(|b| b.value), Some(false));
    }

    #[test]
    fn refcount_keeps_parents_of_live_children() {
        let mut c = ProcessCache::new(100);
        c.add_procfs(procfs("n", 1, 1, "/sbin/init"), 0);
        assert!(c.on_clone("n", fork(40, 1, 5), proto::Timestamp::default()));
        let parent = c.on_exec(image("n", 6, 40, "/bin/bash"), 1);
        assert!(c.on_clone("n", fork(41, 40, 7), proto::Timestamp::default()));
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
        assert!(!c.on_clone("n", fork(99, 12345, 1), proto::Timestamp::default()));
        assert_eq!(c.stats().misses, 2);
    }
}
