//! Fan-out: a publish (a client's, the API's, a direct message, or one
//! from Redis) delivered to this shard's subscribers and handed, as one
//! message each, to every other shard with subscribers of the topic (and
//! to the bridge shard, for the other nodes). A destination whose channel
//! is full leaves a [`PendingPublish`] that stops the publisher's input
//! until it is handed over. Never blocks.

use std::sync::Arc;

use bytes::Bytes;

use super::Shard;
use crate::bus::{PublishMsg, ShardSet};
use crate::clock::Stamp;
use crate::ids::ConnId;
use crate::metrics::ShardStats;
use crate::peer::Peer;
use crate::protocol::{Encoding, Kind, Outgoing, Payload, Wire};
use crate::topic;
use crate::ws::deflate::Mode;

/// A publish that could not yet be handed to every interested shard because
/// their data channels were full. Its connection is not read until it is.
#[derive(Debug)]
pub struct PendingPublish {
    pub(super) msg: PublishMsg,
    pub(super) remaining: ShardSet,
    /// The shard whose copy must carry `forward` (the bridge), if any.
    pub(super) forward_to: Option<usize>,
}

impl Shard {
    /// Delivers a publish: to this shard's subscribers directly, and as one
    /// message to each other interested shard. Per-publisher order holds
    /// because a connection with a [`PendingPublish`] is not read until it
    /// completes, and each shard-to-shard channel is FIFO.
    ///
    /// A publish to a history topic instead travels to the shard that
    /// numbers it (`Shard::sequence`) and fans out from there; per-publisher
    /// order on the topic holds because every channel on the way is FIFO.
    pub fn publish(&self, origin: &Peer, topic: &str, payload: Payload<'_>, skip_self: bool) -> Result<(), Box<PendingPublish>> {
        ShardStats::add(&self.stats().publishes, 1);
        let skip = skip_self.then_some(origin.id);
        if self.has_history(topic) {
            let msg = Outgoing::remote(topic, Kind::Message, Bytes::copy_from_slice(payload.bytes), payload.json, origin.last_seen.get());
            return self.sequence(msg, skip);
        }
        let msg = Outgoing::new(topic, Kind::Message, payload, origin.encoding(), origin.last_seen.get(), self.stats());
        self.fan_out(msg, skip)
    }

    /// Fans out a message from the admin API: numbered first on a history topic.
    pub fn route(&self, msg: Arc<Outgoing>) -> Result<(), Box<PendingPublish>> {
        if msg.kind == Kind::Message && self.has_history(&msg.topic) {
            return self.sequence(msg, None);
        }
        self.fan_out(msg, None)
    }

    /// Delivers a direct message to every connection of `user` on this node
    /// and, through Redis, on every other: the same path as a publish, on the
    /// user's internal topic. `from` is the sender's verified user id.
    /// Ordering and backpressure are a publish's.
    pub fn send_direct(&self, origin: &Peer, from: Option<&Arc<str>>, user: &str, payload: Payload<'_>) -> Result<(), Box<PendingPublish>> {
        let kind = Kind::Direct { from: from.cloned() };
        let msg = Outgoing::new(&topic::user_topic(user), kind, payload, origin.encoding(), origin.last_seen.get(), self.stats());
        ShardStats::add(&self.stats().direct_messages, 1);
        self.fan_out(msg, None)
    }

    /// Queues `msg` here, hands it to the other interested shards, and
    /// passes it to the bridge for the other nodes.
    pub(super) fn fan_out(&self, msg: Arc<Outgoing>, skip: Option<ConnId>) -> Result<(), Box<PendingPublish>> {
        self.deliver_local(&msg, skip);
        let mut remaining = self.interest.borrow().shards(&msg.topic);
        let mut forward_to = None;
        match (self.remote(), self.bridge_shard) {
            (Some(bridge), _) => bridge.publish(&msg, self.stats()),
            (None, Some(bridge_shard)) => {
                remaining.insert(bridge_shard);
                forward_to = Some(bridge_shard);
            }
            (None, None) => {}
        }
        self.dispatch(PublishMsg::new(msg, skip), remaining, forward_to)
    }

    /// Fans out a message that came from another node (through the bridge):
    /// local subscribers and other interested shards, never back to Redis.
    pub fn fan_out_remote(&self, msg: Arc<Outgoing>, skip: Option<ConnId>) -> Result<(), Box<PendingPublish>> {
        self.deliver_local(&msg, skip);
        let remaining = self.interest.borrow().shards(&msg.topic);
        self.dispatch(PublishMsg::new(msg, skip), remaining, None)
    }

