//! Subscribers waiting for their position: the merge that makes recovery
//! loss-free.
//!
//! A subscribe to a history topic registers the connection at once (so no
//! live message can slip past it) and asks the topic's offset authority
//! (home shard, or Redis through the bridge) for the current position and,
//! with `recover`, what was missed. Until that answer arrives, live messages
//! of the topic for that connection are held here instead of queued. Then
//! the ack (with the recovered publications) goes out first, and the held
//! messages follow, minus those at or below the answer's offset: they are
//! in the answer already (or predate the subscription). The authority
//! answers after the subscriber's shard is registered as interested, so
//! every message past the answer's offset reaches the hold or comes after
//! it: nothing is missed.
//!
//! The answer and the live messages travel different paths (the control
//! channel, or the bridge's command connection, against the data channel
//! and the relay), so a message numbered before the answer may still
//! arrive after it. A fence at the last offset delivered stops those: the
//! connection's messages of the topic at or below it are dropped, and the
//! fence falls with the first message above it (each path is FIFO, so
//! nothing older can follow). Nothing comes twice. Holds and fences are
//! per (connection, topic): a subscribe to one topic never lifts another
//! topic's fence.
//!
//! Owned by the subscriber's shard, touched only by it.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::ids::ConnId;
use crate::protocol::Outgoing;

use crate::protocol::position::Since;

/// What the connection asked, to build its ack once the answer is in.
#[derive(Debug, Clone)]
pub struct Request {
    /// The subscribe's id (no id: no ack, the held messages still follow).
    pub id: Option<u64>,
    /// `recover`'s position, if any.
    pub recover: Option<Since>,
    /// The subscribe hook's `data` for the ack (JSON text), if it gave some.
    pub data: Option<std::rc::Rc<str>>,
}

/// One connection's wait for its position on one topic.
#[derive(Debug)]
pub struct Hold {
    pub topic: Rc<str>,
    pub request: Request,
    /// Live messages of `topic` that arrived meanwhile, in arrival order.
    held: Vec<Arc<Outgoing>>,
    /// More arrived than may be held: the connection is a slow consumer.
    pub overflowed: bool,
}

/// After a wait: the last offset of `topic` the connection got.
#[derive(Debug)]
struct Fence {
    topic: Rc<str>,
    offset: u64,
}

/// The connections of a shard waiting for their position, and the fences
/// left after each wait: both per (connection, topic), so that a client
/// resubscribing to several history topics back to back (what a client
/// does on every reconnect) keeps every topic's fence until that topic's
/// first newer message. Each hold keeps at most `[queue] max_messages`
/// messages; a connection has at most one hold and one fence per topic it
/// subscribes to (bounded by `[limits] max_topics_per_connection`).
#[derive(Debug, Default)]
pub struct Holds {
    waits: HashMap<ConnId, Vec<Hold>, ahash::RandomState>,
    fences: HashMap<ConnId, Vec<Fence>, ahash::RandomState>,
}

impl Holds {
    /// Holds `conn`'s messages of `topic` from now on (a new subscribe
    /// replaces an older wait or fence on the same topic, never another
    /// topic's).
    pub fn start(&mut self, conn: ConnId, topic: Rc<str>, request: Request) {
        self.unfence(conn, &topic);
        let waits = self.waits.entry(conn).or_default();
        waits.retain(|h| h.topic != topic);
        waits.push(Hold { topic, request, held: Vec::new(), overflowed: false });
    }

    /// After `conn`'s wait: its messages of `topic` up to `offset` were
    /// delivered (or are in the answer).
    pub fn fence(&mut self, conn: ConnId, topic: Rc<str>, offset: u64) {
        let fences = self.fences.entry(conn).or_default();
        match fences.iter_mut().find(|f| f.topic == topic) {
            Some(fence) => fence.offset = offset,
            None => fences.push(Fence { topic, offset }),
        }
    }

    /// Whether a message of `topic` at `offset` is new to `conn`; the first
    /// one past its fence takes the fence down.
    pub fn pass(&mut self, conn: ConnId, topic: &str, offset: u64) -> bool {
        let Some(fences) = self.fences.get(&conn) else { return true };
        match fences.iter().find(|f| &*f.topic == topic) {
            Some(fence) if offset <= fence.offset => false,
            Some(_) => {
                self.unfence(conn, topic);
                true
            }
            None => true,
        }
    }

    /// Whether `conn`'s messages of `topic` are being held.
    pub fn holds(&self, conn: ConnId, topic: &str) -> bool {
        self.waits.get(&conn).is_some_and(|w| w.iter().any(|h| &*h.topic == topic))
    }

    /// Holds `msg` (of a topic `conn` waits on) for `conn`. Returns false
    /// when the hold is full (it is marked overflowed and the message
    /// dropped) or there is none.
    pub fn hold(&mut self, conn: ConnId, msg: &Arc<Outgoing>, max: usize) -> bool {
        let Some(wait) = self.waits.get_mut(&conn).and_then(|w| w.iter_mut().find(|h| *h.topic == *msg.topic)) else {
            return false;
        };
        if wait.held.len() >= max {
            wait.overflowed = true;
            return false;
        }
        wait.held.push(msg.clone());
        true
    }

    /// Ends `conn`'s wait and fence on `topic` (an unsubscribe or a close:
    /// an answer still on its way is then dropped). Returns whether it was
    /// waiting.
    pub fn cancel(&mut self, conn: ConnId, topic: &str) -> bool {
        self.unfence(conn, topic);
        self.finish(conn, topic).is_some()
    }

