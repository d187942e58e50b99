//! Per-connection deadlines of one shard: the `auth` timeout of a connection
//! that has not authenticated yet, the token expiry of one that has, and
//! the backend hooks' (waiting for connect, refreshing).
//!
//! One ordered map, so the shard finds what is due by looking at its first
//! entry instead of walking every connection, and a task that sleeps until
//! the earliest deadline. Each connection has at most one deadline at a time.
//! Touched only by the owning shard.

use std::collections::{BTreeMap, HashMap};

use crate::clock::Stamp;
use crate::ids::ConnId;

/// What happens when a deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// No `auth` request arrived in time: close 4001.
    Auth,
    /// The token expired without a `refresh`: close 4002.
    Expiry,
    /// No `connect` request came within `[proxy] connect_wait_ms`: call
    /// the connect hook without data (the connection's task does).
    ConnectWait,
    /// The connect hook has not answered within `handshake_timeout_ms`:
    /// a backend failure (the connection's task applies the policy).
    Connect,
    /// A connect result's `expire_at` is near: call the refresh hook.
    Refresh,
}

/// Bounded by the shard's connections (one entry each at most).
#[derive(Default)]
pub struct Deadlines {
    by_time: BTreeMap<(Stamp, ConnId), Deadline>,
    by_conn: HashMap<ConnId, Stamp, ahash::RandomState>,
}

impl Deadlines {
    /// Sets (or replaces) `conn`'s deadline. Returns true when it is now the
    /// earliest one (the task sleeping until the previous earliest must wake).
    pub fn set(&mut self, conn: ConnId, at: Stamp, kind: Deadline) -> bool {
        self.clear(conn);
        let first = self.next().is_none_or(|next| at < next);
        self.by_time.insert((at, conn), kind);
        self.by_conn.insert(conn, at);
        first
    }

    /// Forgets `conn`'s deadline, if it has one.
    pub fn clear(&mut self, conn: ConnId) {
        if let Some(at) = self.by_conn.remove(&conn) {
            self.by_time.remove(&(at, conn));
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Stamp> {
        self.by_time.first_key_value().map(|((at, _), _)| *at)
    }

    /// Removes and returns one deadline that is due at `now`.
    pub fn pop_due(&mut self, now: Stamp) -> Option<(ConnId, Deadline)> {
        let entry = self.by_time.first_entry().filter(|e| e.key().0 <= now)?;
        let ((_, conn), kind) = entry.remove_entry();
        self.by_conn.remove(&conn);
        Some((conn, kind))
    }

    pub fn len(&self) -> usize {
        self.by_conn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_conn.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn due_deadlines_come_out_in_order_and_replacements_win() {
        let t0 = Instant::now();
        let at = |ms| Stamp::from(t0 + Duration::from_millis(ms));
        let (a, b, c) = (ConnId::new(0, 1), ConnId::new(0, 2), ConnId::new(0, 3));
        let mut d = Deadlines::default();
        assert!(d.set(a, at(30), Deadline::Expiry));
        assert!(d.set(b, at(10), Deadline::Auth));
        assert!(!d.set(c, at(20), Deadline::Expiry));
        assert!(!d.set(c, at(50), Deadline::Expiry));
        d.clear(a);
        assert_eq!(d.len(), 2);
        assert_eq!(d.next(), Some(at(10)));
        assert_eq!(d.pop_due(at(5)), None);
        assert_eq!(d.pop_due(at(40)), Some((b, Deadline::Auth)));
        assert_eq!(d.pop_due(at(40)), None, "c was pushed back to 50 ms; a was cleared");
        assert_eq!(d.pop_due(at(50)), Some((c, Deadline::Expiry)));
        assert!(d.is_empty());
    }
}
