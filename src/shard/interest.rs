//! Subscriptions and the interest rounds behind them: a topic's first
//! subscriber on this shard waits until every other shard (and, when the
//! node became interested, Redis) will deliver the topic here, so a publish
//! anywhere after the ack arrives. Touched only by this shard; other shards
//! answer through `ControlMsg::InterestApplied`.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::Shard;
use crate::auth::TopicOptions;
use crate::bus::ControlMsg;
use crate::ids::{ConnId, InterestAck};
use crate::peer::Peer;
use crate::presence::Member;

/// Subscribers waiting for the other shards to confirm a topic's interest.
#[derive(Debug)]
pub(super) struct PendingInterest {
    pub(super) topic: Rc<str>,
    /// Shards that have not answered yet.
    pub(super) remaining: usize,
    /// Connections to release, each with what to do then.
    pub(super) waiters: Vec<(Rc<Peer>, Then)>,
}

/// What a subscribe does once it is effective (every shard, and Redis,
/// will deliver the topic's messages to it).
#[derive(Debug)]
pub enum Then {
    /// Queue this frame (the ack, or the welcome), if any.
    Frame(Option<Bytes>),
    /// A history topic: ask the topic's offset authority for its position
    /// (and, with `recover`, what was missed); the ack is built from the
    /// answer, and live messages are held until then ([`crate::history::wait`]).
    Position(crate::history::wait::Request),
    /// Nothing: a subscription the server made (a token's `channels`). The
    /// connection's input does not wait for it; what must follow it (the
    /// welcome) waits with [`Shard::when_effective`].
    Quiet,
    /// One of the rounds a frame waits for ([`Shard::when_effective`]);
    /// the last of them to complete queues it.
    Join(Rc<Join>),
}

/// A frame waiting for several interest rounds, shared by their waiters.
#[derive(Debug)]
pub struct Join {
    /// Rounds not completed yet.
    left: Cell<usize>,
    frame: Bytes,
}

impl Shard {
    /// Subscribes `peer` to `topic` (validated; `options` are its
    /// namespace's) and does `then` (queue the request's ack, say) once the
    /// subscription is effective. When this is the topic's first subscriber
    /// here, that is only once every other shard has recorded this shard's
    /// interest and, when that made the node newly interested, once Redis
    /// confirmed the SUBSCRIBE: a publish anywhere after the ack is
    /// guaranteed to arrive, from this node or another. Meanwhile the
    /// connection is not read (`Peer::awaiting`). `member` is the
    /// connection as presence lists it (presence or join_leave topics).
    pub fn subscribe(&self, peer: &Rc<Peer>, topic: &str, options: TopicOptions, then: Then, member: Option<Member>) -> Rc<str> {
        let mut registry = self.registry.borrow_mut();
        let sub = registry.subscribe(topic, peer, options);
        let entry = registry.get_mut(topic).expect("just subscribed");
        if let Then::Position(request) = &then {
            // Held from now on: no live message can pass the answer.
            self.holds.borrow_mut().start(peer.id, sub.name.clone(), request.clone());
        }
        if sub.first {
            let token = self.next_token.get() + 1;
            let awaits_redis = self.node_interest_changed(topic, true, Some(InterestAck { shard: self.index, token }));
            let remaining = self.mailboxes.len() - 1 + usize::from(awaits_redis);
            if remaining > 0 {
                self.next_token.set(token);
                entry.pending_interest = Some(token);
                let shared: Arc<str> = topic.into();
                for (_, mailbox) in self.others() {
                    mailbox.control(ControlMsg::Interest { topic: shared.clone(), from: self.index, on: true, token: Some(token) });
                }
                self.pending_interest
                    .borrow_mut()
                    .insert(token, PendingInterest { topic: sub.name.clone(), remaining, waiters: Vec::new() });
            }
        }
        let mut pending = entry.pending_interest;
        let tracked = entry.options.presence || entry.options.join_leave;
        drop(registry);
        if let (true, true, Some(member)) = (sub.added, tracked, member) {
            // With Redis the ack also waits for the presence entry to be
            // written there: in the topic's round, or in one of its own.
            let ack = self.bridge_shard.is_some().then(|| {
                let mut rounds = self.pending_interest.borrow_mut();
                let token = match pending {
                    Some(token) => token,
                    None => {
                        let token = self.next_token.get() + 1;
                        self.next_token.set(token);
                        rounds.insert(token, PendingInterest { topic: sub.name.clone(), remaining: 0, waiters: Vec::new() });
                        pending = Some(token);
                        token
                    }
                };
                rounds.get_mut(&token).expect("tracked").remaining += 1;
                InterestAck { shard: self.index, token }
            });
            self.presence_join(&sub.name, peer.id, member, ack);
        }
        match pending {
            Some(token) => {
                let quiet = matches!(then, Then::Quiet);
                let mut pending = self.pending_interest.borrow_mut();
                let wait = pending.get_mut(&token).expect("pending token is tracked");
                wait.waiters.push((peer.clone(), then));
                if !quiet {
                    peer.set_awaiting(true);
                }
            }
            None => {
                if self.subscribed(peer, &sub.name, then) {
                    peer.set_awaiting(true);
                }
            }
        }
        sub.name
    }

