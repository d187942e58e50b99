//! Sequence numbers on the messages between nodes, so that the node that
//! misses one counts it.
//!
//! Redis pub/sub is at most once and says nothing of what it loses. A
//! message can go down with the publisher connection that carried it (the
//! publishing node counts those: sent, never answered), but it can also sit
//! in the output buffer of a Redis that is killed, or reach a restarted
//! Redis before the other nodes have subscribed again, and there Redis
//! answers the publisher as if all was well. Only the receiving node can
//! see that loss. So the sending bridge numbers each topic's messages 1, 2,
//! 3… ([`Numbering`]), and each receiving bridge remembers, per topic it
//! wants and per origin node, the last number it got ([`Gaps`]): a number
//! further ahead is a gap of messages this node wanted and never got,
//! counted exactly once the next message shows it.
//!
//! The number travels in the envelope's `seq`: a *stream* in the high 24
//! bits, the count within it in the low 40. A sender starts a topic's stream
//! with the topic's first message, and a new one whenever it forgot the
//! topic (beyond [`NUMBERED_TOPICS`] it forgets them all) or restarted; a
//! receiver that sees another stream starts over from it and counts
//! nothing. A number at or below the last one (a late message) counts
//! nothing either. History topics are numbered by Redis instead (offsets,
//! whose gaps are refilled: `refill.rs`); join/leave, disconnect orders and
//! node announcements carry no number (0).
//!
//! Owned by the bridge shard. Never trusts a number: any `u64` from Redis is
//! taken without panicking. Bounded: the sender by [`NUMBERED_TOPICS`]
//! topics, the receiver by the node's wanted topics times
//! [`ORIGINS_PER_TOPIC`].

use std::collections::HashMap;
use std::rc::Rc;

/// Topics a sender numbers at once; beyond it every stream starts anew
/// (16 bytes each: at most 1 MiB).
pub const NUMBERED_TOPICS: usize = 65_536;

/// Origins a receiver follows per topic; beyond it the one heard from
/// longest ago is forgotten (its next gap on the topic is not counted).
pub const ORIGINS_PER_TOPIC: usize = 256;

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Streams are 1..=STREAMS, so that a number is never 0 (0: unnumbered).
const STREAMS: u64 = (1 << (64 - COUNT_BITS)) - 1;

fn stream(seq: u64) -> u64 {
    seq >> COUNT_BITS
}

fn count(seq: u64) -> u64 {
    seq & COUNT_MASK
}

/// The sending side: the next number of each topic this node publishes to.
pub struct Numbering {
    /// Per topic (by its hash): the number of its last message.
    last: HashMap<u64, u64, ahash::RandomState>,
    hasher: ahash::RandomState,
    /// The stream the next topic starts (random at start, then counting up).
    next_stream: u64,
}

impl Default for Numbering {
    fn default() -> Self {
        let hasher = ahash::RandomState::new();
        let next_stream = hasher.hash_one(std::process::id());
        Numbering { last: HashMap::default(), hasher, next_stream }
    }
}

impl Numbering {
    /// The number of `topic`'s next message.
    pub fn next(&mut self, topic: &str) -> u64 {
        let key = self.hasher.hash_one(topic);
        if self.last.len() >= NUMBERED_TOPICS && !self.last.contains_key(&key) {
            // Forgetting every topic costs each one's next gap, once.
            self.last.clear();
        }
        let last = match self.last.get(&key) {
            Some(&seq) if count(seq) < COUNT_MASK => seq,
            _ => self.start(),
        };
        let seq = last + 1;
        self.last.insert(key, seq);
        seq
    }

    /// A new stream, before its first message.
    fn start(&mut self) -> u64 {
        self.next_stream = self.next_stream.wrapping_add(1);
        (self.next_stream % STREAMS + 1) << COUNT_BITS
    }
}

/// The receiving side: per wanted topic, the last number heard from each
/// origin.
#[derive(Default)]
pub struct Gaps {
    /// Per topic the node wants, per origin heard on it: the origin's hash,
    /// the last number and when it was heard (`heard`'s count then).
    topics: HashMap<Rc<str>, Vec<Heard>, ahash::RandomState>,
    hasher: ahash::RandomState,
    /// Counts arrivals: orders the origins by when they were last heard.
    heard: u64,
}

struct Heard {
    origin: u64,
    last: u64,
    at: u64,
}

impl Gaps {
    /// The node wants `topic` (its subscription starts): follow it.
    pub fn want(&mut self, topic: &str) {
        if !self.topics.contains_key(topic) {
            self.topics.insert(Rc::from(topic), Vec::new());
        }
    }

    /// The node no longer wants `topic`: what goes by unheard now is not missed.
    pub fn forget(&mut self, topic: &str) {
        self.topics.remove(topic);
    }

