//! Publish order across a change of a slot's owner (cluster mode).
//!
//! A publisher's messages to a topic keep their order as long as they take
//! one path: Redis runs a connection's commands in order, and a topic's
//! channel and keys are in one slot. When the slot map hands a slot to
//! another primary (a failover, a migration), two paths overlap for a
//! while, and the next messages sent to the new owner could overtake:
//! - commands still unanswered on the old owner's connection (a graceful
//!   failover pauses the old primary's clients until it is a replica);
//! - what the old owner already ran as a replica: a demoted primary serves
//!   SPUBLISH and forwards it to its new primary over the cluster bus, which
//!   lags a direct SPUBLISH by up to tens of milliseconds (measured: ~35 ms,
//!   Nagle on the bus link), and this node keeps sending it there until it
//!   reads the new map.
//!
//! So the slot is *fenced*: its new commands wait here, in order, until
//! (1) every command of the slot sent before the change is answered (or
//! given up with its connection), and (2) when the old owner ran commands
//! of the slot lately and is still connected, a *drain marker* has come
//! through: the node subscribes a channel of its own in the slot on the new
//! owner, then publishes to it through the old owner, behind everything it
//! sent there; the bus keeps order, so once the new owner delivers the
//! marker, it has delivered all that came before. Then the fence lifts and
//! what waited goes to the slot's owner. A command the old owner sends back
//! (`MOVED`, `ASK`, `TRYAGAIN`) goes ahead of those waiting, in the order of
//! its replies; an old owner that answers the marker with an error does not
//! forward (it is not the new owner's replica), so nothing can come later.
//!
//! Owned by the bridge shard. Bounded in time: by the old connection (it
//! answers, or its heartbeat drops it, or a retired link's drain ends:
//! `link::RETIRE_GRACE`) and by [`DRAIN_LIMIT`] for a marker; beyond, the
//! fence lifts anyway (logged). Bounded in size like the bridge's other
//! queues: at most `buffer_messages` droppable commands per fence (beyond,
//! the oldest is dropped, counted); commands someone waits for (reads) are
//! never dropped.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use glommio::timer::sleep;
use tracing::debug;

use super::cluster::slot_tag;
use super::link::Link;
use super::{Bridge, OnReply, Outbound};
use crate::metrics::ShardStats;

/// How long a fence waits for its drain marker before it lifts anyway.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// Starts a drain marker's topic: `$drain:{<slot tag>}:<node id>` (never a
/// client topic: those starting with `$` are refused).
const DRAIN_MARK: &str = "$drain:";

/// Whether `topic` (a channel without the prefix) is a drain marker's.
pub fn is_marker(topic: &str) -> bool {
    topic.starts_with(DRAIN_MARK)
}

/// The fenced slots of the node.
#[derive(Default)]
pub struct Fences {
    slots: HashMap<u16, Fence, ahash::RandomState>,
    /// The slot of each drain marker under way, by the marker's topic.
    markers: HashMap<Rc<str>, u16, ahash::RandomState>,
    /// Numbers the drains, so that a late expiry finds the one it was for.
    next_drain: u64,
}

#[derive(Default)]
struct Fence {
    /// Commands of the slot sent before the change and not answered yet.
    unanswered: usize,
    /// The drain marker under way, if any.
    drain: Option<Drain>,
    /// How many of `held`, at its front, the old owner sent back.
    returned: usize,
    /// How many of `held` may be dropped for room.
    droppable: usize,
    /// What waits for the fence to lift, in order.
    held: VecDeque<Outbound>,
}

/// A drain marker under way: published through `old`, heard on `new`.
pub struct Drain {
    pub id: u64,
    /// The marker's topic: the channel without the prefix.
    pub topic: Rc<str>,
    pub old: Rc<Link>,
    pub new: Rc<Link>,
}

impl Fences {
    /// One more command of `slot`, sent before its owner changed, waits for
    /// its reply: the slot is fenced until it comes.
    pub fn expect(&mut self, slot: u16) {
        self.slots.entry(slot).or_default().unanswered += 1;
    }

