//! Node-wide connection counts per user and per client IP: the
//! `[limits] max_connections_per_user` / `max_connections_per_ip` bounds and
//! the users gauge of `/metrics`.
//!
//! The one piece of identity state shared by every shard (`Send + Sync`):
//! a per-user limit is per node, so some count must span shards. It is a
//! sharded concurrent map touched only when a connection is admitted,
//! authenticated or closed, never on the delivery path. Counts are released
//! by dropping the slot a connection holds, so no close path can leak one.

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;

type Counts<K> = DashMap<K, u32, ahash::RandomState>;

/// Counts of open connections. Bounded by the node's connections: an entry
/// exists only while some connection holds a slot for it.
#[derive(Debug, Default)]
pub struct Admission {
    /// Authenticated connections per user id (`sub`).
    users: Counts<Arc<str>>,
    /// WebSocket connections per client IP; kept only when a per-IP limit is set.
    ips: Counts<IpAddr>,
    /// 0 = unlimited.
    max_per_user: u32,
    /// 0 = unlimited (and untracked).
    max_per_ip: u32,
}

/// One authenticated connection of a user; releases its count when dropped.
#[derive(Debug)]
pub struct UserSlot {
    admission: Arc<Admission>,
    user: Arc<str>,
}

/// The client's IP already holds `max_connections_per_ip` connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpLimitReached;

/// One connection from an IP; releases its count when dropped.
#[derive(Debug)]
pub struct IpSlot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

/// Increments `key`'s count unless it is at `max` (0 = no limit).
fn acquire<K: std::hash::Hash + Eq + Clone>(counts: &Counts<K>, key: &K, max: u32) -> bool {
    let mut count = counts.entry(key.clone()).or_insert(0);
    if max > 0 && *count >= max {
        return false;
    }
    *count += 1;
    true
}

fn release<K: std::hash::Hash + Eq>(counts: &Counts<K>, key: &K) {
    counts.remove_if_mut(key, |_, count| {
        *count -= 1;
        *count == 0
    });
}

impl Admission {
    pub fn new(max_per_user: u32, max_per_ip: u32) -> Admission {
        Admission { max_per_user, max_per_ip, ..Default::default() }
    }

    /// Counts one more connection of `user`; `None` when that would exceed
    /// `max_connections_per_user`.
    pub fn admit_user(self: &Arc<Self>, user: &Arc<str>) -> Option<UserSlot> {
        acquire(&self.users, user, self.max_per_user).then(|| UserSlot { admission: self.clone(), user: user.clone() })
    }

    /// Whether connections per client IP are limited (`max_connections_per_ip` > 0).
    pub fn limits_ips(&self) -> bool {
        self.max_per_ip > 0
    }

    /// Counts one more connection from `ip`. `Err` when that would exceed
    /// `max_connections_per_ip`; `Ok(None)` when no per-IP limit is set
    /// (nothing is tracked then).
    pub fn admit_ip(self: &Arc<Self>, ip: IpAddr) -> Result<Option<IpSlot>, IpLimitReached> {
        if self.max_per_ip == 0 {
            return Ok(None);
        }
        let ip = ip.to_canonical();
        if acquire(&self.ips, &ip, self.max_per_ip) {
            Ok(Some(IpSlot { admission: self.clone(), ip }))
        } else {
            Err(IpLimitReached)
        }
    }

    /// Distinct users with at least one connection on this node.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Connections of `user` on this node.
    pub fn connections_of(&self, user: &str) -> u32 {
        self.users.get(user).map_or(0, |c| *c)
    }

    /// The users gauge and the connections-per-user histogram, for the
    /// metrics page.
    pub fn gauges(self: &Arc<Self>) -> UserGauges {
        UserGauges(self.clone())
    }

    /// Encodes the users gauge and the connections-per-user histogram.
    /// Walks the user table: scrape-time cost only.
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        const BUCKETS: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];
        let mut counts = [0u64; BUCKETS.len()];
        let (mut users, mut connections, mut above) = (0u64, 0u64, 0u64);
        for entry in self.users.iter() {
            let n = *entry.value();
            users += 1;
            connections += u64::from(n);
            // One bucket per user (the encoder makes them cumulative).
            match BUCKETS.iter().position(|&le| n <= le) {
                Some(i) => counts[i] += 1,
                None => above += 1,
            }
        }
        let help = "Distinct authenticated users with a connection on this node.";
        encoder.encode_descriptor("users", help, None, MetricType::Gauge)?.encode_gauge(&users)?;
        let mut buckets: Vec<(f64, u64)> = counts.iter().zip(BUCKETS).map(|(&count, le)| (f64::from(le), count)).collect();
        buckets.push((f64::INFINITY, above));
        let help = "Open connections per authenticated user on this node.";
        encoder
            .encode_descriptor("connections_per_user", help, None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(connections as f64, users, &buckets, None)
    }
}

impl UserSlot {
    pub fn user(&self) -> &Arc<str> {
        &self.user
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        release(&self.admission.users, &self.user);
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        release(&self.admission.ips, &self.ip);
    }
}

/// The node's user gauges as a metrics collector ([`Admission::gauges`]).
#[derive(Debug)]
pub struct UserGauges(Arc<Admission>);

impl prometheus_client::collector::Collector for UserGauges {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_limit_counts_and_releases() {
        let a = Arc::new(Admission::new(2, 0));
        let alice: Arc<str> = "alice".into();
        let one = a.admit_user(&alice).unwrap();
        let two = a.admit_user(&alice).unwrap();
        assert!(a.admit_user(&alice).is_none(), "third connection over the limit");
        assert!(a.admit_user(&"bob".into()).is_some(), "other users are unaffected");
        assert_eq!(a.connections_of("alice"), 2);
        drop(one);
        let three = a.admit_user(&alice).unwrap();
        drop((two, three));
        assert_eq!(a.users(), 0, "entries go with their last connection");
    }

    #[test]
    fn per_ip_limit_is_untracked_when_off() {
        let off = Arc::new(Admission::new(0, 0));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(off.admit_ip(ip).unwrap().is_none());
        let on = Arc::new(Admission::new(0, 1));
        let slot = on.admit_ip(ip).unwrap().unwrap();
        assert!(on.admit_ip("::ffff:127.0.0.1".parse().unwrap()).is_err(), "IPv4-mapped is the same client");
        drop(slot);
        assert!(on.admit_ip(ip).is_ok());
    }

    #[test]
    fn renders_a_histogram() {
        let a = Arc::new(Admission::new(0, 0));
        let slots: Vec<_> = ["a", "a", "a", "b"].iter().map(|u| a.admit_user(&Arc::from(*u)).unwrap()).collect();
        let page = crate::metrics::render(&Arc::from(Vec::new()), vec![Box::new(a.gauges())]);
        assert!(page.contains("shardcast_users 2\n"), "{page}");
        assert!(page.contains("shardcast_connections_per_user_bucket{le=\"2.0\"} 1\n"), "{page}");
        assert!(page.contains("shardcast_connections_per_user_bucket{le=\"4.0\"} 2\n"), "{page}");
        assert!(page.contains("shardcast_connections_per_user_sum 4.0\n"), "{page}");
        drop(slots);
    }
}
