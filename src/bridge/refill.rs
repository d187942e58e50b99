//! Refilling gaps in a history topic's numbered stream from Redis.
//!
//! Redis pub/sub is at most once: while the bridge's subscriber connection
//! is down (or Redis dropped it as a slow client) numbered messages go by
//! unseen, and the node's subscribers would see the offsets jump. The
//! bridge remembers the last offset it delivered per history topic; when
//! one arrives further ahead in the same epoch, it reads the missing range
//! from the topic's stream ([`super::scripts::READ`]) and delivers it first,
//! holding the topic's newer messages meanwhile. What the stream no longer
//! has stays a gap, which the offsets still show.
//!
//! Owned by the bridge shard; bounded by the node's history topics (an entry
//! goes with the node's interest) and, per refill, by `[bus] capacity` held
//! messages (beyond that the refill is given up and the messages go out).

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::protocol::Outgoing;

/// What to do with a numbered message that just arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Next in line (or the first seen, or a new epoch): deliver it.
    Deliver,
    /// At or below what was delivered: a duplicate, dropped.
    Duplicate,
    /// A refill of the topic is in flight: held behind it.
    Held,
    /// Offsets `after + 1 ..= before - 1` are missing: read them, then
    /// deliver them and what is held (this message first).
    Refill { after: u64, before: u64 },
    /// Too much is held behind a refill: give it up, deliver what is held.
    GiveUp,
}

/// The bridge's per-topic positions and refills in flight.
#[derive(Debug, Default)]
pub struct Refills {
    /// Epoch and last offset delivered, per history topic of the node.
    last: HashMap<Rc<str>, (Arc<str>, u64), ahash::RandomState>,
    /// Messages held behind a refill in flight, per topic, oldest first.
    held: HashMap<Rc<str>, Vec<Arc<Outgoing>>, ahash::RandomState>,
}

impl Refills {
    /// Classifies `msg` (numbered, of `topic`); holds at most `max` per refill.
    pub fn arrive(&mut self, topic: &str, msg: &Arc<Outgoing>, max: usize) -> Verdict {
        let Some(position) = msg.position.as_ref() else { return Verdict::Deliver };
        if let Some(held) = self.held.get_mut(topic) {
            if held.len() >= max {
                return Verdict::GiveUp;
            }
            held.push(msg.clone());
            return Verdict::Held;
        }
        match self.last.get_mut(topic) {
            Some((epoch, last)) if *epoch == position.epoch => {
                if position.offset <= *last {
                    return Verdict::Duplicate;
                }
                if position.offset == *last + 1 {
                    *last = position.offset;
                    return Verdict::Deliver;
                }
                let after = *last;
                self.held.insert(topic.into(), vec![msg.clone()]);
                Verdict::Refill { after, before: position.offset }
            }
            _ => {
                self.last.insert(topic.into(), (position.epoch.clone(), position.offset));
                Verdict::Deliver
            }
        }
    }

    /// Starts a refill of everything after the last offset delivered of
    /// `topic` (its subscription came back after a loss), unless one is in
    /// flight or nothing was delivered yet. Returns that offset and epoch.
    pub fn catch_up(&mut self, topic: &str) -> Option<(u64, Arc<str>)> {
        if self.held.contains_key(topic) {
            return None;
        }
        let (epoch, last) = self.last.get(topic)?.clone();
        self.held.insert(topic.into(), Vec::new());
        Some((last, epoch))
    }

    /// The next batch to deliver for `topic`'s refill: the refilled
    /// messages first (`filled`, those between the last delivered and the
    /// first held), then everything held. Call again (with no `filled`)
    /// until it returns nothing: messages may arrive while a batch goes out.
    pub fn drain(&mut self, topic: &str, filled: Vec<Arc<Outgoing>>) -> Vec<Arc<Outgoing>> {
        let held = self.held.get_mut(topic).map(std::mem::take).unwrap_or_default();
        if held.is_empty() && filled.is_empty() {
            self.held.remove(topic);
            return Vec::new();
        }
        let mut out = Vec::with_capacity(filled.len() + held.len());
        let (mut epoch, mut last) = self.last.get(topic).cloned().unwrap_or_else(|| ("".into(), 0));
        for msg in filled.into_iter().chain(held) {
            let Some(p) = msg.position.as_ref() else { continue };
            if p.epoch != epoch {
                (epoch, last) = (p.epoch.clone(), p.offset);
            } else if p.offset <= last {
                continue;
            } else {
                last = p.offset;
            }
            out.push(msg);
        }
        self.last.insert(topic.into(), (epoch, last));
        out
    }

