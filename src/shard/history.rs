//! The shard's side of topic history: numbering publishes on the topics
//! this shard is home to, relaying them to the other shards, answering
//! history queries, and completing subscribes that wait for a position.
//!
//! Never blocks: a numbered message that cannot be handed to a full channel
//! waits in the relay, and the sequence channel is not read while the relay
//! is long (see `bus`).

use std::sync::Arc;
use std::time::Instant;

use super::{PendingPublish, Shard};
use crate::bus::{ControlMsg, PublishMsg, ShardSet};
use crate::clock::Stamp;
use crate::ids::ConnId;
use crate::history::{self, HistoryMsg, Query, ReplyTo};
use crate::protocol::position::Answer;
use crate::metrics::ShardStats;
use crate::codes::{close, ErrorCode};
use crate::protocol::{Outgoing, Reply, RequestError};
use crate::topic::registry::TopicEntry;

/// Room a reply keeps for its own fields, besides the publications.
const REPLY_OVERHEAD: usize = 256;

impl Shard {
    /// Whether `topic` keeps history (its namespace sets `history_size`).
    pub fn has_history(&self, topic: &str) -> bool {
        let namespaces = &self.config.namespaces;
        namespaces.any_history() && !topic.starts_with(crate::topic::RESERVED_PREFIX) && namespaces.options(topic).history.is_some()
    }

    /// The shard that numbers `topic`'s messages and answers its history
    /// queries: the bridge shard with Redis (which asks Redis), else the
    /// topic's home shard.
    pub fn history_authority(&self, topic: &str) -> usize {
        self.bridge_shard.unwrap_or_else(|| history::home_shard(topic, self.mailboxes.len()))
    }

    /// Sends an unnumbered message of a history topic to its authority.
    pub(super) fn sequence(&self, msg: Arc<Outgoing>, skip: Option<ConnId>) -> Result<(), Box<PendingPublish>> {
        let mut to = ShardSet::default();
        to.insert(self.history_authority(&msg.topic));
        self.dispatch(PublishMsg { msg, forward: false, skip, sequence: Some(self.index) }, to, None)
    }

    /// Numbers one message read from this shard's sequence channel: with
    /// Redis, hands it to the bridge (Redis numbers it and every node,
    /// this one included, gets it back numbered); otherwise stores it in the
    /// topic's ring and fans it out from here.
    pub(super) fn on_sequence(&self, publish: PublishMsg) {
        let PublishMsg { msg, skip, sequence, .. } = publish;
        if let Some(counted) = sequence.and_then(|from| self.sequenced_from.get(from)) {
            counted.set(counted.get() + 1);
        }
        let Some(policy) = self.config.namespaces.options(&msg.topic).history else {
            // Not a history topic (cannot happen: namespaces do not change).
            self.relay(msg, skip);
            return;
        };
        if let Some(bridge) = self.remote() {
            bridge.number(&msg, policy, skip, self.stats());
            return;
        }
        let mut rings = self.history.borrow_mut();
        let position = rings.append(&msg.topic, policy, msg.payload.clone(), msg.payload_is_json, Instant::now());
        self.history_gauges(&rings);
        drop(rings);
        ShardStats::add(&self.stats().history_appended, 1);
        let numbered = Outgoing::positioned(&msg.topic, msg.kind.clone(), msg.payload.clone(), msg.payload_is_json, Some(position), msg.received);
        self.relay(numbered, skip);
    }

    /// Delivers `msg` here and hands it to every other interested shard,
    /// behind anything already waiting in the relay (order per topic).
    pub fn relay(&self, msg: Arc<Outgoing>, skip: Option<ConnId>) {
        self.deliver_local(&msg, skip);
        let remaining = self.interest.borrow().shards(&msg.topic);
        if remaining.is_empty() {
            return;
        }
        let mut pending = PendingPublish { msg: PublishMsg::new(msg, skip), remaining, forward_to: None };
        let mut relay = self.relay.borrow_mut();
        if relay.is_empty() && self.retry_publish(&mut pending) {
            return;
        }
        ShardStats::add(&self.stats().history_relay_waits, 1);
        relay.push_back(pending);
    }

