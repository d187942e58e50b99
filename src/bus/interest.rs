//! Which shards have subscribers of which topic.
//!
//! Every shard keeps its own replica, updated only from
//! [`super::ControlMsg::Interest`] messages (and its own subscriptions), so
//! publishing never asks another shard anything: a publish is sent only to the
//! shards in its topic's set.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::MAX_SHARDS;

/// A set of shard indexes (`0..MAX_SHARDS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardSet([u64; MAX_SHARDS / 64]);

impl ShardSet {
    pub fn insert(&mut self, shard: usize) {
        self.0[shard / 64] |= 1 << (shard % 64);
    }

    pub fn remove(&mut self, shard: usize) {
        self.0[shard / 64] &= !(1 << (shard % 64));
    }

    pub fn contains(&self, shard: usize) -> bool {
        self.0[shard / 64] & (1 << (shard % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(i * 64 + bit)
            })
        })
    }
}

/// Topic -> shards with at least one subscriber of it. One replica per shard;
/// touched only by the owning shard. Its size is bounded by the number of
/// distinct subscribed topics on the node.
#[derive(Debug, Default)]
pub struct InterestMap {
    topics: HashMap<Arc<str>, ShardSet, ahash::RandomState>,
}

impl InterestMap {
    pub fn set(&mut self, topic: &Arc<str>, shard: usize, on: bool) {
        if on {
            self.topics.entry(topic.clone()).or_default().insert(shard);
        } else if let Some(set) = self.topics.get_mut(&**topic) {
            set.remove(shard);
            if set.is_empty() {
                self.topics.remove(&**topic);
            }
        }
    }

    /// Every topic some other shard has subscribers of.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.topics.keys().map(|t| &**t)
    }

    /// Shards interested in `topic`; empty when none.
    pub fn shards(&self, topic: &str) -> ShardSet {
        self.topics.get(topic).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_set_iterates_in_order() {
        let mut s = ShardSet::default();
        for i in [0, 5, 63, 64, 200, 255] {
            s.insert(i);
        }
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 5, 63, 64, 200, 255]);
        s.remove(64);
        assert!(!s.contains(64) && s.contains(63));
    }

    #[test]
    fn interest_follows_first_and_last_subscriber() {
        let mut m = InterestMap::default();
        let t: Arc<str> = "news".into();
        m.set(&t, 1, true);
        m.set(&t, 3, true);
        assert_eq!(m.shards("news").iter().collect::<Vec<_>>(), vec![1, 3]);
        m.set(&t, 1, false);
        m.set(&t, 3, false);
        assert!(m.shards("news").is_empty());
        assert!(m.topics.is_empty(), "empty entries are removed");
    }
}
