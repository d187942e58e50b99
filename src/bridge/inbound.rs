//! What comes from Redis on the subscriber connections: messages of other
//! nodes (and of other Redis clients) turned into the same encode-once
//! fan-out as a local publish, numbered messages of history topics (gaps
//! refilled from the stream first), subscription confirmations, and the
//! nodes' announcements for the admin plane. Runs on the bridge shard;
//! never trusts what it reads (every envelope, topic and payload is
//! checked, anything else is counted in `redis_bad_messages_total`).

use std::sync::Arc;

use bytes::Bytes;
use redis::Value;
use tracing::debug;

use super::link::Link;
use super::refill::Verdict;
use super::{envelope, fence, scripts, Bridge, NODES_CHANNEL};
use crate::clock::Stamp;
use crate::ids::ConnId;
use crate::protocol::position::Position;
use crate::metrics::ShardStats;
use crate::protocol::{Kind, Outgoing};
use crate::shard::Shard;

impl Bridge {
    /// Handles one value pushed by Redis on `link`'s subscriber connection.
    pub(super) async fn on_push(&self, shard: &Shard, link: &Link, push: Value) {
        let bridge = self;
        let stats = shard.stats();
        let parts = match push {
            Value::Array(parts) => parts,
            Value::ServerError(e) if self.is_cluster() => {
                // A (S)SUBSCRIBE sent to a primary that no longer owns the slot.
                debug!(server = link.endpoint.borrow().address(), "redis refused a subscription: {e:?}; reading the slot map");
                self.resync.set(true);
                self.refresh.raise();
                return;
            }
            _ => {
                ShardStats::add(&stats.redis_bad_messages, 1);
                return;
            }
        };
        if let [Value::BulkString(kind), _] = parts.as_slice() {
            if kind.as_slice() == b"pong" {
                // The answer to the subscriber's heartbeat PING.
                return;
            }
        }
        if let [Value::BulkString(kind), Value::BulkString(channel), Value::Int(_)] = parts.as_slice() {
            // A subscribe/unsubscribe confirmation: [kind, channel, count].
            let topic = std::str::from_utf8(channel).ok().and_then(|c| c.strip_prefix(bridge.config.channel_prefix.as_str()));
            match kind.as_slice() {
                b"ssubscribe" if topic.is_some_and(fence::is_marker) => {
                    let slot = topic.and_then(|t| bridge.fences.borrow().marker(t));
                    if let Some(slot) = slot {
                        bridge.drain_subscribed(slot);
                    }
                }
                b"subscribe" | b"ssubscribe" => {
                    if let Some(topic) = topic {
                        bridge.confirmed(topic).release(shard);
                        catch_up(shard, bridge, topic);
                    }
                }
                // Redis drops the subscriptions of a slot the primary no longer
                // owns (a migration): subscribe them again on the new owner.
                b"sunsubscribe" if topic.is_some_and(|t| self.wanted.borrow().contains(t) || t == NODES_CHANNEL || t == self.own_channel()) => {
                    self.resync.set(true);
                    self.refresh.raise();
                }
                _ => {}
            }
            return;
        }
        let [Value::BulkString(kind), Value::BulkString(channel), Value::BulkString(data)] = parts.as_slice() else {
            ShardStats::add(&stats.redis_bad_messages, 1);
            return;
        };
        if kind.as_slice() != b"message" && kind.as_slice() != b"smessage" {
            return;
        }
        let limits = &shard.config.limits;
        let topic = std::str::from_utf8(channel).ok().and_then(|c| c.strip_prefix(bridge.config.channel_prefix.as_str()));
        if let Some(marker) = topic.filter(|t| fence::is_marker(t)) {
            // A drain marker of this node came through (or came late).
            let slot = bridge.fences.borrow().marker(marker);
            if let Some(slot) = slot {
                bridge.drain_heard(slot);
            }
            return;
        }
        if topic.is_some_and(|t| t == bridge.own_channel()) {
            shard.emulation_from_node(data);
            return;
        }
        if topic == Some(NODES_CHANNEL) {
            // Checked by the admin thread; a full queue there drops it (the
            // next announcement comes within an interval).
            if let Some(tx) = &bridge.announcements {
                let _ = tx.try_send(Bytes::copy_from_slice(data));
            }
            return;
        }
        // A user's direct messages, or a client topic.
        let recipient = topic.and_then(|t| t.strip_prefix(crate::topic::USER_PREFIX));
        let valid = match (topic, recipient) {
            (Some(_), Some(user)) => crate::auth::is_user_id(user),
            (Some(topic), None) => crate::topic::validate(topic, limits.max_topic_len).is_ok(),
            (None, _) => false,
        };
        let Some(topic) = topic.filter(|_| valid) else {
            ShardStats::add(&stats.redis_bad_messages, 1);
            return;
        };
        if data.starts_with(scripts::NUMBERED_MAGIC) {
            return on_numbered(shard, bridge, topic, data).await;
        }
        let decoded = envelope::decode(data);
        let is_message = matches!(decoded, Ok(envelope::Incoming::Node { .. } | envelope::Incoming::External { .. }));
        if is_message && recipient.is_none() && shard.has_history(topic) {
            // History topics carry only numbered messages (from NUMBER): a bare
            // PUBLISH would have no offset. Backends publish through the admin API.
            ShardStats::add(&stats.redis_bad_messages, 1);
            debug!(topic, "refused an unnumbered message on a history topic");
            return;
        }
        let (payload, sender, json) = match decoded {
            Ok(envelope::Incoming::Node { origin, .. } | envelope::Incoming::Presence { origin, .. }) if origin == bridge.node_id => return,
            Ok(envelope::Incoming::Node { origin, payload, sender, json, seq, .. }) => {
                let missed = bridge.gaps.borrow_mut().arrive(topic, origin, seq);
                if missed > 0 {
                    // Counted where users alert (dropped) and on its own (exact).
                    ShardStats::add(&stats.redis_missed, missed);
                    ShardStats::add(&stats.redis_dropped, missed);
                }
                (payload, sender, json)
            }
            Ok(envelope::Incoming::Presence { join, client, user, .. }) => {
                let (client, user) = (Arc::from(client), user.map(Arc::from));
                let kind = if join { Kind::Join { client, user } } else { Kind::Leave { client, user } };
                ShardStats::add(&stats.redis_received, 1);
                return shard.deliver_remote(Outgoing::presence(topic, kind), None).await;
            }
            Ok(envelope::Incoming::Disconnect { origin, .. }) if origin == bridge.node_id => return,
            Ok(envelope::Incoming::Disconnect { code, reason, .. }) => {
                match recipient {
                    Some(user) => shard.disconnect_user_everywhere(user, code, reason),
                    None => ShardStats::add(&stats.redis_bad_messages, 1),
                }
                return;
            }
            Ok(envelope::Incoming::External { payload }) => (payload, None, true),
            Err(bad) => {
                ShardStats::add(&stats.redis_bad_messages, 1);
                debug!(topic, ?bad, "refused a message from redis");
                return;
            }
        };
        if payload.len() > limits.max_message_bytes || sender.is_some_and(|s| s.len() > crate::auth::MAX_USER_BYTES) {
            ShardStats::add(&stats.redis_bad_messages, 1);
            return;
        }
        ShardStats::add(&stats.redis_received, 1);
        let kind = match recipient {
            Some(_) => Kind::Direct { from: sender.map(Arc::from) },
            None => Kind::Message,
        };
        let msg = Outgoing::remote(topic, kind, Bytes::copy_from_slice(payload), json, Stamp::now());
        shard.deliver_remote(msg, None).await;
    }

}