    /// Hands on what the relay holds, oldest first. Returns how many remain.
    pub fn retry_relay(&self) -> usize {
        let mut relay = self.relay.borrow_mut();
        while let Some(front) = relay.front_mut() {
            if !self.retry_publish(front) {
                break;
            }
            relay.pop_front();
        }
        relay.len()
    }

    pub(super) fn relay_len(&self) -> usize {
        self.relay.borrow().len()
    }

    /// Asks `topic`'s authority `query` for connection `conn` of this shard.
    pub fn ask_history(&self, topic: &str, query: Query, conn: ConnId, id: Option<u64>) {
        let authority = self.history_authority(topic);
        let after = self.sequenced_to[authority].get();
        self.post(authority, ControlMsg::History(HistoryMsg::Query { topic: topic.into(), query, from: self.index, conn, id, after }));
    }

    /// Handles a history query (as the authority) or an answer (as the
    /// asking connection's shard).
    pub(super) fn on_history(&self, msg: HistoryMsg) {
        match msg {
            HistoryMsg::Query { from, after, .. } if self.sequenced_from[from].get() < after => {
                // Publishes the asker sent before are still in the sequence channel.
                self.deferred_queries.borrow_mut().push((after, msg));
            }
            HistoryMsg::Query { topic, query, from, conn, id, .. } => {
                let to = ReplyTo { shard: from, conn, id, topic: topic.clone() };
                let Some(policy) = self.config.namespaces.options(&topic).history else {
                    return self.answer_history(to, None);
                };
                if let Some(bridge) = self.remote() {
                    let budget = self.config.limits.max_message_bytes.saturating_sub(REPLY_OVERHEAD);
                    return bridge.query_history(&topic, policy, query, budget, to);
                }
                let mut rings = self.history.borrow_mut();
                let answer = rings.query(&topic, policy, &query, Instant::now());
                self.history_gauges(&rings);
                drop(rings);
                self.answer_history(to, Some(answer));
            }
            HistoryMsg::Answer { conn, id, topic, answer } => self.on_history_answer(conn, id, &topic, answer),
        }
    }

    /// Answers the deferred queries whose publishes have all been numbered
    /// (after each batch read from the sequence channel).
    pub(super) fn release_deferred_queries(&self) {
        if self.deferred_queries.borrow().is_empty() {
            return;
        }
        let ready: Vec<HistoryMsg> = {
            let mut deferred = self.deferred_queries.borrow_mut();
            let (ready, waiting): (Vec<_>, Vec<_>) = deferred.drain(..).partition(|(after, msg)| match msg {
                HistoryMsg::Query { from, .. } => self.sequenced_from[*from].get() >= *after,
                HistoryMsg::Answer { .. } => true,
            });
            *deferred = waiting;
            ready.into_iter().map(|(_, msg)| msg).collect()
        };
        for msg in ready {
            self.on_history(msg);
        }
    }

    /// Sends an answer to the asking shard (or handles it, when that is this one).
    pub fn answer_history(&self, to: ReplyTo, answer: Option<Answer>) {
        let ReplyTo { shard, conn, id, topic } = to;
        self.post(shard, ControlMsg::History(HistoryMsg::Answer { conn, id, topic, answer }));
    }

