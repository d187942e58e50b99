//! Topic history: offsets, bounded rings, and the answers that recovery and
//! `history` requests are built from.
//!
//! On a single node every history topic has one home shard (a hash of the
//! topic, [`home_shard`]); every publish to the topic travels there, gets the
//! next offset from the topic's `Ring`, is stored, and fans out from there.
//! One place assigns offsets, so they are gap-free and every subscriber sees
//! one order. With Redis the offsets and the stream live in Redis instead
//! (`bridge::history`); the answers take the same shape, [`Answer`] (a wire
//! value, in `protocol::position`).
//!
//! A [`History`] is owned by one shard and touched only by it; other shards
//! reach it through `ControlMsg::History` and publishes marked `sequence`.
//! Never blocks, never allocates per message beyond the stored payload.

pub mod wait;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::HistoryPolicy;
use crate::ids::ConnId;
use crate::protocol::position::{Answer, Position, Publication, Since};

/// What a stored message costs besides its payload (the ring slot, the
/// payload's `Bytes` header and allocation rounding), for the memory budget.
pub const ENTRY_OVERHEAD: usize = 64;

/// What a ring costs besides its messages (map entry, name, epoch).
pub const RING_OVERHEAD: usize = 256;

/// A stable hash of a topic name (FNV-1a: the same across processes, nodes
/// and builds, unlike the seeded ahash).
pub fn topic_hash(topic: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The shard that assigns offsets to `topic` on a single node.
pub fn home_shard(topic: &str, shards: usize) -> usize {
    (topic_hash(topic) % shards.max(1) as u64) as usize
}

/// What a client asks of a topic's history.
#[derive(Debug, Clone)]
pub enum Query {
    /// The current position only (a plain subscribe to a history topic).
    Position,
    /// Everything after `since` (a subscribe with `recover`).
    Recover(Since),
    /// A `history` request: up to `limit` messages after `since`, or the
    /// latest `limit` without it.
    Range { since: Option<Since>, limit: usize },
}

/// Answers `query` from a topic's messages (`entries`, contiguous, oldest
/// first) at `position`. Shared by the in-memory rings and the Redis stream.
pub fn answer(query: &Query, position: Position, entries: impl DoubleEndedIterator<Item = Publication> + ExactSizeIterator) -> Answer {
    let top = position.offset;
    let after = |since: &Since| since.epoch.as_str() == &*position.epoch && since.offset <= top;
    match query {
        Query::Position => Answer::position_only(position),
        Query::Recover(since) if !after(since) => Answer::position_only(position),
        Query::Recover(since) => {
            let publications: Vec<Publication> = entries.filter(|p| p.offset > since.offset).collect();
            // Nothing trimmed and nothing cut: from right after `since` up to the top.
            let complete = match (publications.first(), publications.last()) {
                (Some(first), Some(last)) => first.offset == since.offset + 1 && last.offset == top,
                _ => since.offset == top,
            };
            Answer { position, publications, recovered: complete, from_newest: false }
        }
        Query::Range { since: Some(since), .. } if !after(since) => Answer::position_only(position),
        Query::Range { since: Some(since), limit } => {
            let publications = entries.filter(|p| p.offset > since.offset).take(*limit).collect();
            Answer { position, publications, recovered: false, from_newest: false }
        }
        Query::Range { since: None, limit } => {
            let skip = entries.len().saturating_sub(*limit);
            Answer { position, publications: entries.skip(skip).collect(), recovered: false, from_newest: true }
        }
    }
}

/// Where a history answer goes: connection `conn` on shard `shard`, as the
/// reply to request `id` (`None`: a subscribe's position) about `topic`.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    pub shard: usize,
    pub conn: ConnId,
    pub id: Option<u64>,
    pub topic: Arc<str>,
}

