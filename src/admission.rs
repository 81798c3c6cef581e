//! Admission of new streams through a token bucket, so that a mass reconnect is
//! spread out instead of starving the live streams of CPU. Pure: time is passed in.
//! A connect that finds no token is told how long to wait for its turn (it is
//! delayed, not refused, because `EventSource` gives up for good on a non-200
//! answer); only a wait beyond the configured queue timeout is refused.

use std::time::Duration;

/// Tokens are counted in nanoseconds of "credit" to stay exact in integers.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Nanoseconds of credit one token costs; 0 disables the bucket.
    cost_ns: u64,
    /// Most credit that can be banked (the burst).
    cap_ns: u64,
    /// Time at which the bucket is empty: credit = now - empty_at (clamped to cap).
    /// Signed, so that a bucket made early in the process can start full.
    empty_at_ns: i128,
}

impl TokenBucket {
    /// `rate` tokens per second, at most `burst` at once; `rate == 0`: unlimited.
    pub fn new(rate: u64, burst: u64, now_ns: u64) -> Self {
        if rate == 0 {
            return TokenBucket {
                cost_ns: 0,
                cap_ns: 0,
                empty_at_ns: 0,
            };
        }
        let cost_ns = (1_000_000_000 / rate).max(1);
        let cap_ns = cost_ns.saturating_mul(burst.max(1));
        TokenBucket {
            cost_ns,
            cap_ns,
            empty_at_ns: now_ns as i128 - cap_ns as i128,
        }
    }

    /// Take a token: `Ok(Duration::ZERO)` now, `Ok(wait)` for a reserved turn
    /// after `wait`, or `Err(())` when that turn is further than `max_wait`.
    #[allow(clippy::result_unit_err)]
    pub fn admit(&mut self, now_ns: u64, max_wait: Duration) -> Result<Duration, ()> {
        if self.cost_ns == 0 {
            return Ok(Duration::ZERO);
        }
        let now = now_ns as i128;
        let start = self.empty_at_ns.max(now - self.cap_ns as i128);
        let next = start + self.cost_ns as i128;
        let wait_ns = (next - now).max(0) as u64;
        if wait_ns > max_wait.as_nanos() as u64 {
            return Err(());
        }
        self.empty_at_ns = next;
        Ok(Duration::from_nanos(wait_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_rate() {
        let mut b = TokenBucket::new(10, 3, 10 * S);
        let max = Duration::from_secs(1);
        for _ in 0..3 {
            assert_eq!(b.admit(10 * S, max), Ok(Duration::ZERO));
        }
        assert_eq!(b.admit(10 * S, max), Ok(Duration::from_millis(100)));
        assert_eq!(b.admit(10 * S, max), Ok(Duration::from_millis(200)));
        // refill over time
        assert_eq!(b.admit(12 * S, max), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_beyond_the_queue_timeout() {
        let mut b = TokenBucket::new(1, 1, 5 * S);
        assert!(b.admit(5 * S, Duration::ZERO).is_ok());
        assert!(b.admit(5 * S, Duration::from_millis(500)).is_err());
        assert!(b.admit(5 * S, Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn starts_full_even_early_in_the_process() {
        let mut b = TokenBucket::new(1, 3, 1_000);
        for _ in 0..3 {
            assert_eq!(b.admit(1_000, Duration::ZERO), Ok(Duration::ZERO));
        }
        assert!(b.admit(1_000, Duration::ZERO).is_err());
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut b = TokenBucket::new(0, 0, 0);
        for _ in 0..1000 {
            assert_eq!(b.admit(0, Duration::ZERO), Ok(Duration::ZERO));
        }
    }
}