    /// Fences `slot` until a marker published through `old` is heard on
    /// `new`; returns the marker's topic, and the drain it replaces, if any.
    pub fn drain(&mut self, slot: u16, node_id: &str, old: Rc<Link>, new: Rc<Link>) -> (Rc<str>, Option<Drain>) {
        self.next_drain += 1;
        let topic: Rc<str> = Rc::from(format!("{DRAIN_MARK}{{{}}}:{node_id}", slot_tag(slot)));
        let drain = Drain { id: self.next_drain, topic: topic.clone(), old, new };
        let replaced = self.slots.entry(slot).or_default().drain.replace(drain);
        self.markers.insert(topic.clone(), slot);
        (topic, replaced)
    }

    /// The slot whose drain marker `topic` is, if one is under way.
    pub fn marker(&self, topic: &str) -> Option<u16> {
        if self.markers.is_empty() {
            return None;
        }
        self.markers.get(topic).copied()
    }

    pub fn drain_of(&self, slot: u16) -> Option<&Drain> {
        self.slots.get(&slot)?.drain.as_ref()
    }

    /// Drain markers to subscribe on `link` (it connected meanwhile).
    pub fn markers_on(&self, link: &Link) -> Vec<Rc<str>> {
        self.slots.values().filter_map(|f| f.drain.as_ref()).filter(|d| std::ptr::eq(&*d.new, link)).map(|d| d.topic.clone()).collect()
    }

    /// Whether a drain marker is to go, or went, through `link`.
    pub fn drains_through(&self, link: &Link) -> bool {
        self.slots.values().filter_map(|f| f.drain.as_ref()).any(|d| std::ptr::eq(&*d.old, link))
    }

    /// Drain `id` of `slot` is over (heard, refused, lost or expired):
    /// returns it, and what the fence held if it lifts now.
    pub fn drained(&mut self, slot: u16, id: u64) -> Option<(Drain, Option<VecDeque<Outbound>>)> {
        let fence = self.slots.get_mut(&slot)?;
        if fence.drain.as_ref().is_none_or(|d| d.id != id) {
            return None;
        }
        let drain = fence.drain.take()?;
        self.markers.remove(&drain.topic);
        Some((drain, self.lift(slot)))
    }

    /// A command counted by [`Fences::expect`] was answered or given up:
    /// returns what the fence held if it lifts now.
    pub fn answered(&mut self, slot: u16) -> Option<VecDeque<Outbound>> {
        let fence = self.slots.get_mut(&slot)?;
        fence.unanswered = fence.unanswered.saturating_sub(1);
        self.lift(slot)
    }

    fn lift(&mut self, slot: u16) -> Option<VecDeque<Outbound>> {
        let fence = self.slots.get(&slot)?;
        if fence.unanswered > 0 || fence.drain.is_some() {
            return None;
        }
        self.slots.remove(&slot).map(|f| f.held)
    }

    /// Holds `command` behind its slot's fence, if there is one (handing it
    /// back otherwise), keeping at most `max` droppable commands: returns
    /// how many older ones it dropped for room (0 or 1).
    pub fn hold(&mut self, command: Outbound, max: usize) -> Result<u64, Outbound> {
        if self.slots.is_empty() {
            // Every publish passes here: no hashing when nothing is fenced.
            return Err(command);
        }
        let Some(fence) = self.slots.get_mut(&command.slot) else { return Err(command) };
        let mut dropped = 0;
        if command.on_reply.droppable() {
            if fence.droppable >= max {
                if let Some(i) = fence.held.iter().position(|c| c.on_reply.droppable()) {
                    fence.held.remove(i);
                    if i < fence.returned {
                        fence.returned -= 1;
                    }
                    dropped = 1;
                }
            } else {
                fence.droppable += 1;
            }
        }
        fence.held.push_back(command);
        Ok(dropped)
    }

    /// Holds a command the slot's old owner sent back ahead of the others
    /// waiting, after those sent back before it; hands it back when its slot
    /// is not fenced.
    pub fn hold_returned(&mut self, command: Outbound) -> Result<(), Outbound> {
        let Some(fence) = self.slots.get_mut(&command.slot) else { return Err(command) };
        fence.droppable += usize::from(command.on_reply.droppable());
        fence.held.insert(fence.returned, command);
        fence.returned += 1;
        Ok(())
    }

    /// Commands waiting behind fences.
    pub fn held(&self) -> usize {
        self.slots.values().map(|f| f.held.len()).sum()
    }
}

