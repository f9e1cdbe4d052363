//! The start-up gate. The programs are attached before `/proc` is walked,
//! so nothing that happens meanwhile is missed; but the records queued in
//! the ring buffer during the walk describe changes the walk may already
//! show. Applying them all would give a process both a `procFS` and an
//! `execve` exec for one image, or turn a process the walk found into a
//! fork copy of its parent. Each record is therefore checked against the
//! time the walk read its pid:
//!
//! - before the read began, the walk already shows its effect: skip it;
//! - after the read ended, it is news: apply it;
//! - during the read (microseconds), a clone or exit is applied only where
//!   that settles it (see each verdict), and an exec is skipped when the
//!   walk registered the very image (same arguments).
//!
//! A fork skipped because the walk registered the child leaves one doubt:
//! did the walk read the child before its first exec (a copy of its
//! parent) or after? An exec applied later with the exec counter one past
//! the fork's settles it: the walk's entry was the fork copy, and the exec
//! is the first after the fork (`execve clone`, the forker its parent).
//!
//! That memory outlives the gate: under load a child forked during the walk
//! may exec seconds later, after the gate has closed.
//!
//! A pid the walk did not list (forked after the directory was read), or
//! listed but found dead when read, has nothing to repeat: all of its
//! records apply (a process that lived and died before the read gets its
//! exec and exit). Once records are past the walk's
//! end, the gate is dropped.

use std::collections::HashMap;

use crate::procfs::ReadWindow;

/// Records this long after the walk's end close the gate; records reach
/// the ring buffer in nearly time order, so this leaves a wide margin.
const CLOSE_AFTER_NS: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Apply,
    /// Already reflected by the walk.
    Skip,
}

#[derive(Debug)]
pub struct StartupGate {
    /// Emptied when the gate closes.
    reads: HashMap<u32, ReadWindow>,
    closed: bool,
    walk_end: u64,
    skipped: u64,
    /// Skipped forks of registered children: pid → the exec counter the
    /// child inherited.
    skipped_forks: HashMap<u32, u32>,
}

impl StartupGate {
    pub fn new(reads: HashMap<u32, ReadWindow>, walk_end: u64) -> Self {
        StartupGate { reads, closed: false, walk_end, skipped: 0, skipped_forks: HashMap::new() }
    }

    /// Closes the gate if a record at `ktime` shows the walk is over for
    /// good; returns true when it closed now. From then on every record
    /// applies; only the skipped forks are still remembered.
    pub fn close_at(&mut self, ktime: u64) -> bool {
        if self.closed || ktime <= self.walk_end.saturating_add(CLOSE_AFTER_NS) {
            return false;
        }
        self.closed = true;
        self.reads = HashMap::new();
        true
    }

    /// Still matching records against the walk's reads.
    pub fn is_open(&self) -> bool {
        !self.closed
    }

    /// Closed, and no skipped fork still waits for its exec or exit.
    pub fn is_done(&self) -> bool {
        self.closed && self.skipped_forks.is_empty()
    }

    /// Records skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The read of `pid`, where it registered a process a record at `ktime`
    /// could repeat.
    fn window(&self, pid: u32, ktime: u64) -> Option<&ReadWindow> {
        if self.closed || ktime > self.walk_end {
            return None;
        }
        self.reads.get(&pid).filter(|w| w.arguments.is_some())
    }

    fn count(&mut self, v: Verdict) -> Verdict {
        if v == Verdict::Skip {
            self.skipped += 1;
        }
        v
    }

    /// A new thread group `pid` at `ktime`, with the exec counter it
    /// inherited. During the read: skipped (the walk registered the child,
    /// which existed as the read began).
    pub fn clone_verdict(&mut self, pid: u32, ktime: u64, exec_seq: u32) -> Verdict {
        let v = match self.window(pid, ktime) {
            None => Verdict::Apply,
            Some(w) if ktime < w.start => Verdict::Skip,
            Some(w) if ktime > w.end => Verdict::Apply,
            // The child existed as the read began.
            Some(_) => Verdict::Skip,
        };
        if v == Verdict::Skip {
            self.skipped_forks.insert(pid, exec_seq);
        }
        self.count(v)
    }

    /// Whether an applied exec (`exec_seq` after it) is the first after a
    /// skipped fork, so the walk's entry for `pid` was a copy of its parent.
    pub fn first_exec_after_skipped_fork(&mut self, pid: u32, exec_seq: u32) -> bool {
        self.skipped_forks.remove(&pid).is_some_and(|at_fork| at_fork.wrapping_add(1) == exec_seq)
    }

    /// An exec by `pid` at `ktime` with these joined `arguments`. During the
    /// read: skipped when the walk registered this very image.
    pub fn exec_verdict(&mut self, pid: u32, ktime: u64, arguments: &str) -> Verdict {
        let v = match self.window(pid, ktime) {
            None => Verdict::Apply,
            Some(w) if ktime < w.start => Verdict::Skip,
            Some(w) if ktime > w.end => Verdict::Apply,
            Some(w) => {
                if w.arguments.as_deref() == Some(arguments) {
                    Verdict::Skip
                } else {
                    Verdict::Apply
                }
            }
        };
        self.count(v)
    }

