//! The node's fallback sessions (HTTP-streaming, SSE) by session id, shared
//! by every shard: a request POSTed to any shard finds the shard and
//! connection that hold its session, and whether that session has room
//! for more requests. Touched off the delivery path only (a session opens
//! or closes, a POST arrives).
//!
//! Bounded by the node's connections; each session's requests not yet run
//! by `[limits] max_emulation_pending`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::ids::ConnId;

/// Where one session lives, and how many of its requests wait.
#[derive(Debug)]
pub struct Slot {
    pub shard: usize,
    pub conn: ConnId,
    /// Requests accepted (counted at the POST) and not run yet.
    pending: AtomicUsize,
}

impl Slot {
    /// `n` of its requests ran (or were dropped with the session).
    pub fn ran(&self, n: usize) {
        self.pending.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Why requests were not accepted for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No such session on this node (never was, or closed).
    Unknown,
    /// It holds `max_emulation_pending` requests already.
    Full,
    /// More requests at once than `max_emulation_pending`: never accepted.
    TooMany,
}

/// Every fallback session of the node.
#[derive(Debug)]
pub struct Sessions {
    map: DashMap<Box<str>, Arc<Slot>, ahash::RandomState>,
    max_pending: usize,
}

impl Sessions {
    pub fn new(max_pending: usize) -> Sessions {
        Sessions { map: DashMap::default(), max_pending }
    }

    pub fn open(&self, id: &str, shard: usize, conn: ConnId) -> Arc<Slot> {
        let slot = Arc::new(Slot { shard, conn, pending: AtomicUsize::new(0) });
        self.map.insert(id.into(), slot.clone());
        slot
    }

    pub fn close(&self, id: &str) {
        self.map.remove(id);
    }

    /// Counts `n` more requests against session `id`; the slot, to send
    /// them to, when they fit.
    pub fn admit(&self, id: &str, n: usize) -> Result<Arc<Slot>, Refused> {
        let slot = self.map.get(id).map(|s| s.clone()).ok_or(Refused::Unknown)?;
        if n > self.max_pending {
            return Err(Refused::TooMany);
        }
        let before = slot.pending.fetch_add(n, Ordering::Relaxed);
        if before + n > self.max_pending {
            slot.ran(n);
            return Err(Refused::Full);
        }
        Ok(slot)
    }

    /// The slot of session `id`, if it is open here.
    pub fn get(&self, id: &str) -> Option<Arc<Slot>> {
        self.map.get(id).map(|s| s.clone())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_admitted_up_to_the_bound_and_given_back_as_they_run() {
        let sessions = Sessions::new(3);
        let conn = ConnId::new(1, 7);
        assert_eq!(sessions.admit("s", 1).unwrap_err(), Refused::Unknown);
        sessions.open("s", 1, conn);
        let slot = sessions.admit("s", 2).unwrap();
        assert_eq!((slot.shard, slot.conn), (1, conn));
        assert_eq!(sessions.admit("s", 2).unwrap_err(), Refused::Full, "2 + 2 > 3: nothing taken");
        assert_eq!(sessions.admit("s", 4).unwrap_err(), Refused::TooMany, "4 > 3 could never fit");
        assert!(sessions.admit("s", 1).is_ok());
        slot.ran(3);
        assert!(sessions.admit("s", 3).is_ok());
        sessions.close("s");
        assert_eq!(sessions.admit("s", 1).unwrap_err(), Refused::Unknown);
    }
}
