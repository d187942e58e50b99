//! A connection's publish rate: a token bucket (`[limits] publish_rate`,
//! `publish_burst`) and the strikes that turn repeated abuse into a close
//! (`rate_limit_disconnect`). Plain state, no I/O.

use std::time::Instant;

use crate::clock::Stamp;

fn micros(now: Instant) -> u64 {
    Stamp::from(now).micros()
}

/// Publish rate limit: `rate` tokens per second, at most `burst` saved up
/// (the limits come from the shard's config, so they are not stored here).
pub(super) struct TokenBucket {
    tokens: f32,
    last_us: u64,
}

impl TokenBucket {
    pub(super) fn new(burst: u32) -> TokenBucket {
        TokenBucket { tokens: burst as f32, last_us: micros(Instant::now()) }
    }

    pub(super) fn take(&mut self, now: Instant, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let now_us = micros(now);
        let elapsed = now_us.saturating_sub(self.last_us) as f32 / 1e6;
        self.last_us = now_us;
        self.tokens = (self.tokens + elapsed * rate as f32).min(burst as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts rate-limited publishes per one-second window.
#[derive(Default)]
pub(super) struct RateStrikes {
    window_start_us: u64,
    count: u32,
}

impl RateStrikes {
    /// Records one refusal; true when the window's count exceeds `limit` (0 = never).
    pub(super) fn strike(&mut self, now: Instant, limit: u32) -> bool {
        let now_us = micros(now);
        if self.count > 0 && now_us.saturating_sub(self.window_start_us) < 1_000_000 {
            self.count += 1;
        } else {
            self.window_start_us = now_us;
            self.count = 1;
        }
        limit > 0 && self.count > limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5);
        b.last_us = micros(t0);
        assert_eq!((0..10).filter(|_| b.take(t0, 10, 5)).count(), 5);
        assert!(b.take(t0 + Duration::from_millis(100), 10, 5));
        assert!(!b.take(t0 + Duration::from_millis(100), 10, 5));
        let mut unlimited = TokenBucket::new(1);
        assert!((0..1000).all(|_| unlimited.take(t0, 0, 1)));
    }

    #[test]
    fn strikes_reset_each_second() {
        let t0 = Instant::now();
        let mut s = RateStrikes::default();
        assert!(!(0..3).any(|_| s.strike(t0, 3)));
        assert!(s.strike(t0, 3));
        assert!(!s.strike(t0 + Duration::from_secs(2), 3));
        assert!(!(0..100).any(|_| s.strike(t0, 0)));
    }
}