    /// The end of `pid` at `ktime`. Before a read that registered a process,
    /// it is an earlier process's under a reused pid; otherwise it ends
    /// what the walk registered.
    pub fn exit_verdict(&mut self, pid: u32, ktime: u64) -> Verdict {
        let v = match self.window(pid, ktime) {
            Some(w) if ktime < w.start => Verdict::Skip,
            _ => Verdict::Apply,
        };
        if v == Verdict::Apply {
            // A fork child that exits without exec: nothing more to settle.
            self.skipped_forks.remove(&pid);
        }
        self.count(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> StartupGate {
        let w = |start, end, args: Option<&str>| ReadWindow { start, end, arguments: args.map(str::to_owned) };
        let reads = HashMap::from([
            (10, w(100, 110, Some("-c x"))), // registered
            (11, w(120, 130, None)),         // gone when read
        ]);
        StartupGate::new(reads, 200)
    }

    #[test]
    fn before_the_read_the_walk_already_shows_it() {
        let mut g = gate();
        assert_eq!(g.clone_verdict(10, 50, 3), Verdict::Skip, "the walk found the child");
        assert_eq!(g.exec_verdict(10, 90, "-c other"), Verdict::Skip, "the walk found the new image");
        assert_eq!(g.exit_verdict(10, 99), Verdict::Skip, "an earlier process under a reused pid");
        assert_eq!(g.skipped(), 3);
    }

    #[test]
    fn after_the_read_it_is_news() {
        let mut g = gate();
        assert_eq!(g.exec_verdict(10, 111, "-c x"), Verdict::Apply);
        assert_eq!(g.exit_verdict(10, 150), Verdict::Apply);
        assert_eq!(g.clone_verdict(11, 131, 3), Verdict::Apply, "a new process under the pid");
        assert_eq!(g.skipped(), 0);
    }

    #[test]
    fn during_the_read_content_decides() {
        let mut g = gate();
        assert_eq!(g.exec_verdict(10, 105, "-c x"), Verdict::Skip, "the walk read this image");
        assert_eq!(g.exec_verdict(10, 105, "-c y"), Verdict::Apply, "the walk read the one before");
        assert_eq!(g.clone_verdict(10, 105, 3), Verdict::Skip);
        assert_eq!(g.clone_verdict(11, 125, 3), Verdict::Apply, "not there when read");
        assert_eq!(g.exit_verdict(10, 105), Verdict::Apply);
    }

    #[test]
    fn a_process_that_lived_and_died_before_its_read_is_reported() {
        // Listed, but dead when read: the walk registered nothing for it.
        let mut g = gate();
        assert_eq!(g.clone_verdict(11, 50, 3), Verdict::Apply);
        assert_eq!(g.exec_verdict(11, 60, "-c x"), Verdict::Apply);
        assert_eq!(g.exit_verdict(11, 70), Verdict::Apply);
        assert_eq!(g.skipped(), 0);
    }

    #[test]
    fn an_exec_one_past_a_skipped_fork_replaces_a_fork_copy() {
        let mut g = gate();
        assert_eq!(g.clone_verdict(10, 50, 3), Verdict::Skip);
        assert!(!g.first_exec_after_skipped_fork(10, 5), "a second exec: the walk saw the first");
        let mut g = gate();
        assert_eq!(g.clone_verdict(10, 50, 3), Verdict::Skip);
        assert!(g.first_exec_after_skipped_fork(10, 4));
        assert!(!g.first_exec_after_skipped_fork(10, 4), "once");
        assert!(!g.first_exec_after_skipped_fork(99, 4), "no skipped fork");
    }

    #[test]
    fn unlisted_pids_and_later_records_apply() {
        let mut g = gate();
        assert_eq!(g.clone_verdict(99, 50, 3), Verdict::Apply, "forked after the listing");
        assert_eq!(g.exec_verdict(10, 201, "-c x"), Verdict::Apply, "after the walk");
        assert!(!g.close_at(1_000_000_200));
        assert!(g.close_at(1_000_000_201));
        assert!(!g.close_at(1_000_000_202), "once");
        assert_eq!(g.exec_verdict(10, 90, "-c x"), Verdict::Apply, "closed: everything applies");
        assert!(g.is_done());
    }

    #[test]
    fn skipped_forks_outlive_the_gate_until_exec_or_exit() {
        let mut g = gate();
        assert_eq!(g.clone_verdict(10, 50, 3), Verdict::Skip);
        assert!(g.close_at(2_000_000_000));
        assert!(!g.is_done(), "the child of a skipped fork has not exec'd yet");
        assert!(g.first_exec_after_skipped_fork(10, 4), "an exec seconds later still settles it");
        assert!(g.is_done());
        let mut g = gate();
        assert_eq!(g.clone_verdict(10, 50, 3), Verdict::Skip);
        assert!(g.close_at(2_000_000_000));
        assert_eq!(g.exit_verdict(10, 2_000_000_001), Verdict::Apply);
        assert!(g.is_done(), "the child exited without exec");
    }
}
