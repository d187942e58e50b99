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
///
/// Every topic subscribed anywhere has an entry on every other shard, so the
/// entry is kept small: the first 64 shards' bits in one word (`low`), the
/// rest, for the hosts that have them, in a second map (`high`). With one
/// shard per topic on two shards that is ~45 bytes per topic against ~85 for
/// the whole set inline (the idle run in `benches/README.md`).
#[derive(Debug, Default)]
pub struct InterestMap {
    low: HashMap<Arc<str>, u64, ahash::RandomState>,
    high: HashMap<Arc<str>, [u64; MAX_SHARDS / 64 - 1], ahash::RandomState>,
}

impl InterestMap {
    pub fn set(&mut self, topic: &Arc<str>, shard: usize, on: bool) {
        let (word, bit) = (shard / 64, 1u64 << (shard % 64));
        if on {
            match word {
                0 => *self.low.entry(topic.clone()).or_default() |= bit,
                w => self.high.entry(topic.clone()).or_default()[w - 1] |= bit,
            }
            return;
        }
        match word {
            0 => {
                if let Some(low) = self.low.get_mut(&**topic) {
                    *low &= !bit;
                    if *low == 0 {
                        self.low.remove(&**topic);
                    }
                }
            }
            w => {
                if let Some(high) = self.high.get_mut(&**topic) {
                    high[w - 1] &= !bit;
                    if high.iter().all(|w| *w == 0) {
                        self.high.remove(&**topic);
                    }
                }
            }
        }
    }

    /// Every topic some other shard has subscribers of, once each.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        let high_only = self.high.keys().filter(|t| !self.low.contains_key(&***t));
        self.low.keys().chain(high_only).map(|t| &**t)
    }

    /// Shards interested in `topic`; empty when none.
    pub fn shards(&self, topic: &str) -> ShardSet {
        let mut set = ShardSet::default();
        set.0[0] = self.low.get(topic).copied().unwrap_or(0);
        if !self.high.is_empty() {
            if let Some(high) = self.high.get(topic) {
                set.0[1..].copy_from_slice(high);
            }
        }
        set
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
        assert!(m.low.is_empty() && m.high.is_empty(), "empty entries are removed");
    }

    #[test]
    fn shards_beyond_64_are_kept_apart_and_listed_once() {
        let mut m = InterestMap::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        for shard in [0, 63, 64, 130, 255] {
            m.set(&a, shard, true);
        }
        m.set(&b, 200, true);
        assert_eq!(m.shards("a").iter().collect::<Vec<_>>(), vec![0, 63, 64, 130, 255]);
        assert_eq!(m.shards("b").iter().collect::<Vec<_>>(), vec![200]);
        let mut topics: Vec<_> = m.topics().collect();
        topics.sort();
        assert_eq!(topics, vec!["a", "b"], "a topic in both words is listed once");
        for shard in [0, 63] {
            m.set(&a, shard, false);
        }
        assert_eq!(m.shards("a").iter().collect::<Vec<_>>(), vec![64, 130, 255]);
        assert!(m.low.is_empty());
        for shard in [64, 130, 255] {
            m.set(&a, shard, false);
        }
        m.set(&b, 200, false);
        assert!(m.high.is_empty() && m.shards("a").is_empty());
    }
}
