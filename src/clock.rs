//! Compact monotonic timestamps for per-connection state: 8 bytes instead of
//! `Instant`'s 16, with a niche so `Option<Stamp>` is 8 bytes too. Idle
//! connections are mostly bookkeeping, so this halves their clocks.

use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since the process's first timestamp (+1, so never zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(NonZeroU64);

impl Stamp {
    pub fn now() -> Stamp {
        Stamp::from(Instant::now())
    }

    /// Time from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: Stamp) -> Duration {
        Duration::from_micros(self.0.get().saturating_sub(earlier.0.get()))
    }

    /// Microseconds from `earlier` to `self` (zero if `earlier` is later).
    pub fn micros_since(self, earlier: Stamp) -> u64 {
        self.0.get().saturating_sub(earlier.0.get())
    }

    pub fn micros(self) -> u64 {
        self.0.get() - 1
    }
}

impl From<Instant> for Stamp {
    fn from(t: Instant) -> Stamp {
        let us = t.saturating_duration_since(epoch()).as_micros() as u64;
        Stamp(NonZeroU64::new(us.saturating_add(1)).expect("non-zero by construction"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_order_and_measure() {
        let a = Stamp::now();
        let b = Stamp::from(Instant::now() + Duration::from_millis(5));
        assert!(b > a);
        assert!(b.since(a) >= Duration::from_millis(4));
        assert_eq!(a.since(b), Duration::ZERO);
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 8);
    }
}