impl Bridge {
    /// The slot map changed; `old_links` and `old_owner` are the links and
    /// owners before it. Every command unanswered on a link that does not
    /// own its slot now fences the slot; a slot the old owner ran commands
    /// of lately, and that is still connected, is fenced until a drain
    /// marker comes through; what the old owners had not sent yet of the
    /// slots they lost goes behind the fences (or to the new owners).
    pub(super) fn fence_moved(self: &Rc<Self>, old_links: &[Rc<Link>], old_owner: impl Fn(u16) -> Option<Rc<Link>>, stats: &ShardStats) {
        for link in old_links {
            for command in link.in_flight.borrow_mut().iter_mut() {
                let owner = self.route(command.slot);
                if command.fenced || command.is_setup() || owner.is_some_and(|o| std::ptr::eq(&*o, &**link)) {
                    continue;
                }
                command.fenced = true;
                self.fences.borrow_mut().expect(command.slot);
            }
        }
        let mut drains = Vec::new();
        for old in old_links.iter().filter(|l| l.publisher_connected.get()) {
            for slot in old.written_lately() {
                let Some(new) = self.route(slot) else { continue };
                if Rc::ptr_eq(old, &new) || !old_owner(slot).is_some_and(|o| Rc::ptr_eq(&o, old)) {
                    continue;
                }
                let (topic, replaced) = self.fences.borrow_mut().drain(slot, &self.node_id, old.clone(), new.clone());
                if let Some(replaced) = replaced {
                    replaced.new.change(replaced.topic, false);
                }
                new.change(topic, true);
                drains.push((slot, self.fences.borrow().drain_of(slot).map_or(0, |d| d.id)));
            }
        }
        if !drains.is_empty() {
            debug!(slots = drains.len(), "redis cluster: slots changed hands; their publishes wait for the old owner's drain markers");
            let bridge = self.clone();
            // Not kept for Bridge::stop: it only sleeps, then lifts fences.
            glommio::spawn_local(async move {
                sleep(DRAIN_LIMIT).await;
                for (slot, id) in drains {
                    if bridge.drain_done(slot, id) {
                        debug!(slot, "redis cluster: a drain marker did not come through in time; the slot's publishes go on");
                    }
                }
            })
            .detach();
        }
        for link in old_links {
            // An ASKING goes with the command after it, which never moves
            // (it is on the link the slot migrates to, not its owner).
            let lost: Vec<Outbound> = {
                let mut outbound = link.outbound.borrow_mut();
                let (lost, kept): (VecDeque<Outbound>, VecDeque<Outbound>) = outbound.drain(..).partition(|c| {
                    !c.is_setup()
                        && old_owner(c.slot).is_some_and(|o| std::ptr::eq(&*o, &**link))
                        && self.route(c.slot).is_none_or(|n| !std::ptr::eq(&*n, &**link))
                });
                *outbound = kept;
                lost.into()
            };
            for command in lost {
                self.push(command, stats);
            }
        }
    }

    /// Whether a drain marker is to go, or went, through `link`.
    pub(super) fn drains_through(&self, link: &Link) -> bool {
        self.fences.borrow().drains_through(link)
    }

    /// Redis confirmed the subscription of drain marker `topic` (of `slot`)
    /// on the new owner: publish it through the old one.
    pub(super) fn drain_subscribed(&self, slot: u16) {
        let Some((id, topic, old)) = self.fences.borrow().drain_of(slot).map(|d| (d.id, d.topic.clone(), d.old.clone())) else { return };
        if !old.publisher_connected.get() {
            // Gone: nothing more can come from it.
            self.drain_done(slot, id);
            return;
        }
        let packed = redis::cmd("SPUBLISH").arg(self.channel(&topic)).arg(&*self.node_id).get_packed_command();
        old.outbound.borrow_mut().push_back(Outbound::new(packed, OnReply::Drain { slot, id }, slot));
        old.outbound_ready.raise();
    }

    /// The marker of `slot` was heard on the new owner.
    pub(super) fn drain_heard(&self, slot: u16) {
        let id = self.fences.borrow().drain_of(slot).map(|d| d.id);
        if let Some(id) = id {
            self.drain_done(slot, id);
        }
    }

    /// Drain `id` of `slot` is over: the marker's subscription goes, and the
    /// fence lifts if nothing else holds it. Returns whether it was under way.
    pub(super) fn drain_done(&self, slot: u16, id: u64) -> bool {
        let done = self.fences.borrow_mut().drained(slot, id);
        let Some((drain, held)) = done else { return false };
        drain.new.change(drain.topic, false);
        // A retired old link waits for its drains before it closes.
        drain.old.outbound_ready.raise();
        if let Some(held) = held {
            self.release(held);
        }
        true
    }

