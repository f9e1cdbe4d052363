//! Resuming a stream exactly where it stopped. The relay stamps every event
//! it merged with resume positions ([`ResumePosition`]: the sensor stream
//! it came from, its sequence number there, and how far that stream had
//! left the merge). A client keeps what it received in a [`ResumeTracker`]
//! and, on reconnecting, sends [`ResumeTracker::resume_from`]; the relay
//! compiles that into a [`ResumeGate`] and sends, from history and then
//! live, only what the client has not had — across relay restarts (sensors
//! re-send what the new relay never acknowledged, with the same numbers)
//! and across replicas (which number every sensor stream the same way).

use std::collections::{BTreeSet, HashMap, HashSet};

use proto::tetragon::{GetEventsResponse, ResumeFrom, ResumePosition, ResumeSource};

/// Sensor streams a resume request may name.
pub const MAX_SOURCES: usize = 16_384;
/// Sequence numbers above `done_through` a request may list, in all.
pub const MAX_ALSO: usize = 65_536;
/// What a tracker keeps per stream of numbers above `done_through` (they
/// are few: events a merge sent out of their stream's order).
const TRACKED_ALSO: usize = 1024;

/// The identity of a sensor stream in resume positions: the first 8 bytes
/// of SHA-256 over the node name, a zero byte and the instance id. Every
/// relay computes the same number, and a hostile sensor cannot choose an
/// instance id that collides with another node's stream.
pub fn source_id(node: &str, instance: &str) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(node.as_bytes());
    ctx.update(&[0]);
    ctx.update(instance.as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// Why a resume request was refused; names the count and its limit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResumeError {
    #[error("resume names {count} sensor streams; the limit is {MAX_SOURCES}")]
    TooManySources { count: usize },
    #[error("resume lists {count} sequence numbers above done_through; the limit is {MAX_ALSO}")]
    TooManyAlso { count: usize },
}

/// What a client already has, compiled from its request.
#[derive(Debug, Clone, Default)]
pub struct ResumeGate {
    had: HashMap<u64, Had>,
    /// Nanoseconds since the epoch of the newest event the client had.
    after_ns: i128,
}

#[derive(Debug, Clone, Default)]
struct Had {
    done_through: u64,
    also: HashSet<u64>,
}

impl ResumeGate {
    /// `None` when the request does not resume.
    pub fn compile(resume: Option<&ResumeFrom>) -> Result<Option<Self>, ResumeError> {
        let Some(resume) = resume else { return Ok(None) };
        if resume.sources.len() > MAX_SOURCES {
            return Err(ResumeError::TooManySources { count: resume.sources.len() });
        }
        let also: usize = resume.sources.iter().map(|s| s.also.len()).sum();
        if also > MAX_ALSO {
            return Err(ResumeError::TooManyAlso { count: also });
        }
        let mut had: HashMap<u64, Had> = HashMap::with_capacity(resume.sources.len());
        for s in &resume.sources {
            let h = had.entry(s.source).or_default();
            h.done_through = h.done_through.max(s.done_through);
            h.also.extend(s.also.iter().copied());
        }
        let after_ns = resume.after.map_or(0, |t| t.unix_nanos());
        Ok(Some(ResumeGate { had, after_ns }))
    }

    /// Whether the client still needs an event with these positions and
    /// time. It has the event if it had any of its copies. An event of
    /// streams it had nothing from (a sensor started since, one its filters
    /// never matched, or a loss notice, which has no positions) is sent if
    /// newer than the newest it had.
    pub fn wants(&self, positions: &[ResumePosition], event: &GetEventsResponse) -> bool {
        let mut known = false;
        for p in positions {
            if let Some(h) = self.had.get(&p.source) {
                if p.seq <= h.done_through || h.also.contains(&p.seq) {
                    return false;
                }
                known = true;
            }
        }
        known || event.time.is_some_and(|t| t.unix_nanos() > self.after_ns)
    }
}

/// A client's record of what it received, to resume from.
#[derive(Debug, Clone, Default)]
pub struct ResumeTracker {
    sources: HashMap<u64, Tracked>,
    after_ns: Option<i128>,
}

#[derive(Debug, Clone, Default)]
struct Tracked {
    done_through: u64,
    also: BTreeSet<u64>,
}

impl ResumeTracker {
    /// Records a received event. Only events the relay merged count (they
    /// carry positions): a loss notice is stamped with the time it was
    /// made, later than the events around it.
    pub fn record(&mut self, event: &GetEventsResponse) {
        if event.resume.is_empty() {
            return;
        }
        if let Some(t) = event.time {
            let ns = t.unix_nanos();
            self.after_ns = Some(self.after_ns.map_or(ns, |a| a.max(ns)));
        }
        for p in &event.resume {
            let t = self.sources.entry(p.source).or_default();
            if p.done_through > t.done_through {
                t.done_through = p.done_through;
                t.also = t.also.split_off(&(p.done_through + 1));
            }
            if p.seq > t.done_through {
                t.also.insert(p.seq);
                if t.also.len() > TRACKED_ALSO {
                    // Unreachable in practice; forgetting the oldest means at
                    // worst that one is sent again, never that one is missed.
                    t.also.pop_first();
                }
            }
        }
    }