/// History traffic between a subscriber's shard and the topic's offset
/// authority (its home shard, or the bridge shard with Redis).
#[derive(Debug)]
pub enum HistoryMsg {
    /// `query` of connection `conn` on shard `from` (request `id`, if any),
    /// to answer once the authority has numbered the first `after`
    /// publishes shard `from` sent it: the asking client's own publishes
    /// are then in the answer.
    Query { topic: Arc<str>, query: Query, from: usize, conn: ConnId, id: Option<u64>, after: u64 },
    /// The answer about `topic`, for `conn` on the receiving shard (request
    /// `id`; `None`: its subscribe's position). `None`: unavailable (Redis
    /// could not be asked).
    Answer { conn: ConnId, id: Option<u64>, topic: Arc<str>, answer: Option<Answer> },
}

/// One topic's history on its home shard.
#[derive(Debug)]
struct Ring {
    epoch: Arc<str>,
    /// The last offset assigned (0: none yet in this epoch).
    top: u64,
    /// The latest `policy.size` messages, oldest first.
    entries: VecDeque<Publication>,
    /// What `entries` cost against the budget.
    bytes: usize,
    policy: HistoryPolicy,
    /// The ring is dropped (and its epoch forgotten) after this.
    expires: Instant,
    /// Its key in [`History::order`].
    stamp: u64,
}

impl Ring {
    fn position(&self) -> Position {
        Position { offset: self.top, epoch: self.epoch.clone() }
    }
}

/// Hands out epochs: a prefix unique to this process and its user (the
/// process's start time and a label: a shard, or `r` for the Redis
/// bridge), so a restart changes every epoch, and a counter.
#[derive(Debug)]
pub struct Epochs {
    prefix: String,
    next: u64,
}

impl Epochs {
    pub fn new(label: impl std::fmt::Display) -> Epochs {
        let boot = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Epochs { prefix: format!("{:x}{:05x}-{label}", boot.as_secs(), boot.subsec_micros()), next: 0 }
    }

    /// A fresh epoch, never handed out before by this process.
    pub fn fresh(&mut self) -> Arc<str> {
        self.next += 1;
        format!("{}-{}", self.prefix, self.next).into()
    }
}

/// Counts of what the rings did, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Rings dropped to stay within the memory budget.
    pub evicted: u64,
    /// Rings dropped because their TTL passed.
    pub expired: u64,
}

/// The history rings of the topics this shard is home to. Touched only by
/// the owning shard. Bounded: each ring by its namespace's `history_size`,
/// all of them together by this shard's share of
/// `[limits] history_memory_bytes` (least recently published first out).
#[derive(Debug)]
pub struct History {
    rings: HashMap<Rc<str>, Ring, ahash::RandomState>,
    /// Rings by their last publish (oldest first), for eviction.
    order: BTreeMap<u64, Rc<str>>,
    next_stamp: u64,
    bytes: usize,
    budget: usize,
    epochs: Epochs,
    pub dropped: Dropped,
}

impl History {
    /// An empty history for shard `shard` holding at most `budget` bytes.
    pub fn new(shard: usize, budget: usize) -> History {
        History {
            rings: HashMap::default(),
            order: BTreeMap::new(),
            next_stamp: 0,
            bytes: 0,
            budget,
            epochs: Epochs::new(shard),
            dropped: Dropped::default(),
        }
    }

    /// Bytes held by all rings.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Topics with a ring.
    pub fn len(&self) -> usize {
        self.rings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rings.is_empty()
    }

    /// The ring of `topic`, created (with a new epoch) if it has none or it
    /// expired.
    fn ring(&mut self, topic: &str, policy: HistoryPolicy, now: Instant) -> &mut Ring {
        if self.rings.get(topic).is_some_and(|r| r.expires <= now) {
            self.remove(topic);
            self.dropped.expired += 1;
        }
        if !self.rings.contains_key(topic) {
            let epoch = self.epochs.fresh();
            let stamp = self.touch_stamp();
            let name: Rc<str> = topic.into();
            self.order.insert(stamp, name.clone());
            self.bytes += RING_OVERHEAD;
            let ring = Ring { epoch, top: 0, entries: VecDeque::new(), bytes: 0, policy, expires: now + policy.ttl, stamp };
            self.rings.insert(name, ring);
        }
        self.rings.get_mut(topic).expect("present")
    }