    /// Does what a subscribe does once effective. Returns true while the
    /// connection still waits (for its position).
    pub(super) fn subscribed(&self, peer: &Rc<Peer>, topic: &Rc<str>, then: Then) -> bool {
        match then {
            Then::Frame(frame) => {
                if let Some(frame) = frame {
                    peer.push(frame, self.queueing());
                }
                false
            }
            Then::Position(request) => {
                let query = match request.recover {
                    Some(since) => crate::history::Query::Recover(since),
                    None => crate::history::Query::Position,
                };
                self.ask_history(topic, query, peer.id, None);
                // The answer may have come at once (this shard is the home).
                self.holds.borrow().holds(peer.id, topic)
            }
            Then::Quiet => false,
            Then::Join(join) => {
                let left = join.left.get().saturating_sub(1);
                join.left.set(left);
                if left > 0 {
                    return true;
                }
                peer.push(join.frame.clone(), self.queueing());
                false
            }
        }
    }

    /// Queues `frame` for `peer` once every interest round still pending
    /// for `topics` has completed (at once when none is); the connection is
    /// not read meanwhile. The welcome of a connection the server
    /// subscribed at connect waits so for its topics and its user topic:
    /// a publish anywhere after the welcome reaches it, as after an ack.
    pub fn when_effective<'t>(&self, peer: &Rc<Peer>, topics: impl IntoIterator<Item = &'t str>, frame: Bytes) {
        let registry = self.registry.borrow();
        let mut tokens: Vec<u64> = topics.into_iter().filter_map(|t| registry.get(t)?.pending_interest).collect();
        drop(registry);
        tokens.sort_unstable();
        tokens.dedup();
        let mut pending = self.pending_interest.borrow_mut();
        tokens.retain(|token| pending.contains_key(token));
        if tokens.is_empty() {
            drop(pending);
            peer.push(frame, self.queueing());
            return;
        }
        let join = Rc::new(Join { left: Cell::new(tokens.len()), frame });
        for token in tokens {
            pending.get_mut(&token).expect("retained").waiters.push((peer.clone(), Then::Join(join.clone())));
        }
        peer.set_awaiting(true);
    }

    /// Removes `id` from `topic`; tells the other shards when it was the last
    /// local subscriber. Returns whether it was subscribed.
    pub fn unsubscribe(&self, topic: &str, id: ConnId) -> bool {
        let mut registry = self.registry.borrow_mut();
        let options = registry.get(topic).map(|e| e.options).unwrap_or_default();
        let Some(last) = registry.unsubscribe(topic, id) else {
            return false;
        };
        drop(registry);
        self.holds.borrow_mut().cancel(id, topic);
        if !self.sub_deadlines.borrow().is_empty() {
            self.sub_deadlines.borrow_mut().clear(id, topic);
        }
        if options.presence || options.join_leave {
            self.presence_leave(topic, id);
        }
        if last {
            let elsewhere = !self.interest.borrow().shards(topic).is_empty();
            self.node_interest_changed(topic, elsewhere, None);
        }
        if last && self.mailboxes.len() > 1 {
            let shared: Arc<str> = topic.into();
            for (_, mailbox) in self.others() {
                mailbox.control(ControlMsg::Interest { topic: shared.clone(), from: self.index, on: false, token: None });
            }
        }
        true
    }

    /// Tells the bridge (on the bridge shard) whether the node has
    /// subscribers of `topic`. Returns true when the bridge took `ack` to
    /// release once Redis confirms the SUBSCRIBE.
    pub(super) fn node_interest_changed(&self, topic: &str, interested: bool, ack: Option<InterestAck>) -> bool {
        self.occupancy(topic, interested);
        match self.remote() {
            Some(bridge) => bridge.set_interest(topic, interested, ack),
            None => false,
        }
    }

    /// One acknowledgement of an interest round: sent to its shard, or, for
    /// this shard's own round, counted; the last one releases (and acks) the
    /// waiting subscribers.
    pub fn interest_acked(&self, ack: InterestAck) {
        if ack.shard != self.index {
            self.mailboxes[ack.shard].control(ControlMsg::InterestApplied { token: ack.token });
            return;
        }
        let token = ack.token;
        let mut pending = self.pending_interest.borrow_mut();
        let Some(wait) = pending.get_mut(&token) else { return };
        wait.remaining -= 1;
        if wait.remaining > 0 {
            return;
        }
        let wait = pending.remove(&token).expect("present");
        drop(pending);
        if let Some(entry) = self.registry.borrow_mut().get_mut(&wait.topic) {
            if entry.pending_interest == Some(token) {
                entry.pending_interest = None;
            }
        }
        for (peer, then) in wait.waiters {
            let quiet = matches!(then, Then::Quiet);
            if !self.subscribed(&peer, &wait.topic, then) && !quiet {
                peer.set_awaiting(false);
                peer.wake();
            }
        }
    }
}
