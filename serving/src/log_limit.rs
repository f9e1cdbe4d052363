//! Rate-limited log lines: a condition that can repeat thousands of times a
//! second (refused handshakes, accept errors at the descriptor limit) is
//! written once per interval, with how often it happened since.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One repeating condition's log budget.
#[derive(Debug)]
pub struct LogLimit {
    interval: Duration,
    start: Instant,
    /// Nanoseconds after `start` from which the next line may be written.
    next_ns: AtomicU64,
    /// Occurrences not yet reported.
    count: AtomicU64,
}

impl LogLimit {
    pub fn new(interval: Duration) -> Self {
        LogLimit { interval, start: Instant::now(), next_ns: AtomicU64::new(0), count: AtomicU64::new(0) }
    }

    /// Records one occurrence. `Some(n)` when a line is due now: `n`
    /// occurrences (this one included) since the last line.
    pub fn hit(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let due = self.next_ns.load(Ordering::Relaxed);
        if now < due {
            return None;
        }
        let next = now.saturating_add(u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX));
        // One caller wins the line for this interval.
        self.next_ns.compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed).ok()?;
        Some(self.count.swap(0, Ordering::Relaxed))
    }
}

/// Rate limits per kind of a condition, so that one frequent kind does not
/// hide the others: the kind is the message with its digits taken out (times
/// and counts vary, the reason does not). At most [`MAX_KINDS`] kinds are
/// tracked; the rest share one budget.
#[derive(Debug)]
pub struct LogLimits {
    interval: Duration,
    kinds: parking_lot::Mutex<std::collections::HashMap<String, Arc<LogLimit>>>,
    other: Arc<LogLimit>,
}

pub const MAX_KINDS: usize = 64;

impl LogLimits {
    pub fn new(interval: Duration) -> Self {
        LogLimits { interval, kinds: Default::default(), other: Arc::new(LogLimit::new(interval)) }
    }

    /// [`LogLimit::hit`] for the kind of `message`.
    pub fn hit(&self, message: &str) -> Option<u64> {
        let kind: String = message.chars().filter(|c| !c.is_ascii_digit()).take(200).collect();
        let limit = {
            let mut kinds = self.kinds.lock();
            match kinds.get(&kind) {
                Some(l) => l.clone(),
                None if kinds.len() < MAX_KINDS => {
                    kinds.entry(kind).or_insert_with(|| Arc::new(LogLimit::new(self.interval))).clone()
                }
                None => self.other.clone(),
            }
        };
        limit.hit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count() {
        let limit = LogLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.hit(), Some(1));
        for _ in 0..999 {
            assert_eq!(limit.hit(), None);
        }
        let zero = LogLimit::new(Duration::ZERO);
        assert_eq!(zero.hit(), Some(1));
        assert_eq!(zero.hit(), Some(1));
    }

    #[test]
    fn kinds_have_their_own_budget() {
        let limits = LogLimits::new(Duration::from_secs(3600));
        assert_eq!(limits.hit("expired at 10:00"), Some(1));
        assert_eq!(limits.hit("expired at 11:30"), None);
        assert_eq!(limits.hit("unknown issuer"), Some(1));
        for k in 0..200 {
            limits.hit(&format!("kind {}", "x".repeat(k)));
        }
        assert!(limits.kinds.lock().len() <= MAX_KINDS);
    }
}