    /// Ends `conn`'s wait on `topic` and hands it over.
    pub fn finish(&mut self, conn: ConnId, topic: &str) -> Option<Hold> {
        let waits = self.waits.get_mut(&conn)?;
        let at = waits.iter().position(|h| &*h.topic == topic)?;
        let hold = waits.swap_remove(at);
        if waits.is_empty() {
            self.waits.remove(&conn);
        }
        Some(hold)
    }

    fn unfence(&mut self, conn: ConnId, topic: &str) {
        if let Some(fences) = self.fences.get_mut(&conn) {
            fences.retain(|f| &*f.topic != topic);
            if fences.is_empty() {
                self.fences.remove(&conn);
            }
        }
    }

    /// No connection waits or is fenced: deliveries need not look.
    pub fn is_empty(&self) -> bool {
        self.waits.is_empty() && self.fences.is_empty()
    }
}

impl Hold {
    /// The held messages to deliver after an answer at offset `top`: those
    /// without a position (join/leave) as they came, positioned ones only
    /// past `top`, each offset once.
    pub fn release(self, top: u64) -> impl Iterator<Item = Arc<Outgoing>> {
        let mut last = top;
        self.held.into_iter().filter(move |m| match m.position.as_ref() {
            None => true,
            Some(p) if p.offset > last => {
                last = p.offset;
                true
            }
            Some(_) => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Stamp;
    use crate::protocol::position::Position;
    use crate::protocol::Kind;

    fn msg(offset: Option<u64>) -> Arc<Outgoing> {
        let position = offset.map(|offset| Position { offset, epoch: "e".into() });
        Outgoing::positioned("t", Kind::Message, bytes::Bytes::from_static(b"1"), true, position, Stamp::now())
    }

    #[test]
    fn release_drops_what_the_answer_covers_and_keeps_order() {
        let mut holds = Holds::default();
        let conn = ConnId::new(0, 1);
        holds.start(conn, "t".into(), Request { id: Some(1), recover: None, data: None });
        assert!(holds.holds(conn, "t") && !holds.holds(conn, "u"));
        for m in [msg(Some(4)), msg(Some(5)), msg(None), msg(Some(6)), msg(Some(6)), msg(Some(7))] {
            assert!(holds.hold(conn, &m, 10));
        }
        let hold = holds.finish(conn, "t").unwrap();
        let out: Vec<Option<u64>> = hold.release(5).map(|m| m.position.as_ref().map(|p| p.offset)).collect();
        assert_eq!(out, vec![None, Some(6), Some(7)]);
        assert!(holds.is_empty());
    }

    #[test]
    fn a_fence_drops_what_the_answer_covered_until_a_newer_message() {
        let mut holds = Holds::default();
        let conn = ConnId::new(0, 1);
        holds.fence(conn, "t".into(), 10);
        assert!(holds.pass(conn, "u", 3), "another topic is not fenced");
        assert!(!holds.pass(conn, "t", 9), "numbered before the answer, arrived after it");
        assert!(!holds.pass(conn, "t", 10));
        assert!(holds.pass(conn, "t", 11));
        assert!(holds.is_empty(), "the fence fell");
        assert!(holds.pass(conn, "t", 5), "no fence, no filter");
        holds.fence(conn, "t".into(), 10);
        assert!(holds.cancel(conn, "t") || holds.is_empty());
        assert!(holds.is_empty(), "an unsubscribe takes the fence down");
    }

    /// Issue 22.1: a client resubscribing to several history topics back to
    /// back got duplicates, because the next topic's subscribe dropped the
    /// previous topic's fence.
    #[test]
    fn a_subscribe_to_another_topic_keeps_the_first_topics_fence() {
        let mut holds = Holds::default();
        let conn = ConnId::new(0, 1);
        holds.start(conn, "t".into(), Request { id: Some(1), recover: None, data: None });
        let hold = holds.finish(conn, "t").unwrap();
        assert_eq!(hold.topic.as_ref(), "t");
        holds.fence(conn, "t".into(), 1140);
        holds.start(conn, "u".into(), Request { id: Some(2), recover: None, data: None });
        assert!(holds.holds(conn, "u") && !holds.holds(conn, "t"));
        assert!(!holds.pass(conn, "t", 1101), "t's late message is still fenced");
        assert!(holds.hold(conn, &msg_on("u", 7), 10));
        assert!(holds.finish(conn, "t").is_none(), "only u waits");
        assert_eq!(holds.finish(conn, "u").unwrap().release(6).count(), 1);
        assert!(holds.pass(conn, "t", 1141));
        assert!(holds.is_empty());
    }

    fn msg_on(topic: &str, offset: u64) -> Arc<Outgoing> {
        let position = Some(Position { offset, epoch: "e".into() });
        Outgoing::positioned(topic, Kind::Message, bytes::Bytes::from_static(b"1"), true, position, Stamp::now())
    }

    #[test]
    fn a_hold_is_bounded() {
        let mut holds = Holds::default();
        let conn = ConnId::new(0, 1);
        holds.start(conn, "t".into(), Request { id: None, recover: None, data: None });
        assert!(holds.hold(conn, &msg(Some(1)), 1));
        assert!(!holds.hold(conn, &msg(Some(2)), 1));
        assert!(holds.finish(conn, "t").unwrap().overflowed);
    }
}