    /// The node no longer subscribes to `topic`: its position is forgotten.
    pub fn forget(&mut self, topic: &str) {
        self.last.remove(topic);
        self.held.remove(topic);
    }

    /// Topics with a refill in flight.
    #[cfg(test)]
    pub fn refilling(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Stamp;
    use crate::protocol::position::Position;
    use crate::protocol::Kind;

    fn msg(offset: u64, epoch: &str) -> Arc<Outgoing> {
        let position = Some(Position { offset, epoch: epoch.into() });
        Outgoing::positioned("t", Kind::Message, bytes::Bytes::from(offset.to_string()), true, position, Stamp::now())
    }

    fn offsets(v: &[Arc<Outgoing>]) -> Vec<u64> {
        v.iter().map(|m| m.position.as_ref().unwrap().offset).collect()
    }

    #[test]
    fn a_gap_is_refilled_before_what_came_after_it() {
        let mut r = Refills::default();
        assert_eq!(r.arrive("t", &msg(1, "e"), 10), Verdict::Deliver);
        assert_eq!(r.arrive("t", &msg(2, "e"), 10), Verdict::Deliver);
        assert_eq!(r.arrive("t", &msg(2, "e"), 10), Verdict::Duplicate);
        assert_eq!(r.arrive("t", &msg(6, "e"), 10), Verdict::Refill { after: 2, before: 6 });
        assert_eq!(r.arrive("t", &msg(7, "e"), 10), Verdict::Held);
        assert_eq!(r.refilling(), 1);
        let out = r.drain("t", vec![msg(3, "e"), msg(4, "e"), msg(5, "e")]);
        assert_eq!(offsets(&out), vec![3, 4, 5, 6, 7]);
        assert_eq!(r.arrive("t", &msg(8, "e"), 10), Verdict::Held, "still refilling until drained empty");
        assert_eq!(offsets(&r.drain("t", vec![])), vec![8]);
        assert!(r.drain("t", vec![]).is_empty());
        assert_eq!(r.refilling(), 0);
        assert_eq!(r.arrive("t", &msg(9, "e"), 10), Verdict::Deliver);
    }

    #[test]
    fn a_catch_up_refills_after_the_last_delivered_and_holds_meanwhile() {
        let mut r = Refills::default();
        assert_eq!(r.catch_up("t"), None, "nothing delivered yet: nothing to catch up");
        r.arrive("t", &msg(3, "e"), 10);
        assert_eq!(r.catch_up("t"), Some((3, "e".into())));
        assert_eq!(r.catch_up("t"), None, "one refill at a time");
        assert_eq!(r.arrive("t", &msg(6, "e"), 10), Verdict::Held);
        assert_eq!(offsets(&r.drain("t", vec![msg(4, "e"), msg(5, "e"), msg(6, "e")])), vec![4, 5, 6], "6 once");
        assert!(r.drain("t", vec![]).is_empty());
        assert_eq!(r.arrive("t", &msg(7, "e"), 10), Verdict::Deliver);
    }

    #[test]
    fn a_new_epoch_is_no_gap_and_refills_are_bounded() {
        let mut r = Refills::default();
        r.arrive("t", &msg(5, "e"), 1);
        assert_eq!(r.arrive("t", &msg(1, "f"), 1), Verdict::Deliver, "offsets restart in a new epoch");
        assert_eq!(r.arrive("t", &msg(3, "f"), 1), Verdict::Refill { after: 1, before: 3 });
        assert_eq!(r.arrive("t", &msg(4, "f"), 1), Verdict::GiveUp);
        // Nothing came back from the stream: what is held goes out as is.
        assert_eq!(offsets(&r.drain("t", vec![])), vec![3]);
        r.forget("t");
        assert_eq!(r.arrive("t", &msg(40, "f"), 1), Verdict::Deliver, "forgotten: the first seen");
    }
}