    /// Whether anything was recorded.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty() && self.after_ns.is_none()
    }

    /// The request field that resumes after everything recorded.
    pub fn resume_from(&self) -> ResumeFrom {
        ResumeFrom {
            sources: self
                .sources
                .iter()
                .map(|(&source, t)| ResumeSource {
                    source,
                    done_through: t.done_through,
                    also: t.also.iter().copied().collect(),
                })
                .collect(),
            after: self.after_ns.map(proto::Timestamp::from_unix_nanos),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64, positions: &[(u64, u64, u64)]) -> GetEventsResponse {
        let mut e = test_support::events::exec("/x").at_seconds(seconds).build();
        e.resume =
            positions.iter().map(|&(source, seq, done_through)| ResumePosition { source, seq, done_through }).collect();
        e
    }

    fn gate(tracker: &ResumeTracker) -> ResumeGate {
        ResumeGate::compile(Some(&tracker.resume_from())).unwrap().unwrap()
    }

    #[test]
    fn sources_are_stable_and_distinct() {
        assert_eq!(source_id("node-a", "i1"), source_id("node-a", "i1"));
        assert_ne!(source_id("node-a", "i1"), source_id("node-a", "i2"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(source_id("ab", "c"), source_id("a", "bc"));
    }

    #[test]
    fn a_client_gets_exactly_what_it_did_not_have() {
        let mut t = ResumeTracker::default();
        // Stream 1: 1..=3 in order; 5 left before 4 (done_through stays 3).
        for e in [at(10, &[(1, 1, 1)]), at(11, &[(1, 2, 2)]), at(12, &[(1, 3, 3)]), at(14, &[(1, 5, 3)])] {
            t.record(&e);
        }
        let g = gate(&t);
        assert!(!g.wants(&[ResumePosition { source: 1, seq: 2, done_through: 2 }], &at(11, &[])));
        assert!(!g.wants(&[ResumePosition { source: 1, seq: 5, done_through: 3 }], &at(14, &[])), "had 5");
        assert!(g.wants(&[ResumePosition { source: 1, seq: 4, done_through: 4 }], &at(13, &[])), "never had 4");
        assert!(
            g.wants(&[ResumePosition { source: 1, seq: 6, done_through: 6 }], &at(9, &[])),
            "a known stream goes by number, not time"
        );
        // A copy of something it had through another stream: had.
        assert!(!g.wants(
            &[
                ResumePosition { source: 2, seq: 40, done_through: 40 },
                ResumePosition { source: 1, seq: 3, done_through: 3 }
            ],
            &at(12, &[])
        ));
        // Unknown streams and loss notices: by time.
        assert!(!g.wants(&[ResumePosition { source: 9, seq: 1, done_through: 1 }], &at(13, &[])));
        assert!(g.wants(&[ResumePosition { source: 9, seq: 2, done_through: 2 }], &at(15, &[])));
        assert!(!g.wants(&[], &at(14, &[])));
        assert!(g.wants(&[], &at(15, &[])));
    }

    #[test]
    fn done_through_folds_the_numbers_below_it() {
        let mut t = ResumeTracker::default();
        t.record(&at(1, &[(1, 5, 3)]));
        t.record(&at(1, &[(1, 7, 3)]));
        t.record(&at(1, &[(1, 4, 7)]));
        let from = t.resume_from();
        assert_eq!(from.sources, vec![ResumeSource { source: 1, done_through: 7, also: vec![] }]);
        t.record(&at(1, &[(1, 9, 7)]));
        assert_eq!(t.resume_from().sources[0].also, vec![9]);
    }

    #[test]
    fn oversized_requests_are_refused_by_count() {
        let many = ResumeFrom {
            sources: (0..=MAX_SOURCES as u64).map(|s| ResumeSource { source: s, ..Default::default() }).collect(),
            after: None,
        };
        assert_eq!(
            ResumeGate::compile(Some(&many)).unwrap_err(),
            ResumeError::TooManySources { count: MAX_SOURCES + 1 }
        );
        let also = ResumeFrom {
            sources: vec![ResumeSource { source: 1, done_through: 0, also: (1..=MAX_ALSO as u64 + 1).collect() }],
            after: None,
        };
        assert!(matches!(ResumeGate::compile(Some(&also)), Err(ResumeError::TooManyAlso { .. })));
        assert!(ResumeGate::compile(None).unwrap().is_none());
    }
}