    fn touch_stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    fn remove(&mut self, topic: &str) {
        if let Some(ring) = self.rings.remove(topic) {
            self.order.remove(&ring.stamp);
            self.bytes -= ring.bytes + RING_OVERHEAD;
        }
    }

    /// Stores a message of `topic` and returns its position: the next
    /// offset of the topic's current epoch.
    pub fn append(&mut self, topic: &str, policy: HistoryPolicy, payload: Bytes, json: bool, now: Instant) -> Position {
        let stamp = self.touch_stamp();
        let ring = self.ring(topic, policy, now);
        ring.policy = policy;
        ring.top += 1;
        ring.expires = now + policy.ttl;
        let cost = payload.len() + ENTRY_OVERHEAD;
        ring.entries.push_back(Publication { offset: ring.top, payload, json });
        ring.bytes += cost;
        let mut freed = 0;
        while ring.entries.len() > policy.size {
            let old = ring.entries.pop_front().expect("longer than size");
            freed += old.payload.len() + ENTRY_OVERHEAD;
        }
        ring.bytes -= freed;
        let old_stamp = std::mem::replace(&mut ring.stamp, stamp);
        let position = ring.position();
        let name = self.order.remove(&old_stamp).expect("every ring is ordered");
        self.order.insert(stamp, name);
        self.bytes = self.bytes + cost - freed;
        self.enforce_budget(topic);
        position
    }

    /// Drops the least recently published rings until the budget holds;
    /// `keep` (the ring just written) goes last, trimmed from its oldest.
    fn enforce_budget(&mut self, keep: &str) {
        while self.bytes > self.budget {
            let victim = self.order.values().find(|t| &***t != keep).cloned();
            match victim {
                Some(topic) => {
                    self.remove(&topic);
                    self.dropped.evicted += 1;
                }
                None => {
                    // One ring alone is over budget: it keeps fewer messages.
                    let ring = self.rings.get_mut(keep).expect("the ring just written");
                    let Some(old) = ring.entries.pop_front() else { return };
                    let cost = old.payload.len() + ENTRY_OVERHEAD;
                    ring.bytes -= cost;
                    self.bytes -= cost;
                }
            }
        }
    }

    /// Answers `query` for `topic` (creating its ring, so that a position
    /// can be given, when it has none).
    pub fn query(&mut self, topic: &str, policy: HistoryPolicy, query: &Query, now: Instant) -> Answer {
        let ring = self.ring(topic, policy, now);
        let position = ring.position();
        let answer = answer(query, position, ring.entries.iter().cloned());
        self.enforce_budget(topic);
        answer
    }

    /// Drops the rings whose TTL passed. Returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let due: Vec<Rc<str>> = self.rings.iter().filter(|(_, r)| r.expires <= now).map(|(t, _)| t.clone()).collect();
        for topic in &due {
            self.remove(topic);
        }
        self.dropped.expired += due.len() as u64;
        due.len()
    }
}