    /// A command left a publisher connection (answered, or given up with
    /// the connection). If it held a fence up and was the last, what waited
    /// goes to the slot's owner, in order.
    pub(super) fn settled(&self, slot: u16, fenced: bool) {
        if !fenced {
            return;
        }
        let held = self.fences.borrow_mut().answered(slot);
        if let Some(held) = held {
            self.release(held);
        }
    }

    /// Sends what a fence held, in order (bounded already while it waited:
    /// never dropped here).
    fn release(&self, held: VecDeque<Outbound>) {
        for command in held {
            match self.route(command.slot) {
                Some(link) => {
                    link.outbound.borrow_mut().push_back(command);
                    link.outbound_ready.raise();
                }
                None => self.unrouted.borrow_mut().push_back(command),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Endpoint;

    fn publish(slot: u16, tag: u8) -> Outbound {
        Outbound::new(vec![tag], OnReply::Count, slot)
    }

    fn tags(held: VecDeque<Outbound>) -> Vec<u8> {
        held.into_iter().map(|c| c.packed[0]).collect()
    }

    fn link() -> Rc<Link> {
        Rc::new(Link::new(Endpoint::parse("redis://127.0.0.1:1", 6379).unwrap()))
    }

    #[test]
    fn a_slot_waits_for_every_command_sent_before_the_change_then_keeps_its_order() {
        let mut f = Fences::default();
        assert!(f.hold(publish(7, 0), 10).is_err(), "not fenced: sent as usual");
        f.expect(7);
        f.expect(7);
        assert_eq!(f.hold(publish(7, 3), 10).ok(), Some(0));
        assert!(f.hold(publish(8, 9), 10).is_err(), "other slots go on");
        // The old owner sends the first back (MOVED); the second it runs.
        assert!(f.hold_returned(publish(7, 1)).is_ok());
        assert_eq!(f.answered(7).map(tags), None, "one still unanswered");
        assert!(f.hold_returned(publish(7, 2)).is_ok());
        assert_eq!(f.hold(publish(7, 4), 10).ok(), Some(0));
        assert_eq!(f.answered(7).map(tags), Some(vec![1, 2, 3, 4]), "sent back first, in order");
        assert!(f.hold(publish(7, 5), 10).is_err(), "lifted");
        assert_eq!(f.answered(7).map(tags), None, "an answer after the lift changes nothing");
    }

    #[test]
    fn a_drained_slot_waits_for_its_marker_and_the_answers() {
        let mut f = Fences::default();
        let (old, new) = (link(), link());
        let (topic, replaced) = f.drain(5, "node-a", old.clone(), new.clone());
        assert!(replaced.is_none());
        assert_eq!(key_slot_of(&topic), 5, "the marker is in the slot");
        assert_eq!(f.marker(&topic), Some(5));
        assert!(is_marker(&topic) && !is_marker("room") && !is_marker("$nodes") && !is_marker("{x}$drain:a"));
        assert!(crate::topic::validate(&topic, 1024).is_err(), "no client can use a marker's topic");
        assert!(f.drains_through(&old) && !f.drains_through(&new));
        assert_eq!(f.markers_on(&new), vec![topic.clone()]);
        f.expect(5);
        f.hold(publish(5, 1), 10).ok().unwrap();
        let id = f.drain_of(5).unwrap().id;
        assert!(f.drained(5, id + 1).is_none(), "another drain's expiry");
        let (_, held) = f.drained(5, id).unwrap();
        assert!(held.is_none(), "an answer is still owed");
        assert_eq!(f.marker(&topic), None);
        assert_eq!(f.answered(5).map(tags), Some(vec![1]));
    }

    fn key_slot_of(topic: &str) -> u16 {
        crate::bridge::cluster::key_slot(topic.as_bytes())
    }

    #[test]
    fn a_fence_keeps_at_most_max_droppable_commands_and_every_read() {
        let mut f = Fences::default();
        f.expect(1);
        for tag in 0..5 {
            f.hold(publish(1, tag), 3).ok().unwrap();
        }
        let read = Outbound::new(vec![9], OnReply::Setup, 1);
        assert_eq!(f.hold(read, 3).ok(), Some(0), "never dropped for room");
        assert_eq!(f.held(), 4);
        assert_eq!(f.answered(1).map(tags), Some(vec![2, 3, 4, 9]));
    }
}
