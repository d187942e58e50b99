//! Per-connection deadlines of one shard: the `auth` timeout of a connection
//! that has not authenticated yet, the token expiry of one that has, and
//! the backend hooks' (waiting for connect, refreshing) ([`Deadlines`]);
//! and the subscription-token expiries of its subscriptions to `token`
//! namespaces ([`SubscriptionDeadlines`]).
//!
//! Ordered maps, so the shard finds what is due by looking at their first
//! entries instead of walking every connection, and one task that sleeps
//! until the earliest of both. Each connection has at most one connection
//! deadline at a time, and one per topic it subscribed to with an expiring
//! token. Touched only by the owning shard.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

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

/// When each subscription made with an expiring subscription token ends.
/// Bounded by the shard's subscriptions: connections × `[limits]
/// max_topics_per_connection` at most, since an entry is dropped when its
/// subscription ends (unsubscribe, close, or this expiry).
#[derive(Default)]
pub struct SubscriptionDeadlines {
    by_time: BTreeSet<(Stamp, ConnId, Rc<str>)>,
    /// Per connection, its expiring topics (a connection without any has no entry).
    by_conn: HashMap<ConnId, HashMap<Rc<str>, Stamp, ahash::RandomState>, ahash::RandomState>,
}

impl SubscriptionDeadlines {
    /// Sets (or replaces) when `conn`'s subscription to `topic` ends.
    /// Returns true when it is now the earliest one.
    pub fn set(&mut self, conn: ConnId, topic: Rc<str>, at: Stamp) -> bool {
        self.clear(conn, &topic);
        let first = self.next().is_none_or(|next| at < next);
        self.by_time.insert((at, conn, topic.clone()));
        self.by_conn.entry(conn).or_default().insert(topic, at);
        first
    }

    /// Forgets `conn`'s deadline on `topic`, if it has one.
    pub fn clear(&mut self, conn: ConnId, topic: &str) {
        let Some(topics) = self.by_conn.get_mut(&conn) else { return };
        let Some((topic, at)) = topics.remove_entry(topic) else { return };
        if topics.is_empty() {
            self.by_conn.remove(&conn);
        }
        self.by_time.remove(&(at, conn, topic));
    }

    /// Forgets every deadline of `conn` (it closed).
    pub fn clear_connection(&mut self, conn: ConnId) {
        for (topic, at) in self.by_conn.remove(&conn).into_iter().flatten() {
            self.by_time.remove(&(at, conn, topic));
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Stamp> {
        self.by_time.first().map(|(at, _, _)| *at)
    }

    /// Removes and returns one subscription whose deadline is due at `now`.
    pub fn pop_due(&mut self, now: Stamp) -> Option<(ConnId, Rc<str>)> {
        if self.by_time.first().is_none_or(|(at, _, _)| *at > now) {
            return None;
        }
        let (_, conn, topic) = self.by_time.pop_first()?;
        if let Some(topics) = self.by_conn.get_mut(&conn) {
            topics.remove(&topic);
            if topics.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
        Some((conn, topic))
    }

    pub fn len(&self) -> usize {
        self.by_time.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_time.is_empty()
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

    #[test]
    fn subscription_deadlines_are_per_topic_and_cleared_with_their_subscription() {
        let t0 = Instant::now();
        let at = |ms| Stamp::from(t0 + Duration::from_millis(ms));
        let (a, b) = (ConnId::new(0, 1), ConnId::new(0, 2));
        let topic = |name: &str| Rc::<str>::from(name);
        let mut d = SubscriptionDeadlines::default();
        assert!(d.set(a, topic("room:1"), at(30)));
        assert!(!d.set(a, topic("room:2"), at(40)));
        assert!(d.set(b, topic("room:1"), at(10)));
        assert!(!d.set(b, topic("room:1"), at(50)), "a renewal replaces the expiry");
        assert_eq!(d.len(), 3);
        assert_eq!(d.next(), Some(at(30)));
        d.clear(a, "room:2");
        d.clear(a, "room:9");
        assert_eq!(d.pop_due(at(20)), None);
        assert_eq!(d.pop_due(at(45)), Some((a, topic("room:1"))));
        assert_eq!(d.pop_due(at(45)), None, "room:2 was cleared; b's was pushed back to 50 ms");
        assert_eq!(d.pop_due(at(50)), Some((b, topic("room:1"))));
        assert!(d.is_empty() && d.by_conn.is_empty());
        d.set(a, topic("room:1"), at(10));
        d.set(a, topic("room:2"), at(20));
        d.set(b, topic("room:1"), at(30));
        d.clear_connection(a);
        assert_eq!((d.len(), d.next()), (1, Some(at(30))));
    }
}