/// How often the home shard drops expired rings (an expired ring is also
/// replaced whenever it is next used, so this only returns memory).
pub const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(size: usize, ttl_ms: u64) -> HistoryPolicy {
        HistoryPolicy { size, ttl: Duration::from_millis(ttl_ms) }
    }

    fn put(h: &mut History, topic: &str, n: usize, now: Instant) -> Position {
        let mut last = None;
        for i in 0..n {
            last = Some(h.append(topic, policy(10, 60_000), Bytes::from(i.to_string()), true, now));
        }
        last.expect("n > 0")
    }

    fn offsets(a: &Answer) -> Vec<u64> {
        a.publications.iter().map(|p| p.offset).collect()
    }

    #[test]
    fn offsets_are_gap_free_and_the_ring_keeps_the_latest() {
        let now = Instant::now();
        let mut h = History::new(0, 1 << 20);
        let p = put(&mut h, "t", 15, now);
        assert_eq!(p.offset, 15);
        let since = |offset| Since { offset, epoch: p.epoch.to_string() };
        let a = h.query("t", policy(10, 60_000), &Query::Recover(since(7)), now);
        assert!(a.recovered);
        assert_eq!(offsets(&a), (8..=15).collect::<Vec<_>>());
        let a = h.query("t", policy(10, 60_000), &Query::Recover(since(4)), now);
        assert!(!a.recovered, "5 was trimmed");
        let a = h.query("t", policy(10, 60_000), &Query::Recover(since(15)), now);
        assert!(a.recovered && a.publications.is_empty(), "up to date");
        let a = h.query("t", policy(10, 60_000), &Query::Recover(since(16)), now);
        assert!(!a.recovered, "ahead of the topic");
        let a = h.query("t", policy(10, 60_000), &Query::Recover(Since { offset: 7, epoch: "other".into() }), now);
        assert!(!a.recovered && a.publications.is_empty());
        assert_eq!(a.position, p);
        let a = h.query("t", policy(10, 60_000), &Query::Range { since: None, limit: 3 }, now);
        assert_eq!(offsets(&a), vec![13, 14, 15]);
        let a = h.query("t", policy(10, 60_000), &Query::Range { since: Some(since(9)), limit: 2 }, now);
        assert_eq!(offsets(&a), vec![10, 11]);
    }

    #[test]
    fn an_expired_ring_comes_back_with_a_new_epoch() {
        let now = Instant::now();
        let mut h = History::new(0, 1 << 20);
        let p = h.append("t", policy(10, 100), Bytes::from_static(b"1"), true, now);
        let later = now + Duration::from_millis(150);
        let a = h.query("t", policy(10, 100), &Query::Recover(Since { offset: 0, epoch: p.epoch.to_string() }), later);
        assert!(!a.recovered);
        assert_ne!(a.position.epoch, p.epoch);
        assert_eq!(a.position.offset, 0);
        assert_eq!(h.dropped.expired, 1);
        assert_eq!(h.expire(later + Duration::from_millis(150)), 1);
        assert!(h.is_empty());
        assert_eq!(h.bytes(), 0);
    }

    #[test]
    fn the_budget_evicts_the_least_recently_published() {
        let now = Instant::now();
        let budget = 3 * (RING_OVERHEAD + 10 * (ENTRY_OVERHEAD + 1));
        let mut h = History::new(0, budget);
        let a = put(&mut h, "a", 10, now);
        put(&mut h, "b", 10, now);
        put(&mut h, "a", 1, now);
        put(&mut h, "c", 10, now);
        assert!(h.bytes() <= budget);
        put(&mut h, "d", 1, now);
        assert_eq!(h.dropped.evicted, 1);
        assert!(h.bytes() <= budget, "{} > {budget}", h.bytes());
        let kept = h.query("a", policy(10, 60_000), &Query::Position, now);
        assert_eq!(kept.position.epoch, a.epoch, "a was published more recently than b");
        let gone = h.query("b", policy(10, 60_000), &Query::Position, now);
        assert_eq!(gone.position.offset, 0, "b was evicted");
        // A single ring over the whole budget keeps what fits.
        let mut tiny = History::new(0, RING_OVERHEAD + 2 * (ENTRY_OVERHEAD + 1));
        put(&mut tiny, "t", 5, now);
        assert_eq!(tiny.query("t", policy(10, 60_000), &Query::Range { since: None, limit: 10 }, now).publications.len(), 2);
    }

    #[test]
    fn home_shards_spread_and_stay_put() {
        assert_eq!(home_shard("chat", 1), 0);
        let homes: std::collections::HashSet<usize> = (0..64).map(|i| home_shard(&format!("t{i}"), 4)).collect();
        assert_eq!(homes.len(), 4);
        assert_eq!(home_shard("chat", 4), home_shard("chat", 4));
    }
}