    /// Hands `msg` to the `remaining` shards; what could not be handed yet
    /// comes back boxed (the rare path) for the caller to retry.
    pub(super) fn dispatch(&self, msg: PublishMsg, remaining: ShardSet, forward_to: Option<usize>) -> Result<(), Box<PendingPublish>> {
        if remaining.is_empty() {
            return Ok(());
        }
        let mut pending = PendingPublish { msg, remaining, forward_to };
        if self.retry_publish(&mut pending) {
            Ok(())
        } else {
            Err(Box::new(pending))
        }
    }

    /// Tries to hand a pending publish to the shards still missing it.
    /// Returns true when it is complete.
    pub fn retry_publish(&self, pending: &mut PendingPublish) -> bool {
        // ShardSet is Copy: iterate a snapshot while removing from the original.
        let targets = pending.remaining;
        for shard in targets.iter() {
            let msg = PublishMsg { forward: pending.forward_to == Some(shard), ..pending.msg.clone() };
            let handed = if msg.sequence.is_some() {
                // Numbering goes through the channel even to this shard, so
                // that its bound applies to every publisher alike.
                let handed = self.mailboxes[shard].try_sequence(msg).is_ok();
                if handed {
                    let sent = &self.sequenced_to[shard];
                    sent.set(sent.get() + 1);
                }
                handed
            } else {
                shard == self.index || self.mailboxes[shard].try_publish(msg).is_ok()
            };
            if handed {
                pending.remaining.remove(shard);
            }
        }
        if !pending.remaining.is_empty() {
            ShardStats::add(&self.stats().bus_full_waits, 1);
        }
        pending.remaining.is_empty()
    }

    /// A publish from another shard: deliver it here and, on the bridge
    /// shard, pass it on to Redis.
    pub(super) fn on_publish(&self, publish: PublishMsg) {
        self.deliver_local(&publish.msg, publish.skip);
        if publish.forward {
            if let Some(bridge) = self.remote() {
                bridge.publish(&publish.msg, self.stats());
            }
        }
    }

    /// Queues `msg` to every local subscriber of its topic except `skip`,
    /// each in its connection's encoding (every form built once per node).
    /// On a history topic, a subscriber still waiting for its position gets
    /// it held instead ([`crate::history::wait`]).
    pub fn deliver_local(&self, msg: &Arc<Outgoing>, skip: Option<ConnId>) {
        let registry = self.registry.borrow();
        let Some(entry) = registry.get(&msg.topic) else { return };
        let stats = self.stats();
        let now = Stamp::now();
        stats.fanout_delay.observe_micros(now.micros_since(msg.received));
        if entry.options.history.is_some() && !self.holds.borrow().is_empty() {
            return self.deliver_holding(entry, msg, skip, now);
        }
        let q = self.queueing();
        let mut delivered = 0;
        if entry.other_wires == 0 {
            // Every subscriber takes plain JSON: one frame for all.
            let frame = msg.plain(Encoding::Json, stats);
            for (id, peer) in &entry.subscribers {
                if Some(*id) != skip {
                    peer.push_at(frame.clone(), now, q);
                    delivered += 1;
                }
            }
            ShardStats::add(&stats.deliveries, delivered);
            return;
        }
        let builder = self.form_builder();
        let compress_once = self.config.compression.compress_once;
        // Most subscribers share a wire form: fetch it once per run of them.
        let mut current: Option<(Wire, Bytes)> = None;
        for (id, peer) in &entry.subscribers {
            if Some(*id) == skip {
                continue;
            }
            let wire = peer.wire.get();
            let frame = match &current {
                Some((w, frame)) if *w == wire => frame.clone(),
                // The naive way, kept to measure what compressing once saves.
                _ if !compress_once && wire.deflate != Mode::Off => {
                    let plain = msg.plain(wire.encoding, stats);
                    if builder.worth_compressing(plain) {
                        builder.compress(plain, wire.deflate)
                    } else {
                        plain.clone()
                    }
                }
                _ => {
                    let frame = msg.frame(wire, &builder);
                    current = Some((wire, frame.clone()));
                    frame
                }
            };
            peer.push_at(frame, now, q);
            delivered += 1;
        }
        ShardStats::add(&stats.deliveries, delivered);
    }
}
