//! `--export-rate-limit`: at most N events a minute, as Tetragon's (a
//! token bucket that holds N and refills N a minute, so a burst of N passes
//! at once); `0` passes nothing.

use std::time::Instant;

/// One token in credit units: a minute in microseconds, so that N tokens
/// a minute is N units a microsecond, in whole numbers.
const TOKEN: u128 = 60_000_000;

#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u128,
    credit: u128,
    refilled: Instant,
}

impl RateLimiter {
    /// Full at the start, as Tetragon's.
    pub fn per_minute(per_minute: u64, now: Instant) -> Self {
        let per_minute = u128::from(per_minute);
        RateLimiter { per_minute, credit: per_minute * TOKEN, refilled: now }
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_micros();
        self.refilled = now;
        self.credit = (self.credit + elapsed * self.per_minute).min(self.per_minute * TOKEN);
        if self.credit >= TOKEN {
            self.credit -= TOKEN;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_of_the_limit_passes_then_one_per_share_of_the_minute() {
        let t0 = Instant::now();
        let mut l = RateLimiter::per_minute(6, t0);
        assert_eq!((0..10).filter(|_| l.allow(t0)).count(), 6);
        // 6 a minute: one token every 10 s.
        assert!(!l.allow(t0 + Duration::from_secs(9)));
        assert!(l.allow(t0 + Duration::from_secs(10)));
        assert!(!l.allow(t0 + Duration::from_secs(10)));
        // An idle hour refills to the limit, not past it.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| l.allow(later)).count(), 6);
    }

    #[test]
    fn zero_passes_nothing() {
        let t0 = Instant::now();
        let mut l = RateLimiter::per_minute(0, t0);
        assert!(!l.allow(t0));
        assert!(!l.allow(t0 + Duration::from_secs(600)));
    }
}