    /// Message `seq` of `origin` on `topic` arrived: returns how many of
    /// the origin's messages on the topic went missing just before it (0
    /// when unnumbered, for a topic the node does not want, the origin's
    /// first, a new stream, or a late message).
    pub fn arrive(&mut self, topic: &str, origin: &str, seq: u64) -> u64 {
        if seq == 0 {
            return 0;
        }
        let Some(origins) = self.topics.get_mut(topic) else { return 0 };
        self.heard += 1;
        let (key, at) = (self.hasher.hash_one(origin), self.heard);
        let Some(heard) = origins.iter_mut().find(|h| h.origin == key) else {
            if origins.len() >= ORIGINS_PER_TOPIC {
                // Forget the origin heard from longest ago.
                if let Some(oldest) = origins.iter().enumerate().min_by_key(|(_, h)| h.at).map(|(i, _)| i) {
                    origins.swap_remove(oldest);
                }
            }
            origins.push(Heard { origin: key, last: seq, at });
            return 0;
        };
        let last = heard.last;
        let missed = if stream(seq) != stream(last) {
            0
        } else if count(seq) > count(last) {
            count(seq) - count(last) - 1
        } else {
            // Late (or repeated): the newest stays the mark.
            return 0;
        };
        *heard = Heard { origin: key, last: seq, at };
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_count_up_per_topic_and_are_never_zero() {
        let mut n = Numbering::default();
        let (a1, b1, a2) = (n.next("a"), n.next("b"), n.next("a"));
        assert!(a1 != 0 && b1 != 0);
        assert_eq!((count(a1), count(b1), count(a2)), (1, 1, 2));
        assert_eq!(stream(a1), stream(a2));
        assert_ne!(stream(a1), stream(b1), "each topic its own stream");
    }

    #[test]
    fn a_receiver_counts_the_gap_once_the_next_message_shows_it() {
        let mut n = Numbering::default();
        let mut g = Gaps::default();
        let seqs: Vec<u64> = (0..10).map(|_| n.next("t")).collect();
        assert_eq!(g.arrive("t", "a", seqs[0]), 0, "not wanted: not followed");
        g.want("t");
        assert_eq!(g.arrive("t", "a", seqs[0]), 0, "the first from an origin");
        assert_eq!(g.arrive("t", "a", seqs[1]), 0);
        assert_eq!(g.arrive("t", "a", seqs[5]), 3, "2, 3 and 4 missed");
        assert_eq!(g.arrive("t", "a", seqs[3]), 0, "late: counts nothing");
        assert_eq!(g.arrive("t", "a", seqs[6]), 0, "5 is still the mark");
        assert_eq!(g.arrive("t", "b", seqs[9]), 0, "another origin starts its own");
        assert_eq!(g.arrive("t", "a", 0), 0, "unnumbered");
        g.forget("t");
        g.want("t");
        assert_eq!(g.arrive("t", "a", seqs[9]), 0, "wanted again: starts over");
    }

    #[test]
    fn a_new_stream_counts_nothing() {
        let mut g = Gaps::default();
        g.want("t");
        let restarted = Numbering::default().next("t");
        let mut before = Numbering::default();
        let old = (0..100).map(|_| before.next("t")).last().unwrap();
        assert_eq!(g.arrive("t", "a", old), 0);
        assert_eq!(g.arrive("t", "a", restarted), 0, "the origin restarted");
        assert_eq!(g.arrive("t", "a", restarted + 2), 1);
    }

    #[test]
    fn a_sender_forgets_every_topic_beyond_its_bound_and_starts_new_streams() {
        let mut n = Numbering::default();
        let first = n.next("t");
        for i in 0..NUMBERED_TOPICS {
            n.next(&i.to_string());
        }
        assert!(n.last.len() <= NUMBERED_TOPICS);
        let again = n.next("t");
        assert_eq!(count(again), 1);
        assert_ne!(stream(again), stream(first));
    }

    #[test]
    fn origins_per_topic_are_bounded_and_hostile_numbers_never_panic() {
        let mut g = Gaps::default();
        g.want("t");
        let keep = 1 << COUNT_BITS;
        for i in 0..ORIGINS_PER_TOPIC as u64 * 2 {
            g.arrive("t", &i.to_string(), u64::MAX - i);
            g.arrive("t", "steady", keep + i + 1);
        }
        assert_eq!(g.topics["t"].len(), ORIGINS_PER_TOPIC);
        assert_eq!(g.arrive("t", "steady", keep + 1000), 1000 - ORIGINS_PER_TOPIC as u64 * 2 - 1, "the origin heard lately stays");
        for seq in [1, u64::MAX, 1 << COUNT_BITS, COUNT_MASK, 0, 2] {
            g.arrive("t", "x", seq);
        }
    }
}