    /// An answer about `topic` for connection `conn` of this shard:
    /// completes its subscribe (ack, then the held messages past the
    /// answer's offset) or answers its `history` request `id`.
    fn on_history_answer(&self, conn: ConnId, id: Option<u64>, topic: &str, answer: Option<Answer>) {
        let hold = if id.is_none() { self.holds.borrow_mut().finish(conn, topic) } else { None };
        let Some(peer) = self.peers.borrow().get(&conn).cloned() else { return };
        let encoding = peer.encoding();
        let stats = self.stats();
        let budget = self.config.limits.max_message_bytes.saturating_sub(REPLY_OVERHEAD);
        match (hold, answer) {
            (Some(hold), Some(mut answer)) => {
                let recovery = hold.request.recover.is_some();
                answer.fit(budget);
                if recovery {
                    ShardStats::add(if answer.recovered { &stats.recoveries } else { &stats.recoveries_failed }, 1);
                }
                if let Some(id) = hold.request.id {
                    let data = hold.request.data.as_deref();
                    peer.push(encoding.reply_frame(&Reply::Subscribed { id, answer: &answer, recovery, data }), self.queueing());
                }
                if hold.overflowed {
                    ShardStats::add(&stats.slow_consumer_disconnects, 1);
                    peer.close(close::TRY_AGAIN_LATER, "slow consumer", false);
                } else {
                    let builder = self.form_builder();
                    let topic = hold.topic.clone();
                    let mut last = answer.position.offset;
                    for msg in hold.release(answer.position.offset) {
                        last = msg.position.as_ref().map_or(last, |p| p.offset.max(last));
                        peer.push(msg.frame(peer.wire.get(), &builder), self.queueing());
                    }
                    // Messages numbered before the answer may still be on their way.
                    self.holds.borrow_mut().fence(conn, topic, last);
                }
            }
            (Some(hold), None) => {
                // The subscription cannot be positioned: it is undone.
                self.unsubscribe(&hold.topic, conn);
                let message = "history is unavailable right now (redis is not reachable); subscribe again later".into();
                ShardStats::add(&stats.request_errors, 1);
                peer.push(encoding.error_frame(&RequestError { id: hold.request.id, code: ErrorCode::NotAvailable, message }), self.queueing());
            }
            (None, answer) => {
                let Some(id) = id else { return };
                let frame = match answer {
                    Some(mut answer) => {
                        ShardStats::add(&stats.history_requests, 1);
                        answer.fit(budget);
                        encoding.reply_frame(&Reply::History { id, answer: &answer })
                    }
                    None => {
                        ShardStats::add(&stats.request_errors, 1);
                        let message = "history is unavailable right now (redis is not reachable)".into();
                        encoding.error_frame(&RequestError { id: Some(id), code: ErrorCode::NotAvailable, message })
                    }
                };
                peer.push(frame, self.queueing());
            }
        }
        peer.set_awaiting(false);
        peer.wake();
    }

    /// Delivery on a history topic while some connection of this shard
    /// waits for its position (it gets the message held) or was just
    /// positioned (it skips what its answer already covered).
    pub(super) fn deliver_holding(&self, entry: &TopicEntry, msg: &Arc<Outgoing>, skip: Option<ConnId>, now: Stamp) {
        let q = self.queueing();
        let builder = self.form_builder();
        let max = self.config.queue.max_messages;
        let mut holds = self.holds.borrow_mut();
        let mut delivered = 0;
        for (id, peer) in &entry.subscribers {
            if Some(*id) == skip {
                continue;
            }
            if holds.holds(*id, &msg.topic) {
                holds.hold(*id, msg, max);
                continue;
            }
            if let Some(p) = &msg.position {
                if !holds.pass(*id, &msg.topic, p.offset) {
                    continue;
                }
            }
            peer.push_at(msg.frame(peer.wire.get(), &builder), now, q);
            delivered += 1;
        }
        ShardStats::add(&self.stats().deliveries, delivered);
    }

    /// Drops expired rings (run about once a second on every shard).
    pub(super) fn expire_history(&self) {
        let mut rings = self.history.borrow_mut();
        if !rings.is_empty() {
            rings.expire(Instant::now());
            self.history_gauges(&rings);
        }
    }

    fn history_gauges(&self, rings: &history::History) {
        let stats = self.stats();
        ShardStats::set(&stats.history_bytes, rings.bytes() as u64);
        ShardStats::set(&stats.history_topics, rings.len() as u64);
        ShardStats::set(&stats.history_evictions, rings.dropped.evicted);
        ShardStats::set(&stats.history_expirations, rings.dropped.expired);
    }

}