/// A message numbered by Redis ([`scripts::NUMBER`]), from any node, this
/// one included: delivered with its offset and epoch.
async fn on_numbered(shard: &Shard, bridge: &Bridge, topic: &str, data: &[u8]) {
    let stats = shard.stats();
    let decoded = scripts::split_numbered(data).and_then(|(offset, epoch, env)| match envelope::decode(env) {
        Ok(envelope::Incoming::Node { origin, payload, json, skip, sender: None, .. }) => Some((offset, epoch, origin, payload, json, skip)),
        _ => None,
    });
    let Some((offset, epoch, origin, payload, json, skip)) = decoded.filter(|d| d.3.len() <= shard.config.limits.max_message_bytes) else {
        ShardStats::add(&stats.redis_bad_messages, 1);
        return;
    };
    ShardStats::add(&stats.redis_received, 1);
    let skip = (origin == bridge.node_id && skip != 0).then_some(ConnId(skip));
    let position = Position { offset, epoch: epoch.into() };
    let msg = Outgoing::positioned(topic, Kind::Message, Bytes::copy_from_slice(payload), json, Some(position), Stamp::now());
    // Numbered messages (refills included) leave through the shard's relay,
    // in order; Redis is not read while the relay is long.
    shard.relay_room().await;
    let capacity = shard.config.bus.capacity;
    let verdict = bridge.refills.borrow_mut().arrive(topic, &msg, capacity);
    match verdict {
        Verdict::Deliver => shard.deliver_numbered(msg, skip),
        Verdict::Duplicate => ShardStats::add(&stats.history_duplicates_dropped, 1),
        Verdict::Held => {}
        Verdict::Refill { after, before } => match shard.config.namespaces.options(topic).history {
            Some(policy) => {
                let epoch = msg.position.as_ref().map_or_else(|| Arc::from(""), |p| p.epoch.clone());
                bridge.refill_read(topic, policy, after, before, epoch, 2 * shard.config.limits.max_message_bytes);
            }
            None => deliver_refill(shard, bridge, topic, Vec::new()),
        },
        Verdict::GiveUp => {
            deliver_refill(shard, bridge, topic, Vec::new());
            if bridge.refills.borrow_mut().arrive(topic, &msg, capacity) == Verdict::Deliver {
                shard.deliver_numbered(msg, skip);
            }
        }
    }
}

/// A history topic the node delivered before is subscribed again (the
/// subscriber connection came back): whatever was numbered while it was
/// away is read from the stream now, not when the topic's next message
/// shows the gap.
fn catch_up(shard: &Shard, bridge: &Bridge, topic: &str) {
    let Some(policy) = shard.config.namespaces.options(topic).history else { return };
    let Some((after, epoch)) = bridge.refills.borrow_mut().catch_up(topic) else { return };
    bridge.refill_read(topic, policy, after, u64::MAX, epoch, 2 * shard.config.limits.max_message_bytes);
}

/// Delivers a refill's messages and what was held behind it, in order.
pub(super) fn deliver_refill(shard: &Shard, bridge: &Bridge, topic: &str, filled: Vec<Arc<Outgoing>>) {
    let mut batch = bridge.refills.borrow_mut().drain(topic, filled);
    while !batch.is_empty() {
        for msg in batch {
            shard.deliver_numbered(msg, None);
        }
        batch = bridge.refills.borrow_mut().drain(topic, Vec::new());
    }
}
