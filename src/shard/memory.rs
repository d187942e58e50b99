//! Returning memory to the OS after connection churn.
//!
//! mimalloc keeps the pages its threads free, to reuse them without asking
//! the OS again. After a burst of connections that went away (a reconnect
//! storm, a load test, clients of a restarted neighbour moving back), a
//! shard would keep their memory at its peak for good: not a leak, but RSS
//! that an operator reads as one. So when a shard's connections fall well
//! below their peak, the sweeper asks the allocator to return this
//! thread's free pages (`mi_collect(true)`). It runs once per such fall,
//! never per connection, so steady traffic never pays for it. Runs on the
//! shard.

use super::Shard;
use crate::metrics::ShardStats;

/// A fall of at least this many connections from the peak...
const RECLAIM_MIN_FALL: usize = 256;
/// ...and to at most this fraction (in quarters) of it returns the memory.
const RECLAIM_BELOW_QUARTERS: usize = 3;

impl Shard {
    /// Called by the sweeper: returns the freed memory when the shard's
    /// connections fell well below their peak since the last time.
    pub(super) fn reclaim_memory(&self) {
        let open = self.peers.borrow().len();
        let peak = self.connection_peak.get().max(open);
        if peak - open >= RECLAIM_MIN_FALL && open * 4 <= peak * RECLAIM_BELOW_QUARTERS {
            // SAFETY: mi_collect only walks this thread's own heap.
            unsafe { libmimalloc_sys::mi_collect(true) };
            ShardStats::add(&self.stats().memory_reclaims, 1);
            self.connection_peak.set(open);
        } else {
            self.connection_peak.set(peak);
        }
    }
}
